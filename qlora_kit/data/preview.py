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


HEAD = 80  # tokens kept from the start of a long row before the elision


def masking_preview(tokenizer, enc: Encoded, limit: int = 400) -> list[tuple[str, bool]]:
    """Decode the sample into runs of (text, trained?), merging neighbouring tokens with the same mask. A row longer
    than `limit` whose first trained token lies beyond it (a long tools list, a long document) shows its start, an
    elision, and the stretch from just before the first trained token: the preview is for seeing what trains."""
    ids, labels = enc.input_ids, enc.labels
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    start = min(first - HEAD // 2, len(ids) - (limit - HEAD))
    if len(ids) <= limit or start <= HEAD:
        return _runs(tokenizer, ids[:limit], labels[:limit])
    gap = (f"\n... ({start - HEAD} tokens not shown) ...\n", False)
    return _runs(tokenizer, ids[:HEAD], labels[:HEAD]) + [gap] + _runs(
        tokenizer, ids[start:start + limit - HEAD], labels[start:start + limit - HEAD])


def _runs(tokenizer, ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    runs: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            runs.append((tokenizer.decode(ids[start:i]), labels[start] != IGNORE_INDEX))
            start = i
    return runs
