"""Regenerate tiny_chat.jsonl, the small chat dataset shipped for the offline demo and tests.

    python qlora_kit/assets/build_tiny_chat.py > qlora_kit/assets/tiny_chat.jsonl

Short, regular question/answer pairs in OpenAI chat fine-tuning format, so a tiny random model can visibly learn
them in a few dozen CPU steps. Deterministic (fixed seed, fixed lists): the file is committed, this records how.
"""

import json
import random

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Chile", "Santiago"),
            ("Canada", "Ottawa"), ("India", "New Delhi"), ("Greece", "Athens"), ("Poland", "Warsaw")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("light", "dark"),
             ("early", "late"), ("happy", "sad"), ("open", "closed"), ("full", "empty"), ("old", "new")]
COLORS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"), ("coal", "black"),
          ("a tomato", "red"), ("an orange", "orange"), ("a plum", "purple")]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


def pairs():
    for country, city in CAPITALS:
        yield f"What is the capital of {country}?", f"The capital of {country} is {city}."
    for word, opposite in OPPOSITES:
        yield f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."
    for thing, color in COLORS:
        yield f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is {color}."
    for a in range(6):
        for b in range(5):
            yield f"What is {NUMBERS[a]} plus {NUMBERS[b]}?", f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} is {NUMBERS[a + b]}."


def main():
    rng = random.Random(0)
    rows = []
    for question, answer in pairs():
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.5:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        rows.append({"messages": messages})
    # A few two-turn conversations: the mask must cover both assistant turns and neither user turn.
    all_pairs = list(pairs())
    for _ in range(12):
        q1, a1 = rng.choice(all_pairs)
        rows.append({"messages": [{"role": "user", "content": "Hello!"},
                                  {"role": "assistant", "content": "Hello! How can I help?"},
                                  {"role": "user", "content": q1}, {"role": "assistant", "content": a1}]})
    rng.shuffle(rows)
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
