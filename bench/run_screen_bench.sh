#!/usr/bin/env bash
# Attribution screening vs exhaustive exact knockouts (issue 16), through the shard executor
# (bench/screen_bench.cc): every head, 1,000 neurons and an SAE's latents (the demo model's
# shipped 1,024-latent SAE at layer 3; a random 16,384-latent TopK SAE at layer 6 of a random
# 12-layer d768 Llama-shaped model), zero ablation at post_inst, 16 prompts of harmful_val.
# Exhaustive sweeps of 16k latents are timed on a random sample (EXHAUSTIVE_SAMPLE units) and
# scaled to all of them. Builds nothing.
#
#   ninja -C build -j2 screen_bench knockout-worker && bench/run_screen_bench.sh build
#
# Environment: THREADS (2), LIMIT (16), METHODS ("atp atp_star integrated_gradients" on the demo
# heads; atp elsewhere), MODELS ("demo big"), EXHAUSTIVE_SAMPLE (512), OUT_DIR (a new temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
THREADS=${THREADS:-2}
LIMIT=${LIMIT:-16}
METHODS=${METHODS:-"atp atp_star integrated_gradients"}
MODELS=${MODELS:-"demo big"}
SAMPLE=${EXHAUSTIVE_SAMPLE:-512}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/screen-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
BENCH="$BUILD/bench/screen_bench"
WORKER="$BUILD/worker/knockout-worker"
PROMPTS=experiments/prompts/demo/harmful_val.jsonl
for f in "$BENCH" "$WORKER"; do
  [[ -x $f ]] || { echo "run_screen_bench.sh: $f missing (ninja -C $BUILD screen_bench knockout-worker)" >&2; exit 2; }
done
BIG="$OUT_DIR/llama12-d768"
# shellcheck source=bench/random_llama.sh
source bench/random_llama.sh
if [[ $MODELS == *big* ]]; then make_random_llama "$BIG" "$WORKER"; fi
echo "output: $OUT_DIR; $(lscpu | grep 'Model name' | sed 's/  */ /g'); $(nproc) cores; threads $THREADS" >&2
common=(--prompts "$PROMPTS" --limit "$LIMIT" --threads "$THREADS")
for model in $MODELS; do
  if [[ $model == demo ]]; then
    dir=models/demo-refusal
    latents=(--sae models/demo-refusal/saes/layer_3 --sae-layer 3)
    sample=0
  else
    dir=$BIG
    latents=(--sae-latents 16384 --sae-layer 6)
    sample=$SAMPLE
  fi
  for method in $METHODS; do
    [[ $model == demo || $method == atp ]] || continue
    "$BENCH" --model "$dir" --kind heads --method "$method" "${common[@]}" \
      --json "$OUT_DIR/$model-heads-$method.json"
  done
  "$BENCH" --model "$dir" --kind neurons --neurons 1000 "${common[@]}" --json "$OUT_DIR/$model-neurons.json"
  "$BENCH" --model "$dir" --kind latents "${latents[@]}" --exhaustive-sample "$sample" "${common[@]}" \
    --json "$OUT_DIR/$model-latents.json"
done
