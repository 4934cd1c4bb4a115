"""Row formats, in a registry: each turns one raw row into an `Example` (a conversation or a plain text) or raises
`RowProblem` with a kind that `data check` counts (the OpenAI cookbook's checks plus ours).

Adding a format is one function plus one `@register(...)` line; `detect_format` tries them in registry order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qlora_kit.errors import DataError
from qlora_kit.recipe.registry import Registry

ROLES = ("system", "user", "assistant", "tool", "function")
# Keys the OpenAI chat fine-tuning format allows on a message.
OPENAI_MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id"}
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "model": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool",
}

# Problem kinds, with the words `data check` prints for them.
PROBLEM_KINDS = {
    "bad_json": "bad JSON line",
    "bad_utf8": "not valid UTF-8",
    "empty_row": "empty row",
    "wrong_columns": "missing or wrong columns for the format",
    "no_messages": "no messages",
    "bad_type": "wrong value type",
    "unknown_role": "unknown role",
    "unknown_key": "unknown message key",
    "missing_content": "missing content",
    "no_assistant_turn": "no assistant turn",
}


class RowProblem(Exception):
    def __init__(self, kind: str, detail: str):
        assert kind in PROBLEM_KINDS, kind
        self.kind = kind
        self.detail = detail
        super().__init__(detail)


@dataclass
class Example:
    """One training example: a conversation (`messages`) or raw `text` (trained on every token)."""

    messages: list[dict] | None = None
    text: str | None = None


@dataclass(frozen=True)
class Format:
    name: str
    columns: tuple[str, ...]  # all must be present for auto-detection to pick this format
    convert: Callable[[dict], Example]
    description: str


FORMATS: Registry = Registry("data format", plugin_group="qlora_kit.formats")


def register(name: str, columns: tuple[str, ...], description: str):
    def deco(fn: Callable[[dict], Example]):
        FORMATS.add(name, Format(name, columns, fn, description))
        return fn

    return deco


def detect_format(row: object, where: str) -> Format:
    if isinstance(row, dict):
        for fmt in FORMATS.load_plugins().values():
            if all(c in row for c in fmt.columns):
                return fmt
        cols = ", ".join(sorted(map(str, row))) or "none"
    else:
        cols = f"a {type(row).__name__}, not an object"
    expected = "; ".join(f"{'/'.join(f.columns)} ({f.name})" for f in FORMATS.values())
    raise DataError(f"{where}: cannot tell the data format from the columns ({cols}); expected one of: {expected}. "
                    "Rename the columns or set data.format")


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise DataError(f"data.format: unknown format {name!r}; available: {', '.join(FORMATS)}")
    return FORMATS[name]


def convert_row(fmt: Format, row: object) -> Example:
    if not isinstance(row, dict) or not row or all(v is None or v == "" for v in row.values()):
        raise RowProblem("empty_row", "the row is empty" if isinstance(row, dict) or row is None
                         else f"a row must be an object, not a {type(row).__name__}")
    missing = [c for c in fmt.columns if c not in row]
    if missing:
        raise RowProblem("wrong_columns", f"missing column(s) {', '.join(missing)} for format {fmt.name} "
                         f"(row has: {', '.join(sorted(map(str, row)))})")
    return fmt.convert(row)


def _text(value: object, what: str) -> str:
    """OpenAI content may be a string or a list of {'type': 'text', 'text': ...} parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise RowProblem("bad_type", f"{what} must be a string (or a list of text parts), not {type(value).__name__}")


def _check_conversation(messages: list[dict]) -> list[dict]:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem("no_assistant_turn", "the conversation has no assistant message to train on")
    return messages


@register("openai", ("messages",), "OpenAI chat fine-tuning JSONL: {'messages': [{'role', 'content'}, ...]}")
def _openai(row: dict) -> Example:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise RowProblem("no_messages", "'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowProblem("bad_type", f"messages[{i}] must be an object")
        extra = sorted(set(m) - OPENAI_MESSAGE_KEYS)
        if extra:
            raise RowProblem("unknown_key", f"messages[{i}] has unknown key(s) {', '.join(extra)}")
        role = m.get("role")
        if role not in ROLES:
            raise RowProblem("unknown_role", f"messages[{i}] has role {role!r}; allowed: {', '.join(ROLES)}")
        if m.get("content") in (None, "") and not (m.get("function_call") or m.get("tool_calls")):
            raise RowProblem("missing_content", f"messages[{i}] ({role}) has no content")
        msg = {"role": role, "content": _text(m.get("content") or "", f"messages[{i}].content")}
        if "weight" in m:
            if role != "assistant" or m["weight"] not in (0, 1):
                raise RowProblem("bad_type", f"messages[{i}].weight must be 0 or 1, on assistant messages only")
            msg["weight"] = int(m["weight"])
        out.append(msg)
    return Example(messages=_check_conversation(out))


@register("sharegpt", ("conversations",), "ShareGPT: {'conversations': [{'from': 'human'|'gpt', 'value'}, ...]}")
def _sharegpt(row: dict) -> Example:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RowProblem("no_messages", "'conversations' must be a non-empty list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise RowProblem("bad_type", f"conversations[{i}] must be an object")
        role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower())
        if role is None:
            raise RowProblem("unknown_role", f"conversations[{i}] has from={t.get('from')!r}; "
                             f"allowed: {', '.join(sorted(SHAREGPT_ROLES))}")
        if t.get("value") in (None, ""):
            raise RowProblem("missing_content", f"conversations[{i}] ({t.get('from')}) has no value")
        out.append({"role": role, "content": _text(t["value"], f"conversations[{i}].value")})
    return Example(messages=_check_conversation(out))


@register("alpaca", ("instruction", "output"), "Alpaca: {'instruction', 'input' (optional), 'output'}")
def _alpaca(row: dict) -> Example:
    instruction = _text(row["instruction"] or "", "instruction").strip()
    extra = _text(row.get("input") or "", "input").strip()
    output = _text(row["output"] or "", "output")
    if not instruction:
        raise RowProblem("missing_content", "'instruction' is empty")
    if not output.strip():
        raise RowProblem("no_assistant_turn", "'output' is empty: nothing to train on")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return Example(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": output}])


@register("prompt_completion", ("prompt", "completion"), "{'prompt', 'completion'} (strings or message lists)")
def _prompt_completion(row: dict) -> Example:
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt-completion
        return _openai({"messages": prompt + completion})
    prompt, completion = _text(prompt or "", "prompt"), _text(completion or "", "completion")
    if not prompt.strip():
        raise RowProblem("missing_content", "'prompt' is empty")
    if not completion.strip():
        raise RowProblem("no_assistant_turn", "'completion' is empty: nothing to train on")
    return Example(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])


@register("text", ("text",), "raw text: {'text'} (every token is trained)")
def _raw_text(row: dict) -> Example:
    text = _text(row["text"] if row["text"] is not None else "", "text")
    if not text.strip():
        raise RowProblem("missing_content", "'text' is empty")
    return Example(text=text)
