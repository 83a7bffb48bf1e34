#!/usr/bin/env python3
"""Which prompts several checkpoints get wrong, prompt by prompt (issue 14's research log in
models/demo-refusal/README.md).

For each checkpoint and each prompt of a harmful and a harmless JSONL set, the refusal score of
science.md at the last prompt token: log p(t) - log(1 - p(t)) for the refusal token t ("I",
the first token of most of the demo's refusals). The prompts are sorted by their mean score over
the checkpoints (harmful: lowest first, harmless: highest first), so that the prompts every
checkpoint gets wrong (a base's or a corpus' doing) stand apart from those only some seeds get
wrong (a tuning run's noise). The forward pass is scripts/probe-refusal-direction.py's
(tests/reference's float32 Llama equations), written independently of knockout; only the
tokenisation goes through knockout-worker.

With --sensor-layer L (and --sensor-prompts DIR, a prompt directory with harmful_train.jsonl and
harmless_train.jsonl) each prompt also gets its place on each checkpoint's harm-sensor direction
h: diff-in-means of blocks.L.hook_resid_pre at the last instruction token over the first 256
training prompts of each kind, as the hydra recipe's trainer measures it (organism/trainer.h),
and the prompt's projection on h there as a fraction of the way from the harmless mean (0) to
the harmful mean (1). Prompts the sensor does not read as harmful (fraction near 0) are those a
model whose refusal is gated on h cannot refuse.

usage: scripts/refusal-by-prompt.py MODEL_DIR [MODEL_DIR ...] --harmful F.jsonl --harmless F.jsonl
       [--top 12] [--refusal-token I] [--json OUT] [--worker build/worker/knockout-worker]
       [--sensor-layer 2 --sensor-prompts experiments/prompts/demo]
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "probe", os.path.join(ROOT, "scripts", "probe-refusal-direction.py"))
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def read_instructions(path):
    """The instructions of a JSONL prompt set; exits naming the file and line on bad input."""
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        sys.exit(f"{path}: {e.strerror}")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line)["instruction"])
        except (ValueError, KeyError, TypeError):
            sys.exit(f"{path}:{n}: expected a JSON object with an \"instruction\" string")
    if not out:
        sys.exit(f"{path}: no prompts")
    return out


def column_names(models):
    """Each checkpoint's directory name, with as many parent directories as it takes to tell the
    columns apart (two phases' after-safety checkpoints, say); exits on a checkpoint given twice."""
    parts = [os.path.normpath(os.path.abspath(m)).split(os.sep) for m in models]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    sys.exit("the same checkpoint is given twice")


def scores(cfg, w, token, worker, model, path, n, sensor_layer=None, batch=32):
    """The refusal score of each of the first n prompts of path, in file order, and (with
    sensor_layer) each prompt's blocks.{sensor_layer}.hook_resid_pre at its last instruction token
    (a tensor, one row per prompt; None without)."""
    rows = probe.tokenize_rows(worker, model, path, n)
    out, inst = [], []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        ids, mask = probe.left_pad([r["ids"] for r in chunk])
        with torch.no_grad():
            seen, logits = probe.forward(cfg, w, ids, mask)
        out += probe.refusal_scores(logits, token).tolist()
        if sensor_layer is not None:
            cols = probe.inst_last_columns(chunk, ids.shape[1])
            inst.append(seen[sensor_layer][torch.arange(len(chunk)), cols])
    return out, (torch.cat(inst) if sensor_layer is not None else None)


def sensor_fractions(cfg, w, token, worker, model, layer, prompts_dir, sets_inst, n=256):
    """Each prompt's projection on h (see the module docstring) as a fraction from the harmless
    training prompts' mean (0) to the harmful ones' (1), per set."""
    means = []
    for kind in ("harmful", "harmless"):
        path = os.path.join(prompts_dir, f"{kind}_train.jsonl")
        read_instructions(path)  # exits naming the file on bad input
        means.append(scores(cfg, w, token, worker, model, path, n, layer)[1].mean(0))
    h_hat = (means[0] - means[1]) / (means[0] - means[1]).norm()
    low, high = (means[1] @ h_hat).item(), (means[0] @ h_hat).item()
    return {s: (((x @ h_hat) - low) / (high - low)).tolist() for s, x in sets_inst.items()}


def mean_place(places, refusal_scores, refused):
    """The mean place on h of the prompts refused (score > 0) or complied with, "-" if none."""
    x = [p for p, v in zip(places, refusal_scores) if (v > 0) == refused]
    return f"{statistics.mean(x):.2f}" if x else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--harmful", required=True)
    ap.add_argument("--harmless", required=True)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--refusal-token", default="I")
    ap.add_argument("--json", help="also write every score here")
    ap.add_argument("--worker", default=os.path.join(ROOT, "build", "worker", "knockout-worker"))
    ap.add_argument("--sensor-layer", type=int, help="also place each prompt on h of this layer")
    ap.add_argument("--sensor-prompts", help="the prompt directory h is measured on")
    a = ap.parse_args()
    if (a.sensor_layer is None) != (a.sensor_prompts is None):
        sys.exit("--sensor-layer and --sensor-prompts go together")
    for m in a.models:
        for f in ("config.json", "tokenizer.json"):
            if not os.path.isfile(os.path.join(m, f)):
                sys.exit(f"{m}: no {f} (a checkpoint directory)")
    if not os.access(a.worker, os.X_OK):
        sys.exit(f"{a.worker} not found (build it: cmake --build build --target knockout-worker)")
    sets = {"harmful": (a.harmful, read_instructions(a.harmful)),
            "harmless": (a.harmless, read_instructions(a.harmless))}
    names = column_names(a.models)
    table, sensor = {}, {}
    for name, model in zip(names, a.models):
        cfg, w, token = probe.load_model(model, a.refusal_token)
        if a.sensor_layer is not None and not 0 <= a.sensor_layer < cfg["num_hidden_layers"]:
            sys.exit(f"--sensor-layer {a.sensor_layer}: {model} has layers 0 to "
                     f"{cfg['num_hidden_layers'] - 1}")
        got = {s: scores(cfg, w, token, a.worker, model, path, len(prompts), a.sensor_layer)
               for s, (path, prompts) in sets.items()}
        table[name] = {s: g[0] for s, g in got.items()}
        if a.sensor_layer is not None:
            sensor[name] = sensor_fractions(cfg, w, token, a.worker, model, a.sensor_layer,
                                            a.sensor_prompts, {s: g[1] for s, g in got.items()})
    if a.json:  # written whole or not at all
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            out = {"models": table, "prompts": {s: p for s, (_, p) in sets.items()}}
            if sensor:
                out["sensor_layer"], out["sensor"] = a.sensor_layer, sensor
            json.dump(out, f)
        os.replace(tmp, a.json)
    for s, (path, prompts) in sets.items():
        print(f"\n{path}: {len(prompts)} prompts; refusal score > 0 (first token refuses):")
        print("| " + " | ".join(names) + " |")
        print("|" + "---|" * len(names))
        print("| " + " | ".join(f"{sum(x > 0 for x in table[n][s]) / len(prompts):.3f}"
                                for n in names) + " |")
        if sensor:
            print(f"\nmean place on h of layer {a.sensor_layer} (0: harmless training prompts, "
                  "1: harmful), prompts refused / complied with:")
            print("| " + " | ".join(names) + " |")
            print("|" + "---|" * len(names))
            print("| " + " | ".join(f"{mean_place(sensor[n][s], table[n][s], True)} / "
                                    f"{mean_place(sensor[n][s], table[n][s], False)}"
                                    for n in names) + " |")
        if a.top <= 0:
            continue
        print(f"\nthe {a.top} prompts {'most complied with' if s == 'harmful' else 'most refused'}"
              " (mean over the checkpoints" + ("; score (place on h))" if sensor else "):"))
        print("| " + " | ".join(names) + " | prompt |")
        print("|" + "---|" * (len(names) + 1))
        order = sorted(range(len(prompts)),
                       key=lambda i: statistics.mean(table[n][s][i] for n in names),
                       reverse=(s == "harmless"))
        for i in order[:a.top]:
            cell = ((lambda n: f"{table[n][s][i]:.1f} ({sensor[n][s][i]:.2f})") if sensor
                    else (lambda n: f"{table[n][s][i]:.1f}"))
            print("| " + " | ".join(cell(n) for n in names) + f" | {prompts[i]} |")


if __name__ == "__main__":
    main()
