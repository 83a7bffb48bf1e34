#!/usr/bin/env python3
"""Multi-host test in network namespaces: the coordinator in one namespace, three workers in
three others, joined by veth links to a bridge, over TLS with a bearer token (a certificate made
here with openssl). Checks that
  - a client without the token, and a plaintext client, are refused across the network;
  - a partitioned worker (its link down for several lease periods) loses its lease: the shard is
    redone by another worker and the partitioned worker's late result is ignored (the
    coordinator answers it as a duplicate, or the worker was told to drop it);
  - the sweep completes with exactly the rows of a fault-free embedded run.
Needs root and `ip netns` (exit 77, reported by ctest as skipped, when unavailable).

Usage: test_netns.py KNOCKOUT KNOCKOUT_COORDINATOR KNOCKOUT_WORKER SPEC
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_common import check, fail, parse_status, sh, wait_until  # noqa: E402

SUBNET = "10.199.{}.{}"
LEASE_SECONDS = "2"





def skip(reason):
    print("SKIP:", reason)
    sys.exit(77)


class Network:
    """A bridge in the coordinator's namespace, one veth link per worker namespace."""

    def __init__(self, workers):
        tag = f"{os.getpid() % 100000:05d}"
        self.net = os.getpid() % 200 + 20  # 10.199.<net>.0/24, per test run
        self.coord = f"kocoord{tag}"
        self.workers = [f"kowork{tag}{i}" for i in range(workers)]
        self.links = [f"kc{tag}{i}" for i in range(workers)]  # coordinator-side veth ends
        self.address = SUBNET.format(self.net, 1)
        self.created = []

    def up(self):
        sh("ip", "netns", "add", self.coord)
        self.created.append(self.coord)
        sh("ip", "-n", self.coord, "link", "set", "lo", "up")
        sh("ip", "-n", self.coord, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.coord, "addr", "add", f"{self.address}/24", "dev", "br0")
        sh("ip", "-n", self.coord, "link", "set", "br0", "up")
        for i, (ns, link) in enumerate(zip(self.workers, self.links)):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            peer = link.replace("kc", "kw", 1)
            sh("ip", "link", "add", link, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", link, "netns", self.coord)
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "-n", self.coord, "link", "set", link, "master", "br0")
            sh("ip", "-n", self.coord, "link", "set", link, "up")
            sh("ip", "-n", ns, "addr", "add", SUBNET.format(self.net, 10 + i) + "/24", "dev", peer)
            sh("ip", "-n", ns, "link", "set", peer, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def partition(self, i, down):
        sh("ip", "-n", self.coord, "link", "set", self.links[i], "down" if down else "up")

    def down(self):
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    knockout, coordinator_bin, worker_bin, spec = sys.argv[1:]
    if os.geteuid() != 0:
        skip("needs root for network namespaces")
    probe = subprocess.run(["ip", "netns", "add", f"koprobe{os.getpid()}"], capture_output=True)
    if probe.returncode != 0:
        skip("ip netns is not available: " + probe.stderr.decode().strip())
    subprocess.run(["ip", "netns", "del", f"koprobe{os.getpid()}"], capture_output=True)

    net = Network(3)
    procs = []
    with tempfile.TemporaryDirectory(prefix="knockout-netns-") as workdir:
        try:
            reference = os.path.join(workdir, "reference")
            sh(knockout, "run", spec, "--store", reference, "--workers", "1", "--threads", "1",
               "--no-summary", timeout=900)

            net.up()
            cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
            sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-subj", "/CN=knockout-coordinator", "-addext",
               f"subjectAltName=IP:{net.address}", "-keyout", key, "-out", cert)
            token = os.path.join(workdir, "token")
            with open(token, "w") as f:
                f.write("chaos-token-" + os.urandom(8).hex() + "\n")
            address = f"{net.address}:7443"
            tls = ["--tls-ca", cert, "--token-file", token]

            coord_log = open(os.path.join(workdir, "coordinator.log"), "w")
            coordinator = subprocess.Popen(
                ["ip", "netns", "exec", net.coord, coordinator_bin, "--store",
                 os.path.join(workdir, "store"), "--listen", address, "--tls-cert", cert,
                 "--tls-key", key, "--token-file", token, "--lease-seconds", LEASE_SECONDS],
                stdout=subprocess.PIPE, stderr=coord_log, text=True)
            procs.append(coordinator)
            line = coordinator.stdout.readline()
            check("listening on" in line, f"coordinator listens on {address} with TLS")

            def client(ns, *args, check_rc=True):
                return sh("ip", "netns", "exec", ns, knockout, *args, "--coordinator", address,
                          check_rc=check_rc)

            # Security across the network.
            refused = sh("ip", "netns", "exec", net.workers[0], knockout, "status",
                         "--coordinator", address, "--tls-ca", cert, check_rc=False)
            check(refused.returncode != 0 and "Unauthenticated" in refused.stderr,
                  f"no token: refused ({refused.stderr.strip()})")
            plain = sh("ip", "netns", "exec", net.workers[0], knockout, "status",
                       "--coordinator", address, "--token-file", token, check_rc=False)
            check(plain.returncode != 0, "plaintext against the TLS port: refused")

            submitted = client(net.workers[0], "submit", spec, *tls).stdout
            check(submitted.startswith("chaos-"), f"submitted from another host: {submitted.strip()}")

            logs = []
            for i, ns in enumerate(net.workers):
                log = os.path.join(workdir, f"worker-{i}.log")
                logs.append(log)
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, worker_bin, "--coordinator", address, *tls,
                     "--threads", "1", "--name", f"host{i}"],
                    stdout=open(log, "w"), stderr=subprocess.STDOUT))

            def progress():
                proc = client(net.coord, "status", "chaos", *tls, check_rc=False)
                if proc.returncode != 0:
                    return None
                return parse_status(proc.stdout)

            p = wait_until(progress, lambda p: p[1] >= 40, 120, "progress over the network")
            check(True, f"workers in three namespaces make progress ({p[1]}/{p[2]})")

            # Partition host0 right after it is granted a lease (the log line comes before it
            # runs the shard, which takes tens of milliseconds), for three lease periods. If it
            # was quicker than the partition (its report went through first), try again.
            def leased_lines():
                with open(logs[0]) as f:
                    return re.findall(r"leased (\S+)/(\d+)/(\d+) attempt", f.read())
            lines = []
            for attempt in range(5):
                seen = len(leased_lines())
                deadline = time.time() + 60
                while len(leased_lines()) == seen:
                    if time.time() > deadline:
                        fail("host0 leased nothing for 60 s")
                    time.sleep(0.002)
                net.partition(0, down=True)
                _, stage, shard = leased_lines()[-1]
                held = f"shard {stage}/{shard} "
                time.sleep(3 * float(LEASE_SECONDS))
                during = progress()
                net.partition(0, down=False)
                lines = [line for line in (during[3] if during else "").splitlines()
                         if line.strip().startswith(held)]
                if lines and "lease expired (worker host0" in lines[0]:
                    break
                print(f"partition {attempt + 1}: host0 reported {held.strip()} before the link "
                      f"went down; again", flush=True)
                time.sleep(1)
            check(lines and "lease expired (worker host0" in lines[0],
                  f"the partitioned worker's lease on {held.strip()} expired: " +
                  (lines[0].strip() if lines else "(not in the status)"))

            p = wait_until(progress, lambda p: p[0] != "running", 300, "the sweep finishes",
                           interval=0.5)
            check(p[0] == "done", f"the sweep completes\n{p[3]}")
            # host0 finished the shard during the partition; its report, retried once the link
            # was back, came after another worker's commit: acknowledged as a duplicate and
            # ignored (or host0 was told to drop it by a heartbeat first).
            time.sleep(1)
            with open(logs[0]) as f:
                host0 = f.read()
            fate = re.findall(rf"(?:reported|not reporting|dropping) \S+/{stage}/{shard} .*", host0)
            check(fate and re.search(r"duplicate|drop", fate[-1]) is not None,
                  "the partitioned worker's late result was ignored: " +
                  (fate[-1] if fate else "(nothing in its log)"))
            shards = progress()[3]
            check(f"shard {stage}/{shard} done" in shards, f"shard {stage}/{shard} was redone elsewhere")

            def rows(prefix, source):
                out = sh(*prefix, knockout, "results", "chaos", "--format", "jsonl",
                         "--per-prompt", *source).stdout
                return sorted(out.splitlines())
            got = rows(["ip", "netns", "exec", net.coord], ["--coordinator", address, *tls])
            want = rows([], ["--store", reference])
            check(got == want, f"rows equal the fault-free run's ({len(got)} rows)")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            net.down()
    print("multi-host test passed")


if __name__ == "__main__":
    main()
