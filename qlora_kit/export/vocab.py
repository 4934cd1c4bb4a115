"""The tokenizer, written into GGUF metadata the way llama.cpp reads it.

Byte-level BPE tokenizers ("gpt2" in GGUF) from tokenizer.json, and SentencePiece ("llama") from tokenizer.model.
For byte-level BPE the pre-tokenizer matters as much as the vocabulary: a
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


def effective_pre_tokenizer(model_dir: Path, data: dict | None = None) -> dict | None:
    """The pre-tokenizer transformers really applies. In transformers 5 a model-specific tokenizer class (e.g.
    Qwen2Tokenizer, chosen from config.json's model_type) installs its own pre-tokenizer instead of the one in
    tokenizer.json, so the file alone can name the wrong one."""
    from qlora_kit.export.light_tokenizer import load_without_vocabulary

    try:  # without the vocabulary: the pre-tokenizer does not depend on it, and the whole tokenizer is ~260 MiB
        backend = load_without_vocabulary(model_dir, data).backend_tokenizer
    except Exception:  # no fast tokenizer: fall back to the file
        return None
    return json.loads(backend.to_str()).get("pre_tokenizer")


def add_vocab(writer, model_dir: Path, vocab_size: int, space_prefix: bool = True) -> dict:
    """Write tokens, types, merges/scores, special ids and the chat template; return facts for the report."""
    if (model_dir / "tokenizer.model").is_file():
        return add_sentencepiece_vocab(writer, model_dir, vocab_size, space_prefix)
    import gguf

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise UsageError(f"{model_dir}: missing tokenizer.json (export needs the tokenizer saved with the model)")
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UsageError(f"{model_dir}: a SentencePiece-style tokenizer ({model.get('type')}"
                         f"{' with byte fallback' if model.get('byte_fallback') else ''}) needs its tokenizer.model "
                         "(the scores llama.cpp merges by are not in tokenizer.json); copy the base model's "
                         "tokenizer.model next to the weights")
    pre = identify_pre_tokenizer(effective_pre_tokenizer(model_dir, data) or data.get("pre_tokenizer"), str(tokenizer_file))
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
    dropped = sum(i >= size for i in tokens)
    del data, model, tokens, types  # the parsed tokenizer.json (~80 MiB for 150k tokens) before SpecialVocab parses it
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(names)
    writer.add_token_types(kinds)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size)
    if not special.merges:
        raise UsageError(f"{tokenizer_file}: a BPE tokenizer without merges cannot be exported")
    special.add_to_gguf(writer, quiet=True)
    return {"tokenizer": "gpt2", "pre_tokenizer": pre, "tokens": size, "dropped_tokens": dropped,
            "merges": len(special.merges),
            "chat_template": bool(special.chat_template)}


def add_sentencepiece_vocab(writer, model_dir: Path, vocab_size: int, space_prefix: bool) -> dict:
    """SentencePiece ('llama' in GGUF: Llama 2, Mistral, Gemma): pieces, scores and types from tokenizer.model
    itself, since llama.cpp merges by piece score; tokens added on top (tokenizer.json) keep their ids."""
    import gguf

    spm = gguf.SentencePieceVocab(model_dir)
    names, scores, kinds = [], [], []
    for text, score, kind in spm.all_tokens():
        names.append(text.decode("utf-8"))
        scores.append(score)
        kinds.append(int(kind))
    tokenizer_file = model_dir / "tokenizer.json"
    added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens", []) \
        if tokenizer_file.is_file() else []
    for token in added:
        while len(names) <= token["id"]:
            names.append(f"[PAD{len(names)}]"), scores.append(-1000.0), kinds.append(UNUSED)
        if token["id"] >= spm.vocab_size_base or token["content"] != names[token["id"]]:
            names[token["id"]], scores[token["id"]] = token["content"], -1000.0
        kinds[token["id"]] = CONTROL if token.get("special") else USER_DEFINED
    names, scores, kinds = names[:vocab_size], scores[:vocab_size], kinds[:vocab_size]
    for i in range(len(names), vocab_size):  # one token per embedding row, as llama.cpp requires
        names.append(f"[PAD{i}]"), scores.append(-1000.0), kinds.append(UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(names)
    writer.add_token_scores(scores)
    writer.add_token_types(kinds)
    if not space_prefix:
        writer.add_add_space_prefix(False)
    special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    return {"tokenizer": "llama (sentencepiece)", "pre_tokenizer": "default", "tokens": vocab_size,
            "chat_template": bool(special.chat_template)}
