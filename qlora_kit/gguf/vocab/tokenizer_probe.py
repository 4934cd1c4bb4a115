"""Choose the GGUF tokenizer by behaviour: the first candidate llama.cpp tokenizes exactly like the HF tokenizer.

Each candidate is asked in a child process (llama_tokens.py), invalid UTF-8 probes first: a vocabulary on which
llama.cpp aborts is never written, it is a candidate refused, and when every candidate is, export refuses in one
line naming the text and the signal.

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
from qlora_kit.gguf.vocab.expectations import TokenExpectations
from qlora_kit.gguf.vocab.vocab_plan import VocabPlan


def llama_cpp_ids(gguf_path: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's ids for the texts, from a child process (llama_tokens.py), after the invalid UTF-8 probes: a
    vocabulary that makes llama.cpp abort on any of them raises TokenizerCrash naming the text."""
    from qlora_kit.gguf.vocab.llama_tokens import tokenize
    from qlora_kit.gguf.vocab.probe_set import invalid_utf8_for

    broken = invalid_utf8_for(gguf_path)
    return tokenize(gguf_path, broken + list(texts), special=True)[len(broken):]


def write_vocab_only(path: Path, plan: VocabPlan, name: str) -> None:
    """A GGUF with the vocabulary and the few hyper-parameters llama.cpp reads before it looks at tensors. The
    name matters: llama.cpp gives Phi-3's special tokens their rstrip attribute by general.name."""
    from qlora_kit.gguf.gguf_writer import GGUFWriter

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


def choose(candidates: list[VocabPlan], expect: TokenExpectations, name: str, where: str) -> tuple[VocabPlan, dict]:
    """The first candidate whose llama.cpp ids equal HF's (`expect`) on every probe text (but known SentencePiece
    differences, reported), and what was tried."""
    from qlora_kit.errors import StageError
    from qlora_kit.gguf.vocab.llama_tokens import TokenizerCrash

    texts, expected = expect.texts, expect.ids
    tried, best = [], None
    with tempfile.TemporaryDirectory(prefix="qlora-kit-vocab-") as tmp:
        for i, plan in enumerate(candidates):
            path = Path(tmp) / f"candidate-{i}.gguf"
            write_vocab_only(path, plan, name)
            try:
                got = llama_cpp_ids(path, texts)
            except TokenizerCrash as exc:  # this vocabulary would kill llama.cpp (and Ollama) on a user's input
                tried.append({"candidate": plan.label, "error": str(exc), "crash": True})
                continue
            except StageError as exc:  # llama.cpp refused this candidate (e.g. a pre-tokenizer it lacks)
                tried.append({"candidate": plan.label, "error": str(exc)})
                continue
            finally:
                path.unlink(missing_ok=True)
            known = expect.known(plan)
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
        crashes = [t["error"] for t in tried if t.get("crash")]
        if crashes:
            raise UsageError(f"{where}: refused, the GGUF is not written: {crashes[0]} (every candidate vocabulary "
                             f"crashes llama.cpp: {labels}); the tokenizer lacks tokens llama.cpp needs (e.g. a byte "
                             "token); save the complete tokenizer with the model")
        raise UsageError(f"{where}: llama.cpp could not load any candidate vocabulary ({labels}); "
                         f"{tried[0]['error'] if tried else ''}")
    _, plan, (text, want, have) = best
    crashed = [f"{t['candidate']}: {t['error']}" for t in tried if t.get("crash")]
    raise UsageError(f"{where}: no llama.cpp tokenizer reproduces this tokenizer (tried {labels}); the closest, "
                     f"{plan.label}, differs first on {text!r}: HF ids {_short(want)}, llama.cpp ids {_short(have)}"
                     + (f"; refused as unsafe: {'; '.join(crashed)}" if crashed else ""))


def _short(ids: list[int], keep: int = 16) -> str:
    return str(ids) if len(ids) <= keep else f"{ids[:keep]}... ({len(ids)} ids)"
