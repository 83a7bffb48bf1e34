#!/usr/bin/env python3
"""Attribution screening end to end on the shipped demo model (issue 16).

1. The issue's example spec (its stages verbatim, under the demo model's header) validates and
   runs: a screen of every head and the layer 3-5 SAE latents, then the screen's top 16 heads
   verified by real knockouts; `knockout screen-check` prints a line naming "Spearman".
2. experiments/specs/demo-screen.yaml: every head verified (top 16 + the 32 others drawn at
   random), the top 16 + 16 random neurons of layer 2 and latents of layers 3-5. Checks, against
   the stored knockouts (not against the screen's own numbers):
   - the screen's rank correlation with the real TE of all 48 heads is at least HEAD_SPEARMAN;
   - the real top 5 heads by |TE| are all in the screen's top 16;
   - the latent screen's correlation is at least LATENT_SPEARMAN.
   The bounds sit below what docs/benchmarks.md measured (head Spearman 0.96 on this model and
   these prompts), so that a regression of the screen, not noise, fails them.
3. Bad screen specs are refused at validation, naming the field.

Usage: test_screen_sweep.py KNOCKOUT SPEC_DIR
"""
import csv
import io
import os
import sys
import tempfile

from clitest import check, run

HEAD_SPEARMAN = 0.85
LATENT_SPEARMAN = 0.7


def tables(text):
    """`--format csv` output: one table, or several as one long CSV whose first column `table`
    names each row's table. Returns {table name: [row dicts]} ("results" when there is no
    `table` column)."""
    named = {}
    for row in csv.DictReader(io.StringIO(text)):
        name = row.pop("table", None) or "results"
        named.setdefault(name, []).append(row)
    return named


def screen_check(knockout, sweep, store):
    """screen-check's tables by name: units, hooks (integrated gradients only), summary."""
    out = run([knockout, "screen-check", sweep, "--stage", "screen", "--store", store,
               "--format", "csv"]).stdout
    names = {"screen_check": "summary", "screen_hooks": "hooks", "screen_units": "units"}
    return {names[name]: rows for name, rows in tables(out).items()}


ISSUE_STAGES = """stages:
  - name: screen
    attribution_screen:
      prompt_sets: [harmful_val]
      units: [{kind: heads}, {kind: sae_latents, layers: [3, 4, 5]}]
      method: atp              # atp | atp_star | integrated_gradients
      steps: 10                # integrated_gradients only
      ablation: zero
      positions: [post_inst]
      metric: refusal_score
  - name: verify
    knockout_sweep:
      prompt_sets: [harmful_val]
      targets: [{kind: heads, from: screen, top_k: 16}]
      ablations: [zero]
      positions: [post_inst]
"""


def header(spec_dir, name, limit=8):
    root = os.path.abspath(os.path.join(spec_dir, "..", ".."))
    saes = "".join(f"  blocks.{l}.hook_resid_post: {root}/models/demo-refusal/saes/layer_{l}\n"
                   for l in (3, 4, 5))
    return f"""name: {name}
seed: 42
model: {{path: {root}/models/demo-refusal, dtype: float32, device: cpu}}
prompt_sets:
  harmful_val: {{path: {root}/experiments/prompts/demo/harmful_val.jsonl, limit: {limit}}}
  harmless_val: {{path: {root}/experiments/prompts/demo/harmless_val.jsonl, limit: {limit}}}
saes:
{saes}metrics:
  refusal_tokens: ["I"]
"""


def refused(knockout, path, text, field):
    with open(path, "w") as f:
        f.write(text)
    proc = run([knockout, "validate", path], check=False)
    message = (proc.stdout + proc.stderr).strip()
    check(proc.returncode != 0 and field in message and "Traceback" not in message,
          f"refused naming {field}: {message.splitlines()[-1] if message else '(nothing)'}")


