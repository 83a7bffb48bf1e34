#!/usr/bin/env bash
# The query benchmark of issue 17: a store with N result rows (bench/query_bench), then
# `knockout results --per-prompt --format csv` streamed to /dev/null, timed with GNU time:
# rows/s and peak RSS for each N (the RSS should not grow with N).
#   bench/run_query_bench.sh [BUILD_DIR] [ROWS ...]      (default: build 1000000 10000000)
set -euo pipefail
build=${1:-build}
shift || true
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 10000000)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| result rows | store written | CSV lines | query wall | rows/s | peak RSS |"
echo "|---|---|---|---|---|---|"
for n in "${sizes[@]}"; do
  written=$("$build/bench/query_bench" --store "$work/store-$n" --rows "$n")
  /usr/bin/time -f '%e %M' -o "$work/time" \
    "$build/cli/knockout" results query-bench --store "$work/store-$n" --stage heads \
    --per-prompt --format csv > "$work/out.csv"
  read -r wall rss_kb < "$work/time"
  # The aggregate rows (prompt -1) are not per-prompt rows; the header is one line.
  lines=$(wc -l < "$work/out.csv")
  rate=$(python3 -c "print(f'{($lines - 1) / max($wall, 1e-9):,.0f}')")
  echo "| $n | ${written#wrote } | $lines | ${wall} s | $rate | $((rss_kb / 1024)) MB |"
  rm -rf "$work/store-$n" "$work/out.csv"
done
