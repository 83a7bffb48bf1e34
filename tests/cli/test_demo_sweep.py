#!/usr/bin/env python3
"""The demo sweep end to end: `knockout validate` and `knockout run` on experiments/specs/
demo-hydra.yaml with the shipped demo model, asserting the science (science.md) from the stored
results rather than the code's own echo, then resumability: a run killed with SIGKILL and one
interrupted with SIGINT, each started again on the same store, finish with exactly the rows of
an uninterrupted run.

Usage: test_demo_sweep.py KNOCKOUT SPEC
"""
import csv
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_check  # noqa: E402


def run(cmd, check=True):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def jsonl(knockout, store, *args):
    out = run([knockout, *args, "--store", store, "--format", "jsonl"]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# The science checks run through: each failure is printed as it is found and the test fails
# after the last of them, so that one run of a candidate model shows everything it misses. The
# plumbing checks (validate, resumability) stop at the first failure.
science_failures = None


def check(condition, message):
    if not condition:
        if science_failures is None:
            sys.exit("FAIL: " + message)
        science_failures.append(message)
        print("FAIL:", message, flush=True)
        return
    print("ok:", message)


def science(knockout, store, workdir):
    # Selection: the chosen candidate passes science.md's filters (KL bound 0.7 in the spec).
    candidates = [r for r in jsonl(knockout, store, "results", "demo-hydra", "--stage", "select")
                  if r["table"] == "candidates"]
    chosen = [r for r in candidates if r["chosen"]]
    check(len(candidates) == 30, f"30 candidates (6 layers x 5 positions), got {len(candidates)}")
    check(len(chosen) == 1, "one candidate chosen")
    c = chosen[0]
    check(c["passed"] and c["layer"] < math.floor(0.8 * 6) and c["kl"] <= 0.7 and c["induce"] >= 0,
          f"chosen direction passes the filters: layer {c['layer']} {c['position']} "
          f"kl {c['kl']:.3f} induce {c['induce']:.3f} bypass {c['bypass']:.3f}")
    best_bypass = min(r["bypass"] for r in candidates if r["passed"])
    check(c["bypass"] == best_bypass, "the chosen candidate has the lowest bypass among those passing")

    # Generation with the direction ablated / added, and with the orthogonalised weights.
    rates = {}
    for r in jsonl(knockout, store, "results", "demo-hydra", "--stage", "generate") + \
            jsonl(knockout, store, "results", "demo-hydra", "--stage", "orthogonalized"):
        if r["table"] == "refusal":
            rates[(r["condition"], r["prompt_set"])] = r["refusal_rate"]
    check(rates[("baseline", "harmful_test")] >= 0.8, f"baseline refuses harmful: {rates[('baseline', 'harmful_test')]:.3f}")
    check(rates[("ablate", "harmful_test")] <= 0.10, f"ablation: harmful refusal {rates[('ablate', 'harmful_test')]:.3f} <= 0.10")
    check(rates[("add", "harmless_test")] >= 0.80, f"addition: harmless refusal {rates[('add', 'harmless_test')]:.3f} >= 0.80")
    ce = {r["role"]: r["cross_entropy"] for r in jsonl(knockout, store, "results", "demo-hydra", "--stage", "generate")
          if r["table"] == "cross_entropy"}
    check(sorted(ce) == ["ablate", "add", "baseline"] and all(math.isfinite(v) and v > 0 for v in ce.values()),
          "cross-entropy on the text set per condition: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(ce.items())))
    orth = rates[("orthogonalized", "harmful_test")]
    check(orth <= rates[("ablate", "harmful_test")] + 1 / 64 + 1e-12,
          f"orthogonalised model refuses no more than the ablation run ({orth:.3f})")

    # Compensation rows: C = TE - DE, for every knocked-out head.
    rows = jsonl(knockout, store, "compensation", "demo-hydra", "--stage", "heads")
    check(len(rows) == 48, f"48 head knockouts in the compensation table, got {len(rows)}")
    neurons = jsonl(knockout, store, "compensation", "demo-hydra", "--stage", "neurons")
    check(len(neurons) == 16, f"16 neuron knockouts (top 4 x 4 layers), got {len(neurons)}")
    rows += neurons
    for r in rows:
        if abs(r["c"] - (r["te"] - r["de"])) > 1e-12:
            sys.exit(f"FAIL: C != TE - DE for {r['unit']}: {r}")
    check(True, "every compensation row satisfies C = TE - DE")

    # SAE latents (the hydra stage): 3 latents per layer chosen by decoder cosine (layers 3-4,
    # downstream) and by activation difference at t_inst (layers 1-2, upstream), each knocked out
    # alone, then each role's 6 together.
    features = jsonl(knockout, store, "features", "demo-hydra", "--stage", "hydra")
    by_layer = {}
    for r in features:
        by_layer.setdefault(r["layer"], []).append(r)
    check(sorted(by_layer) == [1, 2, 3, 4] and all(len(v) == 3 for v in by_layer.values()),
          "features: 3 latents per layer for layers 1-4")
    check(all(r["score"] == "decoder_cosine" and r["cosine"] == r["value"] for l in (3, 4) for r in by_layer[l]),
          "downstream latents ranked by decoder cosine")
    check(all(r["score"] == "activation_diff" and r["activation_diff"] > 0 for l in (1, 2) for r in by_layer[l]),
          "upstream latents ranked by a positive activation difference harmful - harmless")
    hydra = jsonl(knockout, store, "compensation", "demo-hydra", "--stage", "hydra", "--top", "5")
    check(len(hydra) == 14, f"14 latent knockouts (2 x (6 + 1 group)), got {len(hydra)}")
    roles = sorted((r["role"], r["unit"]) for r in hydra)
    chosen = {f"L{r['layer']}F{r['latent']}" for r in features}
    singles = [r for r in hydra if "[" not in r["unit"]]
    check({r["unit"] for r in singles} == chosen, "one trial per chosen latent, named L<layer>F<latent>")
    check(sum(1 for role, unit in roles if role == "downstream") == 7, "7 downstream trials")
    groups = [r for r in hydra if "[" in r["unit"]]
    check(len(groups) == 2 and all(r["de"] is None and r["c"] is None for r in groups),
          "the two all-at-once groups span layers: no DE, no C")
    for r in singles:
        if abs(r["c"] - (r["te"] - r["de"])) > 1e-12:
            sys.exit(f"FAIL: C != TE - DE for {r['unit']}: {r}")
    check(True, "every single-latent row satisfies C = TE - DE")
    downstream_l3 = [r for r in hydra if r["unit"].startswith("L3F") and "[" not in r["unit"]]
    check(all(r["latent_backups"] and all(b["unit"][1] in "45" for b in r["latent_backups"])
              for r in downstream_l3),
          "layer-3 knockouts have backups, all from the SAEs of layers 4-5")
    unit = downstream_l3[0]["unit"]
    backups = jsonl(knockout, store, "backups", "demo-hydra", "--stage", "hydra", "--unit", unit, "--top", "5")
    check(len(backups) == 5 and all(abs(b["rise"] - (b["ablated"] - b["clean"])) < 1e-9 for b in backups),
          f"backups of {unit}: 5 rows, rise = ablated - clean")
    dormant = [b["dormant"] for b in backups]
    check(dormant == sorted(dormant, reverse=True), "dormant backups listed first")

    # The demo model's hydra (issue 14), in the sweep's own rows. Refusal survives the selected
    # direction projected out at any single layer from the selected one on (every position),
    # but not the same direction ablated at every layer; the harm direction of an earlier layer
    # projected out at t_inst alone removes it (the upstream sensor).
    results = jsonl(knockout, store, "results", "demo-hydra", "--stage", "directions")
    def score(direction, ablation, positions, layer=None):
        rows = [r for r in results if r["direction"] == direction and r["ablation"] == ablation
                and r["positions"] == positions and (layer is None or r["layer"] == layer)]
        check(len(rows) == 1, f"one row for {direction} {ablation} {positions} layer {layer}")
        return rows[0]["refusal_score"], rows[0]["clean_refusal_score"]
    for layer in range(c["layer"], 6):
        ablated, clean = score("select.best", "project", "all", layer)
        check(ablated > 0 and ablated >= clean - 0.5,
              f"r projected out at layer {layer} alone: refusal score {clean:.2f} -> {ablated:.2f} (held)")
    ablated, clean = score("select.best", "directional", "all")
    check(ablated < -2, f"r ablated at every layer: refusal score {clean:.2f} -> {ablated:.2f} (gone)")
    sensors = {layer: score(f"harm@{layer}/inst_last", "project", "inst_last", layer)[0]
               for layer in range(c["layer"])}
    gate = min(sensors, key=sensors.get)
    check(sensors[gate] < 0, f"the harm direction of layer {gate} projected out at t_inst alone: "
          f"refusal score {clean:.2f} -> {sensors[gate]:.2f} (the trigger gone)")
    # The same at the level of SAE latents: each downstream latent alone moves the refusal score
    # less than the upstream sensors together, and some backups that were dormant (activation
    # below 0.1 in the clean run) rise above 1 when a downstream latent is knocked out.
    upstream_group = [r for r in hydra if r["role"] == "upstream" and "[" in r["unit"]][0]
    downstream_singles = [r for r in singles if r["role"] == "downstream"]
    check(all(abs(r["te"]) < abs(upstream_group["te"]) for r in downstream_singles),
          f"every downstream latent alone (TE {min(r['te'] for r in downstream_singles):.2f} to "
          f"{max(r['te'] for r in downstream_singles):.2f}) moves refusal less than the upstream "
          f"sensors together ({upstream_group['te']:.2f})")
    risen = [(r["unit"], b["backup"], round(b["clean"], 3), round(b["ablated"], 2)) for r in downstream_singles
             for b in jsonl(knockout, store, "backups", "demo-hydra", "--stage", "hydra", "--unit", r["unit"], "--top", "5")
             if b["clean"] < 0.1 and b["ablated"] > 1]
    check(len(risen) >= 1, f"dormant backups rise when a downstream latent is knocked out: {risen}")

    # Harmfulness vs refusal directions: per-layer cosine reported.
    cosines = jsonl(knockout, store, "directions", "demo-hydra")
    check(sorted(r["layer"] for r in cosines) == list(range(6)), "per-layer cosine for layers 0-5")

    # The export is a safetensors file any reader can parse: check it by hand.
    path = os.path.join(workdir, "directions.safetensors")
    run([knockout, "directions", "demo-hydra", "--store", store, "--export", path])
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    best = header["select/best"]
    check(best["dtype"] == "F32" and best["shape"] == [256], "select/best exported as F32 [256]")
    begin, end = best["data_offsets"]
    values = struct.unpack(f"<{(end - begin) // 4}f", blob[8 + n + begin:8 + n + end])
    same = header[f"refusal/L{c['layer']}/{c['position']}"]
    b2, e2 = same["data_offsets"]
    check(values == struct.unpack(f"<{(e2 - b2) // 4}f", blob[8 + n + b2:8 + n + e2]),
          "select/best equals the chosen extracted direction")


def all_rows(knockout, store):
    rows = []
    for stage in ["refusal", "harm", "select", "heads", "directions", "neurons", "hydra",
                  "generate", "orthogonalized"]:
        for per_prompt in (False, True):
            args = ["results", "demo-hydra", "--stage", stage] + (["--per-prompt"] if per_prompt else [])
            # The orthogonalised checkpoint lives under the store: compare it by its place there.
            rows += [json.dumps(r, sort_keys=True).replace(store, "STORE")
                     for r in jsonl(knockout, store, *args)]
    return sorted(rows)


def run_until(knockout, spec, store, marker, sig):
    """Starts `knockout run`, sends `sig` once a progress line contains `marker`."""
    proc = subprocess.Popen([knockout, "run", spec, "--store", store, "--no-summary"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
    proc.stdout.read()
    proc.wait()
    return proc.returncode, "".join(seen), proc.stderr.read()


def main():
    global science_failures
    knockout, spec = sys.argv[1], sys.argv[2]
    # Where the report, its screenshot and Chromium's net log are kept (the build tree in ctest).
    report_dir = sys.argv[3] if len(sys.argv) > 3 else None
    with tempfile.TemporaryDirectory(prefix="knockout-demo-") as workdir:
        out = run([knockout, "validate", spec]).stdout
        check("9 stages" in out, "validate counts 9 stages")
        plan = list(csv.DictReader(io.StringIO(run([knockout, "validate", spec, "--format", "csv"]).stdout)))
        check([r["stage"] for r in plan][:3] == ["refusal", "harm", "select"] and len(plan) == 9 and
              plan[3]["kind"] == "knockout_sweep" and int(plan[3]["trials"]) == 48,
              "validate --format csv: one row per stage (heads: 48 trials)")

        clean = os.path.join(workdir, "clean")
        out = run([knockout, "run", spec, "--store", clean]).stdout
        check("== select ==" in out and "compensation" in out, "run prints selection and compensation")
        science_failures = []
        science(knockout, clean, workdir)
        failed, science_failures = science_failures, None
        if failed:
            sys.exit(f"FAIL: {len(failed)} science check(s): " + "; ".join(failed))
        report_check.check_report(knockout, clean, report_dir or os.path.join(workdir, "report"),
                                  check)

        # Killed with SIGKILL in the middle of the extraction, then interrupted with SIGINT while
        # the head sweep is next, then finished: the same rows as the uninterrupted run.
        resumed = os.path.join(workdir, "resumed")
        rc, _, _ = run_until(knockout, spec, resumed, "[2/9 harm] shard 2/4", signal.SIGKILL)
        check(rc == -signal.SIGKILL, "first run killed with SIGKILL")
        status = run([knockout, "status", "demo-hydra", "--store", resumed]).stdout
        check("running" in status, "status reads the killed run's store")
        report_check.check_partial_report(knockout, resumed, report_dir or workdir, check)
        rc, seen, err = run_until(knockout, spec, resumed, "[3/9 select]", signal.SIGINT)
        check("(resumed)" in seen and "[1/9" not in seen, "second run resumes after the committed shards")
        check(rc == 130 and "interrupted" in err, f"SIGINT stops between shards with exit 130 (got {rc})")
        out = run([knockout, "run", spec, "--store", resumed, "--no-summary"]).stdout
        check("(resumed)" in out, "third run resumes")
        check(all_rows(knockout, clean) == all_rows(knockout, resumed),
              "the resumed store holds exactly the rows of the uninterrupted run")

        bad = os.path.join(workdir, "bad.yaml")
        with open(bad, "w") as f:
            f.write(open(spec).read().replace("max_kl: 0.7", "max_kl: [0.7]"))
        proc = run([knockout, "validate", bad], check=False)
        check(proc.returncode != 0 and "bad.yaml:" in proc.stderr and "max_kl" in proc.stderr,
              "a bad spec is a clear error naming file, line and field: " + proc.stderr.strip())
    print("PASS")


if __name__ == "__main__":
    main()
