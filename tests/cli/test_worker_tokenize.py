#!/usr/bin/env python3
"""End-to-end checks of `knockout-worker tokenize` against the JavaScript reference's encodings.

Usage: test_worker_tokenize.py WORKER_BINARY TOKENIZER_REFERENCE_DIR MODELS_DIR
TOKENIZER_REFERENCE_DIR holds expected-<family>.jsonl and chat-<family>.json written by
tests/tokenizer/write_expected.sh; MODELS_DIR the npm packages' tokenizer files. Prints
'N passed, N failed'.
"""
import json
import os
import subprocess
import sys
import tempfile

WORKER, REFERENCE, MODELS = sys.argv[1:4]
results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    results["passed" if condition else "failed"] += 1
    print(("PASS " if condition else "FAIL ") + name + ("" if condition else ": " + detail[:500]))


def run(*args):
    return subprocess.run([WORKER, "tokenize", *args], capture_output=True, timeout=300)


for family in ["llama3", "qwen3", "gemma3", "llama2"]:
    tokenizer = os.path.join(MODELS, f"tokenizer-{family}", "models")
    expected = [json.loads(line) for line in open(os.path.join(REFERENCE, f"expected-{family}.jsonl"))]
    # --file takes one input per line: use the corpus lines without line breaks.
    single = [e for e in expected if e["text"] and "\n" not in e["text"] and "\r" not in e["text"]][:400]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(e["text"] for e in single) + "\n")
        path = f.name
    for special, key in [(False, "ids"), (True, "ids_special")]:
        proc = run("--tokenizer", tokenizer, "--file", path, "--json", *(["--special"] if special else []))
        check(f"{family}: tokenize --file exits 0 (special={special})", proc.returncode == 0,
              proc.stderr.decode())
        lines = [json.loads(line) for line in proc.stdout.decode().split("\n") if line]
        check(f"{family}: one JSON object per line", len(lines) == len(single), str(len(lines)))
        wrong = [i for i, (ours, ref) in enumerate(zip(lines, single)) if ours["ids"] != ref[key]]
        check(f"{family}: {len(single)} lines identical to the reference ({key})", not wrong,
              f"{len(wrong)} differ, first: {single[wrong[0]]['text']!r}" if wrong else "")
        check(f"{family}: tokens listed", all(len(l["tokens"]) == len(l["ids"]) for l in lines))
    os.unlink(path)
    # --text and the file path form (tokenizer.json itself).
    proc = run("--tokenizer", os.path.join(tokenizer, "tokenizer.json"), "--text", single[1]["text"], "--json")
    check(f"{family}: --text with a tokenizer.json path",
          proc.returncode == 0 and json.loads(proc.stdout)["ids"] == single[1]["ids"], proc.stderr.decode())
    # --chat: the ids of the reference's Jinja rendering where it has one, and consistent ranges.
    for entry in json.load(open(os.path.join(REFERENCE, f"chat-{family}.json"))):
        if "\n" in entry["instruction"]:
            continue
        template = [] if family != "llama2" else ["--template", "llama2"]
        proc = run("--tokenizer", tokenizer, "--text", entry["instruction"], "--chat", "--json", *template)
        check(f"{family}: --chat exits 0", proc.returncode == 0, proc.stderr.decode())
        out = json.loads(proc.stdout)
        if entry.get("ids"):
            check(f"{family}: --chat ids equal the reference's rendering", out["ids"] == entry["ids"],
                  f"{out['ids']} vs {entry['ids']}")
        b, e = out["post_inst_range"]
        ib, ie = out["instruction_range"]
        check(f"{family}: ranges consistent", ib < ie == b < e == len(out["ids"]) and out["inst_last"] == ie - 1,
              json.dumps(out))

# Bad input: clear messages naming the file and line, non-zero exit.
llama3 = os.path.join(MODELS, "tokenizer-llama3", "models")
with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
    f.write(b"fine line\nbad \xff byte\n")
    bad = f.name
proc = run("--tokenizer", llama3, "--file", bad, "--json")
check("invalid UTF-8 names file:line", proc.returncode != 0 and f"{bad}:2" in proc.stderr.decode(),
      proc.stderr.decode())
os.unlink(bad)
proc = run("--tokenizer", "/nonexistent/tok", "--text", "x")
check("missing tokenizer", proc.returncode != 0 and "/nonexistent/tok" in proc.stderr.decode(), proc.stderr.decode())
proc = run("--tokenizer", llama3)
check("needs --text or --file", proc.returncode != 0 and b"--text or --file" in proc.stderr, proc.stderr.decode())
proc = run("--tokenizer", llama3, "--text", "x", "--chat", "--template", "vicuna")
check("unknown template", proc.returncode != 0 and b"vicuna" in proc.stderr, proc.stderr.decode())

print(f"{results['passed']} passed, {results['failed']} failed")
sys.exit(1 if results["failed"] else 0)
