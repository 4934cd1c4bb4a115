"""A Hugging Face tokenizer.json built from the BPE vocabulary of a GGUF file, tokenizing as llama.cpp does.

llama.cpp (the 0.3.36 llama-cpp-python pin) tokenizes a GGUF "gpt2" or "gemma4" vocabulary in three steps, each
mirrored by a part of the tokenizer.json returned here:

1. Special-token partition. With `parse_special=false` llama.cpp still cuts USER_DEFINED tokens out of the raw
   text, but leaves CONTROL (and UNKNOWN) token texts to be tokenized as text; with `parse_special=true` it cuts
   those out too. Here all three become `added_tokens` with `normalized: false` (matched in the raw text),
   USER_DEFINED as `special: false`, CONTROL and UNKNOWN as `special: true`. So, for HF
   `tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(d)))`:
     llama.cpp tokenize(text, add_special=False, parse_special=True)  == tok.encode(text, add_special_tokens=False)
     llama.cpp tokenize(text, add_special=False, parse_special=False) == the same with split_special_tokens=True
     (PreTrainedTokenizerFast(..., split_special_tokens=True), or `Tokenizer.encode_special_tokens = True`).
   Both agree on every text that does not contain a CONTROL token's text (e.g. "<|endoftext|>"). llama.cpp takes
   the longest special text first over the whole text, HF the leftmost-longest match: they differ only where two
   special texts overlap.
2. Pre-tokenization: the regexes of `tokenizer.ggml.pre` (gguf_bpe_pre.py) as a Sequence of Split(Isolated),
   then the GPT-2 byte-to-character mapping (ByteLevel without its own regex); SentencePiece-style vocabularies
   (gemma4) instead get ' ' -> '▁' as a normalizer and no byte mapping.
3. BPE: the lowest-ranked merge first, leftmost on ties, in both. Some pre-tokenizers make a word that is a token
   that token without merging (BPE `ignore_merges`). A character that is not a token stays a symbol in llama.cpp:
   nothing merges across it, and it is dropped at the end (byte-level; some vocabularies lack the characters of
   bytes such as 0x0B or 0xC0) or spelled as <0xNN> byte tokens (gemma4). HF's BPE would drop such a byte-level
   character before merging and merge its neighbours, so a last Split isolates those characters; the gemma4
   byte tokens stay between their neighbours in HF too (BPE `byte_fallback`; no merge involves them).

What cannot be carried over: a merge whose parts or result are not tokens (HF refuses to load it; llama.cpp would
merge and then spell the result byte by byte) is left out, and llama.cpp gives some models' special tokens an
lstrip/rstrip attribute by general.name (Phi-3), which this function is not told.
"""

from __future__ import annotations

from qlora_kit.gguf.vocab.gguf_bpe_pre import PRE_SPECS, PreSpec, llama_classes

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # tokenizer.ggml.token_type
SUPPORTED_PRE: tuple[str, ...] = tuple(PRE_SPECS)
SUPPORTED_MODELS = ("gpt2", "gemma4")
SPACE = "▁"


class UnsupportedPre(ValueError):
    """tokenizer.ggml.pre names a pre-tokenizer this module cannot reproduce."""


def pre_spec(pre: str | None, model: str) -> PreSpec:
    if model not in SUPPORTED_MODELS:
        raise ValueError(f"tokenizer.ggml.model {model!r} is not a BPE vocabulary this module reads "
                         f"(supported: {', '.join(SUPPORTED_MODELS)})")
    if model == "gemma4":
        pre = "gemma4"  # llama.cpp ignores tokenizer.ggml.pre for this model
    name = pre or "default"  # llama.cpp: a missing or empty pre is 'default' (with a warning)
    if name not in PRE_SPECS:
        raise UnsupportedPre(f"tokenizer.ggml.pre {pre!r} is not supported; supported: {', '.join(SUPPORTED_PRE)}")
    return PRE_SPECS[name]


