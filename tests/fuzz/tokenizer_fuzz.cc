// libFuzzer target for tokenizer/. The first input byte picks what the rest is:
//   0  a tokenizer.json for Tokenizer::FromJson (with no config);
//   1  a tokenizer_config.json, loaded beside the fixed byte-level tokenizer;
//   2  text for the fixed byte-level BPE tokenizer (Llama 3 style: no normalizer);
//   3  text for the fixed byte-level BPE tokenizer with an NFC normalizer (Qwen style);
//   4  text for the fixed metaspace + byte-fallback tokenizer (Llama 2 style);
//   5  token ids (2 bytes each, little-endian) decoded by the three fixed tokenizers.
// The second byte's low bits choose add_special_tokens / skip_special_tokens.
// Nothing may crash, trip a sanitizer or throw. Beyond that (an abort with a message otherwise):
//   - errors are values: loading errors carry the label, encode errors are InvalidArgument and
//     happen only for invalid UTF-8;
//   - every successful encode has one token per id, each token maps back to its id, and decodes
//     without error; the byte-level tokenizer without normalizer gives back the input exactly, the
//     metaspace one too when the input has no U+2581 and no '<' (no added token);
//   - decoding ids inside the vocabulary succeeds and yields valid UTF-8 (the reference replaces
//     broken byte sequences with U+FFFD).
// The fixed tokenizers are built from the JSON strings below plus generated vocabularies (Build
// gives the added tokens dense ids; the ids written in the strings are placeholders).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace {

using knockout::StatusCode;
using knockout::tokenizer::Tokenizer;
using nlohmann::json;

void Check(bool condition, const char* what, const std::string& detail = "") {
  if (!condition) {
    std::fprintf(stderr, "tokenizer invariant violated: %s %s\n", what, detail.c_str());
    std::abort();
  }
}

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool ValidUtf8(const std::string& s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 onwards.
std::vector<std::string> ByteLevelAlphabet() {
  std::vector<std::string> out(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(next++);
    std::string utf8;
    if (cp < 0x80) {
      utf8 += static_cast<char>(cp);
    } else {
      utf8 += static_cast<char>(0xC0 | (cp >> 6));
      utf8 += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out[b] = utf8;
  }
  return out;
}

// Llama 3 style: regex split (\p{N}{1,3}), byte-level, BPE with ignore_merges, BOS template.
constexpr const char* kByteLevelJson = R"json({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 400, "content": "<|bos|>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 401, "content": "<|eot|>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 402, "content": "<think>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": false}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
               {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
             {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<|bos|>", "type_id": 1}},
             {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [400], "tokens": ["<|bos|>"]}}},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
              "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": true, "vocab": {}, "merges": []}
})json";

// Qwen style: NFC, \p{N} one digit at a time, ByteLevel post-processor, merges as pairs.
constexpr const char* kByteLevelNfcJson = R"json({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 400, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
     "rstrip": false, "normalized": false, "special": true},
    {"id": 401, "content": "<|im_start|>", "single_word": false, "lstrip": false,
     "rstrip": false, "normalized": false, "special": true},
    {"id": 402, "content": "<|im_end|>", "single_word": false, "lstrip": false,
     "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": {"type": "NFC"},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
  "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                     "use_regex": false},
  "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
              "use_regex": false},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": {}, "merges": []}
})json";

