#!/usr/bin/env bash
# Train the same recipe with each backend in a fresh process and print one Markdown row per backend from the
# run's metrics.json: tokens/s (mean over logged intervals), peak memory, train seconds, first/final loss.
#   benchmarks/train_backends.sh [RECIPE] [extra --set arguments...]
# Default recipe: recipes/tiny-demo.yaml (CPU, offline). Runs go to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-recipes/tiny-demo.yaml}; shift || true
out=$(mktemp -d)
bin=${QLORA_KIT:-.venv/bin/qlora-kit}
echo "| backend | device | tokens/s | peak memory (MiB) | train s | first loss | final loss |"
echo "|---|---|---|---|---|---|---|"
for backend in unsloth hf; do
  "$bin" train "$recipe" --set model.backend=$backend --set output.dir="$out" --set output.name=$backend "$@" \
    > "$out/$backend.log" 2>&1 || { echo "| $backend | failed: see $out/$backend.log |"; continue; }
  python3 - "$out/$backend/metrics.json" "$backend" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {m['device']} | {m['tokens_per_second']:,.0f} | {m['peak_memory_bytes'] / 2**20:,.0f} "
      f"({m['peak_memory_kind']}) | {m['train_seconds']:.1f} | {m['first_loss']:.4f} | {m['final_loss']:.4f} |")
PY
done
rm -rf "$out"
