#!/usr/bin/env bash
# Head-knockout sweep throughput (issue 5): the shard executor, the same runtime run naively (one
# full forward per trial) and a TransformerLens-style Python loop (bench/tl_style_sweep.py), on the
# demo model and on a random 12-layer d768 Llama-shaped model, with interventions at the
# post-instruction positions and at every position; plus the float32 matmul peak. Builds nothing.
#
#   bench/run_sweep_bench.sh [BUILD_DIR]        (default: build; needs sweep_bench and knockout-worker)
#   ninja -C build -j2 sweep_bench knockout-worker && bench/run_sweep_bench.sh build
#
# Environment: THREADS (2), OUT_DIR (a new temp dir), PYTHON (/usr/bin/python3), MODELS ("demo big"),
# POSITIONS ("post all"), SKIP_PYTHON=1, SKIP_NAIVE=1; ROWS_POST ("layer 128 256 512 1024") and ROWS_ALL
# ("layer 128"): the max_batch_rows values tried, each in its own process so that peak RSS is per
# run ("layer" = heads x prompts, the rows of one layer's trials: 64 for the demo model, 96 for the
# big one; "all" = every row in one chunk); REPEAT (3) timed executor runs per process, best kept
# (REPEAT_ALL (2) for all positions, REPEAT_LARGE (1) for 512 rows and more, which are slow);
# NAIVE_REPEAT (1); PY_MAX_TRIALS_BIG (48: the Python loop times the first 48 trials of the big
# model and extrapolates); QUIET_WAIT (120 s to wait for an idle machine before each run),
# MAX_OTHER (0.05) and RETRIES (2): bench/measure.py reruns a run while other processes used more
# than MAX_OTHER of the CPU during it.
# The Python baseline runs twice per case, with glibc malloc's defaults and with the tuning that
# knockout-worker and sweep_bench apply (GLIBC_TUNABLES); speed-ups are against the faster one.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-/usr/bin/python3}
REPEAT=${REPEAT:-3}
REPEAT_ALL=${REPEAT_ALL:-2}
REPEAT_LARGE=${REPEAT_LARGE:-1}
ROWS_POST=${ROWS_POST:-"layer 128 256 512 1024"}
ROWS_ALL=${ROWS_ALL:-"layer 128"}
NAIVE_REPEAT=${NAIVE_REPEAT:-1}
PY_MAX_TRIALS_BIG=${PY_MAX_TRIALS_BIG:-48}
QUIET_WAIT=${QUIET_WAIT:-120}
MAX_OTHER=${MAX_OTHER:-0.05}
RETRIES=${RETRIES:-2}
MODELS=${MODELS:-"demo big"}
POSITIONS=${POSITIONS:-"post all"}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/sweep-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
BENCH="$BUILD/bench/sweep_bench"
WORKER="$BUILD/worker/knockout-worker"
for f in "$BENCH" "$WORKER"; do
  [[ -x $f ]] || { echo "run_sweep_bench.sh: $f missing (ninja -C $BUILD sweep_bench knockout-worker)" >&2; exit 2; }
