// A compiled PCRE2 regular expression (8-bit, UTF + UCP, JIT when available) for the patterns
// of tokenizer.json files. `\s` / `\S` outside character classes and `\s` inside them are
// rewritten to Unicode White_Space so they match what the Rust engines of the reference match.
// Internal to tokenizer/. A Regex is immutable after Compile and FindAll may be called
// from many threads at once (match state is per thread).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

struct pcre2_real_code_8;

namespace knockout::tokenizer::internal {

class Regex {
 public:
  // InvalidArgument (PCRE2's message and the pattern offset) if `pattern` does not compile.
  static StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [start, end) byte ranges of all non-overlapping matches in `s`, left to right.
  // `s` must be valid UTF-8. An empty match moves the search on by one character.
  void FindAll(std::string_view s, std::vector<std::pair<size_t, size_t>>* matches) const;

  // Exposed for tests: the pattern after the `\s` rewrite.
  static std::string RewriteWhitespace(std::string_view pattern);

 private:
  Regex() = default;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

}  // namespace knockout::tokenizer::internal