// Llama 2 style: Prepend + Replace normalizer, no pre-tokenizer, byte fallback, Strip decoder.
constexpr const char* kMetaspaceJson = R"json({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true}
  ],
  "normalizer": {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
  "pre_tokenizer": null,
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
               {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
             {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<s>", "type_id": 1}},
             {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
  "decoder": {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
  "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "vocab": {}, "merges": []}
})json";

constexpr const char* kMetaspaceConfig =
    R"json({"add_bos_token": true, "add_eos_token": false, "bos_token": "<s>",
            "eos_token": "</s>", "unk_token": "<unk>", "legacy": true})json";

// Merges in byte-level space ("Ġ" is the space byte, "Ċ" the newline byte, "Ã ©" is é).
const std::vector<std::pair<std::string, std::string>> kByteMerges = {
    {"\xc4\xa0", "t"}, {"h", "e"}, {"\xc4\xa0t", "he"}, {"i", "n"}, {"\xc4\xa0", "a"},
    {"e", "r"}, {"o", "n"}, {"\xc4\xa0", "s"}, {"r", "e"}, {"\xc4\xa0", "\xc4\xa0"},
    {"\xc4\xa0\xc4\xa0", "\xc4\xa0\xc4\xa0"}, {"1", "2"}, {"12", "3"}, {"\xc4\x8a", "\xc4\x8a"},
    {"\xc3\x83", "\xc2\xa9"}, {"\xc4\xa0", "in"}};

const std::vector<std::pair<std::string, std::string>> kMetaspaceMerges = {
    {"\xe2\x96\x81", "t"}, {"h", "e"}, {"\xe2\x96\x81t", "he"}, {"\xe2\x96\x81", "a"},
    {"i", "n"}, {"e", "r"}, {"o", "n"}, {"\xe2\x96\x81", "s"}, {"\xe2\x96\x81", "\xe2\x96\x81"},
    {"\xe2\x96\x81", "in"}};

json ByteLevelModel(bool merges_as_pairs) {
  json vocab = json::object();
  const std::vector<std::string> alphabet = ByteLevelAlphabet();
  for (int b = 0; b < 256; ++b) vocab[alphabet[b]] = b;
  json merges = json::array();
  int next = 256;
  for (const auto& [a, b] : kByteMerges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merges.push_back(merges_as_pairs ? json::array({a, b}) : json(a + " " + b));
  }
  return json{{"vocab", vocab}, {"merges", merges}};
}

json MetaspaceModel() {
  json vocab = json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  char hex[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(hex, sizeof(hex), "<0x%02X>", b);
    vocab[hex] = 3 + b;
  }
  int next = 259;
  for (const char* piece : {"\xe2\x96\x81", "t", "h", "e", "a", "i", "n", "r", "o", "s",
                            "\xc3\xa9", "\xe4\xb8\xad"}) {
    vocab[piece] = next++;
  }
  json merges = json::array();
  for (const auto& [a, b] : kMetaspaceMerges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merges.push_back(a + " " + b);
  }
  return json{{"vocab", vocab}, {"merges", merges}};
}

// Fills the skeleton's model and gives the added tokens dense ids: their vocabulary id if the
// vocabulary has them, the next free ids otherwise (and the post-processor the same ids).
std::string Build(const char* skeleton, const json& model) {
  json j = json::parse(skeleton);
  json vocab = model["vocab"];
  j["model"]["merges"] = model["merges"];
  int64_t next = static_cast<int64_t>(vocab.size());
  for (json& added : j["added_tokens"]) {
    const std::string content = added["content"].get<std::string>();
    if (!vocab.contains(content)) vocab[content] = next++;
    added["id"] = vocab[content];
  }
  j["model"]["vocab"] = vocab;
  json& post = j["post_processor"];
  if (post.contains("special_tokens")) {
    for (auto& [name, special] : post["special_tokens"].items()) {
      special["ids"] = json::array({vocab[name]});
    }
  }
  return j.dump();
}

std::unique_ptr<Tokenizer> MustLoad(const std::string& tokenizer_json, const std::string& config,
                                    const char* label) {
  auto t = Tokenizer::FromJson(tokenizer_json, config, label);
  if (!t.ok()) {
    std::fprintf(stderr, "tokenizer_fuzz: the fixed tokenizer %s does not load: %s\n", label,
                 t.status().ToString().c_str());
    std::abort();
  }
  return std::move(t).value();
}

struct Fixed {
  std::string byte_level_json;
  std::unique_ptr<Tokenizer> byte_level, byte_level_nfc, metaspace;
};

const Fixed& GetFixed() {
  static const Fixed* fixed = [] {
    auto* f = new Fixed;
    f->byte_level_json = Build(kByteLevelJson, ByteLevelModel(false));
    f->byte_level = MustLoad(f->byte_level_json, "", "byte_level");
    f->byte_level_nfc = MustLoad(Build(kByteLevelNfcJson, ByteLevelModel(true)), "", "nfc");
    f->metaspace = MustLoad(Build(kMetaspaceJson, MetaspaceModel()), kMetaspaceConfig,
                            "metaspace");
    return f;
  }();
  return *fixed;
}

enum class RoundTrip { kAlways, kNever, kMetaspace };

// `strict`: one of the fixed tokenizers, which must encode any valid UTF-8 and whose vocabulary
// maps tokens to ids one to one (a fuzzed tokenizer.json need not).
void CheckEncode(const Tokenizer& tok, const std::string& text, bool add_special,
                 RoundTrip round_trip, bool strict) {
  auto enc = tok.Encode(text, add_special);
  const bool valid = ValidUtf8(text);
  if (!enc.ok()) {
    if (!strict && valid) return;
    Check(!valid, "Encode failed on valid UTF-8:", enc.status().ToString());
    Check(enc.status().code() == StatusCode::kInvalidArgument,
          "Encode error on invalid UTF-8 is not InvalidArgument:", enc.status().ToString());
    return;
  }
  Check(valid, "Encode accepted invalid UTF-8");
  Check(enc->ids.size() == enc->tokens.size(), "ids and tokens differ in length");
  for (size_t i = 0; i < enc->ids.size(); ++i) {
    Check(enc->ids[i] >= 0 && enc->ids[i] < tok.vocab_size(), "id outside the vocabulary");
    if (!strict) continue;
    auto id = tok.TokenToId(enc->tokens[i]);
    Check(id.has_value() && *id == enc->ids[i], "token does not map back to its id:",
          enc->tokens[i]);
  }
  const auto& st = tok.special_tokens();
  // Only for the fixed tokenizers: a fuzzed post-processor may legitimately place other special
  // tokens before BOS (found by the fuzzer; not a memory error).
  if (strict && add_special && st.add_bos && st.bos_id) {
    Check(!enc->ids.empty() && enc->ids.front() == *st.bos_id, "BOS missing");
  }
  auto dec = tok.Decode(enc->ids, false);
  Check(dec.ok(), "Decode of an encoding failed:", dec.ok() ? "" : dec.status().ToString());
  Check(ValidUtf8(*dec), "Decode produced invalid UTF-8");
  if (add_special) return;
  bool must_round_trip = round_trip == RoundTrip::kAlways;
  if (round_trip == RoundTrip::kMetaspace) {
    must_round_trip = text.find("\xe2\x96\x81") == std::string::npos &&
                      text.find('<') == std::string::npos;
  }
  if (must_round_trip) Check(*dec == text, "Decode(Encode(text)) != text");
  auto skipped = tok.Decode(enc->ids, true);
  Check(skipped.ok(), "Decode with skip_special_tokens failed");
}

void CheckDecode(const Tokenizer& tok, const std::vector<int64_t>& ids, bool skip_special) {
  auto dec = tok.Decode(ids, skip_special);
  bool in_vocab = true;
  for (int64_t id : ids) in_vocab = in_vocab && id >= 0 && id < tok.vocab_size();
  if (!dec.ok()) {
    Check(!in_vocab, "Decode failed on ids inside the vocabulary:", dec.status().ToString());
    Check(dec.status().code() == StatusCode::kInvalidArgument,
          "Decode error is not InvalidArgument:", dec.status().ToString());
    return;
  }
  Check(in_vocab, "Decode accepted an id outside the vocabulary");
  Check(ValidUtf8(*dec), "Decode produced invalid UTF-8");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const Fixed& fixed = GetFixed();
  const int mode = data[0] % 6;
  const bool flag = data[1] & 1;
  const std::string rest(reinterpret_cast<const char*>(data) + 2, size - 2);
  switch (mode) {
    case 0:
    case 1: {
      auto t = mode == 0 ? Tokenizer::FromJson(rest, "", "fuzz")
                         : Tokenizer::FromJson(fixed.byte_level_json, rest, "fuzz");
      if (!t.ok()) {
        Check(t.status().message().rfind("fuzz", 0) == 0, "error message lacks the label:",
              t.status().message());
        return 0;
      }
      // A tokenizer that loads must work: encode a fixed text and decode it.
      CheckEncode(**t, "Hello, world! 12345 \xc3\xa9\xe4\xb8\xad  \n", flag, RoundTrip::kNever,
                  /*strict=*/false);
      return 0;
    }
    case 2: CheckEncode(*fixed.byte_level, rest, flag, RoundTrip::kAlways, true); return 0;
    case 3: CheckEncode(*fixed.byte_level_nfc, rest, flag, RoundTrip::kNever, true); return 0;
    case 4: CheckEncode(*fixed.metaspace, rest, flag, RoundTrip::kMetaspace, true); return 0;
    default: {
      std::vector<int64_t> ids;
      for (size_t i = 0; i + 1 < rest.size(); i += 2) {
        ids.push_back(static_cast<uint8_t>(rest[i]) | (static_cast<uint8_t>(rest[i + 1]) << 8));
      }
      for (const Tokenizer* tok :
           {fixed.byte_level.get(), fixed.byte_level_nfc.get(), fixed.metaspace.get()}) {
        std::vector<int64_t> local = ids;
        for (int64_t& id : local) id %= tok->vocab_size() + 3;  // a few ids past the end
        CheckDecode(*tok, local, flag);
      }
      return 0;
    }
  }
}
