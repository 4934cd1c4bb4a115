"""Ollama Modelfiles: each Go template renders exactly what its Jinja twin (used in training) renders."""

from __future__ import annotations

from contextlib import nullcontext

import jinja2
import pytest

from qlora_kit.data.encode import IGNORE_INDEX, apply_chat_template_choice, encode_example
from qlora_kit.data.formats import Example
from qlora_kit.data.templates import CHAT_TEMPLATES, FALLBACK_TEMPLATE, OLLAMA_TEMPLATES, identify_template
from qlora_kit.gguf.ollama.ollama import build_modelfile, ollama_template

from go_template import render_go

# bos/eos text as each family's tokenizer has it (ChatML templates use neither).
SPECIAL = {"chatml": ("", ""), "llama-3": ("<|begin_of_text|>", "<|eot_id|>"), "alpaca": ("<s>", "</s>"),
           "gemma": ("<bos>", "<eos>"), "mistral": ("<s>", "</s>"),
           "qwen3": ("", "")}
SYSTEM = {"role": "system", "content": "You are terse."}
CHAT = [SYSTEM, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}]


def jinja(name: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    bos, eos = SPECIAL[name]
    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    return env.from_string(CHAT_TEMPLATES[name].jinja).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)


def test_every_chat_template_has_an_ollama_twin_with_its_stops():
    assert list(OLLAMA_TEMPLATES) == list(CHAT_TEMPLATES)
    for name, template in CHAT_TEMPLATES.items():
        assert set(template.end_of_turn) <= set(OLLAMA_TEMPLATES[name].stops)


@pytest.mark.parametrize("name", list(CHAT_TEMPLATES))
@pytest.mark.parametrize("messages", [CHAT, CHAT[1:]], ids=["system", "no-system"])
def test_go_template_renders_what_the_jinja_template_renders(name, messages):
    bos, eos = SPECIAL[name]
    # Ollama (llama.cpp) adds BOS itself when the GGUF says add_bos_token, so the Go template must not write it:
    # compare with the Jinja text minus its leading bos (alpaca's template writes none).
    expected = jinja(name, messages).removeprefix(bos)
    go = ollama_template(name, eos or None)
    assert render_go(go, messages, None) == expected  # the system prompt sent as a message (Ollama's chat API)
    if messages[0]["role"] == "system":  # ... or given as the Modelfile's SYSTEM
        assert render_go(go, messages[1:], messages[0]["content"]) == expected


def test_fallback_template_keeps_the_roles_apart():
    assert render_go(FALLBACK_TEMPLATE, CHAT, None) == (
        "You are terse.\n\nUser: What is 2+2?\n\nAssistant: 4.\n\nUser: And 3+3?\n\nAssistant: ")


