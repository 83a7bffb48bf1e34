#!/usr/bin/python3
"""An independent float64 reference for knockout's SAE support (issue 13).

Writes SAE files in all three formats itself (SAELens cfg.json + sae_weights.safetensors, Gemma
Scope params.npz, EleutherAI sparsify cfg.json + sae.safetensors), for every architecture
(standard, jumprelu, topk, gated; sparsify topk; Gemma Scope jumprelu) and the three SAELens
normalizations, at residual, sublayer and attn.hook_z hooks of a tiny Llama (GQA) and a tiny
Qwen2 checkpoint, and checks `knockout-worker sae encode --dense` (latents, l0, fvu) and
`knockout-worker forward --sae ... --sae-clamp ...` (full last-position logits) against float64
math written here:

  encode  pre = (x * s - b_dec * apply_b_dec_to_input) W_enc + b_enc
          standard ReLU(pre); jumprelu ReLU(pre) * 1[pre > threshold]; topk: the k largest pre,
          ReLU'd, the rest 0; gated 1[x_c W_enc + b_gate > 0] * ReLU(x_c (W_enc * exp(r_mag)) +
          b_mag); sparsify: TopK over ReLU(encoder(x - b_dec)) (its own code's convention)
  decode  (f W_dec + b_dec) / s;  s = 1 | the file's scaling_factor | sqrt(d_in) / |x| per token
  edit    x' = x + ((f' - f)[clamped] W_dec[clamped]) / s   at every position (error term kept)
  fvu     |x - x_hat|^2 / |x - mean(x)|^2 over the d_in components of the last position

from /work/shared/docs/science.md ("SAE formats and encoders"), SAELens' and sparsify's
documented conventions, and the file layouts (safetensors spec; NumPy .npz). The model forward is
written here in float64 from Hugging Face's modeling_llama.py / modeling_qwen2.py, with
TransformerLens hook points. Shares NO code with knockout; from hf_reference.py (itself
independent) it reuses only its checkpoint writer and its safetensors writer/reader.

Usage: test_sae_reference.py KNOCKOUT_WORKER
Exit 0: every value within 1e-4 (max abs, f32 compute); 1: a mismatch (each printed).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hf_reference import load_checkpoint, save_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)
TOL = 1e-4
MARGIN = 1e-3  # keep every jump (threshold, gate, top-k boundary) this far from the inputs
WORKER = sys.argv[1] if len(sys.argv) > 1 else None
results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    results["passed" if condition else "failed"] += 1
    shown = not condition or os.environ.get("VERBOSE")  # VERBOSE=1: the values of passes too
    print(("PASS " if condition else "FAIL ") + name + (": " + str(detail) if shown else ""),
          flush=True)


def run(*args):
    threads = [] if args[:2] == ("sae", "inspect") else ["--threads", "1"]
    return subprocess.run([WORKER, *args, *threads], capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------ model
class Model:
    """LlamaForCausalLM / Qwen2ForCausalLM in float64, one unpadded sequence per call, with
    TransformerLens hook points: edits[name] = fn(activation) -> activation, and `seen` records
    every hook's activation (after its edit)."""

    def __init__(self, model_dir):
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        assert cfg["model_type"] in ("llama", "qwen2") and not cfg.get("rope_scaling"), cfg
        assert not cfg.get("use_sliding_window"), cfg  # Qwen2's sliding_window is then ignored
        self.cfg = cfg
        self.L = cfg["num_hidden_layers"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg["num_key_value_heads"]
        self.d = cfg["hidden_size"]
        self.dh = cfg.get("head_dim") or self.d // self.nh
        self.eps = cfg["rms_norm_eps"]
        self.w = {k: v.to(torch.float64) for k, v in load_checkpoint(model_dir).items()}
        self.vocab = cfg["vocab_size"]

    def width(self, hook):
        return self.nh * self.dh if hook.endswith("attn.hook_z") else self.d

    def rms(self, x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def lin(self, x, name):
        out = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return out if bias is None else out + bias

    def forward(self, ids, edits=None):
        edits = edits or {}
        seen = {}

        def hook(name, x):
            if name in edits:
                x = edits[name](x)
            seen[name] = x
            return x

        T = len(ids)
        x = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        pos = torch.arange(T, dtype=torch.float64)
        inv = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, self.dh, 2, dtype=torch.float64) / self.dh))
        freqs = pos[:, None] * inv[None]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos()[None], emb.sin()[None]  # [1, T, dh]

        def rot(t):
            return torch.cat([-t[..., self.dh // 2:], t[..., :self.dh // 2]], -1)

        causal = torch.ones(T, T, dtype=torch.bool).tril()
        for l in range(self.L):
            p = f"model.layers.{l}."
            x = hook(f"blocks.{l}.hook_resid_pre", x)
            h = self.rms(x, self.w[p + "input_layernorm.weight"])
            q = self.lin(h, p + "self_attn.q_proj").view(T, self.nh, self.dh).transpose(0, 1)
            k = self.lin(h, p + "self_attn.k_proj").view(T, self.nkv, self.dh).transpose(0, 1)
            v = self.lin(h, p + "self_attn.v_proj").view(T, self.nkv, self.dh).transpose(0, 1)
            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
            group = self.nh // self.nkv
            k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
            scores = scores.masked_fill(~causal, float("-inf"))
            z = (torch.softmax(scores, -1) @ v).transpose(0, 1)  # [T, nh, dh]
            z = hook(f"blocks.{l}.attn.hook_z", z)
            attn_out = hook(f"blocks.{l}.hook_attn_out",
                            self.lin(z.reshape(T, self.nh * self.dh), p + "self_attn.o_proj"))
            x = hook(f"blocks.{l}.hook_resid_mid", x + attn_out)
            h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
            act = torch.nn.functional.silu(self.lin(h, p + "mlp.gate_proj")) * self.lin(h, p + "mlp.up_proj")
            mlp_out = hook(f"blocks.{l}.hook_mlp_out", self.lin(act, p + "mlp.down_proj"))
            x = hook(f"blocks.{l}.hook_resid_post", x + mlp_out)
        x = self.rms(x, self.w["model.norm.weight"])
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return x @ head.T, seen


# ------------------------------------------------------------------------------------ SAEs
class Sae:
    """An SAE's float64 math from the values as stored (float32/bf16/f16 upcast)."""

    def __init__(self, arch, d_in, d_sae, tensors, apply_b_dec, norm="none", scaling=1.0, k=0,
                 sparsify=False):
        self.arch, self.d_in, self.d_sae, self.k = arch, d_in, d_sae, k
        self.t = {name: t.to(torch.float64) for name, t in tensors.items()}
        self.apply_b_dec, self.norm, self.scaling, self.sparsify = apply_b_dec, norm, scaling, sparsify

    def flat(self, x):
        return x.reshape(*x.shape[:-2], self.d_in) if x.shape[-1] != self.d_in else x

    def scale(self, x):
        if self.norm == "expected_average_only_in":
            return torch.full_like(x[..., :1], self.scaling)
        if self.norm == "constant_norm_rescale":
            return math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True)
        return torch.ones_like(x[..., :1])

    def centred(self, x):
        xc = x * self.scale(x)
        return xc - self.t["b_dec"] if self.apply_b_dec else xc

    def pre(self, x):
        xc = self.centred(x)
        if self.arch == "gated":
            return xc @ self.t["W_enc"] + self.t["b_gate"]
        return xc @ self.t["W_enc"] + self.t["b_enc"]

    def encode(self, x):
        xc = self.centred(x)
        t = self.t
        if self.arch == "gated":
            gate = xc @ t["W_enc"] + t["b_gate"]
            mag = xc @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"]
            return (gate > 0).double() * torch.relu(mag)
        pre = xc @ t["W_enc"] + t["b_enc"]
        if self.arch == "standard":
            return torch.relu(pre)
        if self.arch == "jumprelu":
            return torch.relu(pre) * (pre > t["threshold"]).double()
        assert self.arch == "topk"
        if self.sparsify:  # sparsify: ReLU first, then the top k (same values, written its way)
            acts = torch.relu(pre)
            top = acts.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def reconstruct(self, x):
        return (self.encode(x) @ self.t["W_dec"] + self.t["b_dec"]) / self.scale(x)

    def clamp_edit(self, clamps):
        """x' = x + ((f' - f)[L] W_dec[L]) / s at every position, in the hook's own shape."""
        latents = torch.tensor([l for l, _ in clamps])
        values = torch.tensor([v for _, v in clamps], dtype=torch.float64)

        def edit(x):
            flat = self.flat(x)
            f = self.encode(flat)[..., latents]
            delta = (values - f) @ self.t["W_dec"][latents] / self.scale(flat)
            return (flat + delta).reshape(x.shape)
        return edit

    def margins(self, x):
        """The smallest distance of any input to a jump of the encoder (over every latent)."""
        pre = self.pre(x)
        if self.arch == "jumprelu":
            gaps = [(pre - self.t["threshold"]).abs()[pre > 0]]
            return min([g.min().item() for g in gaps if g.numel()] + [1.0])
        if self.arch == "gated":
            return pre.abs().min().item()
        if self.arch == "topk":
            sorted_pre = pre.sort(dim=-1, descending=True).values
            return (sorted_pre[..., self.k - 1] - sorted_pre[..., self.k]).min().item()
        return 1.0


def random_sae(arch, hook, d_in, d_sae, x_sample, gen, apply_b_dec, norm="none", k=6):
    """Weights with a mix of active and inactive latents on activations like `x_sample`."""
    xs = x_sample.reshape(-1, d_in)
    if norm == "constant_norm_rescale":
        xs = xs * math.sqrt(d_in) / xs.norm(dim=-1, keepdim=True)
    scaling = 1.0
    if norm == "expected_average_only_in":
        scaling = math.sqrt(d_in) / xs.norm(dim=-1).mean().item()  # SAELens' estimate
        xs = xs * scaling
    spread = xs.std().item() + 1e-6

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    t = {"W_enc": randn(d_in, d_sae) / (spread * math.sqrt(d_in)),
         "W_dec": randn(d_sae, d_in) * spread * 0.5,
         "b_dec": randn(d_in) * spread * 0.2}
    if arch == "gated":
        t.update(b_gate=randn(d_sae) * 0.4 - 0.3, r_mag=randn(d_sae) * 0.3,
                 b_mag=randn(d_sae) * 0.4)
    else:
        t["b_enc"] = randn(d_sae) * 0.4 - 0.3
    if arch == "jumprelu":
        t["threshold"] = torch.rand(d_sae, generator=gen, dtype=torch.float64) * 0.9 - 0.1
    t = {name: v.to(torch.float32) for name, v in t.items()}
    return t, scaling


def write_saelens(path, arch, hook, tensors, apply_b_dec, norm, scaling, k, style, dtype="float32",
                  scale_tensor=False):
    """SAELens: cfg.json in one of three generations + sae_weights.safetensors; the
    expected-average scale in cfg.json or (scale_tensor) as a one-element tensor."""
    os.makedirs(path, exist_ok=True)
    d_in, d_sae = tensors["W_enc"].shape
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": dtype,
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": norm, "device": "cpu"}
    if arch == "topk":
        cfg["k"] = k
    if style == "6.x":
        cfg["metadata"] = {"hook_name": hook, "model_name": "tiny", "hook_head_index": None}
    elif style == "5.x":
        cfg.update(hook_name=hook, hook_layer=int(hook.split(".")[1]), model_name="tiny",
                   context_size=128, finetuning_scaling_factor=False)
    else:  # pre-5: hook_point
        cfg.update(hook_point=hook, hook_point_layer=int(hook.split(".")[1]), model_name="tiny")
    stored = dict(tensors)
    if norm == "expected_average_only_in" and not scale_tensor:
        cfg["scaling_factor"] = scaling
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    stored = {name: v.to(torch_dtype) for name, v in stored.items()}
    if norm == "expected_average_only_in" and scale_tensor:
        stored["scaling_factor"] = torch.tensor([scaling], dtype=torch_dtype)
        scaling = stored["scaling_factor"].double().item()
    with open(os.path.join(path, "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_safetensors(os.path.join(path, "sae_weights.safetensors"), stored)
    stored.pop("scaling_factor", None)
    return {name: v.to(torch.float32) for name, v in stored.items()}, scaling  # as stored


def write_gemma_scope(path, tensors):
    """Gemma Scope: params.npz (float32 .npy members), JumpReLU, b_dec not subtracted."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **{name: v.numpy().astype(np.float32) for name, v in tensors.items()})
    return tensors


def write_sparsify(path, tensors, k):
    """sparsify: cfg.json + sae.safetensors, encoder.weight [d_sae, d_in] (nn.Linear layout)."""
    os.makedirs(path, exist_ok=True)
    d_in, d_sae = tensors["W_enc"].shape
    cfg = {"expansion_factor": d_sae // d_in, "normalize_decoder": True, "num_latents": d_sae,
           "k": k, "multi_topk": False, "skip_connection": False, "d_in": d_in}
    with open(os.path.join(path, "cfg.json"), "w") as f:
        json.dump(cfg, f)
    save_safetensors(os.path.join(path, "sae.safetensors"), {
        "encoder.weight": tensors["W_enc"].T.contiguous(), "encoder.bias": tensors["b_enc"],
        "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]})
    return tensors


# ------------------------------------------------------------------------------------ cases
# (name, format, architecture, hook, apply_b_dec, normalization, style, pass --hook): style is
# the SAELens cfg.json generation [":" storage dtype] [":scale-tensor"], or the Gemma Scope
# file's place ("path": a layer_L/... path, "path-mlp": under gemma-scope-2b-pt-mlp/, "plain").
CASES = [
    ("saelens-standard", "saelens", "standard", "blocks.1.hook_resid_post", True, "none", "6.x", False),
    ("saelens-jumprelu", "saelens", "jumprelu", "blocks.0.hook_mlp_out", False,
     "expected_average_only_in", "pre-5", False),
    ("saelens-topk", "saelens", "topk", "blocks.2.hook_resid_pre", True, "constant_norm_rescale",
     "5.x", False),
    ("saelens-gated", "saelens", "gated", "blocks.1.attn.hook_z", True, "none", "6.x", False),
    ("saelens-standard-attn-out", "saelens", "standard", "blocks.0.hook_attn_out", False, "none",
     "5.x", True),
    ("saelens-jumprelu-resid-mid-bf16", "saelens", "jumprelu", "blocks.2.hook_resid_mid", True,
     "none", "6.x:bfloat16", False),
    ("saelens-standard-scale-tensor", "saelens", "standard", "blocks.2.hook_resid_post", True,
     "expected_average_only_in", "6.x:float32:scale-tensor", False),
    ("gemma-scope-jumprelu", "gemma_scope", "jumprelu", "blocks.1.hook_resid_post", False, "none",
     "path", False),
    ("gemma-scope-jumprelu-hook-flag", "gemma_scope", "jumprelu", "blocks.0.hook_resid_pre",
     False, "none", "plain", True),
    ("gemma-scope-jumprelu-mlp", "gemma_scope", "jumprelu", "blocks.0.hook_mlp_out", False, "none",
     "path-mlp", False),
    ("sparsify-topk", "sparsify", "topk", "blocks.1.hook_resid_post", True, "none", "", True),
    ("sparsify-topk-layer-dir", "sparsify", "topk", "blocks.2.hook_resid_post", True, "none", "",
     False),
]


def sequences_for(model, gen):
    return [torch.randint(3, model.vocab, (n,), generator=gen).tolist() for n in (5, 9, 3)]


def build_sae(case, model, seqs, root, gen):
    """Writes the case's file; returns (path, hook flag args, reference Sae)."""
    name, fmt, arch, hook, apply_b_dec, norm, style, pass_hook = case
    d_in = model.width(hook)
    d_sae = 3 * d_in // 2
    k = 6
    sample = torch.cat([model.forward(s)[1][hook].reshape(-1, d_in) for s in seqs])
    for attempt in range(50):  # a seed whose inputs keep away from every encoder jump
        tensors, scaling = random_sae(arch, hook, d_in, d_sae, sample, gen, apply_b_dec, norm, k)
        if fmt == "saelens":
            parts = style.split(":")
            dtype = parts[1] if len(parts) > 1 else "float32"
            path = os.path.join(root, name)
            stored, scaling = write_saelens(path, arch, hook, tensors, apply_b_dec, norm, scaling,
                                            k, parts[0], dtype, "scale-tensor" in parts)
        elif fmt == "gemma_scope":
            layer = hook.split(".")[1]
            place = [name] + (["gemma-scope-2b-pt-mlp"] if style == "path-mlp" else [])
            path = (os.path.join(root, *place, f"layer_{layer}", "width_16k", "average_l0_5",
                                 "params.npz")
                    if style.startswith("path") else os.path.join(root, name, "params.npz"))
            stored = write_gemma_scope(path, tensors)
        else:
            path = os.path.join(root, name, "layers." + hook.split(".")[1])
            stored = write_sparsify(path, tensors, k)
        sae = Sae(arch, d_in, d_sae, stored, apply_b_dec, norm, scaling, k, sparsify=fmt == "sparsify")
        active = (sae.encode(sample) > 0).double().mean().item()
        if sae.margins(sample) > MARGIN and 0.05 < active < 0.8:
            return path, (["--hook", hook] if pass_hook else []), sae
    raise RuntimeError(f"{name}: no SAE seed kept its inputs away from the encoder's jumps")


def test_case(model_name, model, case, root, seqs, gen):
    name, hook = case[0], case[3]
    label = f"{model_name}/{name}"
    path, hook_args, sae = build_sae(case, model, seqs, root, gen)
    ids_args = [a for s in seqs for a in ("--ids", ",".join(map(str, s)))]

    # --- sae encode --dense: latents, l0, fvu at the last position
    proc = run("sae", "encode", "--model", model.dir, "--sae", path, *hook_args, *ids_args,
               "--json", "--dense")
    check(f"{label}: sae encode exits 0", proc.returncode == 0, proc.stderr.strip())
    if proc.returncode != 0:
        return
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    check(f"{label}: one JSON line per --ids", len(lines) == len(seqs), proc.stdout[:200])
    nontrivial = 0
    for i, (seq, line) in enumerate(zip(seqs, lines)):
        x = model.forward(seq)[1][hook][-1]
        x = sae.flat(x)[None]
        f = sae.encode(x)[0]
        ours = torch.tensor(line["latents"], dtype=torch.float64)
        diff = (ours - f).abs().max().item()
        check(f"{label}: seq {i} latents within {TOL}", diff <= TOL, f"max diff {diff}")
        check(f"{label}: seq {i} l0", line["l0"] == int((f != 0).sum()),
              f"{line['l0']} vs {int((f != 0).sum())}")
        x_hat = sae.reconstruct(x)[0]
        fvu = ((x[0] - x_hat).pow(2).sum() / (x[0] - x[0].mean()).pow(2).sum()).item()
        check(f"{label}: seq {i} fvu within {TOL}", abs(line["fvu"] - fvu) <= TOL * max(1, fvu),
              f"{line['fvu']} vs {fvu}")
        nontrivial += int((f > 1e-3).sum())
        check(f"{label}: seq {i} hook", line["hook"] == hook, line.get("hook"))
    check(f"{label}: some latents active (the comparison compares something)", nontrivial >= 3,
          nontrivial)

    # --- sae encode --top-k 4: the largest active latents, by value
    proc = run("sae", "encode", "--model", model.dir, "--sae", path, *hook_args, *ids_args[:2],
               "--json", "--top-k", "4")
    top = json.loads(proc.stdout.splitlines()[0])["top"] if proc.returncode == 0 else None
    f0 = sae.encode(sae.flat(model.forward(seqs[0])[1][hook][-1])[None])[0]
    order = [j for j in f0.argsort(descending=True).tolist() if f0[j] > 0][:4]
    check(f"{label}: top-k latents", top is not None and [e[0] for e in top] == order,
          f"{top} vs {order}")

    # --- forward --sae-clamp: the strongest latent of seq 0 to 0, a dormant one to a value
    strongest = int(f0.argmax())
    f_all = sae.encode(torch.cat([sae.flat(model.forward(s)[1][hook]).reshape(-1, sae.d_in) for s in seqs]))
    dormant = int((f_all > 0).double().sum(0).argmin())
    boost = 4.0 * max(1.0, f_all.max().item())
    clamps = [(strongest, 0.0), (dormant, boost)]
    proc = run("forward", "--model", model.dir, *ids_args, "--json", "--full-logits",
               "--sae", path, *hook_args,
               *[a for l, v in clamps for a in ("--sae-clamp", f"{l}={v!r}")])
    check(f"{label}: forward --sae-clamp exits 0", proc.returncode == 0, proc.stderr.strip())
    if proc.returncode != 0:
        return
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    moved = 0.0
    for i, (seq, line) in enumerate(zip(seqs, lines)):
        clean = model.forward(seq)[0][-1]
        logits = model.forward(seq, {hook: sae.clamp_edit(clamps)})[0][-1]
        ours = torch.tensor(line["logits"], dtype=torch.float64)
        diff = (ours - logits).abs().max().item()
        check(f"{label}: seq {i} clamped logits within {TOL}", diff <= TOL, f"max diff {diff}")
        moved = max(moved, (logits - clean).abs().max().item())
    check(f"{label}: the clamp moves the logits (> 1e-2)", moved > 1e-2, moved)


def test_errors(model, root):
    bad = os.path.join(root, "bad-width")
    tensors = {"W_enc": torch.zeros(model.d + 1, 8, dtype=torch.float32),
               "W_dec": torch.zeros(8, model.d + 1, dtype=torch.float32),
               "b_enc": torch.zeros(8, dtype=torch.float32),
               "b_dec": torch.zeros(model.d + 1, dtype=torch.float32)}
    write_saelens(bad, "standard", "blocks.0.hook_resid_post", tensors, True, "none", 1.0, 0, "6.x")
    no_hook = os.path.join(root, "no-hook", "params.npz")
    write_gemma_scope(no_hook, {"W_enc": torch.zeros(model.d, 8), "W_dec": torch.zeros(8, model.d),
                                "b_enc": torch.zeros(8), "b_dec": torch.zeros(model.d),
                                "threshold": torch.zeros(8)})
    for args, fragment in [
            (["sae", "encode", "--model", model.dir, "--sae", bad, "--ids", "3,4", "--json"], "d_in"),
            (["forward", "--model", model.dir, "--ids", "3,4", "--sae", bad, "--sae-clamp", "1=2"], "d_in"),
            (["sae", "encode", "--model", model.dir, "--sae", os.path.join(root, "missing"), "--ids",
              "3,4"], "missing"),
            (["forward", "--model", model.dir, "--ids", "3,4", "--sae-clamp", "1=2"], "--sae"),
            (["forward", "--model", model.dir, "--ids", "3,4", "--sae", bad, "--hook",
              "blocks.0.hook_resid_post", "--sae-clamp", "1=2"], "d_in"),
            (["sae", "encode", "--model", model.dir, "--sae", no_hook, "--ids", "3,4"], "hook"),
            (["sae", "encode", "--model", model.dir, "--sae", no_hook, "--hook",
              "blocks.9.hook_resid_post", "--ids", "3,4"], "blocks.9"),
            (["forward", "--model", model.dir, "--ids", "3,4", "--sae", no_hook, "--hook",
              "blocks.0.hook_resid_post", "--sae-clamp", "8=1"], "latent 8"),
            (["forward", "--model", model.dir, "--ids", "3,4", "--sae", bad, "--sae-clamp", "x"],
             "--sae-clamp"),
    ]:
        proc = run(*args)
        lines = proc.stderr.strip().splitlines()
        check(f"error {args[0]} {fragment}: one line, non-zero exit, names it",
              proc.returncode not in (0, -6, -11) and len(lines) == 1
              and lines[0].startswith("knockout-worker: ") and fragment in lines[0],
              f"rc {proc.returncode}: {proc.stderr.strip()[:300]}")


def test_inspect(root):
    path = os.path.join(root, "llama_gqa", "saelens-jumprelu")
    proc = run("sae", "inspect", path, "--json")
    check("sae inspect exits 0", proc.returncode == 0, proc.stderr.strip())
    if proc.returncode != 0:
        return
    info = json.loads(proc.stdout)
    cfg = json.load(open(os.path.join(path, "cfg.json")))
    check("sae inspect fields",
          (info["architecture"], info["source"], info["hook"], info["d_in"], info["d_sae"],
           info["normalization"]) ==
          ("jumprelu", "saelens", cfg["hook_point"], cfg["d_in"], cfg["d_sae"],
           "expected_average_only_in"), info)
    from hf_reference import load_safetensors
    threshold = load_safetensors(os.path.join(path, "sae_weights.safetensors"))["threshold"].double()
    got = info.get("threshold", {})
    check("sae inspect threshold range",
          all(abs(got.get(key, 1e9) - ref) <= 1e-6 for key, ref in
              (("min", threshold.min().item()), ("mean", threshold.mean().item()),
               ("max", threshold.max().item()))), got)
    proc = run("sae", "inspect", os.path.join(root, "llama_gqa", "sparsify-topk", "layers.1"), "--json")
    check("sae inspect sparsify k", proc.returncode == 0 and json.loads(proc.stdout).get("k") == 6,
          proc.stdout + proc.stderr)


def main():
    if WORKER is None:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory(prefix="knockout-sae-ref-") as root:
        for variant in ("llama_gqa", "qwen2"):
            ckpt = os.path.join(root, variant + "-model")
            subprocess.run([sys.executable, os.path.join(HERE, "hf_reference.py"), "write",
                            "--variant", variant, "--dtype", "f32", "--out", ckpt],
                           check=True, capture_output=True)
            model = Model(ckpt)
            model.dir = ckpt
            gen = torch.Generator().manual_seed(13)
            seqs = sequences_for(model, gen)
            # The reference forward itself against knockout's plain forward (no SAE).
            proc = run("forward", "--model", ckpt, "--json", "--full-logits",
                       *[a for s in seqs for a in ("--ids", ",".join(map(str, s)))])
            for i, line in enumerate(proc.stdout.splitlines()):
                diff = (torch.tensor(json.loads(line)["logits"], dtype=torch.float64)
                        - model.forward(seqs[i])[0][-1]).abs().max().item()
                check(f"{variant}: plain forward seq {i} within {TOL}", diff <= TOL, diff)
            for case in CASES:
                test_case(variant, model, case, os.path.join(root, variant), seqs, gen)
            if variant == "llama_gqa":
                test_errors(model, root)
        test_inspect(root)
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
