r"""Sources of the tool-capable built-in chat templates (chatml, qwen3, llama-3, mistral): Jinja and its Go twin.

Pure strings; `templates.py` registers them. Message contract: an assistant message may carry "tool_calls"
([{"type": "function", "function": {"name", "arguments": dict}}]) and "reasoning_content"; a tool message carries
the result as "content"; `tools` is a list of OpenAI tool dicts. Plain chat renders exactly as before tools existed.

JSON in the text is what Ollama's Go prints (template/template.go, api/types.go), so training and Ollama agree byte
for byte: encoding/json is compact (no spaces), escapes < > & U+2028 U+2029 as \u003c..., sorts map keys, and writes
structs in field order, dropping what the struct has no field for. Hence:
- tool call arguments (a Go map): compact, keys sorted, HTML-escaped (`qk_json`);
- tools (Go structs, printed with `{{ . }}`): `qk_tool` rebuilds Ollama's order: {"type", "items"?, "function":
  {"name", "description", "parameters": {"type", "$defs"?, "items"?, "required"?, "properties": sorted}}}, each
  property {"anyOf"?, "type", "items"?, "description"?, "enum"?, "properties"? (insertion order), "required"?};
  other JSON-schema keys (default, minimum, ...) are dropped, as Ollama drops them.
Known gaps: Go prints float arguments as Go does (3.0 -> 3, 1e-07 -> 1e-7); ints and plain decimals agree.
Arguments given as a JSON string (OpenAI wire format, e.g. llama-cpp-python's server) are printed as given.

Go twins cannot look ahead (Ollama's templates use `range $i, $_` with `slice` for that; ours avoid it): the
assistant header that closes a run of tool results is written when the next message turns out to be an assistant
one, or at the end; "after the last user message" (qwen3) counts user turns with `print`. The first text inside
`{{ if .ToolCalls }}` is the tag Ollama's tool parser looks for in the model's output (tools/template.go parseTag).
"""

from qlora_kit.data.templates_json import MACROS as _MACROS

_EOS = "{EOS}"  # templates.EOS: the tokenizer's eos text, filled in when the Modelfile is written

_HERMES_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>")
_HERMES_TOOLS_END = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>")


def _jinja_text(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "\\'") + "'"


# ChatML with Hermes tools as Qwen2.5/Qwen3 write them: tools in the system turn, calls in <tool_call> after the
# content, consecutive tool results in one user turn. That turn's <|im_end|> depends on the next message, which
# stays prefix-stable where encode.py looks (before each assistant turn), not after every tool message.
# `REASONING` is empty for chatml; qwen3 puts its <think> block there.
_CHATML_JINJA = _MACROS + r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] %}
        {{- messages[0]['content'] + '\n\n' }}
    {%- endif %}
    {{- HERMES_TOOLS }}
    {%- for tool in tools %}{{- '\n' + qk_tool(tool) }}{%- endfor %}
    {{- HERMES_TOOLS_END + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}REASONING
        {{- message['content'] }}
        {%- for call in message['tool_calls'] or [] %}
            {%- set f = call['function'] if call['function'] is defined else call %}
            {%- if message['content'] or not loop.first %}{{- '\n' }}{%- endif %}
            {{- '<tool_call>\n{"name": "' + f['name'] + '", "arguments": ' + qk_args(call) + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif not (tools and loop.first and message['role'] == 'system') %}
        {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}""".replace(
    "HERMES_TOOLS_END", _jinja_text(_HERMES_TOOLS_END)).replace("HERMES_TOOLS", _jinja_text(_HERMES_TOOLS))

CHATML_JINJA = _CHATML_JINJA.replace("REASONING", "")

# Qwen3's rule: thinking is kept only for assistant turns after the last user message (earlier ones lose it).
# Unlike Qwen3's own template, a turn without reasoning gets no empty <think></think> block, so a tool-calling turn
# renders the same whether or not it is the last message.
QWEN3_JINJA = _CHATML_JINJA.replace("{%- if tools %}", """\
{%- set qk = namespace(last_user=-1) %}
{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set qk.last_user = loop.index0 %}{%- endif %}
{%- endfor %}
{%- if tools %}""", 1).replace("REASONING", r"""
        {%- if message['reasoning_content'] and loop.index0 > qk.last_user %}
            {{- '<think>\n' + message['reasoning_content'] + '\n</think>\n\n' }}
        {%- endif %}""")

_GO_HERMES_SYSTEM = """\
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ if .Tools }}