VENDOR_CHATML = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}
        {{- 'You are a helpful assistant.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


def test_identify_template():
    for name, template in CHAT_TEMPLATES.items():
        assert identify_template(template.jinja) == name
    assert identify_template(VENDOR_CHATML) == "chatml"
    for garbage in ("", "{{ messages }}", "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"):
        assert identify_template(garbage) is None


CHATML_MODELFILE = '''\
FROM ./model-Q4_K_M.gguf
TEMPLATE """{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ if .Tools }}

{{ end }}{{ end }}{{ if .Tools }}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{{ . }}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>{{ end }}<|im_end|>
{{ end }}
{{- $open := false }}
{{- range .Messages }}
{{- if $open }}{{ if ne .Role "tool" }}<|im_end|>
{{ if eq .Role "assistant" }}<|im_start|>assistant
{{ end }}{{ $open = false }}{{ end }}{{ end }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
<|im_start|>assistant
{{ else if eq .Role "assistant" }}{{ .Content }}{{ $sep := .Content }}{{ if .ToolCalls }}
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
PARAMETER stop "<|im_end|>"
PARAMETER stop "<|im_start|>"
PARAMETER stop "<|endoftext|>"
SYSTEM """You are terse."""
'''


def test_modelfile_for_chatml():
    text, warnings = build_modelfile("model-Q4_K_M.gguf", "chatml", "You are terse.", ["<|endoftext|>", "<|im_end|>"])
    assert (text, warnings) == (CHATML_MODELFILE, [])


def test_unknown_template_gets_the_fallback_and_a_warning():
    for name in (None, "vicuna"):
        text, warnings = build_modelfile("m.gguf", name, None, ["</s>"])
        assert len(warnings) == 1 and "not recognised" in warnings[0] and "fallback" in warnings[0]
        assert f'TEMPLATE """{FALLBACK_TEMPLATE}"""' in text
        assert 'PARAMETER stop "</s>"' in text.splitlines() and "SYSTEM" not in text
    assert "'vicuna'" in warnings[0]


def test_eos_terminated_templates_need_the_eos_text():
    text, warnings = build_modelfile("m.gguf", "mistral", None, [], eos_token="</s>")
    assert warnings == [] and "{{ .Content }}</s>" in text and 'PARAMETER stop "</s>"' in text.splitlines()
    text, warnings = build_modelfile("m.gguf", "mistral", None, [])
    assert len(warnings) == 1 and "eos token" in warnings[0] and "{EOS}" not in text


def test_stop_strings_are_quoted_the_way_ollama_reads_them():
    # Ollama's Modelfile parser has no escape sequences: "..." and """...""" values are taken verbatim (so \" would
    # keep its backslash). A value holding quotes goes in """...""", as Ollama's own Modelfile writer does.
    text, _ = build_modelfile("m.gguf", "chatml", None, ['say "stop"', "a\\b", "<|im_end|>"])
    stops = [line for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"',
                     'PARAMETER stop """say "stop""""', 'PARAMETER stop "a\\b"']
    with pytest.raises(ValueError, match="cannot be written into a Modelfile"):
        build_modelfile("m.gguf", "chatml", None, ['x"""\ny'])  # would end the value early in either quoting
    with pytest.raises(ValueError):
        build_modelfile("sub/m.gguf", "chatml", None, [])


def test_render_go_follows_go_and_ollama():
    user = {"role": "user", "content": "Hi"}
    assert render_go("a \n {{- .System -}} \n\t b", [SYSTEM], None) == "aYou are terse.b"  # trims all white space
    # .Messages keeps system messages (current Ollama) and merges consecutive same-role ones.
    assert render_go("{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}", [SYSTEM, user, user], None) == (
        "system=You are terse.;user=Hi\n\nHi;")
    # The Modelfile SYSTEM is used only when the conversation does not start with its own.
    assert render_go("{{ .System }}", [user], "Default.") == "Default."
    assert render_go("{{ .System }}", [SYSTEM, user], "Default.") == "You are terse."
    template = '{{ $s := .System }}{{ range .Messages }}{{ if and .Content $s }}[{{ $s }}]{{ $s = "" }}' \
               '{{ else if eq .Role "user" "x" }}{{ $.System }}{{ else }}-{{ end }}{{ end }}'
    assert render_go(template, [SYSTEM, user, user, {"role": "assistant", "content": "A"}, user], None) == (
        "[You are terse.]You are terse.-You are terse.")


@pytest.mark.parametrize("template", [
    "{{ .Prompt }}", "{{ range $i, $m := .Messages }}{{ end }}", "{{ if .System }}x", "x{{ end }}",
    "{{ .System | trim }}", "{{ len .Messages }}", '{{ if and .System (eq .Role "user") }}{{ end }}', "{{/* note */}}", "{{ }}", "{{ .Messages }}", "{{ $x }}",
    "{{ range .Messages }}{{ else }}{{ end }}", "{{ if .System }}{{ else }}{{ else }}{{ end }}", "{{ .System",
])
def test_render_go_refuses_what_it_does_not_implement(template):
    with pytest.raises(ValueError):
        render_go(template, CHAT, None)


LONG_CHAT = [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]


@pytest.mark.parametrize("name, text", [
    ("gemma", "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
              "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\nBye.<end_of_turn>\n"),
    ("mistral", "<s>[INST] You are terse.\n\nHi [/INST]Hello.</s>[INST] Bye [/INST]Bye.</s>"),
])
def test_added_templates_are_prefix_stable(name, text):
    assert jinja(name, LONG_CHAT, add_generation_prompt=False) == text
    for k in range(1, len(LONG_CHAT)):
        assert text.startswith(jinja(name, LONG_CHAT[:k], add_generation_prompt=False))
        if LONG_CHAT[k]["role"] == "assistant":  # where encode.py looks for the assistant turn
            assert text.startswith(jinja(name, LONG_CHAT[:k]))
    assert jinja(name, LONG_CHAT[1:], add_generation_prompt=False) == text.replace("You are terse.\n\n", "")


@pytest.mark.parametrize("name, trained", [
    ("gemma", "Hello.<end_of_turn>\nBye.<end_of_turn>\n"),
    ("mistral", "Hello.<|im_end|>Bye.<|im_end|>"),  # the tiny tokenizer's eos is <|im_end|>
])
def test_added_templates_train_the_assistant_turns(tiny_tokenizer, name, trained):
    with pytest.warns(UserWarning) if CHAT_TEMPLATES[name].special_tokens else nullcontext():
        apply_chat_template_choice(tiny_tokenizer, name)
    enc = encode_example(tiny_tokenizer, Example(messages=LONG_CHAT))
    assert tiny_tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX]) == trained


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """Go's own text/template on Ollama's template data (tests/ollama_render.go, built here in a temp dir):
    render([(template, messages, system, tools), ...]) -> texts."""
    from go_template import go_renderer

    render = go_renderer(tmp_path_factory.mktemp("go-render"))
    if render is None:
        pytest.skip("Go is not installed (Debian: apt-get install golang-go; .ci/run installs it)")
    return render


