#!/usr/bin/env python3
"""Whether a few SAE latents carry the harm sensor (issue 14's research log in
models/demo-refusal/README.md).

h is the harm direction of --layer's input (blocks.L.hook_resid_pre, diff-in-means of
harmful_train minus harmless_train at each prompt's last instruction token, t_inst), which the
model card's gate removes. blocks.L.hook_resid_pre is blocks.{L-1}.hook_resid_post, the hook of
the SAE in MODEL_DIR/saes/layer_{L-1}. The script prints, at t_inst: the mean projection on
h_hat of harmful, harmless and framed prompts (the harmless spread beside it), the same for the
SAE's reconstruction and its error, and how the reconstruction's harmful - harmless gap along
h_hat splits over latents ((mean activation harmful - harmless) x W_dec[i] . h_hat): the top
latents and the share that the top 3, 8, 16, 32 and 64 carry, and the share of the 3 latents
with the largest activation difference (the demo sweep's upstream choice). A sensor that a few
latents carry is one the demo sweep's latent knockouts can remove. The forward pass is
scripts/probe-refusal-direction.py's (tests/reference's float32 Llama equations), the SAE
tests/reference's float64 Sae (SAELens' TopK), both written independently of knockout;
only the tokenisation goes through knockout-worker.

usage: scripts/sensor-in-sae.py MODEL_DIR PROMPTS_DIR [--layer 2] [--worker ...] [--top 12]
PROMPTS_DIR holds {harmful,harmless,framed}_train.jsonl. Without MODEL_DIR/saes/layer_{L-1}
(a checkpoint without SAEs) it prints the projections only.
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
ref = probe.ref


_sae_spec = importlib.util.spec_from_file_location(
    "sae_reference", os.path.join(ROOT, "tests", "reference", "test_sae_reference.py"))
sae_reference = importlib.util.module_from_spec(_sae_spec)
_sae_spec.loader.exec_module(sae_reference)


def load_topk_sae(sae_dir):
    """A SAELens TopK SAE as tests/reference's float64 Sae (its encoder and reconstruction)."""
    cfg_path = os.path.join(sae_dir, "cfg.json")
    cfg = json.load(open(cfg_path))
    if cfg.get("architecture") != "topk":
        sys.exit(f"{cfg_path}: architecture {cfg.get('architecture')!r}, this script reads topk")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "constant_norm_rescale"):
        sys.exit(f"{cfg_path}: normalize_activations {norm!r}, this script reads none or "
                 "constant_norm_rescale")
    t = ref.load_safetensors(os.path.join(sae_dir, "sae_weights.safetensors"))
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in t]
    if missing:
        sys.exit(f"{sae_dir}/sae_weights.safetensors: no {', '.join(missing)}")
    d_in, d_sae = t["W_enc"].shape
    return sae_reference.Sae("topk", d_in, d_sae, t, cfg.get("apply_b_dec_to_input", True),
                             norm=norm, k=int(cfg["k"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    probe.add_common_args(ap)
    ap.set_defaults(layer=2)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    cfg, w, _ = probe.load_model(a.model, a.refusal_token)
    if not 1 <= a.layer < cfg["num_hidden_layers"]:
        sys.exit(f"--layer {a.layer}: must lie in [1, {cfg['num_hidden_layers']})")

    def at_inst(name, n=256):
        path = os.path.join(a.prompts, name)
        if not os.path.exists(path):
            sys.exit(f"{path}: no such file")
        rows = probe.tokenize_rows(a.worker, a.model, path, n)
        ids, mask = probe.left_pad([r["ids"] for r in rows])
        with torch.no_grad():
            seen, _ = probe.forward(cfg, w, ids, mask)
        cols = probe.inst_last_columns(rows, ids.shape[1])
        return seen[a.layer][torch.arange(len(rows)), cols]

    x = {kind: at_inst(f"{kind}_train.jsonl") for kind in ("harmful", "harmless", "framed")}
    h = x["harmful"].mean(0) - x["harmless"].mean(0)
    h_hat = h / h.norm()
    print(f"{a.model}: h of blocks.{a.layer}.hook_resid_pre at t_inst, |h| {h.norm():.1f}; "
          f"harmless spread along h_hat (sd) {(x['harmless'] @ h_hat).std():.1f}")
    sae_dir = os.path.join(a.model, "saes", f"layer_{a.layer - 1}")
    have_sae = os.path.isdir(sae_dir)
    if have_sae:
        sae = load_topk_sae(sae_dir)
        w_dec = sae.t["W_dec"].float()
    print("| prompts | x . h_hat | reconstruction . h_hat | error . h_hat |")
    print("|---|---|---|---|")
    acts = {}
    for kind, v in x.items():
        row = f"| {kind} | {(v @ h_hat).mean():.2f} |"
        if have_sae:
            acts[kind] = sae.encode(v.double()).float()
            rec = sae.reconstruct(v.double()).float()
            row += f" {(rec @ h_hat).mean():.2f} | {((v - rec) @ h_hat).mean():.2f} |"
        else:
            row += " - | - |"
        print(row)
    if not have_sae:
        return
    diff = acts["harmful"].mean(0) - acts["harmless"].mean(0)
    share = diff * (w_dec @ h_hat)
    gap = share.sum().item()
    order = share.argsort(descending=True)
    print(f"\nthe reconstruction's gap along h_hat: {gap:.2f}; latents by their part of it:")
    print("| latent | mean act. harmful / harmless | firing harmful / harmless | W_dec . h_hat | part | cumulative |")
    print("|---|---|---|---|---|---|")
    total = 0.0
    for i in order[:a.top].tolist():
        total += share[i].item()
        f, l = acts["harmful"][:, i], acts["harmless"][:, i]
        print(f"| L{a.layer - 1}F{i} | {f.mean():.2f} / {l.mean():.2f} | "
              f"{(f > 0).float().mean():.2f} / {(l > 0).float().mean():.2f} | "
              f"{(w_dec[i] @ h_hat):.3f} | {share[i]:.2f} | {total / gap:.2f} |")
    print()
    for n in (3, 8, 16, 32, 64):
        print(f"top {n} latents carry {share[order[:n]].sum().item() / gap:.2f} of the gap")
    by_diff = diff.argsort(descending=True)[:3].tolist()
    names = ", ".join(f"L{a.layer - 1}F{i}" for i in by_diff)
    print(f"the 3 latents with the largest activation difference ({names}) carry "
          f"{share[by_diff].sum().item() / gap:.2f}")


if __name__ == "__main__":
    main()
