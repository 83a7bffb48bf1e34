#!/usr/bin/python3
"""An independent reference for knockout's SAE trainer (worker/sae/train.h, issue 13).

Reads IN.safetensors (written by worker/sae/train_test.cc): the initial SAE in the data's units
(W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, and threshold for jumprelu), training
batches x1, x2, ... [n, d_in], and in its metadata the options (architecture, scale s, k, k_aux,
AuxK weight, dead_tokens, L0 coefficient, bandwidth, Adam's lr/betas/epsilon). Runs those
optimiser steps with PyTorch autograd and torch.optim.Adam, written here from the papers:

  internal units: x / s; b_enc / s, b_dec / s, threshold / s (W_enc, W_dec unchanged)
  pre = (x - b_dec) W_enc + b_enc
  TopK (Gao et al. 2024): f = scatter(top-k of pre, ReLU'd); x_hat = f W_dec + b_dec
    loss = |x_hat - x|^2 / tv + AuxK,  tv = |x - mean_batch x|^2 (a constant)
    AuxK = c * min(1, dead / k_aux) * |e_hat - e|^2 / tv, e = x - x_hat (detached),
           e_hat = (top-min(k_aux, dead) of the dead latents' pre, ReLU'd) W_dec[dead]
    dead: latents with no positive activation over the last dead_tokens rows
  JumpReLU (Rajamanoharan et al. 2024): theta = exp(log_theta); f = JumpReLU(pre; theta);
    loss = |x_hat - x|^2 / tv + lambda * mean_rows sum_i H(pre_i - theta_i), with the paper's
    straight-through pseudo-derivatives (rectangle kernel K(u) = 1[|u| < 1/2], bandwidth eps):
      d JumpReLU / d theta = -(theta / eps) K((pre - theta) / eps),
      d H / d theta = -(1 / eps) K((pre - theta) / eps), d H / d pre = 0
  every step: W_dec.grad -= <W_dec.grad_i, W_dec_i> W_dec_i (row-wise); Adam; W_dec rows /= norm

Writes OUT.safetensors: the SAE after the steps in the data's units, and per step its fvu, l0
and aux term (float64 [steps]). Shares no code with knockout; it reuses only hf_reference.py's
safetensors reader/writer (itself independent).

Usage: sae_train_reference.py IN.safetensors OUT.safetensors
"""
import json
import math
import os
import struct
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hf_reference import load_safetensors, save_safetensors  # noqa: E402


def metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n).decode())
    return json.loads(header["__metadata__"]["options"])


class JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        kernel = (((pre - theta) / eps).abs() < 0.5).to(pre.dtype)
        grad_pre = (pre > theta).to(pre.dtype) * grad
        grad_theta = (-(theta / eps) * kernel * grad).sum(0)
        return grad_pre, grad_theta, None


class Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        kernel = (((pre - theta) / eps).abs() < 0.5).to(pre.dtype)
        return torch.zeros_like(pre), (-(1.0 / eps) * kernel * grad).sum(0), None


def main():
    src, dst = sys.argv[1], sys.argv[2]
    o = metadata(src)
    t = load_safetensors(src)
    s = o["scale"]
    topk = o["architecture"] == "topk"
    W_enc = t["W_enc"].clone().requires_grad_()
    b_enc = (t["b_enc"] / s).requires_grad_()
    W_dec = t["W_dec"].clone().requires_grad_()
    b_dec = (t["b_dec"] / s).requires_grad_()
    params = [W_enc, b_enc, W_dec, b_dec]
    if not topk:
        log_theta = torch.log(t["threshold"] / s).requires_grad_()
        params.append(log_theta)
    adam = torch.optim.Adam(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["epsilon"])
    d_sae = W_dec.shape[0]
    since_active = torch.zeros(d_sae, dtype=torch.int64)
    fvus, l0s, auxs = [], [], []
    for step in range(o["steps"]):
        x = t["x%d" % (step + 1)] / s
        n = x.shape[0]
        adam.zero_grad()
        pre = (x - b_dec) @ W_enc + b_enc
        tv = ((x - x.mean(0)) ** 2).sum().detach()
        aux = torch.zeros(())
        if topk:
            dead = since_active >= o["dead_tokens"]
            values, indices = pre.topk(o["k"], dim=1)
            f = torch.zeros_like(pre).scatter(1, indices, torch.relu(values))
            x_hat = f @ W_dec + b_dec
            fvu = ((x_hat - x) ** 2).sum() / tv
            n_dead = int(dead.sum())
            if n_dead > 0 and o["aux_coefficient"] > 0:
                dead_index = dead.nonzero().squeeze(1)
                k_aux = min(o["k_aux"], n_dead)
                weight = o["aux_coefficient"] * min(1.0, n_dead / o["k_aux"])
                pre_dead = pre[:, dead_index]
                av, ai = pre_dead.topk(k_aux, dim=1)
                f_aux = torch.zeros_like(pre_dead).scatter(1, ai, torch.relu(av))
                e = (x - x_hat).detach()
                e_hat = f_aux @ W_dec[dead_index]
                aux = weight * ((e_hat - e) ** 2).sum() / tv
            loss = fvu + aux
            active = f > 0
        else:
            theta = torch.exp(log_theta)
            f = JumpReLU.apply(pre, theta, o["bandwidth"])
            x_hat = f @ W_dec + b_dec
            fvu = ((x_hat - x) ** 2).sum() / tv
            l0 = Heaviside.apply(pre, theta, o["bandwidth"]).sum(1).mean()
            loss = fvu + o["l0_coefficient"] * l0
            active = f > 0
        loss.backward()
        with torch.no_grad():
            g = W_dec.grad
            g -= (g * W_dec).sum(1, keepdim=True) * W_dec
        adam.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
        fired = active.any(0)
        since_active += n
        since_active[fired] = 0
        fvus.append(float(fvu))
        l0s.append(float(active.sum()) / n)
        auxs.append(float(aux))
    out = {
        "W_enc": W_enc.detach(),
        "b_enc": (b_enc * s).detach(),
        "W_dec": W_dec.detach(),
        "b_dec": (b_dec * s).detach(),
        "fvu": torch.tensor(fvus, dtype=torch.float64).to(torch.float32),
        "l0": torch.tensor(l0s, dtype=torch.float32),
        "aux": torch.tensor(auxs, dtype=torch.float32),
    }
    if not topk:
        out["threshold"] = (torch.exp(log_theta) * s).detach()
    save_safetensors(dst, {k: v.contiguous() for k, v in out.items()})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