GO_CONVERSATIONS = {"system": CHAT, "no-system": CHAT[1:], "long": LONG_CHAT, "long-no-system": LONG_CHAT[1:],
                    "one-turn": CHAT[1:2]}


def test_go_text_template_renders_every_ollama_template_as_jinja_does(go_render):
    cases, expected, labels = [], [], []
    for name in CHAT_TEMPLATES:
        bos, eos = SPECIAL[name]
        go = ollama_template(name, eos or None)
        for label, messages in GO_CONVERSATIONS.items():
            want = jinja(name, messages, add_generation_prompt=messages[-1]["role"] == "user").removeprefix(bos)
            ways = [(messages, None)]  # the system prompt as a message (Ollama's chat API) ...
            if messages[0]["role"] == "system":  # ... or as the Modelfile's SYSTEM
                ways.append((messages[1:], messages[0]["content"]))
            for msgs, system in ways:
                cases.append((go, msgs, system, None))
                expected.append(want)
                labels.append(f"{name}/{label}/{'SYSTEM' if system else 'message'}")
    rendered = go_render(cases)
    assert len(rendered) == len(cases) == 6 * 7
    mismatched = [(lbl, got, want) for lbl, got, want in zip(labels, rendered, expected) if got != want]
    assert mismatched == []
    # Our interpreter agrees with Go on every case too (it is what the faster tests above rely on).
    assert [render_go(t, msgs, system) for t, msgs, system, _ in cases] == rendered
    assert go_render([(FALLBACK_TEMPLATE, CHAT, None, None)]) == [render_go(FALLBACK_TEMPLATE, CHAT, None)]
    # The comparison can fail: without its first trim marker, Go keeps a newline that Jinja does not write.
    untrimmed = ollama_template("chatml").replace("{{- if or .System .Tools }}", "\n{{ if or .System .Tools }}", 1)
    assert go_render([(untrimmed, CHAT, None, None)]) == ["\n" + jinja("chatml", CHAT)]
