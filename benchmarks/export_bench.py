"""GGUF export seconds and peak RSS per type, each in a fresh process.

    .venv/bin/python benchmarks/export_bench.py [--model DIR] [--quant f32,f16,q8_0,q4_k_m] [--verify]

Without --model, builds a random Llama (9 layers, hidden 1024, intermediate 2816, vocab = the tiny tokenizer's,
about 100M params) with qlora-kit's tiny byte-level BPE tokenizer. Peak RSS is the export process's own VmHWM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import sys, time, json
import torch, transformers, gguf, llama_cpp  # the fixed cost every export pays
from qlora_kit.cli import main
from qlora_kit.memory import peak_rss_bytes
t0 = time.time()
code = main(sys.argv[1:]) if sys.argv[1:] else 0  # no arguments: the import-only baseline
print(json.dumps({"code": code, "seconds": time.time() - t0, "peak": peak_rss_bytes()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a Hugging Face model directory (default: build a random Llama)")
    ap.add_argument("--quant", default="f32,f16,q8_0,q4_k_m")
    ap.add_argument("--verify", action="store_true", help="include llama.cpp verification in the timing")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qlora-kit-export-bench-"))
    try:
        model = Path(args.model) if args.model else _build(root)
        size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        print(f"model: {model} ({size / 2**20:,.0f} MiB safetensors); verification {'on' if args.verify else 'off'}\n")
        base = json.loads(subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1])["peak"]
        print(f"import-only process peak RSS: {base / 2**20:,.0f} MiB\n")
        print("| type | seconds | peak RSS (MiB) | above imports (MiB) | file (MiB) |\n|---|---|---|---|---|")
        for quant in args.quant.split(","):
            out = root / f"gguf-{quant}"
            cmd = ["export", str(model), "--quant", quant, "--out", str(out)] + ([] if args.verify else ["--no-verify"])
            result = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True)
            if result.returncode != 0:
                print(f"| {quant} | failed: {result.stderr.strip().splitlines()[-1:]} | | | |")
                continue
            r = json.loads(result.stdout.strip().splitlines()[-1])
            if r["code"] != 0:  # e.g. verification refused the file (random models have near-tie logits)
                print(f"| {quant} | failed: {result.stderr.strip().splitlines()[-1:]} | | | |")
                continue
            file = next(out.glob("*.gguf"))
            print(f"| {quant} | {r['seconds']:.1f} | {r['peak'] / 2**20:,.0f} | {(r['peak'] - base) / 2**20:,.0f} | "
                  f"{file.stat().st_size / 2**20:,.1f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _build(root: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from _models import random_llama

    from qlora_kit.model.builtin import materialize

    tokenizer = materialize("builtin:tiny-llama")
    vocab = json.loads((tokenizer / "config.json").read_text())["vocab_size"]
    random_llama(root / "model", 9, 1024, 2816, vocab=vocab, tokenizer_from=tokenizer)
    return root / "model"


if __name__ == "__main__":
    main()
