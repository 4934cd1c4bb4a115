"""string_check and text_similarity, as OpenAI defines them (plus chrF and our own notes on each metric).

string_check compares the rendered `input` with the rendered `reference`, unstripped, as OpenAI does: eq (equal),
ne (not equal), like (reference is a substring of input, case-sensitive), ilike (the same, case-insensitive);
1.0 or 0.0.

text_similarity metrics, each in [0, 1]:
- fuzzy_match: difflib.SequenceMatcher(None, input, reference).ratio() (stdlib; OpenAI uses rapidfuzz, so values
  differ a little from OpenAI's);
- bleu: sacrebleu's sentence BLEU (effective order, exp smoothing, as `sacrebleu.sentence_bleu`) / 100, capped
  at 1.0 (float noise gives 100.00000000000004 for identical texts);
- gleu: Google's sentence GLEU (NLTK's definition): matched 1..4-grams / max(n-grams of input, of reference);
- rouge_1 .. rouge_5, rouge_l: ROUGE F1 on lower-cased whitespace tokens (no stemming);
- chrf (our extension): sacrebleu's sentence chrF / 100 (capped at 1.0 likewise).
cosine (needs an embedding model) and meteor (needs NLTK's WordNet data) are refused at load.
`pass_threshold` (optional): the score becomes 1.0 if it is >= the threshold, else 0.0 (a pass/fail reward). In
OpenAI's evals the threshold only decides pass/fail while the score stays the metric; set none to keep the metric.
A completion that lacks a sample field a template names scores 0.0.
"""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Callable

from qlora_kit.graders.base import Batch, Grader
from qlora_kit.graders.spec import Spec

OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l", "chrf")
REFUSED_METRICS = {
    "cosine": "needs an embedding model, which qlora-kit does not run",
    "meteor": "needs NLTK's WordNet data, which qlora-kit does not ship",
}


def string_check(operation: str, text: str, reference: str) -> float:
    if operation == "eq":
        return float(text == reference)
    if operation == "ne":
        return float(text != reference)
    if operation == "like":
        return float(reference in text)
    return float(reference.lower() in text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: int, predicted: int, reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(text: str, reference: str, n: int) -> float:
    """ROUGE-N F1: n-grams shared (counted with multiplicity) over the n-grams of each side; 0.0 if either side
    has fewer than n tokens."""
    ours, theirs = _ngrams(text.lower().split(), n), _ngrams(reference.lower().split(), n)
    return _f1(sum((ours & theirs).values()), sum(ours.values()), sum(theirs.values()))


def rouge_l(text: str, reference: str) -> float:
    """ROUGE-L F1: the longest common token subsequence over each side's length (dynamic programming, one row)."""
    ours, theirs = text.lower().split(), reference.lower().split()
    row = [0] * (len(theirs) + 1)
    for token in ours:
        previous_diagonal = 0
        for j, other in enumerate(theirs, 1):
            previous_diagonal, row[j] = row[j], (previous_diagonal + 1 if token == other else max(row[j], row[j - 1]))
    return _f1(row[-1], len(ours), len(theirs))


def gleu(text: str, reference: str) -> float:
    """Sentence GLEU (NLTK): 1- to 4-grams in common / the larger of the two sides' n-gram counts."""
    ours, theirs = text.lower().split(), reference.lower().split()
    mine = sum((_ngrams(ours, n) for n in range(1, 5)), Counter())
    other = sum((_ngrams(theirs, n) for n in range(1, 5)), Counter())
    total = max(sum(mine.values()), sum(other.values()))
    return sum((mine & other).values()) / total if total else 0.0


def metric_function(metric: str) -> Callable[[str, str], float]:
    if metric == "fuzzy_match":
        return lambda a, b: difflib.SequenceMatcher(None, a, b).ratio()
    if metric.startswith("rouge_"):
        n = metric[len("rouge_"):]
        return rouge_l if n == "l" else (lambda a, b: rouge_n(a, b, int(n)))
    if metric == "gleu":
        return gleu
    if metric == "bleu":
        from sacrebleu.metrics import BLEU

        scorer = BLEU(effective_order=True)
    else:
        from sacrebleu.metrics import CHRF

        scorer = CHRF()
    return lambda a, b: min(1.0, scorer.sentence_score(a, [b]).score / 100.0)  # 100.00000000000004 happens


class StringCheck(Grader):
    type = "string_check"

    def __init__(self, spec: Spec):
        super().__init__(spec.name)
        spec.allow("input", "reference", "operation")
        self.input, self.reference = spec.template("input"), spec.template("reference")
        self.operation = spec.choice("operation", OPERATIONS)

    def score(self, batch: Batch) -> list[float]:
        out = []
        for i in range(len(batch)):
            text, reference = self.render(self.input, batch, i), self.render(self.reference, batch, i)
            out.append(0.0 if text is None or reference is None else string_check(self.operation, text, reference))
        return out


class TextSimilarity(Grader):
    type = "text_similarity"

    def __init__(self, spec: Spec):
        super().__init__(spec.name)
        spec.allow("input", "reference", "evaluation_metric", "pass_threshold")
        self.input, self.reference = spec.template("input"), spec.template("reference")
        metric = spec.get("evaluation_metric")
        if metric in REFUSED_METRICS:
            raise spec.error(f"evaluation_metric {metric!r} {REFUSED_METRICS[metric]}; use one of "
                             f"{', '.join(METRICS)}, or a python grader")
        self.metric = spec.choice("evaluation_metric", METRICS)
        self.threshold = spec.get("pass_threshold", float, None)
        self._function: Callable[[str, str], float] | None = None

    def score(self, batch: Batch) -> list[float]:
        if self._function is None:
            self._function = metric_function(self.metric)
        out = []
        for i in range(len(batch)):
            text, reference = self.render(self.input, batch, i), self.render(self.reference, batch, i)
            value = 0.0 if text is None or reference is None else float(self._function(text, reference))
            out.append(value if self.threshold is None else float(value >= self.threshold))
        return out
