#!/usr/bin/python3
"""An independent float64 reference for the SAE-latent knockout numbers knockout stores (issue 13).

Writes three SAEs in SAELens layout by hand (cfg.json + sae_weights.safetensors; random float32
weights from fixed seeds, b_dec nonzero, apply_b_dec_to_input true) for the shipped demo model:
  blocks.2.hook_resid_post  standard (ReLU)   the knocked-out latents
  blocks.4.hook_resid_post  jumprelu          backups
  blocks.5.hook_resid_post  topk (k 8)        backups
runs a small `knockout run` (a diff-in-means stage for the backups' cosine column, then a
knockout_sweep of two layer-2 latents a, b, one at a time and together (`together: layer`),
ablations zero / clamp 3 / scale -2, positions all and post_inst, compensation, backups
{top 5, dormant_threshold 0.05, positions post_inst}) on 8 harmful_val prompts, and recomputes
in float64 with python3-torch what `knockout results --per-prompt`, `knockout compensation`
and `knockout backups` print. Shares no code with knockout: the model forward, the metrics and
the comparison helpers come from test_metrics_reference.py (itself independent), the
safetensors writer from sae_fixtures.py; the SAE equations are written here from science.md
"SAE formats and encoders":

  encode    pre = (x - b_dec) W_enc + b_enc; standard f = ReLU(pre); jumprelu
            f = ReLU(pre) * 1[pre > threshold]; topk: the k largest pre, ReLU'd, the rest 0
  edit      x' = x + (f' - f)[L] W_dec[L] at every edited position of blocks.2.hook_resid_post
            (error term kept), L the trial's latents; f' = 0 | 3 | -2 f
  metrics   refusal_score, clean_refusal_score, te, kl, de, norm_effect per prompt, and on the
            aggregates mean te, mean de, c = te - de, explained and the listed downstream
            readings (attention and MLP outputs of layers > 2), as in test_metrics_reference.py;
            the latents' own write (de) is x' - x at the last position of the edited hook
  backups   for every latent j of every SAE downstream of the edit (layers 4 and 5), per prompt:
            clean_j / ablated_j = mean of f_j over the post_inst positions of the clean / ablated
            run; rise_j = ablated_j - clean_j. Over the prompts: clean, ablated = means; spread =
            population standard deviation of rise_j; dormant = clean < 0.05; cosine =
            cos(W_dec[j], r), r the diff-in-means direction (harmful_train - harmless_train,
            blocks.4.hook_resid_pre, post_inst[-1]); de_clean / de_ablated = mean of
            f_j(last) * W_dec[j] . m, m = d s / d x_final at the clean run, final norm's scale
            frozen. The stored top 5 (over both SAEs) must be the reference's top 5 by mean rise
            (order and membership; only near-ties within 1e-5 may swap).

The backup SAEs are drawn (seed by seed, deterministically) until every read token of every run
keeps 1e-3 away from the encoders' jumps (jumprelu threshold; topk's k-th/k+1-th pre-activation),
so that float32 rounding cannot flip a latent; the knocked-out latents are the two layer-2
latents with the largest activation at the prompts' last positions.

`knockout backups --unit` (per knocked-out unit, dormant latents first) must list the same
latents as `compensation` with the same numbers. KEEP=DIR keeps the SAEs, spec and store in DIR.

Usage: test_latent_reference.py KNOCKOUT KNOCKOUT_WORKER MODEL_DIR PROMPTS_DIR
Exit 0: every value within tolerance; 1: a mismatch (each printed with both values).
"""
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sae_fixtures import write_safetensors  # noqa: E402  (hand-written safetensors writer)
from test_metrics_reference import (  # noqa: E402  (the independent float64 forward + helpers)
    TOL, Checker, Llama, Reference, kl_clean_ablated, parse_csv, read_prompts, refusal_score, run,
    tokenize_chat, token_id)

