"""What every row format shares: the `Example` a row becomes, the `RowProblem` it raises instead (with a kind that
`data check` counts), and the registry the formats add themselves to (data/formats.py puts them in order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qlora_kit.recipe.registry import Registry

ROLES = ("system", "user", "assistant", "tool", "function")
# Keys the OpenAI chat fine-tuning format allows on a message.
# reasoning_content is not OpenAI's: it is how reasoning datasets (DeepSeek-R1, Qwen3 distillations) carry thinking.
OPENAI_MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id",
                       "reasoning_content"}

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
    "bad_tool_call": "unusable tool call or tool result",
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
    tools: list[dict] | None = None  # the functions the conversation may call (data.tool_messages)
    chosen: list[dict] | None = None
    rejected: list[dict] | None = None
    completion: list[dict] | None = None
    label: bool | None = None
    item: dict | None = None  # a GRPO row's fields, which its graders read (data/prompts.py)

    def as_conversation(self) -> "Example":
        """A preference row as the SFT conversation its preferred answer makes (for stages that score a
        conversation: the merge's fidelity check, the export's logit check); other rows as they are."""
        answer = self.chosen if self.chosen is not None else self.completion
        return self if answer is None else Example(messages=self.messages + answer, tools=self.tools)

    @property
    def kind(self) -> str:
        """sft (a conversation or a text), pair (chosen/rejected), unpaired (completion + label) or prompt (GRPO)."""
        if self.item is not None:
            return "prompt"
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
