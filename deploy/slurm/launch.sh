#!/usr/bin/env bash
# Runs a sweep on a Slurm cluster from the login node (deploy/slurm/README.md): submits the
# coordinator job and a job array of workers (one GPU each), submits SPEC to the coordinator,
# follows it to the end, then cancels both jobs (--keep leaves them running for more sweeps).
#
#   KNOCKOUT_SHARED=/shared/ko deploy/slurm/launch.sh SPEC [--workers 4] [--gpus-per-task 1]
#       [--partition P] [--time 1-00:00:00] [--keep]
#
# KNOCKOUT_SHARED must be a directory every node sees (the store, the coordinator's address,
# token and certificate, the job logs). SPEC's model, prompt and SAE paths must be readable from
# the compute nodes too. --gpus-per-task 0: CPU workers (KNOCKOUT_DEVICE=cpu).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
spec=""; workers=4; gpus=1; keep=0; extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --workers) workers=$2; shift 2 ;;
    --gpus-per-task) gpus=$2; shift 2 ;;
    --partition) extra+=(--partition "$2"); shift 2 ;;
    --time) extra+=(--time "$2"); shift 2 ;;
    --keep) keep=1; shift ;;
    -*) echo "launch.sh: unknown option $1" >&2; exit 2 ;;
    *) spec=$1; shift ;;
  esac
done
[[ -n $spec ]] || { echo "usage: launch.sh SPEC [--workers N] [--gpus-per-task G] [--keep]" >&2; exit 2; }
shared=${KNOCKOUT_SHARED:?set KNOCKOUT_SHARED to a directory on shared storage}
bin=${KNOCKOUT_BIN:+$KNOCKOUT_BIN/}
mkdir -p "$shared/logs"
rm -f "$shared/coordinator.env"  # a stale one would point the workers at a past coordinator
gpu_args=()
if [[ $gpus -gt 0 ]]; then gpu_args=(--gpus-per-task "$gpus"); else export KNOCKOUT_DEVICE=${KNOCKOUT_DEVICE:-cpu}; fi
coordinator=$(sbatch --parsable "${extra[@]}" --output "$shared/logs/coordinator-%j.out" \
  --export=ALL "$here/coordinator.sbatch")
worker_jobs=$(sbatch --parsable "${extra[@]}" --array "0-$((workers - 1))" "${gpu_args[@]}" \
  --output "$shared/logs/worker-%A_%a.out" --export=ALL "$here/worker.sbatch")
echo "coordinator job $coordinator, worker array $worker_jobs ($workers tasks)"
cleanup() { [[ $keep == 1 ]] || scancel "$worker_jobs" "$coordinator" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 3000); do [[ -f $shared/coordinator.env ]] && break; sleep 0.2; done
[[ -f $shared/coordinator.env ]] || { echo "launch.sh: the coordinator did not start (see $shared/logs)" >&2; exit 1; }
# shellcheck disable=SC1091
source "$shared/coordinator.env"
args=(--coordinator "$KNOCKOUT_COORDINATOR")
[[ -n ${KNOCKOUT_TOKEN_FILE:-} ]] && args+=(--token-file "$KNOCKOUT_TOKEN_FILE")
[[ -n ${KNOCKOUT_TLS_CA:-} ]] && args+=(--tls-ca "$KNOCKOUT_TLS_CA" --tls-server-name "$KNOCKOUT_TLS_SERVER_NAME")
"${bin}knockout" submit "$spec" "${args[@]}" --watch