torch.set_default_dtype(torch.float64)
N_PROMPTS = 8
N_DIRECTION_PROMPTS = 8
SET = "harmful_val"
REFUSAL_TOKENS = ["I"]
EDIT_LAYER = 2
D_SAE = 64
TOPK = 8
ALIGNED = 3            # layer-2 latents whose decoder rows point near the harmful - harmless direction
MARGIN = 1e-3          # how far every read pre-activation keeps from an encoder's jump
NEAR_TIE = 1e-5        # rises this close may swap places in the top list
TOP = 5
DORMANT = 0.05
DIRECTION_LAYER = 4    # the cosine column's direction: resid_pre of this layer at post_inst[-1]
ABLATIONS = [("zero", None), ("clamp", 3.0), ("scale", -2.0)]
POSITIONS = ["all", "post_inst"]
SPEC_NAME = "latent-reference"


# ------------------------------------------------------------------------------- the SAEs
class Sae:
    """A SAELens SAE in float64 from float32 weights (the stored values exactly)."""

    def __init__(self, hook, arch, weights, k=None):
        self.hook, self.arch, self.k = hook, arch, k
        self.np = weights  # float32 numpy, as stored
        w = {name: torch.from_numpy(v.astype(np.float64)) for name, v in weights.items()}
        self.W_enc, self.W_dec, self.b_enc, self.b_dec = w["W_enc"], w["W_dec"], w["b_enc"], w["b_dec"]
        self.threshold = w.get("threshold")

    def pre(self, x):
        return (x - self.b_dec) @ self.W_enc + self.b_enc  # apply_b_dec_to_input: true

    def encode(self, x):
        pre = self.pre(x)
        if self.arch == "standard":
            return pre.clamp_min(0)
        if self.arch == "jumprelu":
            return pre.clamp_min(0) * (pre > self.threshold)
        assert self.arch == "topk"
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))

    def margin(self, x):
        """The smallest distance of any token of x [N, d_in] to a jump of the encoder."""
        pre = self.pre(x)
        if self.arch == "jumprelu":
            return (pre - self.threshold).abs().min().item()
        if self.arch == "topk":
            s = pre.sort(-1, descending=True).values
            return (s[:, self.k - 1] - s[:, self.k]).min().item()
        return math.inf

    def move_thresholds(self, x):
        """jumprelu: moves each threshold that lies within MARGIN of a pre-activation of x [N, d_in]
        to the middle of the nearest gap between x's pre-activations wider than 4 MARGIN."""
        pre = self.pre(x)
        thr = self.np["threshold"].copy()
        for j in range(pre.shape[1]):
            v = np.sort(pre[:, j].numpy())
            t = float(thr[j])
            if np.abs(v - t).min() >= MARGIN:
                continue
            edges = np.concatenate([[v[0] - 1.0], v, [v[-1] + 1.0]])
            mids = (edges[1:] + edges[:-1]) / 2
            wide = (edges[1:] - edges[:-1]) > 4 * MARGIN
            thr[j] = np.float32(mids[wide][np.abs(mids[wide] - t).argmin()])
        self.np["threshold"] = thr
        self.threshold = torch.from_numpy(thr.astype(np.float64))

    def write(self, directory):
        os.makedirs(directory, exist_ok=True)
        tensors = [(name, "F32", v.shape, np.ascontiguousarray(v, "<f4").tobytes())
                   for name, v in self.np.items()]
        write_safetensors(os.path.join(directory, "sae_weights.safetensors"), tensors)
        cfg = {"architecture": self.arch, "d_in": int(self.W_enc.shape[0]), "d_sae": int(self.W_enc.shape[1]),
               "dtype": "float32", "apply_b_dec_to_input": True, "normalize_activations": "none",
               "metadata": {"hook_name": self.hook, "sae_lens_version": "6.5.0"}}
        if self.k:
            cfg["k"] = self.k
        with open(os.path.join(directory, "cfg.json"), "w") as f:
            json.dump(cfg, f)


