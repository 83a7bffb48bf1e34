#!/usr/bin/python3
"""An independent float64 reference for attribution screening (issue 16).

Runs four attribution_screen stages on the shipped demo model with `knockout run` and checks the
mean score of every unit that `knockout results --format csv` prints against a float64
recomputation from the published equations (the forward and SAEs of test_metrics_reference.py /
test_latent_reference.py, which share no code with knockout):

  atp            score_u = d/de M(a + e delta_u) at e = 0, taken here by central finite
                 differences (e = 1e-3) of the real forward: the first-order Taylor term, with
                 delta_u = a_ablated - a_clean at the unit's positions (Kramar et al. 2024, AtP)
  atp_star       AtP with GradDrop (Kramar et al. sec. 3.1.2): for each layer l, the gradient
                 through l's attention and MLP outputs dropped (here: z and mlp.hook_post of l
                 detached, the same cut); score_u = sign(AtP_u) * mean over the layers other than
                 the unit's own of |AtP_u with l dropped| (all L for a resid_post unit)
  integrated_gradients (STEPS midpoints) per group of units sharing a hook: the gradient at
                 a_clean + alpha delta_group averaged over alpha = (k - 1/2) / STEPS, dotted with
                 delta_u (Yeo et al. 2025's path, here zero ablation); completeness: the sum over
                 a group approaches M(a_clean + delta_group) - M(clean), checked with many steps
  mean ablation  atp with delta_u = mean over every real token of the reference set - a_clean
  logit_diff     atp of the logit difference (mean logit of "I" minus that of "Sure")

Units: every head of two layers, listed neurons of one layer, the attention and MLP outputs of
one layer each, 16 latents of an SAE at blocks.3.hook_resid_post that the test writes (error term
kept: a latent moves the residual by delta_f W_dec[j]). Metric: the refusal score
s = log p_R - log(1 - p_R) at the last position. Positions: post_inst.

Usage: test_screen_reference.py KNOCKOUT KNOCKOUT_WORKER MODEL_DIR PROMPTS_DIR
Exit 0: every value within tolerance; 1: a mismatch (each printed with both values).
"""
import math
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_latent_reference import draw_sae  # noqa: E402  (SAELens writer, float64 encoder)
from test_metrics_reference import (  # noqa: E402  (the independent float64 forward + helpers)
    Llama, logit_diff, parse_csv, read_prompts, refusal_score, run, tokenize_chat, token_id)

torch.set_default_dtype(torch.float64)
N_PROMPTS = 6
SET, REF_SET = "harmful_val", "harmless_val"
HEAD_LAYERS = [1, 4]
NEURON_LAYER, NEURONS = 2, [3, 17, 100, 250, 401, 600]
ATTN_OUT_LAYER, MLP_OUT_LAYER = 1, 4
SAE_LAYER, LATENTS = 3, list(range(16))
STEPS = 8            # integrated gradients in the sweep
COMPLETE_STEPS = 64  # the reference's own IG for the completeness check
FD_EPS = 1e-3
TOL_ABS, TOL_REL = 3e-4, 2e-3   # float32 forward and backward vs float64


