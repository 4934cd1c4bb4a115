#!/usr/bin/env bash
# Several GPUs, one recipe (issue #15), for benchmarks/RESULTS.md. Needs >= 2 CUDA GPUs on one machine and
# `pip install -e '.[unsloth]'`. A random-weight Llama-3.1-8B-sized model built from its config (no download) trains
# the same global batch of 8 rows (seq 1024) four ways, each in a fresh process group:
#   1gpu-hf      1 GPU,  batch 2 x grad_accum 4, hf backend            (the reference)
#   ddp-hf       N GPUs, batch 2 x grad_accum 4/N, hf backend          (DDP: a full copy per GPU)
#   ddp-unsloth  N GPUs, the same with the unsloth backend
#   fsdp-hf      N GPUs, the same with strategy fsdp (FSDP-QLoRA: bnb_4bit_quant_storage=bf16, FSDP2)
# then a SIGINT mid-run of fsdp-hf and its resume (sharded checkpoint). For each run it prints tokens/s, each rank's
# peak CUDA memory (max allocated) next to `qlora-kit plan --nproc N --strategy ...`'s per-GPU prediction, the
# loss at every logged step against the 1-GPU run (max |difference|), and whether the resumed losses match.
#   benchmarks/bench_gpu_multi.sh [OUT_DIR] [NPROC]        (defaults: benchmarks/results/gpu-multi, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-benchmarks/results/gpu-multi}")
n=${2:-2}
bin=${QLORA_KIT:-qlora-kit}
py=${PYTHON:-python}
mkdir -p "$out"
model="$out/model-llama-3.1-8b"
[ -d "$model" ] || "$py" benchmarks/make_model.py "$model" --preset llama-3.1-8b --device cuda
common=(--set model.name="$model" --set model.max_seq_length=1024 --set data.path=builtin:tiny-demo
        --set data.eval_path=null --set merge.enabled=false --set export.enabled=false --set eval.enabled=false
        --set train.max_steps=30 --set train.logging_steps=1 --set train.save_steps=1000 --set train.batch_size=2
        --set output.dir="$out/runs")
accum=$((8 / (2 * n)))
run() {  # NAME BACKEND STRATEGY NPROC GRAD_ACCUM
  local name=$1 backend=$2 strategy=$3 nproc=$4 ga=$5
  "$bin" plan recipes/tiny-demo.yaml --set model.name="$model" --seq-len 1024 --batch-size 2 --backend "$backend" \
    --set train.grad_accum="$ga" --device cuda ${strategy:+--nproc "$nproc" --strategy "$strategy"} --json \
    > "$out/plan-$name.json"
  "$bin" train recipes/tiny-demo.yaml "${common[@]}" --set output.name="$name" --set model.backend="$backend" \
    --set train.grad_accum="$ga" ${strategy:+--set distributed.strategy="$strategy" --nproc "$nproc"} --overwrite \
    > "$out/$name.log" 2>&1 || echo "$name failed: see $out/$name.log"
}
run 1gpu-hf hf "" 1 4
run ddp-hf hf ddp "$n" "$accum"
run ddp-unsloth unsloth ddp "$n" "$accum"
run fsdp-hf hf fsdp "$n" "$accum"
# Interrupt FSDP mid-run (SIGINT to the launcher), then resume it: the losses must continue as fsdp-hf's did.
"$bin" train recipes/tiny-demo.yaml "${common[@]}" --set output.name=fsdp-resumed --set model.backend=hf \
  --set train.grad_accum="$accum" --set distributed.strategy=fsdp --nproc "$n" --overwrite > "$out/fsdp-resumed.log" 2>&1 &
pid=$!
until grep -q '"step": *10\b\|"step":10,' "$out/runs/fsdp-resumed/events.jsonl" 2>/dev/null; do sleep 1; done
kill -INT $pid; wait $pid || echo "fsdp-resumed: interrupted, exit $?"
"$bin" train recipes/tiny-demo.yaml "${common[@]}" --set output.name=fsdp-resumed --set model.backend=hf \
  --set train.grad_accum="$accum" --set distributed.strategy=fsdp --nproc "$n" --resume >> "$out/fsdp-resumed.log" 2>&1
"$py" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def losses(name):
    lines = (out / "runs" / name / "events.jsonl").read_text().splitlines()
    return {e["step"]: e["loss"] for e in map(json.loads, lines) if e["event"] == "step"}
ref = losses("1gpu-hf")
print("| run | tokens/s | peak per rank (GiB, measured) | plan per GPU (GiB) | max abs loss diff vs 1 GPU |")
print("|---|---|---|---|---|")
for name in ("1gpu-hf", "ddp-hf", "ddp-unsloth", "fsdp-hf"):
    m = out / "runs" / name / "metrics.json"
    if not m.is_file():
        print(f"| {name} | failed | | | |"); continue
    m = json.loads(m.read_text())
    peaks = [r["peak_memory_bytes"] for r in m.get("ranks", [])] or [m["peak_memory_bytes"]]
    plan = json.loads((out / f"plan-{name}.json").read_text())["needed_bytes"]
    diff = max(abs(losses(name)[s] - ref[s]) for s in ref)
    print(f"| {name} | {m['tokens_per_second']:,.0f} | {', '.join(f'{p / 2**30:.2f}' for p in peaks)} "
          f"| {plan / 2**30:.2f} | {diff:.2e} |")
a, b = losses("fsdp-hf"), losses("fsdp-resumed")
print("fsdp resume reproduces the uninterrupted losses:", sorted(a) == sorted(b)
      and all(abs(a[s] - b[s]) < 1e-4 for s in a))
PY