def draw_sae(hook, arch, d_in, seed, k=None, aligned=None):
    """Random weights: decoder rows of norm 2 along random unit directions, the encoder their
    transpose / 4 (so that f_j ~ the residual's component along row j), b_enc negative (sparse),
    b_dec nonzero. `aligned` (a direction): the first ALIGNED rows point near it (refusal-like
    latents whose knockout moves the refusal score)."""
    rng = np.random.RandomState(seed)
    u = rng.standard_normal((D_SAE, d_in))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    if aligned is not None:
        r = aligned.numpy() / np.linalg.norm(aligned.numpy())
        u[:ALIGNED] = r + 0.5 * u[:ALIGNED]
        u[:ALIGNED] /= np.linalg.norm(u[:ALIGNED], axis=1, keepdims=True)
    w = {"W_enc": (u.T / 4 * (1 + 0.2 * rng.standard_normal((1, D_SAE)))).astype(np.float32),
         "W_dec": (2 * u).astype(np.float32),
         "b_enc": (-1.0 + 0.3 * rng.standard_normal(D_SAE)).astype(np.float32),
         "b_dec": (0.5 * rng.standard_normal(d_in)).astype(np.float32)}
    if arch == "jumprelu":
        w["threshold"] = (0.1 + 0.5 * np.abs(rng.standard_normal(D_SAE))).astype(np.float32)
    if arch == "topk":
        w["b_enc"] = (0.3 * rng.standard_normal(D_SAE)).astype(np.float32)
    return Sae(hook, arch, {name: np.ascontiguousarray(v) for name, v in w.items()}, k)


# ------------------------------------------------------------------------------- the spec
def ablation_yaml(kind, value):
    if kind == "zero":
        return "zero"
    return f"{{kind: clamp, value: {value:g}}}" if kind == "clamp" else f"{{kind: scale, factor: {value:g}}}"


def spec_text(model_dir, prompts_dir, sae_dirs, latents):
    saes = "".join(f"  {hook}: {path}\n" for hook, path in sae_dirs.items())
    path = lambda name: os.path.join(prompts_dir, name + ".jsonl")  # noqa: E731
    return f"""name: {SPEC_NAME}
seed: 42
model: {{path: {model_dir}, dtype: float32, device: cpu}}
prompt_sets:
  {SET}: {{path: {path(SET)}, limit: {N_PROMPTS}}}
  harmful_train: {{path: {path('harmful_train')}, limit: {N_DIRECTION_PROMPTS}}}
  harmless_train: {{path: {path('harmless_train')}, limit: {N_DIRECTION_PROMPTS}}}
saes:
{saes}metrics:
  refusal_tokens: {json.dumps(REFUSAL_TOKENS)}
stages:
  - name: refusal
    extract_directions:
      positive: harmful_train
      negative: harmless_train
      layers: [{DIRECTION_LAYER}]
      positions: ["post_inst[-1]"]
  - name: latents
    knockout_sweep:
      prompt_sets: [{SET}]
      targets:
        - {{kind: sae_latents, layers: [{EDIT_LAYER}], units: {json.dumps(latents)}, together: layer}}
      ablations: [{', '.join(ablation_yaml(k, v) for k, v in ABLATIONS)}]
      positions: [{', '.join(POSITIONS)}]
      compensation: true
      backups: {{top: {TOP}, dormant_threshold: {DORMANT}, positions: post_inst,
                direction: {{stage: refusal, layer: {DIRECTION_LAYER}, position: "post_inst[-1]"}}}}
"""


# ------------------------------------------------------------------------------- the reference
def latent_edit(sae, latents, kind, value, positions):
    """edit(kind, layer, t [T, d]) for the forward: x' = x + (f' - f)[L] W_dec[L] at `positions`."""
    idx = torch.tensor(latents)

    def edit(hook_kind, layer, t):
        if hook_kind != "resid_post" or layer != EDIT_LAYER:
            return t
        f = sae.encode(t)[:, idx]  # [T, |L|]
        new = torch.zeros_like(f) if kind == "zero" else torch.full_like(f, value) if kind == "clamp" \
            else value * f
        t = t.clone()
        t[positions] = t[positions] + ((new - f) @ sae.W_dec[idx])[positions]
        return t
    return edit


