#!/usr/bin/env bash
# Issue 14's research: one recipe's knockout-aware phase over several seeds, on the same saved
# base, each measured by eval-demo, with a table of every run and each figure's range at the end
# (the model card's twelfth session: single runs at one seed differ by as much as recipes do).
#
#   scripts/demo-seed-spread.sh --base PHASES/after-safety --out DIR [--seeds 42,1,2,3] \
#       [--set KEY=VALUE ...]
#
# PHASES is a `train-demo --recipe hydra --phases-dir PHASES` run's directory (its safety phase,
# f32); the recipe is `--recipe hydra --seed 42` with the given overrides, its last phase
# reseeded with `phases[2].seed=S` for each S (42 is the recipe's own seed: the same computation
# as the run without it). Each run writes DIR/seed_S/ (checkpoint) and DIR/seed_S.eval.json;
# runs whose eval file exists are kept, so an interrupted spread resumes. The prompts are
# experiments/prompts/demo (corpus version 3, seed 42: the hydra recipe's own prompt sets).
# About 8 minutes a seed on 2 cores. KNOCKOUT_ORGANISM overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

organism=${KNOCKOUT_ORGANISM:-build/organism/knockout-organism}
base="" out="" seeds="42,1,2,3"
sets=()
usage() {
  echo "usage: $0 --base PHASES/after-safety --out DIR [--seeds S,S,...] [--set KEY=VALUE ...]" >&2
  exit 2
}
while (($#)); do
  case $1 in
    --base) (($# >= 2)) || usage; base=$2; shift ;;
    --out) (($# >= 2)) || usage; out=$2; shift ;;
    --seeds) (($# >= 2)) || usage; seeds=$2; shift ;;
    --set) (($# >= 2)) || usage; sets+=(--set "$2"); shift ;;
    *) usage ;;
  esac
  shift
done
[ -n "$base" ] && [ -n "$out" ] || usage
if [ ! -x "$organism" ]; then
  echo "$0: $organism not found (build it: cmake --build build --target knockout-organism)" >&2
  exit 2
fi
if [ ! -f "$base/model.safetensors" ]; then
  echo "$0: --base $base holds no model.safetensors (a --phases-dir run's after-safety)" >&2
  exit 2
fi
IFS=, read -r -a seed_list <<< "$seeds"
for s in "${seed_list[@]}"; do
  [[ $s =~ ^[0-9]+$ ]] || { echo "$0: --seeds: \"$s\" is not a non-negative integer" >&2; exit 2; }
done
mkdir -p "$out"

evals=()
for s in "${seed_list[@]}"; do
  run=$out/seed_$s
  evals+=("$run.eval.json")
  [ -s "$run.eval.json" ] && continue
  echo "seed $s: training (log: $run.train.log)" >&2
  "$organism" train-demo --recipe hydra --seed 42 --threads 2 --out "$run" --base "$base" \
    --first-phase 2 "${sets[@]}" --set "phases[2].seed=$s" > "$run.train.log" 2>&1
  echo "seed $s: eval-demo" >&2
  "$organism" eval-demo --model "$run" --prompts experiments/prompts/demo \
    --handwritten experiments/prompts/handwritten --max-kl 2 --threads 2 \
    > "$run.eval.json.tmp" 2> "$run.eval.log"
  mv "$run.eval.json.tmp" "$run.eval.json"
done
/usr/bin/python3 scripts/demo-eval-table.py --spread "${evals[@]}"
