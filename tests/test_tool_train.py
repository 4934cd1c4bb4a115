"""Tool calls end to end on the tiny model (issue #27): `data check` shows the call trained, `train` trains it, the
exported GGUF keeps the template that renders tools (llama.cpp's Jinja rendering equals training's), the Modelfile's
Go template renders the same conversation to the same text, `eval` scores calls, `chat --tools` answers with an
OpenAI-style message."""

from __future__ import annotations

import json
import re

import pytest

from conftest import run_cli, write_jsonl, write_recipe

pytestmark = pytest.mark.slow

ADD = {"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                        "parameters": {"type": "object", "properties": {
                                            "a": {"type": "integer"}, "b": {"type": "integer"}},
                                            "required": ["a", "b"]}}}


def _row(a: int, b: int, answer: bool) -> dict:
    call = {"id": f"call{a}x{b}", "type": "function",
            "function": {"name": "add", "arguments": json.dumps({"a": a, "b": b})}}
    messages = [{"role": "user", "content": f"{a}+{b}?"}, {"role": "assistant", "tool_calls": [call]}]
    if answer:
        messages += [{"role": "tool", "tool_call_id": call["id"], "content": str(a + b)},
                     {"role": "assistant", "content": f"It is {a + b}."}]
    return {"tools": [ADD], "messages": messages}


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools")
    train = write_jsonl(tmp / "train.jsonl", [_row(a, a + 1, a % 3 == 0) for a in range(24)])
    held = write_jsonl(tmp / "held.jsonl", [_row(a, 2 * a, False) for a in range(30, 36)])
    recipe = write_recipe(tmp / "tools.yaml", model={"max_seq_length": 768},
                          data={"path": str(train), "eval_path": str(held), "chat_template": "chatml"},
                          train={"max_steps": 4}, merge={"enabled": True, "verify": False},
                          export={"enabled": True, "quant": ["q8_0"], "verify": False})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "runs" / "tools", recipe, held


def test_data_check_previews_the_call_inside_the_trained_span(tool_run):
    _, recipe, _ = tool_run
    result = run_cli("data", "check", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "rows with tools: 24 (24 tool calls, trained; tool results and the tools list are context)" in out
    preview = out.split("masking preview", 1)[1]
    trained = "".join(part.split("]]")[0] for part in preview.split("[[")[1:]).replace("\n  ", "\n")  # indented
    assert re.search(r'<tool_call>\n\{"name": "add", "arguments": \{"a":(\d+),"b":(\d+)\}\}\n</tool_call>', trained)
    # The tools list (elided from the preview: it is long) and the tool's result are context.
    assert "tokens not shown) ..." in preview and "Add two numbers" not in trained
    assert "<tool_response>" in preview and "<tool_response>" not in trained


def _gguf_template(path) -> str:
    """tokenizer.chat_template as llama.cpp reads it from the file."""
    from qlora_kit.native.loader import load

    llm = load(path, "testing", n_ctx=256, vocab_only=True)
    try:
        return llm.metadata["tokenizer.chat_template"]
    finally:
        llm.close()


def _conversation():
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "40+2?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": {"a": 40, "b": 2}}}]},
            {"role": "tool", "name": "add", "content": "42"}, {"role": "assistant", "content": "It is 42."}]


