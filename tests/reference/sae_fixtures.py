#!/usr/bin/env python3
"""Writes sparse-autoencoder files in the three layouts knockout reads, independently of knockout.

Shares no code with knockout: safetensors files are written by hand from the format spec
(8-byte little-endian header length, JSON header padded with spaces to a multiple of 8, raw
little-endian data), .npz/.npy by numpy itself (numpy.savez / savez_compressed / numpy.save /
numpy.lib.format.write_array), cfg.json with json. Needs numpy only; run it with Debian's
/usr/bin/python3.

    sae_fixtures.py CASES_JSON OUT_ROOT
    sae_fixtures.py --check-saelens SAE_DIR EXPECTED_JSON   (exit 1 with a message on a mismatch)

CASES_JSON is a list of cases; each writes OUT_ROOT/<name>/<subdir>/... (the SAE) and
OUT_ROOT/<name>.expected.json: the canonical float32 tensors knockout should read (W_enc
[d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold, b_gate, r_mag, b_mag), each as
{"shape": [...], "values": [...]}, values exactly the float32 numbers stored (JSON doubles).

A case (all keys but name/format optional):
  name       directory name
  format     "saelens" | "sparsify" | "gemma_scope" | "npy" | "npz"
  subdir     path below OUT_ROOT/<name> for the SAE (e.g. "layers.3", "gemma-scope-2b-pt-mlp/
             layer_5/width_16k/average_l0_40"); default ""
  arch       standard | jumprelu | topk | gated (saelens); default standard
  d_in, d_sae, k, seed
  dtype      f32 | f16 | bf16 | f64  (values are drawn so that they are exact in that dtype)
  cfg_set    dict merged into cfg.json; cfg_delete: keys removed from cfg.json
  drop       tensor names (as stored) not written
  reshape    {stored name: shape}: written with this shape instead (random values)
  raw_dtype  {stored name: safetensors dtype}: header dtype overridden (e.g. "I32"), same bytes
  extra      {stored name: {"shape": [...], "fill": x} or {"values": [...]}} extra float32 tensors
  log_threshold  saelens jumprelu: store log_threshold instead of threshold
  finetuning_scale  saelens/gemma_scope: store scaling_factor [d_sae] (folded into W_dec)
  compressed gemma_scope/npz: savez_compressed instead of savez
  lowercase  gemma_scope: store w_enc / w_dec
  arrays     npz/npy: {name: {"values": nested list or "random", "shape", "dtype": numpy dtype,
             "fortran": bool}}; npy writes <name>.npy per array, with "version": [2, 0] etc.
  extra_members  npz: {member name: text} non-.npy members added with zipfile
"""

import json
import os
import struct
import sys
import zipfile

import numpy as np


def draw(rng, shape, dtype):
    """Random float32 values exactly representable in `dtype`."""
    x = rng.standard_normal(size=shape).astype(np.float32)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        bits = x.view(np.uint32) & np.uint32(0xFFFF0000)
        return bits.view(np.float32)
    return x


