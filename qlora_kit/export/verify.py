"""Prove a GGUF file right with llama.cpp itself (through llama-cpp-python), against the merged HF model.

Tokens: llama.cpp's tokenizer must give the HF tokenizer's ids on texts that break wrong pre-tokenizers (digit
runs, whitespace runs, punctuation, non-Latin scripts, emoji, the chat template with its special tokens).
Logits: on held-out rows, max |delta|, mean KL and top-1 agreement against transformers in float32.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

TOKEN_TEXTS = (
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000 2026-11-25",
    "Whitespace:  two   three    four\ttab\n\nnewlines   \n  indented",
    "Punctuation!? (brackets) [square] {curly} \"quotes\" 'single' --- ... ;:,",
    "Non-Latin: Привет мир, こんにちは世界, مرحبا بالعالم, 你好，世界, Ελληνικά",
    "Emoji: 😀 👍🏽 🇫🇷 ❤️ 🧑‍💻",
    "it's they're we've I'm you'll he'd CAPS MiXeD",
)
# Thresholds from the export spec: a failed check fails the export unless --allow-mismatch.
THRESHOLDS = {"f32": ("max_abs_logit_diff", 1e-2), "f16": ("top1_agreement", 0.99),
              "bf16": ("top1_agreement", 0.99), "q8_0": ("top1_agreement", 0.97)}


@contextlib.contextmanager
def captured_native_output():
    """llama.cpp writes to the process's stdout/stderr from C; keep it out of ours (it is returned on failure)."""
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            box["text"] = sink.read().decode("utf-8", "replace")


def load(gguf_path, **kwargs):
    """llama_cpp.Llama, or a one-line StageError carrying llama.cpp's own last complaint."""
    import llama_cpp

    from qlora_kit.errors import StageError

    with captured_native_output() as log:
        try:
            return llama_cpp.Llama(model_path=str(gguf_path), verbose=False, **kwargs)
        except ValueError:
            pass
    errors = [line for line in log["text"].splitlines() if "error" in line.lower()] or log["text"].splitlines()
    raise StageError(f"llama.cpp cannot load {Path(gguf_path).name}: "
                     f"{errors[-1].strip() if errors else 'no message'}")


def check_tokens(gguf_path, hf_tokenizer, chat_sample: str) -> dict:
    texts = list(TOKEN_TEXTS) + [chat_sample]
    llm = load(gguf_path, vocab_only=True)
    with captured_native_output():
        try:
            mismatched = [t for t in texts if llm.tokenize(t.encode(), add_bos=False, special=True)
                          != hf_tokenizer(t, add_special_tokens=False)["input_ids"]]
        finally:
            llm.close()
    return {"texts": len(texts), "equal": len(texts) - len(mismatched), "mismatched": mismatched[:3]}


def gguf_logits(gguf_path, rows: list[list[int]]) -> list[np.ndarray]:
    n_ctx = max(len(r) for r in rows) + 8
    out = []
    # F32 KV cache (llama.cpp's default is F16): this measures the conversion, not the runtime's cache rounding.
    llm = load(gguf_path, n_ctx=n_ctx, logits_all=True, n_gpu_layers=0, seed=0, type_k=0, type_v=0)
    with captured_native_output():
        try:
            for ids in rows:
                llm.reset()
                llm.eval(ids)
                out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        finally:
            llm.close()
    return out


def hf_logits(model, rows: list[list[int]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0].float().numpy() for ids in rows]


def judge(quant: str, tokens: dict, logits: dict) -> tuple[bool, str]:
    if tokens["equal"] != tokens["texts"]:
        return False, f"llama.cpp tokenizes {tokens['texts'] - tokens['equal']} of {tokens['texts']} test texts " \
                      f"differently from the HF tokenizer (first: {tokens['mismatched'][0]!r})"
    if quant not in THRESHOLDS:
        return True, "reported only (no threshold for this type)"
    metric, limit = THRESHOLDS[quant]
    value = logits[metric]
    ok = value <= limit if metric == "max_abs_logit_diff" else value >= limit
    return ok, f"{metric} {value:.4g} ({'within' if ok else 'outside'} the limit {limit})"

