#!/usr/bin/env bash
# Builds and runs the .npy/.npz fuzzer (libFuzzer + ASan + UBSan) on formats/npy.cc with libzip.
# Usage: tests/fuzz/run_npz_fuzz.sh [SECONDS=30] [WORKDIR=<new temp dir>]
# Exits non-zero if the build fails or the fuzzer finds a crash; crash inputs stay in WORKDIR.
# Seeds in corpus/npz/ were written by numpy (tests/fuzz/README.md says how).
set -euo pipefail

NAME=run_npz_fuzz.sh
SECONDS_TO_RUN="${1:-30}"
WORKDIR="${2:-}"
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fuzz_common.sh"

BIN="${WORKDIR}/npz_fuzz"
echo "${NAME}: building ${BIN}"
"${CXX}" "${FUZZ_FLAGS[@]}" -DKNOCKOUT_HAVE_LIBZIP=1 \
  "${REPO_ROOT}/formats/npy.cc" \
  "${REPO_ROOT}/tests/fuzz/npz_fuzz.cc" \
  -lzip -o "${BIN}"

fuzz_run "${BIN}" "${REPO_ROOT}/tests/fuzz/corpus/npz" -max_len=8192 -timeout=20
