#!/usr/bin/env bash
# Writes the reference checkpoints the model tests compare against (ctest fixture).
# Usage: tests/reference/write_fixtures.sh OUT_DIR [PYTHON]
set -euo pipefail
out=$1
python=${2:-/usr/bin/python3}
script="$(cd "$(dirname "$0")" && pwd)/hf_reference.py"
if ! "$python" -c 'import torch' 2>/dev/null; then
  echo "write_fixtures: $python cannot import torch; install python3-torch (scripts/setup.sh)" >&2
  exit 1
fi
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
for variant in llama_gqa llama_tied llama3_rope qwen2 mistral llama_headdim gemma2; do
  for dtype in f32 bf16; do
    "$python" "$script" write --variant "$variant" --dtype "$dtype" --out "$out.tmp/$variant-$dtype" >/dev/null
  done
done
"$python" "$script" write --variant llama_gqa --dtype f32 --shards 3 --out "$out.tmp/llama_gqa-f32-sharded" >/dev/null
"$python" "$script" write --variant qwen2 --dtype f16 --shards 2 --out "$out.tmp/qwen2-f16-sharded" >/dev/null
rm -rf "$out" && mv "$out.tmp" "$out"
echo "write_fixtures: reference checkpoints in $out"
