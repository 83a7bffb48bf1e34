#!/usr/bin/env bash
# Builds everything and runs the whole test suite through ctest (set-up included: idempotent).
# Usage: scripts/test.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
scripts/setup.sh "$build_dir"
cmake --build "$build_dir" -j2
cd "$build_dir"
ctest -j2 --output-on-failure --timeout 900
