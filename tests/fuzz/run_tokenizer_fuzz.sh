#!/usr/bin/env bash
# Builds and runs the tokenizer fuzzer (libFuzzer + ASan + UBSan) on tokenizer/.
# Usage: tests/fuzz/run_tokenizer_fuzz.sh [SECONDS=30] [WORKDIR=<new temp dir>]
# Exits non-zero if the build fails or the fuzzer finds a crash; crash inputs stay in WORKDIR.
# The binary is rebuilt only when a source is newer than it (WORKDIR may be reused).
# Seeds in corpus/tokenizer/ (written once with python3's json): byte 0 picks the mode of
# tokenizer_fuzz.cc, byte 1 the flag; json_* are small tokenizer.json files shaped like the four
# families (and broken ones), config_* tokenizer_config.json files, text_* texts (valid and
# invalid UTF-8), ids_* id lists to decode.
set -euo pipefail

NAME=run_tokenizer_fuzz.sh
SECONDS_TO_RUN="${1:-30}"
WORKDIR="${2:-}"
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fuzz_common.sh"

# The tokenizer library's sources: tokenizer/*.cc without tests and chat templates.
SOURCES=()
for f in "${REPO_ROOT}"/tokenizer/*.cc; do
  case "$(basename "$f")" in
    *_test.cc | chat_template*) ;;
    *) SOURCES+=("$f") ;;
  esac
done
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "${NAME}: no sources in ${REPO_ROOT}/tokenizer/" >&2
  exit 1
fi
FUZZ_SRC="${REPO_ROOT}/tests/fuzz/tokenizer_fuzz.cc"

BIN="${WORKDIR}/tokenizer_fuzz"
stale=0
[[ -x "${BIN}" ]] || stale=1
for f in "${SOURCES[@]}" "${FUZZ_SRC}" "${REPO_ROOT}"/tokenizer/*.h "${REPO_ROOT}"/common/*.h; do
  [[ "$f" -nt "${BIN}" ]] && stale=1
done
if [[ ${stale} -eq 1 ]]; then
  echo "${NAME}: building ${BIN} from ${#SOURCES[@]} sources"
  "${CXX}" "${FUZZ_FLAGS[@]}" \
    "${SOURCES[@]}" "${FUZZ_SRC}" \
    -lpcre2-8 -lutf8proc \
    -o "${BIN}.tmp"
  mv "${BIN}.tmp" "${BIN}"
fi

fuzz_run "${BIN}" "${REPO_ROOT}/tests/fuzz/corpus/tokenizer" -max_len=8192 -timeout=20
