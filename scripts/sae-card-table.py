#!/usr/bin/env python3
"""Prints the metrics table of models/demo-refusal/saes/README.md from the SAEs' cfg.json files.

usage: scripts/sae-card-table.py [SAES_DIR]   (default models/demo-refusal/saes)

Every number comes from `metadata.training` of layer_L/cfg.json, as `knockout-worker train-sae`
recorded it; worker/sae/demo_saes_test.cc reads the table back and measures each number again
through the runtime.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
saes = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "demo-refusal", "saes")
layers = sorted(int(d.split("_")[1]) for d in os.listdir(saes) if d.startswith("layer_"))
if not layers:
    sys.exit(f"{saes}: no layer_L directories")
print("| layer | FVU held-out | FVU harmful val | FVU harmless val | FVU framed val | L0 held-out | "
      "dead % (all sets) | CE answer harmless val (clean -> spliced) | KL answer harmless val | "
      "KL answer held-out | KL prompt harmless val | FVU train (last 5%) |")
print("|---" * 12 + "|")
for layer in layers:
    path = os.path.join(saes, f"layer_{layer}", "cfg.json")
    try:
        training = json.load(open(path))["metadata"]["training"]
        m = training["metrics"]
        ev = {os.path.basename(k).split("_")[0]: v for k, v in m["eval"].items()}
        h, harmless = m["held_out"], ev["harmless"]
        print(f"| {layer} | {h['fvu']:.4f} | {ev['harmful']['fvu']:.4f} | {harmless['fvu']:.4f} | "
              f"{ev['framed']['fvu']:.4f} | {h['l0']:.2f} | {100 * m['dead_fraction_all']:.2f}% | "
              f"{harmless['response']['ce_clean']:.3f} -> {harmless['response']['ce_spliced']:.3f} | "
              f"{harmless['response']['kl']:.4f} | {h['response']['kl']:.4f} | "
              f"{harmless['prompt']['kl']:.4f} | {training['final_train']['fvu']:.4f} |")
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"{path}: no training metrics ({type(e).__name__}: {e})")
