"""Preference runs (train.method dpo, orpo, kto, simpo): does each system prefer the chosen answer of a held-out pair?

Notable choices:
- The score of an answer is log p(answer | prompt), summed over the answer's tokens (nats), for exactly the token
  ids training scored: `data.preference.encode_preferences` with the run's length limits (model.max_seq_length,
  preference.max_prompt_length, preference.max_completion_length). margin = logp(chosen) - logp(rejected);
  preference accuracy = the share of pairs with a margin above zero (a tie is not a preference).
- The held-out rows are the run's eval split (same file, seed and split as training) or `--data`, as for SFT runs;
  a pair that also occurs in training (same prompt, chosen and rejected) is excluded and counted.
- Unpaired (KTO) rows: a desirable and an undesirable completion of the same prompt make a pair (every such
  combination), scored as above. Completions left without a partner cannot be compared pairwise; for them the
  report gives the mean log-probability per token of the desirable and of the undesirable completions and their gap
  (desirable - undesirable). Per token, because those completions differ in prompt and length, and summed
  log-probabilities would mostly compare lengths.
- Every system that yields logits is scored: base, reference, adapter and merged by a transformers forward, each
  GGUF through llama.cpp's logits (systems.py `nll`, one function for both). Not scored: fewshot (its prompt is not
  the prompt training scored: the question is what tuning changed, not what examples in the prompt do) and
  recorded:FILE (an old model's answers carry no log-probabilities).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from qlora_kit.data.formats import Example
from qlora_kit.data.preference import EncodedPreference
from qlora_kit.errors import DataError

NOT_SCORED = {"fewshot": "its prompt holds training examples, so it is not the prompt training scored the answers "
                         "after",
              "recorded": "recorded answers carry no log-probabilities"}


@dataclass
class PreferenceSet:
    """The held-out preference rows as the systems score them."""
    source: str
    pairs: list[EncodedPreference] = field(default_factory=list)
    unpaired: list[EncodedPreference] = field(default_factory=list)  # label True: desirable
    leaked: list[str] = field(default_factory=list)  # where of the rows excluded because training has them
    pairs_from_unpaired: int = 0
    truncated: int = 0
    dropped: int = 0  # prompts that leave no room for an answer in model.max_seq_length (training drops them too)

    @property
    def longest(self) -> int:
        return max((r.length for r in self.pairs + self.unpaired), default=0)

    def summary(self) -> dict:
        return {"rows_from": self.source, "pairs": len(self.pairs),
                "pairs_from_unpaired_rows": self.pairs_from_unpaired, "unpaired_rows": len(self.unpaired), "leaked_rows_excluded": len(self.leaked),
                "truncated": self.truncated, "dropped_too_long": self.dropped,
                "score": "log p(answer | prompt) summed over the answer tokens (nats), the token ids training scored; "
                         "margin = chosen - rejected; accuracy = share of pairs with margin > 0"}


def not_scored(name: str) -> str | None:
    """Why a system gets no preference scores (None: it gets them)."""
    return NOT_SCORED.get(name.split(":", 1)[0])


def _key(example: Example) -> tuple:
    def text(messages):
        return tuple((m["role"], m["content"]) for m in messages or ())

    return text(example.messages), text(example.chosen), text(example.rejected), text(example.completion), \
        example.label


def split_leaked(items: list, train_items: list) -> tuple[list, list[str]]:
    """(held-out items not in training, where of those that are: the same prompt and answers, in file order)."""
    from qlora_kit.eval.rows import line_of

    seen = {_key(e) for _, e in train_items}
    leaked = sorted((w for w, e in items if _key(e) in seen), key=line_of)
    return [(w, e) for w, e in items if _key(e) not in seen], leaked


def pair_up(items: list) -> tuple[list, list]:
    """(pairs, unpaired rows left over): pair rows as they are; a desirable and an undesirable completion of the same
    prompt become a pair, every such combination (module docstring)."""
    pairs = [(w, e) for w, e in items if e.kind == "pair"]
    by_prompt: dict[tuple, dict[bool, list]] = {}
    for where, e in (i for i in items if i[1].kind == "unpaired"):
        by_prompt.setdefault(_key(e)[0], {True: [], False: []})[bool(e.label)].append((where, e))
    rest = []
    for sides in by_prompt.values():
        if not (sides[True] and sides[False]):
            rest += sides[True] + sides[False]
            continue
        pairs += [(f"{wd} vs {wu}", Example(messages=d.messages, chosen=d.completion, rejected=u.completion))
                  for wd, d in sides[True] for wu, u in sides[False]]
    return pairs, rest


def build(tokenizer, recipe, items: list, train_items: list, source: str, samples: int | None) -> PreferenceSet:
    """Encode the held-out preference rows as training encodes them (at most `samples` pairs and unpaired rows)."""
    from qlora_kit.data.preference import encode_preferences

    clean, leaked = split_leaked([(w, e) for w, e in items if e.kind != "sft"], train_items)
    pairs, rest = pair_up(clean)
    if samples:
        pairs, rest = pairs[:samples], rest[:samples]
    p, max_len = recipe.preference, recipe.model.max_seq_length
    out = PreferenceSet(source, leaked=leaked, pairs_from_unpaired=sum(" vs " in w for w, _ in pairs))
    for rows, target in ((pairs, out.pairs), (rest, out.unpaired)):
        split = encode_preferences(tokenizer, rows, max_len, p.max_prompt_length, p.max_completion_length)
        target += split.rows
        out.truncated += split.truncated
        out.dropped += split.dropped
    if not out.pairs and not out.unpaired:
        raise DataError(f"{source}: no held-out preference row to score (every one also occurs in training or has "
                        "no room for an answer in model.max_seq_length)" if clean or leaked else
                        f"{source}: no preference rows (pairs or labelled completions) among the held-out rows")
    return out


def score(system, pset: PreferenceSet) -> dict:
    """Per pair logp_chosen, logp_rejected, margin; per unpaired row its logp per token; and the means."""
    t0, pairs, unpaired = time.perf_counter(), [], []
    for row in pset.pairs:
        chosen = -system.nll(row.prompt_ids, row.chosen_ids)
        rejected = -system.nll(row.prompt_ids, row.rejected_ids)
        pairs.append({"logp_chosen": round(chosen, 6), "logp_rejected": round(rejected, 6),
                      "margin": round(chosen - rejected, 6)})
    for row in pset.unpaired:
        unpaired.append({"label": bool(row.label), "logp_per_token": round(
            -system.nll(row.prompt_ids, row.chosen_ids) / len(row.chosen_ids), 6)})
    return {"preference_rows": {"pairs": pairs, "unpaired": unpaired}, **summarize(pairs, unpaired),
            "preference_seconds": round(time.perf_counter() - t0, 3)}


def summarize(pairs: list[dict], unpaired: list[dict]) -> dict:
    """The report's per-system preference fields (None where there is nothing to average)."""
    def mean(values):
        values = list(values)
        return round(sum(values) / len(values), 6) if values else None

    good = [u["logp_per_token"] for u in unpaired if u["label"]]
    bad = [u["logp_per_token"] for u in unpaired if not u["label"]]
    gap = round(mean(good) - mean(bad), 6) if good and bad else None
    return {"preference_accuracy": mean(float(p["margin"] > 0) for p in pairs),
            "mean_margin": mean(p["margin"] for p in pairs),
            "mean_logp_chosen": mean(p["logp_chosen"] for p in pairs),
            "mean_logp_rejected": mean(p["logp_rejected"] for p in pairs),
            "desirable_logp_per_token": mean(good), "undesirable_logp_per_token": mean(bad),
            "unpaired_gap": gap}


FIELDS = tuple(summarize([], []))


def absent(name: str) -> dict:
    """The preference fields of a system that is not scored: null, and why."""
    return {**{k: None for k in FIELDS}, "preference_not_scored": not_scored(name)}
