#!/usr/bin/python3
"""`knockout-worker train-sae` end to end on the shipped demo model (a short run):

  - it writes a SAELens directory (cfg.json + sae_weights.safetensors, float32) whose cfg.json
    carries the hook, the architecture and the recipe (command line, seed, steps, metrics) in
    metadata.training, and prints one JSON report on stdout;
  - the tensors, read here by hand from the safetensors spec, have the SAELens shapes, and the
    report's metrics are present and in range (their values are checked against references by
    worker/sae/train_test.cc and the shipped SAEs' test);
  - the same command twice gives byte-identical files, also written elsewhere (the recorded
    command leaves out --out); --overwrite replaces a directory, and without it an existing
    --out is refused;
  - bad input (a missing prompt file, an unknown hook, k above the width, an eval file that
    cannot be read) exits 1 with one line naming the flag or file, and leaves no --out behind.

Usage: test_train_sae_cli.py KNOCKOUT_WORKER MODEL_DIR PROMPTS_DIR
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

WORKER, MODEL, PROMPTS = sys.argv[1], sys.argv[2], sys.argv[3]
failures = []


def check(name, condition, detail=""):
    print(("PASS " if condition else "FAIL ") + name + ("" if condition else ": " + str(detail)),
          flush=True)
    if not condition:
        failures.append(name)


def train(out, *extra):
    args = [WORKER, "train-sae", "--model", MODEL, "--hook", "blocks.2.hook_resid_post",
            "--prompts", os.path.join(PROMPTS, "harmless_train.jsonl"),
            os.path.join(PROMPTS, "harmful_train.jsonl"),
            "--out", out, "--latents", "256", "--k", "8", "--steps", "60",
            "--batch-tokens", "256", "--lr", "0.003", "--seed", "3", "--log-every", "30",
            *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "sae")
    eval_file = os.path.join(PROMPTS, "harmless_val.jsonl")
    r = train(out, "--eval-prompts", eval_file, "--new-tokens", "8")
    check("train-sae exits 0", r.returncode == 0, r.stderr[-2000:])
    files = sorted(os.listdir(out)) if os.path.isdir(out) else []
    check("SAELens files", files == ["cfg.json", "sae_weights.safetensors"], files)
    check("no temporary directory left", sorted(os.listdir(tmp)) == ["sae"], os.listdir(tmp))
    cfg = json.load(open(os.path.join(out, "cfg.json")))
    check("cfg architecture/k/d_in/d_sae",
          (cfg.get("architecture"), cfg.get("k"), cfg.get("d_in"), cfg.get("d_sae")) ==
          ("topk", 8, 256, 256), cfg)
    check("cfg hook", cfg.get("metadata", {}).get("hook_name") == "blocks.2.hook_resid_post", cfg)
    recipe = cfg.get("metadata", {}).get("training", {})
    check("recipe: command line", recipe.get("command", "").startswith(
        "knockout-worker train-sae --model "), recipe.get("command"))
    check("recipe: seed, steps", (recipe.get("seed"), recipe.get("steps")) == (3, 60), recipe)
    check("recipe: held out every 10th prompt",
          recipe.get("holdout_every") == 10 and recipe.get("held_out_prompts") == 51, recipe)
    metrics = recipe.get("metrics", {})
    held = metrics.get("held_out", {})
    check("held-out FVU in (0, 1)", 0 < held.get("fvu", -1) < 1, held)
    check("held-out L0 <= k", 0 < held.get("l0", -1) <= 8, held)
    ev = metrics.get("eval", {}).get(eval_file, {})
    check("eval set reported apart", ev.get("prompts") == 64, metrics.get("eval"))
    check("response KL measured", ev.get("response", {}).get("tokens", 0) > 0 and
          ev["response"]["kl"] >= 0, ev)
    check("dead fraction over all sets", 0 <= metrics.get("dead_fraction_all", -1) <= 1, metrics)
    header = safetensors_header(os.path.join(out, "sae_weights.safetensors"))
    shapes = {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}
    check("tensors", shapes == {"W_enc": ("F32", [256, 256]), "W_dec": ("F32", [256, 256]),
                                "b_enc": ("F32", [256]), "b_dec": ("F32", [256])}, shapes)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    report = json.loads(lines[-1]) if lines else {}
    check("one JSON report on stdout", len(lines) == 1 and report.get("out") == out, r.stdout)
    check("report has throughput", report.get("rows_per_second", 0) > 0, report)
    check("human summary on stderr", "held out" in r.stderr and "FVU" in r.stderr, r.stderr)

    check("recipe: the command leaves out where it was written",
          "--out" not in recipe.get("command", "") and "--log-every" not in recipe["command"],
          recipe.get("command"))

    # Determinism: the same command into another directory, and again over the first one
    # (--overwrite), gives byte-identical files.
    before = {f: sha256(os.path.join(out, f)) for f in files}
    copy = os.path.join(tmp, "copy")
    r2 = train(copy, "--eval-prompts", eval_file, "--new-tokens", "8")
    check("rerun elsewhere exits 0", r2.returncode == 0, r2.stderr[-2000:])
    check("rerun elsewhere is byte-identical",
          {f: sha256(os.path.join(copy, f)) for f in files} == before)
    r2 = train(out, "--eval-prompts", eval_file, "--new-tokens", "8", "--overwrite")
    check("rerun with --overwrite exits 0", r2.returncode == 0, r2.stderr[-2000:])
    after = {f: sha256(os.path.join(out, f)) for f in files}
    check("rerun with --overwrite is byte-identical", before == after, (before, after))
    check("no old directory left", sorted(os.listdir(tmp)) == ["copy", "sae"], os.listdir(tmp))

    # An existing --out without --overwrite is refused, and left as it was.
    r3 = train(out)
    check("existing --out refused", r3.returncode == 1 and "--out" in r3.stderr and
          "--overwrite" in r3.stderr, r3.stderr)
    check("existing --out untouched", {f: sha256(os.path.join(out, f)) for f in files} == after)

    # Bad input: one line naming the flag or file, exit 1, nothing written.
    bad_out = os.path.join(tmp, "bad")
    cases = [
        ("missing prompt file", ["--prompts", os.path.join(tmp, "nope.jsonl")], "nope.jsonl"),
        ("unknown hook", ["--hook", "blocks.9.hook_resid_post"], "--hook"),
        ("hook an SAE cannot read", ["--hook", "hook_embed"], "--hook"),
        ("k above the width", ["--k", "300"], "--k"),
        ("buffer below a batch", ["--buffer-tokens", "100"], "--buffer-tokens"),
    ]
    bad_eval = os.path.join(tmp, "bad.jsonl")
    with open(bad_eval, "w") as f:
        f.write('{"instruction": "fine"}\n{"prompt": "no instruction field"}\n')
    cases.append(("unreadable eval file", ["--eval-prompts", bad_eval], "bad.jsonl:2"))
    for name, extra, needle in cases:
        flags = {"--model": [MODEL], "--hook": ["blocks.2.hook_resid_post"],
                 "--prompts": [os.path.join(PROMPTS, "harmless_train.jsonl")], "--out": [bad_out],
                 "--latents": ["256"], "--k": ["8"], "--steps": ["5"], "--batch-tokens": ["128"]}
        flags[extra[0]] = extra[1:]
        args = [WORKER, "train-sae"]
        for flag, values in flags.items():
            args += [flag, *values]
        rb = subprocess.run(args, capture_output=True, text=True, timeout=300)
        err = rb.stderr.strip().splitlines()
        check(name + ": exit 1", rb.returncode == 1, (rb.returncode, rb.stderr[-500:]))
        check(name + ": one line naming it",
              len(err) >= 1 and err[-1].startswith("knockout-worker: ") and needle in err[-1],
              rb.stderr[-500:])
        check(name + ": nothing written", not os.path.exists(bad_out) and
              sorted(os.listdir(tmp)) == ["bad.jsonl", "copy", "sae"], os.listdir(tmp))

print("%d failure(s)" % len(failures))
sys.exit(1 if failures else 0)
