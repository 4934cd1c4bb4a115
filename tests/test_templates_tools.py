"""Tool calls and reasoning in the built-in chat templates: transformers (training), Ollama's Go twin and llama.cpp's
Jinja render the same text; the templates stay prefix-stable; qwen3 keeps reasoning only after the last user turn."""

from __future__ import annotations

import copy

import pytest

from qlora_kit.data.templates import CHAT_TEMPLATES, OLLAMA_TEMPLATES, identify_template
from qlora_kit.gguf.ollama.ollama import ollama_template

from go_template import go_json, go_renderer, ollama_values, parse_go, render_go

TOOL_TEMPLATES = ["chatml", "llama-3", "mistral", "qwen3"]

# Keys in an order Go would not print them, a key Ollama drops ("default"), characters Go escapes (<, &),
# a nested object, an array and an enum.
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city (C & F, <today>).",
    "parameters": {"type": "object", "properties": {
        "unit": {"type": "string", "enum": ["C", "F"], "description": "Unit", "default": "C"},
        "city": {"description": "City name", "type": "string"},
        "where": {"type": "object", "properties": {"lon": {"type": "number"}, "lat": {"type": "number"}},
                  "required": ["lon", "lat"]},
        "days": {"type": ["integer", "null"], "items": {"type": "integer"}}},
        "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now.",
                                          "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, CLOCK]

SYSTEM = {"role": "system", "content": "You are terse."}
ASK = {"role": "user", "content": "Weather in Paris and the time?"}


def call(name, arguments, id=None):
    return {**({"id": id} if id else {}), "type": "function", "function": {"name": name, "arguments": arguments}}


PARIS = call("get_weather", {"unit": "C", "city": "Paris & <Co>", "where": {"lon": 2.35, "lat": 48.85}}, "call_1")
CALL = {"role": "assistant", "content": "", "tool_calls": [PARIS]}
BOTH = {"role": "assistant", "content": "", "tool_calls": [PARIS, call("get_time", {})]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp": 21}'}
TIME = {"role": "tool", "name": "get_time", "content": "12:00"}
ANSWER = {"role": "assistant", "content": "21 C, noon."}
AGAIN = {"role": "user", "content": "And in Rome?"}
ROME = {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Rome", "days": 2})]}

CONVERSATIONS = {
    "single-call": [SYSTEM, ASK, CALL],
    "parallel-calls": [ASK, BOTH, RESULT, TIME, ANSWER],
    "call-result-answer": [SYSTEM, ASK, CALL, RESULT, ANSWER],
    "two-rounds": [SYSTEM, ASK, CALL, RESULT, ANSWER, AGAIN, ROME, {**RESULT, "content": "19"}, ANSWER],
    "waiting-for-results": [ASK, BOTH, RESULT, TIME],
    "content-and-call": [ASK, {**CALL, "content": "Checking."}, RESULT],
    "no-tool-use": [SYSTEM, ASK, ANSWER, AGAIN],
}
THINKING = [SYSTEM, ASK, {**CALL, "reasoning_content": "Paris first."}, RESULT,
            {**ANSWER, "reasoning_content": "It is 21."}]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from qlora_kit.model.builtin import materialize

    return AutoTokenizer.from_pretrained(materialize("builtin:tiny-llama"))


def render(tokenizer, name, messages, tools=TOOLS, add_generation_prompt=None):
    """transformers' apply_chat_template, as training runs it; the generation prompt after a user or tool turn."""
    if add_generation_prompt is None:
        add_generation_prompt = messages[-1]["role"] in ("user", "tool")
    tokenizer.chat_template = CHAT_TEMPLATES[name].jinja
    return tokenizer.apply_chat_template(copy.deepcopy(messages), tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def expected_for_ollama(tokenizer, name, messages, tools):
    # Ollama (llama.cpp) adds BOS itself, so the Go twins do not write it.
    return render(tokenizer, name, messages, tools).removeprefix(tokenizer.bos_token)


def cases():
    for name in TOOL_TEMPLATES:
        for label, messages in CONVERSATIONS.items():
            yield name, label, messages, TOOLS
        yield name, "no-tools", CONVERSATIONS["no-tool-use"], None
        yield name, "tools-no-system", CONVERSATIONS["no-tool-use"][1:], TOOLS
    yield "qwen3", "thinking", THINKING, TOOLS


CASES = list(cases())


def test_capabilities():
    assert [n for n, t in CHAT_TEMPLATES.items() if t.tools] == TOOL_TEMPLATES
    assert [n for n, t in CHAT_TEMPLATES.items() if t.reasoning] == ["qwen3"]
    assert identify_template(CHAT_TEMPLATES["qwen3"].jinja) == "qwen3"
    assert identify_template(CHAT_TEMPLATES["chatml"].jinja) == "chatml"


@pytest.mark.parametrize("name, label, messages, tools", CASES, ids=[f"{c[0]}/{c[1]}" for c in CASES])
def test_go_twin_renders_what_transformers_renders(tokenizer, name, label, messages, tools):
    go = ollama_template(name, tokenizer.eos_token)
    assert render_go(go, messages, None, tools) == expected_for_ollama(tokenizer, name, messages, tools)
    if messages[0]["role"] == "system":  # the system prompt as the Modelfile's SYSTEM
        assert render_go(go, messages[1:], messages[0]["content"], tools) == expected_for_ollama(
            tokenizer, name, messages, tools)


def test_real_go_renders_what_our_interpreter_and_transformers_render(tokenizer, tmp_path_factory):
    render_real = go_renderer(tmp_path_factory.mktemp("ollama-render"))
    if render_real is None:
        pytest.skip("Go is not installed (Debian: apt-get install golang-go; .ci/run installs it)")
    batch = [(ollama_template(n, tokenizer.eos_token), m, None, t) for n, _, m, t in CASES]
    got = render_real(batch)
    assert got == [render_go(*case) for case in batch]
    assert got == [expected_for_ollama(tokenizer, n, m, t) for n, _, m, t in CASES]


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
@pytest.mark.parametrize("label", ["parallel-calls", "two-rounds", "content-and-call"])
def test_prefix_stable_at_every_assistant_turn(tokenizer, name, label):
    messages = CONVERSATIONS[label]
    full = render(tokenizer, name, messages, add_generation_prompt=False)
    for k, message in enumerate(messages):
        if message["role"] == "assistant":  # where encode.py looks for the assistant turn
            prefix = render(tokenizer, name, messages[:k], add_generation_prompt=True)
            upto = render(tokenizer, name, messages[: k + 1], add_generation_prompt=False)
            assert upto.startswith(prefix) and full.startswith(upto), (name, k)


def test_chatml_text():
    text = render_jinja("chatml", [SYSTEM, ASK, BOTH, RESULT, TIME], [CLOCK])
    assert text == (
        '<|im_start|>system\nYou are terse.\n\n# Tools\n\nYou may call one or more functions to assist with the user '
        'query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n'
        '{"type":"function","function":{"name":"get_time","description":"The time now.","parameters":'
        '{"type":"object","properties":{}}}}\n</tools>\n\nFor each function call, return a json object with function '
        'name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
        '"arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\nWeather in Paris and the time?<|im_end|>\n'
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city":"Paris \\u0026 \\u003cCo\\u003e","unit":"C","where":{"lat":48.85,"lon":2.35}}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n12:00\n</tool_response>'
        '<|im_end|>\n<|im_start|>assistant\n')


def test_tool_json_is_what_ollama_prints():
    # Go's field order and omitempty, top-level properties sorted, nested ones in order, "default" dropped.
    assert render_jinja("chatml", [ASK], [WEATHER]).split("<tools>\n")[1].split("\n</tools>")[0] == (
        '{"type":"function","function":{"name":"get_weather","description":"Weather for a city (C \\u0026 F, '
        '\\u003ctoday\\u003e).","parameters":{"type":"object","required":["city"],"properties":{'
        '"city":{"type":"string","description":"City name"},'
        '"days":{"type":["integer","null"],"items":{"type":"integer"}},'
        '"unit":{"type":"string","description":"Unit","enum":["C","F"]},'
        '"where":{"type":"object","properties":{"lon":{"type":"number"},"lat":{"type":"number"}},'
        '"required":["lon","lat"]}}}}}')
    assert go_json(ollama_values([ASK], None, [WEATHER])["Tools"][0]) in render_jinja("chatml", [ASK], [WEATHER])
    # Known difference: Go prints float64, so 3.0 -> 3 and 1e-07 -> 1e-7 where Python writes 3.0 and 1e-07.
    assert (go_json(3.0), go_json(1e-7), go_json(0.25), go_json(7)) == ("3", "1e-7", "0.25", "7")


def test_llama3_and_mistral_text(tokenizer):
    llama = render(tokenizer, "llama-3", [SYSTEM, ASK, BOTH, RESULT], tools=[CLOCK])
    assert llama.removeprefix(tokenizer.bos_token) == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a "
        "function call with its proper arguments that best answers the given prompt.\n\nRespond in the format "
        '{"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.\n\n'
        '{"type":"function","function":{"name":"get_time","description":"The time now.","parameters":'
        '{"type":"object","properties":{}}}}\n\nWeather in Paris and the time?<|eot_id|>'
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city":"Paris '
        '\\u0026 \\u003cCo\\u003e","unit":"C","where":{"lat":48.85,"lon":2.35}}}\n'
        '{"name": "get_time", "parameters": {}}'
        '<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    mistral = render(tokenizer, "mistral", [SYSTEM, ASK, BOTH, RESULT, ANSWER], tools=[CLOCK])
    assert mistral.removeprefix(tokenizer.bos_token) == (
        '[AVAILABLE_TOOLS] [{"type":"function","function":{"name":"get_time","description":"The time now.",'
        '"parameters":{"type":"object","properties":{}}}}][/AVAILABLE_TOOLS][INST] You are terse.\n\nWeather in Paris '
        'and the time? [/INST][TOOL_CALLS] [{"name": "get_weather", "arguments": '
        '{"city":"Paris \\u0026 \\u003cCo\\u003e",'
        '"unit":"C","where":{"lat":48.85,"lon":2.35}}}, {"name": "get_time", "arguments": {}}]<|im_end|>'
        '[TOOL_RESULTS] {"content": "{\\"temp\\": 21}"}[/TOOL_RESULTS]21 C, noon.<|im_end|>')


def test_qwen3_keeps_reasoning_only_after_the_last_user_message(tokenizer):
    text = render(tokenizer, "qwen3", THINKING)
    assert "<|im_start|>assistant\n<think>\nParis first.\n</think>\n\n<tool_call>\n" in text
    assert "<|im_start|>assistant\n<think>\nIt is 21.\n</think>\n\n21 C, noon.<|im_end|>\n" in text
    later = render(tokenizer, "qwen3", [*THINKING, AGAIN])
    assert "<think>" not in later  # a user message followed: earlier turns lose their thinking
    assert later == render(tokenizer, "qwen3", [*[{k: v for k, v in m.items() if k != "reasoning_content"}
                                                   for m in THINKING], AGAIN])
    # Not prefix-stable across a later user turn (the data layer finds the turn without reasoning), but it is
    # within the tool loop after the last user message:
    full = render(tokenizer, "qwen3", THINKING, add_generation_prompt=False)
    assert full.startswith(render(tokenizer, "qwen3", THINKING[:4], add_generation_prompt=True))
    assert render(tokenizer, "qwen3", THINKING[:2]).endswith("<|im_start|>assistant\n")
    # Without reasoning or tools, qwen3 renders what chatml renders.
    plain = CONVERSATIONS["no-tool-use"]
    assert render(tokenizer, "qwen3", plain, tools=None) == render(tokenizer, "chatml", plain, tools=None)


def _tool_call_tag(nodes: list):
    """Ollama's tools/template.go parseTag on our parse tree: the first non-blank text in the first
    {{ if ...ToolCalls }} body, stopping at any action; cut at "{" and trimmed; "{" when there is none."""
    def find_if(nodes):
        for node in nodes:
            if isinstance(node, list) and node[0] in ("if", "range"):
                for cond, body in node[1]:
                    if node[0] == "if" and cond and any("ToolCalls" in t.split(".") for t in cond):
                        return body
                    if (found := find_if(body)) is not None:
                        return found
        return None

    def first_text(nodes):
        for node in nodes:
            if isinstance(node, str):
                if node.strip():
                    return node
            elif node[0] in ("if", "range"):
                return next((t for _, body in node[1] if (t := first_text(body))), None)
            else:  # an action
                return None
        return None

    body = find_if(nodes)
    text = first_text(body) if body is not None else None
    return (text or "").split("{")[0].strip() or "{"


def test_ollama_finds_the_tool_call_tag_and_the_thinking_tags():
    tags = {name: _tool_call_tag(parse_go(OLLAMA_TEMPLATES[name].go)) for name in TOOL_TEMPLATES}
    assert tags == {"chatml": "<tool_call>", "qwen3": "<tool_call>", "llama-3": "{", "mistral": "[TOOL_CALLS] ["}
    # thinking/template.go InferTags: the text around {{ .Thinking }} inside `range .Messages` gives the tags that
    # Ollama's thinking parser cuts from the output (and makes Ollama list the "thinking" capability).
    assert "{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}" in OLLAMA_TEMPLATES["qwen3"].go


def render_jinja(name, messages, tools, bos="", eos="</s>"):
    """llama.cpp's own rendering (llama-cpp-python's Jinja2ChatFormatter, given the template, bos and eos as a GGUF's
    metadata has them; no model needed). It takes tools as the `tools` keyword, as transformers does."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=CHAT_TEMPLATES[name].jinja, eos_token=eos, bos_token=bos,
                                    add_generation_prompt=messages[-1]["role"] in ("user", "tool"))
    return formatter(messages=copy.deepcopy(messages), tools=tools).prompt


@pytest.mark.parametrize("name, label, messages, tools", CASES, ids=[f"{c[0]}/{c[1]}" for c in CASES])
def test_llama_cpp_renders_what_transformers_renders(tokenizer, name, label, messages, tools):
    got = render_jinja(name, messages, tools, tokenizer.bos_token, tokenizer.eos_token)
    assert got == render(tokenizer, name, messages, tools)
