"""The rows later stages measure a model on: the merge's fidelity check and the GGUF export's logit check."""

from __future__ import annotations

from qlora_kit.errors import QKError

FALLBACK_TEXTS = ("The quick brown fox jumps over the lazy dog.", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
                  "Hello! How can I help you today?")


def held_out_rows(recipe, tokenizer, n: int):
    """The run's eval rows (same split and seed as training), else its first training rows, else fixed texts."""
    from qlora_kit.data.encode import apply_chat_template_choice
    from qlora_kit.data.formats import Example
    from qlora_kit.data.prepare import encode_split, load_examples

    try:
        train_items, eval_items, _ = load_examples(recipe.data, recipe.train.seed)
        source, items = ("eval split", eval_items) if eval_items else ("training rows", train_items)
        apply_chat_template_choice(tokenizer, "auto")
    except QKError:
        source, items = "fixed texts (the run's data is no longer readable)", [
            (f"text {i}", Example(text=t)) for i, t in enumerate(FALLBACK_TEXTS)]
    items = [(where, example.as_conversation()) for where, example in items[:n]]
    split = encode_split(tokenizer, items, recipe.data.train_on, recipe.model.max_seq_length, False,
                         recipe.data.train_reasoning)
    return source, split.rows
