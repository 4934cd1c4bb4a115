"""A Hugging Face tokenizer built from a GGUF's own vocabulary, for a GGUF base model.

transformers' GGUF conversion is not the ground truth: Gemma 3's vocabulary, converted, saved and loaded again,
splits text into single characters; Phi-3's differs from llama.cpp on 45 of llama.cpp's 46 test strings; Llama 3's
on 11; and it has no converter at all for many others (Command-R, MPT, Refact, BERT, Gemma 4, ...). The GGUF's metadata is what llama.cpp, Ollama and every server tokenize with:
tokens, scores, token types, merges, the pre-tokenizer's name, special ids, add_bos/add_eos, add_space_prefix. So
the tokenizer.json is built from exactly those, one builder per llama.cpp tokenizer model:

- "llama" (SentencePiece, llama.cpp's SPM): llama.cpp merges the adjacent pair whose concatenation is the
  highest-scoring token, leftmost first, then falls back to <0xNN> byte tokens. HF's BPE merges the lowest-ranked
  pair, leftmost first: so every way of splitting a token into two tokens is a merge, ranked by the token's score.
  Spaces become '▁' (and one is prepended to each piece of text between special tokens when add_space_prefix).
- "gpt2", "gemma4" (byte-level BPE): gguf_bpe.py, the pre-tokenizer reproduced from llama.cpp's name for it.
- "bert" (WPM), "t5" (UGM): wpm_ugm.py.
- "rwkv", "plamo2", others: refused in one line (no Hugging Face tokenizer model works like them).

Whether the result is right is not assumed: gguf_tokenizer.py checks it against llama.cpp on the probe set.
"""

from __future__ import annotations

from qlora_kit.errors import UsageError
from qlora_kit.gguf.vocab.gguf_vocab import SPACE, GgufVocab, added_tokens, read_vocab, unique_tokens

__all__ = ["read_vocab", "tokenizer_json", "GgufVocab"]

BUILT = ("llama (SentencePiece)", "gpt2 (byte-level BPE)", "gemma4 (BPE)", "bert (WordPiece)", "t5 (Unigram)")


def tokenizer_json(vocab: GgufVocab, where: str) -> dict:
    """The tokenizer.json dict for this vocabulary, or a one-line UsageError naming what is not supported."""
    if not vocab.tokens:
        raise UsageError(f"{where}: the GGUF vocabulary is empty")
    if vocab.model == "llama":
        return spm_json(vocab)
    if vocab.model in ("gpt2", "gemma4"):
        from qlora_kit.gguf.vocab.gguf_bpe import UnsupportedPre, bpe_tokenizer_json

        if not vocab.merges:
            raise UsageError(f"{where}: a {vocab.model} GGUF vocabulary without tokenizer.ggml.merges")
        try:
            data = bpe_tokenizer_json(vocab.tokens, vocab.types, vocab.merges, vocab.pre, vocab.model)
        except UnsupportedPre as exc:
            raise UsageError(f"{where}: {exc}") from None
        return with_post_processor(data, vocab)
    if vocab.model in ("bert", "t5"):
        from qlora_kit.gguf.vocab.wpm_ugm import ugm_json, wpm_json

        return with_post_processor(wpm_json(vocab) if vocab.model == "bert" else ugm_json(vocab), vocab)
    raise UsageError(f"{where}: GGUF tokenizer model {vocab.model!r} has no Hugging Face equivalent to train with; "
                     f"supported: {', '.join(BUILT)}")


def spm_merges(tokens: list[str], scores: list[float]) -> list[list[str]]:
    """Every split of a token into two tokens, ranked by the token's score (highest first), then by id."""
    index = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, token in enumerate(tokens):
        if len(token) < 2 or index.get(token) != i:
            continue
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in index and right in index:
                ranked.append((-scores[i], i, index[left], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def spm_json(vocab: GgufVocab) -> dict:
    tokens = unique_tokens(vocab.tokens)
    scores = list(vocab.scores) if vocab.scores is not None else [0.0] * len(tokens)
    prefix = True if vocab.add_space_prefix is None else bool(vocab.add_space_prefix)  # llama.cpp's default
    unk = vocab.special.get("unk")
    normalizers = ([{"type": "Prepend", "prepend": SPACE}] if prefix else []) + \
        [{"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}] + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else [])
    data = {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": added_tokens(tokens, vocab),
            "normalizer": {"type": "Sequence", "normalizers": normalizers}, "pre_tokenizer": None,
            "post_processor": None, "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": None,
                      "unk_token": tokens[unk] if unk is not None and 0 <= unk < len(tokens) else None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                      "byte_fallback": True, "ignore_merges": False,
                      "vocab": {t: i for i, t in enumerate(tokens)}, "merges": spm_merges(tokens, scores)}}
    return with_post_processor(data, vocab)


def with_post_processor(data: dict, vocab: GgufVocab) -> dict:
    """BOS/EOS added as the GGUF says llama.cpp adds them (tokenizer.ggml.add_bos_token / add_eos_token; absent:
    llama.cpp's default for the tokenizer model)."""
    add_bos = vocab.add_bos if vocab.add_bos is not None else vocab.model in ("llama", "bert")
    # BERT's llama.cpp vocabulary adds [CLS] ... [SEP]: its "end" token is the separator.
    add_eos = True if vocab.model == "bert" else bool(vocab.add_eos)
    bos = vocab.special.get("bos", vocab.special.get("cls", 101 if vocab.model == "bert" else None))
    ends = {"bos": bos, "eos": vocab.special.get("sep", 102) if vocab.model == "bert" else vocab.special.get("eos")}
    parts = [(name, vocab.tokens[ends[name]], ends[name]) for name, wanted in (("bos", add_bos), ("eos", add_eos))
             if wanted and ends[name] is not None and 0 <= ends[name] < len(vocab.tokens)]
    if not parts:
        data["post_processor"] = None
        return data
    single = [{"SpecialToken": {"id": t, "type_id": 0}} for n, t, _ in parts if n == "bos"] + \
        [{"Sequence": {"id": "A", "type_id": 0}}] + \
        [{"SpecialToken": {"id": t, "type_id": 0}} for n, t, _ in parts if n == "eos"]
    pair = single + [{"Sequence": {"id": "B", "type_id": 1}}]
    data["post_processor"] = {"type": "TemplateProcessing", "single": single, "pair": pair,
                              "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for _, t, i in parts}}
    return data
