"""SentencePiece ("llama" in GGUF) vocabularies: from tokenizer.model when present, else from tokenizer.json alone.

transformers 5 saves Llama 2, Mistral, Gemma and Phi-3 tokenizers as tokenizer.json only (a BPE model with byte
fallback and a Metaspace/Replace pre-tokenizer, or a Unigram model). llama.cpp's SentencePiece tokenizer merges the
adjacent pair whose concatenation has the highest score, leftmost first; HF's BPE applies the lowest-ranked merge,
leftmost first. So a token's score is minus the rank of the first merge that makes it: the merge orders then agree.
Unigram models keep their own scores. Whether llama.cpp really reproduces the tokenizer is decided by probing
(tokenizer_probe.py), not assumed here.
"""

from __future__ import annotations

import re
from pathlib import Path

from qlora_kit.gguf.vocab.vocab_plan import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, VocabPlan

BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")


def has_byte_tokens(tokens) -> bool:
    """A SentencePiece vocabulary with byte fallback has <0xNN> tokens. llama.cpp's SentencePiece tokenizer falls
    back to them for characters not in the vocabulary and throws (uncaught: the process aborts) on a byte whose
    token is missing; an incomplete set is still a candidate here, and the child-process probe refuses it
    (tokenizer_probe.choose) with the text that kills llama.cpp."""
    return any(BYTE_TOKEN.match(t) for t in tokens)


def space_prefix_of(data: dict) -> bool:
    """Does the HF tokenizer prepend '▁' to the text? (Llama 2/Mistral/Phi-3: yes; Gemma: no)."""
    def walk(spec):
        if not spec:
            return
        yield spec
        for key in ("normalizers", "pretokenizers"):
            for part in spec.get(key) or []:
                yield from walk(part)

    for spec in walk(data.get("normalizer")):
        if spec.get("type") == "Prepend" and spec.get("prepend") == "▁":
            return True
    for spec in walk(data.get("pre_tokenizer")):
        if spec.get("type") == "Metaspace":
            scheme = spec.get("prepend_scheme")
            return scheme in ("always", "first") if scheme else bool(spec.get("add_prefix_space", True))
    return False


def _added(data: dict, tokens: list[str], types: list[int], scores: list[float]) -> None:
    """Tokens added on top of the model (specials -> CONTROL, others -> USER_DEFINED), at their own ids."""
    for token in data.get("added_tokens", []):
        i = token["id"]
        while len(tokens) <= i:
            tokens.append(f"[PAD{len(tokens)}]"), types.append(UNUSED), scores.append(-1000.0)
        if tokens[i] != token["content"]:
            tokens[i], scores[i] = token["content"], -1000.0
        if types[i] != UNKNOWN:
            types[i] = CONTROL if token.get("special") else USER_DEFINED


def from_tokenizer_json(data: dict, where: str) -> VocabPlan | None:
    """A 'llama' vocabulary from tokenizer.json (BPE with SentencePiece-style vocabulary, or Unigram); None when
    the vocabulary cannot be a SentencePiece one (no <0xNN> byte tokens)."""
    model = data.get("model") or {}
    kind = model.get("type")
    if kind == "Unigram":
        pieces = [(p[0], float(p[1])) for p in model.get("vocab", [])]
        tokens, scores = [p for p, _ in pieces], [s for _, s in pieces]
        unk = model.get("unk_id")
        unk_text = tokens[unk] if unk is not None and unk < len(tokens) else None
        source = "tokenizer.json (Unigram, its own scores)"
    elif kind == "BPE":
        by_id = {i: t for t, i in model.get("vocab", {}).items()}
        size = max(by_id, default=-1) + 1
        tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
        scores = _scores_from_merges(model.get("merges", []), tokens)
        unk_text = model.get("unk_token")
        source = "tokenizer.json (BPE, scores from merge ranks)"
    else:
        return None
    if not has_byte_tokens(tokens):
        return None
    types = [BYTE if BYTE_TOKEN.match(t) else UNKNOWN if t == unk_text else NORMAL for t in tokens]
    _added(data, tokens, types, scores)
    return VocabPlan("llama", "default", tokens, types, source, scores=scores, add_space_prefix=space_prefix_of(data))


def _scores_from_merges(merges: list, tokens: list[str]) -> list[float]:
    first_rank: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        first_rank.setdefault(left + right, rank)
    n = len(merges)
    # Tokens no merge makes (single characters, bytes, specials) never win a merge in HF; llama.cpp could still
    # form a multi-character one from a pair, so it ranks below every real merge (the probes catch the rest).
    return [-float(first_rank[t]) if t in first_rank else -float(n + i) for i, t in enumerate(tokens)]


def from_tokenizer_model(model_dir: Path, data: dict | None) -> VocabPlan:
    """Pieces, scores and types from tokenizer.model itself (the scores llama.cpp merges by); tokens added on top
    (tokenizer.json) keep their ids."""
    import gguf

    spm = gguf.SentencePieceVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in spm.all_tokens():
        tokens.append(text.decode("utf-8"))
        scores.append(score)
        types.append(int(kind))
    del tokens[spm.vocab_size_base:], scores[spm.vocab_size_base:], types[spm.vocab_size_base:]
    if data:
        _added(data, tokens, types, scores)
    prefix = _dummy_prefix(model_dir / "tokenizer.model")
    return VocabPlan("llama", "default", tokens, types, "tokenizer.model (SentencePiece)", scores=scores,
                     add_space_prefix=prefix)


def _dummy_prefix(path: Path) -> bool:
    """SentencePiece's own add_dummy_prefix flag (normalizer_spec field 3 of the model proto)."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(path.read_bytes())
        return bool(proto.normalizer_spec.add_dummy_prefix)
    except Exception:  # no protobuf: the probes try the other setting too
        return True
