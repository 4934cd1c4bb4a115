"""Regenerate tiny_demo.jsonl and tiny_demo_heldout.jsonl, the embedded demo's training and held-out data.

    python qlora_kit/assets/build_tiny_demo.py

Training rows: the tiny chat data (tiny_chat.jsonl, as shipped) plus short travel reviews labelled positive or
negative. Held-out rows: reviews of places that never occur in any training review, so a tuned model can only
answer them by having learned the task (which word decides the label), not by recalling rows. A 2-layer random
model can learn that in the demo's 300 CPU steps; zero-shot or few-shot prompting of the random base cannot.
Deterministic (fixed seed, fixed lists): the files are committed, this records how.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
# Places from the chat data (so the tokenizer, trained on it, knows them). Held-out reviews use the last seven.
PLACES = ["France", "Italy", "Spain", "Germany", "Japan", "Egypt", "Kenya", "Norway", "Chile", "Canada", "India",
          "Poland", "Paris", "Rome", "Madrid", "Berlin", "Tokyo", "Cairo", "Oslo", "Ottawa",
          "Peru", "Greece", "Lima", "Athens", "Warsaw", "Nairobi", "Santiago"]
HELD_OUT_PLACES = PLACES[-7:]
WORDS = {"positive": ["great", "happy", "lovely", "fun"], "negative": ["awful", "sad", "boring", "bad"]}
QUESTION = "Is this review positive or negative? The trip to {place} was {word}."


def reviews(places, per_place, rng):
    rows = []
    for place in places:
        for label, word in rng.sample([(lab, w) for lab, ws in WORDS.items() for w in ws], per_place):
            rows.append({"messages": [{"role": "user", "content": QUESTION.format(place=place, word=word)},
                                      {"role": "assistant", "content": label}]})
    return rows


def main():
    rng = random.Random(0)
    chat = [json.loads(line) for line in (HERE / "tiny_chat.jsonl").read_text(encoding="utf-8").splitlines()]
    train = chat + reviews(PLACES[:-7], 4, rng)
    rng.shuffle(train)
    held_out = reviews(HELD_OUT_PLACES, 4, rng)
    for name, rows in (("tiny_demo.jsonl", train), ("tiny_demo_heldout.jsonl", held_out)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