def main():
    knockout, spec_dir = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        # 1. The issue's example.
        spec = os.path.join(tmp, "issue.yaml")
        with open(spec, "w") as f:
            f.write(header(spec_dir, "issue-screen") + ISSUE_STAGES)
        run([knockout, "validate", spec])
        store = os.path.join(tmp, "issue-store")
        run([knockout, "run", spec, "--store", store, "--no-summary"])
        out = run([knockout, "screen-check", "issue-screen", "--stage", "screen", "--store", store]).stdout
        lines = [line for line in out.splitlines() if "Spearman" in line]
        check(len(lines) == 1 and "heads" in lines[0], f"screen-check names Spearman: {lines}")
        rows = tables(run([knockout, "results", "issue-screen", "--stage", "screen", "--store", store,
                           "--format", "csv"]).stdout)["results"]
        check(len(rows) == 48 + 3 * 1024, f"one screen row per unit: {len(rows)}")

        # 2. The demo screening spec: every head verified.
        store = os.path.join(tmp, "demo-store")
        run([knockout, "run", os.path.join(spec_dir, "demo-screen.yaml"), "--store", store, "--no-summary"])
        named = screen_check(knockout, "demo-screen", store)
        units, summary = named["units"], named["summary"]
        check("hooks" not in named, "first-order screens have no completeness rows")
        by_kind = {r["unit_kind"]: r for r in summary}
        head = by_kind["head"]
        check(int(head["units"]) == 48, f"all 48 heads verified: {head['units']}")
        rho = float(head["spearman"])
        check(rho >= HEAD_SPEARMAN, f"heads: Spearman {rho:.3f} >= {HEAD_SPEARMAN}")
        heads = [u for u in units if u["unit"].startswith("L") and "H" in u["unit"] and "F" not in u["unit"]]
        real_top = sorted(heads, key=lambda u: -abs(float(u["te"])))[:5]
        check(all(u["chosen"] == "top" for u in real_top),
              "the real top 5 heads by |TE| are in the screen's top 16: " +
              ", ".join(f"{u['unit']} (screen rank {u['kind_rank']} among heads)" for u in real_top))
        latent = by_kind["sae_latent"]
        check(float(latent["spearman"]) >= LATENT_SPEARMAN,
              f"latents: Spearman {float(latent['spearman']):.3f} >= {LATENT_SPEARMAN}")
        check(int(by_kind["neuron"]["units"]) == 32, "32 neurons verified")
        print("neurons: Spearman", by_kind["neuron"]["spearman"], "recall", by_kind["neuron"]["top_k_recall"])

        # 3. Integrated gradients along the path to a patched run (the refusal direction of layer
        # 3 ablated at every layer; Yeo et al.), for heads of two layers and a direction unit:
        # completeness, the attributions of a hook's units sum to the exact effect of patching
        # them all (an independent forward pass), within 5% with 32 steps.
        spec = os.path.join(tmp, "ig.yaml")
        with open(spec, "w") as f:
            f.write(header(spec_dir, "ig-screen", limit=16) + """stages:
  - name: refusal
    extract_directions:
      positive: harmful_val
      negative: harmless_val
      layers: [3]
      positions: ["post_inst[-1]"]
  - name: screen
    attribution_screen:
      prompt_sets: [harmful_val]
      units: [{kind: heads, layers: [1, 4]}, {kind: direction, layers: [2, 4],
               direction: {stage: refusal, layer: 3, position: "post_inst[-1]"}}]
      method: integrated_gradients
      steps: 32
      ablation: patch
      patch: {direction: {stage: refusal, layer: 3, position: "post_inst[-1]"}}
      positions: [all]
  - name: verify
    knockout_sweep:
      prompt_sets: [harmful_val]
      targets: [{kind: heads, from: screen, top_k: 4, random: 4}]
      ablations: [zero]
      positions: [all]
""")
        store = os.path.join(tmp, "ig-store")
        run([knockout, "run", spec, "--store", store, "--no-summary"])
        hooks = screen_check(knockout, "ig-screen", store)["hooks"]
        check(len(hooks) == 4, f"two head hooks and two direction units: {[h['hook'] for h in hooks]}")
        for h in hooks:
            effect, attributed = float(h["effect"]), float(h["attributed"])
            check(abs(effect) > 1e-3 and abs(attributed - effect) <= 0.05 * abs(effect) + 1e-3,
                  f"completeness at {h['hook']}: sum of IG {attributed:.4f} vs effect {effect:.4f}")

        # 4. Bad specs.
        bad = os.path.join(tmp, "bad.yaml")
        base = header(spec_dir, "bad")
        screen = """stages:
  - name: screen
    attribution_screen:
      prompt_sets: [harmful_val]
      units: [{kind: heads}]
      positions: [post_inst]
"""
        refused(knockout, bad, base + screen.replace("      positions", "      metric: kl\n      positions"),
                "stages[0].metric")
        refused(knockout, bad, base.replace('refusal_tokens: ["I"]', "refusal_tokens: []") + screen,
                "metrics.refusal_tokens")
        refused(knockout, bad, base + screen.replace("      positions", "      method: gradient\n      positions"),
                "stages[0].method")
        refused(knockout, bad, base + screen.replace("      positions", "      ablation: patch\n      positions"),
                "stages[0].patch")
        refused(knockout, bad, base + screen.replace("{kind: heads}", "{kind: heads, layers: [9]}"),
                "stages[0].units[0].layers")
        verify = """  - name: verify
    knockout_sweep:
      prompt_sets: [harmful_val]
      targets: [{kind: neurons, from: screen, top_k: 4}]
      ablations: [zero]
      positions: [post_inst]
"""
        refused(knockout, bad, base + screen + verify, "stages[1].targets[0].kind")
        refused(knockout, bad, base + screen + verify.replace("from: screen", "from: nowhere"),
                "stages[1].targets[0].from")
        refused(knockout, bad, base + screen + verify.replace("neurons", "heads").replace(
            "ablations: [zero]", "ablations: [patch]"),
                "stages[1].ablations[0]")


if __name__ == "__main__":
    main()
