#!/usr/bin/env bash
# Builds and runs the tokenizer fuzzer (libFuzzer + ASan + UBSan) on worker/tokenizer.
# Usage: tests/fuzz/run_tokenizer_fuzz.sh [SECONDS=30] [WORKDIR=<new temp dir>]
# Exits non-zero if the build fails or the fuzzer finds a crash; crash inputs stay in WORKDIR.
# The binary is rebuilt only when a source is newer than it (WORKDIR may be reused).
# Seeds in corpus/tokenizer/ (written once with python3's json): byte 0 picks the mode of
# tokenizer_fuzz.cc, byte 1 the flag; json_* are small tokenizer.json files shaped like the four
# families (and broken ones), config_* tokenizer_config.json files, text_* texts (valid and
# invalid UTF-8), ids_* id lists to decode.
set -euo pipefail

SECONDS_TO_RUN="${1:-30}"
WORKDIR="${2:-}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
CXX="${FUZZ_CXX:-clang++}"

if ! command -v "${CXX}" >/dev/null 2>&1; then
  echo "run_tokenizer_fuzz.sh: ${CXX} not found; install clang (with libFuzzer) to run the fuzzer" >&2
  exit 1
fi
if [[ -z "${WORKDIR}" ]]; then
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/tokenizer_fuzz.XXXXXX")"
fi
mkdir -p "${WORKDIR}"

# Probe for libFuzzer separately so that a missing runtime gives a clear message rather than a
# wall of linker errors.
PROBE="${WORKDIR}/probe.cc"
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
  >"${PROBE}"
if ! "${CXX}" -fsanitize=fuzzer,address "${PROBE}" -o "${WORKDIR}/probe" >/dev/null 2>&1; then
  echo "run_tokenizer_fuzz.sh: ${CXX} cannot build with -fsanitize=fuzzer,address (libFuzzer missing?)" >&2
  exit 1
fi

# The tokenizer library's sources: worker/tokenizer/*.cc without tests and chat templates.
SOURCES=()
for f in "${REPO_ROOT}"/worker/tokenizer/*.cc; do
  case "$(basename "$f")" in
    *_test.cc | chat_template*) ;;
    *) SOURCES+=("$f") ;;
  esac
done
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "run_tokenizer_fuzz.sh: no sources in ${REPO_ROOT}/worker/tokenizer" >&2
  exit 1
fi
FUZZ_SRC="${REPO_ROOT}/tests/fuzz/tokenizer_fuzz.cc"

BIN="${WORKDIR}/tokenizer_fuzz"
stale=0
[[ -x "${BIN}" ]] || stale=1
for f in "${SOURCES[@]}" "${FUZZ_SRC}" "${REPO_ROOT}"/worker/tokenizer/*.h "${REPO_ROOT}"/common/*.h; do
  [[ "$f" -nt "${BIN}" ]] && stale=1
done
if [[ ${stale} -eq 1 ]]; then
  echo "run_tokenizer_fuzz.sh: building ${BIN} from ${#SOURCES[@]} sources"
  "${CXX}" -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"${REPO_ROOT}" \
    "${SOURCES[@]}" "${FUZZ_SRC}" \
    -lpcre2-8 -lutf8proc \
    -o "${BIN}.tmp"
  mv "${BIN}.tmp" "${BIN}"
fi

# libFuzzer writes new inputs into the first corpus dir, so work on a copy of the seeds.
CORPUS="${WORKDIR}/corpus"
mkdir -p "${CORPUS}"
cp -f "${REPO_ROOT}/tests/fuzz/corpus/tokenizer/"* "${CORPUS}/" 2>/dev/null || true
chmod -R u+w "${CORPUS}"

echo "run_tokenizer_fuzz.sh: fuzzing for ${SECONDS_TO_RUN}s in ${WORKDIR}"
cd "${WORKDIR}"
set +e
"${BIN}" -max_total_time="${SECONDS_TO_RUN}" -rss_limit_mb=2048 -max_len=8192 -timeout=20 \
  -print_final_stats=1 -artifact_prefix="${WORKDIR}/" "${CORPUS}"
STATUS=$?
set -e
if [[ ${STATUS} -ne 0 ]]; then
  echo "run_tokenizer_fuzz.sh: FAILED (exit ${STATUS}); crash inputs: $(ls "${WORKDIR}"/crash-* \
"${WORKDIR}"/leak-* "${WORKDIR}"/oom-* "${WORKDIR}"/timeout-* 2>/dev/null | tr '\n' ' ')" >&2
  exit "${STATUS}"
fi
echo "run_tokenizer_fuzz.sh: OK, no crashes"
