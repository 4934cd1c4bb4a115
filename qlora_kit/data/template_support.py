"""What a chat template renders of tools and reasoning, found by rendering a probe conversation (so a tokenizer's own
template is judged the same way as ours), and what a row becomes for it.

- A row with tools, tool calls or tool results and a template that drops any of them is refused in one line: training
  it would teach the model to answer a tool request with an empty turn (issue #27).
- Reasoning with a template that has no place for it (no `reasoning_content`) is written into the content as a
  `<think>...</think>` block, the form reasoning models print and our parsers read back; with a template that has
  one (Qwen3), the template places it (and drops it from turns before the last user message).
- `data.train_reasoning: false` keeps the thinking as context: its tokens are not trained (`without_reasoning`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qlora_kit.errors import DataError

_PROBE_TOOLS = [{"type": "function", "function": {
    "name": "qk_probe_fn", "description": "qk_probe_description",
    "parameters": {"type": "object", "properties": {"qk_probe_arg": {"type": "string"}}}}}]
_PROBE_CALLS = [
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_qk", "type": "function", "function": {
        "name": "qk_probe_fn", "arguments": {"qk_probe_arg": "qk_probe_value"}}}]},
    {"role": "tool", "tool_call_id": "call_qk", "name": "qk_probe_fn", "content": "qk_probe_result"},
    {"role": "assistant", "content": "a"}]
_PROBE_THOUGHT = [{"role": "user", "content": "u"},
                  {"role": "assistant", "content": "a", "reasoning_content": "qk_probe_thought"}]
_AFTER_THINKING = re.compile(r"\s*(</think>)?\s*")


@dataclass(frozen=True)
class Support:
    missing_for_tools: tuple[str, ...]  # what the template drops of a tool conversation (empty: renders tools)
    reasoning: bool  # renders reasoning_content itself


_CACHE: dict[str, Support] = {}


def _render(tokenizer, messages: list[dict], tools: list[dict] | None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 - a template that raises on these messages does not support them
        return ""


def support(tokenizer) -> Support:
    template = getattr(tokenizer, "chat_template", None) or ""
    if template not in _CACHE:
        text = _render(tokenizer, _PROBE_CALLS, _PROBE_TOOLS)
        parts = {"the tools list": "qk_probe_description", "the calls": "qk_probe_fn",
                 "the call arguments": "qk_probe_value", "the tool results": "qk_probe_result"}
        missing = tuple(what for what, marker in parts.items() if marker not in text)
        _CACHE[template] = Support(missing, "qk_probe_thought" in _render(tokenizer, _PROBE_THOUGHT, None))
    return _CACHE[template]


def for_template(tokenizer, example, where: str) -> list[dict]:
    """The example's messages as this template renders them (see the module docstring); refuses what it cannot."""
    from qlora_kit.data.tool_messages import has_tools

    found = support(tokenizer)
    if found.missing_for_tools and has_tools(example):
        from qlora_kit.data.templates import CHAT_TEMPLATES

        able = ", ".join(n for n, t in CHAT_TEMPLATES.items() if t.tools) or "none built in"
        raise DataError(f"{where}: the row has tools or tool calls, but the chat template drops "
                        f"{', '.join(found.missing_for_tools)}; set data.chat_template to one that renders tools "
                        f"({able}) or remove the tool rows")
    messages = example.messages
    if found.reasoning or not any("reasoning_content" in m for m in messages):
        return messages
    # The key stays beside the inlined block: without_reasoning finds the thinking by it.
    return [dict(m, content=f"<think>\n{m['reasoning_content']}\n</think>\n\n{m['content']}")
            if "reasoning_content" in m else m for m in messages]


def without_reasoning(text: str, spans: list[tuple[int, int]], messages: list[dict]) -> list[tuple[int, int]]:
    """The trained spans with each turn's thinking (and its closing tag) left out: it stays in the text as context."""
    trained = [m for m in messages if m["role"] == "assistant" and m.get("weight", 1) != 0]
    out = []
    for (a, b), message in zip(spans, trained):
        thought = message.get("reasoning_content")
        segment = text[a:b]
        at = segment.find(thought) if thought else segment.find("</think>")
        if thought is None or at < 0:  # no thinking, or the template dropped it from this turn
            out.append((a, b))
            continue
        end = at + len(thought) if thought else at
        end = _AFTER_THINKING.match(segment, end).end()
        out.append((a + end, b))
    return out
