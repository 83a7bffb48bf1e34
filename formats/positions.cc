#include "formats/positions.h"

#include <algorithm>
#include <cctype>
#include <limits>

namespace knockout::formats {
namespace {

constexpr std::string_view kExpected =
    "expected inst_last, inst, post_inst, post_inst[-k] (k >= 1), all or a list like [3,-1]";

// "position \"TEXT\": why"; callers prefix where the text was written.
Status BadPosition(std::string_view text, std::string_view why) {
  return Status::InvalidArgument("position \"" + std::string(text) + "\": " + std::string(why));
}

std::string_view Trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

// An optionally signed decimal int32, nothing else (surrounding blanks allowed).
bool ParseInt32(std::string_view text, int32_t* out) {
  text = Trim(text);
  bool negative = false;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    negative = text[0] == '-';
    text.remove_prefix(1);
  }
  if (text.empty() || text.size() > 10) return false;
  int64_t value = 0;
  for (char c : text) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    value = value * 10 + (c - '0');
  }
  if (negative) value = -value;
  if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max()) {
    return false;
  }
  *out = static_cast<int32_t>(value);
  return true;
}

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && text.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

StatusOr<Positions> ParsePositions(std::string_view text) {
  if (text == "inst_last") return Positions::InstLast();
  if (text == "inst") return Positions::Inst();
  if (text == "post_inst") return Positions::PostInst();
  if (text == "all") return Positions::All();
  constexpr std::string_view kPostInst = "post_inst[";
  if (StartsWith(text, kPostInst) && text.size() > kPostInst.size() + 1 && text.back() == ']') {
    int32_t index = 0;
    if (!ParseInt32(text.substr(kPostInst.size(), text.size() - kPostInst.size() - 1), &index)) {
      return BadPosition(text, kExpected);
    }
    if (index >= 0) {
      return BadPosition(text, "the index counts from the prompt's end: -1 is the last token");
    }
    return Positions::PostInstAt(index);
  }
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    const std::string_view inner = text.substr(1, text.size() - 2);
    if (Trim(inner).empty()) return BadPosition(text, "the list of positions is empty");
    std::vector<int32_t> indices;
    // Every comma splits, so that "[1,,2]" and "[1,]" fail rather than lose an item.
    for (size_t start = 0;;) {
      const size_t comma = inner.find(',', start);
      int32_t index = 0;
      const size_t end = comma == std::string_view::npos ? inner.size() : comma;
      if (!ParseInt32(inner.substr(start, end - start), &index)) {
        return BadPosition(text, kExpected);
      }
      indices.push_back(index);
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
    return Positions::Explicit(std::move(indices));
  }
  int32_t bare = 0;
  if (!text.empty() && text.find(',') == std::string_view::npos && ParseInt32(text, &bare)) {
    return BadPosition(text, "explicit positions are a list: write [" + std::string(Trim(text)) +
                                 "]");
  }
  return BadPosition(text, kExpected);
}

std::string PositionsName(const Positions& positions) {
  switch (positions.kind) {
    case Positions::Kind::kInstLast:
      return "inst_last";
    case Positions::Kind::kInst:
      return "inst";
    case Positions::Kind::kPostInst:
      return "post_inst";
    case Positions::Kind::kPostInstAt:
      return "post_inst[" + std::to_string(positions.index) + "]";
    case Positions::Kind::kAll:
      return "all";
    case Positions::Kind::kExplicit: {
      std::string out = "[";
      for (size_t i = 0; i < positions.indices.size(); ++i) {
        out += (i == 0 ? "" : ",") + std::to_string(positions.indices[i]);
      }
      return out + "]";
    }
  }
  return "unknown";
}

StatusOr<std::vector<int64_t>> ResolvePositions(const Positions& positions,
                                                const PromptLayout& prompt) {
  const int64_t n = prompt.length;
  const int64_t post = n - prompt.post_begin;  // post-instruction tokens
  auto fail = [&](const std::string& why) {
    return BadPosition(PositionsName(positions), why);
  };
  std::vector<int64_t> out;
  switch (positions.kind) {
    case Positions::Kind::kInstLast:
      if (prompt.instruction_end <= 0 || prompt.instruction_end > n) {
        return fail("the prompt has no instruction token");
      }
      out.push_back(prompt.instruction_end - 1);
      break;
    case Positions::Kind::kInst:
      if (prompt.instruction_end <= prompt.instruction_begin || prompt.instruction_begin < 0 ||
          prompt.instruction_end > n) {
        return fail("the prompt has no instruction token");
      }
      for (int64_t i = prompt.instruction_begin; i < prompt.instruction_end; ++i) out.push_back(i);
      break;
    case Positions::Kind::kPostInst:
      for (int64_t i = prompt.post_begin; i < n; ++i) out.push_back(i);
      break;
    case Positions::Kind::kPostInstAt: {
      const int64_t k = -static_cast<int64_t>(positions.index);
      if (k < 1) return fail("the index counts from the prompt's end: -1 is the last token");
      if (k > post) {
        return fail("the prompt has only " + std::to_string(post) + " post-instruction tokens");
      }
      out.push_back(n - k);
      break;
    }
    case Positions::Kind::kAll:
      for (int64_t i = 0; i < n; ++i) out.push_back(i);
      break;
    case Positions::Kind::kExplicit:
      if (positions.indices.empty()) return fail("the list of positions is empty");
      for (int32_t index : positions.indices) {
        const int64_t resolved = index < 0 ? n + index : index;
        if (resolved < 0 || resolved >= n) {
          return fail("index " + std::to_string(index) + " outside a prompt of " +
                      std::to_string(n) + " tokens");
        }
        out.push_back(resolved);
      }
      std::sort(out.begin(), out.end());
      out.erase(std::unique(out.begin(), out.end()), out.end());
      break;
  }
  return out;
}

StatusOr<std::vector<int64_t>> ResolvePaddedPositions(const Positions& positions,
                                                      const PromptLayout& prompt,
                                                      int64_t padded_length) {
  if (padded_length < prompt.length) {
    return Status::InvalidArgument("padded length " + std::to_string(padded_length) +
                                   " is shorter than the prompt (" +
                                   std::to_string(prompt.length) + " tokens)");
  }
  KO_ASSIGN_OR_RETURN(std::vector<int64_t> indices, ResolvePositions(positions, prompt));
  const int64_t shift = padded_length - prompt.length;  // left padding
  for (int64_t& i : indices) i += shift;
  return indices;
}

}  // namespace knockout::formats
