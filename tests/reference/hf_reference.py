#!/usr/bin/python3
"""Independent Hugging Face reference for knockout's runtime tests.

Shares NO code with knockout. Written from the published Hugging Face
transformers model equations (modeling_llama.py, modeling_qwen2.py,
modeling_mistral.py, modeling_gemma2.py, modeling_rope_utils.py, masking_utils.py) and
the safetensors file format spec (https://github.com/huggingface/safetensors).
Needs only torch + numpy (Debian /usr/bin/python3).

  hf_reference.py write --variant NAME --out DIR [--dtype f32|bf16|f16] [--shards N] [--seed S]
  hf_reference.py check --dir DIR        # re-read DIR with our own reader and self-verify
  hf_reference.py bench --layers 12 --hidden 768 --heads 12 --kv-heads 12 --intermediate 2048 \
                        --vocab 32000 --batch 8 --seq 128 --threads T --iters K
"""
import argparse, json, math, os, struct, sys, time

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- configs
BASE = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            max_position_embeddings=128, rope_theta=10000.0, hidden_act="silu",
            initializer_range=0.02, attention_dropout=0.0, use_cache=True,
            bos_token_id=1, eos_token_id=2, rope_scaling=None, tie_word_embeddings=False,
            transformers_version="4.46.0")
LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5,
             attention_bias=False, mlp_bias=False, pretraining_tp=1)

VARIANTS = {
    "llama_gqa": dict(LLAMA, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "llama_tied": dict(LLAMA, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                       tie_word_embeddings=True),
    # llama3 rope with head_dim 16, theta 1e4: inv_freq = 1e4^(-k/8), k=0..7, so
    # wavelen = 2*pi/inv_freq = 6.3, 19.9, 62.8, 198.7, 628, 1987, 6283, 19869.
    # high_freq_wavelen = 64/4 = 16, low_freq_wavelen = 64/1 = 64, hence
    #   k=0 (6.3 < 16) unchanged; k=1,2 (16..64) smoothed; k=3..7 (> 64) divided by factor.
    # All three bands occur (also asserted at runtime in rope_inv_freq).
    "llama3_rope": dict(LLAMA, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 64}),
    # Qwen2: q/k/v have bias, o_proj has none. Hub configs (e.g. Qwen2.5) carry a numeric
    # sliding_window with use_sliding_window=false; it must then be IGNORED (HF only slides
    # when use_sliding_window is true). We put a small value here as a trap.
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rms_norm_eps=1e-6,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                  use_sliding_window=False, sliding_window=4, max_window_layers=3),
    # Mistral sliding window: HF transformers masking_utils.py
    #   sliding_window_overlay: kv_idx > q_idx - sliding_window, ANDed with causal kv_idx <= q_idx
    # i.e. query i sees key j iff 0 <= i - j < sliding_window.
    "mistral": dict(architectures=["MistralForCausalLM"], model_type="mistral", rms_norm_eps=1e-6,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=5),
    "llama_headdim": dict(LLAMA, num_attention_heads=4, num_key_value_heads=2, head_dim=32),
    # Gemma 2 (modeling_gemma2.py), scaled down so that every difference from Llama bites:
    # sliding window 4 < the prompts' 11 tokens on the even layers (0, 2), global on layer 1;
    # query_pre_attn_scalar 24 != head_dim; soft caps small enough that tanh saturates (raw
    # attention scores reach ~10, logits ~2, see "softcap_fraction" in the write output);
    # tied embeddings scaled by sqrt(hidden_size); (1 + w) norms around zero; GeGLU (tanh).
    "gemma2": dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2", rms_norm_eps=1e-6,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                   query_pre_attn_scalar=24, sliding_window=4, attn_logit_softcapping=3.0,
                   final_logit_softcapping=1.0, attention_bias=False, tie_word_embeddings=True,
                   cache_implementation="hybrid", pad_token_id=0, bos_token_id=2, eos_token_id=1),
}
DTYPES = {"f32": (torch.float32, "float32"), "bf16": (torch.bfloat16, "bfloat16"),
          "f16": (torch.float16, "float16")}


def make_config(variant, dtype_name):
    cfg = dict(BASE, **VARIANTS[variant])
    cfg["torch_dtype"] = DTYPES[dtype_name][1]
    return dict(sorted(cfg.items()))  # transformers writes config.json with sort_keys=True


