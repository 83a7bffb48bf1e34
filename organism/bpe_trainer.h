// Byte-level BPE tokenizer training for the demo model organism: learns merges from a text corpus
// and writes a Hugging Face tokenizer.json + tokenizer_config.json (GPT-2 pre-tokenizer regex,
// byte-level alphabet, ChatML special tokens and chat template) that both our runtime
// (tokenizer/) and transformers.js load. Stateless functions; thread-safe. TrainedBpe is
// a plain value.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace knockout::organism {

struct BpeTrainerOptions {
  // Total number of ids: the 256 byte symbols, the learned merges and the special tokens.
  int vocab_size = 4096;
  // A pair must occur at least this often (summed over the corpus) to be merged; values below 1
  // count as 1.
  int min_frequency = 2;
  // Added as special tokens after the BPE vocabulary, in this order. Must include <|im_start|>
  // and <|im_end|>, which the ChatML chat template uses.
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
};

// A trained tokenizer, in Hugging Face terms.
struct TrainedBpe {
  // id -> token string in the byte-level alphabet (GPT-2 bytes_to_unicode): ids 0..255 are the
  // single bytes (in the order of their alphabet characters, as GPT-2 and Qwen number them),
  // then one token per distinct merge result, in merge order.
  std::vector<std::string> vocab;
  // In rank order; each joins two vocab tokens into another vocab token.
  std::vector<std::pair<std::string, std::string>> merges;
  // ids vocab.size(), vocab.size() + 1, ...
  std::vector<std::string> special_tokens;
  // tokenizer_config.json's model_max_length (the context the model is trained for).
  int64_t model_max_length = 2048;

  // A complete tokenizer.json: no normalizer; pre-tokenizer Sequence[Split(GPT-2 regex,
  // Isolated), ByteLevel(use_regex false)]; BPE model; ByteLevel post-processor (adds nothing)
  // and decoder; special tokens as added_tokens with "special": true.
  std::string TokenizerJson() const;
  // tokenizer_config.json: a ChatML chat template (Qwen-style Jinja, no default system prompt),
  // bos_token null, add_bos_token false, eos_token "<|im_end|>", pad_token "<|endoftext|>" (null
  // if that is not a special token), added_tokens_decoder, model_max_length,
  // clean_up_tokenization_spaces false.
  std::string TokenizerConfigJson() const;
};

// Trains on `texts` (UTF-8). Special tokens occurring inside a text are cut out before counting,
// as the runtime matches them before BPE. Merging stops at vocab_size, when no pair reaches
// min_frequency, or when no pairs are left (then the vocabulary is smaller than vocab_size).
// Deterministic: ties between equally frequent pairs go to the pair whose (left, right) token
// strings are lexicographically smallest (bytewise), so the same input gives the same files byte
// for byte. Errors: InvalidArgument naming the text index (and byte offset) of invalid UTF-8, or
// for a vocab_size below 256 + the number of special tokens, or for bad special tokens (empty,
// duplicated, invalid UTF-8, ChatML markers missing).
StatusOr<TrainedBpe> TrainByteLevelBpe(const std::vector<std::string>& texts,
                                       const BpeTrainerOptions& options);

// Writes DIR/tokenizer.json and DIR/tokenizer_config.json, each atomically (a temporary file in
// DIR, fsync, rename); creates DIR and its parents. IOError naming the file on failure.
Status WriteTokenizerFiles(const TrainedBpe& bpe, const std::string& dir);

}  // namespace knockout::organism
