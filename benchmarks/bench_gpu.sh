#!/usr/bin/env bash
# GPU sweeps for benchmarks/RESULTS.md: Llama-3.2-1B- and Llama-3.1-8B-sized random-weight models built from their
# configs (no download), unsloth vs hf, seq 512-16k, batch 1, each cell a fresh process, plus the planner's
# verdict for a 24 GiB card. Then preference tuning ("Preference tuning (DPO)"): sft vs dpo cells of the same
# sizes, seq 512-4096 (a DPO row is two sequences, chosen and rejected, plus the reference forward), and the
# planner's DPO verdict for the same card. Needs a CUDA GPU and `pip install -e '.[unsloth]'` (Unsloth's CUDA
# dependencies).
#   benchmarks/bench_gpu.sh [OUT_DIR]        (default: benchmarks/results)
#   SWEEPS=dpo benchmarks/bench_gpu.sh       (only the DPO sweeps; SWEEPS=sft only the SFT ones; default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
bin=${QLORA_KIT:-qlora-kit}
py=${PYTHON:-python}
sweeps=${SWEEPS:-sft dpo}
mkdir -p "$out"
models=$(mktemp -d)
for preset in llama-3.2-1b llama-3.1-8b; do
  "$py" benchmarks/make_model.py "$models/$preset" --preset "$preset" --device cuda
  if [[ " $sweeps " == *" sft "* ]]; then
    "$bin" plan recipes/tiny-demo.yaml --set model.name="$models/$preset" --gpu rtx4090 --seq-len 2048 \
      --batch-size 1 | tee "$out/plan-$preset.txt"
    "$bin" bench recipes/tiny-demo.yaml --set model.name="$models/$preset" --device cuda \
      --seq-lens 512,1024,2048,4096,8192,16384 --batch-sizes 1 --steps 10 --warmup 3 \
      --out "$out/gpu-$preset" --overwrite
  fi
  if [[ " $sweeps " == *" dpo "* ]]; then
    # Synthetic pairs: each sequence prompt (a quarter) + answer = seq_len, chosen and rejected of equal length.
    "$bin" plan recipes/tiny-demo.yaml --set model.name="$models/$preset" --set train.method=dpo --gpu rtx4090 \
      --seq-len 2048 --batch-size 1 | tee "$out/plan-dpo-$preset.txt"
    "$bin" bench recipes/tiny-demo.yaml --set model.name="$models/$preset" --device cuda --methods sft,dpo \
      --seq-lens 512,1024,2048,4096 --batch-sizes 1 --steps 10 --warmup 3 \
      --out "$out/gpu-dpo-$preset" --overwrite
  fi
done
rm -rf "$models"
