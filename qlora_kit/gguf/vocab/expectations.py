"""What the token checks expect from the HF tokenizer: its ids on probe texts that break wrong pre-tokenizers,
its added tokens, how it prepends '▁', and which differences llama.cpp's SentencePiece tokenizer cannot avoid.

Computed once from the HF tokenizer (TokenExpectations), then compared with llama.cpp's ids twice: to choose the
GGUF vocabulary (tokenizer_probe.choose) and to verify a written file (verify.check_tokens). Both import this
module; neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_kit.gguf.vocab.vocab_plan import VocabPlan

PROBE_TEXTS = (
    "Hello world",
    " Hello world",
    "Whitespace:  two   three    four\ttab\t\ttabs\n\nnewlines   \n  indented \n \n",
    "   leading and trailing   ",
    "Numbers: 1 12 123 1234 12345 1234567 3.14159 -42 1,000,000 2026-11-25 0x1F 007",
    "Punctuation!? (brackets) [square] {curly} \"quotes\" 'single' --- ... ;:, a/b\\c @user #tag $5 100%",
    "Non-Latin: Привет мир, こんにちは世界, مرحبا بالعالم, 你好，世界。 한국어, Ελληνικά, हिन्दी",
    "Emoji: 😀 👍🏽 🇫🇷 ❤️ 🧑‍💻 🦙.cpp",
    "Accents: Äpfel café naïve señor Ångström façade Œuvre",
    "def f(x):\n    return x**2  # square\n\tif a != b: print('ok')  // done\n}",
    "it's they're we've I'm you'll he'd CAPS MiXeD HELLO'S don't",
)
SPECIAL_PROBES = 4  # texts built from the tokenizer's own special/added tokens


def probe_texts(hf_tokenizer) -> list[str]:
    """The fixed probes, the shared probe set (probe_set.py: llama.cpp's own test strings, every byte, character
    classes, mixed-script text) and texts around this tokenizer's own added tokens (chat markers, BOS/EOS strings)."""
    from qlora_kit.gguf.vocab.probe_set import fixed_texts

    added = [t for t in getattr(hf_tokenizer, "added_tokens_decoder", {}).values() if t.content.strip()]
    added = sorted(added, key=lambda t: (not t.special, t.content))[:SPECIAL_PROBES]
    texts = list(dict.fromkeys(list(PROBE_TEXTS) + fixed_texts()))
    for token in added:
        texts.append(f"{token.content}Hello world{token.content}\nNext line {token.content}")
    return texts


def hf_ids(hf_tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(hf_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def spm_space_rule(data: dict | None) -> str:
    """How the HF tokenizer prepends '▁' to each piece of text between added tokens: "always" (a Prepend
    normalizer, as SentencePiece itself and llama.cpp do), "unless-space" (Metaspace 'always': not when the piece
    already starts with a space), "first-only" (Metaspace 'first', transformers' legacy=False), or "never"."""
    def walk(spec):
        if spec:
            yield spec
            for key in ("normalizers", "pretokenizers"):
                for part in spec.get(key) or []:
                    yield from walk(part)

    data = data or {}
    if any(s.get("type") == "Prepend" for s in walk(data.get("normalizer"))):
        return "always"
    for spec in walk(data.get("pre_tokenizer")):
        if spec.get("type") == "Metaspace":
            scheme = spec.get("prepend_scheme") or ("always" if spec.get("add_prefix_space", True) else "never")
            return {"always": "unless-space", "first": "first-only"}.get(scheme, "never")
    return "never"


def added_texts(hf_tokenizer) -> list[str]:
    return [t.content for t in hf_tokenizer.added_tokens_decoder.values()]


def known_spm_difference(plan: VocabPlan, rule: str, added: list[str]):
    """llama.cpp's SentencePiece tokenizer prepends a space to the text and again after every special token, as
    SentencePiece itself does; transformers 5's Metaspace pre-tokenizer does not when the text already starts with a
    space, nor (legacy=False) after a special token. No GGUF setting changes this, so such texts are reported as
    known differences instead of failing every Llama 2/Mistral/Phi-3 tokenizer. Returns text -> reason or None."""
    import re

    if plan.model != "llama" or not plan.add_space_prefix or rule in ("always", "never"):
        return lambda text: None
    added = sorted(added, key=len, reverse=True)
    splitter = re.compile("|".join(re.escape(a) for a in added)) if added else None

    def reason(text: str) -> str | None:
        pieces = splitter.split(text) if splitter else [text]
        if any(p.startswith(" ") for p in pieces if p):
            return "a piece of text starts with a space: llama.cpp adds a second '▁', transformers 5 does not"
        if rule == "first-only" and any(pieces[1:]):
            return ("text after a special token: llama.cpp prepends '▁', transformers' Metaspace 'first' scheme "
                    "(legacy=False) does not")
        return None

    return reason


@dataclass(frozen=True)
class TokenExpectations:
    """What the token check needs from the HF tokenizer, computed once so the tokenizer (hundreds of MiB for a
    150k vocabulary) is not held while the GGUF files are written."""

    texts: list[str]  # probe texts (+ the chat sample, for verification)
    ids: list[list[int]]  # HF's ids for each, no special tokens added
    with_specials: list[int]  # HF's ids for "Hello world" with BOS/EOS added as it adds them
    added: list[str]  # the added tokens' texts
    space_rule: str  # how HF prepends '▁' (spm_space_rule)
    unicode_form: str | None = None  # "NFC", "NFKC", ... when the HF normalizer recomposes text (unicode_form)

    @classmethod
    def of(cls, hf_tokenizer, chat_sample: str | None = None, data: dict | None = None) -> "TokenExpectations":
        texts = probe_texts(hf_tokenizer) + ([chat_sample] if chat_sample is not None else [])
        return cls(texts, hf_ids(hf_tokenizer, texts),
                   list(hf_tokenizer("Hello world", add_special_tokens=True)["input_ids"]),
                   added_texts(hf_tokenizer), spm_space_rule(data), unicode_form(data))

    def known(self, plan: VocabPlan):
        """text -> why llama.cpp cannot tokenize it as HF does, by design, or None (known_difference)."""
        return known_difference(plan, self)


def unicode_form(data: dict | None) -> str | None:
    """The Unicode normalization the HF tokenizer applies first (Qwen 2's NFC), or None."""
    spec = (data or {}).get("normalizer") or {}
    parts = spec.get("normalizers") if spec.get("type") == "Sequence" else [spec]
    forms = [p.get("type") for p in parts or [] if p and p.get("type") in ("NFC", "NFD", "NFKC", "NFKD")]
    return forms[0] if forms else None


def known_difference(plan: VocabPlan, expect: "TokenExpectations"):
    """Differences no GGUF setting avoids: SentencePiece's doubled '▁' (known_spm_difference), and text that a
    Unicode normalizer changes: llama.cpp has no such normalizer for BPE vocabularies and tokenizes the code points
    as given, so e.g. a decomposed 'é' (e + U+0301) differs under Qwen 2's NFC. Text already in that form is equal."""
    import unicodedata

    spm = known_spm_difference(plan, expect.space_rule, expect.added)
    form = expect.unicode_form

    def reason(text: str) -> str | None:
        if form and unicodedata.normalize(form, text) != text:
            return (f"text not in {form}: the HF tokenizer normalizes it to {form} first, llama.cpp tokenizes the "
                    "code points as given")
        return spm(text)

    return reason
