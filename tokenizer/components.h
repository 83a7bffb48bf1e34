// The pipeline stages of a tokenizer.json around the model: normalizers, pre-tokenizers,
// decoders and post-processors, each parsed from its JSON object. Unsupported types are
// Unimplemented errors naming the type and the JSON path. Internal to tokenizer/; every
// stage is immutable after parsing and safe to run from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "common/status.h"
#include "tokenizer/json_util.h"

namespace knockout::tokenizer::internal {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual Status Apply(std::string* text) const = 0;
};

// One pre-token. `at_start` marks the piece that begins at offset 0 of the input text (what
// Metaspace's prepend_scheme "first" keys on).
struct Piece {
  std::string text;
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` with their pre-tokenization. Empty pieces are dropped.
  virtual void Apply(std::vector<Piece>* pieces) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the list of token strings in place (the reference's decode_chain).
  virtual void Apply(std::vector<std::string>* tokens) const = 0;
};

// What the post-processor adds around a single sequence when special tokens are requested.
struct PostProcessor {
  std::vector<int64_t> prefix;
  std::vector<int64_t> suffix;
};

// `j` may be JSON null (no stage). `path` is the JSON path for errors ("normalizer").
StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j, const std::string& path);
StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j, const std::string& path);
// `added_tokens` lists the contents of added tokens, which the ByteLevel decoder passes through
// verbatim instead of mapping characters back to bytes. It must outlive the decoder.
StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j, const std::string& path,
                                                const std::unordered_set<std::string>* added);
StatusOr<PostProcessor> ParsePostProcessor(const Json& j, const std::string& path);

}  // namespace knockout::tokenizer::internal
