"""Prove a GGUF file right with llama.cpp itself (through llama-cpp-python), against the merged HF model.

Tokens: llama.cpp's tokenizer must give the HF tokenizer's ids on texts that break wrong pre-tokenizers (digit
runs, whitespace runs, punctuation, non-Latin scripts, emoji, the chat template with its special tokens).
Logits: on held-out rows against transformers in float32. F32 must match within 1e-2. A quantized file is judged
on what quantization is allowed to change: its relative logit error (RMS of the centred logit difference over the
spread of HF's logits, i.e. 1 - correlation, roughly) within a per-type limit set from measured llama.cpp
behaviour, and top-1 agreement counted only where HF's top1-top2 margin is larger than that error could close
(random and real models alike have near-ties that any rounding flips; counting them refuses correct files).
"""

from __future__ import annotations

import numpy as np

from qlora_kit.gguf.vocab.expectations import TokenExpectations
from qlora_kit.gguf.vocab.vocab_plan import VocabPlan
from qlora_kit.native.loader import captured_native_output, load

TOKEN_TEXTS = (
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000 2026-11-25",
    "Whitespace:  two   three    four\ttab\n\nnewlines   \n  indented",
    "Punctuation!? (brackets) [square] {curly} \"quotes\" 'single' --- ... ;:,",
    "Non-Latin: Привет мир, こんにちは世界, مرحبا بالعالم, 你好，世界, Ελληνικά",
    "Emoji: 😀 👍🏽 🇫🇷 ❤️ 🧑‍💻",
    "it's they're we've I'm you'll he'd CAPS MiXeD",
)
F32_MAX_ABS_DIFF = 1e-2
# Per-type limit on the mean relative logit error, ~1.4x the worst correct export; measurements: benchmarks/RESULTS.md
REL_ERROR_LIMITS = {"f32": 1e-3, "f16": 0.006, "bf16": 0.02, "q8_0": 0.1, "q6_k": 0.16, "q5_k_m": 0.32,
                    "q4_k_m": 0.45, "q4_0": 0.8, "q3_k_m": 0.65, "q2_k": 0.9}
# Top-1 counts where HF's margin > this x limit x spread: room over measured flips; measurements: benchmarks/RESULTS.md
DECISIVE_MARGIN = 6.0
DECISIVE_AGREEMENT = 0.98
MIN_DECISIVE = 8  # fewer decisive positions than this: top-1 is reported, not judged


def check_tokens(gguf_path, expect: TokenExpectations) -> dict:
    """llama.cpp's ids vs HF's on the probe set and the chat sample (specials parsed), and with BOS/EOS added as
    each side adds them; llama.cpp runs in a child process, invalid UTF-8 probes first, so a file that makes it abort
    is a failed check naming the text (`crash`), not a dead verifier. Differences llama.cpp cannot avoid by design
    are reported apart (expectations.known_difference)."""
    from qlora_kit.gguf.vocab.gguf_meta import read_keys
    from qlora_kit.gguf.vocab.llama_tokens import TokenizerCrash, tokenize
    from qlora_kit.gguf.vocab.probe_set import invalid_utf8_for

    texts = expect.texts
    try:
        broken = invalid_utf8_for(gguf_path)
        got = tokenize(gguf_path, broken + list(texts))[len(broken):]
        (with_specials,) = tokenize(gguf_path, ["Hello world"], add_special=True)
    except TokenizerCrash as exc:
        return {"texts": len(texts), "equal": 0, "mismatched": [], "crash": str(exc), "known_differences": [],
                "special_tokens_added_equal": False}
    meta = read_keys(gguf_path, {"tokenizer.ggml.model", "tokenizer.ggml.add_space_prefix"})
    prefix = meta.get("tokenizer.ggml.add_space_prefix")
    plan = VocabPlan(str(meta.get("tokenizer.ggml.model", "")), "", [], [], "",
                     add_space_prefix=True if prefix is None else bool(prefix))
    known = expect.known(plan)
    differ = [t for t, ids, want in zip(texts, got, expect.ids) if list(ids) != want]
    mismatched = [t for t in differ if not known(t)]
    return {"texts": len(texts), "equal": len(texts) - len(mismatched), "mismatched": mismatched[:3],
            "known_differences": [{"text": t, "why": known(t)} for t in differ if known(t)],
            "special_tokens_added_equal": list(with_specials) == expect.with_specials}


