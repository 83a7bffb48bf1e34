"""What the chaos and multi-host tests share: assertions that print what they checked, a command
runner that fails with the command's output, and the parser of `knockout status SWEEP`."""
import re
import subprocess
import sys
import time


def fail(message):
    sys.exit("FAIL: " + message)


def check(condition, message):
    if not condition:
        fail(message)
    print("ok:", message, flush=True)


def sh(*cmd, check_rc=True, timeout=300):
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check_rc and proc.returncode != 0:
        fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def parse_status(text):
    """(sweep state, shards done, shards total, text) from `knockout status SWEEP`'s output: the
    first line names the state, the stage table's rows hold done/total."""
    head = re.search(r"^sweep \S+\s+\S+\s+(\w+)", text, re.M)
    if not head:
        return None
    # "  1  heads  knockout_sweep  running  12/384  384"
    counts = re.findall(r"^\s+\d+\s+\S+\s+\S+\s+\w+\s+(\d+)/(\d+)\s", text, re.M)
    return (head.group(1), sum(int(a) for a, _ in counts), sum(int(b) for _, b in counts), text)


def wait_until(progress, ready, timeout, what, interval=0.3):
    """Polls `progress()` (a parse_status result, or None while unreachable) until
    `ready(result)`; fails naming `what` and the last result after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        p = progress()
        if p and ready(p):
            return p
        if time.time() > deadline:
            fail(f"{what} within {timeout} s: {p}")
        time.sleep(interval)
