#!/usr/bin/env bash
# Peak RSS and trials/s of one head-knockout shard (every head of the demo model, zero ablation at
# the post-instruction tokens, compensation on) with 32, 256 and 1,024 prompts, each in a fresh
# process (sweep_bench --mode executor; ru_maxrss cannot be reset). The shard executor runs its
# clean, reference and trial passes in blocks of --batch-rows prompts, so the peak should grow
# only with the stored per-prompt results, and trials/s should not fall with the prompt count.
# Usage: bench/run_prompt_memory_bench.sh [BUILD_DIR]   (PROMPTS="32 256 1024", BATCH_ROWS=128)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
prompts=${PROMPTS:-"32 256 1024"}
batch_rows=${BATCH_ROWS:-128}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ninja -C "$build" sweep_bench >/dev/null
echo "| prompts | trials | rows | seconds | trials/s | (trial, prompt) rows/s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for n in $prompts; do
  "$build/bench/sweep_bench" --mode executor --model models/demo-refusal --threads "${THREADS:-2}" \
    --prompts "$n" --tokens 40 --intervened 6 --compensation --repeat 1 \
    --batch-rows "$batch_rows" --json "$out/$n.json" >"$out/$n.log"
  /usr/bin/python3 - "$out/$n.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
r = j["runs"][0] if "runs" in j else j["results"][0]
trials = j["layers"] * j["heads"]
rows = trials * j["prompts"]
s = r["best_seconds"]
print(f"| {j['prompts']} | {trials} | {rows} | {s:.2f} | {trials / s:.2f} | {rows / s:.0f} | {j['peak_rss_mib']:.0f} |")
PY
done
