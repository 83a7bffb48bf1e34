#!/usr/bin/env bash
# The demo sweep on a real single-node Slurm through deploy/slurm's job scripts (issue 17):
# the coordinator job, a job array of 3 CPU workers, the spec submitted with `knockout submit`;
# mid-sweep one worker task is cancelled (scancel: SIGTERM, it releases its shards) and requeued
# (scontrol requeue: it runs again and rejoins). The results must equal an embedded
# `knockout run` of the same spec exactly. Exit 77 (ctest: skipped) without Slurm or root.
#
#   test_slurm.sh KNOCKOUT_BIN_DIR SPEC
set -euo pipefail
bin_dir=$(cd "$1" && pwd)
spec=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
for tool in sbatch slurmctld slurmd munged scontrol; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed (scripts/setup.sh installs Slurm)"; exit 77; }
done
[[ $(id -u) == 0 ]] || { echo "SKIP: slurmd needs root"; exit 77; }
tmp=$(mktemp -d /tmp/knockout-slurm.XXXXXX)
# shellcheck source=tests/deploy/slurm_cluster.sh
source "$root/tests/deploy/slurm_cluster.sh"
cleanup() {
  scancel --user root 2>/dev/null || true
  sleep 1
  stop_slurm
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; squeue 2>/dev/null; tail -5 "$tmp"/slurm/log/slurmd.log "$tmp"/slurm/log/slurmctld.log 2>/dev/null; for f in "$tmp"/shared/logs/* "$tmp"/shared/*.log; do [[ -f $f ]] && { echo "== $f"; tail -20 "$f"; }; done; exit 1; }
ok() { echo "ok: $*"; }

SLURMCTLD_PORT=$((7000 + RANDOM % 500)) SLURMD_PORT=$((7600 + RANDOM % 500)) start_slurm "$tmp/slurm" \
  || fail "single-node Slurm did not start"
ok "single-node Slurm is up: $(sinfo -h -o '%P %T %c CPUs')"

# The reference: the same spec run embedded, one worker thread like each Slurm worker.
"$bin_dir/cli/knockout" run "$spec" --store "$tmp/reference" --workers 1 --threads 1 --no-summary \
  > "$tmp/reference.log" 2>&1 || { cat "$tmp/reference.log"; fail "embedded reference run"; }
ok "embedded reference run"

export KNOCKOUT_SHARED=$tmp/shared KNOCKOUT_BIN=$bin_dir/coordinator KNOCKOUT_LISTEN=127.0.0.1:0
mkdir -p "$KNOCKOUT_SHARED/logs"
coordinator=$(sbatch --parsable --output "$KNOCKOUT_SHARED/logs/coordinator-%j.out" \
  "$root/deploy/slurm/coordinator.sbatch")
export KNOCKOUT_BIN=$bin_dir/worker KNOCKOUT_DEVICE=cpu KNOCKOUT_THREADS=1
workers=$(sbatch --parsable --array 0-2 --cpus-per-task 1 \
  --output "$KNOCKOUT_SHARED/logs/worker-%A_%a.out" "$root/deploy/slurm/worker.sbatch")
for _ in $(seq 300); do [[ -f $KNOCKOUT_SHARED/coordinator.env ]] && break; sleep 0.1; done
[[ -f $KNOCKOUT_SHARED/coordinator.env ]] || fail "no coordinator.env"
# shellcheck disable=SC1091
source "$KNOCKOUT_SHARED/coordinator.env"
ok "coordinator job $coordinator at $KNOCKOUT_COORDINATOR, worker array $workers"
ko=("$bin_dir/cli/knockout")
sweep=$("${ko[@]}" submit "$spec" --coordinator "$KNOCKOUT_COORDINATOR" | awk '{print $1}')
ok "submitted $sweep"

# Mid-sweep: once some shards are done, cancel worker task 1 and requeue it.
done_shards() {
  "${ko[@]}" status "$sweep" --coordinator "$KNOCKOUT_COORDINATOR" 2>/dev/null \
    | awk '/^ *[0-9]+ +[A-Za-z0-9_-]+ +[a-z_]+ +(done|running|pending) / {split($5, a, "/"); s += a[1]} END {print s + 0}'
}
# Cancel it while it holds a lease: its last leased shard not reported yet (sets $held).
log1=$KNOCKOUT_SHARED/logs/worker-${workers}_1.out
held=""
holding() {
  local last
  last=$(grep -o ': leased [^ ]*' "$log1" 2>/dev/null | tail -n 1 | cut -d' ' -f3)
  [[ -n $last ]] && ! grep -q "reported $last " "$log1" && held=$last
}
for _ in $(seq 3000); do
  holding && break
  sleep 0.05
done
[[ -n $held ]] || fail "worker task 1 never held a shard"
job_state() { scontrol show job "${workers}_1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -1; }
scancel "${workers}_1"
# Requeue only once Slurm has finished with it (no longer listed by squeue: not COMPLETING).
for _ in $(seq 300); do
  [[ $(job_state) == JobState=CANCELLED && -z $(squeue -h -j "${workers}_1" 2>/dev/null) ]] && break
  sleep 0.2
done
state=$(job_state)
ok "worker task 1 cancelled mid-sweep ($(done_shards) shards done; $state)"
# A requeued job waits out a begin-time delay; StartTime=now lets it start at once. A relaunch
# can still fail while slurmd tidies up the cancelled step: requeue again then (3 tries).
for try in 1 2 3; do
  scontrol requeue "${workers}_1" || fail "scontrol requeue ${workers}_1"
  scontrol update JobId="${workers}_1" StartTime=now >/dev/null 2>&1 || true
  for _ in $(seq 300); do
    state=$(job_state)
    [[ $state == JobState=RUNNING || $state == JobState=FAILED || $state == JobState=COMPLETED ]] && break
    sleep 0.2
  done
  [[ $state == JobState=RUNNING ]] && break
  echo "requeue try $try: $state; $(scontrol show job "${workers}_1" | grep -o 'Reason=[^ ]*')"
  sleep 1
done
[[ $state == JobState=RUNNING ]] || fail "task 1 did not run again after the requeue ($state)"
ok "worker task 1 requeued and running again ($(scontrol show job "${workers}_1" | grep -o 'Restarts=[0-9]*'))"

for _ in $(seq 1800); do
  state=$("${ko[@]}" status "$sweep" --coordinator "$KNOCKOUT_COORDINATOR" 2>/dev/null | awk -v s="$sweep" '$1 == "sweep" && $2 == s {print $4; exit}')
  [[ $state == done || $state == failed ]] && break
  sleep 0.5
done
[[ $state == done ]] || fail "sweep ended $state"
ok "sweep done on Slurm"
if grep -q "released $held" "$log1"; then
  ok "task 1 released $held on SIGTERM"
elif grep -q "reported $held" "$log1"; then
  ok "task 1 finished $held before the signal reached it"
else
  fail "task 1 neither released nor reported $held"
fi
# The orthogonalised checkpoint's default path names the store it went to; nothing else may differ.
"${ko[@]}" results "$sweep" --coordinator "$KNOCKOUT_COORDINATOR" --format csv \
  | sed "s|$KNOCKOUT_SHARED/store/|STORE/|g" > "$tmp/slurm.csv"
"${ko[@]}" results "$sweep" --store "$tmp/reference" --format csv \
  | sed "s|$tmp/reference/|STORE/|g" > "$tmp/reference.csv"
cmp -s "$tmp/slurm.csv" "$tmp/reference.csv" \
  || { diff "$tmp/reference.csv" "$tmp/slurm.csv" | head -20; fail "results differ from the embedded run's"; }
ok "results equal the embedded run's ($(wc -l < "$tmp/reference.csv") lines of CSV)"
