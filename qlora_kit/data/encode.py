"""Examples -> token ids and labels, with the loss mask decided here, token by token.

Why our own masking rather than TRL's `assistant_only_loss`: that needs `{% generation %}` markers in the chat
template, which most templates (and all templates shipped by model vendors before 2025) lack. Instead we find
each assistant turn as a character span of the rendered conversation: the text between rendering the messages
before it with the generation prompt and rendering up to and including it. A token is trained when its character
span overlaps an assistant span, so the turn's end-of-turn marker (e.g. <|im_end|>) is trained too and the model
learns to stop. This works for any prefix-stable template and is checked, not assumed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from qlora_kit.data.formats import Example
from qlora_kit.data.templates import CHAT_TEMPLATES, get_template
from qlora_kit.data.template_support import for_template, without_reasoning
from qlora_kit.errors import DataError
from qlora_kit.errors import QKWarning

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    where: str = ""
    original_length: int = 0  # before truncation

    @property
    def truncated(self) -> bool:
        return self.original_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def apply_chat_template_choice(tokenizer, name: str) -> str:
    """Install the chosen template on the tokenizer; return a label for it ('tokenizer' or a built-in name).

    The tokenizer is later saved with the adapter, so the template used in training travels with it.
    """
    if name == "auto":
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("data.chat_template: the tokenizer has no chat template; set data.chat_template to one "
                            f"of: {', '.join(CHAT_TEMPLATES)}")
        return "tokenizer"
    try:
        template = get_template(name)
    except KeyError:
        raise DataError(f"data.chat_template: unknown template {name!r}; available: auto (the tokenizer's), "
                        f"{', '.join(CHAT_TEMPLATES)}") from None
    split = [t for t in template.special_tokens if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    if split:
        # Still trains correctly (the markers are just several tokens), but costs tokens and is unusual.
        warnings.warn(f"chat template {name!r}: {', '.join(split)} are not single tokens in this tokenizer",
                      QKWarning, stacklevel=2)
    tokenizer.chat_template = template.jinja
    return name


def render(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], where: str = "",
                    tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; return the text and the character spans of the assistant turns to train on."""
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    full = render(tokenizer, clean, add_generation_prompt=False, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prefix = render(tokenizer, clean[:i], add_generation_prompt=True, tools=tools)
        upto = render(tokenizer, clean[: i + 1], add_generation_prompt=False, tools=tools)
        if "reasoning_content" in message and not full.startswith(upto):
            # Reasoning templates (Qwen3) drop the thinking of turns before the last user message: the turn is
            # trained as the whole conversation shows it, without its thinking.
            bare = {k: v for k, v in clean[i].items() if k != "reasoning_content"}
            upto = render(tokenizer, clean[:i] + [bare], add_generation_prompt=False, tools=tools)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise DataError(
                f"{where}: the chat template is not prefix-stable (rendering the first {i + 1} messages is not a "
                "prefix of the whole conversation), so assistant tokens cannot be located; use a built-in template "
                f"(data.chat_template: one of {', '.join(CHAT_TEMPLATES)}) or data.train_on: all")
        spans.append((len(prefix), len(upto)))
    return full, spans


def encode_example(tokenizer, example: Example, train_on: str = "responses", where: str = "",
                   train_reasoning: bool = True) -> Encoded:
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]  # teach the model where a document ends
        return Encoded(list(ids), list(ids), where, len(ids))
    messages = for_template(tokenizer, example, where)
    text, spans = assistant_spans(tokenizer, messages, where, example.tools)
    if not train_reasoning:
        spans = without_reasoning(text, spans, messages)
    # The template decides about bos/eos (e.g. llama-3 writes bos_token itself): never add them again here.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if train_on == "all":
        labels = list(ids)
    else:
        labels = [
            tok if any(end > a and start < b for a, b in spans) else IGNORE_INDEX
            for tok, (start, end) in zip(ids, enc["offset_mapping"])
        ]
    return Encoded(ids, labels, where, len(ids))


def truncate(enc: Encoded, max_len: int) -> Encoded:
    if len(enc.input_ids) <= max_len:
        return enc
    return Encoded(enc.input_ids[:max_len], enc.labels[:max_len], enc.where, enc.original_length)


def pack(encoded: list[Encoded], max_len: int) -> list[Encoded]:
    """Concatenate rows and cut into max_len blocks (labels travel with their tokens).

    Rows packed together attend to each other (no block-diagonal mask without FlashAttention varlen); the usual
    trade-off for throughput on short rows. A row's first token is never trained across a boundary because its
    label is that row's own (the prompt start is masked for chat data).
    """
    blocks: list[Encoded] = []
    ids: list[int] = []
    labels: list[int] = []
    for enc in encoded:
        ids.extend(enc.input_ids)
        labels.extend(enc.labels)
        while len(ids) >= max_len:
            blocks.append(Encoded(ids[:max_len], labels[:max_len], "packed", max_len))
            ids, labels = ids[max_len:], labels[max_len:]
    if ids and any(t != IGNORE_INDEX for t in labels):
        blocks.append(Encoded(ids, labels, "packed", len(ids)))
    return blocks
