#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/unicode.h"

namespace knockout::tokenizer::internal {
namespace {

// Unicode White_Space, as a character-class body. PCRE2's own `\s` under UCP also matches
// U+180E (it follows `\h`), which Unicode stopped counting as a space in 6.3 and which the
// reference engines do not match.
constexpr std::string_view kWhiteSpaceClass =
    "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

// Per-thread match state: PCRE2 match data and a JIT stack that can grow past the 32 KiB
// default (long runs of one character class recurse in JIT code).
struct ThreadMatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadMatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context != nullptr && stack != nullptr) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

ThreadMatchState& MatchState() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

std::string Regex::RewriteWhitespace(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      if (e == 'Q') {  // \Q...\E quotes literally: copy through untouched
        const size_t end = p.find("\\E", i + 2);
        const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
        out.append(p.substr(i, stop - i));
        i = stop;
        continue;
      }
      if (e == 's') {
        if (in_class) {
          out.append(kWhiteSpaceClass);
        } else {
          out.append("[").append(kWhiteSpaceClass).append("]");
        }
        i += 2;
        continue;
      }
      if (e == 'S' && !in_class) {
        out.append("[^").append(kWhiteSpaceClass).append("]");
        i += 2;
        continue;
      }
      out.append(p.substr(i, 2));
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
      if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX [:name:]
      const size_t end = p.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(p.substr(i, end + 2 - i));
        i = end + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
    ++i;
  }
  return out;
}

StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  const std::string rewritten = RewriteWhitespace(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buffer[256];
    pcre2_get_error_message(error_code, buffer, sizeof(buffer));
    return Status::InvalidArgument("regex does not compile (" +
                                   std::string(reinterpret_cast<char*>(buffer)) + " near offset " +
                                   std::to_string(error_offset) + ")");
  }
  std::unique_ptr<Regex> re(new Regex());
  re->code_ = code;
  // JIT is an optimisation only: when it is unavailable the interpreter gives the same matches.
  re->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return re;
}

Regex::~Regex() { pcre2_code_free(code_); }

void Regex::FindAll(std::string_view s, std::vector<std::pair<size_t, size_t>>* matches) const {
  ThreadMatchState& st = MatchState();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc;
    if (jit_) {
      rc = pcre2_jit_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
    } else {
      rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
    }
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // Pathological input for the JIT stack: the interpreter has no such limit (its own heap
      // limit is far larger), so redo this one search there.
      rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, st.data,
                       nullptr);
    }
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH, or an error we cannot do better on
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const size_t start = ov[0], end = ov[1];
    matches->emplace_back(start, end);
    if (end > start) {
      pos = end;
    } else {
      if (start >= s.size()) break;
      pos = start + Utf8SeqLen(static_cast<unsigned char>(s[start]));
    }
  }
}

}  // namespace knockout::tokenizer::internal
