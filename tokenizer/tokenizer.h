// Tokenizer: Hugging Face `tokenizer.json` files, encoded exactly as the reference
// implementation does. Two model families are supported:
//   - byte-level BPE with a regex pre-tokenizer (GPT-2, Llama 3, Qwen 2/3);
//   - metaspace BPE with byte fallback (Llama 2, Gemma).
// plus the normalizers, pre-tokenizers, decoders and post-processors those files use, and added /
// special tokens matched before BPE. Anything a file uses that is not supported is an
// Unimplemented error naming the component, never a silent difference.
// Thread-safety: a loaded Tokenizer is immutable; Encode/Decode may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace knockout::tokenizer {

struct Encoding {
  std::vector<int64_t> ids;
  std::vector<std::string> tokens;  // vocabulary strings, as in tokenizer.json
};

// Special tokens and the BOS/EOS policy, from tokenizer_config.json (when present) and the
// tokenizer.json post-processor.
struct SpecialTokens {
  std::optional<std::string> bos, eos, pad, unk;
  std::optional<int64_t> bos_id, eos_id, pad_id, unk_id;
  bool add_bos = false;  // Encode(text, add_special_tokens=true) prepends BOS
  bool add_eos = false;  // ... and appends EOS
};

class Tokenizer {
 public:
  // Loads `path`: a tokenizer.json file, or a directory holding one. A tokenizer_config.json
  // beside it is read too (BOS/EOS policy, special token names, chat template). Errors:
  // NotFound (no tokenizer.json), InvalidArgument (malformed JSON, a field of the wrong type,
  // naming the file and field), Unimplemented (a model, normalizer, pre-tokenizer, decoder or
  // post-processor type we do not implement, naming it).
  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);

  // The same from strings; `config_json` may be empty. `label` prefixes error messages.
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(const std::string& tokenizer_json,
                                                       const std::string& config_json,
                                                       const std::string& label);

  virtual ~Tokenizer() = default;

  // Encodes `text` (UTF-8). Added/special tokens appearing in the text are matched first (as the
  // reference does). With `add_special_tokens`, the post-processor's / config's BOS and EOS are
  // added. InvalidArgument if `text` is not valid UTF-8 (naming the byte offset).
  virtual StatusOr<Encoding> Encode(std::string_view text, bool add_special_tokens) const = 0;

  // Decodes ids back to text through the file's decoder. Unknown ids are InvalidArgument.
  virtual StatusOr<std::string> Decode(const std::vector<int64_t>& ids,
                                       bool skip_special_tokens) const = 0;

  virtual std::optional<int64_t> TokenToId(std::string_view token) const = 0;
  virtual std::optional<std::string> IdToToken(int64_t id) const = 0;
  // Number of ids (model vocabulary plus added tokens; the largest id + 1).
  virtual int64_t vocab_size() const = 0;
  virtual const SpecialTokens& special_tokens() const = 0;
  // The Jinja chat template of tokenizer_config.json, or empty.
  virtual const std::string& chat_template() const = 0;
  // Whether `id` is an added token marked special.
  virtual bool IsSpecial(int64_t id) const = 0;
};

}  // namespace knockout::tokenizer