def gguf_logits(gguf_path, rows: list[list[int]]) -> list[np.ndarray]:
    n_ctx = max(len(r) for r in rows) + 8
    out = []
    # F32 KV cache (llama.cpp's default is F16): this measures the conversion, not the runtime's cache rounding.
    llm = load(gguf_path, "verifying", n_ctx=n_ctx, logits_all=True, n_gpu_layers=0, seed=0, type_k=0, type_v=0)
    with captured_native_output():
        try:
            for ids in rows:
                llm.reset()
                llm.eval(ids)
                out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        finally:
            llm.close()
    return out


def compare(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """Per-position agreement of two logit sets (rows x positions x vocab), summarised: the shared comparison
    (qlora_kit.model.logits) plus what the fair quantized check needs: relative error and correlation of the centred
    logits, and per position HF's top1-top2 margin, the logits' spread and whether top-1 agrees (`positions`)."""
    from qlora_kit.model.logits import compare_logits

    out = compare_logits(reference, candidate)
    rel, corr, margins, spreads, agrees = [], [], [], [], []
    for ref, cand in zip(reference, candidate):
        centred_ref = ref - ref.mean(-1, keepdims=True)
        centred_cand = cand - cand.mean(-1, keepdims=True)
        spread = np.sqrt((centred_ref ** 2).mean(-1))
        err = np.sqrt(((centred_cand - centred_ref) ** 2).mean(-1))
        rel.extend((err / np.maximum(spread, 1e-12)).tolist())
        corr.extend(((centred_ref * centred_cand).mean(-1) / np.maximum(
            spread * np.sqrt((centred_cand ** 2).mean(-1)), 1e-12)).tolist())
        top2 = np.sort(ref, -1)[:, -2:]
        margins.extend((top2[:, 1] - top2[:, 0]).tolist())
        spreads.extend(spread.tolist())
        agrees.extend((ref.argmax(-1) == cand.argmax(-1)).tolist())
    return {**out, "rel_rms_error": float(np.mean(rel)) if rel else 0.0,
            "max_rel_rms_error": float(np.max(rel)) if rel else 0.0,
            "min_logit_correlation": float(np.min(corr)) if corr else 1.0,
            "positions": {"margin": margins, "spread": spreads, "top1_agrees": agrees}}


def decisive_top1(positions: dict, quant: str) -> dict:
    """Top-1 agreement where HF's top1-top2 margin is beyond what the type's allowed error could close."""
    limit = REL_ERROR_LIMITS.get(quant)
    if limit is None:
        return {"decisive_positions": 0}
    margin, spread = np.asarray(positions["margin"]), np.asarray(positions["spread"])
    decisive = margin > DECISIVE_MARGIN * limit * spread
    agree = np.asarray(positions["top1_agrees"], dtype=bool)[decisive]
    return {"decisive_positions": int(decisive.sum()),
            "decisive_top1_agreement": float(agree.mean()) if agree.size else None}


def judge(quant: str, tokens: dict, logits: dict) -> tuple[bool, str]:
    if tokens.get("crash"):
        return False, f"{tokens['crash']}: this file would abort llama.cpp (and Ollama) on such input"
    if tokens["equal"] != tokens["texts"]:
        return False, f"llama.cpp tokenizes {tokens['texts'] - tokens['equal']} of {tokens['texts']} test texts " \
                      f"differently from the HF tokenizer (first: {tokens['mismatched'][0]!r})"
    if not tokens.get("special_tokens_added_equal", True):
        return False, "llama.cpp adds BOS/EOS differently from the HF tokenizer (tokenizer.ggml.add_bos_token / " \
                      "add_eos_token)"
    if quant == "f32" and logits["max_abs_logit_diff"] > F32_MAX_ABS_DIFF:
        return False, f"max_abs_logit_diff {logits['max_abs_logit_diff']:.4g} (outside the limit {F32_MAX_ABS_DIFF})"
    limit = REL_ERROR_LIMITS.get(quant)
    if limit is None:
        return True, "reported only (no limit for this type)"
    rel = logits["rel_rms_error"]
    if rel > limit:
        return False, f"relative logit error {rel:.4g} (outside the {quant} limit {limit}; max |diff| " \
                      f"{logits['max_abs_logit_diff']:.3g})"
    agree, count = logits.get("decisive_top1_agreement"), logits.get("decisive_positions", 0)
    if count >= MIN_DECISIVE and agree < DECISIVE_AGREEMENT:
        return False, f"top-1 agreement {agree:.4g} on {count} decisive positions (outside the limit " \
                      f"{DECISIVE_AGREEMENT})"
    top1 = f"top-1 {agree:.4g} on {count} decisive positions" if count >= MIN_DECISIVE else \
        f"top-1 not judged ({count} decisive positions)"
    return True, f"relative logit error {rel:.4g} (within the {quant} limit {limit}), {top1}, max |diff| " \
                 f"{logits['max_abs_logit_diff']:.3g}"

