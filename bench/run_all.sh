#!/usr/bin/env bash
# Runs the runtime benchmarks of issue 2 and prints a markdown summary (see bench/README.md).
#
#   bench/run_all.sh                      # threads 1 and 2, 5 timed forwards each, 1 round
#   THREADS="1 2" ITERS=5 ROUNDS=3 bench/run_all.sh
#
# Environment: BUILD_DIR (default build), THREADS, ITERS, ROUNDS, PYTHON (/usr/bin/python3, which
# has Debian's torch), OUT_DIR (raw results; default a new temp dir), QUIET_WAIT (seconds to wait
# for an idle machine before each run, default 120; 0 disables), MAX_OTHER (0.05) and RETRIES
# (2): rerun a benchmark whose run other processes disturbed, SKIP_BUILD=1, MALLOC_TUNED=1
# (runs every benchmark, ours and the reference alike, with glibc malloc's mmap threshold fixed at
# 32 MiB and trimming effectively off: see docs/benchmarks.md for why this matters here).
# Benchmarks run one at a time; on a 2-core machine, do not run anything else meanwhile.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
THREADS=${THREADS:-"1 2"}
ITERS=${ITERS:-5}
ROUNDS=${ROUNDS:-1}
PYTHON=${PYTHON:-/usr/bin/python3}
QUIET_WAIT=${QUIET_WAIT:-120}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/knockout-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
# Each run waits for an idle machine and is repeated (up to RETRIES times) if other processes
# took more than MAX_OTHER of the CPU meanwhile.
MEASURE=("$PYTHON" "$ROOT/bench/measure.py" --max-other "${MAX_OTHER:-0.05}" --retries "${RETRIES:-2}")
MALLOC_NOTE="glibc malloc defaults"
if [[ "${MALLOC_TUNED:-0}" == 1 ]]; then
  export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483648
  MALLOC_NOTE="GLIBC_TUNABLES=$GLIBC_TUNABLES"
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  ninja -C "$BUILD_DIR" -j1 forward_bench load_rss_bench >&2
fi

# Same shapes as forward_bench (bench/bench_model.h).
REF_ARGS=(--layers 12 --hidden 768 --heads 12 --kv-heads 12 --intermediate 2048 --vocab 32000
          --batch 8 --seq 128 --iters "$ITERS")

for round in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    echo "round $round, $t thread(s): forward_bench" >&2
    KNOCKOUT_BENCH_THREADS=$t KNOCKOUT_BENCH_ITERS=$ITERS \
      "${MEASURE[@]}" --wait-quiet "$QUIET_WAIT" --out "$OUT_DIR/ours-t$t-r$round.json" -- \
      "$BUILD_DIR/bench/forward_bench" --benchmark_format=json
    echo "round $round, $t thread(s): hf_reference.py bench" >&2
    "${MEASURE[@]}" --wait-quiet "$QUIET_WAIT" --out "$OUT_DIR/ref-t$t-r$round.json" -- \
      "$PYTHON" "$ROOT/tests/reference/hf_reference.py" bench "${REF_ARGS[@]}" --threads "$t"
  done
done

echo "load_rss_bench" >&2
MODEL_DIR=$(mktemp -d /tmp/knockout-rss-model.XXXXXX)
trap 'rm -rf "$MODEL_DIR"' EXIT
"$BUILD_DIR/bench/load_rss_bench" write "$MODEL_DIR/model" > "$OUT_DIR/write.json"
for dtype in f32 bf16; do  # each load in a fresh process
  "$BUILD_DIR/bench/load_rss_bench" load "$MODEL_DIR/model" --dtype "$dtype" > "$OUT_DIR/rss-$dtype.json"
done

echo "raw results: $OUT_DIR" >&2
{
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores," \
       "$(awk '/MemTotal/{printf "%.0f", $2/1048576}' /proc/meminfo) GiB; $(date -u +%F); threads: $THREADS; iters: $ITERS; $MALLOC_NOTE."
  echo
  "$PYTHON" "$ROOT/bench/summarize.py" "$OUT_DIR"
} | tee "$OUT_DIR/summary.md"
