#!/usr/bin/env python3
"""Tests scripts/check-deps.py on tiny fake trees written here: a tree that follows design.md's
rule passes, and each kind of forbidden include (worker/model on experiments, the coordinator or
the CLI on worker/ or LibTorch, the worker on experiments/, a torch-free layer on organism/)
makes it fail naming the file and line. The expected verdicts come from design.md's rule, not
from the script. Standard library only: python3 scripts/check_deps_test.py."""

import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check-deps.py")

CLEAN_TREE = {
    "common/status.h": "#pragma once\n#include <string>\n",
    "formats/config.h": '#include "common/status.h"\n',
    "tokenizer/tokenizer.h": '#include "common/status.h"\n#include "formats/config.h"\n',
    "worker/tokenizer/bpe.h": '#include "common/status.h"\n',
    "proto/protocol.h": '#include "knockout/v1/common.pb.h"\n',
    "storage/store.h": '#include "common/status.h"\n',
    "experiments/engine.h": '#include "storage/store.h"\n#include "knockout/v1/sweep.pb.h"\n',
    "coordinator/scheduler.cc": '#include "experiments/engine.h"\n#include "formats/config.h"\n',
    "cli/main.cc": '#include "coordinator/scheduler.h"\n#include "tokenizer/tokenizer.h"\n',
    "worker/model/model.h": '#include <ATen/ATen.h>\n#include "formats/config.h"\n',
    "worker/executor/executor.cc": ('#include <torch/torch.h>\n#include "worker/model/model.h"\n'
                                    '#include "worker/tokenizer/bpe.h"\n'
                                    '#include "tokenizer/tokenizer.h"\n'),
    "worker/main.cc": '#include "worker/executor/executor.h"\n#include "rpc/channel.h"\n',
    "organism/trainer.cc": '#include "worker/model/model.h"\n#include "experiments/engine.h"\n',
    # tests and benchmarks are not checked
    "tests/testing/reference.h": '#include "organism/trainer.h"\n',
    "bench/bench.cc": '#include "worker/model/model.h"\n',
}


def run(tree):
    with tempfile.TemporaryDirectory() as root:
        for path, text in tree.items():
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)
        proc = subprocess.run([sys.executable, SCRIPT, "--root", root],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
        return proc.returncode, proc.stdout


class CheckDepsTest(unittest.TestCase):
    def test_clean_tree_passes(self):
        code, out = run(CLEAN_TREE)
        self.assertEqual(code, 0, out)

    def assert_fails(self, path, text, line=1):
        tree = dict(CLEAN_TREE)
        tree[path] = tree.get(path, "") + text if path in tree else text
        if path in CLEAN_TREE:
            line = CLEAN_TREE[path].count("\n") + 1
        code, out = run(tree)
        self.assertEqual(code, 1, out)
        self.assertIn("%s:%d:" % (path, line), out)

    def test_worker_model_on_experiments(self):
        self.assert_fails("worker/model/model.h", '#include "experiments/engine.h"\n')

    def test_worker_model_on_tokenizer(self):
        # worker/model depends on LibTorch and formats only.
        self.assert_fails("worker/model/model.h", '#include "tokenizer/tokenizer.h"\n')

    def test_coordinator_on_worker_model(self):
        self.assert_fails("coordinator/scheduler.cc", '#include "worker/model/model.h"\n')

    def test_cli_on_libtorch(self):
        self.assert_fails("cli/main.cc", "#include <torch/torch.h>\n")

    def test_formats_on_aten(self):
        self.assert_fails("formats/config.h", "#include <ATen/ATen.h>\n")

    def test_worker_on_experiments(self):
        self.assert_fails("worker/executor/executor.cc", '#include "experiments/engine.h"\n')

    def test_worker_on_organism(self):
        # organism depends on worker, never the other way.
        self.assert_fails("worker/main.cc", '#include "organism/trainer.h"\n')

    def test_experiments_on_organism(self):
        self.assert_fails("experiments/engine.h", '#include "organism/trainer.h"\n')

    def test_torch_free_test_on_worker(self):
        # Tests may reach further, but a torch-free layer's test still links no LibTorch.
        self.assert_fails("cli/queries_test.cc", '#include "worker/executor/executor.h"\n')

    def test_storage_on_experiments(self):
        # storage sits below experiments.
        self.assert_fails("storage/store.h", '#include "experiments/engine.h"\n')


if __name__ == "__main__":
    unittest.main()
