"""Held-out rows, the few-shot examples, and the leakage check.

A row is a conversation whose last assistant message is the reference; everything before it is the prompt. For a
preference run the reference of a pair is its chosen answer, and of an unpaired (KTO) row its completion when it is
labelled desirable (undesirable completions are nothing to imitate; eval/preference.py scores them). The default
held-out set is the run's own eval split (the rows training really held out: same file, seed and split),
else `--data` in any format `data` accepts. Few-shot examples are k training rows chosen with a fixed seed, never
held-out rows. Held-out rows that also occur in training (same prompt and reference) are excluded and counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from qlora_kit.data.formats import Example
from qlora_kit.errors import DataError, UsageError


@dataclass(frozen=True)
class EvalRow:
    where: str  # file:line of the row, as data errors name rows
    prompt: tuple  # messages before the reference (dicts with role/content), system first when present
    reference: str
    # A row with tools: its tool list, and the calls of the reference answer (none: answering without a tool is
    # right). Not part of the row's identity (key): the prompt and reference text are.
    tools: tuple | None = field(default=None, compare=False)
    calls: tuple = field(default=(), compare=False)
    item: dict | None = field(default=None, compare=False, hash=False)  # a GRPO row's fields, for its graders

    @property
    def answer(self) -> dict:
        """The reference as the assistant message it was."""
        calls = {"tool_calls": list(self.calls)} if self.calls else {}
        return {"role": "assistant", "content": self.reference, **calls}

    @property
    def prompt_key(self) -> tuple:
        return tuple((m["role"], m["content"]) for m in self.prompt)

    @property
    def key(self) -> tuple:
        return self.prompt_key, self.reference


def to_row(where: str, example: Example) -> EvalRow | None:
    """None for rows that cannot be scored (raw text, no assistant answer to compare with, an undesirable
    completion)."""
    messages = example.messages
    if example.kind == "prompt":  # a GRPO row: the whole conversation is the prompt; graders read its item
        prompt = tuple({k: v for k, v in m.items() if k != "weight"} for m in messages)
        answer = example.item.get("answer")
        return EvalRow(where, prompt, answer if isinstance(answer, str) else "", item=example.item)
    if example.kind == "pair":
        messages = list(messages) + list(example.chosen)
    elif example.kind == "unpaired":
        messages = list(messages) + list(example.completion) if example.label else None
    if not messages or messages[-1]["role"] != "assistant":
        return None
    prompt = tuple({k: v for k, v in m.items() if k != "weight"} for m in messages[:-1])
    last = messages[-1]
    tools = tuple(example.tools) if example.tools else None
    return EvalRow(where, prompt, last["content"], tools, tuple(last.get("tool_calls") or ())) if prompt else None


def load_items(recipe, data_path: str | None) -> tuple[list, list, str]:
    """(held-out items, training items, where the held-out items came from): the run's eval split (same file, seed
    and split as training), else `data_path` in any format `data` accepts. Items are (file:line, Example)."""
    from qlora_kit.data.prepare import load_examples

    grpo = "grpo" if recipe.train.method == "grpo" else None  # prompts and their graders' fields
    train_items, eval_items, _ = load_examples(recipe.data, recipe.train.seed, method=grpo)
    source = "the run's eval split"
    if data_path:
        cfg = recipe.data.model_copy(update={"path": data_path, "eval_split": 0.0, "eval_path": None,
                                             "max_rows": None, "format": "auto"})
        eval_items, _, _ = load_examples(cfg, recipe.train.seed, method=grpo)
        source = data_path
    elif not eval_items:
        raise UsageError("the run held out no rows (data.eval_split and data.eval_path are unset); pass --data FILE "
                         "with held-out rows in any format `data` accepts")
    return eval_items, train_items, source


def held_out(recipe, data_path: str | None, items: tuple | None = None) -> tuple[list[EvalRow], list[EvalRow], str]:
    """(held-out rows, training rows, where the held-out rows came from); `items`: what load_items returned."""
    eval_items, train_items, source = items or load_items(recipe, data_path)
    rows = [r for r in (to_row(w, e) for w, e in eval_items) if r is not None]
    if not rows:
        raise DataError(f"{source}: no row ends with an assistant answer to score against")
    train = [r for r in (to_row(w, e) for w, e in train_items) if r is not None]
    return rows, train, source


def split_leaked(rows: list[EvalRow], train: list[EvalRow]) -> tuple[list[EvalRow], list[EvalRow]]:
    """(clean rows, rows that also occur in training)."""
    seen = {r.key for r in train}
    leaked = sorted((r for r in rows if r.key in seen), key=_line)  # in file order, as a user looks them up
    return [r for r in rows if r.key not in seen], leaked


def _line(row: EvalRow) -> int:
    return line_of(row.where)


def line_of(where: str) -> int:
    """The line number of a file:line place (0 when it has none), to list rows in file order."""
    tail = where.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def few_shot(train: list[EvalRow], k: int, seed: int, held: list[EvalRow]) -> list[EvalRow]:
    """k single-turn training rows (fixed seed), none of them a held-out row."""
    excluded = {r.key for r in held}
    pool = [r for r in train if r.key not in excluded and r.reference  # a GRPO row may have no answer to show
            and [m["role"] for m in r.prompt if m["role"] != "system"] == ["user"]]
    return random.Random(seed).sample(pool, min(k, len(pool)))


def with_shots(row: EvalRow, shots: list[EvalRow]) -> list[dict]:
    """The prompt of `row` with the examples as earlier turns (after the row's system message, if any)."""
    system = [m for m in row.prompt[:1] if m["role"] == "system"]
    turns = []
    for shot in shots:
        turns += [m for m in shot.prompt if m["role"] != "system"] + [shot.answer]
    return system + turns + list(row.prompt[len(system):])
