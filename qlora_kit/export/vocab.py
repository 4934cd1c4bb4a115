"""The tokenizer, written into GGUF metadata the way llama.cpp reads it.

Byte-level BPE tokenizers ("gpt2" in GGUF) only, for now. The pre-tokenizer matters as much as the vocabulary: a
wrong `tokenizer.ggml.pre` makes llama.cpp split text (numbers, whitespace) differently from the model's own
tokenizer without any error. We identify it from the tokenizer's own pre-tokenizer definition (its regex) and
refuse any we do not know, instead of guessing; verification then compares token ids on tricky texts.
"""

from __future__ import annotations

import json
from pathlib import Path

from qlora_kit.errors import UsageError

# Pre-tokenizer regexes (as they appear in tokenizer.json) -> llama.cpp's pre-tokenizer names.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
KNOWN_SPLIT_REGEXES = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}
SUPPORTED = "gpt-2 (byte-level BPE with GPT-2's pattern), llama-bpe (Llama 3), qwen2 (Qwen 2/2.5/3)"

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def identify_pre_tokenizer(spec: dict | None, where: str) -> str:
    """`pre_tokenizer` section of tokenizer.json -> llama.cpp pre-tokenizer name, or UsageError."""
    if spec and spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    if spec and spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers", [])
        splits = [p for p in parts if p.get("type") == "Split"]
        byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
        if len(splits) == 1 and len(byte_level) == 1 and not byte_level[0].get("use_regex", True):
            regex = (splits[0].get("pattern") or {}).get("Regex")
            if regex in KNOWN_SPLIT_REGEXES:
                return KNOWN_SPLIT_REGEXES[regex]
    kind = (spec or {}).get("type", "none")
    raise UsageError(f"{where}: unknown pre-tokenizer ({kind}); llama.cpp would silently split text differently "
                     f"from this tokenizer, so export refuses it. Supported: {SUPPORTED}")


def add_vocab(writer, model_dir: Path, vocab_size: int) -> dict:
    """Write tokens, types, merges, special ids and the chat template; return facts for the report."""
    import gguf

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise UsageError(f"{model_dir}: missing tokenizer.json (export needs the tokenizer saved with the model)")
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UsageError(f"{model_dir}: only byte-level BPE tokenizers can be exported so far (this one is "
                         f"{model.get('type')}{' with byte fallback, i.e. SentencePiece-style' if model.get('byte_fallback') else ''})")
    pre = identify_pre_tokenizer(data.get("pre_tokenizer"), str(tokenizer_file))
    tokens: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types: dict[int, int] = {i: NORMAL for i in tokens}
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    # llama.cpp requires one token per embedding row: pad with unused entries, and drop ids the model cannot
    # embed (some tokenizers list more tokens than the embedding has rows).
    size = vocab_size
    names = [tokens.get(i, f"[PAD{i}]") for i in range(size)]
    kinds = [types.get(i, UNUSED) for i in range(size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(names)
    writer.add_token_types(kinds)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size)
    if not special.merges:
        raise UsageError(f"{tokenizer_file}: a BPE tokenizer without merges cannot be exported")
    special.add_to_gguf(writer, quiet=True)
    return {"tokenizer": "gpt2", "pre_tokenizer": pre, "tokens": size, "dropped_tokens": sum(i >= size for i in tokens),
            "merges": len(special.merges),
            "chat_template": bool(special.chat_template)}
