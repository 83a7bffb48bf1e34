#!/usr/bin/python3
"""Python baseline of the head-knockout benchmark: what TransformerLens-style code does.

For every (layer l, head h) -- one "trial" -- run the FULL forward of all prompts (one batch,
left-padded, attention mask, HF position ids) with a hook at `blocks.{l}.attn.hook_z` that zeroes
head h at the last K prompt positions (or at every position with --all-positions), compute the
FULL unembedding (logits at every position, as TransformerLens does), and read at the last
position the refusal score s = log p_R - log(1 - p_R) and KL(clean || ablated). One clean forward
comes first. No layer-prefix or sequence-prefix reuse, no last-position-only unembedding: this is
the baseline that knockout's executor is compared against (design.md, "Data flow of one sweep").

  /usr/bin/python3 bench/tl_style_sweep.py --model DIR [--prompts 8] [--tokens 48] [--intervened 6]
      [--threads 2] [--all-positions] [--max-trials N] [--seed S] [--refusal-ids 40 ...]
      [--json OUT.json]

Use Debian's /usr/bin/python3 (python3-torch 1.13). Weights are loaded (any stored dtype) with
tests/reference/hf_reference.py's own safetensors reader and upcast to float32. The forward here
mirrors hf_reference.forward op for op, plus hook points; at start-up its logits are compared
with hf_reference.forward's (on the benchmark batch and on a left-padded batch) and the script
aborts if they differ by >= 1e-4. Prompts are random token ids in [0, vocab) from --seed, all of
length --tokens (so the mask is all ones): this is a throughput benchmark.
trials/s = trials timed / seconds of the sweep loop (load, verification and the clean forward
excluded). With --max-trials N only the first N trials (layer-major order) are timed and the full
sweep time is extrapolated.

Importable: load_model, hook_names, forward_with_hooks, verify_against_reference, make_prompts,
zero_head_hook, refusal_score, kl_last, run_head_sweep.
"""
import argparse, json, math, os, resource, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import hf_reference as ref  # noqa: E402  (independent HF reference; we reuse its loader and helpers)

# HF config defaults for keys a config.json may omit (transformers LlamaConfig / PretrainedConfig).
CONFIG_DEFAULTS = dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                       rope_scaling=None, hidden_act="silu", attention_bias=False, mlp_bias=False)
SUPPORTED = ("llama", "qwen2", "mistral")  # what hf_reference.forward implements


class ModelError(Exception):
    """A model directory that cannot be used; the message says why."""


# ----------------------------------------------------------------------------- loading
def load_model(model_dir):
    """-> (cfg, weights): the normalised config.json dict and float32 weights (HF names).
    Raises ModelError with a clear message for a missing/incomplete/unsupported directory."""
    if not os.path.isdir(model_dir):
        raise ModelError(f"model directory not found: {model_dir}")
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ModelError(f"{model_dir}: no config.json (expected a Hugging Face checkpoint directory)")
    has_single = os.path.isfile(os.path.join(model_dir, "model.safetensors"))
    has_index = os.path.isfile(os.path.join(model_dir, "model.safetensors.index.json"))
    if not (has_single or has_index):
        raise ModelError(f"{model_dir}: neither model.safetensors nor model.safetensors.index.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f"{cfg_path}: cannot read: {e}") from e
    if not isinstance(cfg, dict):
        raise ModelError(f"{cfg_path}: not a JSON object")
    for k, v in CONFIG_DEFAULTS.items():
        if cfg.get(k) is None:
            cfg[k] = v
    if cfg.get("model_type") not in SUPPORTED:
        raise ModelError(f"{cfg_path}: model_type {cfg.get('model_type')!r} not supported (supported: {', '.join(SUPPORTED)})")
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if not isinstance(cfg.get(k), int)]
    if missing:
        raise ModelError(f"{cfg_path}: missing or non-integer {', '.join(missing)}")
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    if cfg["hidden_act"] != "silu":
        raise ModelError(f"{cfg_path}: hidden_act {cfg['hidden_act']!r} not supported (only silu)")
    if cfg.get("mlp_bias"):
        raise ModelError(f"{cfg_path}: mlp_bias is not supported")
    try:
        raw = ref.load_checkpoint(model_dir)
    except (OSError, ValueError, KeyError, AssertionError, RuntimeError) as e:
        raise ModelError(f"{model_dir}: cannot read the safetensors weights: {type(e).__name__}: {e}") from e
    expected = {n: s for n, s, _ in ref.weight_shapes(cfg)}
    absent = sorted(set(expected) - set(raw))
    extra = sorted(set(raw) - set(expected))
    if absent or extra:
        raise ModelError(f"{model_dir}: weights do not match config.json: missing {absent[:5]}"
                         f"{'...' if len(absent) > 5 else ''}, unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
    bad = [n for n, s in expected.items() if tuple(raw[n].shape) != tuple(s)]
    if bad:
        raise ModelError(f"{model_dir}: wrong shape for {bad[0]}: {tuple(raw[bad[0]].shape)} != {expected[bad[0]]}")
    return cfg, {k: v.float().contiguous() for k, v in raw.items()}


# ----------------------------------------------------------------------------- forward with hooks
HOOKS_PER_LAYER = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_post",
                   "hook_mlp_out", "hook_resid_post")


