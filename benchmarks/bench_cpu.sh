#!/usr/bin/env bash
# CPU sweeps behind benchmarks/RESULTS.md ("Backends on CPU", "Preference tuning (DPO) on CPU"): unsloth vs hf,
# each cell a fresh process.
#   benchmarks/bench_cpu.sh [OUT_DIR]        (default: benchmarks/results)
#   SWEEPS=dpo benchmarks/bench_cpu.sh       (only the DPO sweeps; SWEEPS=sft only the SFT ones; default: both)
# 1. tiny: the demo's built-in 2-layer model (vocab 512), seq 128-1024, batch 8.
# 2. medium: a random 4-layer Llama, hidden 512, vocab 32,000 (45M parameters; the vocabulary makes logits and
#    the loss a real share of memory, as in real models), seq 256-1024, batch 2.
# 3. dpo: sft vs dpo cells on both models (synthetic pairs: prompt a quarter, chosen and rejected of equal length).
# Run it on an otherwise idle machine: 2 busy cores make PyTorch's spinning threads 10-100x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
bin=${QLORA_KIT:-.venv/bin/qlora-kit}
py=${PYTHON:-.venv/bin/python}
sweeps=${SWEEPS:-sft dpo}
mkdir -p "$out"
model=$(mktemp -d)/medium-llama
"$py" benchmarks/make_model.py "$model" --layers 4 --hidden 512 --intermediate 1408 --vocab 32000 --dtype float32
if [[ " $sweeps " == *" sft "* ]]; then
  "$bin" bench recipes/tiny-demo.yaml --seq-lens 128,256,512,1024 --batch-sizes 8 --steps 20 --warmup 5 \
    --repeats 3 --out "$out/cpu-tiny" --overwrite
  "$bin" bench recipes/tiny-demo.yaml --set model.name="$model" --seq-lens 256,512,1024 --batch-sizes 2 \
    --steps 10 --warmup 3 --repeats 3 --out "$out/cpu-medium" --overwrite
fi
if [[ " $sweeps " == *" dpo "* ]]; then
  "$bin" bench recipes/tiny-demo.yaml --methods sft,dpo --seq-lens 128,256 --batch-sizes 4 --steps 6 --warmup 2 \
    --repeats 3 --out "$out/cpu-dpo-tiny" --overwrite
  "$bin" bench recipes/tiny-demo.yaml --set model.name="$model" --methods sft,dpo --seq-lens 256 --batch-sizes 2 \
    --steps 5 --warmup 2 --repeats 2 --out "$out/cpu-dpo-medium" --overwrite
fi
rm -rf "$(dirname "$model")"
