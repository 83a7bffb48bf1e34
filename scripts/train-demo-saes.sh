#!/usr/bin/env bash
# Trains the six SAEs shipped with the demo model (models/demo-refusal/saes/README.md): one TopK
# SAE per layer at blocks.L.hook_resid_post, 1024 latents, k 64, on the demo's training prompt
# sets and the model's own greedy answers to them, measured on held-out training prompts and the
# validation sets. One thread: the files are then bit-identical to the shipped ones.
#
#   scripts/train-demo-saes.sh            retrain into models/demo-refusal/saes (replacing them)
#   scripts/train-demo-saes.sh --check    retrain into a temporary directory and compare every
#                                         file with the shipped one byte for byte (sha256)
#   scripts/train-demo-saes.sh --out DIR  retrain into DIR/layer_L
# KNOCKOUT_WORKER overrides the binary (default build/worker/knockout-worker). Run from anywhere:
# the script works from the repository root, and the recorded command lines use relative paths.
set -euo pipefail
cd "$(dirname "$0")/.."

worker=${KNOCKOUT_WORKER:-build/worker/knockout-worker}
shipped=models/demo-refusal/saes
out=$shipped
check=0
while (($#)); do
  case $1 in
    --check) check=1 ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--check | --out DIR]" >&2; exit 2 ;;
  esac
  shift
done
if [ ! -x "$worker" ]; then
  echo "$0: $worker not found (build it: cmake --build build --target knockout-worker)" >&2
  exit 2
fi
tmp=""
if ((check)); then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  out=$tmp
fi
mkdir -p "$out"

p=experiments/prompts/demo
train_layer() {
  "$worker" train-sae --model models/demo-refusal --hook "blocks.$1.hook_resid_post" \
    --prompts $p/harmful_train.jsonl $p/harmless_train.jsonl $p/framed_train.jsonl \
    --eval-prompts $p/harmful_val.jsonl $p/harmless_val.jsonl $p/framed_val.jsonl \
    --arch topk --latents 1024 --k 64 --steps 2000 --batch-tokens 1024 --lr 0.002 \
    --new-tokens 32 --holdout-every 10 --seed 0 --threads 1 \
    --out "$out/layer_$1" --overwrite --log-every 500 > "$out/.layer_$1.report.json"
}
# Layers train side by side, one thread each (KNOCKOUT_SAE_JOBS, default 2): each process is
# single-threaded, so the files do not depend on how many run at once.
jobs=${KNOCKOUT_SAE_JOBS:-2}
start=$(date +%s)
for layer in 0 1 2 3 4 5; do
  train_layer "$layer" &
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
done
while (($(jobs -rp | wc -l) > 0)); do wait -n; done
end=$(date +%s)
echo "trained 6 SAEs in $((end - start)) s" >&2
# The reports (stdout of train-sae) carry timings, so they are not kept beside the shipped files.
python3 - "$out" <<'EOF' >&2
import json, sys
out = sys.argv[1]
print("layer  train s  rows/s   FVU held-out  FVU val (harmful/harmless/framed)  L0     dead all  KL harmless answer")
for layer in range(6):
    r = json.load(open(f"{out}/.layer_{layer}.report.json"))
    m = r["metrics"]
    ev = m["eval"]
    val = [ev[f"experiments/prompts/demo/{s}_val.jsonl"] for s in ("harmful", "harmless", "framed")]
    print(f"{layer:5d}  {r['train_seconds']:7.1f}  {r['rows_per_second']:6.0f}   {m['held_out']['fvu']:.4f}        "
          f"{val[0]['fvu']:.4f} / {val[1]['fvu']:.4f} / {val[2]['fvu']:.4f}          "
          f"{m['held_out']['l0']:5.2f}  {100 * m['dead_fraction_all']:5.2f}%    {val[1]['response']['kl']:.4f}")
EOF
rm -f "$out"/.layer_*.report.json
echo "the card's metrics table (models/demo-refusal/saes/README.md):" >&2
python3 scripts/sae-card-table.py "$out" >&2

if ((check)); then
  status=0
  for layer in 0 1 2 3 4 5; do
    for file in cfg.json sae_weights.safetensors; do
      if cmp -s "$out/layer_$layer/$file" "$shipped/layer_$layer/$file"; then
        echo "identical: layer_$layer/$file"
      else
        echo "DIFFERENT: layer_$layer/$file" >&2
        status=1
      fi
    done
  done
  (cd "$out" && sha256sum layer_*/cfg.json layer_*/sae_weights.safetensors)
  exit $status
fi
if [ "$out" = "$shipped" ]; then
  (cd "$shipped" && sha256sum layer_*/cfg.json layer_*/sae_weights.safetensors > SHA256SUMS)
  echo "wrote $shipped/layer_{0..5} and $shipped/SHA256SUMS" >&2
fi
