"""Small pieces `data check` shows: length statistics and the masking preview (token runs, trained or not)."""

from __future__ import annotations

import math

from qlora_kit.data.encode import IGNORE_INDEX, Encoded


def stats(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "mean": 0.0, "p95": 0, "max": 0}
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1), "p95": p95, "max": ordered[-1]}


def masking_preview(tokenizer, enc: Encoded, limit: int = 400) -> list[tuple[str, bool]]:
    """Decode the sample into runs of (text, trained?), merging neighbouring tokens with the same mask."""
    runs: list[tuple[str, bool]] = []
    ids, labels = enc.input_ids[:limit], enc.labels[:limit]
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            runs.append((tokenizer.decode(ids[start:i]), labels[start] != IGNORE_INDEX))
            start = i
    return runs
