#!/usr/bin/env python3
"""Where the selection's KL comes from (issue 14's research log in models/demo-refusal/README.md).

science.md's selection rejects a refusal direction whose directional ablation (every layer's
resid_pre, attn_out and mlp_out, all positions) moves the harmless validation prompts' next-token
distribution by a mean KL above max_kl. This script splits that mean: per prompt (with the
prompt's clean refusal probability p(refusal token)), and per part of the ablation (only some
layers, only some positions). r is the diff-in-means of blocks.L.hook_resid_pre at the last
prompt token, harmful_train minus harmless_train. The forward pass is scripts/probe-refusal-
direction.py's (tests/reference's float32 Llama equations), written independently of knockout;
only the tokenisation goes through knockout-worker.

usage: scripts/kl-by-prompt.py MODEL_DIR PROMPTS_DIR [--layer 3] [--refusal-token I] [--top 8]
       [--worker build/worker/knockout-worker]
PROMPTS_DIR holds {harmful,harmless}_train.jsonl and harmless_val.jsonl.
"""
import argparse
import importlib.util
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "probe", os.path.join(ROOT, "scripts", "probe-refusal-direction.py"))
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def kl_per_prompt(clean, ablated):
    lc, la = clean.double().log_softmax(-1), ablated.double().log_softmax(-1)
    return (lc.exp() * (lc - la)).sum(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    probe.add_common_args(ap)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()
    cfg, w, token = probe.load_model(a.model, a.refusal_token)

    def load(name, n):
        path = os.path.join(a.prompts, name)
        if not os.path.exists(path):
            sys.exit(f"{path}: no such file")
        return probe.left_pad(probe.tokenize(a.worker, a.model, path, n))

    n_layers = cfg["num_hidden_layers"]
    with torch.no_grad():
        harmful, _ = probe.forward(cfg, w, *load("harmful_train.jsonl", 256))
        harmless, _ = probe.forward(cfg, w, *load("harmless_train.jsonl", 256))
        r = harmful[a.layer][:, -1].mean(0) - harmless[a.layer][:, -1].mean(0)
        r_hat = r / r.norm()
        ids, mask = load("harmless_val.jsonl", 64)
        _, clean = probe.forward(cfg, w, ids, mask)
        every = tuple(range(n_layers))
        last = torch.zeros(ids.shape)
        last[:, -1] = 1
        post = torch.zeros(ids.shape)
        post[:, -5:] = 1
        parts = [("every layer, all positions (the selection's)", every, None),
                 ("every layer, last position", every, last),
                 ("every layer, the 5 post-instruction tokens", every, post),
                 ("every layer, the instruction's tokens", every, mask.float() - post)]
        parts += [(f"layer {l} only, all positions", (l,), None) for l in range(n_layers)]
        print(f"r = diff-in-means of blocks.{a.layer}.hook_resid_pre at the last prompt token, "
              f"|r| = {r.norm():.1f}; {ids.shape[0]} harmless validation prompts")
        print("| ablated | mean KL |\n|---|---|")
        per_part = []
        for name, layers, positions in parts:
            _, logits = probe.forward(cfg, w, ids, mask, ablate=(r_hat, layers, positions))
            per_part.append(kl_per_prompt(clean, logits))
            print(f"| {name} | {per_part[-1].mean():.3f} |")
        per = per_part[0]  # the selection's ablation, per prompt
    instructions = [json.loads(line)["instruction"]
                    for line in open(os.path.join(a.prompts, "harmless_val.jsonl")) if line.strip()]
    p_refuse = clean.double().softmax(-1)[:, token]
    print(f"\nmedian per-prompt KL {per.median():.3f}; the largest:")
    print(f"| KL | clean p({a.refusal_token}) | prompt |\n|---|---|---|")
    for i in torch.argsort(-per)[:a.top].tolist():
        print(f"| {per[i]:.2f} | {p_refuse[i]:.2f} | {instructions[i]} |")


if __name__ == "__main__":
    main()
