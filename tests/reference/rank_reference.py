#!/usr/bin/python3
"""Independent reference for the worker's RANK shards (worker/executor/rank.cc): the MLP neurons
of each layer of a checkpoint ranked by |cos(W_down[:, n], r)| against a fixed direction
r_i = sin(i + 1), computed in float64 with NumPy from the checkpoint bytes (hf_reference.py's
hand-written safetensors reader; no knockout code). Prints, per layer, the top K neurons in index
order with their cosines: the expected values in worker/executor/rank_test.cc come from

    /usr/bin/python3 tests/reference/rank_reference.py models/demo-refusal 4

Usage: rank_reference.py MODEL_DIR K
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_reference import load_checkpoint  # noqa: E402


def main():
    model, k = sys.argv[1], int(sys.argv[2])
    cfg = json.load(open(os.path.join(model, "config.json")))
    weights = load_checkpoint(model)
    d = cfg["hidden_size"]
    # float32, as a shard carries it (TensorData), then widened
    r = np.sin(np.arange(d, dtype=np.float64) + 1.0).astype(np.float32).astype(np.float64)
    for layer in range(cfg["num_hidden_layers"]):
        w = weights["model.layers.%d.mlp.down_proj.weight" % layer].double().numpy()  # [d, n]
        cos = np.abs(r @ w) / np.sqrt((w * w).sum(0) * (r @ r))
        order = sorted(sorted(range(w.shape[1]), key=lambda n: (-cos[n], n))[:k])
        print("layer %d: units %s cosines %s" % (layer, order, ["%.12f" % cos[n] for n in order]))


if __name__ == "__main__":
    main()
