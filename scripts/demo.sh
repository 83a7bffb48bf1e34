#!/usr/bin/env bash
# The main job (issue 2 stage): set up, build the worker, write a small random Llama checkpoint
# in the Hugging Face format, inspect it, and run a batched, left-padded forward pass on it.
# Later issues replace this with the demo sweep on the shipped demo model.
# Usage: scripts/demo.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
scripts/setup.sh "$build_dir" >/dev/null
cmake --build "$build_dir" -j2 --target knockout-worker
worker="$build_dir/worker/knockout-worker"
checkpoint="$build_dir/demo-random-llama"

"$worker" models init-random --out "$checkpoint" --layers 4 --hidden 128 --heads 4 --kv-heads 2 \
  --intermediate 344 --vocab 1024 --seed 42 --init-std 0.1 --dtype bf16
"$worker" models inspect "$checkpoint"
echo "last-position top-5 logits of three sequences (one left-padded batch):"
"$worker" forward --model "$checkpoint" --ids 1,17,93,404 --ids 5,6 --ids 1,2,3,4,5,6,7,8 \
  --top-k 5 --json
