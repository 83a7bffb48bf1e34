#!/usr/bin/python3
"""An independent float64 reference for the metrics knockout stores (issue 12).

Runs a small head sweep (zero ablation at post_inst, with compensation) and a neuron sweep
(listed neurons, zero and mean ablation at post_inst, with compensation) on the shipped demo
model with `knockout run`, reads what `knockout results --per-prompt --format csv` and
`knockout compensation --format jsonl` print, and recomputes every number from the model
equations in float64 with Debian's python3-torch. Shares NO code with knockout: the forward is
written here from Hugging Face's modeling_llama.py (RMSNorm, rotate_half RoPE, causal softmax
attention, SwiGLU MLP, tied unembedding); the metrics from /work/shared/docs/science.md and the
contract in worker/executor/executor.h's top comment:

  s            = log p_R - log(1 - p_R), p_R = sum of softmax probs of the refusal tokens, at the
                 last prompt position; clean and ablated; te = s_ablated - s_clean
  kl           = sum_v p (log(p + 1e-6) - log(q + 1e-6)), p clean, q ablated (last position)
  logit_diff   = mean logit of positive tokens - mean logit of negative tokens (last position)
  de           = s(U((x_clean + delta_u) / scale_clean * w_norm)) - s_clean, delta_u the unit's
                 own change of write at the last position (head: dz_h @ W_O[:, h]^T; neuron:
                 d post_n * W_down[:, n]); the final norm's scale frozen at its clean value
  norm_effect  = s(U(x_abl / scale_abl * w_norm)) - s(U(x_abl / scale_clean * w_norm))
  downstream   = out_v(last) . m per downstream unit v, clean and ablated run, with
                 m = d s / d x_final at the clean run, final scale frozen (taken by autograd here)
Downstream units (the contract of issue 12, by the knocked-out unit's own kind): a head at layer
L is read by every head of layers > L and every MLP output of layers >= L; a neuron at layer L by
the attention and MLP outputs of layers > L.

Token ids and positions come from `knockout-worker tokenize --chat --json` (the tokenizer is
tested against a JavaScript reference elsewhere; the numbers under test here are the metrics).
Only the checkpoint reader (load_checkpoint) is reused from hf_reference.py, itself independent.

Usage: test_metrics_reference.py KNOCKOUT KNOCKOUT_WORKER MODEL_DIR PROMPTS_DIR
Exit 0: every value within tolerance; 1: a mismatch (each printed with both values).
"""
import csv
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_reference import load_checkpoint  # noqa: E402  (hand-written safetensors reader)

torch.set_default_dtype(torch.float64)
EPS_KL = 1e-6
TOL = 1e-4
N_PROMPTS = 8
SET, REF_SET = "harmful_val", "harmless_val"
REFUSAL_TOKENS = ["I"]
POSITIVE_TOKENS, NEGATIVE_TOKENS = ["I"], ["Sure"]
NEURON_LAYERS = [1, 4]

# Known differences between today's executor and the contract above, expected to pass once the
# lead's executor change for issue 12 lands (the lead removes entries as they pass). Keys are
# (stage, check); a listed check that FAILS is reported as "expected failure", one that PASSES is
# reported as "unexpected pass" and fails the test, so the list cannot go stale silently.
EXPECTED_FAILURES = set()


