"""The tokenizer half of a GGUF's metadata (GgufVocab, read fast by gguf_meta), and what every builder of a Hugging
Face tokenizer from it shares: token types, one HF entry per id, added tokens and their strip flags as llama.cpp
sets them. The builders: from_gguf.py (SentencePiece, dispatch), gguf_bpe.py (BPE), wpm_ugm.py (WordPiece, Unigram).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qlora_kit.errors import UsageError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "▁"


@dataclass
class GgufVocab:
    """The tokenizer half of a GGUF's metadata."""

    model: str
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, sep, mask -> id
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    charsmap: bytes | None = None  # t5: SentencePiece's precompiled normalization map
    name: str = ""  # general.name and general.architecture: llama.cpp sets some tokens' strip flags by them
    architecture: str = ""


SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id",
                "sep": "seperator_token_id", "mask": "mask_token_id",  # sic: llama.cpp's key is "seperator"
                "cls": "cls_token_id"}  # BERT's start token: llama.cpp's BOS when the file names no bos


def read_vocab(path: Path) -> GgufVocab:
    from qlora_kit.gguf.vocab.gguf_meta import read_keys

    keys = {f"tokenizer.ggml.{k}" for k in ("model", "pre", "tokens", "token_type", "scores", "merges",
                                             "add_bos_token", "add_eos_token", "add_space_prefix",
                                             "precompiled_charsmap", *SPECIAL_KEYS.values())}
    meta = read_keys(path, keys | {"tokenizer.chat_template", "general.name", "general.architecture"})

    def get(key: str):
        return meta.get(f"tokenizer.{key}")

    if get("ggml.model") is None:
        raise UsageError(f"{path}: no tokenizer.ggml.model in the GGUF metadata: the file carries no vocabulary")
    special = {name: int(get(f"ggml.{key}")) for name, key in SPECIAL_KEYS.items() if get(f"ggml.{key}") is not None}
    charsmap = get("ggml.precompiled_charsmap")
    return GgufVocab(model=str(get("ggml.model")), pre=get("ggml.pre"), tokens=list(get("ggml.tokens") or []),
                     types=[int(t) for t in get("ggml.token_type") or []], scores=get("ggml.scores"),
                     merges=get("ggml.merges"), special=special, add_bos=get("ggml.add_bos_token"),
                     add_eos=get("ggml.add_eos_token"), add_space_prefix=get("ggml.add_space_prefix"),
                     chat_template=get("chat_template"), name=str(meta.get("general.name") or ""),
                     architecture=str(meta.get("general.architecture") or ""),
                     charsmap=bytes(int(x) & 0xFF for x in charsmap) if charsmap is not None else None)


def unique_tokens(tokens: list[str]) -> list[str]:
    """llama.cpp maps a text to the last id that has it; earlier duplicates are unreachable by text in both
    tokenizers, and get a placeholder so the HF vocabulary keeps one entry per id."""
    last = {t: i for i, t in enumerate(tokens)}
    return [t if last[t] == i else f"<qlora_kit_duplicate_{i}>" for i, t in enumerate(tokens)]


def added_tokens(tokens: list[str], vocab: GgufVocab) -> list[dict]:
    """CONTROL and UNKNOWN tokens are special (llama.cpp matches them in text only when asked to parse specials);
    USER_DEFINED ones are matched in any text, as llama.cpp and HF both do for non-special added tokens."""
    lstrip, rstrip = strip_flags(vocab)
    out = []
    for i, (text, kind) in enumerate(zip(tokens, vocab.types)):
        if kind in (CONTROL, UNKNOWN, USER_DEFINED) and text:
            out.append({"id": i, "content": text, "single_word": False, "lstrip": text in lstrip,
                        "rstrip": rstrip(text), "normalized": False, "special": kind != USER_DEFINED})
    return out


def strip_flags(vocab: GgufVocab):
    """(tokens that swallow the whitespace before them, predicate: swallows the whitespace after). llama.cpp sets
    these by the file's general.name / architecture / pre-tokenizer name, not from the vocabulary itself."""
    name, arch, pre = vocab.name.lower(), vocab.architecture, vocab.pre or ""
    if arch in ("nomic-bert-moe", "jina-bert-v3") or any(j in pre for j in ("jina-v2-de", "jina-v2-es", "jina-v2-code")):
        return {"<mask>"}, lambda text: False
    if "phi-3" in name or "phi3" in name:  # every special token but these four strips the whitespace after it
        return set(), lambda text: text not in ("<unk>", "<s>", "<|endoftext|>")
    if "modern-bert" in name:
        return {"[MASK]"}, lambda text: False
    return set(), lambda text: False
