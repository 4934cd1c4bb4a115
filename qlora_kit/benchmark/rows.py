"""The rows a bench cell trains on: batch_size x steps of them, the same for every backend (seeded).

- sft: rows of exactly seq_len tokens, every token trained (synthetic) or masked as in training (recipe).
- dpo, orpo, simpo: pairs whose prompt + answer is exactly seq_len tokens for both answers (chosen and rejected of
  equal length, different ids), so a step runs 2 x batch_size sequences of seq_len, the planner's worst case.
- kto: unpaired rows of exactly seq_len tokens, desirable and undesirable alternating (each step sees both).

Synthetic preference rows give the prompt a quarter of the sequence (PROMPT_SHARE): the answers are scored, the
prompt only read, so a pair exercises both (the report hands the planner the rows' scored share). `recipe`
preference rows are the recipe's own pairs, encoded as `train` encodes them and cycled; their lengths vary, so a
cell's tokens/s counts the tokens its rows really had, and the planner's prediction (for seq_len-long sequences)
is an upper bound there.
- grpo: prompts of seq_len - grpo.max_completion_length tokens (bench/grpo.py), each completion sampled to the end.
"""

from __future__ import annotations

import random

PROMPT_SHARE = 4  # synthetic preference rows: the prompt is seq_len // PROMPT_SHARE tokens


def row_tokens(row) -> int:
    """Tokens the trainer runs for a row: an SFT row's length; a pair's prompt once per answer plus the answers."""
    return row.tokens if hasattr(row, "answers") else len(row.input_ids)


def make_rows(spec: dict, recipe, tokenizer) -> list:
    n, length = spec["batch_size"] * spec["steps"], spec["seq_len"]
    method = recipe.train.method
    if method == "grpo":  # prompts to sample from, not rows to train on
        from qlora_kit.benchmark.grpo import prompt_rows

        return prompt_rows(spec, recipe, tokenizer)
    if spec["data"] == "synthetic":
        rng = random.Random(recipe.train.seed)
        vocab = len(tokenizer)
        if method == "sft":
            return [_sft_row(rng, vocab, length) for _ in range(n)]
        return [_preference_row(rng, vocab, length, method, index) for index in range(n)]
    return _recipe_rows(recipe, tokenizer, n, length)


def _ids(rng: random.Random, vocab: int, count: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(count)]


def _sft_row(rng: random.Random, vocab: int, length: int):
    from qlora_kit.data.encode import Encoded

    ids = _ids(rng, vocab, length)
    return Encoded(ids, list(ids))


def _preference_row(rng: random.Random, vocab: int, length: int, method: str, index: int):
    from qlora_kit.data.preference import EncodedPreference

    prompt = _ids(rng, vocab, max(1, length // PROMPT_SHARE))
    answer = length - len(prompt)
    if method == "kto":
        return EncodedPreference(prompt, _ids(rng, vocab, answer), None, index % 2 == 0, original_length=length)
    return EncodedPreference(prompt, _ids(rng, vocab, answer), _ids(rng, vocab, answer), original_length=length)


def _recipe_rows(recipe, tokenizer, n: int, length: int) -> list:
    """sft: the recipe's data encoded as in training, joined into one token stream (masks kept) and cut into
    seq_len blocks; the preference methods: its rows as `train` encodes them (cut to seq_len), cycled."""
    from qlora_kit.data.encode import Encoded, apply_chat_template_choice
    from qlora_kit.data.prepare import encode_split, encode_splits, load_examples
    from qlora_kit.errors import DataError

    method = recipe.train.method
    items, _, _ = load_examples(recipe.data, recipe.train.seed, method=method)
    apply_chat_template_choice(tokenizer, recipe.data.chat_template)
    if method != "sft":
        rows = encode_splits(recipe, tokenizer, items, [])[0].rows
        if not rows:
            raise DataError("bench --data recipe: no row of the recipe's data fits --seq-lens")
        return [rows[i % len(rows)] for i in range(n)]
    split = encode_split(tokenizer, items, recipe.data.train_on, 10**9)
    ids = [t for r in split.rows for t in r.input_ids]
    labels = [t for r in split.rows for t in r.labels]
    if not ids:
        raise DataError("bench --data recipe: the recipe's data encodes to no tokens")
    reps = -(-n * length // len(ids))
    ids, labels = ids * reps, labels * reps
    return [Encoded(ids[i * length:(i + 1) * length], labels[i * length:(i + 1) * length]) for i in range(n)]
