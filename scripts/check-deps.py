#!/usr/bin/env python3
"""Checks the #include graph against design.md's dependency rule.

    formats, tokenizer, proto <- storage <- experiments <- coordinator, cli
    worker/model depends on LibTorch and formats only; worker/sae on those and worker/model
    worker depends on proto, rpc, formats, tokenizer and worker/model
    organism depends on worker (and on experiments' torch-free selection rule)
    nothing torch-free includes worker/ (but its tokenizer), organism/ or LibTorch headers

Every quoted include ("folder/file.h") is attributed to the layer of the folder it names; the
generated contracts ("knockout/v1/...") belong to proto; <torch/...>, <ATen/...> and <c10/...>
are LibTorch. A file may include only the layers its own layer lists in ALLOWED. Tests
(*_test.cc) may reach further (a worker test may build shards with the engine) but a test in a
torch-free layer still may not include LibTorch or worker/. tests/ and bench/ are not checked.

Usage: scripts/check-deps.py [--root DIR]. Prints each violation as `file:line: ...` and exits
1 if there is any, 0 otherwise. Standard library only.
"""

import argparse
import os
import re
import sys

# Folder prefix -> layer. The longest prefix wins. worker/tokenizer is the tokenizer's old home
# (it moves to tokenizer/); both are the same torch-free layer.
LAYER_OF_FOLDER = {
    "common": "common",
    "formats": "formats",
    "tokenizer": "tokenizer",
    "worker/tokenizer": "tokenizer",
    "proto": "proto",
    "knockout/v1": "proto",  # generated code, included as "knockout/v1/x.pb.h"
    "rpc": "rpc",
    "storage": "storage",
    "experiments": "experiments",
    "coordinator": "coordinator",
    "cli": "cli",
    "worker/model": "worker/model",
    "worker/chat": "worker/chat",
    "worker/sae": "worker/sae",
    "worker/executor": "worker/executor",
    "worker/agent": "worker/agent",
    "worker": "worker",
    "organism": "organism",
}

TORCH = "LibTorch"
TORCH_FREE = {"common", "formats", "tokenizer", "proto", "rpc", "storage", "experiments",
              "coordinator", "cli"}
WORKER = {"worker/model", "worker/sae", "worker/chat", "worker/executor", "worker/agent", "worker"}

# Which layers a layer's files may include (its own included).
_BASE = {"common", "formats", "tokenizer"}
ALLOWED = {
    "common": {"common"},
    "formats": {"common", "formats"},
    "tokenizer": {"common", "formats", "tokenizer"},
    # formats is the bottom layer anyone may use (design.md); proto converts Positions to it.
    "proto": {"common", "formats", "proto"},
    "rpc": {"common", "formats", "proto", "rpc"},
    "storage": _BASE | {"proto", "storage"},
    "experiments": _BASE | {"proto", "storage", "experiments"},
    "coordinator": _BASE | {"proto", "rpc", "storage", "experiments", "coordinator"},
    "cli": _BASE | {"proto", "rpc", "storage", "experiments", "coordinator", "cli"},
    "worker/model": {"common", "formats", "worker/model", TORCH},
    # The SAE runtime: SAE files (formats) on the model runtime's hook points.
    "worker/sae": {"common", "formats", "worker/model", "worker/sae", TORCH},
    "worker/chat": _BASE | {"worker/model", "worker/chat", TORCH},
    "worker/executor": _BASE | {"proto", "worker/model", "worker/sae", "worker/chat",
                                "worker/executor", TORCH},
    "worker/agent": _BASE | {"proto", "rpc", "worker/executor", "worker/agent", TORCH},
    "worker": _BASE | {"proto", "rpc", TORCH} | WORKER,
    "organism": _BASE | {"proto", "experiments", "organism", TORCH} | WORKER,
}

# Known violations that another change removes, (file, included path) -> why. Listed ones are
# reported as notes, not failures; one that no longer occurs is reported so it can be dropped.
KNOWN = {}

SKIP_DIRS = {"build", "tests", "bench", "scripts", "docs", "models", "deploy", "cmake",
             "node_modules", ".git"}
SOURCE_EXT = (".h", ".hpp", ".cc", ".cpp")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')
TORCH_RE = re.compile(r"^(torch|ATen|c10)/")


def layer_of(path):
    """The layer of a repository-relative path (a file or an included path), or None."""
    best = None
    for folder, layer in LAYER_OF_FOLDER.items():
        if path == folder or path.startswith(folder + "/"):
            if best is None or len(folder) > len(best[0]):
                best = (folder, layer)
    return best[1] if best else None


def source_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and
                                 not d.startswith("build"))
        else:
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(SOURCE_EXT):
                rel = os.path.normpath(os.path.join(rel_dir, name))
                yield rel.replace(os.sep, "/")


def check(root):
    """Returns (violations, notes): lists of `file:line: message` strings."""
    violations, notes = [], []
    seen_known = set()
    for rel in source_files(root):
        layer = layer_of(rel)
        if layer is None:
            continue
        is_test = rel.endswith("_test.cc")
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                quoted, target = m.group(1) == '"', m.group(2)
                if quoted:
                    target_layer = layer_of(target)
                elif TORCH_RE.match(target):
                    target_layer = TORCH
                else:
                    target_layer = None  # the standard library and other third-party headers
                if target_layer is None or target_layer == layer:
                    continue
                where = "%s:%d" % (rel, number)
                if (rel, target) in KNOWN:
                    seen_known.add((rel, target))
                    notes.append("%s: known: %s includes %s (%s)" %
                                 (where, layer, target, KNOWN[(rel, target)]))
                    continue
                if layer in TORCH_FREE and (target_layer == TORCH or target_layer in WORKER or
                                            target_layer == "organism"):
                    violations.append("%s: %s is torch-free and must not include %s (%s)" %
                                      (where, layer, target, target_layer))
                elif not is_test and target_layer not in ALLOWED[layer]:
                    violations.append("%s: %s may not depend on %s (includes %s); design.md's "
                                      "rule allows %s" %
                                      (where, layer, target_layer, target,
                                       ", ".join(sorted(ALLOWED[layer]))))
    for key in sorted(set(KNOWN) - seen_known):
        notes.append("%s: the known exception for %s no longer occurs: drop it from KNOWN" % key)
    return violations, notes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--root", default=default_root, help="repository root")
    args = parser.parse_args()
    violations, notes = check(args.root)
    for n in notes:
        print("note: " + n)
    for v in violations:
        print(v)
    if violations:
        print("check-deps: %d forbidden include(s)" % len(violations), file=sys.stderr)
        return 1
    print("check-deps: the include graph follows design.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
