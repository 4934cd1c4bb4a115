"""GRPO rows: a prompt for the model to answer, and the fields its graders read.

A row is shaped like OpenAI's reinforcement fine-tuning JSONL: `messages` (the conversation to answer) plus any
other fields (`{"messages": [...], "answer": "2033-03-03"}`), graded with `{{item.answer}}`. Two conveniences so
that rows written for SFT train unchanged: a trailing assistant message is not part of the prompt but the reference
answer, `item.answer` (unless the row has its own `answer`), and `{"prompt": "...", "completion": "..."}` rows are
a user turn with `item.answer` = the completion. A row's `item` is the row as read (columns renamed by
data.columns), so a grader spec moves over from OpenAI unchanged.

Prompts are rendered by the run's chat template (TRL applies it to the conversational prompt with the generation
prompt, as `eval` does); a prompt whose tokens leave less than grpo.max_completion_length of model.max_seq_length is
dropped and counted, like an SFT row with nothing to train.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from qlora_kit.data.example import Example, RowProblem, _text
from qlora_kit.data.formats_chat import openai_messages


def prompt_example(row: object) -> Example:
    """One GRPO row -> Example(messages=the prompt, item=the row's fields); RowProblem when it has no prompt."""
    if not isinstance(row, dict) or not row:
        raise RowProblem("empty_row", "the row is empty" if isinstance(row, dict) or row is None
                         else f"a row must be an object, not a {type(row).__name__}")
    item = dict(row)
    if "messages" in row:
        messages = openai_messages(row["messages"])
        if messages[-1]["role"] == "assistant":
            item.setdefault("answer", _text(messages[-1].get("content") or "", "the last assistant message"))
            messages = messages[:-1]
    elif "prompt" in row:
        prompt = row["prompt"]
        messages = openai_messages(prompt, "'prompt'") if isinstance(prompt, list) else \
            [{"role": "user", "content": _text(prompt, "'prompt'")}]
        if isinstance(row.get("completion"), str):
            item.setdefault("answer", row["completion"])
    else:
        raise RowProblem("wrong_columns", "a GRPO row needs 'messages' (the conversation to answer) or 'prompt' "
                         f"(row has: {', '.join(sorted(map(str, row)))})")
    if row.get("tools") or row.get("functions"):
        raise RowProblem("bad_tool_call", "tools in GRPO rows are not supported (the policy samples plain answers)")
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise RowProblem("no_messages", "the prompt must end with a user message for the model to answer")
    return Example(messages=messages, item=item)


@dataclass
class PromptRow:
    messages: list[dict]
    item: dict
    where: str
    prompt_tokens: int


@dataclass
class PromptSplit:
    """The prompts `train` samples from (or the held-out ones), with the rows dropped for length."""

    rows: list[PromptRow] = field(default_factory=list)
    dropped: int = 0
    truncated: int = 0  # never: a prompt is kept whole or dropped (the field SFT splits have, for the data event)

    @property
    def tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.rows)

    trained_tokens = 0  # completions are sampled while training: nothing is known in advance


def encode_prompts(tokenizer, items: list[tuple[str, Example]], max_len: int, completion_len: int) -> PromptSplit:
    """Count each prompt's tokens as the trainer will render them; drop those leaving no room to answer."""
    from qlora_kit.data.encode import render

    out = PromptSplit()
    room = max_len - completion_len
    for where, example in items:
        text = render(tokenizer, example.messages, add_generation_prompt=True)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n > room:
            out.dropped += 1
            continue
        out.rows.append(PromptRow(example.messages, example.item or {}, where, n))
    return out


def to_prompt_dataset(split: PromptSplit):
    """The columns GRPOTrainer reads: the conversational prompt, and what the graders need (the row as JSON, so
    rows with different fields fit one table, and where it came from, for error messages)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [r.messages for r in split.rows],
                              "item_json": [json.dumps(r.item, ensure_ascii=False) for r in split.rows],
                              "row_where": [r.where for r in split.rows]})
