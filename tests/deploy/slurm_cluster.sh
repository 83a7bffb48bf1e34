# Sourced by the Slurm tests: start_slurm DIR starts a private single-node Slurm (munged,
# slurmctld, slurmd; facts in /work/shared/docs/build-notes.md) with its state under DIR and
# exports SLURM_CONF; stop_slurm stops what it started. Needs root (slurmd) and the Debian
# packages slurmctld, slurmd, slurm-client, munge.
start_slurm() {
  local dir=$1
  mkdir -p "$dir"/{state,spool,log}
  cat > "$dir/slurm.conf" <<CONF
ClusterName=knockout-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0,sched_interval=1
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
KillWait=5
NodeName=localhost CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    [[ -f /etc/munge/munge.key ]] || setpriv --reuid=munge --regid=munge --init-groups mungekey --create
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F > "$dir/log/munged.log" 2>&1 &
    SLURM_TEST_MUNGED=$!
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  slurmctld -D > "$dir/log/slurmctld.out" 2>&1 &
  SLURM_TEST_CTLD=$!
  slurmd -D > "$dir/log/slurmd.out" 2>&1 &
  SLURM_TEST_SLURMD=$!
  for _ in $(seq 300); do
    [[ $(sinfo -h -o %T 2>/dev/null) == idle* ]] && return 0
    sleep 0.1
  done
  echo "start_slurm: the node did not become idle" >&2
  cat "$dir"/log/* >&2
  return 1
}

stop_slurm() {
  local pid
  for pid in ${SLURM_TEST_SLURMD:-} ${SLURM_TEST_CTLD:-} ${SLURM_TEST_MUNGED:-}; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
