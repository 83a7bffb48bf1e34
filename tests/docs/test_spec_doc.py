#!/usr/bin/env python3
"""docs/spec.md documents every key the spec parser accepts.

Usage: test_spec_doc.py SOURCE_DIR

Reads every `CheckMap(node, path, {"key", ...}, ...)` call in experiments/spec_parser.cc and
experiments/spec_stages.cc (the key list of each is the first brace list among the call's
arguments) and fails, naming each key and the source line of its call, unless docs/spec.md
writes the key in backticks (`key`) outside fenced code blocks. A key written as an element of a
constant array (`kStageKinds[2]`) is resolved against the arrays declared in
experiments/spec_parser.h and the two sources. Fails as well when it finds fewer than
MIN_CHECKMAP_CALLS calls, so that a refactor of the parser cannot make it pass by checking
nothing. Standard library only.
"""
import os
import re
import sys

SOURCES = ("experiments/spec_parser.cc", "experiments/spec_stages.cc")
HEADERS = ("experiments/spec_parser.h",)
DOC = "docs/spec.md"
MIN_CHECKMAP_CALLS = 15


class Token:
    __slots__ = ("kind", "text", "line")

    def __init__(self, kind, text, line):
        self.kind = kind  # "str", "ident", "num", "punct"
        self.text = text  # for "str": the literal's value (escapes kept as written)
        self.line = line

    def __repr__(self):
        return f"{self.kind}:{self.text!r}@{self.line}"


def tokenize(text):
    """A small C++ lexer: comments dropped, string and char literals as single tokens."""
    tokens = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            line += text.count("\n", i, j)
            i = j
        elif c == 'R' and text.startswith('R"', i):
            # Raw string R"delim( ... )delim"
            open_paren = text.find("(", i + 2)
            delim = text[i + 2:open_paren]
            end = text.find(")" + delim + '"', open_paren + 1)
            if open_paren < 0 or end < 0:
                raise ValueError(f"line {line}: unterminated raw string")
            tokens.append(Token("str", text[open_paren + 1:end], line))
            line += text.count("\n", i, end)
            i = end + len(delim) + 2
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\":
                    j += 1
                if j < n and text[j] == "\n":
                    raise ValueError(f"line {line}: newline in a literal")
                j += 1
            if j >= n:
                raise ValueError(f"line {line}: unterminated literal")
            tokens.append(Token("str" if c == '"' else "char", text[i + 1:j], line))
            i = j + 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(Token("ident", text[i:j], line))
            i = j
        elif c.isdigit():
            j = i
            while j < n and (text[j].isalnum() or text[j] in "._'"):
                j += 1
            tokens.append(Token("num", text[i:j], line))
            i = j
        elif text.startswith("::", i):
            tokens.append(Token("punct", "::", line))
            i += 2
        else:
            tokens.append(Token("punct", c, line))
            i += 1
    return tokens


def matching(tokens, start, open_text, close_text):
    """Index of the token closing the bracket at tokens[start]."""
    depth = 0
    for k in range(start, len(tokens)):
        t = tokens[k]
        if t.kind != "punct":
            continue
        if t.text == open_text:
            depth += 1
        elif t.text == close_text:
            depth -= 1
            if depth == 0:
                return k
    raise ValueError(f"line {tokens[start].line}: no matching {close_text!r}")


def string_arrays(tokens):
    """NAME -> [values] for declarations `... NAME = {"a", "b", ...};` holding only strings."""
    arrays = {}
    for k in range(len(tokens) - 2):
        if (tokens[k].kind == "ident" and tokens[k + 1].text == "=" and
                tokens[k + 2].text == "{"):
            end = matching(tokens, k + 2, "{", "}")
            items = tokens[k + 3:end]
            values = [t.text for t in items if t.kind == "str"]
            if values and all(t.kind == "str" or t.text == "," for t in items):
                arrays[tokens[k].text] = values
    return arrays


def split_items(tokens):
    """Splits the tokens of a brace list at top-level commas."""
    items, current, depth = [], [], 0
    for t in tokens:
        if t.kind == "punct" and t.text in "([{":
            depth += 1
        elif t.kind == "punct" and t.text in ")]}":
            depth -= 1
        if depth == 0 and t.kind == "punct" and t.text == ",":
            items.append(current)
            current = []
        else:
            current.append(t)
    if current:
        items.append(current)
    return items


