"""Preference formats: TRL's pairs (plain or conversational), OpenAI's DPO JSONL and KTO's unpaired feedback.

Registered after the conversation formats and before prompt_completion: KTO's columns are a superset of its
{'prompt', 'completion'}. A row's tools (TRL's `tools` column, OpenAI's `input.tools`) are the Example's; each answer's
calls are checked against them as the conversation the prompt and that answer make.
"""

from __future__ import annotations

from qlora_kit.data.example import Example, RowProblem, _text, register
from qlora_kit.data.formats_chat import openai_messages, row_tools
from qlora_kit.data.tool_messages import check_flow, parse_tools

def _answer(value: object, what: str) -> list[dict]:
    """A preference answer: a string, or a list of assistant messages (TRL's conversational form, OpenAI's outputs)."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(
            isinstance(p, dict) and p.get("type") == "text" for p in value)):
        text = _text(value, what)
        if not text.strip():
            raise RowProblem("bad_preference", f"{what} is empty: a preference needs both answers")
        return [{"role": "assistant", "content": text}]
    if not isinstance(value, list) or not value:
        raise RowProblem("bad_preference", f"{what} must be a string or a non-empty list of assistant messages")
    if any(not isinstance(m, dict) or m.get("role") != "assistant" for m in value):
        raise RowProblem("bad_preference", f"{what} must hold assistant messages only (the conversation before the "
                         "answer goes in the prompt)")
    messages = openai_messages(value, what)
    if not any(m["content"].strip() or m.get("tool_calls") for m in messages):
        raise RowProblem("bad_preference", f"{what} is empty: a preference needs both answers")
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def _prompt(value: object, what: str) -> list[dict]:
    """The conversation before the answer: a string (one user message) or a list of messages ending before it."""
    if isinstance(value, list):
        if not value:
            raise RowProblem("missing_content", f"{what} is an empty list")
        messages = [{k: v for k, v in m.items() if k != "weight"} for m in openai_messages(value, what)]
        if messages[-1]["role"] == "assistant":
            raise RowProblem("bad_preference", f"{what} ends with an assistant message; the answers go in the "
                             "chosen/rejected (or completion) columns")
        return messages
    text = _text(value if value is not None else "", what)
    if not text.strip():
        raise RowProblem("missing_content", f"{what} is empty")
    return [{"role": "user", "content": text}]


def _with_tools(prompt: list[dict], answers: dict[str, list[dict]], tools: list[dict] | None,
                parallel: bool = True) -> None:
    """Each answer's calls and the prompt's tool messages checked as one conversation per answer."""
    for name, answer in answers.items():
        try:
            check_flow([dict(m) for m in prompt] + [dict(m) for m in answer], tools, parallel)
        except RowProblem as p:
            raise RowProblem(p.kind, f"{name} (after the prompt): {p.detail}") from None
    check_flow(prompt, tools)  # names the prompt's tool messages


def _pair(prompt: list[dict], chosen: list[dict], rejected: list[dict], names: tuple[str, str],
          tools: list[dict] | None = None, parallel: bool = True) -> Example:
    if chosen == rejected:
        raise RowProblem("bad_preference", f"{names[0]} and {names[1]} are the same answer: the pair teaches nothing")
    _with_tools(prompt, dict(zip(names, (chosen, rejected))), tools, parallel)
    return Example(messages=prompt, chosen=chosen, rejected=rejected, tools=tools)


@register("preference", ("prompt", "chosen", "rejected"),
          "TRL preference pairs: {'prompt', 'chosen', 'rejected'} (strings, or prompt messages and assistant messages)")
def _preference(row: dict) -> Example:
    return _pair(_prompt(row["prompt"], "'prompt'"), _answer(row["chosen"], "'chosen'"),
                 _answer(row["rejected"], "'rejected'"), ("'chosen'", "'rejected'"), row_tools(row))


@register("openai_dpo", ("input", "preferred_output", "non_preferred_output"),
          "OpenAI DPO JSONL: {'input': {'messages'}, 'preferred_output': [...], 'non_preferred_output': [...]}")
def _openai_dpo(row: dict) -> Example:
    inp = row["input"]
    if not isinstance(inp, dict) or "messages" not in inp:
        raise RowProblem("wrong_columns", "'input' must be an object with 'messages'")
    extra = sorted(set(inp) - {"messages", "tools", "parallel_tool_calls"})
    if extra:
        raise RowProblem("unknown_key", f"'input' has unknown key(s) {', '.join(extra)}")
    return _pair(_prompt(inp["messages"], "'input.messages'"), _answer(row["preferred_output"], "'preferred_output'"),
                 _answer(row["non_preferred_output"], "'non_preferred_output'"),
                 ("'preferred_output'", "'non_preferred_output'"), parse_tools(inp.get("tools"), "'input.tools'"),
                 inp.get("parallel_tool_calls") is not False)


@register("kto", ("prompt", "completion", "label"),
          "KTO unpaired feedback: {'prompt', 'completion', 'label': true (desirable) | false}")
def _kto(row: dict) -> Example:
    label = row["label"]
    if not isinstance(label, bool):
        raise RowProblem("bad_type", f"'label' must be true or false, not {label!r}")
    prompt, completion, tools = _prompt(row["prompt"], "'prompt'"), _answer(row["completion"], "'completion'"), \
        row_tools(row)
    _with_tools(prompt, {"'completion'": completion}, tools)
    return Example(messages=prompt, completion=completion, label=label, tools=tools)
