"""Texts that find what users will type: the probe set every GGUF vocabulary check runs through llama.cpp.

A tokenizer that is right on "Hello world" can still make llama.cpp throw on one byte (a byte-level vocabulary
missing a byte token: `llama_vocab::byte_to_token` raises std::out_of_range, uncaught, and the process aborts) or
split a digit run, a whitespace run or an emoji sequence differently. So the set holds:
- llama.cpp's own tokenizer test strings for every vocabulary it ships (assets/llama_cpp_vocab_tests.json);
- every byte: 0x00-0x7F as text, U+0080-U+00FF as text, and each byte 0x80-0xFF alone as invalid UTF-8 (bytes, for
  llama.cpp only: llama_tokenize takes bytes, a Python str cannot hold them), plus truncated, overlong and surrogate
  sequences;
- what pre-tokenizers treat specially: digit runs, CJK, emoji with ZWJ and modifiers, combining marks, right-to-left
  text with direction marks, control and zero-width characters, long runs of spaces, tabs and newlines;
- the tokenizer's own added tokens, alone and inside text;
- a few kilobytes of mixed-script text.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

DIGIT_RUNS = ["".join(str((i + 1) % 10) for i in range(n)) for n in range(1, 13)]
CLASSES = (
    "日本語のテキストと漢字、カタカナ。中文：你好，世界！한국어 텍스트",
    "👨‍👩‍👧‍👦 family, 🧑🏽‍💻 coder, 🏳️‍🌈 flag, 👍🏿, 🇯🇵🇫🇷, 1️⃣ keycap, ❤️‍🔥",
    "combining: e\u0301 a\u0308 n\u0303 Z\u0324\u0354\u0367\u0311\u0313 \u0915\u094d\u0937 \u0e01\u0e34",
    "RTL: \u200fمرحبا بالعالم\u200e and \u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd 123",
    "controls: \x00 \x01 \x07 \x1b[0m \x7f \u200b zero\u200cwidth \u200d \ufeffBOM \u2028 \u2029",
    "no-break\u00a0space, thin\u2009space, ideographic\u3000space, em\u2003space",
    "full-width: ＡＢＣ１２３！ math: ∑∫√∞≠≤ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 ℌ℘",
    "mixed\r\nline\rendings\n\r\n\n",
    "a" * 80 + " " + "ab" * 40,
)
WHITESPACE = [" " * n for n in (1, 2, 3, 4, 7, 8, 16, 33)] + ["\t" * n for n in (1, 2, 5)] + \
    ["\n" * n for n in (1, 2, 3, 6)] + [" \n \n  \t\t \n    x", "x" + " " * 40 + "y", "\t \t \n\n  \r\n  end  "]
PARAGRAPHS = (
    "The quick brown fox jumps over the lazy dog. It's 10:45 on 2026-12-06, and the price is $1,299.99 (15% off).",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. Ça coûte 12,50 € — très cher !",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο.",
    "いろはにほへと ちりぬるを わかよたれそ つねならむ。我能吞下玻璃而不伤身体。다람쥐 헌 쳇바퀴에 타고파.",
    "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر. דג סקרן שט בים מאוכזב ולפתע מצא חברה.",
    "def main(argv: list[str]) -> int:\n    for i, x in enumerate(argv):\n\t\tprint(f\"{i:>3}: {x!r}\")  # 🐍\n    return 0\n",
    "<html><body class=\"x\">&amp; &lt;tag&gt; <!-- c --></body></html> {\"k\": [1, 2.5e-3, null, true]}",
    "हिन्दी में लिखा पाठ। ภาษาไทยเขียนติดกัน ไม่มีช่องว่าง। ქართული ანბანი. Հայերեն. አማርኛ ፊደል።",
)


@lru_cache(maxsize=1)
def llama_cpp_test_texts() -> tuple[str, ...]:
    path = resources.files("qlora_kit.assets").joinpath("llama_cpp_vocab_tests.json")
    return tuple(json.loads(path.read_text(encoding="utf-8"))["texts"])


def mixed_text() -> str:
    """~3 KB: every paragraph, three times, in rotating order (so each script meets each other script)."""
    parts = []
    for shift in range(3):
        parts.extend(PARAGRAPHS[shift:] + PARAGRAPHS[:shift])
    return "\n\n".join(parts)


def fixed_texts() -> list[str]:
    """The probe texts that do not depend on the tokenizer, each once, in a fixed order."""
    texts = list(llama_cpp_test_texts()) + [chr(i) for i in range(0x100)] + DIGIT_RUNS + \
        [f"x{d}y {d}.{d}" for d in DIGIT_RUNS[::3]] + list(CLASSES) + WHITESPACE + [mixed_text()]
    return list(dict.fromkeys(texts))


def added_token_texts(added: list[str], limit: int = 8) -> list[str]:
    """The tokenizer's own added tokens alone, glued to text, twice in a row and between spaces."""
    texts = []
    for token in added[:limit]:
        texts += [token, f"x{token}y", token * 2, f" {token} ", f"Hello {token}\nworld{token}"]
    return texts


def invalid_utf8() -> list[bytes]:
    """Byte strings no str can hold: each byte 0x80-0xFF alone, then truncated, overlong, surrogate and
    out-of-range sequences, alone and inside text. llama.cpp must tokenize them without aborting."""
    lone = [bytes([b]) for b in range(0x80, 0x100)]
    broken = [b"\xc3", b"\xe3\x81", b"\xf0\x9f\x98", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
              b"\xf4\x90\x80\x80", b"\xff\xfe", b"abc\xffdef", b"caf\xe9 au lait", b"\xe6\x97\xa5\xe6\x9c"]
    return lone + broken


# Inputs llama.cpp itself aborts on, whatever the vocabulary: not a fault of a file we write, so export does not
# refuse for them. Keyed by the input, with the tokenizer models (tokenizer.ggml.model) it aborts with; the suite
# checks each still aborts with llama.cpp's own ggml-vocab files (and so notices an upstream fix).
UPSTREAM_CRASHES = {
    b"\xf4\x90\x80\x80": ({"gpt2", "gemma4", "bert"},
                          "llama.cpp decodes F4 90 80 80 to U+110000, beyond Unicode, and looking its category up in "
                          "its code point table throws std::out_of_range, uncaught (BPE and WordPiece pre-tokenizers)"),
}


def tokenizer_model(gguf_path) -> str:
    from qlora_kit.gguf.vocab.gguf_meta import read_keys

    return str(read_keys(gguf_path, {"tokenizer.ggml.model"}).get("tokenizer.ggml.model") or "")


def invalid_utf8_for(gguf_path) -> list[bytes]:
    """invalid_utf8(), less what llama.cpp aborts on with every vocabulary of this file's tokenizer model."""
    kind = tokenizer_model(gguf_path)
    return [b for b in invalid_utf8() if kind not in UPSTREAM_CRASHES.get(b, (set(), ""))[0]]
