#!/usr/bin/env bash
# A head sweep on a 1B-parameter model in bf16 on CPU (issue 15): a random model of
# Llama-3.2-1B's shape (load_rss_bench write --size 1b --storage bf16, 2.47 GB) with the demo
# tokenizer beside it (its 4,096 ids are a subset of the 128,256-row embedding), then one TRIALS
# shard through the shard executor (sweep_bench --mode executor --dtype bfloat16): every head of
# LAYERS (default 0,8,15: the first, a middle and the last layer, 3 x 32 = 96 trials) zero-ablated
# at the 6 post-instruction tokens of 40-token prompts, compensation on (DE, the norm's effect
# and the downstream readings), PROMPTS prompts (128) in blocks of BATCH_ROWS (128), in a fresh
# process: trials/s, (trial, prompt) rows/s and peak RSS (ru_maxrss). The whole sweep (all 16
# layers, 512 trials) costs about LAYERS' average per trial; see docs/benchmarks.md.
# Usage: bench/run_1b_sweep_bench.sh [BUILD_DIR]   (MODEL_DIR=reuse a written model;
#        PROMPTS, BATCH_ROWS, LAYERS, THREADS, JSON=OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
prompts=${PROMPTS:-128}
batch_rows=${BATCH_ROWS:-128}
layers=${LAYERS:-0,8,15}
ninja -C "$build" sweep_bench load_rss_bench >/dev/null
dir=${MODEL_DIR:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
fi
if [ ! -f "$dir/model.safetensors" ]; then
  "$build/bench/load_rss_bench" write "$dir" --size 1b --storage bf16 >/dev/null
fi
cp models/demo-refusal/tokenizer.json models/demo-refusal/tokenizer_config.json "$dir/"
json=${JSON:-$(mktemp)}
"$build/bench/sweep_bench" --mode executor --model "$dir" --dtype bfloat16 \
  --threads "${THREADS:-2}" --prompts "$prompts" --tokens 40 --intervened 6 --compensation \
  --layers "$layers" --repeat 1 --batch-rows "$batch_rows" --json "$json"
/usr/bin/python3 - "$json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
r = j["runs"][0]
trials = j["layers"] * j["heads"]
rows = trials * j["prompts"]
s = r["best_seconds"]
print("| trial layers | trials | prompts | rows | seconds | trials/s | rows/s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
print(f"| {j['layers']} of {j['model_layers']} | {trials} | {j['prompts']} | {rows} | {s:.1f} | "
      f"{trials / s:.3f} | {rows / s:.1f} | {j['peak_rss_mib']:.0f} |")
PY