{{ end }}{{ end }}{{ if .Tools }}""" + _HERMES_TOOLS + """
{{- range .Tools }}
{{ . }}
{{- end }}""" + _HERMES_TOOLS_END + """{{ end }}<|im_end|>
{{ end }}"""

# `$open`: inside the user turn that holds a run of tool results (closed by the next non-tool message or the end).
_GO_CHATML = _GO_HERMES_SYSTEM + """
{{- $open := false }}COUNT_USERS
{{- range .Messages }}
{{- if $open }}{{ if ne .Role "tool" }}<|im_end|>
{{ if eq .Role "assistant" }}<|im_start|>assistant
{{ end }}{{ $open = false }}{{ end }}{{ end }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
<|im_start|>assistant
SEEN_USER{{ else if eq .Role "assistant" }}THINKING{{ .Content }}{{ $sep := .Content }}{{ if .ToolCalls }}
{{- range .ToolCalls }}{{ if $sep }}
<tool_call>{{ else }}<tool_call>{{ end }}
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
</tool_call>{{ $sep = true }}{{ end }}{{ end }}<|im_end|>
{{ else if eq .Role "tool" }}{{ if not $open }}<|im_start|>user{{ end }}
<tool_response>
{{ .Content }}
</tool_response>{{ $open = true }}
{{- end }}
{{- end }}
{{- if $open }}<|im_end|>
<|im_start|>assistant
{{ end }}"""

CHATML_GO = _GO_CHATML.replace("COUNT_USERS", "").replace("SEEN_USER", "").replace("THINKING", "")

# Ollama gives each message its .Thinking (api.Message "thinking"); .Think/.IsThinkSet (the request's think flag)
# are not used: the Jinja twin has no enable_thinking either, so think=false is not enforced by the prompt.
# `$users`/`$seen` count user turns as strings of dots: equal once past the last user message.
QWEN3_GO = _GO_CHATML.replace("COUNT_USERS", """
{{- $users := "" }}{{ range .Messages }}{{ if eq .Role "user" }}{{ $users = print $users "." }}{{ end }}{{ end }}
{{- $seen := "" }}""").replace("SEEN_USER", """{{ $seen = print $seen "." }}""").replace("THINKING", """\
{{ if eq $seen $users }}{{ if .Thinking }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ end }}""")

# Llama 3.1's JSON tool calling as Meta's template writes it: the tools in the first user message (Meta's default,
# and prefix-stable: Ollama's llama3.1 moves them to the last one), calls as {"name", "parameters"} with the content
# dropped (Meta and Ollama do; Ollama's "{" tool parser gives up once prose precedes the JSON), several calls one
# per line, results as `ipython` turns.
_LLAMA_TOOLS = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments that "
    "best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary "
    "of argument name and its value}.Do not use variables.\n\n")

LLAMA3_JINJA = _MACROS + r"""
{{- bos_token }}
{%- set qk = namespace(tools=tools) %}
{%- for message in messages %}
    {%- if message['role'] == 'tool' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}
    {%- elif message['role'] == 'assistant' and message['tool_calls'] %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- for call in message['tool_calls'] %}
            {%- set f = call['function'] if call['function'] is defined else call %}
            {{- ('\n' if not loop.first else '') + '{"name": "' + f['name'] + '", "parameters": ' + qk_args(call)
                + '}' }}
        {%- endfor %}
        {{- '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
        {%- if message['role'] == 'user' and qk.tools %}
            {{- LLAMA_TOOLS }}{%- for tool in qk.tools %}{{- qk_tool(tool) + '\n\n' }}{%- endfor %}
            {%- set qk.tools = none %}
        {%- endif %}
        {{- message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}""".replace(
    "LLAMA_TOOLS", _jinja_text(_LLAMA_TOOLS))

LLAMA3_GO = """\
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- $tools := .Tools }}{{ $open := false }}
{{- range .Messages }}
{{- if $open }}{{ if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}{{ $open = false }}{{ end }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ if $tools }}""" + _LLAMA_TOOLS + """{{ range $tools }}{{ . }}

{{ end }}{{ $tools = false }}{{ end }}{{ .Content }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>

{{ else if eq .Role "assistant" }}{{ $sep := false }}{{ if .ToolCalls }}{{ range .ToolCalls }}{{ if $sep }}
{{ end }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ $sep = true }}{{ end }}
{{- else }}{{ .Content }}{{ end }}<|eot_id|>
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ $open = true }}
{{- end }}
{{- end }}
{{- if $open }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}"""

# Mistral v0.3's tool tokens, as its template and Ollama's write them, but with the tools before the first user
# message (theirs go before the last, which moves as the conversation grows). Call ids are not written: training
# data often has none while Ollama invents them, and the model should not learn to depend on them. A tool result
# is {"content": <JSON string>}, valid JSON whatever the text. A message with calls renders only the calls, as
# Mistral's and Ollama's templates do (its content is dropped).
MISTRAL_JINJA = _MACROS + r"""
{{- bos_token }}
{%- set ns = namespace(system='', tools=tools) %}
{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] %}
{%- set ns.system = messages[0]['content'] + '\n\n' %}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {%- if ns.tools %}
            {{- '[AVAILABLE_TOOLS] [' }}
            {%- for tool in ns.tools %}{{- (',' if not loop.first else '') + qk_tool(tool) }}{%- endfor %}
            {{- '][/AVAILABLE_TOOLS]' }}{%- set ns.tools = none %}
        {%- endif %}
        {{- '[INST] ' + ns.system + message['content'] + ' [/INST]' }}{%- set ns.system = '' %}
    {%- elif message['role'] == 'assistant' %}
        {%- if not message['tool_calls'] %}{{- message['content'] }}
        {%- else %}
            {{- '[TOOL_CALLS] [' }}
            {%- for call in message['tool_calls'] %}
                {%- set f = call['function'] if call['function'] is defined else call %}
                {{- (', ' if not loop.first else '') + '{"name": "' + f['name'] + '", "arguments": ' + qk_args(call)
                    + '}' }}
            {%- endfor %}
            {{- ']' }}
        {%- endif %}
        {{- eos_token }}
    {%- elif message['role'] == 'tool' %}
        {{- '[TOOL_RESULTS] {"content": ' + qk_json(message['content']) + '}[/TOOL_RESULTS]' }}
    {%- endif %}
{%- endfor %}"""

MISTRAL_GO = """\
{{- $system := .System }}{{ $tools := .Tools }}
{{- range .Messages }}
{{- if eq .Role "user" }}{{ if $tools }}[AVAILABLE_TOOLS] {{ $tools }}[/AVAILABLE_TOOLS]{{ $tools = false }}{{ end -}}
[INST] {{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }} [/INST]
{{- else if eq .Role "assistant" }}{{ if .ToolCalls }}[TOOL_CALLS] [{{ $sep := "" }}
{{- range .ToolCalls }}{{ $sep }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- $sep = ", " }}{{ end }}]""" + _EOS + """{{ else }}{{ .Content }}""" + _EOS + """{{ end }}
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ json .Content }}}[/TOOL_RESULTS]
{{- end }}
{{- end }}"""
