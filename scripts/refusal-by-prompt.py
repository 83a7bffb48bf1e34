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

usage: scripts/refusal-by-prompt.py MODEL_DIR [MODEL_DIR ...] --harmful F.jsonl --harmless F.jsonl
       [--top 12] [--refusal-token I] [--json OUT] [--worker build/worker/knockout-worker]
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


def scores(cfg, w, token, worker, model, path, n, batch=32):
    """The refusal score of each of the first n prompts of path, in file order."""
    rows = probe.tokenize(worker, model, path, n)
    out = []
    for i in range(0, len(rows), batch):
        ids, mask = probe.left_pad(rows[i:i + batch])
        with torch.no_grad():
            _, logits = probe.run(cfg, w, ids, mask)
        out += probe.refusal_scores(logits, token).tolist()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--harmful", required=True)
    ap.add_argument("--harmless", required=True)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--refusal-token", default="I")
    ap.add_argument("--json", help="also write every score here")
    ap.add_argument("--worker", default=os.path.join(ROOT, "build", "worker", "knockout-worker"))
    a = ap.parse_args()
    for m in a.models:
        for f in ("config.json", "tokenizer.json"):
            if not os.path.isfile(os.path.join(m, f)):
                sys.exit(f"{m}: no {f} (a checkpoint directory)")
    if not os.access(a.worker, os.X_OK):
        sys.exit(f"{a.worker} not found (build it: cmake --build build --target knockout-worker)")
    sets = {"harmful": (a.harmful, read_instructions(a.harmful)),
            "harmless": (a.harmless, read_instructions(a.harmless))}
    names = column_names(a.models)
    table = {}
    for name, model in zip(names, a.models):
        cfg, w, token = probe.load_model(model, a.refusal_token)
        table[name] = {s: scores(cfg, w, token, a.worker, model, path, len(prompts))
                       for s, (path, prompts) in sets.items()}
    if a.json:  # written whole or not at all
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"models": table, "prompts": {s: p for s, (_, p) in sets.items()}}, f)
        os.replace(tmp, a.json)
    for s, (path, prompts) in sets.items():
        print(f"\n{path}: {len(prompts)} prompts; refusal score > 0 (first token refuses):")
        print("| " + " | ".join(names) + " |")
        print("|" + "---|" * len(names))
        print("| " + " | ".join(f"{sum(x > 0 for x in table[n][s]) / len(prompts):.3f}"
                                for n in names) + " |")
        if a.top <= 0:
            continue
        print(f"\nthe {a.top} prompts {'most complied with' if s == 'harmful' else 'most refused'}"
              " (mean over the checkpoints):")
        print("| " + " | ".join(names) + " | prompt |")
        print("|" + "---|" * (len(names) + 1))
        order = sorted(range(len(prompts)),
                       key=lambda i: statistics.mean(table[n][s][i] for n in names),
                       reverse=(s == "harmless"))
        for i in order[:a.top]:
            print("| " + " | ".join(f"{table[n][s][i]:.1f}" for n in names) + f" | {prompts[i]} |")


if __name__ == "__main__":
    main()
