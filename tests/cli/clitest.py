"""Helpers shared by the end-to-end scripts in tests/cli: run a command, check a condition.
Each script stays runnable on its own (`python3 tests/cli/test_X.py ...`): this file sits beside
them and Python puts a script's directory on sys.path."""
import subprocess
import sys


def run(cmd, check=True, timeout=600):
    """Runs cmd (a list); exits the test with its output if it fails and `check` is set."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def check(condition, message):
    """Exits the test with FAIL: message unless condition; prints ok: message otherwise."""
    if not condition:
        sys.exit("FAIL: " + message)
    print("ok:", message)