def run_trials(model, ref, prompt, clean, trials, sae2):
    """One forward of every trial (one row each) on one prompt: per trial the metrics, the
    downstream readings and the residual at layers 4 and 5 (post_inst positions)."""
    T = len(prompt["ids"])
    pos = {"all": list(range(T)), "post_inst": prompt["post_inst"]}
    edits = [latent_edit(sae2, t["latents"], t["kind"], t["value"], pos[t["positions"]]) for t in trials]
    a = model.forward(prompt["ids"], edits)
    ra = ref.readings(a, clean["m"])
    rc = ref.readings({k: [x[None] for x in clean[k]] for k in ("z", "attn_out", "mlp_out")}, clean["m"])
    out = []
    sc = clean["scale_last"]
    x_clean = clean["x_final"][-1]
    s_base = refusal_score(model.unembed_frozen(x_clean, sc), ref.R).item()
    for b, t in enumerate(trials):
        logits = a["logits"][b, -1]
        s = refusal_score(logits, ref.R).item()
        x_abl = a["x_final"][b, -1]
        delta = a["resid_post"][EDIT_LAYER][b, -1] - clean["resid_post"][EDIT_LAYER][-1]  # own write
        de = refusal_score(model.unembed_frozen(x_clean + delta, sc), ref.R).item() - s_base
        de_unfrozen = refusal_score(model.unembed_frozen(x_clean + delta, model.scale(x_clean + delta)),
                                    ref.R).item() - s_base
        norm_effect = (refusal_score(model.unembed_frozen(x_abl, model.scale(x_abl)), ref.R)
                       - refusal_score(model.unembed_frozen(x_abl, sc), ref.R)).item()
        units_read = [(k, l, -1) for l in range(EDIT_LAYER + 1, model.L) for k in ("attn_out", "mlp_out")]
        out.append({
            "refusal_score": s, "clean_refusal_score": clean["score"], "te": s - clean["score"],
            "kl": kl_clean_ablated(clean["logits"][-1], logits).item(),
            "de": de, "de_unfrozen": de_unfrozen, "norm_effect": norm_effect,
            "downstream": {f"L{l}.{k}": (rc[(k, l, -1)][0], ra[(k, l, -1)][b]) for k, l, _ in units_read},
            "resid": {l: a["resid_post"][l][b, prompt["post_inst"]] for l in (4, 5)},
        })
    return out


def backups_reference(saes, prompts, cleans, per_prompt, direction):
    """Per trial: every latent of every backup SAE, {(hook, latent): dict} and the list sorted by
    mean rise (highest first; ties: lower hook, lower latent)."""
    n = len(prompts)
    stats = {}
    for sae in saes:
        layer = int(sae.hook.split(".")[1])
        clean_mean, abl_mean, de_c, de_a = [], [], [], []
        for p, c, rows in zip(prompts, cleans, per_prompt):
            fc = sae.encode(c["resid_post"][layer][p["post_inst"]])  # [P, d_sae]
            fa = sae.encode(rows["resid"][layer])
            proj = sae.W_dec @ c["m"]  # W_dec[j] . m
            clean_mean.append(fc.mean(0))
            abl_mean.append(fa.mean(0))
            de_c.append(fc[-1] * proj)  # post_inst ends at the last position
            de_a.append(fa[-1] * proj)
        clean_mean, abl_mean = torch.stack(clean_mean), torch.stack(abl_mean)
        rise = abl_mean - clean_mean  # [n, d_sae]
        cos = (sae.W_dec @ direction) / (sae.W_dec.norm(dim=1) * direction.norm())
        for j in range(D_SAE):
            stats[(sae.hook, j)] = {
                "layer": layer, "clean": clean_mean[:, j].mean().item(), "ablated": abl_mean[:, j].mean().item(),
                "rise": rise[:, j].mean().item(), "spread": rise[:, j].std(unbiased=False).item(),
                "cosine": cos[j].item(), "de_clean": sum(d[j] for d in de_c).item() / n,
                "de_ablated": sum(d[j] for d in de_a).item() / n,
            }
    order = sorted(stats, key=lambda key: (-stats[key]["rise"], stats[key]["layer"], key[1]))
    return stats, order


