"""Regenerate short_answers_train.jsonl and short_answers_eval.jsonl, the preference pairs of the real-model DPO demo.

    python qlora_kit/assets/build_short_answers.py qlora_kit/assets

A house style that SmolLM2-135M-Instruct does not have: the bare answer, without a sentence around it.
"What is the capital of Poland?" chosen "Warsaw", rejected "The capital of Poland is Warsaw." (the base's own
style: it restates the question). Summed over the answer's tokens, the base gives the sentence the higher
log-probability on almost every pair (it only prefers the bare number for some sums), so its preference accuracy
is far below chance; a few dozen DPO steps on CPU flip it.
Twelve kinds of question (capitals, opposites, chemical symbols, legs, plurals, past tenses, weekdays, months,
languages, authors, products, sums). Every answer is right: the pair differs in style only, so what the model
learns is the style, not a fact. A quarter of each kind is held out (at least one question): no held-out prompt
occurs in the training rows, so a held-out pair is won by applying the style to a question never trained on.
Deterministic (fixed lists, fixed seed): the files are committed, this records how.
"""

import json
import random
import sys
from pathlib import Path

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Chile", "Santiago"),
            ("Canada", "Ottawa"), ("Greece", "Athens"), ("Poland", "Warsaw"), ("Portugal", "Lisbon"),
            ("Austria", "Vienna"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Ireland", "Dublin"),
            ("Russia", "Moscow"), ("China", "Beijing"), ("Thailand", "Bangkok"), ("Cuba", "Havana"),
            ("Hungary", "Budapest"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Argentina", "Buenos Aires"),
            ("Mexico", "Mexico City"), ("South Korea", "Seoul"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
            ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Colombia", "Bogota"),
            ("Venezuela", "Caracas"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"), ("Ethiopia", "Addis Ababa"),
            ("Czechia", "Prague"), ("Romania", "Bucharest"), ("Ukraine", "Kyiv"), ("Philippines", "Manila"),
            ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Switzerland", "Bern"),
            ("Netherlands", "Amsterdam"), ("Iceland", "Reykjavik"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
            ("Croatia", "Zagreb"), ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"),
            ("Ghana", "Accra"), ("Senegal", "Dakar"), ("Uruguay", "Montevideo"), ("Ecuador", "Quito")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("light", "dark"),
             ("early", "late"), ("happy", "sad"), ("open", "closed"), ("full", "empty"), ("old", "new"),
             ("hard", "soft"), ("wet", "dry"), ("rich", "poor"), ("tall", "short"), ("thick", "thin"),
             ("loud", "quiet"), ("clean", "dirty"), ("strong", "weak"), ("cheap", "expensive"), ("deep", "shallow"),
             ("wide", "narrow"), ("true", "false"), ("win", "lose"), ("push", "pull"), ("buy", "sell"),
             ("near", "far"), ("inside", "outside"), ("always", "never"), ("first", "last")]
SYMBOLS = [("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"),
           ("sodium", "Na"), ("potassium", "K"), ("copper", "Cu"), ("lead", "Pb"), ("helium", "He"),
           ("nitrogen", "N"), ("calcium", "Ca"), ("zinc", "Zn"), ("mercury", "Hg"), ("tin", "Sn"), ("neon", "Ne"),
           ("sulfur", "S"), ("chlorine", "Cl"), ("uranium", "U")]
LEGS = [("a spider", "eight"), ("a dog", "four"), ("a bird", "two"), ("an ant", "six"), ("a cat", "four"),
        ("a horse", "four"), ("a chicken", "two"), ("an octopus", "eight"), ("a beetle", "six"), ("a cow", "four"),
        ("a duck", "two"), ("a bee", "six"), ("a scorpion", "eight"), ("a sheep", "four"), ("a penguin", "two")]
PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("goose", "geese"),
           ("man", "men"), ("woman", "women"), ("person", "people"), ("knife", "knives"), ("leaf", "leaves"),
           ("wolf", "wolves"), ("box", "boxes"), ("city", "cities"), ("bus", "buses"), ("cactus", "cacti"),
           ("ox", "oxen"), ("louse", "lice"), ("wife", "wives")]
PAST = [("go", "went"), ("eat", "ate"), ("see", "saw"), ("run", "ran"), ("swim", "swam"), ("write", "wrote"),
        ("take", "took"), ("give", "gave"), ("buy", "bought"), ("think", "thought"), ("sing", "sang"),
        ("drink", "drank"), ("fly", "flew"), ("speak", "spoke"), ("drive", "drove"), ("break", "broke"),
        ("catch", "caught"), ("teach", "taught"), ("bring", "brought"), ("find", "found")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
LANGUAGES = [("Brazil", "Portuguese"), ("Mexico", "Spanish"), ("France", "French"), ("Germany", "German"),
             ("Japan", "Japanese"), ("Italy", "Italian"), ("Russia", "Russian"), ("China", "Mandarin Chinese"),
             ("Egypt", "Arabic"), ("Greece", "Greek"), ("Turkey", "Turkish"), ("Poland", "Polish"),
             ("Sweden", "Swedish"), ("South Korea", "Korean"), ("Thailand", "Thai"), ("Finland", "Finnish"),
             ("Hungary", "Hungarian"), ("Portugal", "Portuguese")]
AUTHORS = [("Hamlet", "William Shakespeare"), ("Pride and Prejudice", "Jane Austen"), ("1984", "George Orwell"),
           ("War and Peace", "Leo Tolstoy"), ("Moby-Dick", "Herman Melville"), ("Don Quixote", "Miguel de Cervantes"),
           ("The Odyssey", "Homer"), ("Oliver Twist", "Charles Dickens"), ("Frankenstein", "Mary Shelley"),
           ("Dracula", "Bram Stoker"), ("The Hobbit", "J. R. R. Tolkien"), ("Crime and Punishment", "Fyodor Dostoevsky"),
           ("Les Miserables", "Victor Hugo"), ("The Great Gatsby", "F. Scott Fitzgerald")]
HELD_OUT_SHARE, SEED = 0.25, 135


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def kinds() -> dict[str, list[tuple[str, str, str]]]:
    """Each kind's (question, bare answer, the same answer as the base's kind of sentence)."""
    day = [(d, DAYS[(i + 1) % 7]) for i, d in enumerate(DAYS)]
    month = [(m, MONTHS[(i + 1) % 12]) for i, m in enumerate(MONTHS)]
    products = [(a, b) for a in range(2, 13) for b in range(2, 13) if (a * 7 + b) % 5 == 0]
    sums = [(a, b) for a in range(2, 13) for b in range(2, 13) if (a * 5 + b) % 6 == 0]
    return {
        "capital": [(f"What is the capital of {c}?", k, f"The capital of {c} is {k}.") for c, k in CAPITALS],
        "opposite": [(f"What is the opposite of {w}?", cap(o), f"The opposite of {w} is {o}.") for w, o in OPPOSITES],
        "symbol": [(f"What is the chemical symbol for {e}?", s, f"The chemical symbol for {e} is {s}.")
                   for e, s in SYMBOLS],
        "legs": [(f"How many legs does {a} have?", cap(n), f"{cap(a)} has {n} legs.") for a, n in LEGS],
        "plural": [(f"What is the plural of {w}?", cap(p), f"The plural of {w} is {p}.") for w, p in PLURALS],
        "past": [(f"What is the past tense of {w}?", cap(p), f"The past tense of {w} is {p}.") for w, p in PAST],
        "day": [(f"What day comes after {d}?", n, f"The day after {d} is {n}.") for d, n in day],
        "month": [(f"What month comes after {m}?", n, f"The month after {m} is {n}.") for m, n in month],
        "language": [(f"What language is spoken in {c}?", lang, f"The main language spoken in {c} is {lang}.")
                     for c, lang in LANGUAGES],
        "author": [(f"Who wrote {b}?", a, f"{b} was written by {a}.") for b, a in AUTHORS],
        "product": [(f"What is {a} times {b}?", str(a * b), f"{a} times {b} is {a * b}.") for a, b in products],
        "sum": [(f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} is {a + b}.") for a, b in sums],
    }


def main(out: Path) -> None:
    rng = random.Random(SEED)
    train, held_out = [], []
    for questions in kinds().values():
        questions = list(questions)
        rng.shuffle(questions)
        n = max(1, round(HELD_OUT_SHARE * len(questions)))
        held_out += questions[:n]
        train += questions[n:]
    rng.shuffle(train)
    rng.shuffle(held_out)
    assert not {q for q, _, _ in train} & {q for q, _, _ in held_out}
    for name, part in (("short_answers_train.jsonl", train), ("short_answers_eval.jsonl", held_out)):
        rows = [{"prompt": q, "chosen": bare, "rejected": sentence} for q, bare, sentence in part]
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
