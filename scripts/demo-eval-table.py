#!/usr/bin/env python3
"""Issue 14's research: `knockout-organism eval-demo` JSON files as the model card's table (one
row per file: held-out harmful / harmless refused, the selected direction ablated everywhere /
added / its KL, r projected out at each layer from the direction's on, the harm sensor removed
(and +r), handwritten harmful / harmless refused, probe AUROC, a random direction ablated).
With --spread, two more rows: each figure's mean and range over the files (a seed spread,
scripts/demo-seed-spread.sh).

Usage: demo-eval-table.py [--spread] EVAL.json [EVAL.json ...]
"""
import json
import os
import sys

COLUMNS = ["run", "harmful / harmless refused (test)", "r: ablated / +r / KL",
           "single layers", "sensor (+r)", "handwritten harmful / harmless", "probe", "random"]


def figures(path):
    """The row's numbers, in column order (lists where a column has several)."""
    try:
        with open(path) as f:
            e = json.load(f)
        layer = e["direction_layer"]
        kl = next(l["val_kl"] for l in e["layers"] if l["layer"] == layer)
        sensor = e["sensor_layer"]
        if sensor < 0:  # set by eval-demo with --saes only: the same rule (evaluate.h)
            early = e["sensor_ablation_harmful_refused"][: len(e["layers"]) // 2]
            sensor = early.index(min(early))
        hw = e["handwritten"]
        return {
            "layer": layer, "sensor_layer": sensor,
            "test": [e["harmful_refused"], e["harmless_refused"]],
            "direction": [e["ablation_harmful_refused"], e["addition_harmless_refused"], kl],
            "single": e["layer_ablation_harmful_refused"][layer:],
            "sensor": [e["sensor_ablation_harmful_refused"][sensor],
                       e["sensor_ablation_addition_refused"][sensor]],
            "handwritten": [hw["harmful_refused"], hw["harmless_refused"]],
            "probe": [e["probe_auroc"]],
            "random": [e["random_ablation_harmful_refused"]],
        }
    except (OSError, ValueError, KeyError, IndexError, StopIteration, TypeError) as err:
        sys.exit(f"{path}: not an eval-demo JSON file ({type(err).__name__}: {err})")


def cells(fig, fmt):
    d = fig["direction"]
    return [
        " / ".join(fmt(x) for x in fig["test"]),
        f"L{fig['layer']}: " + " / ".join(fmt(x) for x in d),
        " / ".join(fmt(x) for x in fig["single"]),
        f"L{fig['sensor_layer']}: {fmt(fig['sensor'][0])} ({fmt(fig['sensor'][1])})",
        " / ".join(fmt(x) for x in fig["handwritten"]),
        fmt(fig["probe"][0]),
        fmt(fig["random"][0]),
    ]


def main(argv):
    spread = "--spread" in argv
    paths = [a for a in argv if a != "--spread"]
    if not paths or any(p.startswith("-") for p in paths):
        sys.exit(__doc__.strip().splitlines()[-1])
    rows = [(os.path.basename(p).removesuffix(".eval.json").removesuffix(".json"), figures(p))
            for p in paths]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    three = lambda x: f"{x:.3f}"
    for name, fig in rows:
        print(f"| {name} | " + " | ".join(cells(fig, three)) + " |")
    if spread and len(rows) > 1:
        figs = [f for _, f in rows]
        if len({(f["layer"], f["sensor_layer"], len(f["single"])) for f in figs}) != 1:
            sys.exit("--spread: the runs select different layers; their figures do not line up")
        keys = ["test", "direction", "single", "sensor", "handwritten", "probe", "random"]
        agg = {k: [[f[k][i] for f in figs] for i in range(len(figs[0][k]))] for k in keys}
        mean = dict(figs[0], **{k: [sum(v) / len(v) for v in agg[k]] for k in keys})
        print(f"| mean of {len(figs)} | " + " | ".join(cells(mean, three)) + " |")
        span = dict(figs[0], **{k: [(min(v), max(v)) for v in agg[k]] for k in keys})
        print("| range | " + " | ".join(cells(span, lambda r: f"{r[0]:.3f}-{r[1]:.3f}")) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
