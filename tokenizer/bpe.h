// The BPE model of a tokenizer.json: vocabulary, ranked merges, unknown-token handling
// (byte fallback to <0xNN> tokens, fuse_unk), ignore_merges, subword prefix/suffix.
// Tokenize applies merges lowest rank first, leftmost first among equal ranks, with a binary
// heap over adjacent pairs. Internal to tokenizer/. Immutable after FromJson except for a
// word cache guarded by sharded mutexes, so Tokenize may be called from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "tokenizer/json_util.h"

namespace knockout::tokenizer::internal {

// Open-addressing map from a packed pair of ids to a packed (rank, merged id). Merges are read
// for every adjacent pair of every word, so this avoids std::unordered_map's node chasing.
class PairMap {
 public:
  void Reserve(size_t n);
  // Returns false if the key was already present (the first insertion wins).
  bool Insert(uint64_t key, uint64_t value);
  const uint64_t* Find(uint64_t key) const {
    if (slots_.empty()) return nullptr;
    size_t i = Hash(key);
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.value;
      if (s.key == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ULL;
  struct Slot {
    uint64_t key = kEmpty;
    uint64_t value = 0;
  };
  size_t Hash(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ULL) >> shift_) & mask_;
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 0;
  size_t size_ = 0;
};

// Open-addressing map from strings (viewed, not owned) to ids. Vocabulary lookups happen for
// every pre-token, and std::unordered_map's scattered nodes cost several cache misses each.
class StringIdMap {
 public:
  // `keys[i]` maps to `ids[i]`; the first occurrence of a key wins. The viewed strings must
  // outlive the map.
  void Build(std::vector<std::string_view> keys, std::vector<int32_t> ids);
  const int32_t* Find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    const uint64_t h = HashBytes(key);
    const auto tag = static_cast<uint32_t>(h >> 32);
    size_t i = static_cast<size_t>(h) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.entry < 0) return nullptr;
      if (s.tag == tag && keys_[s.entry] == key) return &ids_[s.entry];
      i = (i + 1) & mask_;
    }
  }
  static uint64_t HashBytes(std::string_view s);

 private:
  struct Slot {
    uint32_t tag = 0;
    int32_t entry = -1;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  std::vector<std::string_view> keys_;
  std::vector<int32_t> ids_;
};

// The largest id accepted for a vocabulary of `entries` strings. Ids are dense in real files; the
// bound only stops a corrupt file from sizing id-indexed tables in the gigabytes.
inline int64_t MaxTokenId(size_t entries) {
  return (int64_t{1} << 20) + 16 * static_cast<int64_t>(entries);
}

class BpeModel {
 public:
  // `model` is the "model" object of tokenizer.json; `path` its JSON path, for errors.
  static StatusOr<std::unique_ptr<BpeModel>> FromJson(const Json& model, const std::string& path);

  // Appends the ids of `word` (one pre-token, already normalized and pre-tokenized).
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // Vocabulary strings by id; ids the vocabulary does not use hold an empty string.
  const std::vector<std::string>& id_to_token() const { return id_to_token_; }
  const std::vector<bool>& id_used() const { return id_used_; }
  const std::optional<std::string>& unk_token() const { return unk_token_; }

 private:
  BpeModel() = default;
  void TokenizeCached(std::string_view word, std::vector<int32_t>* ids) const;
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;
  // Whether a word may be cut just before a "▁" that follows the character `prev` (see
  // Tokenize).
  bool CanCutBefore(std::string_view prev) const;

  std::vector<std::string> id_to_token_;
  std::vector<bool> id_used_;
  // Strings that share an id with an earlier string: they encode to that id but do not own it.
  std::vector<std::string> alias_tokens_;
  StringIdMap vocab_;  // views into id_to_token_ and alias_tokens_
  PairMap merges_;
  std::optional<std::string> unk_token_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  int32_t byte_ids_[256];  // <0xNN> token ids, -1 where absent
  // Metaspace words are cut before each "▁" when no merge can span the cut (see Tokenize).
  bool cut_at_metaspace_ = false;
  std::vector<std::string> glued_to_metaspace_;  // characters some token has right before "▁"

  // Word cache: most words repeat, so a hit skips the merge loop entirely. Sharded so that
  // concurrent Encode calls rarely contend; a shard stops growing once full (no eviction).
  static constexpr size_t kCacheShards = 32;
  static constexpr size_t kCacheShardCapacity = 4096;
  static constexpr size_t kMaxCachedWordBytes = 256;
  struct CacheShard {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>> map;
  };
  mutable std::unique_ptr<CacheShard[]> cache_{new CacheShard[kCacheShards]};
};

}  // namespace knockout::tokenizer::internal
