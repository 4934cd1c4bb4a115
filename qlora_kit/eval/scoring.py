"""Scores of one prediction against its reference, and the paired bootstrap interval the verdict rests on.

exact: identical after stripping surrounding whitespace; normalized: lower case, punctuation and articles removed,
whitespace collapsed (SQuAD's normalization); token F1: bag-of-words overlap of the normalized texts; chrF:
sacrebleu's sentence chrF (0-100, scaled to 0-1 here). A recipe may add a scorer `module:function(prediction,
reference, row) -> float`.
"""

from __future__ import annotations

import importlib
import random
import re
import string
from collections import Counter
from typing import Callable

from qlora_kit.errors import UsageError

METRICS = ("exact_match", "normalized_exact_match", "token_f1", "chrf")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def chrf(prediction: str, reference: str) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(prediction, [reference]).score / 100.0


def score(prediction: str, reference: str) -> dict[str, float]:
    return {"exact_match": float(prediction.strip() == reference.strip()),
            "normalized_exact_match": float(normalize(prediction) == normalize(reference)),
            "token_f1": token_f1(prediction, reference), "chrf": chrf(prediction, reference)}


def load_scorer(spec: str) -> Callable:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise UsageError(f"eval.scorer {spec!r}: expected module:function, e.g. my_task.scoring:score")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001  (the user's module: any failure is one line)
        raise UsageError(f"eval.scorer {spec}: cannot load it: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise UsageError(f"eval.scorer {spec}: {attr} is not a function")
    return fn


def bootstrap_interval(diffs: list[float], seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    """95% percentile interval of the mean of paired per-row differences."""
    if not diffs:
        return 0.0, 0.0
    rng, n = random.Random(seed), len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]
