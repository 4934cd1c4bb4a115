"""What eval scores beyond the built-in metrics: the recipe's custom scorer (eval.scorer) and, for a GRPO run, the
graders it trained with.

A GRPO run's systems are scored by the graders on each held-out prompt's greedy answer: `reward` is their weighted
sum (grpo.reward_weights, as training added them), `reward/NAME` each grader's own score; `reward` is then the
primary metric, with the paired bootstrap interval and the verdict of every other metric. The graders read the
row's fields (`item`) as they did in training; a held-out row of an SFT-shaped file gets `item.answer` from its
last assistant message (data/prompts.py), which is also the reference the built-in metrics compare with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qlora_kit.errors import StageError


@dataclass
class Extra:
    custom: Callable | None = None  # eval.scorer
    graders: Any = None  # qlora_kit.graders.Graders of a GRPO run
    weights: list[float] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        graded = ["reward", *(f"reward/{n}" for n in self.graders.names)] if self.graders is not None else []
        return [*(["custom"] if self.custom is not None else []), *graded]

    def scores(self, text: str, row) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.custom is not None:
            out["custom"] = _custom(self.custom, text, row)
        if self.graders is not None:
            each = self.graders.score([text], [row.item or {"answer": row.reference}], [row.where],
                                      [_last(row.prompt)])
            out["reward"] = sum(w * each[n][0] for w, n in zip(self.weights, self.graders.names))
            out.update({f"reward/{n}": each[n][0] for n in self.graders.names})
        return out

    def close(self) -> None:
        if self.graders is not None:
            self.graders.close()


def extra_scores(recipe, scorer_spec: str | None) -> Extra:
    from qlora_kit.eval.scoring import load_scorer

    extra = Extra(load_scorer(scorer_spec) if scorer_spec else None)
    if recipe.train.method == "grpo":
        from qlora_kit.graders import load_graders

        extra.graders = load_graders(recipe.grpo.graders, Path.cwd())
        extra.weights = list(recipe.grpo.reward_weights or [1.0] * len(extra.graders.names))
    return extra


def _last(prompt) -> str:
    return str(prompt[-1].get("content") or "") if prompt else ""


def _custom(scorer, text: str, row) -> float:
    try:
        return float(scorer(text, row.reference, {"prompt": list(row.prompt), "where": row.where}))
    except Exception as exc:  # noqa: BLE001  (the user's scorer: one line, naming the row)
        raise StageError(f"eval.scorer raised on {row.where}: {type(exc).__name__}: {exc}") from None
