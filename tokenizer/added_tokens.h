// Added tokens (special and not) and the matcher that finds them in text before normalization
// and pre-tokenization, with the reference's rules: leftmost-longest matches, lstrip/rstrip
// absorbing neighbouring whitespace, single_word requiring word boundaries. Internal to
// tokenizer/; immutable after Build, so Split may run from many threads at once.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace knockout::tokenizer::internal {

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A [start, end) range of the input: an added token (token >= 0, an index into the token list)
// or plain text (token == -1).
struct Segment {
  size_t start;
  size_t end;
  int32_t token;
};

class AddedTokenMatcher {
 public:
  // `patterns[i]` is what token `indices[i]` of `tokens` looks like in the text it is matched
  // against (its content, or its normalized content). `tokens` must outlive the matcher.
  void Build(const std::vector<AddedToken>* tokens, const std::vector<std::string>& patterns,
             const std::vector<int32_t>& indices);
  bool empty() const { return node_token_.size() <= 1; }

  // Splits `text` into segments covering it entirely (text segments are never empty).
  void Split(std::string_view text, std::vector<Segment>* out) const;

 private:
  // The leftmost-longest match starting at or after `from`.
  bool FindNext(std::string_view s, size_t from, size_t* start, size_t* end, int32_t* token) const;
  int32_t Child(int32_t node, unsigned char byte) const;

  const std::vector<AddedToken>* tokens_ = nullptr;
  std::vector<int32_t> node_token_;              // per trie node: the token ending there, or -1
  std::array<int32_t, 256> root_{};              // children of the root, -1 where absent
  std::unordered_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> child, below the root
};

}  // namespace knockout::tokenizer::internal
