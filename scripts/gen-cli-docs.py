#!/usr/bin/env python3
"""Writes docs/cli.md from the binaries' own --help: every command and flag, as the build that
runs it knows them. ctest `docs_cli_current` runs it with --check, so a flag added without
regenerating the page fails the tests.

Usage: scripts/gen-cli-docs.py BUILD_DIR [--check]   (writes docs/cli.md; --check only compares)
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIES = [("knockout", "cli/knockout"), ("knockout-coordinator", "coordinator/knockout-coordinator"),
            ("knockout-worker", "worker/knockout-worker"), ("knockout-organism", "organism/knockout-organism")]
INTRO = {
    "knockout": "The command researchers use: validate and run specs, submit to a coordinator, "
                "query results, write reports. Torch-free.",
    "knockout-coordinator": "The coordinator process (coordinator/README.md): one store, the gRPC "
                            "service, leases, group commits, metrics.",
    "knockout-worker": "The worker: with `--coordinator` it pulls and runs shards; its subcommands "
                       "are the model runtime's tools.",
    "knockout-organism": "Trains and evaluates the demo model organism (models/demo-refusal).",
}


def help_text(binary, name, path):
    proc = subprocess.run([binary, *path, "--help"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} {' '.join(path)} --help exited {proc.returncode}: {proc.stderr}")
    # The usage line names the binary as it was called: use its name instead.
    return proc.stdout.replace(binary, name).rstrip() + "\n"


def subcommands(text):
    """The subcommand names a --help lists (CLI11: a 'Subcommands:' block)."""
    names, inside = [], False
    for line in text.splitlines():
        if line.startswith("Subcommands:"):
            inside = True
            continue
        if inside:
            m = re.match(r"  (\S+)\s", line + " ")
            if not line.strip():
                break
            if m:
                names.append(m.group(1))
    return names


def document(build):
    out = ["# Command reference", "",
           "Generated from each binary's `--help` by `scripts/gen-cli-docs.py BUILD_DIR`; "
           "`ctest -R docs_cli_current` fails when it is out of date. The tutorial "
           "(docs/tutorial.md) shows the commands in use.", ""]
    for name, relative in BINARIES:
        binary = os.path.join(build, relative)
        if not os.path.exists(binary):
            sys.exit(f"{binary} is not built")
        out += [f"## {name}", "", INTRO[name], "", "```", help_text(binary, name, []).rstrip(), "```", ""]

        def walk(path):
            text = help_text(binary, name, path)
            for sub in subcommands(text):
                sub_path = path + [sub]
                out.extend([f"### {name} {' '.join(sub_path)}", "", "```",
                            help_text(binary, name, sub_path).rstrip(), "```", ""])
                walk(sub_path)

        walk([])
    return "\n".join(out).rstrip() + "\n"


def main():
    build = sys.argv[1]
    check = "--check" in sys.argv[2:]
    text = document(os.path.abspath(build))
    target = os.path.join(ROOT, "docs", "cli.md")
    if check:
        current = open(target).read() if os.path.exists(target) else ""
        if current != text:
            sys.exit("FAIL: docs/cli.md is out of date with the binaries' --help; run "
                     "scripts/gen-cli-docs.py BUILD_DIR and commit it")
        print("ok: docs/cli.md matches every --help")
        return
    with open(target, "w") as f:
        f.write(text)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
