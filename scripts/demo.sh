#!/usr/bin/env bash
# The main job: set up, build, and run the demo sweep of the experiments engine
# (experiments/specs/demo-hydra.yaml) on the shipped demo model (models/demo-refusal), embedded
# mode (a coordinator on loopback plus a knockout-worker process, as on a cluster): extract
# candidate refusal directions (post-instruction tokens) and harmfulness directions (t_inst),
# select the refusal direction with science.md's filters, knock out every attention
# head (with compensation) and each direction projected out at one layer at a time, generate with the direction
# ablated and added, write an orthogonalised checkpoint, and knock out SAE latents (downstream
# refusal features, upstream harm sensors) with their backups on the shipped SAEs. Prints the
# selection, the refusal rates, the harmfulness/refusal cosines, the direction knockouts and the
# SAE latent table (unit, layer, role, TE, DE, C, top backups).
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
echo "== the refusal and harm directions projected out at one layer (project) or at every layer"
echo "   (directional), at t_inst, after the instruction or everywhere (harmful_val) =="
"$knockout" results demo-hydra --store "$store" --stage directions
echo
echo "== SAE latents knocked out (harmful_val): upstream harm sensors vs downstream refusal features,"
echo "   each with its top backups (latent clean->ablated activation after the instruction) =="
"$knockout" compensation demo-hydra --store "$store" --stage hydra --top 3 \
  --columns unit,layer,role,te,de,c,latent_backups
echo
echo "Query further: $knockout status|results|compensation|features|backups|directions demo-hydra --store $store"
echo "  e.g. $knockout backups demo-hydra --store $store --stage hydra --unit L3F<latent>"