def head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


# ----------------------------------------------------------------------------- weights
def is_gemma2(cfg):
    return cfg["model_type"] == "gemma2"


def weight_shapes(cfg):
    """(name, shape, kind) in HF state-dict (module registration) order."""
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    dh = head_dim(cfg)
    q, kv = cfg["num_attention_heads"] * dh, cfg["num_key_value_heads"] * dh
    if is_gemma2(cfg):  # Gemma2DecoderLayer: self_attn, mlp, then its four norms
        out = [("model.embed_tokens.weight", (V, H), "gemma_embed")]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            out += [(p + "self_attn.q_proj.weight", (q, H), "mat"), (p + "self_attn.k_proj.weight", (kv, H), "mat"),
                    (p + "self_attn.v_proj.weight", (kv, H), "mat"), (p + "self_attn.o_proj.weight", (H, q), "mat"),
                    (p + "mlp.gate_proj.weight", (I, H), "mat"), (p + "mlp.up_proj.weight", (I, H), "mat"),
                    (p + "mlp.down_proj.weight", (H, I), "mat")]
            out += [(p + n + ".weight", (H,), "gemma_norm") for n in
                    ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm")]
        return out + [("model.norm.weight", (H,), "gemma_norm")]
    qkv_bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)
    out = [("model.embed_tokens.weight", (V, H), "mat")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n, o in (("q", q), ("k", kv), ("v", kv)):
            out.append((p + f"self_attn.{n}_proj.weight", (o, H), "mat"))
            if qkv_bias:
                out.append((p + f"self_attn.{n}_proj.bias", (o,), "bias"))
        out.append((p + "self_attn.o_proj.weight", (H, q), "mat"))
        if cfg.get("attention_bias", False):  # llama attention_bias also biases o_proj
            out.append((p + "self_attn.o_proj.bias", (H,), "bias"))
        out += [(p + "mlp.gate_proj.weight", (I, H), "mat"), (p + "mlp.up_proj.weight", (I, H), "mat"),
                (p + "mlp.down_proj.weight", (H, I), "mat"),
                (p + "input_layernorm.weight", (H,), "norm"),
                (p + "post_attention_layernorm.weight", (H,), "norm")]
    out.append(("model.norm.weight", (H,), "norm"))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, H), "mat"))
    return out


def random_weights(cfg, gen, mat_std=0.2):
    w = {}
    for name, shape, kind in weight_shapes(cfg):
        r = torch.randn(shape, generator=gen)
        w[name] = {"mat": mat_std * r, "norm": 1.0 + 0.1 * r, "bias": 0.1 * r, "gemma_norm": 0.1 * r,
                   # scaled by sqrt(hidden_size) on the way in: smaller, or the tied unembedding
                   # just echoes the last token
                   "gemma_embed": 0.25 * mat_std * r}[kind]
    return w


# ----------------------------------------------------------------------------- safetensors
# Spec: u64 LE header size N | N bytes JSON header | raw LE data (offsets relative to data start).
ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}
ST_INV = {"F32": (torch.float32, 4), "BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2),
          "I64": (torch.int64, 8)}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the raw bits as int16
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def save_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = tensor_bytes(t)
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad header with spaces to a multiple of 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for b in blobs:
            f.write(b)
    return off


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n].decode())
    data, out, end_max = raw[8 + n:], {}, 0
    for name, h in header.items():
        if name == "__metadata__":
            continue
        dt, size = ST_INV[h["dtype"]]
        b, e = h["data_offsets"]
        assert e - b == size * math.prod(h["shape"]), name
        np_dt = {torch.bfloat16: "<i2", torch.float16: "<f2", torch.float32: "<f4", torch.int64: "<i8"}[dt]
        t = torch.from_numpy(np.frombuffer(data[b:e], dtype=np_dt).copy()).reshape(h["shape"])
        out[name] = t.view(torch.bfloat16) if dt == torch.bfloat16 else t
        end_max = max(end_max, e)
    assert end_max == len(data), f"{path}: trailing/missing data"
    return out


