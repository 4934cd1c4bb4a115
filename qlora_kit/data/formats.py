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
    "bad_preference": "unusable preference pair",
}


class RowProblem(Exception):
    def __init__(self, kind: str, detail: str):
        assert kind in PROBLEM_KINDS, kind
        self.kind = kind
        self.detail = detail
        super().__init__(detail)


@dataclass
class Example:
    """One training example: a conversation (`messages`) or raw `text` (trained on every token).

    Preference rows keep the prompt in `messages` (the conversation before the answer) and the answers apart: a pair
    has `chosen` and `rejected` (each a list of assistant messages), an unpaired (KTO) row has `completion` and its
    `label` (True: desirable)."""

    messages: list[dict] | None = None
    text: str | None = None
    chosen: list[dict] | None = None
    rejected: list[dict] | None = None
    completion: list[dict] | None = None
    label: bool | None = None

    def as_conversation(self) -> "Example":
        """A preference row as the SFT conversation its preferred answer makes (for stages that score a
        conversation: the merge's fidelity check, the export's logit check); other rows as they are."""
        answer = self.chosen if self.chosen is not None else self.completion
        return self if answer is None else Example(messages=self.messages + answer)

    @property
    def kind(self) -> str:
        """sft (a conversation or a text), pair (chosen/rejected) or unpaired (completion + label)."""
        return "pair" if self.chosen is not None else "unpaired" if self.completion is not None else "sft"


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
                    "Rename the columns, map them with data.columns (e.g. {prompt: question}), or set data.format")


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
def _openai(row: dict, need_assistant: bool = True) -> Example:
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
    return Example(messages=_check_conversation(out) if need_assistant else out)


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


# Preference formats, before prompt_completion: KTO's columns are a superset of its {'prompt', 'completion'}.

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
    messages = _openai_messages(value, what)
    if not "".join(m["content"] for m in messages).strip():
        raise RowProblem("bad_preference", f"{what} is empty: a preference needs both answers")
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def _prompt(value: object, what: str) -> list[dict]:
    """The conversation before the answer: a string (one user message) or a list of messages ending before it."""
    if isinstance(value, list):
        if not value:
            raise RowProblem("missing_content", f"{what} is an empty list")
        messages = [{k: v for k, v in m.items() if k != "weight"} for m in _openai_messages(value, what)]
        if messages[-1]["role"] == "assistant":
            raise RowProblem("bad_preference", f"{what} ends with an assistant message; the answers go in the "
                             "chosen/rejected (or completion) columns")
        return messages
    text = _text(value if value is not None else "", what)
    if not text.strip():
        raise RowProblem("missing_content", f"{what} is empty")
    return [{"role": "user", "content": text}]


def _pair(prompt: list[dict], chosen: list[dict], rejected: list[dict], names: tuple[str, str]) -> Example:
    if chosen == rejected:
        raise RowProblem("bad_preference", f"{names[0]} and {names[1]} are the same answer: the pair teaches nothing")
    return Example(messages=prompt, chosen=chosen, rejected=rejected)


@register("preference", ("prompt", "chosen", "rejected"),
          "TRL preference pairs: {'prompt', 'chosen', 'rejected'} (strings, or prompt messages and assistant messages)")
def _preference(row: dict) -> Example:
    return _pair(_prompt(row["prompt"], "'prompt'"), _answer(row["chosen"], "'chosen'"),
                 _answer(row["rejected"], "'rejected'"), ("'chosen'", "'rejected'"))


@register("openai_dpo", ("input", "preferred_output", "non_preferred_output"),
          "OpenAI DPO JSONL: {'input': {'messages'}, 'preferred_output': [...], 'non_preferred_output': [...]}")
def _openai_dpo(row: dict) -> Example:
    inp = row["input"]
    if not isinstance(inp, dict) or "messages" not in inp:
        raise RowProblem("wrong_columns", "'input' must be an object with 'messages'")
    extra = sorted(set(inp) - {"messages", "tools", "parallel_tool_calls"})
    if extra:
        raise RowProblem("unknown_key", f"'input' has unknown key(s) {', '.join(extra)}")
    if inp.get("tools"):
        raise RowProblem("bad_preference", "'input.tools' is not rendered into training text yet; remove the tools "
                         "(or the row) until tool calls are supported")
    return _pair(_prompt(inp["messages"], "'input.messages'"), _answer(row["preferred_output"], "'preferred_output'"),
                 _answer(row["non_preferred_output"], "'non_preferred_output'"),
                 ("'preferred_output'", "'non_preferred_output'"))


@register("kto", ("prompt", "completion", "label"),
          "KTO unpaired feedback: {'prompt', 'completion', 'label': true (desirable) | false}")
def _kto(row: dict) -> Example:
    label = row["label"]
    if not isinstance(label, bool):
        raise RowProblem("bad_type", f"'label' must be true or false, not {label!r}")
    return Example(messages=_prompt(row["prompt"], "'prompt'"), completion=_answer(row["completion"], "'completion'"),
                   label=label)


def _openai_messages(messages: list, what: str) -> list[dict]:
    try:
        return _openai({"messages": messages}, need_assistant=False).messages
    except RowProblem as p:
        raise RowProblem(p.kind, f"{what}: {p.detail}") from None


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
