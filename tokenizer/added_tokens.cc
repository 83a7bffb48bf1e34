#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/unicode.h"

namespace knockout::tokenizer::internal {
namespace {

bool EndsWithWord(std::string_view s) {
  if (s.empty()) return false;
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return IsWordChar(NextCodePoint(s, &start));
}

bool StartsWithWord(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return IsWordChar(NextCodePoint(s, &i));
}

// Start of the whitespace run that ends `s`.
size_t TrailingSpaceStart(std::string_view s) {
  size_t e = s.size();
  while (e > 0) {
    size_t start = e - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t i = start;
    if (!IsWhiteSpace(NextCodePoint(s, &i))) break;
    e = start;
  }
  return e;
}

// Length of the whitespace run that starts `s`.
size_t LeadingSpaceLength(std::string_view s) {
  size_t b = 0;
  while (b < s.size()) {
    size_t i = b;
    if (!IsWhiteSpace(NextCodePoint(s, &i))) break;
    b = i;
  }
  return b;
}

}  // namespace

void AddedTokenMatcher::Build(const std::vector<AddedToken>* tokens,
                              const std::vector<std::string>& patterns,
                              const std::vector<int32_t>& indices) {
  tokens_ = tokens;
  node_token_.assign(1, -1);
  root_.fill(-1);
  edges_.clear();
  for (size_t k = 0; k < patterns.size(); ++k) {
    const std::string& p = patterns[k];
    if (p.empty()) continue;
    int32_t node = 0;
    for (const char ch : p) {
      const auto b = static_cast<unsigned char>(ch);
      int32_t next = Child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(node_token_.size());
        node_token_.push_back(-1);
        if (node == 0) {
          root_[b] = next;
        } else {
          edges_.emplace((static_cast<uint64_t>(node) << 8) | b, next);
        }
      }
      node = next;
    }
    // The first token with a given text keeps it.
    if (node_token_[node] < 0) node_token_[node] = indices[k];
  }
}

int32_t AddedTokenMatcher::Child(int32_t node, unsigned char byte) const {
  if (node == 0) return root_[byte];
  auto it = edges_.find((static_cast<uint64_t>(node) << 8) | byte);
  return it == edges_.end() ? -1 : it->second;
}

bool AddedTokenMatcher::FindNext(std::string_view s, size_t from, size_t* start, size_t* end,
                                 int32_t* token) const {
  for (size_t i = from; i < s.size(); ++i) {
    int32_t node = root_[static_cast<unsigned char>(s[i])];
    if (node < 0) continue;
    int32_t best = -1;
    size_t best_end = 0;
    size_t j = i + 1;
    while (true) {
      if (node_token_[node] >= 0) {
        best = node_token_[node];
        best_end = j;
      }
      if (j >= s.size()) break;
      node = Child(node, static_cast<unsigned char>(s[j]));
      if (node < 0) break;
      ++j;
    }
    if (best >= 0) {
      *start = i;
      *end = best_end;
      *token = best;
      return true;
    }
  }
  return false;
}

void AddedTokenMatcher::Split(std::string_view text, std::vector<Segment>* out) const {
  size_t consumed = 0;  // end of the last emitted segment
  size_t pos = 0;       // where the next search starts
  size_t ms, me;
  int32_t tok;
  while (!empty() && FindNext(text, pos, &ms, &me, &tok)) {
    pos = me;
    const AddedToken& t = (*tokens_)[tok];
    if (t.single_word) {
      const bool start_ok = ms == 0 || !EndsWithWord(text.substr(0, ms));
      const bool stop_ok = me == text.size() || !StartsWithWord(text.substr(me));
      if (!start_ok || !stop_ok) continue;  // not a whole word: leave it to the model
    }
    size_t start = ms, stop = me;
    if (t.lstrip) start = std::max(TrailingSpaceStart(text.substr(0, ms)), consumed);
    if (t.rstrip) {
      stop += LeadingSpaceLength(text.substr(me));
      pos = stop;  // the absorbed whitespace cannot start another match
    }
    if (consumed < start) out->push_back(Segment{consumed, start, -1});
    out->push_back(Segment{start, stop, tok});
    consumed = stop;
  }
  if (consumed < text.size()) out->push_back(Segment{consumed, text.size(), -1});
}

}  // namespace knockout::tokenizer::internal
