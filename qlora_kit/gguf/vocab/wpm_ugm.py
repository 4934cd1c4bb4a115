"""tokenizer.json builders for the GGUF tokenizer models "bert" (llama.cpp's WPM) and "t5" (llama.cpp's UGM).

The target is llama.cpp's tokenization of the same file, not the original Hugging Face tokenizer, so both are
rebuilt from what llama.cpp does with the GGUF metadata (src/llama-vocab.cpp):

WPM (llm_tokenizer_wpm_session): each code point is mapped to the *first* code point of its NFD decomposition
(so a Hangul syllable keeps only its leading consonant), whitespace splits words, NUL/U+FFFD/\\p{C} are dropped,
\\p{M} too when stripping accents, the rest is lowercased, and \\p{P}, ASCII \\p{S} and CJK ideographs are words of
their own. Words are then split greedily, longest piece first, into pieces; a word with any unmatchable position
becomes one [UNK]. HF's BertNormalizer/BertPreTokenizer differ from that on ~12k code points (Hangul, spacing marks
\\p{Mc}, private use, U+000B/U+000C/U+0085, newer Unicode), so the same steps are spelled out as explicit
normalizers and a Split over character classes computed from Python's unicodedata.
llama.cpp's converter stores a word-initial BERT piece as '▁piece' and a continuation '##piece' as 'piece';
HF's WordPiece wants 'piece' and '##piece', so the marking is reversed.

UGM (llm_tokenizer_ugm_session): SentencePiece's precompiled charsmap, longest match first (HF's Precompiled
normalizer does not match that: see charsmap_normalizers), then whitespace handling (remove_extra_whitespaces /
add_space_prefix, spaces escaped to '▁'), then a Viterbi over the whole normalized fragment with the token scores
and an unknown piece scored min(NORMAL scores) - 10. HF's Unigram is the same Viterbi, with no pre-tokenizer so
that the lattice also spans the whole fragment.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from qlora_kit.gguf.vocab.gguf_vocab import CONTROL, NORMAL, SPACE, UNKNOWN, USER_DEFINED, GgufVocab, added_tokens, \
    unique_tokens

# llama.cpp's WPM CJK test (is_chinese_char), including its deliberate 0x2B920 (HF's value, not Unicode's 0x2B820).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# The Unicode White_Space property: llama.cpp's unicode_set_whitespace, and what Rust's char::is_whitespace (HF's
# WhitespaceSplit) tests.
WHITESPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                        0x202F, 0x205F, 0x3000])
PLACEHOLDERS = [chr(cp) for cp in range(0xFDD0, 0xFDF0)]  # noncharacters: never in text
HANGUL_BASE, HANGUL_PER_LEAD, HANGUL_LEADS, HANGUL_LEAD0 = 0xAC00, 21 * 28, 19, 0x1100
NO_WORD_LIMIT = 1 << 30  # llama.cpp splits words of any length; HF's WordPiece default makes >100 chars one [UNK]


def char_class(codepoints) -> str:
    """An Oniguruma character class matching exactly these code points (sorted into ranges)."""
    parts, points = [], sorted(codepoints)
    start = prev = None
    for cp in points + [None]:
        if cp is not None and prev is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append(f"\\x{{{start:X}}}" if start == prev else f"\\x{{{start:X}}}-\\x{{{prev:X}}}")
        start = prev = cp
    return "[" + "".join(parts) + "]"


@lru_cache(maxsize=1)
def unicode_classes() -> dict[str, str]:
    """The code point classes llama.cpp's WPM preprocessing tests, from Python's Unicode database (llama.cpp's
    tables may be a newer Unicode: code points assigned since then are the only ones that can differ)."""
    control, marks, isolated = [0, 0xFFFD], [], []
    for cp in range(0x110000):
        category = unicodedata.category(chr(cp))
        if cp in WHITESPACE or category == "Cs":  # whitespace splits before anything else; surrogates: no text
            continue
        if category in ("Cc", "Cf", "Co"):  # llama.cpp's \p{C} flag; unassigned (Cn) code points are kept
            control.append(cp)
        elif category[0] == "M":
            marks.append(cp)
        elif category[0] == "P" or (cp < 0x7F and category[0] == "S") or \
                any(lo <= cp <= hi for lo, hi in CJK_RANGES):
            isolated.append(cp)
    return {"control": char_class(control), "marks": char_class(marks), "isolated": char_class(isolated),
            "control_marks": char_class(control + marks)}


def regex_replace(pattern: str, content: str) -> dict:
    return {"type": "Replace", "pattern": {"Regex": pattern}, "content": content}


def wpm_normalizers(lowercase: bool, strip_accents: bool) -> list[dict]:
    classes = unicode_classes()
    steps = []
    if strip_accents:
        # llama.cpp's "NFD" keeps only the first code point of each decomposition; for everything but Hangul the
        # rest are marks, deleted below anyway, but a syllable's vowel and final consonant are letters: drop them
        # first, one leading consonant (a block of 588 syllables) at a time.
        for lead in range(HANGUL_LEADS):
            first = HANGUL_BASE + lead * HANGUL_PER_LEAD
            steps.append(regex_replace(f"[\\x{{{first:X}}}-\\x{{{first + HANGUL_PER_LEAD - 1:X}}}]",
                                       chr(HANGUL_LEAD0 + lead)))
        steps.append({"type": "NFD"})
    steps.append(regex_replace(classes["control_marks" if strip_accents else "control"], ""))
    if lowercase:
        steps.append({"type": "Lowercase"})
    return steps


def wpm_pieces(vocab: GgufVocab) -> list[str]:
    """GGUF pieces back to WordPiece's marking: '▁word' -> 'word', 'cont' -> '##cont'. Control, unknown and
    user-defined tokens keep their text: they are matched literally as added tokens, in both tokenizers."""
    out = []
    for text, kind in zip(vocab.tokens, vocab.types):
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            out.append(text)
        elif text.startswith(SPACE) and len(text) > len(SPACE):
            out.append(text[len(SPACE):])
        else:
            out.append("##" + text)
    return unique_tokens(out)


def wpm_json(vocab: GgufVocab) -> dict:
    """tokenizer.json for a "bert" GGUF vocabulary, tokenizing as llama.cpp's WPM tokenizer does."""
    # tokenizer.ggml.normalizer.lowercase / .strip_accents (llama.cpp's defaults: true, and strip follows lowercase)
    lowercase = getattr(vocab, "lowercase", None)
    lowercase = True if lowercase is None else bool(lowercase)
    strip_accents = getattr(vocab, "strip_accents", None)
    strip_accents = lowercase if strip_accents is None else bool(strip_accents)
    tokens = wpm_pieces(vocab)
    unk = vocab.special.get("unk")
    unk_token = tokens[unk] if unk is not None and 0 <= unk < len(tokens) else "[UNK]"
    isolated = {"type": "Split", "pattern": {"Regex": unicode_classes()["isolated"]}, "behavior": "Isolated",
                "invert": False}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": added_tokens(tokens, vocab),
            "normalizer": {"type": "Sequence", "normalizers": wpm_normalizers(lowercase, strip_accents)},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, isolated]},
            "post_processor": None,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
            "model": {"type": "WordPiece", "unk_token": unk_token, "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": NO_WORD_LIMIT,
                      "vocab": {t: i for i, t in enumerate(tokens)}}}