def resolve(item, arrays):
    """The key a brace-list item spells, or None."""
    if item and all(t.kind == "str" for t in item):
        return "".join(t.text for t in item)  # adjacent literals concatenate
    if (len(item) == 4 and item[0].kind == "ident" and item[1].text == "[" and
            item[2].kind == "num" and item[3].text == "]" and item[0].text in arrays):
        values = arrays[item[0].text]
        index = int(item[2].text, 0)
        if 0 <= index < len(values):
            return values[index]
    return None


def checkmap_calls(path, tokens, arrays, errors):
    """[(line, [keys])] for every CheckMap call of one file."""
    calls = []
    for k, t in enumerate(tokens):
        if not (t.kind == "ident" and t.text == "CheckMap"):
            continue
        if k + 1 >= len(tokens) or tokens[k + 1].text != "(":
            continue
        if k > 0 and tokens[k - 1].text == "::":
            continue  # the definition, SpecParser::CheckMap(...)
        close = matching(tokens, k + 1, "(", ")")
        args = tokens[k + 2:close]
        brace = next((j for j, a in enumerate(args) if a.kind == "punct" and a.text == "{"), None)
        if brace is None:
            errors.append(f"{path}:{t.line}: CheckMap call without a {{...}} key list")
            continue
        end = matching(args, brace, "{", "}")
        keys = []
        for item in split_items(args[brace + 1:end]):
            key = resolve(item, arrays)
            if key is None:
                spelled = " ".join(x.text for x in item)
                errors.append(f"{path}:{item[0].line if item else t.line}: cannot read the key "
                              f"{spelled!r} of a CheckMap call (a string literal or an element "
                              f"of a constant string array)")
                continue
            keys.append(key)
        if not keys:
            errors.append(f"{path}:{t.line}: CheckMap call with an empty key list")
        calls.append((t.line, keys))
    return calls


def documented_keys(doc_text):
    """Every `code span` of the page outside fenced code blocks."""
    prose, fenced = [], False
    for line in doc_text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            prose.append(line)
    text = "\n".join(prose)
    spans = set()
    # Code spans: a run of N backticks, content, the same run (`` `x` `` style included).
    for m in re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", text, re.S):
        spans.add(m.group(2).strip())
    return spans


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    root = argv[1]
    errors = []
    arrays = {}
    parsed = {}
    for rel in HEADERS + SOURCES:
        path = os.path.join(root, rel)
        try:
            with open(path, encoding="utf-8") as f:
                tokens = tokenize(f.read())
        except (OSError, ValueError) as e:
            print(f"FAIL: {rel}: {e}", file=sys.stderr)
            return 1
        arrays.update(string_arrays(tokens))
        if rel in SOURCES:
            parsed[rel] = tokens

    calls = []  # (file, line, keys)
    for rel in SOURCES:
        for line, keys in checkmap_calls(rel, parsed[rel], arrays, errors):
            calls.append((rel, line, keys))
    if len(calls) < MIN_CHECKMAP_CALLS:
        errors.append(f"found {len(calls)} CheckMap calls in {', '.join(SOURCES)}, expected at "
                      f"least {MIN_CHECKMAP_CALLS}: has the parser changed how it checks keys?")

    doc_path = os.path.join(root, DOC)
    try:
        with open(doc_path, encoding="utf-8") as f:
            spans = documented_keys(f.read())
    except OSError as e:
        print(f"FAIL: {DOC}: {e}", file=sys.stderr)
        return 1

    all_keys = set()
    for rel, line, keys in calls:
        for key in keys:
            all_keys.add(key)
            if key not in spans:
                errors.append(f"{rel}:{line}: key `{key}` is not documented in {DOC} "
                              f"(write it as `{key}`)")

    if errors:
        for e in errors:
            print(f"FAIL: {e}", file=sys.stderr)
        return 1
    print(f"ok: {len(all_keys)} keys of {len(calls)} maps documented")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
