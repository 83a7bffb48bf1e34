#include "tokenizer/components.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace knockout::tokenizer::internal {
namespace {

using Ranges = std::vector<std::pair<size_t, size_t>>;

// A "pattern" object of tokenizer.json: {"String": literal} or {"Regex": pattern}.
class Pattern {
 public:
  static StatusOr<Pattern> Parse(const Json& j, const std::string& path) {
    if (!j.is_object()) return TypeError(path, "an object with \"String\" or \"Regex\"", j);
    Pattern p;
    if (const Json* s = Member(j, "String")) {
      if (!s->is_string()) return TypeError(Field(path, "String"), "a string", *s);
      p.literal_ = s->get<std::string>();
      return p;
    }
    if (const Json* r = Member(j, "Regex")) {
      if (!r->is_string()) return TypeError(Field(path, "Regex"), "a string", *r);
      auto re = Regex::Compile(r->get<std::string>());
      if (!re.ok()) return re.status().WithContext(Field(path, "Regex"));
      p.regex_ = std::shared_ptr<Regex>(std::move(re).value());
      return p;
    }
    return Status::InvalidArgument(path + ": expected an object with \"String\" or \"Regex\"");
  }

  void FindAll(std::string_view text, Ranges* out) const {
    if (regex_) {
      regex_->FindAll(text, out);
      return;
    }
    if (literal_.empty()) return;
    size_t pos = 0;
    while ((pos = text.find(literal_, pos)) != std::string_view::npos) {
      out->emplace_back(pos, pos + literal_.size());
      pos += literal_.size();
    }
  }

  // Replaces every match with `content` (taken literally, as the reference does).
  std::string ReplaceAll(std::string_view text, const std::string& content) const {
    Ranges matches;
    FindAll(text, &matches);
    if (matches.empty()) return std::string(text);
    std::string out;
    out.reserve(text.size() + matches.size() * content.size());
    size_t prev = 0;
    for (const auto& [s, e] : matches) {
      out.append(text.substr(prev, s - prev));
      out.append(content);
      prev = e;
    }
    out.append(text.substr(prev));
    return out;
  }

 private:
  std::string literal_;
  std::shared_ptr<Regex> regex_;
};

std::string_view TrimWhiteSpace(std::string_view s, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e) {
      size_t i = b;
      if (!IsWhiteSpace(NextCodePoint(s, &i))) break;
      b = i;
    }
  }
  if (right) {
    while (e > b) {
      size_t start = e - 1;
      while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
      size_t i = start;
      if (!IsWhiteSpace(NextCodePoint(s, &i))) break;
      e = start;
    }
  }
  return s.substr(b, e - b);
}

