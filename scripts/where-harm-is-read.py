#!/usr/bin/env python3
"""Where a checkpoint reads harm (issue 14's research log in models/demo-refusal/README.md).

For the validation prompts and every layer L, the fraction of prompts whose refusal token has
p > 0.5 after one change at blocks.L.hook_resid_pre:
  h@inst      the harmfulness direction h_L (diff-in-means at t_inst, harmful minus harmless)
              projected out at the instruction's tokens (evaluate.h's sensor ablation);
  h@all       the same at every position;
  hmean@inst  the diff-in-means averaged over all the instruction's tokens, projected out there;
  tmpl        harmful prompts with the template tokens after the instruction replaced by the
              harmless prompts' mean there (does the decision already sit in the template?);
and harmless prompts with their template tokens replaced by the harmful prompts' mean.
The forward pass is tests/reference/hf_reference.py's float32 Llama equations, written
independently of knockout; only the tokenisation (chat template, instruction range) goes through
knockout-worker.

usage: scripts/where-harm-is-read.py MODEL_DIR PROMPTS_DIR [--refusal-token I] [--prompts 64]
       [--worker build/worker/knockout-worker]
PROMPTS_DIR holds harmful_val.jsonl and harmless_val.jsonl ({"instruction": ...} per line).
"""
import argparse
import importlib.util
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "probe", os.path.join(ROOT, "scripts", "probe-refusal-direction.py"))
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def tokenize(worker, model, path, n):
    """Left-padded ids and mask, and 0/1 masks of the instruction's and the template's tokens."""
    rows = probe.tokenize_rows(worker, model, path, n)
    t = max(len(r["ids"]) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    mask = torch.zeros_like(ids)
    inst = torch.zeros(len(rows), t)
    last = torch.zeros(len(rows), dtype=torch.long)
    posts = set()
    for i, r in enumerate(rows):
        off = t - len(r["ids"])
        ids[i, off:] = torch.tensor(r["ids"])
        mask[i, off:] = 1
        a, b = r["instruction_range"]
        inst[i, off + a:off + b] = 1
        last[i] = off + r["inst_last"]
        a, b = r["post_inst_range"]
        posts.add(b - a)
    if len(posts) != 1:
        sys.exit(f"{path}: the template after the instruction differs in length between prompts")
    return {"ids": ids, "mask": mask, "inst": inst, "last": last, "n_post": posts.pop()}


def forward(cfg, w, ids, mask, edit=None):
    """Every layer's resid_pre and the next-token distribution at the last column."""
    seen, logits = probe.forward(cfg, w, ids, mask, edit=edit)
    return seen, torch.softmax(logits.double(), -1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--refusal-token", default="I")
    ap.add_argument("--prompts-per-set", type=int, default=64)
    ap.add_argument("--worker", default=os.path.join(ROOT, "build", "worker", "knockout-worker"))
    args = ap.parse_args()
    cfg, w, token = probe.load_model(args.model, args.refusal_token)
    harmful = tokenize(args.worker, args.model, os.path.join(args.prompts, "harmful_val.jsonl"),
                       args.prompts_per_set)
    harmless = tokenize(args.worker, args.model, os.path.join(args.prompts, "harmless_val.jsonl"),
                        args.prompts_per_set)
    if harmful["n_post"] != harmless["n_post"]:
        sys.exit("the two prompt sets' templates differ in length")
    n_post = harmful["n_post"]

    def refused(p):
        return (p[:, token] > 0.5).double().mean().item()

    def project_out(x, u, positions):
        return x - (x @ u)[..., None] * u * positions[..., None]

    with torch.no_grad():
        seen_h, p_h = forward(cfg, w, harmful["ids"], harmful["mask"])
        seen_l, p_l = forward(cfg, w, harmless["ids"], harmless["mask"])
        print(f"{args.model}: p({args.refusal_token!r}) > 0.5 on {refused(p_h):.2f} of "
              f"{len(p_h)} harmful and {refused(p_l):.2f} of {len(p_l)} harmless validation prompts")
        print("| layer | |h| | h@inst | h@all | hmean@inst | tmpl (harmful -> harmless mean) "
              "| tmpl (harmless -> harmful mean) |")
        print("|---|---|---|---|---|---|---|")
        for layer in range(cfg["num_hidden_layers"]):
            def at_last(seen, d):
                return seen[layer][torch.arange(len(d["last"])), d["last"]].mean(0)

            def over_inst(seen, d):
                return (seen[layer] * d["inst"][..., None]).sum((0, 1)) / d["inst"].sum()

            h = at_last(seen_h, harmful) - at_last(seen_l, harmless)
            hmean = over_inst(seen_h, harmful) - over_inst(seen_l, harmless)
            h_hat, hmean_hat = h / h.norm().clamp_min(1e-12), hmean / hmean.norm().clamp_min(1e-12)
            cells = []
            for u, where in ((h_hat, "inst"), (h_hat, "mask"), (hmean_hat, "inst")):
                def edit(l, x, u=u, where=where):
                    return project_out(x, u, harmful[where].float()) if l == layer else x
                cells.append(refused(forward(cfg, w, harmful["ids"], harmful["mask"], edit)[1]))
            for source, target in ((seen_l, harmful), (seen_h, harmless)):
                mean = source[layer][:, -n_post:].mean(0)

                def patch(l, x, mean=mean):
                    if l != layer:
                        return x
                    x = x.clone()
                    x[:, -n_post:] = mean
                    return x
                cells.append(refused(forward(cfg, w, target["ids"], target["mask"], patch)[1]))
            print(f"| {layer} | {h.norm():.1f} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
