"""What every grader shares: the batch it scores, the error it raises, and the check that a score is a number.

A grader scores a whole batch at once (`Grader.score(batch) -> list[float]`), so that a python grader sends the
batch to its worker in one message and a TRL-style function sees the batch column-wise, as TRL calls it.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from qlora_kit.errors import DataError
from qlora_kit.graders.template import MissingField, Template

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```$", re.DOTALL)


class GraderError(DataError):
    """A grader failed on a row at run time (raised, hung, or returned something that is not a finite number).
    One line naming the grader and the row; `grader` and `row` hold them (`row`: "data.jsonl:12"; for an error
    about a whole batch "data.jsonl:3 .. data.jsonl:6 (4 rows)"; "" when not about rows)."""

    def __init__(self, message: str, grader: str = "", row: str = ""):
        super().__init__(message)
        self.grader, self.row = grader, row


def parse_json_output(text: str) -> Any:
    """The completion as JSON (stripped; a whole-completion ```json fenced block is unwrapped), or None."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except ValueError:
        return None


def number_problem(value: Any) -> str | None:
    """None if `value` is a finite real number (bool and numpy scalars included), else why not, as the tail of
    a one-line error: "returned 'yes' (str), not a number"."""
    if isinstance(value, numbers.Real):
        number = float(value)
        return None if math.isfinite(number) else f"returned {number!r}, not a finite number"
    return f"returned {short_repr(value)} ({type(value).__name__}), not a number"


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def rows_named(wheres: list[str]) -> str:
    """"row X" for one row, "rows X .. Y (N rows)" for a batch."""
    if len(wheres) == 1:
        return f"row {wheres[0]}"
    return f"rows {wheres[0]} .. {wheres[-1]} ({len(wheres)} rows)"


@dataclass
class Batch:
    """Completions to score (text), each with its row (`items`), the row's name for errors (`wheres`) and its
    prompt; `raw` holds the completions as the trainer gave them (TRL's conversational message lists), which
    function graders receive."""

    completions: list[str]
    items: list[dict]
    wheres: list[str]
    prompts: list[Any] | None = None
    raw: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.raw is None:
            self.raw = self.completions

    def __len__(self) -> int:
        return len(self.completions)

    @cached_property
    def samples(self) -> list[dict]:
        """OpenAI's `sample` per completion: {"output_text": str, "output_json": parsed JSON or None}."""
        return [{"output_text": text, "output_json": parse_json_output(text)} for text in self.completions]


class Grader:
    """One grader. `label` is how errors name its kind: "python", "function my_mod:judge"."""

    type = ""

    def __init__(self, name: str, label: str | None = None):
        self.name = name
        self.label = label or self.type

    def score(self, batch: Batch) -> list[float]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever the grader started (python workers); it may be used again afterwards."""

    def fail(self, rows: str, message: str) -> GraderError:
        """The one-line error about `rows` ("row data.jsonl:12", rows_named(...), or "" for none)."""
        on = f" on {rows}" if rows else ""
        row = rows.split(" ", 1)[1] if rows.startswith(("row ", "rows ")) else rows
        return GraderError(f"grader {self.name!r} ({self.label}){on}: {message}", self.name, row)

    def fail_row(self, where: str, message: str) -> GraderError:
        return self.fail(f"row {where}", message)

    def render(self, template: Template, batch: Batch, i: int) -> str | None:
        """The template for row i; None when it names a sample field the completion lacks (the caller scores 0.0);
        a GraderError naming the row when it names an item field the row lacks."""
        try:
            return template.render(batch.samples[i], batch.items[i])
        except MissingField as exc:
            if exc.root == "sample":
                return None
            raise self.fail_row(batch.wheres[i], f"the row has no field {exc.path!r} (template {exc.placeholder})")

    def checked(self, value: Any, where: str) -> float:
        problem = number_problem(value)
        if problem:
            raise self.fail_row(where, problem)
        return float(value)