def test_the_gguf_keeps_the_template_that_renders_tools_as_training_does(tool_run):
    """llama.cpp's chat handling (llama-cpp-python's Jinja2ChatFormatter over the GGUF's tokenizer.chat_template)
    renders a tool conversation exactly as the tokenizer training used does."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    run, _, _ = tool_run
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    template = _gguf_template(run / "gguf" / "tools-q8_0.gguf")
    assert template == tok.chat_template
    for upto, generation in ((2, True), (5, False)):
        messages = _conversation()[:upto]
        expected = tok.apply_chat_template(messages, tools=[ADD], tokenize=False, add_generation_prompt=generation)
        formatter = Jinja2ChatFormatter(template, eos_token=tok.eos_token, bos_token=tok.bos_token or "",
                                        add_generation_prompt=generation)
        assert formatter(messages=messages, tools=[ADD]).prompt == expected


def test_the_modelfile_renders_tools_as_training_does(tool_run):
    from go_template import ollama_values, render_go
    from transformers import AutoTokenizer

    run, _, _ = tool_run
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    modelfile = (run / "gguf" / "Modelfile").read_text()
    go = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert ".Tools" in go and ".ToolCalls" in go
    messages = _conversation()[:4]
    expected = tok.apply_chat_template(messages, tools=[ADD], tokenize=False, add_generation_prompt=True)
    assert render_go(go, ollama_values(messages, tools=[ADD])) == expected


def test_eval_scores_tool_calls_per_row_and_per_call(tool_run, tmp_path):
    run, _, held = tool_run
    rows = [json.loads(line) for line in held.read_text().splitlines()]
    # An old model's answers: right on every row but the first (wrong arguments).
    recorded = write_jsonl(tmp_path / "old.jsonl", [
        {"messages": r["messages"][:1], "answer": "<tool_call>\n" + json.dumps(
            {"name": "add", "arguments": {**json.loads(r["messages"][1]["tool_calls"][0]["function"]["arguments"]),
                                          **({"b": -1} if i == 0 else {})}}) + "\n</tool_call>"}
        for i, r in enumerate(rows)])
    result = run_cli("eval", str(run), "--systems", f"adapter,recorded:{recorded}", "--out", str(tmp_path / "ev"),
                     "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["metric"] == "tool_call_exact" and report["tool_calls"] is True
    old = report["results"][f"recorded:{recorded}"]
    assert old["tool_call_exact"] == pytest.approx(5 / 6)
    assert old["tool_calls"] == {"expected": 6, "predicted": 6, "name_correct": 6, "exact": 5,
                                 "precision": pytest.approx(5 / 6), "recall": pytest.approx(5 / 6),
                                 "name_accuracy": 1.0, "syntax": "hermes"}
    assert "| calls expected |" in (tmp_path / "ev" / "report.md").read_text()


def test_chat_with_tools_answers_an_openai_message_and_refuses_bad_tools(tool_run, tmp_path):
    run, _, _ = tool_run
    gguf = run / "gguf" / "tools-q8_0.gguf"
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([ADD]))
    result = run_cli("chat", str(gguf), "--tools", str(tools), "--prompt", "3+4?", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr[-2000:]
    message = json.loads(result.stdout.strip().splitlines()[-1])
    assert message["role"] == "assistant" and set(message) <= {"role", "content", "tool_calls", "reasoning_content"}
    for call in message.get("tool_calls", []):  # four steps of training: calls, if any, are well formed
        assert isinstance(json.loads(call["function"]["arguments"]), dict)
    tools.write_text('[{"type": "function"}]')
    bad = run_cli("chat", str(gguf), "--tools", str(tools), "--prompt", "3+4?")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        f"qlora-kit: error: --tools {tools}[0] must be a function with a name ({{'type': 'function', 'function': "
        "{'name', 'description', 'parameters'}})")


@pytest.mark.parametrize("template", ["llama-3", "mistral", "qwen3"])  # chatml: the trained tool run's tests above
def test_each_tool_family_renders_alike_in_training_the_gguf_and_the_modelfile(template, tmp_path):
    """Per family: the exported GGUF's template through llama.cpp's chat handling (llama-cpp-python's Jinja2 chat
    formatter, as `chat` and `serve` use it) and the Modelfile's TEMPLATE through Go render a tool conversation as
    the tokenizer training used does."""
    import shutil

    from go_template import ollama_values, render_go
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    from qlora_kit.data.templates import CHAT_TEMPLATES
    from qlora_kit.model.builtin import materialize
    shutil.copytree(materialize("builtin:tiny-llama"), tmp_path / "model")
    (tmp_path / "model" / "chat_template.jinja").write_text(CHAT_TEMPLATES[template].jinja)
    result = run_cli("export", str(tmp_path / "model"), "--quant", "q8_0", "--out", str(tmp_path / "gguf"),
                     "--no-verify")
    assert result.returncode == 0, result.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    gguf_template = _gguf_template(tmp_path / "gguf" / "model-q8_0.gguf")
    go = (tmp_path / "gguf" / "Modelfile").read_text().split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    conversation = _conversation()
    thinking = [{"role": "user", "content": "2+2?"},  # qwen3 drops thinking before the last user message
                {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
                {"role": "user", "content": "3+3?"}]
    for messages in [conversation[:2], conversation[:4]] + ([thinking] if template == "qwen3" else []):
        expected = tok.apply_chat_template(messages, tools=[ADD], tokenize=False, add_generation_prompt=True)
        formatter = Jinja2ChatFormatter(gguf_template, eos_token=tok.eos_token, bos_token=tok.bos_token or "",
                                        add_generation_prompt=True)
        assert formatter(messages=messages, tools=[ADD]).prompt == expected, messages
        rendered = render_go(go, ollama_values(messages, tools=[ADD]))
        assert rendered == expected.removeprefix(tok.bos_token or ""), messages  # Ollama adds bos itself
