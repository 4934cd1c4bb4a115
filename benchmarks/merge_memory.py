"""Merge time and peak RSS: qlora-kit's streaming merge vs a naive load-everything merge, same model and adapter.

    .venv/bin/python benchmarks/merge_memory.py [--layers 9] [--hidden 1024] [--intermediate 2816]

Builds a random Llama of the given size and a random LoRA adapter on all its linear layers (in a temp dir), then
runs each merge in a fresh process and reads that process's own peak RSS (VmHWM, see qlora_kit/runtime/memory.py):
  naive      transformers loads the fp32 model, peft applies the adapter, merge_and_unload(), save_pretrained()
  streaming  `qlora-kit merge --base original --no-verify` (same math as naive: W + s*B@A)
  streaming  `qlora-kit merge --base dequantized --no-verify` (adds the NF4 round trip)
plus an import-only process (the fixed cost both pay). Prints a Markdown table; also checks the naive and
streaming (original) outputs are equal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, time, json
mode, model, adapter, out, run = sys.argv[1:6]
import torch, transformers, peft, bitsandbytes, safetensors
t0 = time.time()
if mode == "naive":
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    m = PeftModel.from_pretrained(m, adapter).merge_and_unload()
    m.save_pretrained(out)
elif mode in ("original", "dequantized"):
    from qlora_kit.cli import main
    assert main(["merge", run, "--base", mode, "--no-verify", "--out", out, "--overwrite"]) == 0
seconds = time.time() - t0
from qlora_kit.runtime.memory import peak_rss_bytes  # VmHWM: ru_maxrss would include this driver's RSS
print(json.dumps({"seconds": seconds, "peak": peak_rss_bytes()}))
"""


def build(root: Path, layers: int, hidden: int, intermediate: int) -> int:
    from peft import LoraConfig, get_peft_model

    from _models import random_llama

    model = random_llama(root / "model", layers, hidden, intermediate)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.01)
    peft_model.save_pretrained(root / "adapter")
    run = root / "run"
    (run / "adapter").mkdir(parents=True)
    for f in (root / "adapter").iterdir():
        shutil.copy2(f, run / "adapter" / f.name)
    (run / "recipe.yaml").write_text(
        f"model: {{name: {root / 'model'}, dtype: float32}}\ndata: {{path: builtin:tiny-chat}}\n")
    (run / "run.json").write_text(json.dumps({"status": "complete", "base_model": str(root / "model")}))
    return sum(p.numel() for p in model.parameters())


def measure(mode: str, root: Path) -> dict:
    out = root / f"out-{mode}"
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(root / "model"), str(root / "adapter"), str(out),
                             str(root / "run")], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qlora-kit-merge-bench-"))
    try:
        params = build(root, args.layers, args.hidden, args.intermediate)
        size = sum(f.stat().st_size for f in (root / "model").glob("*.safetensors"))
        rows = {mode: measure(mode, root) for mode in ("imports", "naive", "original", "dequantized")}
        base = rows["imports"]["peak"]
        print(f"model: {params / 1e6:.0f}M params, {size / 2**20:,.0f} MiB fp32 safetensors; "
              f"import-only process peak RSS {base / 2**20:,.0f} MiB\n")
        print("| merge | seconds | peak RSS (MiB) | above imports (MiB) |\n|---|---|---|---|")
        for mode in ("naive", "original", "dequantized"):
            r = rows[mode]
            print(f"| {mode} | {r['seconds']:.1f} | {r['peak'] / 2**20:,.0f} | {(r['peak'] - base) / 2**20:,.0f} |")
        from safetensors.torch import load_file

        naive = {}
        for f in (root / "out-naive").glob("*.safetensors"):
            naive.update(load_file(f))
        ours = {}
        for f in (root / "out-original").glob("*.safetensors"):
            ours.update(load_file(f))
        worst = max((naive[k] - ours[k]).abs().max().item() for k in naive)
        print(f"\nnaive vs streaming (original base): {len(naive)} tensors, max |difference| {worst:.2e}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
