#!/usr/bin/env bash
# SAE latent knockouts vs direction knockouts at the same hooks and positions (issue 13), through
# the shard executor (bench/sae_sweep_bench.cc): the demo model with its shipped SAEs, and a random
# 12-layer d768 Llama-shaped model with random 16k-latent SAEs (TopK k 32 and JumpReLU), each
# without and with backup readings. Builds nothing.
#
#   ninja -C build -j2 sae_sweep_bench knockout-worker && bench/run_sae_sweep_bench.sh build
#
# Environment: THREADS (2), REPEAT (3), LIMIT (16 prompts of harmful_val), UNITS (8 trials per
# layer), LAYERS (1,2,3), OUT_DIR (a new temp dir), MODELS ("demo big"), POSITIONS ("all post_inst").
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-3}
LIMIT=${LIMIT:-16}
UNITS=${UNITS:-8}
LAYERS=${LAYERS:-1,2,3}
MODELS=${MODELS:-"demo big"}
POSITIONS=${POSITIONS:-"all post_inst"}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/sae-sweep-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
BENCH="$BUILD/bench/sae_sweep_bench"
WORKER="$BUILD/worker/knockout-worker"
PROMPTS=experiments/prompts/demo/harmful_val.jsonl
for f in "$BENCH" "$WORKER"; do
  [[ -x $f ]] || { echo "run_sae_sweep_bench.sh: $f missing (ninja -C $BUILD sae_sweep_bench knockout-worker)" >&2; exit 2; }
done
BIG="$OUT_DIR/llama12-d768"
# shellcheck source=bench/random_llama.sh
source bench/random_llama.sh
if [[ $MODELS == *big* ]]; then make_random_llama "$BIG" "$WORKER"; fi
echo "output: $OUT_DIR; $(lscpu | grep 'Model name' | sed 's/  */ /g'); $(nproc) cores; threads $THREADS" >&2
common=(--prompts "$PROMPTS" --limit "$LIMIT" --units "$UNITS" --layers "$LAYERS" --threads "$THREADS" --repeat "$REPEAT")
for model in $MODELS; do
  for positions in $POSITIONS; do
    if [[ $model == demo ]]; then
      dir=models/demo-refusal
      saes=("--sae-root models/demo-refusal/saes")
    else
      dir=$BIG
      saes=("--sae-latents 16384 --sae-arch topk --k 32" "--sae-latents 16384 --sae-arch jumprelu")
    fi
    "$BENCH" --model "$dir" --mode direction --positions "$positions" "${common[@]}" \
      --json "$OUT_DIR/$model-$positions-direction.json"
    i=0
    for sae in "${saes[@]}"; do
      for mode in latent latent_backups; do
        # shellcheck disable=SC2086
        "$BENCH" --model "$dir" --mode "$mode" --positions "$positions" $sae "${common[@]}" \
          --json "$OUT_DIR/$model-$positions-$mode-$i.json"
      done
      i=$((i + 1))
    done
  done
done