def hook_names(cfg):
    """All hook point names of this model (TransformerLens names, science.md)."""
    names = ["hook_embed"]
    for l in range(cfg["num_hidden_layers"]):
        names += [f"blocks.{l}.{n}" for n in HOOKS_PER_LAYER]
    return names + ["ln_final.hook_normalized"]


def _normalise_hooks(cfg, fwd_hooks):
    """dict name -> fn, or iterable of (name, fn) as in TransformerLens run_with_hooks."""
    items = fwd_hooks.items() if isinstance(fwd_hooks, dict) else (fwd_hooks or ())
    valid = set(hook_names(cfg))
    out = {}
    for name, fn in items:
        if name not in valid:
            raise ValueError(f"unknown hook point {name!r}")
        out.setdefault(name, []).append(fn)
    return out


def forward_with_hooks(cfg, w, input_ids, attention_mask, fwd_hooks=()):
    """Full-sequence float32 forward -> logits [B, T, V] at every position.

    Mirrors hf_reference.forward op for op (weights must already be float32, see load_model), with
    TransformerLens-style hook points: fwd_hooks is a dict {name: fn} or a list of (name, fn);
    fn(activation, name) may modify the activation in place and/or return a replacement (None keeps
    it). `blocks.{l}.attn.hook_z` is the per-head attention output before o_proj, [B, T, n_heads,
    d_head]; the other points are [B, T, d_model] (mlp.hook_post: [B, T, d_mlp])."""
    hooks = _normalise_hooks(cfg, fwd_hooks)

    def hook(name, t):
        for fn in hooks.get(name, ()):
            r = fn(t, name)
            if r is not None:
                t = r
        return t

    B, T = input_ids.shape
    nh, nkv, dh, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], ref.head_dim(cfg), cfg["rms_norm_eps"]
    x = hook("hook_embed", w["model.embed_tokens.weight"][input_ids])
    cos, sin, allowed = ref.rope_and_mask(cfg, attention_mask)

    def lin(h, name):
        return F.linear(h, w[name + ".weight"], w.get(name + ".bias"))

    for l in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{l}.", f"blocks.{l}."
        x = hook(b + "hook_resid_pre", x)
        h = ref.rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(B, T, nh, dh).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(B, T, nkv, dh).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, T, nkv, dh).transpose(1, 2)
        q, k = q * cos + ref.rotate_half(q) * sin, k * cos + ref.rotate_half(k) * sin
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        s = s.masked_fill(~allowed, float("-inf"))
        a = torch.softmax(s.float(), dim=-1) @ v  # [B, nh, T, dh]
        z = hook(b + "attn.hook_z", a.transpose(1, 2))  # [B, T, nh, dh]
        attn_out = hook(b + "hook_attn_out", lin(z.reshape(B, T, nh * dh), p + "self_attn.o_proj"))
        x = hook(b + "hook_resid_mid", x + attn_out)
        h = ref.rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        post = hook(b + "mlp.hook_post", F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"))
        x = hook(b + "hook_resid_post", x + hook(b + "hook_mlp_out", lin(post, p + "mlp.down_proj")))
    x = hook("ln_final.hook_normalized", ref.rms_norm(x, w["model.norm.weight"], eps))
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return F.linear(x, head)


def verify_against_reference(cfg, w, input_ids, attention_mask, seed=0, tol=1e-4):
    """Max |logits(ours) - logits(hf_reference.forward)| over real positions, on the given batch
    and on a left-padded batch of three shorter prompts. Raises RuntimeError if >= tol."""
    B, T = input_ids.shape
    gen = torch.Generator().manual_seed(seed + 1)
    lens = sorted({max(1, T), max(1, T // 2), min(T, 3)}, reverse=True)
    seqs = [torch.randint(0, cfg["vocab_size"], (n,), generator=gen).tolist() for n in lens]
    pad_ids, pad_mask = ref.make_inputs(seqs, T)
    worst = 0.0
    for ids, mask in ((input_ids, attention_mask), (pad_ids, pad_mask)):
        ours = forward_with_hooks(cfg, w, ids, mask)
        theirs = ref.forward(cfg, w, ids, mask)
        real = mask.bool()
        worst = max(worst, (ours - theirs)[real].abs().max().item())
    if not worst < tol:  # also catches NaN
        raise RuntimeError(f"hooked forward differs from hf_reference.forward: max abs diff {worst:.3g} >= {tol}")
    return worst


# ----------------------------------------------------------------------------- trials and metrics
def make_prompts(vocab, n_prompts, n_tokens, seed=0):
    """Random token ids in [0, vocab), uniform length: (input_ids [P,T] int64, mask of ones)."""
    ids = torch.randint(0, vocab, (n_prompts, n_tokens), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def zero_head_hook(head, positions=None):
    """hook_z hook: z[:, positions, head, :] = 0 (positions: a slice/index list; None = all)."""
    sel = slice(None) if positions is None else positions

    def fn(z, name):
        z[:, sel, head, :] = 0
        return z
    return fn


def refusal_score(last_logits, refusal_ids):
    """s = log p_R - log(1 - p_R) per row, float64, p_R = sum of softmax probs of refusal_ids
    (science.md). Computed exactly as logsumexp(logits[R]) - logsumexp(logits[not R])."""
    lg = last_logits.double()
    is_r = torch.zeros(lg.shape[-1], dtype=torch.bool)
    is_r[list(refusal_ids)] = True
    return torch.logsumexp(lg[..., is_r], -1) - torch.logsumexp(lg[..., ~is_r], -1)


def kl_last(clean_last, ablated_last, eps=1e-6):
    """KL(P_clean || P_ablated) per row, float64 with eps 1e-6 (science.md, as in
    organism/evaluate.cc MeanKl)."""
    p = torch.softmax(clean_last.double(), -1)
    q = torch.softmax(ablated_last.double(), -1)
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(-1)


def _cpu_jiffies():
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v[:8]) - v[3] - v[4], sum(v[:8])
    except (OSError, ValueError, IndexError):
        return None


def run_head_sweep(cfg, w, input_ids, attention_mask, intervened=6, all_positions=False,
                   refusal_ids=(40,), max_trials=None):
    """The timed TransformerLens-style sweep: one clean forward, then one full hooked forward per
    (layer, head), layer-major. Returns a dict with per-trial mean refusal score and mean KL,
    clean score, trials timed, seconds, trials_per_s, and other_cpu_frac (CPU used by OTHER
    processes during the loop, as a fraction of all cores x wall time; None if unknown)."""
    L, H, T = cfg["num_hidden_layers"], cfg["num_attention_heads"], input_ids.shape[1]
    positions = None if all_positions else slice(T - intervened, T)
    targets = [(l, h) for l in range(L) for h in range(H)]
    if max_trials is not None:
        targets = targets[:max_trials]
    with torch.no_grad():
        clean_last = forward_with_hooks(cfg, w, input_ids, attention_mask)[:, -1]
        clean_score = refusal_score(clean_last, refusal_ids).mean().item()
        scores, kls = [], []
        j0, c0 = _cpu_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for l, h in targets:
            logits = forward_with_hooks(cfg, w, input_ids, attention_mask,
                                        [(f"blocks.{l}.attn.hook_z", zero_head_hook(h, positions))])
            last = logits[:, -1]
            scores.append(refusal_score(last, refusal_ids).mean().item())
            kls.append(kl_last(clean_last, last).mean().item())
        seconds = time.perf_counter() - t0
        j1, c1 = _cpu_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
    other = None
    if j0 and j1 and j1[1] > j0[1]:
        hz = os.sysconf("SC_CLK_TCK")
        own = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) * hz
        other = max(0.0, (j1[0] - j0[0] - own) / (j1[1] - j0[1]))
    n = len(targets)
    return dict(targets=[list(t) for t in targets], scores=scores, kl=kls, clean_score=clean_score,
                trials=n, total_trials=L * H, seconds=seconds, trials_per_s=n / seconds if seconds > 0 else float("inf"),
                other_cpu_frac=other)


# ----------------------------------------------------------------------------- CLI
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF checkpoint dir (config.json + model.safetensors)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--intervened", type=int, default=6, help="last K positions zeroed (post-instruction)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--all-positions", action="store_true", help="zero the head at every position")
    ap.add_argument("--max-trials", type=int, default=None, help="time only the first N trials, extrapolate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refusal-ids", type=int, nargs="+", default=[40])
    ap.add_argument("--json", default=None, help="write the result here")
    a = ap.parse_args(argv)
    for name in ("prompts", "tokens", "threads"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 1 <= a.intervened <= a.tokens and not a.all_positions:
        ap.error("--intervened must be in [1, --tokens]")
    if a.max_trials is not None and a.max_trials < 1:
        ap.error("--max-trials must be >= 1")

    torch.set_num_threads(a.threads)
    t_load = time.perf_counter()
    try:
        cfg, w = load_model(a.model)
    except ModelError as e:
        print(f"tl_style_sweep: error: {e}", file=sys.stderr)
        return 2
    V = cfg["vocab_size"]
    bad = [r for r in a.refusal_ids if not 0 <= r < V]
    if bad:
        print(f"tl_style_sweep: error: refusal ids {bad} outside the vocabulary [0, {V})", file=sys.stderr)
        return 2
    if len(set(a.refusal_ids)) >= V:
        print("tl_style_sweep: error: refusal ids cover the whole vocabulary", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t_load
    ids, mask = make_prompts(V, a.prompts, a.tokens, a.seed)
    with torch.no_grad():
        try:
            diff = verify_against_reference(cfg, w, ids, mask, seed=a.seed)
        except RuntimeError as e:
            print(f"tl_style_sweep: error: {e}", file=sys.stderr)
            return 3
    r = run_head_sweep(cfg, w, ids, mask, a.intervened, a.all_positions, a.refusal_ids, a.max_trials)
    out = {"impl": "python_tl_style", "trials_per_s": r["trials_per_s"], "trials": r["trials"],
           "seconds": r["seconds"], "total_trials": r["total_trials"],
           "extrapolated_sweep_seconds": r["total_trials"] / r["trials_per_s"],
           "prompts": a.prompts, "tokens": a.tokens, "intervened": a.tokens if a.all_positions else a.intervened,
           "threads": a.threads, "all_positions": a.all_positions, "torch_version": torch.__version__,
           "model": os.path.abspath(a.model), "n_layers": cfg["num_hidden_layers"],
           "n_heads": cfg["num_attention_heads"], "vocab": V, "seed": a.seed, "refusal_ids": a.refusal_ids,
           "load_seconds": load_s, "verify_max_abs_diff": diff, "other_cpu_frac": r["other_cpu_frac"],
           "clean_score": r["clean_score"], "targets": r["targets"], "scores": r["scores"], "kl": r["kl"]}
    if a.json:
        with open(a.json, "w") as f:  # one key per line, lists on one line
            f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in out.items()) + "\n}\n")
    oc = r["other_cpu_frac"]
    print(f"python_tl_style: {r['trials_per_s']:.3f} trials/s ({r['trials']} of {r['total_trials']} trials in "
          f"{r['seconds']:.2f} s, full sweep ~{out['extrapolated_sweep_seconds']:.1f} s); "
          f"{a.prompts} prompts x {a.tokens} tokens, "
          f"{'all positions' if a.all_positions else f'last {a.intervened} positions'}, {a.threads} threads, "
          f"torch {torch.__version__}; verify diff {diff:.2g}"
          + (f"; other-CPU {oc:.0%}" if oc is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
