#!/usr/bin/env bash
# deploy/k8s validated offline (issue 17): every manifest of the kustomization against the
# Kubernetes JSON schemas (npm kubernetes-models, pinned in package-lock.json) plus the fields
# knockout relies on (validate.mjs), then every container's command line run through our own
# binaries with --check-flags: the coordinator and the worker must accept exactly what the
# manifests pass them. Two broken copies must be refused (a schema error, an unknown flag).
#
#   test_k8s.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
"$root/tests/tokenizer/ensure_node_modules.sh" "$here"
tmp=$(mktemp -d /tmp/knockout-k8s.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
declare -A binary=([knockout-coordinator]=$build/coordinator/knockout-coordinator
                   [knockout-worker]=$build/worker/knockout-worker [knockout]=$build/cli/knockout)

check_commands() {  # DIR: validates, then runs every container's argv with --check-flags
  node "$here/validate.mjs" "$1" > "$tmp/commands.jsonl" || return 1
  local n=0
  while IFS= read -r line; do
    mapfile -t argv < <(node -e 'for (const a of JSON.parse(process.argv[1]).argv) console.log(a)' "$line")
    local exe=${binary[${argv[0]}]:-}
    [[ -n $exe ]] || { echo "FAIL: ${argv[0]} is not a knockout binary"; return 1; }
    if ! "$exe" "${argv[@]:1}" --check-flags > "$tmp/out.txt" 2>&1; then
      echo "FAIL: ${argv[*]} refused: $(cat "$tmp/out.txt")"
      return 1
    fi
    echo "ok: ${argv[0]} accepts the manifest's flags (${#argv[@]} words)"
    n=$((n + 1))
  done < "$tmp/commands.jsonl"
  [[ $n -ge 2 ]] || { echo "FAIL: expected the coordinator's and the worker's commands, got $n"; return 1; }
}

check_commands "$root/deploy/k8s/base" || exit 1

# A copy whose StatefulSet has a string for replicas must fail the schemas.
cp -r "$root/deploy/k8s/base" "$tmp/bad-schema"
sed -i 's/^  replicas: 1$/  replicas: one/' "$tmp/bad-schema/coordinator.yaml"
if node "$here/validate.mjs" "$tmp/bad-schema" > /dev/null 2> "$tmp/err.txt"; then
  echo "FAIL: replicas: one passed the schema check"; exit 1
fi
echo "ok: a schema error is refused: $(head -1 "$tmp/err.txt")"
# A copy passing a flag the worker does not have must fail the command check.
cp -r "$root/deploy/k8s/base" "$tmp/bad-flag"
sed -i 's/--batch-rows=128/--batch-size=128/' "$tmp/bad-flag/worker.yaml"
if check_commands "$tmp/bad-flag" > "$tmp/bad.txt" 2>&1; then
  echo "FAIL: --batch-size passed the command check"; exit 1
fi
echo "ok: an unknown flag is refused: $(grep FAIL "$tmp/bad.txt" | head -1)"
