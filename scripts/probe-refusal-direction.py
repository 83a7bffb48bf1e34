#!/usr/bin/env python3
"""Where activation addition of the refusal direction falls short (issue 14's research log).

For a checkpoint and the validation prompts, measures at the last prompt token the projection
of the residual stream onto r_hat, the refusal direction of --layer (diff-in-means of
blocks.L.hook_resid_pre, harmful minus harmless), at the input of every layer and after the
last one: harmful prompts, harmless prompts, and harmless prompts with +r added at layer L
(science.md's activation addition). It also prints the mean refusal score of each group.
The forward pass is tests/reference/hf_reference.py's float32 Llama equations, written
independently of knockout. Only the tokenisation goes through knockout-worker (chat template).

usage: scripts/probe-refusal-direction.py MODEL_DIR PROMPTS_DIR [--layer 3] [--refusal-token I]
       [--worker build/worker/knockout-worker] [--prompts 64]
PROMPTS_DIR holds harmful_val.jsonl and harmless_val.jsonl ({"instruction": ...} per line).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import hf_reference as ref  # noqa: E402


def tokenize_rows(worker, model, path, n):
    """knockout-worker tokenize --chat --json's rows (ids, instruction_range, post_inst_range, ...)
    for the first n instructions of a JSONL prompt set."""
    instructions = [json.loads(line)["instruction"] for line in open(path) if line.strip()][:n]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(instructions) + "\n")
        name = f.name
    try:
        out = subprocess.run([worker, "tokenize", "--tokenizer", model, "--file", name, "--chat",
                              "--json"], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(name)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def tokenize(worker, model, path, n):
    return [row["ids"] for row in tokenize_rows(worker, model, path, n)]


def left_pad(seqs):
    t = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = torch.tensor(s)
        mask[i, t - len(s):] = 1
    return ids, mask


def inst_last_columns(rows, width):
    """The column of each tokenize_rows row's last instruction token in a left-padded batch of
    `width` columns (left_pad puts a row's token j at width - len + j)."""
    return torch.tensor([width - len(r["ids"]) + r["inst_last"] for r in rows])


def forward(cfg, w, ids, mask, add=None, ablate=None, edit=None):
    """Every layer's resid_pre (whole tensors), the residual after the last layer, and the last
    column's logits. add=(layer, vector): x += vector at that layer's input, every column.
    ablate=(r_hat, layers, positions): r_hat projected out of resid_pre, attn_out and mlp_out of
    those layers (science.md's directional ablation), at the columns where positions (b x t) is
    1, or at every column if positions is None. edit(layer, x) -> x: any change to a layer's
    input, after add and ablate. Shared with scripts/kl-by-prompt.py, where-harm-is-read.py and
    sensor-in-sae.py."""
    b, t = ids.shape
    nh, nkv, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    dh = ref.head_dim(cfg)
    x = w["model.embed_tokens.weight"][ids]
    cos, sin, allowed = ref.rope_and_mask(cfg, mask)

    def lin(h, name):
        return F.linear(h, w[name + ".weight"], w.get(name + ".bias"))

    def cut(v, layer):
        if ablate is None or layer not in ablate[1]:
            return v
        r_hat, _, positions = ablate
        part = (v @ r_hat)[..., None] * r_hat
        return v - (part if positions is None else part * positions[..., None])

    seen = []
    for layer in range(cfg["num_hidden_layers"]):
        if add is not None and add[0] == layer:
            x = x + add[1]
        x = cut(x, layer)
        if edit is not None:
            x = edit(layer, x)
        seen.append(x)
        p = f"model.layers.{layer}."
        h = ref.rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(b, t, nh, dh).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(b, t, nkv, dh).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(b, t, nkv, dh).transpose(1, 2)
        q, k = q * cos + ref.rotate_half(q) * sin, k * cos + ref.rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        a = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v
        x = x + cut(lin(a.transpose(1, 2).reshape(b, t, nh * dh), p + "self_attn.o_proj"), layer)
        h = ref.rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        x = x + cut(lin(F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"),
                        p + "mlp.down_proj"), layer)
    seen.append(x)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return seen, F.linear(ref.rms_norm(x[:, -1], w["model.norm.weight"], eps), head)


def run(cfg, w, ids, mask, add=None):
    """resid_pre of every layer and the residual after the last one at the last column, and the
    last column's logits. add=(layer, vector): x += vector at that layer's input, every column."""
    seen, logits = forward(cfg, w, ids, mask, add=add)
    return [x[:, -1] for x in seen], logits


def add_common_args(ap):
    """MODEL_DIR PROMPTS_DIR [--layer] [--refusal-token] [--worker] (shared with kl-by-prompt.py)."""
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--refusal-token", default="I")
    ap.add_argument("--worker", default=os.path.join(ROOT, "build", "worker", "knockout-worker"))


def load_model(model, refusal_token):
    """config.json, the float32 weights and the refusal token's id; exits naming what is missing."""
    cfg = json.load(open(os.path.join(model, "config.json")))
    w = {k: v.float() for k, v in ref.load_checkpoint(model).items()}
    vocab = json.load(open(os.path.join(model, "tokenizer.json")))["model"]["vocab"]
    if refusal_token not in vocab:
        sys.exit(f"{model}/tokenizer.json: no token {refusal_token!r}")
    return cfg, w, vocab[refusal_token]


def refusal_scores(logits, token):
    """science.md's refusal score of each row: log p(token) - log(1 - p(token))."""
    p = torch.softmax(logits.double(), -1)[:, token]
    return torch.log(p) - torch.log1p(-p)


def refusal_score(logits, token):
    return refusal_scores(logits, token).mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap)
    ap.add_argument("--prompts-per-set", type=int, default=64)
    a = ap.parse_args()
    cfg, w, token = load_model(a.model, a.refusal_token)
    harmful = left_pad(tokenize(a.worker, a.model, os.path.join(a.prompts, "harmful_val.jsonl"), a.prompts_per_set))
    harmless = left_pad(tokenize(a.worker, a.model, os.path.join(a.prompts, "harmless_val.jsonl"), a.prompts_per_set))
    with torch.no_grad():
        ph, lh = run(cfg, w, *harmful)
        pl, ll = run(cfg, w, *harmless)
        r = ph[a.layer].mean(0) - pl[a.layer].mean(0)
        r_hat = r / r.norm()
        pa, la = run(cfg, w, *harmless, add=(a.layer, r))
    print(f"r = diff-in-means of blocks.{a.layer}.hook_resid_pre at the last prompt token, |r| = {r.norm():.1f}")
    print("| resid_pre of layer | harmful | harmless | harmless + r |")
    print("|---|---|---|---|")
    for i in range(len(ph)):
        name = str(i) if i < len(ph) - 1 else "after the last"
        print(f"| {name} | {(ph[i] @ r_hat).mean():.1f} | {(pl[i] @ r_hat).mean():.1f} | {(pa[i] @ r_hat).mean():.1f} |")
    print(f"mean refusal score ({a.refusal_token!r}): harmful {refusal_score(lh, token):.2f}, "
          f"harmless {refusal_score(ll, token):.2f}, harmless + r {refusal_score(la, token):.2f}")


if __name__ == "__main__":
    main()