def spec_text(model_dir, prompts_dir, sae_dir):
    path = lambda name: os.path.join(prompts_dir, name + ".jsonl")  # noqa: E731
    units = f"""[{{kind: heads, layers: {HEAD_LAYERS}}}, {{kind: neurons, layers: [{NEURON_LAYER}], units: {NEURONS}}},
             {{kind: attn_out, layers: [{ATTN_OUT_LAYER}]}}, {{kind: mlp_out, layers: [{MLP_OUT_LAYER}]}},
             {{kind: sae_latents, layers: [{SAE_LAYER}], units: {LATENTS}}}]"""
    stage = lambda name, method, extra="": f"""  - name: {name}
    attribution_screen:
      prompt_sets: [{SET}]
      units: {units}
      method: {method}
      positions: [post_inst]{extra}
"""
    return f"""name: screen-reference
seed: 7
model: {{path: {model_dir}, dtype: float32, device: cpu}}
prompt_sets:
  {SET}: {{path: {path(SET)}, limit: {N_PROMPTS}}}
  {REF_SET}: {{path: {path(REF_SET)}, limit: {N_PROMPTS}}}
saes:
  blocks.{SAE_LAYER}.hook_resid_post: {sae_dir}
metrics:
  refusal_tokens: ["I"]
  positive_tokens: ["I"]
  negative_tokens: ["Sure"]
stages:
{stage("atp", "atp")}{stage("star", "atp_star")}{stage("ig", "integrated_gradients", f"{chr(10)}      steps: {STEPS}")}{stage("mean", "atp", f"{chr(10)}      ablation: {{kind: mean_all_positions, reference_set: {REF_SET}}}")}{stage("ld", "atp", f"{chr(10)}      metric: logit_diff")}"""


