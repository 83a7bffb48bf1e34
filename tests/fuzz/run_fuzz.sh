#!/usr/bin/env bash
# Builds and runs the safetensors header fuzzer (libFuzzer + ASan + UBSan).
# Usage: tests/fuzz/run_fuzz.sh [SECONDS=30] [WORKDIR=<new temp dir>]
# Exits non-zero if the build fails or the fuzzer finds a crash; crash inputs stay in WORKDIR.
set -euo pipefail

NAME=run_fuzz.sh
SECONDS_TO_RUN="${1:-30}"
WORKDIR="${2:-}"
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fuzz_common.sh"

BIN="${WORKDIR}/safetensors_header_fuzz"
echo "${NAME}: building ${BIN}"
"${CXX}" "${FUZZ_FLAGS[@]}" \
  "${REPO_ROOT}/formats/safetensors.cc" \
  "${REPO_ROOT}/tests/fuzz/safetensors_header_fuzz.cc" \
  -o "${BIN}"

fuzz_run "${BIN}" "${REPO_ROOT}/tests/fuzz/corpus/safetensors"