// Reads a one-character string field (Metaspace's replacement, Strip's content).
StatusOr<std::string> GetChar(const Json& j, const char* key, const std::string& path,
                              std::optional<std::string> fallback) {
  const Json* v = Member(j, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Status::InvalidArgument(Field(path, key) + ": missing");
  }
  if (!v->is_string()) return TypeError(Field(path, key), "a one-character string", *v);
  std::string s = v->get<std::string>();
  if (s.empty() || FindInvalidUtf8(s) != kNoError ||
      Utf8SeqLen(static_cast<unsigned char>(s[0])) != s.size()) {
    return Status::InvalidArgument(Field(path, key) + ": expected a single character, got \"" + s +
                                   "\"");
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Normalizers

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  Status Apply(std::string* text) const override {
    for (const auto& s : steps_) KO_RETURN_IF_ERROR(s->Apply(text));
    return Status::Ok();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  Status Apply(std::string* text) const override {
    *text = pattern_.ReplaceAll(*text, content_);
    return Status::Ok();
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  Status Apply(std::string* text) const override {
    if (!text->empty()) text->insert(0, prepend_);
    return Status::Ok();
  }

 private:
  std::string prepend_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  Status Apply(std::string* text) const override {
    KO_ASSIGN_OR_RETURN(*text, Normalize(*text, form_));
    return Status::Ok();
  }

 private:
  NormalForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  Status Apply(std::string* text) const override {
    *text = Lowercase(*text);
    return Status::Ok();
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  Status Apply(std::string* text) const override {
    *text = std::string(TrimWhiteSpace(*text, left_, right_));
    return Status::Ok();
  }

 private:
  bool left_, right_;
};

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Segment {
  size_t start, end;
  bool is_match;
};

// Splits `piece` at `matches` the way the reference's NormalizedString::split does and appends
// the non-empty results to `out`.
void SplitPiece(const Piece& piece, const Ranges& matches, Behavior behavior, bool invert,
                std::vector<Piece>* out) {
  const std::string& text = piece.text;
  std::vector<Segment> segs;
  segs.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (const auto& [s, e] : matches) {
    if (prev < s) segs.push_back({prev, s, false});
    segs.push_back({s, e, true});
    prev = e;
  }
  if (prev < text.size()) segs.push_back({prev, text.size(), false});
  if (invert) {
    for (Segment& s : segs) s.is_match = !s.is_match;
  }

  std::vector<Segment> result;
  result.reserve(segs.size());
  switch (behavior) {
    case Behavior::kIsolated:
      result = std::move(segs);
      break;
    case Behavior::kRemoved:
      for (const Segment& s : segs) {
        if (!s.is_match) result.push_back(s);
      }
      break;
    case Behavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Segment& s : segs) {
        if (s.is_match && !previous_match && !result.empty()) {
          result.back().end = s.end;
        } else {
          result.push_back({s.start, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->is_match && !previous_match && !result.empty()) {
          result.back().start = it->start;
        } else {
          result.push_back({it->start, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(result.begin(), result.end());
      break;
    }
    case Behavior::kContiguous: {
      bool previous_match = false;
      for (const Segment& s : segs) {
        if (s.is_match == previous_match && !result.empty()) {
          result.back().end = s.end;
        } else {
          result.push_back({s.start, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    }
  }
  for (const Segment& s : result) {
    if (s.end <= s.start) continue;
    out->push_back(Piece{text.substr(s.start, s.end - s.start), piece.at_start && s.start == 0});
  }
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void Apply(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces->size() * 4);
    Ranges matches;
    for (const Piece& p : *pieces) {
      matches.clear();
      pattern_.FindAll(p.text, &matches);
      SplitPiece(p, matches, behavior_, invert_, &out);
    }
    *pieces = std::move(out);
  }

 private:
  Pattern pattern_;
  Behavior behavior_;
  bool invert_;
};

const Regex& Gpt2Regex() {
  static const Regex* re =
      Regex::Compile(
          R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)")
          .value()
          .release();
  return *re;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) Gpt2Regex();  // compile now rather than on the first Encode
  }
  void Apply(std::vector<Piece>* pieces) const override {
    if (add_prefix_space_) {
      for (Piece& p : *pieces) {
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
      }
    }
    if (use_regex_) {
      std::vector<Piece> out;
      out.reserve(pieces->size() * 4);
      Ranges matches;
      for (const Piece& p : *pieces) {
        matches.clear();
        Gpt2Regex().FindAll(p.text, &matches);
        SplitPiece(p, matches, Behavior::kIsolated, false, &out);
      }
      *pieces = std::move(out);
    }
    const auto& table = ByteToUnicode();
    std::string mapped;
    for (Piece& p : *pieces) {
      mapped.clear();
      mapped.reserve(p.text.size() * 2);
      for (const char c : p.text) mapped.append(table[static_cast<unsigned char>(c)]);
      p.text.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

StatusOr<PrependScheme> ParsePrependScheme(const Json& j, const std::string& path) {
  PrependScheme scheme = PrependScheme::kAlways;
  KO_ASSIGN_OR_RETURN(auto name, GetOptString(j, "prepend_scheme", path));
  if (name) {
    if (*name == "always") {
      scheme = PrependScheme::kAlways;
    } else if (*name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (*name == "never") {
      scheme = PrependScheme::kNever;
    } else {
      return Status::InvalidArgument(Field(path, "prepend_scheme") + ": unknown scheme \"" + *name +
                                     "\" (expected always, first or never)");
    }
  }
  // Files written before prepend_scheme existed say add_prefix_space instead.
  if (const Json* aps = Member(j, "add_prefix_space")) {
    if (!aps->is_boolean()) return TypeError(Field(path, "add_prefix_space"), "a boolean", *aps);
    if (!aps->get<bool>()) scheme = PrependScheme::kNever;
  }
  return scheme;
}

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void Apply(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces->size() * 4);
    Ranges matches;
    for (Piece& p : *pieces) {
      std::string text;
      text.reserve(p.text.size() + replacement_.size() * 4);
      for (const char c : p.text) {
        if (c == ' ') {
          text.append(replacement_);
        } else {
          text.push_back(c);
        }
      }
      const bool starts = text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start))) {
        text.insert(0, replacement_);
      }
      Piece np{std::move(text), p.at_start};
      if (!split_) {
        if (!np.text.empty()) out.push_back(std::move(np));
        continue;
      }
      matches.clear();
      size_t pos = 0;
      while ((pos = np.text.find(replacement_, pos)) != std::string::npos) {
        matches.emplace_back(pos, pos + replacement_.size());
        pos += replacement_.size();
      }
      SplitPiece(np, matches, Behavior::kMergedWithNext, false, &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void Apply(std::vector<Piece>* pieces) const override {
    for (const auto& s : steps_) s->Apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// ---------------------------------------------------------------------------------------------
// Decoders

class ByteLevelDecoder : public Decoder {
 public:
  explicit ByteLevelDecoder(const std::unordered_set<std::string>* added) : added_(added) {}
  void Apply(std::vector<std::string>* tokens) const override {
    // Runs of ordinary tokens are mapped back to bytes and decoded together (a character may
    // span tokens); added tokens are kept verbatim, as the JavaScript reference does.
    std::vector<std::string> out;
    std::string bytes;
    auto flush = [&] {
      if (!bytes.empty()) out.push_back(Utf8Lossy(bytes));
      bytes.clear();
    };
    for (const std::string& t : *tokens) {
      if (added_ != nullptr && added_->count(t) > 0) {
        flush();
        out.push_back(t);
        continue;
      }
      // A token with a character outside the byte table contributes its own UTF-8 bytes.
      const size_t mark = bytes.size();
      bool ok = true;
      size_t i = 0;
      while (i < t.size()) {
        const int b = UnicodeToByte(NextCodePoint(t, &i));
        if (b < 0) {
          ok = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!ok) {
        bytes.resize(mark);
        bytes.append(t);
      }
    }
    flush();
    *tokens = std::move(out);
  }

 private:
  const std::unordered_set<std::string>* added_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}
  void Apply(std::vector<std::string>* tokens) const override {
    for (size_t k = 0; k < tokens->size(); ++k) {
      std::string& t = (*tokens)[k];
      // The reference drops every replacement character of the first token (not only a
      // leading one) when it prepends on encode.
      const bool drop = k == 0 && scheme_ != PrependScheme::kNever;
      std::string out;
      out.reserve(t.size());
      size_t pos = 0;
      while (pos < t.size()) {
        if (t.compare(pos, replacement_.size(), replacement_) == 0) {
          if (!drop) out.push_back(' ');
          pos += replacement_.size();
        } else {
          out.push_back(t[pos++]);
        }
      }
      t.swap(out);
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Apply(std::vector<std::string>* tokens) const override {
    for (std::string& t : *tokens) t = pattern_.ReplaceAll(t, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Parses "<0xNN>" into its byte; -1 for any other token.
int ByteToken(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = t[k];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return -1;
    }
    v = v * 16 + d;
  }
  return v;
}

class ByteFallbackDecoder : public Decoder {
 public:
  void Apply(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string bytes;
    for (std::string& t : *tokens) {
      const int b = ByteToken(t);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
        continue;
      }
      if (!bytes.empty()) {
        out.push_back(Utf8Lossy(bytes));
        bytes.clear();
      }
      out.push_back(std::move(t));
    }
    if (!bytes.empty()) out.push_back(Utf8Lossy(bytes));
    *tokens = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void Apply(std::vector<std::string>* tokens) const override {
    std::string all;
    for (const std::string& t : *tokens) all.append(t);
    tokens->assign(1, std::move(all));
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, int64_t start, int64_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void Apply(std::vector<std::string>* tokens) const override {
    const size_t n = content_.size();
    for (std::string& t : *tokens) {
      size_t b = 0, e = t.size();
      for (int64_t k = 0; k < start_ && b + n <= e && t.compare(b, n, content_) == 0; ++k) b += n;
      for (int64_t k = 0; k < stop_ && e >= b + n && t.compare(e - n, n, content_) == 0; ++k) {
        e -= n;
      }
      t = t.substr(b, e - b);
    }
  }

 private:
  std::string content_;
  int64_t start_, stop_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void Apply(std::vector<std::string>* tokens) const override {
    for (const auto& s : steps_) s->Apply(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

Status Unsupported(const std::string& path, const char* what, const std::string& type) {
  return Status::Unimplemented(path + ": unsupported " + what + " type \"" + type + "\"");
}

StatusOr<std::string> GetType(const Json& j, const std::string& path) {
  if (!j.is_object()) return TypeError(path, "an object", j);
  return GetString(j, "type", path);
}

}  // namespace

StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j, const std::string& path) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  KO_ASSIGN_OR_RETURN(std::string type, GetType(j, path));
  if (type == "Sequence") {
    KO_ASSIGN_OR_RETURN(const Json* list, GetArray(j, "normalizers", path));
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      KO_ASSIGN_OR_RETURN(auto step,
                          ParseNormalizer((*list)[i], Index(Field(path, "normalizers"), i)));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  if (type == "Replace") {
    KO_ASSIGN_OR_RETURN(const Json* pattern, GetObject(j, "pattern", path));
    KO_ASSIGN_OR_RETURN(Pattern p, Pattern::Parse(*pattern, Field(path, "pattern")));
    KO_ASSIGN_OR_RETURN(std::string content, GetString(j, "content", path));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(p), std::move(content)));
  }
  if (type == "Prepend") {
    KO_ASSIGN_OR_RETURN(std::string prepend, GetString(j, "prepend", path));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(prepend)));
  }
  if (type == "NFC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNFC));
  if (type == "NFD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNFD));
  if (type == "NFKC") {
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNFKC));
  }
  if (type == "NFKD") {
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNFKD));
  }
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  if (type == "Strip") {
    KO_ASSIGN_OR_RETURN(bool left, GetBool(j, "strip_left", true, path));
    KO_ASSIGN_OR_RETURN(bool right, GetBool(j, "strip_right", true, path));
    return std::unique_ptr<Normalizer>(new StripNormalizer(left, right));
  }
  return Unsupported(path, "normalizer", type);
}

StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j, const std::string& path) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  KO_ASSIGN_OR_RETURN(std::string type, GetType(j, path));
  if (type == "Sequence") {
    KO_ASSIGN_OR_RETURN(const Json* list, GetArray(j, "pretokenizers", path));
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      KO_ASSIGN_OR_RETURN(auto step,
                          ParsePreTokenizer((*list)[i], Index(Field(path, "pretokenizers"), i)));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  if (type == "Split") {
    KO_ASSIGN_OR_RETURN(const Json* pattern, GetObject(j, "pattern", path));
    KO_ASSIGN_OR_RETURN(Pattern p, Pattern::Parse(*pattern, Field(path, "pattern")));
    KO_ASSIGN_OR_RETURN(std::string name, GetString(j, "behavior", path));
    Behavior behavior;
    if (name == "Removed") {
      behavior = Behavior::kRemoved;
    } else if (name == "Isolated") {
      behavior = Behavior::kIsolated;
    } else if (name == "MergedWithPrevious") {
      behavior = Behavior::kMergedWithPrevious;
    } else if (name == "MergedWithNext") {
      behavior = Behavior::kMergedWithNext;
    } else if (name == "Contiguous") {
      behavior = Behavior::kContiguous;
    } else {
      return Status::InvalidArgument(Field(path, "behavior") + ": unknown split behavior \"" +
                                     name + "\"");
    }
    KO_ASSIGN_OR_RETURN(bool invert, GetBool(j, "invert", false, path));
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(p), behavior, invert));
  }
  if (type == "ByteLevel") {
    KO_ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(j, "add_prefix_space", true, path));
    KO_ASSIGN_OR_RETURN(bool use_regex, GetBool(j, "use_regex", true, path));
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(add_prefix_space, use_regex));
  }
  if (type == "Metaspace") {
    KO_ASSIGN_OR_RETURN(std::string replacement,
                        GetChar(j, "replacement", path, std::string("\xE2\x96\x81")));
    KO_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(j, path));
    KO_ASSIGN_OR_RETURN(bool split, GetBool(j, "split", true, path));
    return std::unique_ptr<PreTokenizer>(
        new MetaspacePreTokenizer(std::move(replacement), scheme, split));
  }
  return Unsupported(path, "pre-tokenizer", type);
}

StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j, const std::string& path,
                                                const std::unordered_set<std::string>* added) {
  if (j.is_null()) return std::unique_ptr<Decoder>();
  KO_ASSIGN_OR_RETURN(std::string type, GetType(j, path));
  if (type == "Sequence") {
    KO_ASSIGN_OR_RETURN(const Json* list, GetArray(j, "decoders", path));
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      KO_ASSIGN_OR_RETURN(auto step,
                          ParseDecoder((*list)[i], Index(Field(path, "decoders"), i), added));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(steps)));
  }
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder(added));
  if (type == "Metaspace") {
    KO_ASSIGN_OR_RETURN(std::string replacement,
                        GetChar(j, "replacement", path, std::string("\xE2\x96\x81")));
    KO_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(j, path));
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(std::move(replacement), scheme));
  }
  if (type == "Replace") {
    KO_ASSIGN_OR_RETURN(const Json* pattern, GetObject(j, "pattern", path));
    KO_ASSIGN_OR_RETURN(Pattern p, Pattern::Parse(*pattern, Field(path, "pattern")));
    KO_ASSIGN_OR_RETURN(std::string content, GetString(j, "content", path));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(p), std::move(content)));
  }
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Strip") {
    KO_ASSIGN_OR_RETURN(std::string content, GetChar(j, "content", path, std::nullopt));
    KO_ASSIGN_OR_RETURN(int64_t start, GetInt(j, "start", 0, path));
    KO_ASSIGN_OR_RETURN(int64_t stop, GetInt(j, "stop", 0, path));
    if (start < 0 || stop < 0) {
      return Status::InvalidArgument(path + ": start and stop must not be negative");
    }
    return std::unique_ptr<Decoder>(new StripDecoder(std::move(content), start, stop));
  }
  return Unsupported(path, "decoder", type);
}