class Screen:
    """The reference screen of one prompt: activations, deltas and the metric under edits."""

    def __init__(self, model, sae, refusal_ids, prompt, means=None, diff_ids=None):
        self.m, self.sae, self.r, self.diff = model, sae, refusal_ids, diff_ids
        self.ids, self.pos = prompt["ids"], prompt["post_inst"]
        with torch.no_grad():
            out = model.forward(self.ids)
        self.clean = self.score(out["logits"])[0].item()
        T = len(self.ids)
        mask = torch.zeros(T)
        mask[self.pos] = 1.0
        # Units: (name, hook kind, layer, delta [T, ...]) — name as the CSV's (kind, layer, unit).
        self.units = []
        z = lambda l: out["z"][l][0]  # noqa: E731
        post = lambda l: out["post"][l][0]  # noqa: E731
        for l in HEAD_LAYERS:
            target = means["z"][l] if means else torch.zeros_like(z(l))
            for h in range(model.nh):
                d = torch.zeros_like(z(l))
                d[:, h] = (target - z(l))[:, h] * mask[:, None]
                self.units.append((("head", l, h), "z", l, d))
        target = means["post"][NEURON_LAYER] if means else torch.zeros_like(post(NEURON_LAYER))
        for n in NEURONS:
            d = torch.zeros_like(post(NEURON_LAYER))
            d[:, n] = (target - post(NEURON_LAYER))[:, n] * mask
            self.units.append((("neuron", NEURON_LAYER, n), "post", NEURON_LAYER, d))
        # Whole outputs (no biases): attn_out = z W_O, mlp_out = post W_down, so their deltas are
        # the deltas of every head / neuron, and the mean of the output is the mean's output.
        t = means["z"][ATTN_OUT_LAYER] if means else torch.zeros_like(z(ATTN_OUT_LAYER))
        self.units.append((("attn_out", ATTN_OUT_LAYER, -1), "z", ATTN_OUT_LAYER,
                           (t - z(ATTN_OUT_LAYER)) * mask[:, None, None]))
        t = means["post"][MLP_OUT_LAYER] if means else torch.zeros_like(post(MLP_OUT_LAYER))
        self.units.append((("mlp_out", MLP_OUT_LAYER, -1), "post", MLP_OUT_LAYER,
                           (t - post(MLP_OUT_LAYER)) * mask[:, None]))
        x = out["resid_post"][SAE_LAYER][0]
        f = sae.encode(x)
        target = means["latents"] if means else torch.zeros_like(f)
        for j in LATENTS:
            df = (target[..., j] - f[:, j]) * mask
            self.units.append((("sae_latent", SAE_LAYER, j), "resid_post", SAE_LAYER,
                               df[:, None] * sae.W_dec[j][None]))

    def score(self, logits):
        """The metric of last-position logits [B, 1, V]: refusal score, or the logit difference."""
        if self.diff is not None:
            return logit_diff(logits[:, 0], self.diff[0], self.diff[1])
        return refusal_score(logits[:, 0], self.r)

    def metric(self, edits):
        """The metric of one row per edit dict {(kind, layer): fn(t) -> t}."""
        rows = [(lambda kind, l, t, e=e: e[(kind, l)](t) if (kind, l) in e else t) for e in edits]
        out = self.m.forward(self.ids, rows)
        return self.score(out["logits"])

    def finite_difference(self):
        edits = []
        for _, kind, l, d in self.units:
            for sign in (1, -1):
                edits.append({(kind, l): (lambda t, d=d, s=sign: t + s * FD_EPS * d)})
        with torch.no_grad():
            s = self.metric(edits)
        return {u[0]: ((s[2 * i] - s[2 * i + 1]) / (2 * FD_EPS)).item() for i, u in enumerate(self.units)}

    def gradients(self, shift=None, drop=None):
        """dM/da at every unit hook (kind, layer) with `shift` {(kind, l): delta} added and
        layer `drop`'s attention and MLP outputs passing no gradient."""
        taps = {}

        def make(kind, l):
            def fn(t):
                if drop is not None and l == drop and kind in ("z", "post"):
                    t = t.detach()
                if shift and (kind, l) in shift:
                    t = t + shift[(kind, l)]
                tap = torch.zeros_like(t, requires_grad=True)
                taps[(kind, l)] = tap
                return t + tap
            return fn

        hooks = {(kind, l) for _, kind, l, _ in self.units}
        edits = {h: make(*h) for h in hooks}
        if drop is not None:  # the cut at layers without units too
            for h in (("z", drop), ("post", drop)):
                edits.setdefault(h, lambda t: t.detach())
        s = self.metric([edits])
        s.sum().backward()
        return {h: (taps[h].grad if taps[h].grad is not None else torch.zeros_like(taps[h])) for h in hooks}

    def dot(self, grads):
        return {name: (d * grads[(kind, l)]).sum().item() for name, kind, l, d in self.units}

    def atp_star(self):
        base = self.dot(self.gradients())
        total = {name: 0.0 for name in base}
        for l in range(self.m.L):
            dropped = self.dot(self.gradients(drop=l))
            for name, kind, ul, _ in self.units:
                if ul == l and kind in ("z", "post"):
                    continue  # the unit's own layer: its write is what was dropped
                total[name] += abs(dropped[name])
        out = {}
        for name, kind, ul, _ in self.units:
            terms = self.m.L - (1 if kind in ("z", "post") else 0)
            out[name] = math.copysign(1.0, base[name]) * total[name] / terms if base[name] != 0 else 0.0
        return out

    def groups(self):
        """Units sharing a hook as the executor groups them: heads of a layer, the listed neurons,
        the listed latents; attn_out and mlp_out alone (their hooks differ from z / post)."""
        groups = {}
        for i, (name, kind, l, d) in enumerate(self.units):
            key = (name[0] if name[0] in ("attn_out", "mlp_out") else "unit", kind, l)
            groups.setdefault(key, []).append(i)
        return groups

    def integrated_gradients(self, steps):
        out, effects = {}, {}
        for key, members in self.groups().items():
            _, kind, l = key
            delta = sum(self.units[i][3] for i in members)
            total = None
            for k in range(steps):
                alpha = (k + 0.5) / steps
                g = self.gradients(shift={(kind, l): alpha * delta})[(kind, l)]
                total = g if total is None else total + g
            for i in members:
                out[self.units[i][0]] = (self.units[i][3] * total / steps).sum().item()
            with torch.no_grad():
                effects[key] = self.metric([{(kind, l): (lambda t, d=delta: t + d)}])[0].item() - self.clean
        return out, effects


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    knockout, worker, model_dir, prompts_dir = sys.argv[1:]
    model = Llama(model_dir)
    failures, checked = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        sae = draw_sae(f"blocks.{SAE_LAYER}.hook_resid_post", "standard", model.d, seed=5)
        sae_dir = os.path.join(tmp, "sae")
        sae.write(sae_dir)
        spec = os.path.join(tmp, "screen.yaml")
        with open(spec, "w") as f:
            f.write(spec_text(model_dir, prompts_dir, sae_dir))
        store = os.path.join(tmp, "store")
        run([knockout, "run", spec, "--store", store, "--workers", "1", "--worker-binary", worker, "--no-summary"])
        got = {}
        for stage in ("atp", "star", "ig", "mean", "ld"):
            rows = parse_csv(run([knockout, "results", "screen-reference", "--stage", stage,
                                  "--store", store, "--format", "csv"]))
            got[stage] = {(r["unit_kind"], int(r["layer"]), int(r["unit"])): float(r["score"]) for r in rows}

        refusal = torch.tensor([token_id(worker, model_dir, "I")])
        diff = ([token_id(worker, model_dir, "I")], [token_id(worker, model_dir, "Sure")])
        prompts = tokenize_chat(worker, model_dir, read_prompts(os.path.join(prompts_dir, SET + ".jsonl"),
                                                                N_PROMPTS), tmp)
        references = tokenize_chat(worker, model_dir, read_prompts(os.path.join(prompts_dir, REF_SET + ".jsonl"),
                                                                   N_PROMPTS), tmp)
        # mean_all_positions: every real token of the reference prompts.
        acc = {"z": {}, "post": {}, "latents": []}
        with torch.no_grad():
            for p in references:
                out = model.forward(p["ids"])
                for l in range(model.L):
                    acc["z"].setdefault(l, []).append(out["z"][l][0])
                    acc["post"].setdefault(l, []).append(out["post"][l][0])
                acc["latents"].append(sae.encode(out["resid_post"][SAE_LAYER][0]))
        means = {"z": {l: torch.cat(v).mean(0) for l, v in acc["z"].items()},
                 "post": {l: torch.cat(v).mean(0) for l, v in acc["post"].items()},
                 "latents": torch.cat(acc["latents"]).mean(0)}

        want = {stage: {} for stage in got}
        completeness = []
        for p in prompts:
            screen = Screen(model, sae, refusal, p)
            per = {"atp": screen.finite_difference(), "star": screen.atp_star()}
            per["ig"], effects = screen.integrated_gradients(STEPS)
            per["mean"] = Screen(model, sae, refusal, p, means).finite_difference()
            per["ld"] = Screen(model, sae, refusal, p, diff_ids=diff).finite_difference()
            for stage, values in per.items():
                for name, v in values.items():
                    want[stage].setdefault(name, []).append(v)
            ig_many, effects = screen.integrated_gradients(COMPLETE_STEPS)
            for key, members in screen.groups().items():
                total = sum(ig_many[screen.units[i][0]] for i in members)
                completeness.append((key, total, effects[key]))

    for stage, values in want.items():
        for name, vs in values.items():
            w = sum(vs) / len(vs)
            g = got[stage].get(name)
            checked += 1
            if g is None:
                failures.append(f"{stage} {name}: no row in `knockout results`")
            elif not abs(g - w) <= TOL_ABS + TOL_REL * abs(w):
                failures.append(f"{stage} {name}: knockout {g:.6g}, reference {w:.6g}")
    # Completeness of integrated gradients (the reference's own, many steps): the attributions of
    # a group sum to the exact effect of ablating it whole, to 1% of the effect (+1e-3).
    for key, total, effect in completeness:
        checked += 1
        if not abs(total - effect) <= 1e-3 + 0.01 * abs(effect):
            failures.append(f"completeness {key}: sum of IG {total:.6g}, effect {effect:.6g}")
    nontrivial = sum(1 for v in got["atp"].values() if abs(v) > 1e-2)
    print(f"checked {checked} values; {nontrivial} AtP scores above 1e-2 in magnitude")
    if nontrivial < 10:
        failures.append(f"only {nontrivial} AtP scores above 1e-2: the check would be vacuous")
    for f in failures:
        print("MISMATCH", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
