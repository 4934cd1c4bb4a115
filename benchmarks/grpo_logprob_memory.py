"""Peak memory of scoring GRPO completions' log-probs (forward + backward), the unfused way against the fused one.

    python benchmarks/grpo_logprob_memory.py [--models smollm2-135m,qwen2-152k] [--sizes 8x64x256,4x64x1024]

A size is BxPxC: B completions of P prompt + C completion tokens. Each measurement runs in a child process of its
own (peak memory is a per-process quantity): a random-weight model of the named shape in float32 (the CPU dtype),
LoRA r=16 on every projection (random A and B, so that every LoRA weight has a gradient), one forward and backward
of the mean completion log-prob, and
- backbone: the decoder alone (loss on the last hidden states): what both ways share, subtracted from them;
- unfused: as TRL's GRPOTrainer scored completions before its fused LM head (trl <= 0.2x
  `_get_per_token_logps_and_entropies`): `model(..., logits_to_keep=C + 1).logits[:, :-1]`, float32 logits of
  B x C x V, `trl.trainer.utils.selective_log_softmax`, and the entropy from them (no_grad, chunked);
- fused: as TRL 1.15 does now, `add_fused_lm_head` (log-probs and entropy) with this repo's CPU kernel
  (`runtime.compat.cpu_fused_lm_head`, runtime/logprobs.py: tiles of 1,024 tokens, recomputed in backward).
Measured: the peak of live tensor bytes above those alive before (the profiler's allocation events,
qlora_kit.benchmark.tensors.StepPeak) and the peak RSS growth (VmHWM reset through /proc/self/clear_refs first).
A `verify` child computes both ways on one model (B = 2) and compares the log-probs and every LoRA gradient.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    # HuggingFaceTB/SmolLM2-135M's config (what recipes/smollm2-135m.yaml trains, from its GGUF).
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                                   max_position_embeddings=8192)),
    # The 424M Qwen2 with Qwen's 152k vocabulary of the export benchmark (benchmarks/export_bench.py).
    "qwen2-152k": ("qwen2", dict(vocab_size=151936, hidden_size=1024, intermediate_size=2816, num_hidden_layers=10,
                                 num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False,
                                 max_position_embeddings=4096)),
}
WAYS = ("backbone", "unfused", "fused")
MIB = 2**20


def build(name: str, fused: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, sizes = SHAPES[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **sizes), dtype=torch.float32)
    if fused:
        from trl.trainer.utils import add_fused_lm_head

        from qlora_kit.runtime.compat import cpu_fused_lm_head

        cpu_fused_lm_head()
        add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))  # as GRPOTrainer does
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, config)


def logprobs(model, way: str, ids, mask, completion: int):
    """Per-token log-probs of the last `completion` tokens (B x C), with gradients."""
    import torch
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    if way == "backbone":  # a stand-in loss on the decoder's output: what both ways share
        hidden = model.base_model.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden[:, -completion - 1:-1].float().mean(-1)
    if way == "unfused":
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=completion + 1).logits
        logits = logits[:, :-1, :][:, -completion:, :].float()
        logps = selective_log_softmax(logits, ids[:, -completion:])
        with torch.no_grad():
            entropy_from_logits(logits)
        return logps
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-completion] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -completion:]


def inputs(name: str, batch: int, length: int):
    import torch

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SHAPES[name][1]["vocab_size"], (batch, length), generator=generator)
    return ids, torch.ones_like(ids)


def measure(name: str, way: str, batch: int, prompt: int, completion: int) -> dict:
    from qlora_kit.benchmark.tensors import StepPeak
    from qlora_kit.runtime.memory import current_rss_bytes, peak_rss_bytes

    model = build(name, fused=way == "fused")
    ids, mask = inputs(name, batch, prompt + completion)
    before = current_rss_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak below is this computation's
    started = time.perf_counter()
    with StepPeak() as peak:
        loss = -logprobs(model, way, ids, mask, completion).mean()
        loss.backward()
    return {"model": name, "way": way, "batch": batch, "prompt": prompt, "completion": completion,
            "tensor_peak_bytes": peak.peak, "rss_growth_bytes": peak_rss_bytes() - before,
            "seconds_profiled": round(time.perf_counter() - started, 2)}


def verify(name: str, prompt: int, completion: int) -> dict:
    """Both ways on one model, B = 2: the largest log-prob difference and the largest LoRA gradient difference
    relative to the largest gradient."""
    import torch

    from qlora_kit.runtime.compat import cpu_fused_lm_head

    model = build(name, fused=True)
    cpu_fused_lm_head()
    ids, mask = inputs(name, 2, prompt + completion)
    results = {}
    for way in ("unfused", "fused"):
        model.zero_grad(set_to_none=True)
        logps = logprobs(model, way, ids, mask, completion)
        (-logps.mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[way] = (logps.detach(), grads)
    (a, ga), (b, gb) = results["unfused"], results["fused"]
    scale = max(g.abs().max().item() for g in ga.values())
    return {"model": name, "way": "verify", "compared_tokens": a.numel(), "lora_tensors": len(ga),
            "max_abs_logprob_diff": (a - b).abs().max().item(), "mean_logprob": a.mean().item(),
            "max_abs_grad_diff_over_max_grad": max((ga[n] - gb[n]).abs().max().item() for n in ga) / scale,
            "torch_threads": torch.get_num_threads()}


def child(args: list[str], out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args, "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}", "args": args}
    return json.loads(out.read_text())


def table(rows: list[dict]) -> list[str]:
    lines = ["| model (vocab) | B x P + C | scored tokens | B x C x V x 4 (float32 logits) | backbone tensor peak | "
             "unfused: tensor peak / above backbone / RSS growth | fused: tensor peak / above backbone / RSS growth | "
             "head above backbone, fused / unfused |", "|" + "---|" * 8]
    for (name, b, p, c), ways in _grouped(rows).items():
        vocab = SHAPES[name][1]["vocab_size"]
        base = ways["backbone"]["tensor_peak_bytes"]
        u, f = ways["unfused"], ways["fused"]
        cells = [f"{name} ({vocab:,})", f"{b} x {p} + {c}", f"{b * c:,}", f"{b * c * vocab * 4 / MIB:,.0f} MiB",
                 f"{base / MIB:,.0f} MiB"]
        for w in (u, f):
            cells.append(f"{w['tensor_peak_bytes'] / MIB:,.0f} / {(w['tensor_peak_bytes'] - base) / MIB:,.0f} / "
                         f"{w['rss_growth_bytes'] / MIB:,.0f} MiB")
        cells.append(f"{(f['tensor_peak_bytes'] - base) / (u['tensor_peak_bytes'] - base):.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _grouped(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        if "way" in r and r["way"] in WAYS:
            out.setdefault((r["model"], r["batch"], r["prompt"], r["completion"]), {})[r["way"]] = r
    return {k: v for k, v in out.items() if len(v) == len(WAYS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,qwen2-152k")
    ap.add_argument("--sizes", default="8x64x256,4x64x1024", help="BxPxC, comma-separated")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, name, *rest = args.child
        result = verify(name, *map(int, rest)) if kind == "verify" else measure(name, kind, *map(int, rest))
        args.out.write_text(json.dumps(result))
        return
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for size in args.sizes.split(","):
                b, p, c = (int(x) for x in size.split("x"))
                for way in WAYS:
                    rows.append(child([way, name, str(b), str(p), str(c)], Path(tmp) / "r.json"))
                    print(json.dumps(rows[-1]), flush=True)
            rows.append(child(["verify", name, "64", "256"], Path(tmp) / "r.json"))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