StatusOr<PostProcessor> ParsePostProcessor(const Json& j, const std::string& path) {
  PostProcessor pp;
  if (j.is_null()) return pp;
  KO_ASSIGN_OR_RETURN(std::string type, GetType(j, path));
  if (type == "ByteLevel") return pp;  // only trims offsets, which we do not report
  if (type == "Sequence") {
    KO_ASSIGN_OR_RETURN(const Json* list, GetArray(j, "processors", path));
    for (size_t i = 0; i < list->size(); ++i) {
      KO_ASSIGN_OR_RETURN(PostProcessor inner,
                          ParsePostProcessor((*list)[i], Index(Field(path, "processors"), i)));
      // Each processor wraps the output of the previous one.
      inner.prefix.insert(inner.prefix.end(), pp.prefix.begin(), pp.prefix.end());
      pp.prefix = std::move(inner.prefix);
      pp.suffix.insert(pp.suffix.end(), inner.suffix.begin(), inner.suffix.end());
    }
    return pp;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    int64_t ids[2];
    const char* keys[2] = {"cls", "sep"};
    for (int k = 0; k < 2; ++k) {
      const Json* v = Member(j, keys[k]);
      const std::string field = Field(path, keys[k]);
      if (v == nullptr) return Status::InvalidArgument(field + ": missing");
      if (!v->is_array() || v->size() != 2 || !(*v)[0].is_string()) {
        return TypeError(field, "a [token, id] pair", *v);
      }
      KO_ASSIGN_OR_RETURN(ids[k], AsInt((*v)[1], Index(field, 1)));
    }
    pp.prefix = {ids[0]};
    pp.suffix = {ids[1]};
    return pp;
  }
  if (type == "TemplateProcessing") {
    KO_ASSIGN_OR_RETURN(const Json* single, GetArray(j, "single", path));
    const Json* specials = Member(j, "special_tokens");
    if (specials != nullptr && !specials->is_object()) {
      return TypeError(Field(path, "special_tokens"), "an object", *specials);
    }
    bool seen_a = false;
    for (size_t i = 0; i < single->size(); ++i) {
      const Json& item = (*single)[i];
      const std::string item_path = Index(Field(path, "single"), i);
      if (const Json* seq = Member(item, "Sequence")) {
        KO_ASSIGN_OR_RETURN(std::string id, GetString(*seq, "id", Field(item_path, "Sequence")));
        if (id != "A") {
          return Status::InvalidArgument(item_path + ": the single template uses sequence \"" + id +
                                         "\"");
        }
        if (seen_a) {
          return Status::Unimplemented(item_path + ": a template repeating sequence A");
        }
        seen_a = true;
        continue;
      }
      const Json* special = Member(item, "SpecialToken");
      if (special == nullptr) {
        return Status::InvalidArgument(item_path +
                                       ": expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
      KO_ASSIGN_OR_RETURN(std::string name,
                          GetString(*special, "id", Field(item_path, "SpecialToken")));
      const Json* entry = specials == nullptr ? nullptr : Member(*specials, name.c_str());
      const std::string entry_path = Field(path, "special_tokens") + "[\"" + name + "\"]";
      if (entry == nullptr) {
        return Status::InvalidArgument(item_path + ": special token \"" + name + "\" is not in " +
                                       Field(path, "special_tokens"));
      }
      KO_ASSIGN_OR_RETURN(const Json* ids, GetArray(*entry, "ids", entry_path));
      for (size_t k = 0; k < ids->size(); ++k) {
        KO_ASSIGN_OR_RETURN(int64_t id, AsInt((*ids)[k], Index(Field(entry_path, "ids"), k)));
        (seen_a ? pp.suffix : pp.prefix).push_back(id);
      }
    }
    return pp;
  }
  return Unsupported(path, "post-processor", type);
}

}  // namespace knockout::tokenizer::internal
