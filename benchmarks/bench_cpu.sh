#!/usr/bin/env bash
# CPU sweeps behind benchmarks/RESULTS.md ("Backends on CPU"): unsloth vs hf, each cell a fresh process.
#   benchmarks/bench_cpu.sh [OUT_DIR]        (default: benchmarks/results)
# 1. tiny: the demo's built-in 2-layer model (vocab 512), seq 128-1024, batch 8.
# 2. medium: a random 4-layer Llama, hidden 512, vocab 32,000 (45M parameters; the vocabulary makes logits and
#    the loss a real share of memory, as in real models), seq 256-1024, batch 2.
# Run it on an otherwise idle machine: 2 busy cores make PyTorch's spinning threads 10-100x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
bin=${QLORA_KIT:-.venv/bin/qlora-kit}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
"$bin" bench recipes/tiny-demo.yaml --seq-lens 128,256,512,1024 --batch-sizes 8 --steps 20 --warmup 5 --repeats 3 \
  --out "$out/cpu-tiny" --overwrite
model=$(mktemp -d)/medium-llama
"$py" benchmarks/make_model.py "$model" --layers 4 --hidden 512 --intermediate 1408 --vocab 32000 --dtype float32
"$bin" bench recipes/tiny-demo.yaml --set model.name="$model" --seq-lens 256,512,1024 --batch-sizes 2 --steps 10 \
  --warmup 3 --repeats 3 --out "$out/cpu-medium" --overwrite
rm -rf "$(dirname "$model")"
