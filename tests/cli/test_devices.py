#!/usr/bin/python3
"""`knockout run --devices` (issue 15, "Several GPUs per machine"): one worker per listed device,
each started with `knockout-worker --device D`. On this CPU machine `--devices cpu,cpu` must run
a small head sweep on the demo model with two workers (two worker logs, both named in the
coordinator's worker table through their shards), with exactly the rows of a one-worker run; a
device that is not cpu / cuda / cuda:N, or a --workers count that contradicts the list, is
refused before a store exists.

Usage: test_devices.py KNOCKOUT MODEL_DIR PROMPTS_DIR
"""
import json
import os
import sys
import tempfile

from clitest import check, run  # noqa: E402  (tests/cli/clitest.py)


SPEC = """name: devices
model: {{path: {model}}}
prompt_sets:
  harmful: {{path: {prompts}/harmful_val.jsonl, limit: 8}}
metrics:
  refusal_tokens: ["I"]
shard_trials: 4
stages:
  - name: heads
    knockout_sweep:
      prompt_sets: [harmful]
      targets:
        - {{kind: heads, layers: [0, 1]}}
      ablations: [zero]
      positions: [post_inst]
"""


def rows(knockout, store):
    out = run([knockout, "results", "devices", "--stage", "heads", "--store", store,
               "--format", "jsonl"]).stdout
    return sorted((json.loads(line) for line in out.splitlines() if line.strip()),
                  key=lambda r: json.dumps(r, sort_keys=True))


def main():
    knockout = sys.argv[1]
    model, prompts = (os.path.abspath(p) for p in sys.argv[2:4])
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "devices.yaml")
        with open(spec, "w") as f:
            f.write(SPEC.format(model=model, prompts=prompts))

        two = os.path.join(tmp, "two")
        run([knockout, "run", spec, "--store", two, "--devices", "cpu,cpu", "--threads", "1",
             "--no-summary"])
        logs = sorted(p for p in os.listdir(two) if p.startswith("worker-") and p.endswith(".log"))
        check(logs == ["worker-1.log", "worker-2.log"], f"one worker per device: {logs}")
        one = os.path.join(tmp, "one")
        run([knockout, "run", spec, "--store", one, "--threads", "1", "--no-summary"])
        a, b = rows(knockout, two), rows(knockout, one)
        check(len(a) == 16 and a == b,
              f"--devices cpu,cpu stores the rows of a one-worker run ({len(a)} rows)")

        for flags, words in ((["--devices", "cpu,tpu"], 'entry 2 "tpu" is not a device'),
                             (["--devices", "cuda:x"], '"cuda:x" is not a device'),
                             (["--devices", "cpu,cpu", "--workers", "3"], "--workers asks for 3")):
            store = os.path.join(tmp, "bad")
            proc = run([knockout, "run", spec, "--store", store, *flags], check=False)
            check(proc.returncode != 0 and words in proc.stderr and not os.path.exists(store),
                  f"{' '.join(flags)} refused before a store exists: {proc.stderr.strip()}")


if __name__ == "__main__":
    main()