def charsmap_single(charsmap: bytes) -> dict[int, str]:
    """What SentencePiece's precompiled charsmap replaces each single code point with (code points it leaves alone
    are absent). The map is a trie over UTF-8 bytes, an XOR-compressed double array (llama.cpp's xcda_array_view):
    walked here for every code point at once."""
    import numpy as np

    size = int.from_bytes(charsmap[:4], "little")
    nodes = np.frombuffer(charsmap[4:4 + size], dtype="<u4").astype(np.int64)
    strings = charsmap[4 + size:]
    cps = np.array([c for c in range(0x110000) if not 0xD800 <= c < 0xE000], dtype=np.int64)
    encoded = [chr(c).encode() for c in cps.tolist()]
    length = np.array([len(b) for b in encoded])
    utf8 = np.zeros((len(cps), 4), dtype=np.int64)
    for k in range(4):
        utf8[length > k, k] = [b[k] for b in encoded if len(b) > k]

    def base(i):
        return (nodes[i] >> 10) << ((nodes[i] & (1 << 9)) >> 6)

    node = np.full(len(cps), base(0))
    alive = np.ones(len(cps), dtype=bool)
    found = np.full(len(cps), -1)
    for k in range(4):
        alive &= length > k
        child = np.where(alive, node ^ utf8[:, k], 0)
        alive &= child < len(nodes)
        child = np.where(alive, child, 0)
        alive &= (nodes[child] & ((1 << 31) | 0xFF)) == utf8[:, k]  # LCHECK: is this node a child of the last?
        leaf = alive & ((nodes[child] >> 8) & 1).astype(bool)
        node = np.where(alive, child ^ base(child), 0)
        whole = leaf & (length == k + 1)  # a key that is exactly this code point
        found[whole] = nodes[node[whole]] & ((1 << 31) - 1)
    out = {}
    for cp, offset in zip(cps[found >= 0].tolist(), found[found >= 0].tolist()):
        out[cp] = strings[offset:strings.index(b"\0", offset)].decode("utf-8", "replace")
    return out


