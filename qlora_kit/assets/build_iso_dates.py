"""Regenerate iso_dates_train.jsonl and iso_dates_eval.jsonl, the date-normalisation task of the real-model demo.

    python qlora_kit/assets/build_iso_dates.py qlora_kit/assets

"Convert to ISO 8601: March 5, 2021" -> "2021-03-05". A task a 135M instruct model cannot do zero-shot (it explains
ISO 8601 instead) but learns in a few dozen CPU steps, with an answer that is right or wrong by exact match.
500 training rows and 100 held-out rows; no held-out date appears in the training rows, so a correct held-out answer
is the model applying the rule, not recalling a row. Deterministic (fixed seed): the files are committed, this
records how.
"""

import datetime
import json
import random
import sys
from pathlib import Path

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
PROMPT = "Convert to ISO 8601: {}"
TRAIN_ROWS, EVAL_ROWS, SEED = 500, 100, 8601


def dates(rng: random.Random, n: int) -> list[datetime.date]:
    """n distinct dates between 1950 and 2049."""
    start, span = datetime.date(1950, 1, 1).toordinal(), 100 * 365
    picked: set[int] = set()
    while len(picked) < n:
        picked.add(start + rng.randrange(span))
    ordered = sorted(picked)
    rng.shuffle(ordered)  # training and held-out dates both spread over the whole century
    return [datetime.date.fromordinal(o) for o in ordered]


def row(d: datetime.date) -> dict:
    spoken = f"{MONTHS[d.month - 1]} {d.day}, {d.year}"
    return {"messages": [{"role": "user", "content": PROMPT.format(spoken)},
                         {"role": "assistant", "content": d.isoformat()}]}


def main(out: Path) -> None:
    chosen = dates(random.Random(SEED), TRAIN_ROWS + EVAL_ROWS)
    train, held_out = chosen[:TRAIN_ROWS], chosen[TRAIN_ROWS:]
    assert not set(train) & set(held_out)
    for name, part in (("iso_dates_train.jsonl", train), ("iso_dates_eval.jsonl", held_out)):
        (out / name).write_text("".join(json.dumps(row(d)) + "\n" for d in part), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
