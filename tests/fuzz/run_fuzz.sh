#!/usr/bin/env bash
# Builds and runs the safetensors header fuzzer (libFuzzer + ASan + UBSan).
# Usage: tests/fuzz/run_fuzz.sh [SECONDS=30] [WORKDIR=<new temp dir>]
# Exits non-zero if the build fails or the fuzzer finds a crash; crash inputs stay in WORKDIR.
set -euo pipefail

SECONDS_TO_RUN="${1:-30}"
WORKDIR="${2:-}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
CXX="${FUZZ_CXX:-clang++}"

if ! command -v "${CXX}" >/dev/null 2>&1; then
  echo "run_fuzz.sh: ${CXX} not found; install clang (with libFuzzer) to run the fuzzer" >&2
  exit 1
fi
if [[ -z "${WORKDIR}" ]]; then
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/safetensors_fuzz.XXXXXX")"
fi
mkdir -p "${WORKDIR}"

# Probe for libFuzzer separately so that a missing runtime gives a clear message rather than a
# wall of linker errors.
PROBE="${WORKDIR}/probe.cc"
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
  >"${PROBE}"
if ! "${CXX}" -fsanitize=fuzzer,address "${PROBE}" -o "${WORKDIR}/probe" >/dev/null 2>&1; then
  echo "run_fuzz.sh: ${CXX} cannot build with -fsanitize=fuzzer,address (libFuzzer missing?)" >&2
  exit 1
fi

BIN="${WORKDIR}/safetensors_header_fuzz"
echo "run_fuzz.sh: building ${BIN}"
"${CXX}" -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"${REPO_ROOT}" \
  "${REPO_ROOT}/worker/model/safetensors.cc" \
  "${REPO_ROOT}/tests/fuzz/safetensors_header_fuzz.cc" \
  -o "${BIN}"

# libFuzzer writes new inputs into the first corpus dir, so work on a copy of the seeds.
CORPUS="${WORKDIR}/corpus"
mkdir -p "${CORPUS}"
cp -f "${REPO_ROOT}/tests/fuzz/corpus/safetensors/"* "${CORPUS}/" 2>/dev/null || true
chmod -R u+w "${CORPUS}"

echo "run_fuzz.sh: fuzzing for ${SECONDS_TO_RUN}s in ${WORKDIR}"
cd "${WORKDIR}"
set +e
"${BIN}" -max_total_time="${SECONDS_TO_RUN}" -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="${WORKDIR}/" "${CORPUS}"
STATUS=$?
set -e
if [[ ${STATUS} -ne 0 ]]; then
  echo "run_fuzz.sh: FAILED (exit ${STATUS}); crash inputs: $(ls "${WORKDIR}"/crash-* \
"${WORKDIR}"/leak-* "${WORKDIR}"/oom-* "${WORKDIR}"/timeout-* 2>/dev/null | tr '\n' ' ')" >&2
  exit "${STATUS}"
fi
echo "run_fuzz.sh: OK, no crashes"
