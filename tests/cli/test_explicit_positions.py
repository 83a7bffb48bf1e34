#!/usr/bin/env python3
"""Explicit position lists end to end (issue 12, "One position grammar"): a spec whose
extract_directions and knockout_sweep stages use `positions: ["[3,-1]"]` passes `knockout
validate` and `knockout run` finishes on the demo model with rows labelled `[3,-1]` (before, the
workers refused the selector text the spec printed). And a position outside the prompts is
refused by `validate` and by `run` with the spec's file, line and field, before a store exists.

Usage: test_explicit_positions.py KNOCKOUT MODEL_DIR PROMPTS_DIR
"""
import json
import os
import sys
import tempfile

from clitest import check, run  # noqa: E402  (tests/cli/clitest.py)


def spec(model, prompts, positions):
    # Line numbers matter for the error test: the knockout stage's positions are on line 25.
    return f"""name: explicit-positions
model: {{path: {model}}}
prompt_sets:
  harmful: {{path: {prompts}/harmful_val.jsonl, limit: 4}}
  harmless: {{path: {prompts}/harmless_val.jsonl, limit: 4}}
metrics:
  refusal_tokens: ["I"]
stages:
  - name: extract
    extract_directions:
      positive: harmful
      negative: harmless
      layers: [1]
      positions: ["[3,-1]", post_inst[-1]]
  - name: sweep
    knockout_sweep:
      prompt_sets: [harmful]
      targets:
        - {{kind: heads, layers: [0], units: [0, 1]}}
      ablations: [zero]
      positions:
        - post_inst
        - [0, -2]
        - "[3,-1]"
        - {positions}
  - name: directions
    knockout_sweep:
      prompt_sets: [harmful]
      targets:
        - {{kind: direction, layers: [1], direction: {{stage: extract, layer: 1, position: "[3,-1]"}}}}
      ablations: [directional]
      positions: ["[3,-1]"]
"""


def main():
    knockout, model, prompts = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as tmp:
        good = os.path.join(tmp, "good.yaml")
        with open(good, "w") as f:
            f.write(spec(model, prompts, "inst_last"))
        out = run([knockout, "validate", good]).stdout
        check("ok" in out, "validate accepts explicit positions")

        store = os.path.join(tmp, "store")
        run([knockout, "run", good, "--store", store, "--no-summary"])
        rows = []
        for stage in ("sweep", "directions"):
            out = run([knockout, "results", "explicit-positions", "--stage", stage,
                       "--store", store, "--format", "jsonl"]).stdout
            rows += [json.loads(line) for line in out.splitlines() if line.strip()]
        positions = sorted({r.get("positions") for r in rows if r.get("positions")})
        check({"[3,-1]", "[0,-2]", "post_inst", "inst_last"} <= set(positions),
              f"rows for every selector, explicit ones in canonical text: {positions}")
        explicit = [r for r in rows if r.get("positions") == "[3,-1]"]
        check(len(explicit) == 3, f"3 rows at [3,-1] (2 heads + 1 direction), got {len(explicit)}")
        out = run([knockout, "results", "explicit-positions", "--stage", "sweep", "--store", store,
                   "--format", "jsonl", "--where", "positions=[ 3, -1 ]"]).stdout
        check(len([l for l in out.splitlines() if l.strip()]) == 2,
              "--where positions= matches the canonical spelling")

        # Demo prompts render to well under 4096 tokens: outside every prompt.
        bad = os.path.join(tmp, "bad.yaml")
        with open(bad, "w") as f:
            f.write(spec(model, prompts, '"[4096]"'))
        where = f"{bad}:25: stages[1].positions[3]: "
        for command in (["validate", bad], ["run", bad, "--store", os.path.join(tmp, "bad-store")]):
            proc = run([knockout, *command], check=False)
            check(proc.returncode != 0 and where in proc.stderr and "[4096]" in proc.stderr,
                  f"`knockout {command[0]}` refuses a position outside the prompts: "
                  f"{proc.stderr.strip()}")
        check(not os.path.exists(os.path.join(tmp, "bad-store")), "nothing stored for the bad spec")


if __name__ == "__main__":
    main()