def load_checkpoint(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        wm = json.load(open(idx))["weight_map"]
        w = {}
        for fn in sorted(set(wm.values())):
            part = load_safetensors(os.path.join(d, fn))
            assert all(wm[k] == fn for k in part), fn
            w.update(part)
        assert set(w) == set(wm)
        return w
    return load_safetensors(os.path.join(d, "model.safetensors"))


# ----------------------------------------------------------------------------- model
def rope_inv_freq(cfg):
    # modeling_rope_utils._compute_default_rope_parameters
    dh, base = head_dim(cfg), cfg["rope_theta"]
    inv = 1.0 / (base ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv
    assert rs.get("rope_type", rs.get("type")) == "llama3", rs
    # modeling_rope_utils._compute_llama3_parameters (attention_factor stays 1.0)
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    # our llama3_rope variant (and real Llama-3.1 numbers) exercise all three bands
    assert (wavelen < high_wl).any() and medium.any() and (wavelen > low_wl).any()
    return torch.where(medium, smoothed, inv_l)


def rms_norm(x, w, eps):
    # LlamaRMSNorm: variance in fp32, then weight * x.to(input_dtype)
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return w * x32.to(x.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_and_mask(cfg, attention_mask):
    """RoPE tables [B,1,T,dh] and the boolean attention mask [B,1,T,T] of a left-padded batch."""
    T = attention_mask.shape[1]
    # position_ids from the mask (HF generate: cumsum(mask)-1, pads filled with a constant)
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    freqs = pos[..., None].float() * rope_inv_freq(cfg)  # LlamaRotaryEmbedding.forward
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [B,1,T,dh]
    # Mask: causal AND key is not padding (AND sliding window, see VARIANTS["mistral"])
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = (j <= i)[None] & attention_mask.bool()[:, None, :]
    sliding = cfg.get("sliding_window") if cfg["model_type"] == "mistral" or cfg.get("use_sliding_window") else None
    if sliding is not None:
        allowed = allowed & ((i - j) < sliding)[None]
    # fully-masked rows (left-pad queries): let them see themselves; never compared
    allowed = allowed | (torch.eye(T, dtype=torch.bool)[None] & ~allowed.any(-1, keepdim=True))
    allowed = allowed[:, None]  # [B,1,T,T]
    return cos, sin, allowed


def forward(cfg, w, input_ids, attention_mask):
    """Full-sequence float32 forward -> logits [B,T,V]. Weights are upcast to fp32."""
    w = {k: v.float() for k, v in w.items()}
    B, T = input_ids.shape
    nh, nkv, dh, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg), cfg["rms_norm_eps"]
    x = w["model.embed_tokens.weight"][input_ids]
    cos, sin, allowed = rope_and_mask(cfg, attention_mask)

    def lin(h, name, bias=True):
        return F.linear(h, w[name + ".weight"], w.get(name + ".bias") if bias else None)

    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(B, T, nh, dh).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(B, T, nkv, dh).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, T, nkv, dh).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin  # apply_rotary_pos_emb
        k = k.repeat_interleave(nh // nkv, dim=1)  # repeat_kv: kv head g serves q heads g*n..g*n+n-1
        v = v.repeat_interleave(nh // nkv, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        s = s.masked_fill(~allowed, float("-inf"))
        a = torch.softmax(s.float(), dim=-1) @ v
        x = x + lin(a.transpose(1, 2).reshape(B, T, nh * dh), p + "self_attn.o_proj")
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return F.linear(x, head)


def forward_gemma2(cfg, w, input_ids, attention_mask, stats=None):
    """Gemma2ForCausalLM (modeling_gemma2.py), full sequence, everything in float64 -> logits [B,T,V].
    `stats` (a dict), if given, receives the fraction of real scores/logits where |x| > cap / 2."""
    w = {k: v.double() for k, v in w.items()}
    B, T = input_ids.shape
    H = cfg["hidden_size"]
    nh, nkv, dh, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg), cfg["rms_norm_eps"]

    def norm(x, name):  # Gemma2RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w[name + ".weight"])

    def lin(h, name):
        return F.linear(h, w[name + ".weight"])

    def gelu_tanh(x):  # gelu_pytorch_tanh
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))

    emb = w["model.embed_tokens.weight"]
    x = emb[input_ids] * math.sqrt(H)  # Gemma2Model: hidden_states * hidden_size**0.5
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))
    freqs = pos[..., None].double() * inv
    cos, sin = torch.cat((freqs, freqs), -1).cos()[:, None], torch.cat((freqs, freqs), -1).sin()[:, None]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    causal = (j <= i)[None] & attention_mask.bool()[:, None, :]
    real = attention_mask.bool()
    cap_a, cap_f = cfg.get("attn_logit_softcapping"), cfg.get("final_logit_softcapping")
    bitten, seen = 0, 0
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        allowed = causal & ((i - j) < cfg["sliding_window"])[None] if l % 2 == 0 else causal
        allowed = allowed | (torch.eye(T, dtype=torch.bool)[None] & ~allowed.any(-1, keepdim=True))
        h = norm(x, p + "input_layernorm")
        q = lin(h, p + "self_attn.q_proj").view(B, T, nh, dh).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(B, T, nkv, dh).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, T, nkv, dh).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        s = (q @ k.transpose(-1, -2)) * cfg["query_pre_attn_scalar"] ** -0.5
        if cap_a:
            m = allowed[:, None].expand_as(s) & real[:, None, :, None]
            bitten += (s.abs() > cap_a / 2)[m].sum().item()
            seen += m.sum().item()
            s = torch.tanh(s / cap_a) * cap_a
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        a = torch.softmax(s, dim=-1) @ v
        x = x + norm(lin(a.transpose(1, 2).reshape(B, T, nh * dh), p + "self_attn.o_proj"),
                     p + "post_attention_layernorm")
        h = norm(x, p + "pre_feedforward_layernorm")
        h = lin(gelu_tanh(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        x = x + norm(h, p + "post_feedforward_layernorm")
    logits = F.linear(norm(x, "model.norm"), emb)  # tied
    if stats is not None:
        stats["attn_softcap_fraction"] = bitten / max(seen, 1)
        stats["final_softcap_fraction"] = (logits.abs() > cap_f / 2)[real].float().mean().item() if cap_f else 0.0
    if cap_f:
        logits = torch.tanh(logits / cap_f) * cap_f
    return logits


def model_forward(cfg, w, input_ids, attention_mask, stats=None):
    if is_gemma2(cfg):
        return forward_gemma2(cfg, w, input_ids, attention_mask, stats)
    return forward(cfg, w, input_ids, attention_mask)


def greedy(cfg, w, ids, steps=8, margins=None):
    """Plain no-cache greedy loop on one unpadded sequence; no EOS stopping.
    If `margins` is a list, appends each step's top1 - top2 logit gap (near-tie diagnostics)."""
    seq = list(ids)
    for _ in range(steps):
        t = torch.tensor([seq])
        last = model_forward(cfg, w, t, torch.ones_like(t))[0, -1]
        if margins is not None:
            top = last.topk(2).values
            margins.append((top[0] - top[1]).item())
        seq.append(int(last.argmax()))
    return seq[len(ids):]


def make_inputs(seqs, pad_to):
    ids = torch.zeros(len(seqs), pad_to, dtype=torch.int64)  # pad id 0, LEFT padding
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, pad_to - len(s):] = torch.tensor(s)
        mask[b, pad_to - len(s):] = 1
    return ids, mask


# ----------------------------------------------------------------------------- commands
def cmd_write(a):
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    cfg = make_config(a.variant, a.dtype)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    dt = DTYPES[a.dtype][0]
    stored = {k: v.to(dt) for k, v in random_weights(cfg, gen).items()}
    if a.shards <= 1:
        save_safetensors(os.path.join(a.out, "model.safetensors"), stored)
    else:  # contiguous chunks of the state dict, balanced by bytes (like HF's max_shard_size split)
        names = list(stored)
        sizes = [stored[n].numel() * stored[n].element_size() for n in names]
        total, target, groups, acc = sum(sizes), sum(sizes) / a.shards, [[]], 0
        for n, sz in zip(names, sizes):
            if acc >= target * len(groups) and len(groups) < a.shards:
                groups.append([])
            groups[-1].append(n)
            acc += sz
        assert len(groups) == a.shards, "too many shards for this model"
        wmap = {}
        for s, g in enumerate(groups):
            fn = f"model-{s + 1:05d}-of-{a.shards:05d}.safetensors"
            save_safetensors(os.path.join(a.out, fn), {n: stored[n] for n in g})
            wmap.update({n: fn for n in g})
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))}, f, indent=2)
            f.write("\n")
    # reference inputs/outputs computed from the STORED (possibly rounded) weights
    V = cfg["vocab_size"]
    seqs = [torch.randint(1, V, (n,), generator=gen).tolist() for n in (7, 11, 4)]
    ids, mask = make_inputs(seqs, 11)
    stats = {}
    with torch.inference_mode():
        logits = model_forward(cfg, stored, ids, mask, stats).float()
        margins = []
        gids = torch.tensor([greedy(cfg, stored, s, margins=margins) for s in seqs], dtype=torch.int64)
    save_safetensors(os.path.join(a.out, "reference.safetensors"),
                     {"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous(), "greedy_ids": gids})
    real = logits[mask.bool()]
    print(json.dumps({"variant": a.variant, "dtype": a.dtype, "out": a.out, "params": sum(v.numel() for v in stored.values()),
                      "logits_std": round(real.std().item(), 3), "logits_absmax": round(real.abs().max().item(), 3),
                      "greedy_min_top2_margin": round(min(margins), 4), "greedy_ids": gids.tolist(), **stats}))


def cmd_check(a):
    """Self-verification: re-read with our reader, recompute, test padding invariance."""
    cfg = json.load(open(os.path.join(a.dir, "config.json")))
    w = load_checkpoint(a.dir)
    assert set(w) == {n for n, _, _ in weight_shapes(cfg)}
    for n, shape, _ in weight_shapes(cfg):
        assert tuple(w[n].shape) == shape and w[n].dtype == getattr(torch, cfg["torch_dtype"]), n
    ref = load_safetensors(os.path.join(a.dir, "reference.safetensors"))
    ids, mask = ref["input_ids"], ref["attention_mask"]
    real = mask.bool()
    with torch.inference_mode():
        lg = model_forward(cfg, w, ids, mask).float()
        d_re = (lg - ref["logits"])[real].abs().max().item()
        seqs = [ids[b][real[b]].tolist() for b in range(ids.shape[0])]
        ids2, mask2 = make_inputs(seqs, ids.shape[1] + 6)  # pad more
        d_pad = (model_forward(cfg, w, ids2, mask2).float()[mask2.bool()] - lg[real]).abs().max().item()
        d_one = max((model_forward(cfg, w, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.int64)).float()[0]
                     - lg[b][real[b]]).abs().max().item() for b, s in enumerate(seqs))
        g = torch.tensor([greedy(cfg, w, s) for s in seqs])
    ok = d_re < 1e-5 and d_pad < 1e-4 and d_one < 1e-4 and torch.equal(g, ref["greedy_ids"])
    print(json.dumps({"dir": a.dir, "recompute_maxdiff": d_re, "extra_pad_maxdiff": d_pad,
                      "unbatched_maxdiff": d_one, "greedy_match": torch.equal(g, ref["greedy_ids"]), "ok": ok}))
    return 0 if ok else 1


def cmd_bench(a):
    torch.set_num_threads(a.threads)
    cfg = dict(BASE, **LLAMA, num_hidden_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
               num_key_value_heads=a.kv_heads, intermediate_size=a.intermediate, vocab_size=a.vocab,
               max_position_embeddings=max(128, a.seq), head_dim=a.hidden // a.heads)
    w = random_weights(cfg, torch.Generator().manual_seed(0), mat_std=0.02)
    ids = torch.randint(1, a.vocab, (a.batch, a.seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        forward(cfg, w, ids, mask)  # warm-up
        t0 = time.perf_counter()
        for _ in range(a.iters):
            forward(cfg, w, ids, mask)
        dt = (time.perf_counter() - t0) / a.iters
    print(json.dumps({"tokens_per_s": a.batch * a.seq / dt, "seconds_per_forward": dt, "threads": a.threads,
                      "iters": a.iters, "layers": a.layers, "hidden": a.hidden, "heads": a.heads,
                      "kv_heads": a.kv_heads, "intermediate": a.intermediate, "vocab": a.vocab,
                      "batch": a.batch, "seq": a.seq, "impl": "hf_reference.py", "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("write")
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("check")
    p.add_argument("--dir", required=True)
    p = sub.add_parser("bench")
    for n, d in (("layers", 12), ("hidden", 768), ("heads", 12), ("kv-heads", 12), ("intermediate", 2048),
                 ("vocab", 32000), ("batch", 8), ("seq", 128), ("threads", 1), ("iters", 3)):
        p.add_argument("--" + n, type=int, default=d)
    a = ap.parse_args()
    return {"write": cmd_write, "check": cmd_check, "bench": cmd_bench}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
