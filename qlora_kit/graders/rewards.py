"""What TRL's GRPOTrainer hands a reward function, turned into a Batch.

TRL calls `f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
**dataset_columns)`, one call per reward function per step, with the same lists each time. The GRPO stage adds two
columns: "item_json" (json.dumps of each row) and "row_where" (each row's name for errors, e.g. "data.jsonl:12").
Without "item_json" the items are rebuilt from the other dataset columns. Completions are strings, or (TRL's
conversational form) lists of messages, of which the last one's "content" is the text.
"""

from __future__ import annotations

import json
from typing import Any

from qlora_kit.graders.base import Batch

TRL_KEYWORDS = frozenset({"trainer_state", "completion_ids", "log_extra", "log_metric", "environments", "item_json",
                          "row_where", "prompts", "completions"})


def completion_text(completion: Any) -> str:
    """A completion's text: a string as is; a message list's last message's content; a message's content (a
    content given as parts, [{"type": "text", "text": ...}], is the parts' text joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion:
        completion = completion[-1]
    if isinstance(completion, dict):
        content = completion.get("content")
        if isinstance(content, list):
            return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        return "" if content is None else str(content)
    if isinstance(completion, (list, tuple)):
        return ""
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def check_lengths(n: int, **lists: Any) -> None:
    for key, value in lists.items():
        if value is not None and len(value) != n:
            raise ValueError(f"graders: {len(value)} {key} for {n} completions; give one per completion")


class BatchCache:
    """The Batch of the last TRL call, reused while the next call passes the same lists (one JSON parse and one
    output_json parse per step, however many reward functions there are)."""

    def __init__(self) -> None:
        self._key: tuple = ()
        self._batch: Batch | None = None

    def batch(self, prompts: Any, completions: list, kwargs: dict) -> Batch:
        key = (prompts, completions, kwargs.get("item_json"), kwargs.get("row_where"))
        if self._batch is not None and len(key) == len(self._key) and all(a is b for a, b in zip(key, self._key)):
            return self._batch
        n = len(completions)
        check_lengths(n, prompts=prompts, item_json=kwargs.get("item_json"), row_where=kwargs.get("row_where"))
        items = _items(kwargs, n)
        wheres = [str(w) for w in kwargs["row_where"]] if kwargs.get("row_where") is not None else [
            f"batch row {i}" for i in range(n)]
        batch = Batch([completion_text(c) for c in completions], items, wheres,
                      list(prompts) if prompts is not None else None, raw=list(completions))
        self._key, self._batch = key, batch  # the key holds the lists: their ids cannot be reused meanwhile
        return batch


def _items(kwargs: dict, n: int) -> list[dict]:
    if kwargs.get("item_json") is not None:
        return [json.loads(text) if isinstance(text, str) else dict(text) for text in kwargs["item_json"]]
    columns = {k: v for k, v in kwargs.items() if k not in TRL_KEYWORDS and isinstance(v, (list, tuple))
               and len(v) == n}
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]