def charsmap_normalizers(charsmap: bytes) -> list[dict]:
    """The charsmap as NFKC plus its exceptions. HF's Precompiled normalizer reads the same map but per grapheme
    cluster: in a cluster under 6 bytes it replaces the shortest matching prefix and drops the rest (A U+0302 U+0300
    -> 'Â'), in a longer one it goes character by character ('ｶﾞ' -> 'カ' U+3099), where llama.cpp takes the longest
    match at each position. The map was compiled from NFKC (its multi-code-point keys are NFKC's compositions), so
    NFKC reproduces it, once the code points it maps elsewhere (controls deleted, odd spaces and '▁' to ' ') are
    replaced first and the few it keeps that NFKC would change are hidden from NFKC behind noncharacters."""
    mapped = charsmap_single(charsmap)
    by_value: dict[str, list[int]] = {}
    kept = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        nfkc = unicodedata.normalize("NFKC", chr(cp))
        value = mapped.get(cp)
        # (a replacement NFKC would change again cannot go before NFKC: left to NFKC, the better guess)
        if value is not None and value != nfkc and unicodedata.normalize("NFKC", value) == value:
            by_value.setdefault(value, []).append(cp)
        elif value is None and nfkc != chr(cp):
            kept.append(cp)
    kept = kept[:len(PLACEHOLDERS)]  # 2 in XLM-R's map (U+FF5E, U+1F23B): 32 is plenty
    steps = [regex_replace(char_class(cps), value) for value, cps in sorted(by_value.items())]
    hide = [({"String": chr(cp)}, ph) for cp, ph in zip(kept, PLACEHOLDERS)]
    show = [({"String": ph}, chr(cp)) for cp, ph in zip(kept, PLACEHOLDERS)]
    return steps + [{"type": "Replace", "pattern": pattern, "content": content} for pattern, content in hide] + \
        [{"type": "NFKC"}] + [{"type": "Replace", "pattern": pattern, "content": content} for pattern, content in show]


def ugm_whitespace(remove_extra: bool, add_prefix: bool) -> list[dict]:
    """llama.cpp's UGM whitespace rules, applied to the charsmap's output. Only ' ' counts as a space there."""
    if remove_extra:
        # Leading and trailing spaces go, each inner run becomes one '▁', and every run of non-spaces -- the first
        # one included, whatever add_space_prefix says -- gets a '▁' in front: so an empty result stays empty
        # (Prepend leaves an empty string alone). \A, \z: in Oniguruma ^ and $ match at every line break.
        return [regex_replace("\\A +| +\\z", ""), regex_replace(" +", SPACE), {"type": "Prepend", "prepend": SPACE}]
    steps = []
    if add_prefix:  # one '▁' right before the first non-space: the same as in front, when there is a non-space
        steps.append(regex_replace("\\A(?=[ ]*[^ ])", SPACE))
    return steps + [{"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]


def ugm_pieces(vocab: GgufVocab) -> list[list]:
    """[piece, score] per id. HF scores its unknown piece min(all scores) - 10, llama.cpp min(NORMAL scores) - 10:
    a non-normal piece scored below the lowest normal one would lower HF's, so it is raised to it (control and
    unknown pieces, never matched by llama.cpp's lattice) or, for unused pieces, whose score makes llama.cpp never
    pick them, replaced by text no input holds."""
    tokens = unique_tokens(vocab.tokens)
    scores = [float(s) for s in vocab.scores] if vocab.scores is not None else [0.0] * len(tokens)
    normal = [s for s, kind in zip(scores, vocab.types) if kind == NORMAL]
    floor = min(normal) if normal else min(scores, default=0.0)
    out = []
    for i, (text, kind, score) in enumerate(zip(tokens, vocab.types, scores)):
        if kind == USER_DEFINED:
            score = 0.0  # llama.cpp scores user-defined pieces 0 (they are split off before, as added tokens)
        elif score < floor and kind in (CONTROL, UNKNOWN):
            score = floor
        elif score < floor:
            text, score = f"<qlora_kit_unreachable_{i}>", floor
        out.append([text, score])
    return out


def ugm_json(vocab: GgufVocab) -> dict:
    """tokenizer.json for a "t5" GGUF vocabulary, tokenizing as llama.cpp's UGM tokenizer does."""
    pieces = ugm_pieces(vocab)
    tokens = [text for text, _ in pieces]
    # tokenizer.ggml.remove_extra_whitespaces: llama.cpp defaults to false, but every T5-family GGUF written by
    # convert_hf_to_gguf carries it, and SentencePiece's own default is true.
    remove_extra = getattr(vocab, "remove_extra_whitespaces", None)
    remove_extra = True if remove_extra is None else bool(remove_extra)
    normalizers = (charsmap_normalizers(vocab.charsmap) if vocab.charsmap else []) + \
        ugm_whitespace(remove_extra, bool(vocab.add_space_prefix))
    unk = vocab.special.get("unk")
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": added_tokens(tokens, vocab),
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": None,
            "post_processor": None,
            "decoder": {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "always", "split": True},
            "model": {"type": "Unigram", "unk_id": unk if unk is not None and 0 <= unk < len(tokens) else None,
                      "vocab": pieces, "byte_fallback": False}}
