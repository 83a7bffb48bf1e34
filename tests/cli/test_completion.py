#!/usr/bin/env python3
"""`knockout completion bash|zsh` (issue 18): the bash script, sourced in a real bash, completes
the subcommands that `knockout --help` lists, each subcommand's flags that its own --help lists,
and file names elsewhere; the zsh script loads the same function through bashcompinit (run in
zsh when it is installed); another shell is refused.

Usage: test_completion.py KNOCKOUT
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile


def check(condition, message):
    if not condition:
        sys.exit("FAIL: " + message)
    print("ok:", message)


def help_of(knockout, *path):
    return subprocess.run([knockout, *path, "--help"], capture_output=True, text=True, check=True).stdout


def listed_subcommands(text):
    block = text.split("Subcommands:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  (\S+)\s", block, re.M)]


def listed_flags(text):
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text.split("Options:", 1)[1]))


def complete(script, words, cwd):
    """COMPREPLY for a command line whose last word is being completed."""
    line = " ".join(f"'{w}'" for w in words)
    program = f"""source {script}
COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}
_knockout
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=cwd, check=True)
    return [w for w in out.stdout.splitlines() if w]


def main():
    knockout = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="knockout-completion-") as work:
        script = os.path.join(work, "knockout.bash")
        with open(script, "w") as f:
            f.write(subprocess.run([knockout, "completion", "bash"], capture_output=True, text=True,
                                   check=True).stdout)
        commands = listed_subcommands(help_of(knockout))
        check(len(commands) >= 12, f"knockout --help lists the subcommands ({len(commands)})")
        check(set(complete(script, ["knockout", ""], work)) >= set(commands),
              "an empty word completes to every subcommand")
        check(complete(script, ["knockout", "res"], work) == ["results"], "res -> results")
        check(set(complete(script, ["knockout", "re"], work)) == {"results", "report"},
              "re -> results, report")
        for command in commands:
            flags = listed_flags(help_of(knockout, command))
            got = set(complete(script, ["knockout", command, "--"], work))
            check(flags <= got, f"{command}: every flag of its --help ({len(flags)})")
        check(complete(script, ["knockout", "results", "demo", "--st"], work) == ["--stage", "--store"],
              "results --st -> --stage, --store")
        open(os.path.join(work, "sweep-spec.yaml"), "w").close()
        check(complete(script, ["knockout", "run", "sweep-"], work) == ["sweep-spec.yaml"],
              "file names after a subcommand")

        zsh_script = subprocess.run([knockout, "completion", "zsh"], capture_output=True, text=True,
                                    check=True).stdout
        check("bashcompinit" in zsh_script and "complete -o filenames -F _knockout knockout" in zsh_script,
              "the zsh script loads the function through bashcompinit")
        if shutil.which("zsh"):
            proc = subprocess.run(["zsh", "-c", zsh_script + "\nwhence -w _knockout"],
                                  capture_output=True, text=True, cwd=work)
            check(proc.returncode == 0 and "function" in proc.stdout, "zsh loads it")
        else:
            print("note: zsh is not installed; its script was checked as text only")
        bad = subprocess.run([knockout, "completion", "fish"], capture_output=True, text=True)
        check(bad.returncode != 0 and "bash, zsh" in bad.stderr, "another shell is refused, naming the two")


if __name__ == "__main__":
    main()