def check_top(checker, what, stored, stats, order):
    """The stored list must be the reference's top list, up to swaps among near-ties."""
    stage = "latents"
    names = [(b["hook"], int(b["unit"].split("F")[1])) for b in stored]
    want = order[:TOP]
    if len(names) != min(TOP, len(order)):
        checker.fail(stage, "top", f"{what}: {len(names)} backups stored, want {min(TOP, len(order))}")
        return
    kth = stats[want[-1]]["rise"]
    for key in order:  # every latent clearly above the k-th rise must be listed
        if stats[key]["rise"] > kth + NEAR_TIE and key not in names:
            checker.fail(stage, "top", f"{what}: {key} (rise {stats[key]['rise']:.6g}) is not listed; "
                         f"stored {names}, reference {want}")
    for i, key in enumerate(names):
        if key not in stats:
            checker.fail(stage, "top", f"{what}: stored {key} is no latent of a downstream SAE")
            continue
        if stats[key]["rise"] < kth - NEAR_TIE:
            checker.fail(stage, "top", f"{what}: stored {key} (rise {stats[key]['rise']:.6g}) is below the "
                         f"reference's top {TOP} (k-th {kth:.6g})")
        if i > 0 and key in stats and names[i - 1] in stats and \
                stats[key]["rise"] > stats[names[i - 1]]["rise"] + NEAR_TIE:
            checker.fail(stage, "top", f"{what}: stored order {names} is not by descending rise")
    checker.counts[(stage, "top")] = checker.counts.get((stage, "top"), 0) + 1
    if names == want:
        checker.nontrivial[(stage, "top")] = checker.nontrivial.get((stage, "top"), 0) + 1


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    knockout, worker, model_dir, prompts_dir = (os.path.abspath(a) for a in sys.argv[1:])
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a busy machine
    t_start = time.time()
    model = Llama(model_dir)
    d = model.d
    keep = os.environ.get("KEEP")  # a directory to keep the SAEs, the spec and the store in
    with tempfile.TemporaryDirectory(prefix="latent_reference_") as scratch:
        tmp = keep or scratch
        read = lambda name, n: tokenize_chat(  # noqa: E731
            worker, model_dir, read_prompts(os.path.join(prompts_dir, name + ".jsonl"), n), tmp)
        prompts = read(SET, N_PROMPTS)
        harmful, harmless = read("harmful_train", N_DIRECTION_PROMPTS), read("harmless_train", N_DIRECTION_PROMPTS)
        R = [token_id(worker, model_dir, t) for t in REFUSAL_TOKENS]
        ref = Reference(model, R, R, R)

        with torch.no_grad():
            cleans = [ref.clean(p) for p in prompts]
            # The cosine column's direction: diff-in-means of blocks.4.hook_resid_pre (= the
            # residual after layer 3) at the last token (post_inst[-1]).
            runs = {name: [model.forward(p["ids"])["resid_post"] for p in ps]
                    for name, ps in (("harmful", harmful), ("harmless", harmless))}
            last = lambda name, layer: torch.stack([r[layer][0, -1] for r in runs[name]]).mean(0)  # noqa: E731
            direction = last("harmful", DIRECTION_LAYER - 1) - last("harmless", DIRECTION_LAYER - 1)

            sae2 = draw_sae(f"blocks.{EDIT_LAYER}.hook_resid_post", "standard", d, seed=2,
                            aligned=last("harmful", EDIT_LAYER) - last("harmless", EDIT_LAYER))
            f_last = sum(sae2.encode(c["resid_post"][EDIT_LAYER][-1]) for c in cleans)
            latents = sorted(f_last.topk(2).indices.tolist())
            f_all = torch.cat([sae2.encode(c["resid_post"][EDIT_LAYER]) for c in cleans])
            print(f"layer-{EDIT_LAYER} SAE: L0 {(f_all > 0).sum(-1).double().mean():.1f} of {D_SAE}; "
                  f"knocked-out latents {latents}, mean f at the last position "
                  f"{[round(f_last[j].item() / len(cleans), 3) for j in latents]}")

            trials = []  # the stage's trials, in any order (matched by label)
            for group in [[a] for a in latents] + [latents]:
                for kind, value in ABLATIONS:
                    for positions in POSITIONS:
                        trials.append({"latents": group, "kind": kind, "value": value, "positions": positions})
            t0 = time.time()
            per_prompt = [run_trials(model, ref, p, c, trials, sae2) for p, c in zip(prompts, cleans)]
            print(f"reference trials: {time.time() - t0:.1f} s")

            # Backup SAEs: drawn until every read token keeps MARGIN from the encoders' jumps.
            backup_saes = []
            for layer, arch, k in ((4, "jumprelu", None), (5, "topk", TOPK)):
                xs = torch.cat([c["resid_post"][layer][p["post_inst"]] for p, c in zip(prompts, cleans)] +
                               [rows[t]["resid"][layer] for rows in per_prompt for t in range(len(trials))])
                for seed in range(100, 200):
                    sae = draw_sae(f"blocks.{layer}.hook_resid_post", arch, d, seed, k)
                    if arch == "jumprelu":
                        sae.move_thresholds(xs)
                    if sae.margin(xs) >= MARGIN:
                        break
                else:
                    sys.exit(f"FAIL: no seed gives a layer-{layer} {arch} SAE with margin {MARGIN}")
                f = sae.encode(xs)
                print(f"layer-{layer} {arch} SAE: seed {seed}, margin {sae.margin(xs):.3g}, "
                      f"L0 {(f > 0).sum(-1).double().mean():.1f} of {D_SAE} over {xs.shape[0]} read tokens")
                backup_saes.append(sae)

        sae_dirs = {}
        for sae in [sae2] + backup_saes:
            path = os.path.join(tmp, "saes", sae.hook)
            sae.write(path)
            sae_dirs[sae.hook] = path
        spec = os.path.join(tmp, "spec.yaml")
        with open(spec, "w") as f:
            f.write(spec_text(model_dir, prompts_dir, sae_dirs, latents))
        store = os.path.join(tmp, "store")
        t0 = time.time()
        run([knockout, "run", spec, "--store", store, "--workers", "1", "--worker-binary", worker, "--no-summary"])
        print(f"knockout run: {time.time() - t0:.1f} s")

        def query(*args):
            return run([knockout, *args, "--store", store])

        rows = parse_csv(query("results", SPEC_NAME, "--stage", "latents", "--per-prompt", "--format", "csv"))
        comp = [json.loads(line) for line in query("compensation", SPEC_NAME, "--stage", "latents", "--top", "100000",
                                                   "--format", "jsonl").splitlines() if line.strip()]
        backups_out = {}
        for name in [f"L{EDIT_LAYER}F{j}" for j in latents] + [f"L{EDIT_LAYER}F[{','.join(map(str, latents))}]"]:
            backups_out[name] = [json.loads(line) for line in query(
                "backups", SPEC_NAME, "--stage", "latents", "--unit", name, "--top", "100",
                "--format", "jsonl").splitlines() if line.strip()]

    # ---- the trial each stored label names: by its latents (a name "L2F7", "L2F[7,9]" or the
    # per-prompt rows' unit_kind/layer/unit, -1 for the layer's group), ablation and positions.
    def trial_of(group, ablation, positions):
        for i, t in enumerate(trials):
            if t["latents"] == group and t["kind"] == ablation and t["positions"] == positions:
                return i
        return None

    def latents_of_name(name):
        if not name.startswith(f"L{EDIT_LAYER}F"):
            return None
        return sorted(int(x) for x in name.split("F", 1)[1].strip("[]").split(","))

    def latents_of_row(r):
        if int(r["layer"]) != EDIT_LAYER:
            return None
        if r["unit_kind"] == "sae_latent":
            return [int(r["unit"])]
        return latents if r["unit_kind"] == "sae_latents" and int(r["unit"]) == -1 else None

    checker = Checker()
    stage = "latents"
    metrics = ["refusal_score", "clean_refusal_score", "te", "kl", "de", "norm_effect"]
    score_like = {"refusal_score", "clean_refusal_score", "te", "de", "norm_effect"}
    discriminating = 0
    seen = set()
    labels = {}
    for r in rows:
        unit = f"{r['unit_kind']} {r['layer']}/{r['unit']}"
        i = trial_of(latents_of_row(r), r["ablation"], r["positions"])
        if i is not None and float(r["coefficient"]) != (trials[i]["value"] or 0.0):
            checker.fail(stage, "rows", f"{unit} {r['ablation']}: coefficient {r['coefficient']}, want "
                         f"{trials[i]['value']}")
        p = int(r["prompt"])
        if i is None or p >= len(prompts):
            checker.fail(stage, "rows", f"unexpected row {unit} {r['ablation']} {r['positions']} prompt {p}")
            continue
        labels[i] = (unit, r["ablation"], r["positions"])
        seen.add((i, p))
        want = per_prompt[p][i]
        scale = max(abs(want["refusal_score"]), abs(want["clean_refusal_score"]))
        what = f"{unit} {r['ablation']} {r['positions']} prompt {p}"
        for k in metrics:
            if r.get(k, "") == "":
                checker.fail(stage, k, f"{what}: no {k} in the row")
                continue
            got = float(r[k])
            checker.value(stage, k, what, got, want[k], scale if k in score_like else 1.0)
            if k == "de" and abs(got - want["de_unfrozen"]) > TOL * max(1.0, scale):
                discriminating += 1
    if len(seen) != len(trials) * len(prompts):
        checker.fail(stage, "rows", f"{len(seen)} distinct per-prompt rows, want {len(trials) * len(prompts)}")

    # ---- aggregates: te, de, c, explained, downstream readings, latent backups
    backups_ref = {}
    for i in range(len(trials)):
        backups_ref[i] = backups_reference(backup_saes, prompts, cleans, [pp[i] for pp in per_prompt], direction)
    mean = lambda i, key: sum(pp[i][key] for pp in per_prompt) / len(per_prompt)  # noqa: E731
    comp_seen = set()
    for r in comp:
        i = trial_of(latents_of_name(r["unit"]), r["ablation"], r["positions"])
        if i is None:
            checker.fail(stage, "compensation rows", f"unexpected compensation row {r['unit']} {r['ablation']}")
            continue
        comp_seen.add(i)
        what = f"{r['unit']} {r['ablation']} {r['positions']}"
        s = max(1.0, abs(mean(i, "clean_refusal_score")), abs(mean(i, "refusal_score")))
        te, de = mean(i, "te"), mean(i, "de")
        checker.value(stage, "mean te", what, r["te"], te, s)
        checker.value(stage, "mean de", what, r["de"], de, s)
        checker.value(stage, "c", what, r["c"], te - de, s)
        ds = {name: (sum(pp[i]["downstream"][name][0] for pp in per_prompt) / len(per_prompt),
                     sum(pp[i]["downstream"][name][1] for pp in per_prompt) / len(per_prompt))
              for name in per_prompt[0][i]["downstream"]}
        checker.value(stage, "explained", what, r["explained"], sum(a - c for c, a in ds.values()), s)
        for b in r["backups"]:
            if b["unit"] not in ds:
                checker.fail(stage, "downstream", f"{what}: {b['unit']} is not a downstream unit ({sorted(ds)})")
                continue
            c, a = ds[b["unit"]]
            checker.value(stage, "downstream", f"{what} {b['unit']} clean", b["clean"], c, abs(c))
            checker.value(stage, "downstream", f"{what} {b['unit']} ablated", b["ablated"], a, abs(a))

        stats, order = backups_ref[i]
        stored = r["latent_backups"]
        check_top(checker, what, stored, stats, order)
        for b in stored:
            key = (b["hook"], int(b["unit"].split("F")[1]))
            if key not in stats:
                continue
            want = stats[key]
            name = f"{what} {b['unit']}"
            for field in ("clean", "ablated", "spread", "cosine", "de_clean", "de_ablated"):
                checker.value(stage, "backup " + field, f"{name} {field}", b[field], want[field], abs(want[field]))
            checker.value(stage, "backup rise", f"{name} rise", b["ablated"] - b["clean"], want["rise"],
                          abs(want["rise"]))
            if abs(want["clean"] - DORMANT) > 10 * TOL:
                checker.counts[(stage, "backup dormant")] = checker.counts.get((stage, "backup dormant"), 0) + 1
                if want["clean"] < DORMANT:
                    checker.nontrivial[(stage, "backup dormant")] = \
                        checker.nontrivial.get((stage, "backup dormant"), 0) + 1
                if b["dormant"] != (want["clean"] < DORMANT):
                    checker.fail(stage, "backup dormant", f"{name}: dormant {b['dormant']}, reference clean "
                                 f"{want['clean']:.6g} vs threshold {DORMANT}")
    if len(comp_seen) != len(trials):
        checker.fail(stage, "compensation rows", f"{len(comp_seen)} trials in compensation, want {len(trials)}")

    # ---- `knockout backups`: the same readings, per unit (dormant first)
    for unit, lines in backups_out.items():
        by_trial = {}
        for b in lines:
            i = trial_of(latents_of_name(b["unit"]), b["ablation"], b["positions"])
            if i is None:
                checker.fail(stage, "backups query", f"unexpected backups row {b}")
                continue
            by_trial.setdefault(i, []).append(b)
        for i, listed in by_trial.items():
            stats, order = backups_ref[i]
            what = f"backups {unit} {listed[0]['ablation']} {listed[0]['positions']}"
            if sorted((b["hook"], int(b["backup"].split("F")[1])) for b in listed) != \
                    sorted((b["hook"], int(b["unit"].split("F")[1])) for r in comp
                           if trial_of(latents_of_name(r["unit"]), r["ablation"], r["positions"]) == i
                           for b in r["latent_backups"]):
                checker.fail(stage, "backups query", f"{what}: lists other latents than compensation")
            for b in listed:
                want = stats[(b["hook"], int(b["backup"].split("F")[1]))]
                for field in ("clean", "ablated", "rise", "spread", "de_clean", "de_ablated"):
                    checker.value(stage, "backups query", f"{what} {b['backup']} {field}", b[field], want[field],
                                  abs(want[field]))
                checker.value(stage, "backups query", f"{what} {b['backup']} de_change", b["de_change"],
                              want["de_ablated"] - want["de_clean"], abs(want["de_ablated"] - want["de_clean"]))
            dormant = [b["dormant"] for b in listed]
            if dormant != sorted(dormant, reverse=True):
                checker.fail(stage, "backups query", f"{what}: dormant latents are not listed first")
        if len(by_trial) != len(ABLATIONS) * len(POSITIONS):
            checker.fail(stage, "backups query", f"{unit}: {len(by_trial)} trials listed, want "
                         f"{len(ABLATIONS) * len(POSITIONS)}")

    # ---- informational: what the numbers look like
    n_rows = len(trials) * len(prompts)
    dormant_rising = sum(1 for i in backups_ref for key in backups_ref[i][1][:TOP]
                         if backups_ref[i][0][key]["clean"] < DORMANT and backups_ref[i][0][key]["rise"] > 0.1)
    biggest = lambda key: max(abs(pp[i][key]) for pp in per_prompt for i in range(len(trials)))  # noqa: E731
    top_rises = [round(backups_ref[i][0][backups_ref[i][1][0]]["rise"], 3) for i in range(len(trials))]
    print(f"info: reference: |te| max {biggest('te'):.3g}, |de| max {biggest('de'):.3g}; {dormant_rising} "
          f"dormant latents among the trials' top {TOP} with rise > 0.1; top rise per trial {top_rises}")
    gaps = [backups_ref[i][0][backups_ref[i][1][TOP - 1]]["rise"] - backups_ref[i][0][backups_ref[i][1][TOP]]["rise"]
            for i in backups_ref]
    near = min(abs(st["clean"] - DORMANT) for i in backups_ref for st in backups_ref[i][0].values())
    print(f"info: smallest gap between the {TOP}th and {TOP + 1}th rise of a trial {min(gaps):.3g}; "
          f"smallest |clean - dormant threshold| {near:.3g}")
    need = {(stage, k): n_rows // 2 for k in ("refusal_score", "te", "de", "norm_effect")}
    need.update({(stage, "kl"): n_rows // 4, (stage, "mean te"): len(trials), (stage, "mean de"): len(trials),
                 (stage, "c"): len(trials) // 2, (stage, "top"): len(trials) // 2,
                 (stage, "backup clean"): len(trials), (stage, "backup ablated"): len(trials) * TOP,
                 (stage, "backup rise"): len(trials) * TOP, (stage, "backup spread"): len(trials) * TOP // 2,
                 (stage, "backup cosine"): len(trials) * TOP // 2,
                 (stage, "backup de_ablated"): len(trials) * TOP // 2, (stage, "backup dormant"): 1,
                 (stage, "downstream"): len(trials), (stage, "backups query"): len(trials) * TOP})
    ok = checker.report(need)
    print(f"{'ok' if discriminating >= n_rows // 4 else 'FAIL'}: {discriminating} rows tell a frozen-scale DE "
          f"from an unfrozen one (need {n_rows // 4})")
    ok = ok and discriminating >= n_rows // 4
    print(f"total {time.time() - t_start:.1f} s")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
