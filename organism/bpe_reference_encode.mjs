#!/usr/bin/env node
// The JavaScript reference for the BPE trainer's test: loads a trained tokenizer directory
// (tokenizer.json + tokenizer_config.json) with transformers.js (@lenml/tokenizers, which
// tests/tokenizer installs into its node_modules) and encodes strings with it.
//
// Usage: node bpe_reference_encode.mjs TOKENIZER_DIR STRINGS.jsonl [MODE] [NODE_MODULES]
//   STRINGS.jsonl  one JSON string per line
//   MODE encode    (default) prints encode(s, {add_special_tokens: false}) per line, as a JSON
//                  array of ids
//   MODE chat      treats each string as one user message, renders apply_chat_template with
//                  add_generation_prompt, and prints the ids of the rendering per line
//   NODE_MODULES   where @lenml/tokenizers is installed (default:
//                  ../tests/tokenizer/node_modules relative to this script)
// Exit status 2 with a message on stderr on any error.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

function die(msg) {
  process.stderr.write(`bpe_reference_encode: ${msg}\n`);
  process.exit(2);
}

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
if (args.length < 2 || args.length > 4) {
  die("usage: bpe_reference_encode.mjs TOKENIZER_DIR STRINGS.jsonl [encode|chat] [NODE_MODULES]");
}
const [dir, file, mode = "encode"] = args;
const nodeModules = args[3] ?? path.join(here, "..", "tests", "tokenizer", "node_modules");
if (mode !== "encode" && mode !== "chat") die(`unknown mode '${mode}' (encode or chat)`);

// Resolve the package from NODE_MODULES rather than from this script's directory.
let TokenizerLoader;
try {
  const require = createRequire(path.join(nodeModules, "..", "bpe_reference_encode.cjs"));
  ({ TokenizerLoader } = require("@lenml/tokenizers"));
} catch (e) {
  die(`cannot load @lenml/tokenizers from ${nodeModules}: ${e.message}`);
}

const readJson = (name) => JSON.parse(readFileSync(path.join(dir, name), "utf8"));
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: readJson("tokenizer.json"),
  tokenizerConfig: readJson("tokenizer_config.json"),
});

const lines = readFileSync(file, "utf8").split("\n");
if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
const out = [];
lines.forEach((line, i) => {
  const s = JSON.parse(line);
  if (typeof s !== "string") die(`${file}:${i + 1}: not a JSON string`);
  let text = s;
  if (mode === "chat") {
    text = tok.apply_chat_template([{ role: "user", content: s }], {
      tokenize: false,
      add_generation_prompt: true,
    });
  }
  out.push(JSON.stringify(tok.encode(text, { add_special_tokens: false })));
});
process.stdout.write(out.join("\n") + (out.length ? "\n" : ""));