done
TUNED="glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483648"
# Runs a Python script (argv[1:]) and adds its peak RSS (ru_maxrss) to the file after --json.
PY_RSS='
import json, resource, runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code or 0
if code == 0 and "--json" in sys.argv:
    path = sys.argv[sys.argv.index("--json") + 1]
    data = json.load(open(path))
    data["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    json.dump(data, open(path, "w"))
sys.exit(code)
'
measure() {  # measure NAME CMD...: stdout -> $OUT_DIR/NAME.log, meta -> NAME.log.meta.json
  local name=$1; shift
  echo "[$(date +%T)] $name (loadavg $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$PYTHON" bench/measure.py --out "$OUT_DIR/$name.log" --wait-quiet "$QUIET_WAIT" \
    --max-other "$MAX_OTHER" --retries "$RETRIES" -- "$@"
}

BIG="$OUT_DIR/llama12-d768"
# shellcheck source=bench/random_llama.sh
source bench/random_llama.sh
if [[ $MODELS == *big* ]]; then make_random_llama "$BIG" "$WORKER"; fi

echo "output: $OUT_DIR; $(lscpu | grep 'Model name' | sed 's/  */ /g'); $(nproc) cores; threads $THREADS" >&2
measure peak "$BENCH" --mode peak --threads "$THREADS" --repeat 10 --json "$OUT_DIR/peak.json"

for model in $MODELS; do
  if [[ $model == demo ]]; then dir=models/demo-refusal; py_max=""; else dir=$BIG; py_max="--max-trials $PY_MAX_TRIALS_BIG"; fi
  measure "$model.clean" "$BENCH" --mode clean --model "$dir" --threads "$THREADS" --repeat "$REPEAT" \
    --json "$OUT_DIR/$model.clean.json"
  for pos in $POSITIONS; do
    flag=""; rows=$ROWS_POST; repeat=$REPEAT
    if [[ $pos == all ]]; then flag="--all-positions"; rows=$ROWS_ALL; repeat=$REPEAT_ALL; fi
    for r in $rows; do
      n=$repeat
      if [[ $r == all ]] || { [[ $r =~ ^[0-9]+$ ]] && (( r >= 512 )); }; then n=$REPEAT_LARGE; fi
      measure "$model.$pos.executor.$r" "$BENCH" --mode executor --model "$dir" --threads "$THREADS" \
        --repeat "$n" --batch-rows "$r" $flag --json "$OUT_DIR/$model.$pos.executor.$r.json"
    done
    if [[ -z ${SKIP_NAIVE:-} ]]; then
      measure "$model.$pos.naive" "$BENCH" --mode naive --model "$dir" --threads "$THREADS" \
        --repeat "$NAIVE_REPEAT" $flag --json "$OUT_DIR/$model.$pos.naive.json"
    fi
    # Same shapes as sweep_bench: 8 prompts x 48 tokens, the last 6 zeroed (random ids; the work is
    # the same); refusal id 40 is "I", the token sweep_bench's shard names.
    if [[ -z ${SKIP_PYTHON:-} ]]; then
      for malloc in default tuned; do
        env_cmd=(env)
        [[ $malloc == tuned ]] && env_cmd=(env GLIBC_TUNABLES=$TUNED)
        measure "$model.$pos.python.$malloc" "${env_cmd[@]}" "$PYTHON" -c "$PY_RSS" bench/tl_style_sweep.py \
          --model "$dir" --prompts 8 --tokens 48 --intervened 6 --threads "$THREADS" --refusal-ids 40 \
          $flag $py_max --json "$OUT_DIR/$model.$pos.python.$malloc.json"
      done
    fi
  done
done

# The summary: one markdown table (best max_batch_rows per case) and the executor's rows table.
"$PYTHON" - "$OUT_DIR" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
def other(name):  # CPU used by other processes during the run (bench/measure.py), as a percentage
    m = os.path.join(out, name.replace(".json", ".log") + ".meta.json")
    return f"{100 * json.load(open(m))['other_cpu_frac']:.1f}%" if os.path.exists(m) else "-"
peak = load("peak.json")
peak_g = peak["peak_gflops"] if peak else None
if peak:
    print(f"\nfloat32 matmul peak ({peak['threads']} threads): " +
          ", ".join(f"{s['name']}: {s['gflops']:.1f}" for s in peak["shapes"]) +
          f" GFLOP/s; peak used below = {peak_g:.1f} GFLOP/s (other-CPU {other('peak.json')})\n")
for model in ("demo", "big"):
    c = load(f"{model}.clean.json")
    if c:
        r = c["runs"][0]
        print(f"{model}: clean pass + tokenisation {r['best_seconds']*1000:.1f} ms ({r['gflop_clean']:.2f} GFLOP, "
              f"{r['gflops_executed']:.1f} GFLOP/s)")
print()
print("| model | positions | impl | trials/s | speed-up vs Python | GFLOP/s executed (useful) | % of peak | peak RSS MiB | other-CPU |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
rows_tables = []
for model in ("demo", "big"):
    for pos in ("post", "all"):
        py = []
        for malloc in ("default", "tuned"):
            p = load(f"{model}.{pos}.python.{malloc}.json")
            if p: py.append((p["trials_per_s"], malloc, p, other(f"{model}.{pos}.python.{malloc}.json")))
        py_best = max(py)[0] if py else None
        ex = []
        for f in sorted(glob.glob(os.path.join(out, f"{model}.{pos}.executor.*.json"))):
            if f.endswith(".meta.json"): continue
            j = json.load(open(f)); j["_other"] = other(os.path.basename(f)); ex.append(j)
        if not ex and not py: continue
        label = "demo (6L d256)" if model == "demo" else "random 12L d768 V32000"
        posl = "post-inst (last 6 of 48)" if pos == "post" else "all 48"
        if ex:
            best = max(ex, key=lambda j: j["best_trials_per_s"])
            r = best["runs"][0]
            sp = f"{r['trials_per_s']/py_best:.1f}x" if py_best else "-"
            pk = f"{100*r['gflops_executed']/peak_g:.0f}%" if peak_g else "-"
            print(f"| {label} | {posl} | executor (max_batch_rows {r['max_batch_rows']}) | {r['trials_per_s']:.2f} | {sp} | "
                  f"{r['gflops_executed']:.1f} ({r['gflops_useful']:.1f}) | {pk} | {best['peak_rss_mib']:.0f} | {best['_other']} |")
            rows_tables.append((label, posl, ex))
        n = load(f"{model}.{pos}.naive.json")
        if n:
            r = n["runs"][0]
            sp = f"{r['trials_per_s']/py_best:.2f}x" if py_best else "-"
            pk = f"{100*r['gflops_executed']/peak_g:.0f}%" if peak_g else "-"
            print(f"| {label} | {posl} | runtime, naive (full forward per trial) | {r['trials_per_s']:.2f} | {sp} | "
                  f"{r['gflops_executed']:.1f} | {pk} | {n['peak_rss_mib']:.0f} | {other(f'{model}.{pos}.naive.json')} |")
        for tps, malloc, p, oc in sorted(py, reverse=True):
            ext = "" if p["trials"] == p["total_trials"] else f", {p['trials']} of {p['total_trials']} trials timed"
            print(f"| {label} | {posl} | Python TL-style (malloc {malloc}{ext}) | {tps:.3f} | {tps/py_best:.2f}x | - | - | "
                  f"{p.get('peak_rss_mib', '-')} | {oc} |")
print()
for label, posl, ex in rows_tables:
    print(f"{label}, {posl}: executor by max_batch_rows")
    print("| max_batch_rows | best s | trials/s | GFLOP executed | GFLOP useful | GFLOP/s executed | % of peak | peak RSS MiB | runs s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for j in sorted(ex, key=lambda j: j["runs"][0]["max_batch_rows"]):
        r = j["runs"][0]
        pk = f"{100*r['gflops_executed']/peak_g:.0f}%" if peak_g else "-"
        print(f"| {r['max_batch_rows']} | {r['best_seconds']:.2f} | {r['trials_per_s']:.2f} | {r['gflop_executed']:.0f} | "
              f"{r['gflop_useful']:.0f} | {r['gflops_executed']:.1f} | {pk} | {j['peak_rss_mib']:.0f} | "
              f"{', '.join(f'{s:.2f}' for s in r['seconds'])} |")
    print()
EOF
