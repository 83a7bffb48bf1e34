#!/usr/bin/env python3
"""End-to-end checks of the knockout-worker tools against the independent reference.

Usage: test_worker_cli.py WORKER_BINARY REFERENCE_DIR
Runs `forward` and `models inspect` on a reference checkpoint written by
tests/reference/hf_reference.py and compares with the logits that script computed; checks that
bad input gives a clear one-line error and a non-zero exit. Prints 'N passed, N failed'.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import torch

WORKER, REFERENCE = sys.argv[1], sys.argv[2]
results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    results["passed" if condition else "failed"] += 1
    print(("PASS " if condition else "FAIL ") + name + ("" if condition else ": " + detail))


def read_safetensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    dtypes = {"F32": torch.float32, "I64": torch.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(data[8 + n + begin:8 + n + end])
        out[name] = torch.frombuffer(raw, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def run(*args):
    return subprocess.run([WORKER, *args], capture_output=True, text=True, timeout=120)


def test_forward_matches_reference(variant):
    ckpt = os.path.join(REFERENCE, variant)
    ref = read_safetensors(os.path.join(ckpt, "reference.safetensors"))
    args = ["forward", "--model", ckpt, "--json", "--full-logits", "--threads", "1"]
    sequences = []
    for row, mask in zip(ref["input_ids"], ref["attention_mask"]):
        ids = row[mask.bool()].tolist()
        sequences.append(ids)
        args += ["--ids", ",".join(map(str, ids))]
    proc = run(*args)
    check(f"{variant}: forward exits 0", proc.returncode == 0, proc.stderr)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    check(f"{variant}: one JSON line per --ids", len(lines) == len(sequences), proc.stdout[:200])
    for i, line in enumerate(lines):
        ours = torch.tensor(line["logits"])
        theirs = ref["logits"][i, -1]  # left padding: the last column is every row's last token
        diff = (ours - theirs).abs().max().item()
        check(f"{variant}: sequence {i} last-position logits within 1e-4", diff <= 1e-4, str(diff))
        check(f"{variant}: sequence {i} ids echoed", line["ids"] == sequences[i])
    proc = run("forward", "--model", ckpt, "--ids", ",".join(map(str, sequences[0])), "--json",
               "--top-k", "3")
    top = json.loads(proc.stdout)["logits"]
    expected = ref["logits"][0, -1].topk(3).indices.tolist()
    check(f"{variant}: top-k tokens", [e["token"] for e in top] == expected, str(top))


def test_inspect():
    ckpt = os.path.join(REFERENCE, "qwen2-bf16")
    proc = run("models", "inspect", ckpt, "--json")
    check("inspect exits 0", proc.returncode == 0, proc.stderr)
    info = json.loads(proc.stdout)
    check("inspect architecture", info["architecture"] == "Qwen2ForCausalLM", str(info))
    check("inspect sizes", (info["num_layers"], info["num_heads"], info["num_kv_heads"]) == (3, 4, 2))
    check("inspect dtypes", list(info["parameters_by_dtype"]) == ["BF16"], str(info))
    check("inspect hook points", info["hook_points"][0] == "hook_embed" and
          "blocks.2.attn.hook_z" in info["hook_points"] and len(info["hook_points"]) == 1 + 3 * 7 + 2)
    proc = run("models", "inspect", ckpt)
    check("inspect text", proc.returncode == 0 and "Qwen2ForCausalLM" in proc.stdout, proc.stdout)


def test_bad_input():
    ckpt = os.path.join(REFERENCE, "llama_gqa-f32")
    cases = [
        (["forward", "--model", "/nonexistent/model", "--ids", "1,2"], "/nonexistent/model/config.json"),
        (["forward", "--model", ckpt, "--ids", "1,x"], "\"x\" is not an integer token id"),
        (["forward", "--model", ckpt, "--ids", "1,100000"], "token id 100000 outside the vocabulary"),
        (["forward", "--model", ckpt, "--ids", "1", "--device", "cuda:0"], "cuda"),
        (["forward", "--model", ckpt, "--ids", "1", "--dtype", "int4"], "unknown dtype \"int4\""),
        (["models", "inspect", "/nonexistent/model"], "/nonexistent/model/config.json"),
    ]
    for args, fragment in cases:
        proc = run(*args)
        ok = proc.returncode != 0 and fragment in proc.stderr and "Traceback" not in proc.stderr
        check("bad input: " + " ".join(args[:1] + args[-2:]), ok, proc.stderr.strip())
    tmp = tempfile.mkdtemp()
    try:
        shutil.copytree(ckpt, os.path.join(tmp, "m"))
        path = os.path.join(tmp, "m", "model.safetensors")
        os.truncate(path, os.path.getsize(path) // 2)
        proc = run("forward", "--model", os.path.join(tmp, "m"), "--ids", "1,2")
        check("truncated checkpoint: clear error", proc.returncode != 0 and path in proc.stderr,
              proc.stderr)
    finally:
        shutil.rmtree(tmp)


def test_init_random_round_trip():
    tmp = tempfile.mkdtemp()
    try:
        out = os.path.join(tmp, "random")
        proc = run("models", "init-random", "--out", out, "--layers", "2", "--hidden", "32",
                   "--heads", "4", "--kv-heads", "2", "--intermediate", "48", "--vocab", "50",
                   "--tied", "--dtype", "bf16")
        check("init-random exits 0", proc.returncode == 0, proc.stderr)
        config = json.load(open(os.path.join(out, "config.json")))
        check("init-random config", config["tie_word_embeddings"] and config["torch_dtype"] == "bfloat16",
              str(config))
        proc = run("forward", "--model", out, "--ids", "1,2,3", "--json", "--top-k", "2")
        check("init-random checkpoint loads", proc.returncode == 0, proc.stderr)
    finally:
        shutil.rmtree(tmp)


for variant in ["llama_gqa-f32", "llama3_rope-f32", "qwen2-f32", "mistral-f32", "llama_tied-bf16"]:
    test_forward_matches_reference(variant)
test_inspect()
test_bad_input()
test_init_random_round_trip()
print(f"{results['passed']} passed, {results['failed']} failed")
sys.exit(1 if results["failed"] else 0)