# ------------------------------------------------------------------------------- the model
class Llama:
    """LlamaForCausalLM in float64 from the HF equations, one unpadded prompt per call, a batch
    of B rows (one per trial) with per-row edits at attn.hook_z and mlp.hook_post."""

    def __init__(self, model_dir):
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        assert cfg["model_type"] == "llama" and not cfg.get("rope_scaling"), cfg
        assert not cfg.get("attention_bias") and not cfg.get("mlp_bias"), cfg
        self.cfg = cfg
        self.L = cfg["num_hidden_layers"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg["num_key_value_heads"]
        self.d = cfg["hidden_size"]
        self.dh = cfg.get("head_dim") or self.d // self.nh
        self.eps = cfg["rms_norm_eps"]
        w = {k: v.to(torch.float64) for k, v in load_checkpoint(model_dir).items()}
        self.w = w
        self.W_U = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]
        self.w_norm = w["model.norm.weight"]

    def layer(self, l, name):
        return self.w[f"model.layers.{l}.{name}.weight"]

    def rms(self, x, weight):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def rope(self, T):
        # LlamaRotaryEmbedding: inv_freq = theta^(-2k/dh), angle = position * inv_freq,
        # cos/sin over the concatenated halves (rotate_half convention).
        k = torch.arange(0, self.dh, 2, dtype=torch.float64)
        inv = 1.0 / (self.cfg["rope_theta"] ** (k / self.dh))
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        emb = torch.cat([ang, ang], -1)
        return emb.cos(), emb.sin()

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], -1)

    def forward(self, ids, edits=None):
        """ids: list of token ids. edits: list (one per row) of callables or None;
        edit(kind, layer, tensor[T, ...]) -> tensor, kind in {"z", "post", "resid_post"}
        (resid_post: the residual after layer l's MLP add, TransformerLens' blocks.l.hook_resid_post).
        Returns a dict of per-row activations, each [B, T, ...]: z[l] [B,T,nh,dh], attn_out[l],
        post[l] [B,T,I], mlp_out[l], resid_post[l] (after its edit), x_final (residual after the
        last layer); logits [B, 1, V] of the last position only."""
        edits = edits or [None]
        B, T = len(edits), len(ids)
        x = self.w["model.embed_tokens.weight"][torch.tensor(ids)].expand(B, T, self.d).clone()
        cos, sin = self.rope(T)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        out = {"z": [], "attn_out": [], "post": [], "mlp_out": [], "resid_post": []}

        def apply(kind, l, t):
            rows = []
            for b in range(B):
                rows.append(edits[b](kind, l, t[b]) if edits[b] is not None else t[b])
            return torch.stack(rows)

        for l in range(self.L):
            h = self.rms(x, self.layer(l, "input_layernorm"))
            q = (h @ self.layer(l, "self_attn.q_proj").T).view(B, T, self.nh, self.dh).transpose(1, 2)
            k = (h @ self.layer(l, "self_attn.k_proj").T).view(B, T, self.nkv, self.dh).transpose(1, 2)
            v = (h @ self.layer(l, "self_attn.v_proj").T).view(B, T, self.nkv, self.dh).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            k = k.repeat_interleave(self.nh // self.nkv, dim=1)
            v = v.repeat_interleave(self.nh // self.nkv, dim=1)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
            att = att.masked_fill(~causal, float("-inf")).softmax(-1)
            z = (att @ v).transpose(1, 2)  # [B, T, nh, dh]: attn.hook_z
            z = apply("z", l, z)
            attn_out = z.reshape(B, T, self.nh * self.dh) @ self.layer(l, "self_attn.o_proj").T
            x = x + attn_out
            h = self.rms(x, self.layer(l, "post_attention_layernorm"))
            gate = h @ self.layer(l, "mlp.gate_proj").T
            post = torch.nn.functional.silu(gate) * (h @ self.layer(l, "mlp.up_proj").T)  # mlp.hook_post
            post = apply("post", l, post)
            mlp_out = post @ self.layer(l, "mlp.down_proj").T
            x = x + mlp_out
            x = apply("resid_post", l, x)
            for key, val in (("z", z), ("attn_out", attn_out), ("post", post), ("mlp_out", mlp_out),
                             ("resid_post", x)):
                out[key].append(val)
        out["x_final"] = x
        out["logits"] = self.rms(x[:, -1:], self.w_norm) @ self.W_U.T  # [B, 1, V]: last position
        return out

    def unembed_frozen(self, x, scale):
        """The final norm with its scale given (frozen) and the unembedding: x [.., d]."""
        return (x / scale) * self.w_norm @ self.W_U.T

    def scale(self, x):
        return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


# ------------------------------------------------------------------------------- the metrics
def refusal_score(logits, refusal_ids):
    """science.md: p_R = sum of softmax probabilities of R; s = log p_R - log(1 - p_R)."""
    logp = torch.log_softmax(logits, -1)
    log_pr = torch.logsumexp(logp[..., refusal_ids], -1)
    return log_pr - torch.log(-torch.expm1(log_pr))  # 1 - p_R without cancellation


def kl_clean_ablated(clean_logits, logits):
    p = torch.softmax(clean_logits, -1)
    q = torch.softmax(logits, -1)
    return (p * (torch.log(p + EPS_KL) - torch.log(q + EPS_KL))).sum(-1)


def logit_diff(logits, pos, neg):
    return logits[..., pos].mean(-1) - logits[..., neg].mean(-1)


# ------------------------------------------------------------------------------- the CLI side
def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def read_prompts(path, n):
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["instruction"])
            if len(out) == n:
                break
    return out


def tokenize_chat(worker, model_dir, instructions, tmp):
    path = os.path.join(tmp, "instructions.txt")
    assert all("\n" not in s and "\r" not in s for s in instructions)
    with open(path, "w") as f:
        f.write("".join(s + "\n" for s in instructions))
    lines = run([worker, "tokenize", "--tokenizer", model_dir, "--file", path, "--chat", "--json"])
    out = []
    for line in lines.splitlines():
        r = json.loads(line)
        begin, end = r["post_inst_range"]
        assert end == len(r["ids"]) and 0 < begin < end, r
        out.append({"ids": r["ids"], "post_inst": list(range(begin, end))})
    assert len(out) == len(instructions)
    return out


def token_id(worker, model_dir, text):
    r = json.loads(run([worker, "tokenize", "--tokenizer", model_dir, "--text", text, "--json"]))
    assert len(r["ids"]) == 1, f"{text!r} is {len(r['ids'])} tokens"
    return r["ids"][0]


def spec_text(model_dir, prompts_dir, neuron_units):
    return f"""name: metrics-reference
seed: 42
model: {{path: {model_dir}, dtype: float32, device: cpu}}
prompt_sets:
  {SET}: {{path: {os.path.join(prompts_dir, SET + '.jsonl')}, limit: {N_PROMPTS}}}
  {REF_SET}: {{path: {os.path.join(prompts_dir, REF_SET + '.jsonl')}, limit: {N_PROMPTS}}}
metrics:
  refusal_tokens: {json.dumps(REFUSAL_TOKENS)}
  positive_tokens: {json.dumps(POSITIVE_TOKENS)}
  negative_tokens: {json.dumps(NEGATIVE_TOKENS)}
stages:
  - name: heads
    knockout_sweep:
      prompt_sets: [{SET}]
      targets: [{{kind: heads}}]
      ablations: [zero]
      positions: [post_inst]
      compensation: true
  - name: neurons
    knockout_sweep:
      prompt_sets: [{SET}]
      targets: [{{kind: neurons, layers: {json.dumps(NEURON_LAYERS)}, units: {json.dumps(neuron_units)}}}]
      ablations: [zero, {{kind: mean_per_position, reference_set: {REF_SET}}}]
      positions: [post_inst]
      compensation: true
"""


def parse_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


# How `knockout compensation` names downstream units (cli/queries.cc DownstreamName). Readings of
# kinds today's executor does not record for a swept kind have no name there yet: "L{l}.mlp_out"
# for MLP outputs read by a head sweep is our guess, to be aligned with the lead's naming.
def unit_name(kind, layer, unit):
    if kind == "head":
        return f"L{layer}H{unit}"
    return f"L{layer}.{kind}"


# ------------------------------------------------------------------------------- the reference
class Reference:
    def __init__(self, model, refusal_ids, pos_ids, neg_ids):
        self.m = model
        self.R = torch.tensor(refusal_ids)
        self.pos = torch.tensor(pos_ids)
        self.neg = torch.tensor(neg_ids)

    def clean(self, prompt):
        """Clean activations of one prompt and the metric direction m at its last position."""
        c = self.m.forward(prompt["ids"])
        c = {k: (v[0] if torch.is_tensor(v) else [t[0] for t in v]) for k, v in c.items()}
        x = c["x_final"][-1]
        scale = self.m.scale(x)
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            s = refusal_score(self.m.unembed_frozen(xg, scale), self.R)
            (grad,) = torch.autograd.grad(s, xg)
        c["scale_last"] = scale
        c["m"] = grad  # d s / d x_final, final norm's scale frozen at the clean value
        c["score"] = refusal_score(c["logits"][-1], self.R).item()
        return c

    def readings(self, act, m):
        """out_v(last) . m of every head, attention output and MLP output of one run's rows:
        {("head"|"attn_out"|"mlp_out", layer, unit): [value per row]} (act: [B, T, ...])."""
        out = {}
        M = self.m
        for l in range(M.L):
            z = act["z"][l][:, -1]  # [B, nh, dh]
            W_O = M.layer(l, "self_attn.o_proj").view(M.d, M.nh, M.dh)  # head h: columns h*dh..
            per_head = torch.einsum("bhk,dhk,d->bh", z, W_O, m)  # (z_h @ W_O[:, h]^T) . m
            for h in range(M.nh):
                out[("head", l, h)] = per_head[:, h].tolist()
            out[("attn_out", l, -1)] = (act["attn_out"][l][:, -1] @ m).tolist()
            out[("mlp_out", l, -1)] = (act["mlp_out"][l][:, -1] @ m).tolist()
        return out

    def trials(self, prompt, clean, units, make_edit, own_write):
        """Runs the ablated forwards of `units` (one row each) on one prompt and returns
        {unit: {metric: value, "downstream": {name: (clean, ablated)}}}."""
        m = self.m
        edits = [make_edit(u) for u in units]
        a = m.forward(prompt["ids"], edits)
        rc = self.readings({k: [t[None] for t in v] if isinstance(v, list) else v[None]
                            for k, v in clean.items() if k in ("z", "attn_out", "mlp_out")}, clean["m"])
        ra = self.readings(a, clean["m"])
        res = {}
        L = m.L
        for b, u in enumerate(units):
            kind, layer = u[0], u[1]
            logits = a["logits"][b, -1]
            clean_logits = clean["logits"][-1]
            s = refusal_score(logits, self.R).item()
            s_clean = clean["score"]
            x_abl = a["x_final"][b, -1]
            x_clean = clean["x_final"][-1]
            sc = clean["scale_last"]
            delta = own_write(u, a, b, clean)
            s_base = refusal_score(m.unembed_frozen(x_clean, sc), self.R).item()
            de = refusal_score(m.unembed_frozen(x_clean + delta, sc), self.R).item() - s_base
            # The same with the scale recomputed (not frozen): only to show that the comparison
            # can tell the two apart (see `discriminating` in main).
            de_unfrozen = (refusal_score(m.unembed_frozen(x_clean + delta, m.scale(x_clean + delta)), self.R)
                           .item() - s_base)
            norm_effect = (refusal_score(m.unembed_frozen(x_abl, m.scale(x_abl)), self.R)
                           - refusal_score(m.unembed_frozen(x_abl, sc), self.R)).item()
            if kind == "head":  # later heads; MLP outputs from its own layer on
                units_read = [("head", l, h) for l in range(layer + 1, L) for h in range(m.nh)] + \
                             [("mlp_out", l, -1) for l in range(layer, L)]
            else:  # attention and MLP outputs of later layers
                units_read = [(k, l, -1) for l in range(layer + 1, L) for k in ("attn_out", "mlp_out")]
            res[u] = {
                "refusal_score": s, "clean_refusal_score": s_clean, "te": s - s_clean,
                "kl": kl_clean_ablated(clean_logits, logits).item(),
                "logit_diff": logit_diff(logits, self.pos, self.neg).item(),
                "clean_logit_diff": logit_diff(clean_logits, self.pos, self.neg).item(),
                "de": de, "norm_effect": norm_effect, "de_unfrozen": de_unfrozen,
                "downstream": {unit_name(*v): (rc[v][0], ra[v][b]) for v in units_read},
            }
        return res


def aligned_mean(ref_acts, ref_lengths, t_len):
    """Mean ablation over a reference set, per aligned position: column i of a prompt of length
    t_len takes the mean over reference prompts of their activation at the same distance from
    the end (t_len - 1 - i); positions no reference prompt reaches take the mean over all real
    reference tokens. ref_acts: list of [T_r, ...] tensors."""
    overall = torch.cat(ref_acts, 0).mean(0)
    out = []
    for i in range(t_len):
        dist = t_len - 1 - i
        vals = [a[n - 1 - dist] for a, n in zip(ref_acts, ref_lengths) if n - 1 - dist >= 0]
        out.append(torch.stack(vals).mean(0) if vals else overall)
    return torch.stack(out)


# ------------------------------------------------------------------------------- comparison
class Checker:
    def __init__(self):
        self.failures = {}   # (stage, check) -> list of messages
        self.counts = {}     # (stage, check) -> values compared
        self.nontrivial = {}  # (stage, check) -> values with |reference| > 1e-3
        self.maxdiff = {}

    def value(self, stage, check, what, got, want, scale=1.0):
        key = (stage, check)
        self.counts[key] = self.counts.get(key, 0) + 1
        if abs(want) > 1e-3:
            self.nontrivial[key] = self.nontrivial.get(key, 0) + 1
        tol = TOL * max(1.0, scale)
        diff = abs(got - want) if math.isfinite(got) else math.inf
        self.maxdiff[key] = max(self.maxdiff.get(key, 0.0), diff / max(1.0, scale))
        if not diff <= tol:
            self.failures.setdefault(key, []).append(
                f"{what}: knockout {got!r}, reference {want!r}, |diff| {diff:.3g} > tol {tol:.3g}")

    def fail(self, stage, check, message):
        self.failures.setdefault((stage, check), []).append(message)
        self.counts[(stage, check)] = self.counts.get((stage, check), 0) + 1

    def report(self, min_nontrivial):
        ok = True
        keys = sorted(set(self.counts) | set(self.failures))
        for key in keys:
            fails = self.failures.get(key, [])
            n, nt = self.counts.get(key, 0), self.nontrivial.get(key, 0)
            expected = key in EXPECTED_FAILURES
            status = ("expected failure" if fails and expected else "unexpected pass" if expected
                      else "FAIL" if fails else "ok")
            print(f"{status}: {key[0]}/{key[1]}: {n} values, {nt} non-trivial, "
                  f"max scaled diff {self.maxdiff.get(key, float('nan')):.3g}, {len(fails)} over tolerance")
            for msg in fails[:8]:
                print("    " + msg)
            if len(fails) > 8:
                print(f"    ... {len(fails) - 8} more")
            if status in ("FAIL", "unexpected pass"):
                ok = False
        for key, need in min_nontrivial.items():
            have = self.nontrivial.get(key, 0)
            if have < need:
                print(f"FAIL: {key[0]}/{key[1]}: only {have} non-trivial values compared, need {need}")
                ok = False
        return ok


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    knockout, worker, model_dir, prompts_dir = (os.path.abspath(a) for a in sys.argv[1:])
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = Llama(model_dir)
    L, nh = model.L, model.nh
    with tempfile.TemporaryDirectory(prefix="metrics_reference_") as tmp:
        prompts = tokenize_chat(worker, model_dir, read_prompts(os.path.join(prompts_dir, SET + ".jsonl"),
                                                                N_PROMPTS), tmp)
        refs = tokenize_chat(worker, model_dir, read_prompts(os.path.join(prompts_dir, REF_SET + ".jsonl"),
                                                             N_PROMPTS), tmp)
        ids = lambda toks: [token_id(worker, model_dir, t) for t in toks]  # noqa: E731
        ref = Reference(model, ids(REFUSAL_TOKENS), ids(POSITIVE_TOKENS), ids(NEGATIVE_TOKENS))

        with torch.no_grad():
            cleans = [ref.clean(p) for p in prompts]
            ref_cleans = [model.forward(r["ids"]) for r in refs]
        # Neurons: the 3 with the largest mean |post| at the last position over both layers, so
        # that their knockouts move the metrics (deterministic: the model and prompts are fixed).
        score = sum(c["post"][l][-1].abs() for c in cleans for l in NEURON_LAYERS)
        neuron_units = sorted(score.topk(3).indices.tolist())
        print(f"neurons: layers {NEURON_LAYERS} x units {neuron_units}")

        spec = os.path.join(tmp, "spec.yaml")
        with open(spec, "w") as f:
            f.write(spec_text(model_dir, prompts_dir, neuron_units))
        store = os.path.join(tmp, "store")
        t0 = time.time()
        run([knockout, "run", spec, "--store", store, "--workers", "1", "--worker-binary", worker, "--no-summary"])
        print(f"knockout run: {time.time() - t0:.1f} s")

        def results(stage):
            rows = parse_csv(run([knockout, "results", "metrics-reference", "--stage", stage,
                                  "--per-prompt", "--format", "csv", "--store", store]))
            return rows

        def compensation(stage):
            out = run([knockout, "compensation", "metrics-reference", "--stage", stage, "--top", "100000",
                       "--format", "jsonl", "--store", store])
            return [json.loads(line) for line in out.splitlines() if line.strip()]

        checker = Checker()
        t0 = time.time()
        with torch.no_grad():
            # ---- heads: zero ablation at post_inst
            head_units = [("head", l, h) for l in range(L) for h in range(nh)]

            def head_edit(u, post_inst):
                _, layer, h = u

                def edit(kind, l, t):
                    if kind != "z" or l != layer:
                        return t
                    t = t.clone()
                    t[post_inst, h] = 0.0
                    return t
                return edit

            def head_write(u, a, b, clean):
                _, l, h = u
                dz = a["z"][l][b, -1, h] - clean["z"][l][-1, h]
                W_O = model.layer(l, "self_attn.o_proj")
                return dz @ W_O[:, h * model.dh:(h + 1) * model.dh].T

            head_ref = []  # per prompt: {unit: metrics}
            for p, c in zip(prompts, cleans):
                head_ref.append(ref.trials(p, c, head_units, lambda u: head_edit(u, p["post_inst"]), head_write))

            # ---- neurons: zero and mean (over the reference set, aligned from the end)
            neuron_units_all = [("neuron", l, n) for l in NEURON_LAYERS for n in neuron_units]
            ref_lengths = [len(r["ids"]) for r in refs]

            def neuron_write(u, a, b, clean):
                _, l, n = u
                dpost = a["post"][l][b, -1, n] - clean["post"][l][-1, n]
                return dpost * model.layer(l, "mlp.down_proj")[:, n]

            neuron_ref = {"zero": [], "mean": []}
            for p, c in zip(prompts, cleans):
                T = len(p["ids"])
                means = {l: aligned_mean([rc["post"][l][0] for rc in ref_cleans], ref_lengths, T)
                         for l in NEURON_LAYERS}
                for abl in ("zero", "mean"):
                    def neuron_edit(u, abl=abl, post_inst=p["post_inst"], means=means):
                        _, layer, n = u

                        def edit(kind, l, t):
                            if kind != "post" or l != layer:
                                return t
                            t = t.clone()
                            t[post_inst, n] = 0.0 if abl == "zero" else means[layer][post_inst, n]
                            return t
                        return edit
                    neuron_ref[abl].append(ref.trials(p, c, neuron_units_all, neuron_edit, neuron_write))

        print(f"reference trials: {time.time() - t0:.1f} s")

        # ---- compare the per-prompt rows
        metrics = ["refusal_score", "clean_refusal_score", "te", "kl", "logit_diff", "clean_logit_diff",
                   "de", "norm_effect"]
        score_like = {"refusal_score", "clean_refusal_score", "te", "de", "norm_effect"}

        # Rows whose de the comparison tells apart from a DE with the final norm's scale
        # recomputed instead of frozen: the tolerance is tight enough to check the freezing.
        discriminating = {}

        def compare_rows(stage, rows, lookup):
            seen = set()
            for r in rows:
                u = (r["unit_kind"], int(r["layer"]), int(r["unit"]))
                p = int(r["prompt"])
                want = lookup(r["ablation"], u, p)
                if want is None:
                    checker.fail(stage, "rows", f"unexpected row {u} {r['ablation']} prompt {p}")
                    continue
                seen.add((r["ablation"], u, p))
                scale = max(abs(want["refusal_score"]), abs(want["clean_refusal_score"]))
                for k in metrics:
                    if r.get(k, "") == "":
                        checker.fail(stage, k, f"{u} {r['ablation']} prompt {p}: no {k} in the row")
                        continue
                    got = float(r[k])
                    if k in ("logit_diff", "clean_logit_diff"):
                        s = max(abs(want[k]), 1.0)
                    else:
                        s = scale if k in score_like else 1.0
                    checker.value(stage, k, f"{u} {r['ablation']} prompt {p}", got, want[k], s)
                    if k == "de" and abs(got - want["de_unfrozen"]) > TOL * max(1.0, s):
                        discriminating[stage] = discriminating.get(stage, 0) + 1
            return seen

        head_rows = results("heads")
        seen = compare_rows("heads", head_rows,
                            lambda abl, u, p: head_ref[p].get(u) if abl == "zero" and p < len(head_ref) else None)
        if len(seen) != len(head_units) * len(prompts):
            checker.fail("heads", "rows", f"{len(seen)} distinct rows, want {len(head_units) * len(prompts)}")
        neuron_rows = results("neurons")

        def neuron_lookup(abl, u, p):
            kind = "zero" if abl == "zero" else "mean" if abl.startswith("mean") else None
            if kind is None or p >= len(prompts):
                return None
            return neuron_ref[kind][p].get(u)
        seen = compare_rows("neurons", neuron_rows, neuron_lookup)
        if len(seen) != 2 * len(neuron_units_all) * len(prompts):
            checker.fail("neurons", "rows", f"{len(seen)} distinct rows, want {2 * len(neuron_units_all) * len(prompts)}")

        # ---- compare the downstream readings (aggregate rows: means over the prompts)
        def mean_over_prompts(per_prompt, u, key):
            return sum(pp[u][key] for pp in per_prompt) / len(per_prompt)

        def compare_compensation(stage, rows, per_prompt_of):
            for r in rows:
                label = r["unit"]
                # the knocked-out unit, from its name: L{l}H{h} or L{l}N{n}
                kind = "head" if "H" in label else "neuron"
                layer, unit = (int(x) for x in label[1:].replace("H", " ").replace("N", " ").split())
                u = (kind, layer, unit)
                per_prompt = per_prompt_of(r["ablation"])
                if per_prompt is None or u not in per_prompt[0]:
                    checker.fail(stage, "compensation rows", f"unexpected compensation row {r}")
                    continue
                ds = {}
                for name in per_prompt[0][u]["downstream"]:
                    c = sum(pp[u]["downstream"][name][0] for pp in per_prompt) / len(per_prompt)
                    a = sum(pp[u]["downstream"][name][1] for pp in per_prompt) / len(per_prompt)
                    ds[name] = (c, a)
                te = mean_over_prompts(per_prompt, u, "te")
                de = mean_over_prompts(per_prompt, u, "de")
                s = max(1.0, max(abs(mean_over_prompts(per_prompt, u, "clean_refusal_score")),
                                 abs(mean_over_prompts(per_prompt, u, "refusal_score"))))
                what = f"{label} {r['ablation']}"
                checker.value(stage, "mean te", what, r["te"], te, s)
                checker.value(stage, "mean de", what, r["de"], de, s)
                explained = sum(a - c for c, a in ds.values())
                checker.value(stage, "explained", what, r["explained"], explained, s)
                for b in r["backups"]:
                    if b["unit"] not in ds:
                        checker.fail(stage, "downstream", f"{what}: backup {b['unit']} is not a downstream unit "
                                     f"of the contract ({sorted(ds)[:4]}...)")
                        continue
                    c, a = ds[b["unit"]]
                    checker.value(stage, "downstream", f"{what} {b['unit']} clean", b["clean"], c, abs(c))
                    checker.value(stage, "downstream", f"{what} {b['unit']} ablated", b["ablated"], a, abs(a))
                    checker.value(stage, "downstream", f"{what} {b['unit']} change", b["change"], a - c, abs(a - c))
                # Every clearly compensating unit is listed (--top is unbounded): a change that
                # opposes DE (experiments/compensation.h's rule) by more than the tolerance.
                sign = (1 if de > 0 else -1) if abs(de) >= 1e-12 else (1 if te > 0 else -1)
                listed = {b["unit"] for b in r["backups"]}
                for name, (c, a) in ds.items():
                    if (a - c) * sign < -10 * TOL and name not in listed:
                        checker.fail(stage, "downstream listed", f"{what}: compensating unit {name} (change {a - c:.4g}) "
                                     "not listed")

        compare_compensation("heads", compensation("heads"), lambda abl: head_ref if abl == "zero" else None)
        compare_compensation("neurons", compensation("neurons"),
                             lambda abl: neuron_ref["zero"] if abl == "zero"
                             else neuron_ref["mean"] if abl.startswith("mean") else None)

        # Closure (informational): C = TE - DE against norm_effect + explained, head sweep means.
        worst, worst_heads_only, max_c = 0.0, 0.0, 0.0
        for u in head_units:
            te = mean_over_prompts(head_ref, u, "te")
            de = mean_over_prompts(head_ref, u, "de")
            ne = mean_over_prompts(head_ref, u, "norm_effect")
            change = {k: sum(pp[u]["downstream"][k][1] - pp[u]["downstream"][k][0] for pp in head_ref)
                      / len(head_ref) for k in head_ref[0][u]["downstream"]}
            worst = max(worst, abs((te - de) - ne - sum(change.values())))
            heads_only = sum(v for k, v in change.items() if "H" in k)
            worst_heads_only = max(worst_heads_only, abs((te - de) - ne - heads_only))
            max_c = max(max_c, abs(te - de))
        print(f"info: head sweep, reference, means over prompts: max |C| = {max_c:.4g}; "
              f"max |C - norm_effect - explained| = {worst:.4g} with later heads and MLP outputs read, "
              f"{worst_heads_only:.4g} with later heads only (the rest: the metric's non-linearity; "
              "not asserted)")

    n_head_vals = len(head_units) * len(prompts)
    # Values with |reference| > 1e-3 that must have been compared (today's counts in brackets:
    # heads te 369, de 340, norm_effect 322, kl 38 of 384; neurons te 72, de 72, kl 8 of 96).
    need = {("heads", k): n_head_vals // 2 for k in ("refusal_score", "te", "de", "norm_effect", "logit_diff")}
    need[("heads", "kl")] = 20
    need.update({("neurons", k): len(neuron_units_all) for k in ("te", "de", "norm_effect", "logit_diff")})
    need[("neurons", "kl")] = 4
    need.update({("heads", "downstream"): 20, ("neurons", "downstream"): 10, ("heads", "explained"): 10})
    ok = checker.report(need)
    for stage, n in (("heads", n_head_vals // 4), ("neurons", len(neuron_units_all))):
        have = discriminating.get(stage, 0)
        print(f"{'ok' if have >= n else 'FAIL'}: {stage}: {have} rows tell a frozen-scale DE from an "
              f"unfrozen one (need {n})")
        ok = ok and have >= n
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
