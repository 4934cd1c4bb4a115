"""Choose the GGUF tokenizer by behaviour: the first candidate llama.cpp tokenizes exactly like the HF tokenizer.

A tokenizer.json field (byte_fallback, the pre-tokenizer's type) says what a tokenizer is made of, not what it does:
transformers writes a Llama-3 tokenizer with `byte_fallback: true` when it builds one from a GGUF vocabulary, and
a model-specific class may replace the pre-tokenizer named in the file. So each candidate vocabulary is written to
a vocabulary-only GGUF, loaded by llama.cpp, and asked to tokenize probe texts (whitespace runs, digits, CJK, emoji,
accents, code, the tokenizer's own special tokens); export refuses only when no candidate reproduces HF, naming
the first text that differs with both id lists.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from qlora_kit.errors import UsageError
from qlora_kit.export.vocab_plan import VocabPlan

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
    """The fixed probes plus texts around this tokenizer's own added tokens (chat markers, BOS/EOS strings)."""
    added = [t for t in getattr(hf_tokenizer, "added_tokens_decoder", {}).values() if t.content.strip()]
    added = sorted(added, key=lambda t: (not t.special, t.content))[:SPECIAL_PROBES]
    texts = list(PROBE_TEXTS)
    for token in added:
        texts.append(f"{token.content}Hello world{token.content}\nNext line {token.content}")
    return texts


def hf_ids(hf_tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(hf_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def llama_cpp_ids(gguf_path: Path, texts: list[str]) -> list[list[int]]:
    from qlora_kit.native.loader import captured_native_output, load

    llm = load(gguf_path, "checking the tokens of", vocab_only=True)
    with captured_native_output():
        try:
            return [list(llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)) for t in texts]
        finally:
            llm.close()


def write_vocab_only(path: Path, plan: VocabPlan, name: str) -> None:
    """A GGUF with the vocabulary and the few hyper-parameters llama.cpp reads before it looks at tensors. The
    name matters: llama.cpp gives Phi-3's special tokens their rstrip attribute by general.name."""
    from qlora_kit.export.gguf_writer import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(64)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    plan.write(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def first_difference(texts, expected, got, known=lambda text: None) -> tuple[str, list[int], list[int]] | None:
    for text, want, have in zip(texts, expected, got):
        if want != have and not known(text):
            return text, want, have
    return None


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


def choose(candidates: list[VocabPlan], expect, name: str, where: str) -> tuple[VocabPlan, dict]:
    """The first candidate whose llama.cpp ids equal HF's (`expect`: verify.TokenExpectations) on every probe text
    (but known SentencePiece differences, reported), and what was tried."""
    from qlora_kit.errors import StageError

    texts, expected = expect.texts, expect.ids
    tried, best = [], None
    with tempfile.TemporaryDirectory(prefix="qlora-kit-vocab-") as tmp:
        for i, plan in enumerate(candidates):
            path = Path(tmp) / f"candidate-{i}.gguf"
            write_vocab_only(path, plan, name)
            try:
                got = llama_cpp_ids(path, texts)
            except StageError as exc:  # llama.cpp refused this candidate (e.g. a pre-tokenizer it lacks)
                tried.append({"candidate": plan.label, "error": str(exc)})
                continue
            finally:
                path.unlink(missing_ok=True)
            known = known_spm_difference(plan, expect.space_rule, expect.added)
            equal = sum(a == b for a, b in zip(expected, got))
            differ = [t for t, a, b in zip(texts, expected, got) if a != b]
            tried.append({"candidate": plan.label, "equal": equal, "texts": len(texts)})
            if all(known(t) for t in differ):
                notes = [{"text": t, "why": known(t)} for t in differ]
                return plan, {"probe_texts": len(texts), "tried": tried, "known_differences": notes}
            if best is None or equal > best[0]:
                best = (equal, plan, first_difference(texts, expected, got, known))
    labels = ", ".join(t["candidate"] for t in tried) or "none"
    if best is None:
        raise UsageError(f"{where}: llama.cpp could not load any candidate vocabulary ({labels}); "
                         f"{tried[0]['error'] if tried else ''}")
    _, plan, (text, want, have) = best
    raise UsageError(f"{where}: no llama.cpp tokenizer reproduces this tokenizer (tried {labels}); the closest, "
                     f"{plan.label}, differs first on {text!r}: HF ids {_short(want)}, llama.cpp ids {_short(have)}")


def _short(ids: list[int], keep: int = 16) -> str:
    return str(ids) if len(ids) <= keep else f"{ids[:keep]}... ({len(ids)} ids)"
