#!/usr/bin/env python3
"""`--version` on every binary (issue 18): "NAME VERSION (git COMMIT)" then one "  LIBRARY X.Y.Z"
line per library, exit status 0. VERSION is CMake's project version and COMMIT the source
tree's HEAD as git itself reports it (the build refreshes it at every build).

Usage: test_version.py SOURCE_DIR PROJECT_VERSION BINARY[=LIBRARY,LIBRARY...] ...
"""
import re
import subprocess
import sys


def main():
    source, version, binaries = sys.argv[1], sys.argv[2], sys.argv[3:]
    head = subprocess.run(["git", "-C", source, "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else "unknown"
    for spec in binaries:
        binary, _, wanted = spec.partition("=")
        name = binary.rsplit("/", 1)[-1]
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"FAIL: {name} --version exited {proc.returncode}: {proc.stderr}")
        lines = proc.stdout.rstrip("\n").split("\n")
        m = re.fullmatch(r"(\S+) (\S+) \(git ([0-9a-f]{12}|unknown)(-dirty)?\)", lines[0])
        # Built from uncommitted changes that were committed afterwards (no rebuild since): the
        # binary names the commit it was built on, marked dirty, an ancestor of HEAD.
        built_before_commit = (
            m is not None and m.group(4) == "-dirty" and m.group(3) != commit and
            subprocess.run(["git", "-C", source, "merge-base", "--is-ancestor", m.group(3), "HEAD"],
                           capture_output=True).returncode == 0)
        if not m or m.group(1) != name or m.group(2) != version or (
                m.group(3) != commit and not built_before_commit):
            sys.exit(f"FAIL: {name}: first line {lines[0]!r}, want '{name} {version} (git {commit}[-dirty])'")
        libraries = {}
        for line in lines[1:]:
            lm = re.fullmatch(r"  (\S+) (\d+\.\d+\.\d+\S*)", line)
            if not lm:
                sys.exit(f"FAIL: {name}: library line {line!r}")
            libraries[lm.group(1)] = lm.group(2)
        for library in filter(None, wanted.split(",")):
            if library not in libraries:
                sys.exit(f"FAIL: {name} does not name {library}: {lines}")
        print(f"ok: {lines[0]} ({', '.join(f'{k} {v}' for k, v in libraries.items())})")


if __name__ == "__main__":
    main()
