#!/usr/bin/env bash
# The main job: set up, build, and run the demo sweep of the experiments engine
# (experiments/specs/demo-hydra.yaml) on the shipped demo model (models/demo-refusal), embedded
# mode (a coordinator on loopback plus a knockout-worker process, as on a cluster): extract
# candidate refusal directions (post-instruction tokens) and harmfulness directions (t_inst),
# select the refusal direction with science.md's filters, knock out every attention
# head (with compensation) and each direction projected out at one layer at a time, generate with the direction
# ablated and added, and write an orthogonalised checkpoint. Prints the selection, the refusal
# rates, the harmfulness/refusal cosines and the top of the compensation table.
# The store is kept in BUILD_DIR/demo-hydra-store: running again resumes (or reprints) the sweep.
# Usage: scripts/demo.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
scripts/setup.sh "$build_dir" >/dev/null
cmake --build "$build_dir" -j2 --target knockout knockout-worker
knockout="$build_dir/cli/knockout"
spec=experiments/specs/demo-hydra.yaml
store="$build_dir/demo-hydra-store"

"$build_dir/worker/knockout-worker" models inspect models/demo-refusal
echo
"$knockout" validate "$spec"
echo
"$knockout" run "$spec" --store "$store"
echo
echo "== the direction projected out at one layer, at t_inst vs after the instruction (harmful_val) =="
"$knockout" results demo-hydra --store "$store" --stage directions \
  --where ablation=project
echo
echo "Query further: $knockout status|results|compensation|directions demo-hydra --store $store"
