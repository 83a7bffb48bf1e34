# Shared by the run_*fuzz.sh scripts (sourced, not run): the compiler and libFuzzer checks, the
# work directory, and running a fuzzer over a copy of its seed corpus.
# Before sourcing, set NAME (for messages and the temp dir), SECONDS_TO_RUN and WORKDIR (may be
# empty). Afterwards: CXX, REPO_ROOT, WORKDIR and FUZZ_FLAGS are set.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CXX="${FUZZ_CXX:-clang++}"
FUZZ_FLAGS=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
            -I"${REPO_ROOT}")

if ! command -v "${CXX}" >/dev/null 2>&1; then
  echo "${NAME}: ${CXX} not found; install clang (with libFuzzer) to run the fuzzer" >&2
  exit 1
fi
if [[ -z "${WORKDIR}" ]]; then
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/${NAME%.sh}.XXXXXX")"
fi
mkdir -p "${WORKDIR}"

# Probe for libFuzzer separately so that a missing runtime gives a clear message rather than a
# wall of linker errors.
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
  >"${WORKDIR}/probe.cc"
if ! "${CXX}" -fsanitize=fuzzer,address "${WORKDIR}/probe.cc" -o "${WORKDIR}/probe" \
    >/dev/null 2>&1; then
  echo "${NAME}: ${CXX} cannot build with -fsanitize=fuzzer,address (libFuzzer missing?)" >&2
  exit 1
fi

# fuzz_run BIN SEED_DIR [libFuzzer flags...]: fuzzes for SECONDS_TO_RUN over a copy of SEED_DIR
# (libFuzzer writes new inputs into its first corpus dir); exits non-zero on a crash, naming the
# crash inputs kept in WORKDIR.
fuzz_run() {
  local bin="$1" seeds="$2"
  shift 2
  local corpus="${WORKDIR}/corpus"
  mkdir -p "${corpus}"
  cp -f "${seeds}/"* "${corpus}/" 2>/dev/null || true
  chmod -R u+w "${corpus}"
  echo "${NAME}: fuzzing for ${SECONDS_TO_RUN}s in ${WORKDIR}"
  cd "${WORKDIR}"
  set +e
  "${bin}" -max_total_time="${SECONDS_TO_RUN}" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="${WORKDIR}/" "$@" "${corpus}"
  local status=$?
  set -e
  if [[ ${status} -ne 0 ]]; then
    echo "${NAME}: FAILED (exit ${status}); crash inputs: $(ls "${WORKDIR}"/crash-* \
"${WORKDIR}"/leak-* "${WORKDIR}"/oom-* "${WORKDIR}"/timeout-* 2>/dev/null | tr '\n' ' ')" >&2
    exit "${status}"
  fi
  echo "${NAME}: OK, no crashes"
}
