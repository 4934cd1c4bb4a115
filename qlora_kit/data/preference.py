"""Preference rows -> token ids: the prompt once, each answer apart, decided by the same masking as SFT rows.

A pair's prompt is rendered with the generation prompt and each answer after it through the chat template; the
answer's tokens are exactly the tokens `encode_example` would train in an SFT row ending with that answer (earlier
assistant turns in the prompt are context). Where the chosen and rejected renderings tokenize the prompt differently
at the boundary (tokens merging across it), the prompt is their common prefix and the rest belongs to each answer,
as TRL does. `data check` previews these ids and the trainers receive them unchanged (TRL's own tokenization is
skipped, as for SFT).

Lengths: `preference.max_prompt_length` keeps the end of a long prompt (what the answer follows),
`preference.max_completion_length` cuts long answers, and the whole row fits `model.max_seq_length`: a row whose
prompt alone fills it has nothing left to score and is dropped (counted, like SFT rows with nothing to train).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qlora_kit.data.encode import IGNORE_INDEX, encode_example
from qlora_kit.data.formats import Example


@dataclass
class EncodedPreference:
    prompt_ids: list[int]
    chosen_ids: list[int]  # the preferred answer; for an unpaired (KTO) row, its one completion
    rejected_ids: list[int] | None = None  # None for an unpaired row
    label: bool | None = None  # unpaired rows: True when the completion is desirable
    where: str = ""
    original_length: int = 0  # prompt + longest answer, before truncation

    @property
    def answers(self) -> list[list[int]]:
        return [self.chosen_ids] + ([self.rejected_ids] if self.rejected_ids is not None else [])

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + max(len(a) for a in self.answers)

    @property
    def truncated(self) -> bool:
        return self.original_length > self.length

    @property
    def tokens(self) -> int:
        """Tokens the trainer runs: the prompt once per answer, plus the answers."""
        return sum(len(self.prompt_ids) + len(a) for a in self.answers)

    @property
    def trained_tokens(self) -> int:
        return sum(len(a) for a in self.answers)


def _split(tokenizer, example: Example, answer: list[dict], where: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one rendering: the answer starts at its first trained token."""
    context = [dict(m, weight=0) if m["role"] == "assistant" else m for m in example.messages]
    enc = encode_example(tokenizer, Example(messages=context + answer, tools=example.tools), "responses", where)
    first = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    return enc.input_ids[:first], enc.input_ids[first:]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_preference(tokenizer, example: Example, where: str = "") -> EncodedPreference:
    if example.kind == "unpaired":
        prompt, completion = _split(tokenizer, example, example.completion, where)
        return EncodedPreference(prompt, completion, None, example.label, where, len(prompt) + len(completion))
    p_chosen, chosen = _split(tokenizer, example, example.chosen, where)
    p_rejected, rejected = _split(tokenizer, example, example.rejected, where)
    n = _common(p_chosen, p_rejected)
    prompt, chosen, rejected = p_chosen[:n], p_chosen[n:] + chosen, p_rejected[n:] + rejected
    return EncodedPreference(prompt, chosen, rejected, None, where, n + max(len(chosen), len(rejected)))


def fit_lengths(enc: EncodedPreference, max_len: int, max_prompt: int | None = None,
                max_completion: int | None = None) -> EncodedPreference | None:
    """The row cut to the limits (module docstring); None when its prompt leaves no room for an answer."""
    prompt = enc.prompt_ids[-max_prompt:] if max_prompt else enc.prompt_ids
    if len(prompt) >= max_len:
        return None
    room = max_len - len(prompt) if not max_completion else min(max_completion, max_len - len(prompt))
    cut = [a[:room] for a in enc.answers]
    return EncodedPreference(prompt, cut[0], cut[1] if len(cut) > 1 else None, enc.label, enc.where,
                             enc.original_length)


@dataclass
class PreferenceSplit:
    rows: list[EncodedPreference] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0  # prompts too long for model.max_seq_length (nothing left to score)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.rows)

    @property
    def trained_tokens(self) -> int:
        return sum(r.trained_tokens for r in self.rows)


def encode_preferences(tokenizer, items: list[tuple[str, Example]], max_len: int, max_prompt: int | None = None,
                       max_completion: int | None = None, unpair: bool = False) -> PreferenceSplit:
    """Encode and fit every row; unpair=True turns each pair into a desirable and an undesirable row (KTO)."""
    out = PreferenceSplit()
    for where, example in items:
        enc = encode_preference(tokenizer, example, where)
        rows = [enc]
        if unpair and enc.rejected_ids is not None:
            rows = [EncodedPreference(enc.prompt_ids, answer, None, label, where, len(enc.prompt_ids) + len(answer))
                    for answer, label in ((enc.chosen_ids, True), (enc.rejected_ids, False))]
        for row in rows:
            fitted = fit_lengths(row, max_len, max_prompt, max_completion)
            if fitted is None:
                out.dropped += 1
                continue
            out.truncated += fitted.truncated
            out.rows.append(fitted)
    return out
