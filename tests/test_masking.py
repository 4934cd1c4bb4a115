"""Label masks, token by token: exactly the assistant turns (with their end-of-turn marker) are trained."""

from __future__ import annotations

from contextlib import nullcontext

import pytest

from qlora_kit.data.encode import (IGNORE_INDEX, Encoded, apply_chat_template_choice, encode_example, pack,
                                   truncate)
from qlora_kit.data.formats import Example
from qlora_kit.data.prepare import encode_split
from qlora_kit.data.templates import CHAT_TEMPLATES
from qlora_kit.errors import DataError

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is the capital of Peru?"},
    {"role": "assistant", "content": "The capital of Peru is Lima."},
]


def expected(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Token ids and labels built independently, segment by segment (trained segments keep their ids)."""
    ids, labels = [], []
    for text, trained in segments:
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if trained else [IGNORE_INDEX] * len(seg)
    return ids, labels


def test_chatml_mask_token_by_token(tiny_tokenizer):
    apply_chat_template_choice(tiny_tokenizer, "chatml")
    enc = encode_example(tiny_tokenizer, Example(messages=TWO_TURNS))
    ids, labels = expected(tiny_tokenizer, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello! How can I help?<|im_end|>\n", True),
        ("<|im_start|>user\nWhat is the capital of Peru?<|im_end|>\n<|im_start|>assistant\n", False),
        ("The capital of Peru is Lima.<|im_end|>\n", True),
    ])
    assert enc.input_ids == ids
    assert enc.labels == labels
    assert enc.trained_tokens == sum(1 for t in labels if t != IGNORE_INDEX) > 10


def test_weight_zero_turn_is_not_trained(tiny_tokenizer):
    apply_chat_template_choice(tiny_tokenizer, "chatml")
    messages = [dict(m) for m in TWO_TURNS]
    messages[2]["weight"] = 0
    enc = encode_example(tiny_tokenizer, Example(messages=messages))
    trained = tiny_tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])
    assert trained == "The capital of Peru is Lima.<|im_end|>\n"


def test_train_on_all_trains_every_token(tiny_tokenizer):
    apply_chat_template_choice(tiny_tokenizer, "chatml")
    enc = encode_example(tiny_tokenizer, Example(messages=TWO_TURNS), train_on="all")
    assert enc.labels == enc.input_ids


@pytest.mark.parametrize("name, trained_text", [
    ("llama-3", "Hello! How can I help?<|eot_id|>The capital of Peru is Lima.<|eot_id|>"),
    ("alpaca", "Hello! How can I help?<|im_end|>\n\nThe capital of Peru is Lima.<|im_end|>\n\n"),
])
def test_other_builtin_templates_train_the_assistant_text_and_its_end(tiny_tokenizer, name, trained_text):
    # The tiny tokenizer lacks llama-3's header tokens: they become several tokens (a warning), masking still holds.
    with pytest.warns(UserWarning) if CHAT_TEMPLATES[name].special_tokens else nullcontext():
        apply_chat_template_choice(tiny_tokenizer, name)
    enc = encode_example(tiny_tokenizer, Example(messages=TWO_TURNS))
    assert tiny_tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX]) == trained_text
    # Every untrained token comes before, between or after the assistant spans, never inside them.
    text = tiny_tokenizer.decode(enc.input_ids)
    assert "Be brief." in text and "What is the capital of Peru?" in text


def test_tokenizer_template_auto_and_missing(tiny_tokenizer):
    with pytest.raises(DataError) as info:
        apply_chat_template_choice(tiny_tokenizer, "auto")
    assert str(info.value) == ("data.chat_template: the tokenizer has no chat template; set data.chat_template to "
                               "one of: chatml, llama-3, alpaca, gemma, mistral, qwen3")
    tiny_tokenizer.chat_template = CHAT_TEMPLATES["chatml"].jinja
    assert apply_chat_template_choice(tiny_tokenizer, "auto") == "tokenizer"


def test_non_prefix_stable_template_is_refused(tiny_tokenizer):
    # Renders the last message first: rendering a prefix of the conversation is not a prefix of the whole.
    tiny_tokenizer.chat_template = ("{% for m in messages|reverse %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                    "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(DataError, match="row 7: the chat template is not prefix-stable"):
        encode_example(tiny_tokenizer, Example(messages=TWO_TURNS), where="row 7")


def test_text_rows_train_everything_and_end_with_eos(tiny_tokenizer):
    enc = encode_example(tiny_tokenizer, Example(text="The sky is blue."))
    assert enc.labels == enc.input_ids
    assert enc.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_truncation_counts_and_drops_rows_left_with_nothing_to_train(tiny_tokenizer):
    apply_chat_template_choice(tiny_tokenizer, "chatml")
    long_prompt = [{"role": "user", "content": "What is the capital of Peru? " * 20},
                   {"role": "assistant", "content": "Lima."}]
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    split = encode_split(tiny_tokenizer, [("a", Example(messages=long_prompt)), ("b", Example(messages=short))],
                         "responses", max_len=32)
    assert (split.truncated, split.dropped, len(split.rows)) == (1, 0 + 1, 1)
    assert split.rows[0].where == "b"
    enc = truncate(encode_example(tiny_tokenizer, Example(messages=long_prompt)), 32)
    assert len(enc.input_ids) == 32 and enc.truncated and enc.trained_tokens == 0


def test_packing_makes_full_blocks_and_keeps_labels_with_their_tokens():
    rows = [Encoded(list(range(i * 10, i * 10 + 7)), [IGNORE_INDEX] * 3 + list(range(i * 10 + 3, i * 10 + 7)))
            for i in range(5)]
    blocks = pack(rows, max_len=16)
    assert [len(b.input_ids) for b in blocks] == [16, 16, 3]
    flat_ids = [t for b in blocks for t in b.input_ids]
    flat_labels = [t for b in blocks for t in b.labels]
    assert flat_ids == [t for r in rows for t in r.input_ids]
    assert flat_labels == [t for r in rows for t in r.labels]
