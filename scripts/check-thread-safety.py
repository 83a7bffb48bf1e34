#!/usr/bin/env python3
"""Runs clang's thread-safety analysis over the translation units that use Abseil's lock
annotations (ABSL_GUARDED_BY, ABSL_EXCLUSIVE_LOCKS_REQUIRED, ...), which GCC ignores.

A translation unit of compile_commands.json is checked when it, or a project header it includes
directly, mentions an ABSL_ annotation or absl::Mutex: a newly annotated file is checked without
editing this script. Each one is compiled with `clang++ -fsyntax-only -Wthread-safety
-Werror=thread-safety` and the -I/-isystem/-D/-std flags of its build entry.

So that the check cannot pass by checking nothing, it first compiles the self-test fixture
(tests/thread_safety/violation.cc, a guarded member read without its lock) and requires clang to
reject it with a thread-safety error on the fixture's marked line; it also fails if no
translation unit was found.

Usage: scripts/check-thread-safety.py --build BUILD_DIR [--root DIR] [--clang CLANGXX]
Exits 1 on a violation (printed as clang prints it), 2 on a broken set-up. Standard library only.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys

# What marks an annotated file.
ANNOTATED = re.compile(r"\bABSL_(GUARDED_BY|PT_GUARDED_BY|EXCLUSIVE_LOCKS_REQUIRED|"
                       r"SHARED_LOCKS_REQUIRED|LOCKS_EXCLUDED|ACQUIRED_BEFORE|ACQUIRED_AFTER|"
                       r"NO_THREAD_SAFETY_ANALYSIS)\b|\babsl::Mutex\b")
QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
ANALYSIS_FLAGS = ["-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety",
                  "-Wno-unknown-warning-option"]
FIXTURE = os.path.join("tests", "thread_safety", "violation.cc")
FIXTURE_MARK = "VIOLATION"  # the fixture's line that clang must name


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def is_annotated(source, root):
    text = read(source)
    if ANNOTATED.search(text):
        return True
    for include in QUOTED_INCLUDE.findall(text):
        if ANNOTATED.search(read(os.path.join(root, include))):
            return True
    return False


def flags_of(entry):
    """The include, define and standard flags of one compile_commands.json entry."""
    args = entry.get("arguments") or shlex.split(entry["command"])
    kept = []
    i = 1  # args[0] is the compiler
    while i < len(args):
        arg = args[i]
        if arg in ("-I", "-isystem", "-iquote", "-D", "-U", "-include") and i + 1 < len(args):
            kept += [arg, args[i + 1]]
            i += 2
            continue
        if arg.startswith(("-I", "-isystem", "-iquote", "-D", "-U", "-std=")) or arg == "-pthread":
            kept.append(arg)
        i += 1
    return kept


def run_clang(clang, flags, source, directory):
    cmd = [clang] + ANALYSIS_FLAGS + flags + [source]
    done = subprocess.run(cmd, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    return done.returncode, done.stdout


def self_test(clang, root, flags, directory):
    """The fixture must be rejected for its marked line; returns an error message or None."""
    fixture = os.path.join(root, FIXTURE)
    lines = read(fixture).splitlines()
    marked = [n + 1 for n, line in enumerate(lines) if FIXTURE_MARK in line and "//" in line]
    if not marked:
        return f"{fixture}: missing or has no line marked // {FIXTURE_MARK}"
    rc, out = run_clang(clang, flags, fixture, directory)
    expected = [f"violation.cc:{n}:" for n in marked]
    if rc == 0 or "-Werror,-Wthread-safety" not in out or not all(e in out for e in expected):
        return (f"self-test: clang did not reject {fixture} at line(s) {marked} with a "
                f"thread-safety error (exit {rc}); the check would not catch a violation:\n{out}")
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", required=True, help="build dir with compile_commands.json")
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    parser.add_argument("--clang", default="clang++")
    args = parser.parse_args()
    root = os.path.abspath(args.root)

    db_path = os.path.join(args.build, "compile_commands.json")
    try:
        with open(db_path) as f:
            entries = json.load(f)
    except (OSError, ValueError) as error:
        print(f"check-thread-safety: cannot read {db_path}: {error}", file=sys.stderr)
        return 2
    try:
        subprocess.run([args.clang, "--version"], stdout=subprocess.DEVNULL, check=True)
    except (OSError, subprocess.CalledProcessError):
        print(f"check-thread-safety: {args.clang} not found (scripts/setup.sh installs clang)",
              file=sys.stderr)
        return 2

    units = {}  # source -> entry; a file built into two targets is checked once
    for entry in entries:
        source = os.path.normpath(os.path.join(entry["directory"], entry["file"]))
        if not source.startswith(root + os.sep) or source in units:
            continue
        if is_annotated(source, root):
            units[source] = entry
    if not units:
        print(f"check-thread-safety: no annotated translation unit in {db_path}", file=sys.stderr)
        return 2

    first = next(iter(units.values()))
    problem = self_test(args.clang, root, flags_of(first), first["directory"])
    if problem:
        print(problem, file=sys.stderr)
        return 2

    failed = 0
    workers = max(1, min(4, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        jobs = {source: pool.submit(run_clang, args.clang, flags_of(entry), source,
                                    entry["directory"])
                for source, entry in sorted(units.items())}
        for source, job in jobs.items():
            rc, out = job.result()
            name = os.path.relpath(source, root)
            if rc != 0:
                failed += 1
                print(f"FAIL {name}\n{out}")
            else:
                print(f"ok   {name}")
    print(f"check-thread-safety: {len(units)} translation units, {failed} failed; self-test "
          f"fixture rejected as it must be")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