def encode(values, dtype):
    """(safetensors dtype, raw little-endian bytes) of float32 `values` stored as `dtype`."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "f32":
        return "F32", values.astype("<f4").tobytes()
    if dtype == "f64":
        return "F64", values.astype("<f8").tobytes()
    if dtype == "f16":
        return "F16", values.astype("<f2").tobytes()
    if dtype == "bf16":
        return "BF16", (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors):
    """tensors: list of (name, safetensors dtype, shape, bytes)."""
    header = {}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, data in tensors:
            f.write(data)


def as_list(a):
    return {"shape": list(a.shape), "values": [float(v) for v in np.asarray(a, np.float32).ravel()]}


def sae_case(case, out):
    fmt = case["format"]
    rng = np.random.RandomState(case.get("seed", 0))
    dtype = case.get("dtype", "f32")
    d_in, d_sae = case.get("d_in", 4), case.get("d_sae", 8)
    arch = case.get("arch", "topk" if fmt == "sparsify" else
                    "jumprelu" if fmt == "gemma_scope" else "standard")

    canonical = {
        "W_enc": draw(rng, (d_in, d_sae), dtype),
        "W_dec": draw(rng, (d_sae, d_in), dtype),
        "b_enc": draw(rng, (d_sae,), dtype),
        "b_dec": draw(rng, (d_in,), dtype),
    }
    if arch == "jumprelu":
        canonical["threshold"] = np.abs(draw(rng, (d_sae,), dtype))
    if arch == "gated":
        del canonical["b_enc"]
        for name in ("b_gate", "r_mag", "b_mag"):
            canonical[name] = draw(rng, (d_sae,), dtype)

    # Stored names and layout.
    stored = dict(canonical)
    if fmt == "sparsify":
        stored = {"encoder.weight": np.ascontiguousarray(canonical["W_enc"].T),
                  "encoder.bias": canonical["b_enc"], "W_dec": canonical["W_dec"],
                  "b_dec": canonical["b_dec"]}
    if case.get("log_threshold"):
        log_t = np.log(stored.pop("threshold")).astype(np.float32)
        stored["log_threshold"] = log_t
        canonical["threshold"] = np.exp(log_t).astype(np.float32)
    if case.get("finetuning_scale"):
        scale = np.abs(draw(rng, (d_sae,), dtype)) + np.float32(0.5)
        scale[0] = 1.0
        stored["scaling_factor"] = scale.astype(np.float32)
        canonical["W_dec"] = (canonical["W_dec"] * scale[:, None]).astype(np.float32)
    if fmt == "gemma_scope" and case.get("lowercase"):
        stored = {("w_" + k[2:] if k.startswith("W_") else k): v for k, v in stored.items()}
    for name in case.get("drop", []):
        stored.pop(name, None)
    for name, shape in case.get("reshape", {}).items():
        stored[name] = draw(rng, tuple(shape), dtype)
    for name, spec in case.get("extra", {}).items():
        if "values" in spec:
            stored[name] = np.asarray(spec["values"], np.float32).reshape(spec.get("shape", [-1]))
        else:
            stored[name] = np.full(spec["shape"], spec["fill"], np.float32)

    sae_dir = os.path.join(out, case.get("subdir", ""))
    os.makedirs(sae_dir, exist_ok=True)
    if fmt in ("saelens", "sparsify"):
        tensors = []
        for name, value in stored.items():
            st_dtype, data = encode(value, dtype if name in canonical or fmt == "sparsify"
                                    else "f32")
            st_dtype = case.get("raw_dtype", {}).get(name, st_dtype)
            tensors.append((name, st_dtype, value.shape, data))
        weights = "sae_weights.safetensors" if fmt == "saelens" else "sae.safetensors"
        write_safetensors(os.path.join(sae_dir, weights), tensors)
        if fmt == "saelens":
            cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
                   "apply_b_dec_to_input": True, "normalize_activations": "none",
                   "metadata": {"hook_name": "blocks.1.hook_resid_post",
                                "sae_lens_version": "6.5.0"}}
            if arch == "topk":
                cfg["k"] = case.get("k", 3)
        else:
            cfg = {"expansion_factor": d_sae // d_in, "normalize_decoder": True,
                   "num_latents": 0, "k": case.get("k", 3), "multi_topk": False,
                   "skip_connection": False, "d_in": d_in}
        cfg.update(case.get("cfg_set", {}))
        for key in case.get("cfg_delete", []):
            cfg.pop(key, None)
        with open(os.path.join(sae_dir, "cfg.json"), "w") as f:
            json.dump(cfg, f)
    else:  # gemma_scope
        arrays = {k: v.astype({"f32": np.float32, "f16": np.float16, "f64": np.float64}[dtype])
                  for k, v in stored.items()}
        save = np.savez_compressed if case.get("compressed") else np.savez
        save(os.path.join(sae_dir, "params.npz"), **arrays)
    return {k: as_list(v) for k, v in canonical.items()}


def make_array(spec, rng):
    dtype = np.dtype(spec.get("dtype", "<f4"))
    if spec.get("values", "random") == "random":
        a = rng.standard_normal(size=tuple(spec["shape"])).astype(dtype)
    else:
        a = np.asarray(spec["values"], dtype=dtype)
        if "shape" in spec:
            a = a.reshape(tuple(spec["shape"]))
    if spec.get("fortran"):
        a = np.asfortranarray(a)
    return a


def expected_of(a):
    if a.dtype.kind == "f":
        return as_list(np.array(a, dtype=np.float32, order="C"))  # keeps 0-d arrays 0-d
    return {"shape": list(a.shape), "values": []}


def array_case(case, out):
    rng = np.random.RandomState(case.get("seed", 0))
    os.makedirs(out, exist_ok=True)
    arrays = {name: make_array(spec, rng) for name, spec in case["arrays"].items()}
    if case["format"] == "npy":
        for name, a in arrays.items():
            version = case["arrays"][name].get("version")
            with open(os.path.join(out, name + ".npy"), "wb") as f:
                if version:
                    np.lib.format.write_array(f, a, version=tuple(version))
                else:
                    np.save(f, a)
    else:
        path = os.path.join(out, "arrays.npz")
        (np.savez_compressed if case.get("compressed") else np.savez)(path, **arrays)
        if case.get("extra_members"):
            with zipfile.ZipFile(path, "a") as z:
                for member, text in case["extra_members"].items():
                    z.writestr(member, text)
    return {name: expected_of(a) for name, a in arrays.items()}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", (name, info["dtype"])
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(blob[8 + n + begin:8 + n + end], "<f4").reshape(info["shape"])
    return out


def check_saelens(sae_dir, expected_path):
    """What knockout's writer produced, read back by hand: tensors bit for bit, cfg.json fields."""
    with open(expected_path) as f:
        expected = json.load(f)
    with open(os.path.join(sae_dir, "cfg.json")) as f:
        cfg = json.load(f)
    tensors = read_safetensors(os.path.join(sae_dir, "sae_weights.safetensors"))
    problems = []
    for name, want in expected["tensors"].items():
        got = tensors.get(name)
        if got is None:
            problems.append("missing " + name)
        elif list(got.shape) != want["shape"] or got.ravel().tolist() != want["values"]:
            problems.append("tensor %s differs" % name)
    extra = set(tensors) - set(expected["tensors"])
    if extra:
        problems.append("unexpected tensors %s" % sorted(extra))
    for key, want in expected["cfg"].items():
        got = cfg
        for part in key.split("."):
            got = got.get(part) if isinstance(got, dict) else None
        if got != want:
            problems.append("cfg %s: %r != %r" % (key, got, want))
    if problems:
        print("\n".join(problems))
        sys.exit(1)


def main():
    if sys.argv[1] == "--check-saelens":
        check_saelens(sys.argv[2], sys.argv[3])
        return
    cases_path, root = sys.argv[1], sys.argv[2]
    with open(cases_path) as f:
        cases = json.load(f)
    for case in cases:
        out = os.path.join(root, case["name"])
        if case["format"] in ("npy", "npz"):
            expected = array_case(case, out)
        else:
            expected = sae_case(case, out)
        with open(os.path.join(root, case["name"] + ".expected.json"), "w") as f:
            json.dump(expected, f)


if __name__ == "__main__":
    main()
