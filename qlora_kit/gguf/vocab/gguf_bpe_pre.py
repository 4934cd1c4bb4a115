"""llama.cpp's BPE pre-tokenizers (tokenizer.ggml.pre), written as Oniguruma regexes for HF `tokenizers`.

llama.cpp (0.3.36's src/llama-vocab.cpp, `llm_tokenizer_bpe`) splits text with a list of regexes, each applied to
every piece the previous ones left, matches and the gaps between them both kept: exactly a `Sequence` of HF
`Split(..., "Isolated")`. What llama.cpp means by a regex is not always what the regex says, though, so each one
here is written for what llama.cpp *does* (src/unicode.cpp):

* Four regexes (GPT-2's, Llama-3's, Qwen2's, Qwen3.5's) are hand-written loops, not regexes. The GPT-2 loop also
  matches `\\s+` although the regex string it stands for omits it; the Llama-3/Qwen loops lower-case only through
  llama.cpp's own table, so "'ſ" is no contraction (Oniguruma's `(?i:'s)` folds ſ to s): contractions are spelled
  with explicit case classes.
* The other regexes run in std::regex over a "collapsed" text: every non-ASCII character becomes one byte standing
  for its class (letter, number, punctuation, mark, symbol, other) and every non-ASCII White_Space character
  becomes \\v. So \\p{Lu}, \\p{Ll}, \\p{Lt}, \\p{Lm}, \\p{Lo} all mean \\p{L} there, and a literal non-ASCII
  White_Space character inside a class can never match (deepseek-llm's range from U+3000 starts at U+3001 here).
* std::regex's `$` is the end of the piece; Oniguruma's is the end of a line, so `\\z` is used.

\\s is Unicode White_Space on both sides (checked). llama.cpp's general categories are Unicode 15.1's, those of
HF's Oniguruma Unicode 16.0's: the 5185 characters 16.0 added are in no class for llama.cpp, so `llama_classes`
takes them out of \\p{L}, \\p{N}, \\p{P}, \\p{S} and \\p{M} (a later Oniguruma would need its additions too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Pre-tokenizer regexes as they appear in Hugging Face tokenizer.json files (vocab.py names them by these).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_CASELESS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
TAIL = r"|\s*[\r\n]+|\s+(?!\S)|\s+"  # newlines with the spaces before them, then spaces not before a word

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = LLAMA3_REGEX.replace(_CASELESS, CONTRACTIONS)
QWEN2 = QWEN2_REGEX.replace(_CASELESS, CONTRACTIONS)
QWEN35 = CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*" + TAIL
JAIS2 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
         + "|".join(rf"\s{{{n}}}(?!\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4)) + r"|\s{1,2}(?!\S)|\s{1}")
# Upper-then-lower word shapes as llama.cpp adapts them: "upper" is any letter but a-z, "lower" any but A-Z.
_UP, _LO = r"((?=[\p{L}])([^a-z]))", r"((?=[\p{L}])([^A-Z]))"
_UPM, _LOM = r"((?=[\p{L}\p{M}])([^a-z]))", r"((?=[\p{L}\p{M}])([^A-Z]))"


def _cased_words(up: str, lo: str, suffix: str) -> str:
    return rf"[^\r\n\p{{L}}\p{{N}}]?{up}*{lo}+{suffix}|[^\r\n\p{{L}}\p{{N}}]?{up}+{lo}*{suffix}"


TEKKEN = _cased_words(_UP, _LO, "") + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*" + TAIL
GPT4O = _cased_words(_UP, _LO, CONTRACTIONS + "?") + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*" + TAIL
GRANITE_MULTI = _cased_words(_UPM, _LOM, CONTRACTIONS + "?") + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*" + TAIL
YOUTU = (_cased_words(r"[\p{L}\p{M}]", r"[\p{L}\p{M}]", CONTRACTIONS + "?")
         + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*" + TAIL)
_ASCII_PUNCT_WORD = r"[!" + '"' + r"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
DEEPSEEK3 = _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*" + TAIL
SPARK = _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"
CJK_KANA = "[一-龥぀-ゟ゠-ヿ]+"
CJK_HANGUL = "[一-龥ࠀ-一가-퟿]+"  # as deepseek writes it: U+0800..U+4E00 is one range
# deepseek-llm's cased-letter class as its tokenizer.json spells it; the six characters that NFC would replace
# (U+1F7D, U+1FBE, U+1FD3, U+1FDB, OHM U+2126, KELVIN U+212A) are escaped so that no editor can change them.
DEEPSEEK_LETTERS = ("\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅ"
                    "ὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿ"
                    "ⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+")
# deepseek writes the last range from U+3000 (a space, which llama.cpp has turned into \v): from U+3001 here.
DEEPSEEK_PUNCT = r"\s?[!-/:-~！-／：-～‘-‟、-。]+"
BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
NEWLINE_RUNS = r"[^\n]+|[\n]+"


# The code points Unicode 16.0 added to the letter, number, mark, punctuation and symbol categories.
UNICODE16_ADDED = ("897 1B4E-1B4F 1B7F 1C89-1C8A 2427-2429 31E4-31E5 A7CB-A7CD A7DA-A7DC 105C0-105F3 10D40-10D65 "
                   "10D69-10D85 10D8E-10D8F 10EC2-10EC4 10EFC 11380-11389 1138B 1138E 11390-113B5 113B7-113C0 113C2 "
                   "113C5 113C7-113CA 113CC-113D5 113D7-113D8 113E1-113E2 116D0-116E3 11BC0-11BE1 11BF0-11BF9 11F5A "
                   "13460-143FA 16100-16139 16D40-16D79 18CFF 1CC00-1CCF9 1CD00-1CEB3 1E5D0-1E5FA 1E5FF 1F8B2-1F8BB "
                   "1F8C0-1F8C1 1FA89 1FA8F 1FABE 1FAC6 1FADC 1FADF 1FAE9 1FBCB-1FBEF")
_NOT_ADDED = "[^" + "".join("-".join(rf"\x{{{end}}}" for end in item.split("-"))
                            for item in UNICODE16_ADDED.split()) + "]"


def llama_classes(regex: str) -> str:
    """\\p{L} (N, P, S, M) as llama.cpp's Unicode 15.1 table has it: a class intersection, which Oniguruma also
    accepts nested inside a bracket, so `[^\\s\\p{L}]` stays right."""
    return re.sub(r"\\p\{([LNPSM])\}", lambda m: rf"[\p{{{m.group(1)}}}&&{_NOT_ADDED}]", regex)


@dataclass(frozen=True)
class PreSpec:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is that token, merges or not
    byte_level: bool = True  # GPT-2 bytes-to-characters mapping; False: raw UTF-8 with <0xNN> byte fallback
    escape_spaces: bool = False  # ' ' -> '▁' before splitting (SentencePiece-style BPE)


_STARCODER = PreSpec((r"\p{N}", GPT2))
_GPT2 = PreSpec((GPT2,))
_LLAMA3 = PreSpec((LLAMA3,))
_QWEN2 = PreSpec((QWEN2,))
_DEEPSEEK3 = PreSpec((r"\p{N}{1,3}", CJK_KANA, DEEPSEEK3))
_BLOOM = PreSpec((BLOOM,))
_GPT4O = PreSpec((GPT4O,))
_BAILING = PreSpec((r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",))
_SPM_STYLE = PreSpec((NEWLINE_RUNS,), byte_level=False, escape_spaces=True)

# tokenizer.ggml.pre -> what llama.cpp does with it (llama_vocab::impl::load names, llm_tokenizer_bpe regexes).
PRE_SPECS: dict[str, PreSpec] = {
    "default": PreSpec((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]")),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "glm4", "glm5"), PreSpec((LLAMA3,), ignore_merges=True)),
    **dict.fromkeys(("dbrx", "smaug-bpe", "chatglm-bpe"), _LLAMA3),
    "jais-2": PreSpec((JAIS2,)),
    "deepseek-llm": PreSpec(("[\r\n]", DEEPSEEK_LETTERS, DEEPSEEK_PUNCT, r"\s+\z", CJK_HANGUL, r"\p{N}+")),
    "deepseek-coder": PreSpec(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}")),
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"), _DEEPSEEK3),
    "spark2_5": PreSpec((r"\p{N}{1,3}", CJK_KANA, SPARK, r"\p{N}")),
    "youtu": PreSpec(("[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|" + CJK_KANA, YOUTU), ignore_merges=True),
    "falcon": PreSpec((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]")),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
                     "mellum2"), _STARCODER),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "a.x-4.0", "mellum", "mpt", "olmo",
                     "jais", "exaone4", "trillion", "granite-docling", "jina-v1-en", "roberta-bpe"), _GPT2),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
                     "solar-open", "grok-2"), _QWEN2),
    "qwen35": PreSpec((QWEN35,)),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), _BLOOM),
    "viking": PreSpec((BLOOM, r"\p{N}")),
    "tekken": PreSpec((TEKKEN,), ignore_merges=True),
    "chameleon": PreSpec(("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )",
                          r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", GPT2)),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
    "granite-embed-multi-97m": PreSpec((GRANITE_MULTI,), ignore_merges=True),
    "seed-coder": PreSpec((CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+" + TAIL,)),
    "ufakzeka": PreSpec((r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*" + TAIL,)),
    **dict.fromkeys(("bailingmoe", "bailingmoe2", "llada-moe"), _BAILING),
    "laguna": PreSpec((NEWLINE_RUNS, QWEN2)),
    "exaone-moe": PreSpec((CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                           r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",)),
    "minicpm5": PreSpec((r"\p{N}{1,3}", CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+"
                         r"| ?[^\s\p{L}\p{N}]+[\r\n]*" + TAIL), ignore_merges=True),
    # SentencePiece-style BPE: spaces become '▁', only newline runs are split off, no byte-level mapping. llama.cpp
    # also takes a gemma4 newline run that is a token whole; BPE over the run gives the same token whenever the
    # merges build the run from shorter ones (they do in Gemma 4's vocabulary: runs of 1..31 newlines).
    **dict.fromkeys(("gemma4", "granite-embed-multi-311m", "sarvam-moe"), _SPM_STYLE),
}
assert LLAMA3 != LLAMA3_REGEX and QWEN2 != QWEN2_REGEX, "vocab.py's regexes no longer start with the contractions"
