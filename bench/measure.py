#!/usr/bin/python3
"""Runs one benchmark command and records how much of the machine it had to itself.

  measure.py --out FILE [--wait-quiet SECONDS] [--max-other F --retries N] -- COMMAND ...

COMMAND's stdout goes to FILE; FILE.meta.json gets wall seconds, the command's own CPU seconds
(children's rusage), and `other_cpu_frac`: the CPU time that OTHER processes used during the
run, as a fraction of all cores x wall time (from /proc/stat). On a shared 2-core machine a run
with other_cpu_frac above ~0.05 is contaminated; multi-threaded (OpenMP) runs suffer most.
--wait-quiet: first wait up to SECONDS for a 2-second window in which the machine is >= 95% idle.
--max-other/--retries: run again (after waiting for quiet again) while other_cpu_frac > F, at
most N more times; the last attempt is kept and FILE.meta.json records every attempt's figure.
"""
import argparse, json, os, resource, subprocess, sys, time


def cpu_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])  # busy, total (guest time is already in user)


def wait_quiet(limit):
    start = time.time()
    while True:
        b0, t0 = cpu_jiffies()
        time.sleep(2)
        b1, t1 = cpu_jiffies()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy < 0.05:
            return True, time.time() - start
        if time.time() - start > limit:
            return False, time.time() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--wait-quiet", type=float, default=0)
    ap.add_argument("--max-other", type=float, default=1.0)
    ap.add_argument("--retries", type=int, default=0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    attempts = []
    for attempt in range(a.retries + 1):
        meta = run_once(a, cmd)
        attempts.append(meta["other_cpu_frac"])
        if meta["rc"] != 0 or meta["other_cpu_frac"] <= a.max_other:
            break
        print(f"measure.py: other processes used {100 * meta['other_cpu_frac']:.1f}% of the CPU "
              f"during the run" + (", running it again" if attempt < a.retries else ""),
              file=sys.stderr)
    meta["other_cpu_frac_per_attempt"] = attempts
    with open(a.out + ".meta.json", "w") as f:
        json.dump(meta, f)
    return meta["rc"]


def run_once(a, cmd):
    quiet, waited = (None, 0.0)
    if a.wait_quiet > 0:
        quiet, waited = wait_quiet(a.wait_quiet)
        if not quiet:
            print(f"measure.py: machine not quiet after {waited:.0f} s, running anyway",
                  file=sys.stderr)
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, _ = cpu_jiffies()
    w0 = time.perf_counter()
    with open(a.out, "w") as out:
        rc = subprocess.call(cmd, stdout=out)
    wall = time.perf_counter() - w0
    b1, _ = cpu_jiffies()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    other = max(0.0, (b1 - b0) / hz - own)
    meta = {"cmd": cmd, "rc": rc, "wall_s": round(wall, 3), "own_cpu_s": round(own, 3),
            "other_cpu_frac": round(other / (ncpu * wall), 4), "waited_for_quiet_s": round(waited, 1),
            "was_quiet": quiet, "loadavg_after": open("/proc/loadavg").read().split()[:3]}
    return meta


if __name__ == "__main__":
    sys.exit(main())
