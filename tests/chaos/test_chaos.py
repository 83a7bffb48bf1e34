#!/usr/bin/env python3
"""Chaos test of the distributed runtime, in three phases like Ray's chaos tests.

A 392-shard sweep (tests/chaos/chaos-sweep.yaml) on the shipped demo model runs on a
knockout-coordinator and 3 knockout-worker processes:
  1. warm-up: until the first shards are committed;
  2. no faults: a few seconds of normal running;
  3. faults: every ~second a random worker is killed with SIGKILL and restarted; the
     coordinator is killed once with SIGKILL and once by its own fault point right after a
     synced commit (scheduler.after_commit), each time restarted on the same store and port;
     earlier, one committed report's reply is dropped (report.drop_response).
The sweep must then complete, every shard must hold exactly one committed result, and the
results must equal, bit for bit, those of a fault-free embedded run (`knockout run`).

Usage: test_chaos.py KNOCKOUT KNOCKOUT_COORDINATOR KNOCKOUT_WORKER SPEC
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_common import check, fail, parse_status, sh, wait_until  # noqa: E402

LEASE_SECONDS = "1.5"
# Kills are deliberate and frequent here: a shard may lose several leases in a row (its worker
# killed, then the coordinator down past the deadline), which must not fail the sweep.
MAX_ATTEMPTS = "20"
SHARDS = 392
WORKERS = 3




def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



class Cluster:
    def __init__(self, args, workdir):
        self.knockout, self.coordinator_bin, self.worker_bin, self.spec = args
        self.workdir = workdir
        self.store = os.path.join(workdir, "store")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.coordinator = None
        self.workers = []
        self.started = 0

    def start_coordinator(self, faults=""):
        """`faults`: fault points to arm (common/fault_points.h), e.g. "report.drop_response=drop@30"."""
        log = open(os.path.join(self.workdir, "coordinator.log"), "a")
        env = dict(os.environ, KNOCKOUT_FAULTS=faults)
        self.coordinator = subprocess.Popen(
            [self.coordinator_bin, "--store", self.store, "--listen", self.address,
             "--lease-seconds", LEASE_SECONDS, "--max-attempts", MAX_ATTEMPTS],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        line = self.coordinator.stdout.readline()
        if "listening on" not in line:
            fail(f"coordinator did not start: {line!r}; see {log.name}")

    def kill_coordinator(self):
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait()

    def start_worker(self):
        self.started += 1
        log = open(os.path.join(self.workdir, f"worker-{self.started}.log"), "w")
        proc = subprocess.Popen(
            [self.worker_bin, "--coordinator", self.address, "--threads", "1",
             "--name", f"chaos-{self.started}"],
            stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)

    def kill_random_worker(self):
        victim = random.choice(self.workers)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.workers.remove(victim)
        self.start_worker()

    def progress(self):
        """(state, shards done, shards total of the expanded stages) or None if unreachable."""
        proc = sh(self.knockout, "status", "chaos", "--coordinator", self.address,
                  check_rc=False, timeout=30)
        return parse_status(proc.stdout) if proc.returncode == 0 else None

    def stop(self):
        for proc in self.workers:
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.send_signal(signal.SIGTERM)
            self.coordinator.wait(timeout=30)


def rows(knockout, source_args, per_prompt):
    args = [knockout, "results", "chaos", "--format", "jsonl", *source_args]
    if per_prompt:
        args.append("--per-prompt")
    out = sh(*args).stdout
    return sorted(out.splitlines())


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    random.seed(int(os.environ.get("CHAOS_SEED", "20261128")))
    knockout, _, _, spec = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="knockout-chaos-") as workdir:
        # The reference: a fault-free embedded run, one thread per worker like the chaos workers
        # (the same reduction order, so the comparison can be exact).
        reference = os.path.join(workdir, "reference")
        start = time.time()
        sh(knockout, "run", spec, "--store", reference, "--workers", "1", "--threads", "1",
           "--no-summary", timeout=900)
        print(f"reference run: {time.time() - start:.1f} s", flush=True)

        cluster = Cluster(sys.argv[1:], workdir)
        try:
            # The first coordinator drops the reply to one committed report: that worker's retry
            # must be acknowledged as a duplicate, not stored twice.
            cluster.start_coordinator(faults="report.drop_response=drop@30")
            submitted = sh(knockout, "submit", spec, "--coordinator", cluster.address).stdout
            check(submitted.startswith("chaos-"), f"submit returns the sweep id ({submitted.strip()})")
            for _ in range(WORKERS):
                cluster.start_worker()

            # Phase 1: warm-up.
            p = wait_until(cluster.progress, lambda p: p[1] >= 20, 120,
                           "warm-up: 20 shards done", interval=0.2)
            print(f"warm-up done: {p[1]}/{p[2]}", flush=True)
            # Phase 2: no faults.
            time.sleep(2)
            # Phase 3: faults. Workers are killed with SIGKILL at random; the coordinator once
            # with SIGKILL from outside, and once more by its own fault point, right after a
            # synced commit and before any reply (exit status 86); both times it is restarted on
            # the same store and port.
            worker_kills = coordinator_kills = coordinator_crashes = 0
            phase_start = time.time()
            while True:
                if cluster.coordinator.poll() is not None:
                    check(cluster.coordinator.returncode == 86,
                          f"the coordinator crashed at its after-commit fault point "
                          f"(exit {cluster.coordinator.returncode})")
                    coordinator_crashes += 1
                    cluster.start_coordinator()
                p = cluster.progress()
                if p and p[0] != "running":
                    break
                if coordinator_kills == 0 and time.time() - phase_start > 2.5:
                    cluster.kill_coordinator()
                    coordinator_kills += 1
                    time.sleep(0.5)
                    cluster.start_coordinator(faults="scheduler.after_commit=crash@40")
                    print("coordinator killed and restarted", flush=True)
                else:
                    cluster.kill_random_worker()
                    worker_kills += 1
                time.sleep(random.uniform(0.6, 1.2))
                if p and p[2] > 0 and p[1] >= 0.85 * SHARDS and coordinator_crashes:
                    break
            print(f"fault phase: {worker_kills} worker kills, {coordinator_kills} coordinator "
                  f"kill(s), {coordinator_crashes} fault-point crash(es), "
                  f"{time.time() - phase_start:.1f} s", flush=True)
            check(worker_kills >= 3 and coordinator_kills == 1 and coordinator_crashes == 1,
                  "the fault phase killed workers and the coordinator before the sweep ended")

            p = wait_until(cluster.progress, lambda p: p[0] != "running", 300,
                           "the sweep finishes after the faults", interval=0.5)
            check(p[0] == "done", f"the sweep completes (state {p[0]})\n{p[3]}")
            check(p[1] == p[2] == SHARDS, f"all {SHARDS} shards are done ({p[1]}/{p[2]})")
            status = p[3]
            check("lease expired" in status,
                  "leases of killed workers expired and their shards were redone")
            duplicates = 0
            for name in os.listdir(workdir):
                if name.startswith("worker-"):
                    with open(os.path.join(workdir, name)) as f:
                        duplicates += f.read().count("(duplicate)")
            check(duplicates >= 1,
                  f"the report whose reply was dropped was retried and acknowledged as a "
                  f"duplicate ({duplicates} duplicate acknowledgements in the worker logs)")

            remote = ["--coordinator", cluster.address]
            for per_prompt in (False, True):
                got = rows(knockout, remote, per_prompt)
                want = rows(knockout, ["--store", reference], per_prompt)
                kind = "per-prompt" if per_prompt else "aggregate"
                keys = [json.dumps({k: v for k, v in json.loads(r).items()
                                    if k in ("table", "stage", "trial", "prompt_set", "prompt",
                                             "layer", "position")})
                        for r in got]
                check(len(keys) == len(set(keys)), f"{kind}: one committed row per key ({len(keys)})")
                check(got == want, f"{kind} rows equal the fault-free run's exactly ({len(got)} rows)")
            ref_dirs = os.path.join(workdir, "ref.safetensors")
            got_dirs = os.path.join(workdir, "got.safetensors")
            sh(knockout, "directions", "chaos", "--store", reference, "--export", ref_dirs)
            sh(knockout, "directions", "chaos", *remote, "--export", got_dirs)
            with open(ref_dirs, "rb") as a, open(got_dirs, "rb") as b:
                check(a.read() == b.read(), "the reduced directions equal the fault-free run's")
        finally:
            cluster.stop()
    print("chaos test passed")


if __name__ == "__main__":
    main()
