"""Regenerate tiny_prefs.jsonl and tiny_kto.jsonl, the small preference sets for the tiny model and fast tests.

    python qlora_kit/assets/build_tiny_prefs.py

tiny_prefs.jsonl (builtin:tiny-prefs): 28 pairs, {prompt, chosen, rejected}: the chosen answer is the tiny chat
data's right answer, the rejected one the same sentence with a wrong fact (another capital, opposite, color or
sum). 24 are plain strings; the last 4 are in TRL's conversational form (the prompt a message list, one of them with
a system message and one with an earlier exchange; each answer a list of one assistant message), so both forms of
the preference format are exercised by one file.
tiny_kto.jsonl (builtin:tiny-kto): 24 unpaired rows, {prompt, completion, label}: half right answers (true), half
wrong ones (false), no prompt twice.
The facts are the tiny chat data's (build_tiny_chat.py), so the built-in tiny model's tokenizer, trained on it, knows
every word. Deterministic (fixed seed, fixed lists): the files are committed, this records how.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Chile", "Santiago"),
            ("Canada", "Ottawa"), ("Greece", "Athens"), ("Poland", "Warsaw")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("light", "dark"),
             ("early", "late"), ("happy", "sad"), ("open", "closed"), ("full", "empty"), ("old", "new")]
COLORS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"), ("coal", "black"),
          ("a tomato", "red"), ("a plum", "purple")]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


def facts(rng: random.Random):
    """(question, right answer, wrong answer): the wrong one swaps in another item of the same list."""
    def other(items, right):
        return rng.choice([x for x in items if x != right])

    for country, city in CAPITALS:
        yield (f"What is the capital of {country}?", f"The capital of {country} is {city}.",
               f"The capital of {country} is {other([c for _, c in CAPITALS], city)}.")
    for word, opposite in OPPOSITES:
        yield (f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}.",
               f"The opposite of {word} is {other([o for _, o in OPPOSITES], opposite)}.")
    for thing, color in COLORS:
        thing_ = thing[0].upper() + thing[1:]
        yield (f"What color is {thing}?", f"{thing_} is {color}.",
               f"{thing_} is {other([c for _, c in COLORS], color)}.")
    for a, b in [(1, 2), (2, 2), (3, 1), (4, 3), (2, 5), (5, 4)]:
        wrong = NUMBERS[a + b + rng.choice([-1, 1])]
        yield (f"What is {NUMBERS[a]} plus {NUMBERS[b]}?", f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} is "
               f"{NUMBERS[a + b]}.", f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} is {wrong}.")


def conversational(question: str, right: str, wrong: str, i: int) -> dict:
    prompt = [{"role": "user", "content": question}]
    if i == 1:
        prompt.insert(0, {"role": "system", "content": SYSTEM})
    if i == 2:
        prompt = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello! How can I help?"}
                  ] + prompt
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": right}],
            "rejected": [{"role": "assistant", "content": wrong}]}


def main():
    rng = random.Random(0)
    all_facts = list(facts(rng))  # 36
    rng.shuffle(all_facts)
    pairs = [{"prompt": q, "chosen": r, "rejected": w} for q, r, w in all_facts[:24]]
    pairs += [conversational(q, r, w, i) for i, (q, r, w) in enumerate(all_facts[24:28])]
    kto = [{"prompt": q, "completion": r if i % 2 == 0 else w, "label": i % 2 == 0}
           for i, (q, r, w) in enumerate(all_facts[:12] + all_facts[24:])]
    for name, rows in (("tiny_prefs.jsonl", pairs), ("tiny_kto.jsonl", kto)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