def bpe_tokenizer_json(tokens: list[str], types: list[int], merges: list[str], pre: str | None, model: str) -> dict:
    """model is tokenizer.ggml.model ('gpt2' or 'gemma4'); pre is tokenizer.ggml.pre (None/'' means llama.cpp's
    'default'). Returns a complete tokenizer.json dict (see the module docstring for how to call the tokenizer).
    Raises UnsupportedPre (a ValueError) when pre is not one of SUPPORTED_PRE."""
    spec = pre_spec(pre, model)
    texts = token_texts(tokens)
    vocab = {text: i for i, text in enumerate(texts)}  # a repeated text keeps its last id, as in llama.cpp
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens(texts, types, vocab),
        "normalizer": normalizer(spec),
        "pre_tokenizer": pre_tokenizer(spec, vocab),
        "post_processor": None,
        "decoder": decoder(spec),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": not spec.byte_level,
            "ignore_merges": spec.ignore_merges,
            "vocab": vocab,
            "merges": merge_pairs(merges, vocab),
        },
    }


def token_texts(tokens: list[str]) -> list[str]:
    # llama.cpp renames an empty token so that it can never match; an empty key would be odd in HF too.
    return [text if text else f"[EMPTY_{i}]" for i, text in enumerate(tokens)]


def added_tokens(texts: list[str], types: list[int], vocab: dict[str, int]) -> list[dict]:
    """The tokens llama.cpp cuts out of the raw text before pre-tokenizing (its special-token cache). HF takes an
    added token's id from the model vocabulary when the text is in it, so every token is in `vocab` too."""
    out = []
    for i, (text, kind) in enumerate(zip(texts, types)):
        if kind in (CONTROL, UNKNOWN, USER_DEFINED) and vocab[text] == i:
            out.append({"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": kind != USER_DEFINED})
    return out


def merge_pairs(merges: list[str], vocab: dict[str, int]) -> list[list[str]]:
    """GGUF merges ("left right") as HF pairs, in rank order. llama.cpp splits at the first space after the first
    character and keeps a pair's first rank; HF needs both parts and the result to be tokens. One pass: linear."""
    pairs, seen = [], set()
    for merge in merges:
        cut = merge.find(" ", 1)
        if cut < 0 or merge in seen:
            continue
        seen.add(merge)
        left, right = merge[:cut], merge[cut + 1:]
        if left in vocab and right in vocab and left + right in vocab:
            pairs.append([left, right])
    return pairs


def normalizer(spec: PreSpec) -> dict | None:
    if spec.escape_spaces:  # llama.cpp replaces ' ' only, not other whitespace
        return {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    return None


def pre_tokenizer(spec: PreSpec, vocab: dict[str, int]) -> dict:
    parts = [_split(llama_classes(regex)) for regex in spec.regexes]
    if spec.byte_level:
        parts.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
        missing = [char for char in byte_chars() if char not in vocab]
        if missing:  # each its own word: dropped, as llama.cpp drops it, with no merge across it
            parts.append(_split("[" + "".join(f"\\x{{{ord(char):x}}}" for char in missing) + "]"))
    return {"type": "Sequence", "pretokenizers": parts}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def byte_chars() -> list[str]:
    """GPT-2's byte -> character table (llama.cpp's unicode_byte_to_utf8): printable Latin-1 bytes stand for
    themselves, the other 68 bytes for U+0100 onwards in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(0x100 + n) for n, b in enumerate(others)}
    return [table[b] for b in range(256)]


def decoder(spec: PreSpec) -> dict:
    if spec.byte_level:
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]}


def identify(pre_tokenizer: dict | None) -> list[str]:
    """The llama.cpp pre-tokenizer names whose regexes this module would write as `pre_tokenizer` (a tokenizer
    built from a GGUF, exported back), in PRE_SPECS order. Several names share regexes and differ in flags, so all
    are returned: export's probe decides between them."""
    if not pre_tokenizer or pre_tokenizer.get("type") != "Sequence":
        return []
    parts = pre_tokenizer.get("pretokenizers") or []
    if not any(p.get("type") == "ByteLevel" for p in parts):
        return []
    patterns = [(p.get("pattern") or {}).get("Regex") for p in parts if p.get("type") == "Split"]
    found = []
    for name, spec in PRE_SPECS.items():
        if not spec.byte_level:
            continue
        written = [llama_classes(regex) for regex in spec.regexes]
        # the last Split may isolate byte characters missing from the vocabulary (pre_tokenizer above)
        if patterns[:len(written)] == written and len(patterns) - len(written) in (0, 1):
            found.append(name)
    return found
