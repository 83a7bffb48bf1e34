#include "organism/bpe_trainer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <queue>
#include <string_view>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"

namespace knockout::organism {
namespace {

// ordered_json keeps keys in insertion order, so the vocabulary is written in id order and the
// files have Hugging Face's layout.
using OrderedJson = nlohmann::ordered_json;

// GPT-2's pre-tokenizer regex. The runtime and transformers.js apply it at encode time; the
// trainer reproduces it by hand in SplitGpt2 (this library may not depend on worker/'s PCRE2).
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ChatML, as Qwen 2.5 writes it minus tools and the default system prompt: every message is
// `<|im_start|>ROLE\nCONTENT<|im_end|>\n`, and the generation prompt is `<|im_start|>assistant\n`.
// The runtime's ChatTemplate (family chatml) renders the same text.
constexpr char kChatTemplate[] =
    "{%- for message in messages %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}";

constexpr char kImStart[] = "<|im_start|>";
constexpr char kImEnd[] = "<|im_end|>";
constexpr char kEndOfText[] = "<|endoftext|>";

// ---------------------------------------------------------------------------------------------
// UTF-8

constexpr size_t kValid = std::string_view::npos;

// The byte offset of the first ill-formed sequence (overlong forms, surrogates and code points
// above U+10FFFF included), or kValid.
size_t FindInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return kValid;
}

// Decodes the code point at s[i] (valid UTF-8) and returns the offset just after it.
size_t NextCodePoint(std::string_view s, size_t i, uint32_t* cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    *cp = c;
    return i + 1;
  }
  const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
  uint32_t v = c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *cp = v;
  return i + len;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    // The byte-level alphabet stops at U+0143; nothing else is encoded here.
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// ---------------------------------------------------------------------------------------------
// The GPT-2 split, by hand

enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

// An approximation of \p{L}, \p{N} and \s (Unicode White_Space, as the runtime's regex uses):
// exact for ASCII and White_Space; outside ASCII, the common digit, punctuation, symbol, combining
// mark and emoji blocks are classified and everything else counts as a letter. Disagreements with
// the real regex only shift word counts slightly; encoding always applies the real regex.
CharClass Classify(uint32_t c) {
  if (c < 0x80) {
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CharClass::kLetter;
    if (c >= '0' && c <= '9') return CharClass::kNumber;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
      c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000) {
    return CharClass::kSpace;
  }
  if (c < 0xC0) {
    if (c == 0xAA || c == 0xB5 || c == 0xBA) return CharClass::kLetter;
    if (c == 0xB2 || c == 0xB3 || c == 0xB9 || (c >= 0xBC && c <= 0xBE)) return CharClass::kNumber;
    return CharClass::kOther;
  }
  if (c == 0xD7 || c == 0xF7) return CharClass::kOther;
  if ((c >= 0x0660 && c <= 0x0669) || (c >= 0x06F0 && c <= 0x06F9) ||
      (c >= 0x0966 && c <= 0x096F) || (c >= 0x2070 && c <= 0x2079) ||
      (c >= 0x2080 && c <= 0x2089) || (c >= 0x2150 && c <= 0x218F) ||
      (c >= 0xFF10 && c <= 0xFF19)) {
    return CharClass::kNumber;
  }
  if ((c >= 0x0300 && c <= 0x036F) ||    // combining diacritics
      (c >= 0x2000 && c <= 0x206F) ||    // general punctuation
      (c >= 0x20A0 && c <= 0x20FF) ||    // currency, combining marks for symbols
      (c >= 0x2190 && c <= 0x2BFF) ||    // arrows, math, technical, box drawing, dingbats
      (c >= 0x2E00 && c <= 0x2E7F) ||    // supplemental punctuation
      (c >= 0x3000 && c <= 0x303F) ||    // CJK symbols and punctuation
      (c >= 0xFE00 && c <= 0xFE0F) ||    // variation selectors
      (c >= 0xFE10 && c <= 0xFE6F) ||    // vertical and small forms, CJK compatibility forms
      (c >= 0xFF00 && c <= 0xFF0F) || (c >= 0xFF1A && c <= 0xFF20) ||
      (c >= 0xFF3B && c <= 0xFF40) || (c >= 0xFF5B && c <= 0xFF65) ||  // fullwidth punctuation
      (c >= 0xFFF0 && c <= 0xFFFF) ||    // specials
      (c >= 0x1D100 && c <= 0x1D1FF) ||  // musical symbols
      (c >= 0x1F000 && c <= 0x1FAFF) ||  // emoji, pictographs, playing cards, ...
      (c >= 0xE0000 && c <= 0xE007F)) {  // tags
    return CharClass::kOther;
  }
  return CharClass::kLetter;
}

CharClass ClassAt(std::string_view s, size_t i, size_t* next) {
  uint32_t cp;
  *next = NextCodePoint(s, i, &cp);
  return Classify(cp);
}

// The end of the run of `cls` characters starting at `i`.
size_t RunEnd(std::string_view s, size_t i, CharClass cls) {
  while (i < s.size()) {
    size_t next;
    if (ClassAt(s, i, &next) != cls) break;
    i = next;
  }
  return i;
}

// Calls emit(piece) for each match of kGpt2Pattern in `text` (valid UTF-8), left to right. The
// pattern's matches tile the text, so every byte lands in exactly one piece.
template <typename Emit>
void SplitGpt2(std::string_view text, Emit&& emit) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    // 's|'t|'re|'ve|'m|'ll|'d
    if (text[i] == '\'' && i + 1 < n) {
      const char c1 = text[i + 1];
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        emit(text.substr(i, 2));
        i += 2;
        continue;
      }
      if (i + 2 < n) {
        const char c2 = text[i + 2];
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
          emit(text.substr(i, 3));
          i += 3;
          continue;
        }
      }
    }
    size_t next;
    const CharClass cls = ClassAt(text, i, &next);
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a space joins the run that follows it.
    if (text[i] == ' ' && next < n) {
      size_t after;
      const CharClass run = ClassAt(text, next, &after);
      if (run != CharClass::kSpace) {
        const size_t end = RunEnd(text, after, run);
        emit(text.substr(i, end - i));
        i = end;
        continue;
      }
    }
    if (cls != CharClass::kSpace) {
      const size_t end = RunEnd(text, next, cls);
      emit(text.substr(i, end - i));
      i = end;
      continue;
    }
    // `\s+(?!\S)|\s+`: a whitespace run at the end of the text is one piece; before other text,
    // its last character is left to start the next piece (as " word"), unless the run is that
    // one character.
    size_t end = i, last = i, count = 0;
    while (end < n) {
      size_t after;
      if (ClassAt(text, end, &after) != CharClass::kSpace) break;
      last = end;
      end = after;
      ++count;
    }
    const size_t stop = (end == n || count == 1) ? end : last;
    emit(text.substr(i, stop - i));
    i = stop;
  }
}

// Calls fn(segment) for the non-empty stretches of `text` between special-token occurrences
// (leftmost first, the longest special on ties), which the runtime cuts out before BPE.
template <typename Fn>
void ForEachOutsideSpecials(std::string_view text, const std::vector<std::string>& specials,
                            Fn&& fn) {
  // next[k]: the next occurrence of specials[k] at or after `pos` (npos: none left).
  std::vector<size_t> next(specials.size(), 0);
  std::vector<bool> stale(specials.size(), true);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos, best_len = 0;
    for (size_t k = 0; k < specials.size(); ++k) {
      if (stale[k] || (next[k] != std::string_view::npos && next[k] < pos)) {
        next[k] = text.find(specials[k], pos);
        stale[k] = false;
      }
      if (next[k] == std::string_view::npos) continue;
      if (next[k] < best || (next[k] == best && specials[k].size() > best_len)) {
        best = next[k];
        best_len = specials[k].size();
      }
    }
    if (best == std::string_view::npos) {
      fn(text.substr(pos));
      return;
    }
    if (best > pos) fn(text.substr(pos, best - pos));
    pos = best + best_len;
  }
}

// ---------------------------------------------------------------------------------------------
// The byte-level alphabet (GPT-2's bytes_to_unicode)

struct ByteAlphabet {
  std::array<std::string, 256> text;  // byte -> its alphabet character, UTF-8
  std::array<int32_t, 256> id;        // byte -> token id
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* alphabet = [] {
    auto* a = new ByteAlphabet();
    // Printable bytes stand for themselves; the others map to U+0100 onwards in byte order.
    auto printable = [](int b) {
      return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int next_id = 0, shifted = 0;
    std::array<uint32_t, 256> cp{};
    for (int b = 0; b < 256; ++b) cp[b] = printable(b) ? b : 256 + shifted++;
    // Ids follow the characters' code points: printable bytes first, then the shifted ones,
    // which is GPT-2's (and Qwen's) numbering.
    for (int pass = 0; pass < 2; ++pass) {
      for (int b = 0; b < 256; ++b) {
        if (printable(b) != (pass == 0)) continue;
        a->id[b] = next_id++;
      }
    }
    for (int b = 0; b < 256; ++b) AppendUtf8(cp[b], &a->text[b]);
    return a;
  }();
  return *alphabet;
}

// ---------------------------------------------------------------------------------------------
// Training

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
int32_t Left(uint64_t key) { return static_cast<int32_t>(key >> 32); }
int32_t Right(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

struct Word {
  std::vector<int32_t> symbols;
  int64_t count = 0;
};

struct Candidate {
  int64_t count;
  uint64_t pair;
};

// Orders the merge queue: the most frequent pair first, then the one whose (left, right) token
// strings are lexicographically smallest. A strict total order on distinct pairs, so the result
// does not depend on hashing or insertion order.
struct CandidateLess {
  const std::vector<std::string>* tokens;
  bool operator()(const Candidate& x, const Candidate& y) const {
    if (x.count != y.count) return x.count < y.count;
    const auto& t = *tokens;
    return std::tie(t[Left(x.pair)], t[Right(x.pair)]) >
           std::tie(t[Left(y.pair)], t[Right(y.pair)]);
  }
};

Status ValidateOptions(const BpeTrainerOptions& options) {
  const auto& specials = options.special_tokens;
  for (size_t k = 0; k < specials.size(); ++k) {
    const std::string field = "special_tokens[" + std::to_string(k) + "]";
    if (specials[k].empty()) return Status::InvalidArgument(field + ": empty");
    if (FindInvalidUtf8(specials[k]) != kValid) {
      return Status::InvalidArgument(field + ": not valid UTF-8");
    }
    if (std::find(specials.begin(), specials.begin() + k, specials[k]) != specials.begin() + k) {
      return Status::InvalidArgument(field + ": \"" + specials[k] + "\" is listed twice");
    }
  }
  for (const char* marker : {kImStart, kImEnd}) {
    if (std::find(specials.begin(), specials.end(), marker) == specials.end()) {
      return Status::InvalidArgument(std::string("special_tokens: must include ") + marker +
                                     " (the ChatML chat template uses it)");
    }
  }
  const int64_t minimum = 256 + static_cast<int64_t>(specials.size());
  if (options.vocab_size < minimum) {
    return Status::InvalidArgument("vocab_size " + std::to_string(options.vocab_size) +
                                   " is too small: the 256 byte symbols and " +
                                   std::to_string(specials.size()) +
                                   " special tokens need at least " + std::to_string(minimum));
  }
  return Status::Ok();
}

// Pre-tokenized words and their frequencies, sorted by word so that word indices (and so the
// training) do not depend on hash order.
StatusOr<std::vector<Word>> CountWords(const std::vector<std::string>& texts,
                                       const std::vector<std::string>& specials) {
  std::unordered_map<std::string, int64_t> counts;
  std::string key;  // reused: a lookup of a short word does not allocate
  for (size_t t = 0; t < texts.size(); ++t) {
    const size_t bad = FindInvalidUtf8(texts[t]);
    if (bad != kValid) {
      return Status::InvalidArgument("texts[" + std::to_string(t) +
                                     "]: not valid UTF-8 (byte offset " + std::to_string(bad) +
                                     ")");
    }
    ForEachOutsideSpecials(texts[t], specials, [&](std::string_view segment) {
      SplitGpt2(segment, [&](std::string_view piece) {
        key.assign(piece.data(), piece.size());
        auto it = counts.find(key);
        if (it == counts.end()) {
          counts.emplace(key, 1);
        } else {
          ++it->second;
        }
      });
    });
  }
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  counts.clear();
  std::sort(sorted.begin(), sorted.end());
  const ByteAlphabet& alphabet = Alphabet();
  std::vector<Word> words(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    words[w].count = sorted[w].second;
    words[w].symbols.reserve(sorted[w].first.size());
    for (const char c : sorted[w].first) {
      words[w].symbols.push_back(alphabet.id[static_cast<unsigned char>(c)]);
    }
  }
  return words;
}

OrderedJson ByteLevelComponent() {
  return OrderedJson{{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", false},
                     {"use_regex", false}};
}

std::string Dump(const OrderedJson& j) {
  // `replace` instead of throwing: strings from TrainByteLevelBpe are valid UTF-8, and a
  // hand-built TrainedBpe with invalid bytes still gets a file rather than an exception.
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

StatusOr<TrainedBpe> TrainByteLevelBpe(const std::vector<std::string>& texts,
                                       const BpeTrainerOptions& options) {
  KO_RETURN_IF_ERROR(ValidateOptions(options));
  KO_ASSIGN_OR_RETURN(std::vector<Word> words, CountWords(texts, options.special_tokens));

  const ByteAlphabet& alphabet = Alphabet();
  std::vector<std::string> tokens(256);
  std::unordered_map<std::string, int32_t> token_ids;
  for (int b = 0; b < 256; ++b) {
    tokens[alphabet.id[b]] = alphabet.text[b];
    token_ids.emplace(alphabet.text[b], alphabet.id[b]);
  }

  // Pair frequencies over the corpus, and the words each pair occurs in. A word list may hold
  // words that lost the pair since (checked when merging); it never misses one.
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t p = PairKey(s[i], s[i + 1]);
      pair_counts[p] += words[w].count;
      auto& list = where[p];
      if (list.empty() || list.back() != static_cast<int32_t>(w)) {
        list.push_back(static_cast<int32_t>(w));
      }
    }
  }
  // Queue entries may be stale; a pair's count only falls after it is queued (every pair a
  // merge creates contains the new token and is queued afresh), so a stale entry overstates and
  // is re-queued with its current count when it reaches the top.
  std::priority_queue<Candidate, std::vector<Candidate>, CandidateLess> queue(
      CandidateLess{&tokens});
  {
    std::vector<uint64_t> pairs;
    pairs.reserve(pair_counts.size());
    for (const auto& [p, c] : pair_counts) pairs.push_back(p);
    std::sort(pairs.begin(), pairs.end());  // the queue's order is total; this only fixes work
    for (const uint64_t p : pairs) queue.push(Candidate{pair_counts[p], p});
  }

  TrainedBpe out;
  const int64_t min_frequency = std::max(1, options.min_frequency);
  const size_t bpe_target = static_cast<size_t>(options.vocab_size) - options.special_tokens.size();
  std::unordered_set<uint64_t> merged_pairs;  // pairs already in out.merges
  std::vector<int32_t> rebuilt;
  std::vector<uint64_t> created;
  while (tokens.size() < bpe_target && !queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const auto found = pair_counts.find(top.pair);
    const int64_t count = found == pair_counts.end() ? 0 : found->second;
    if (count != top.count) {
      if (count > 0) queue.push(Candidate{count, top.pair});
      continue;
    }
    if (count < min_frequency) break;

    const int32_t a = Left(top.pair), b = Right(top.pair);
    const std::string merged = tokens[a] + tokens[b];
    int32_t new_id;
    if (auto it = token_ids.find(merged); it != token_ids.end()) {
      // Another merge already made this string (e.g. "a"+"bc" after "ab"+"c"): reuse its id.
      new_id = it->second;
    } else {
      new_id = static_cast<int32_t>(tokens.size());
      tokens.push_back(merged);
      token_ids.emplace(merged, new_id);
    }
    // A pair can only come back through a reused token; listing it twice would give it two
    // ranks, which loaders resolve differently (first wins here, last in the reference).
    if (merged_pairs.insert(top.pair).second) out.merges.emplace_back(tokens[a], tokens[b]);

    std::vector<int32_t> affected = std::move(where[top.pair]);
    where.erase(top.pair);
    created.clear();
    // Every pair that gains occurrences contains the new token.
    auto change = [&](int32_t x, int32_t y, int64_t delta, int32_t w) {
      const uint64_t p = PairKey(x, y);
      pair_counts[p] += delta;
      if (delta > 0) {
        created.push_back(p);
        auto& list = where[p];
        if (list.empty() || list.back() != w) list.push_back(w);
      }
    };
    for (const int32_t w : affected) {
      Word& word = words[w];
      const auto& s = word.symbols;
      const int64_t c = word.count;
      rebuilt.clear();
      size_t i = 0;
      while (i < s.size()) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          if (!rebuilt.empty()) {
            change(rebuilt.back(), a, -c, w);
            change(rebuilt.back(), new_id, c, w);
          }
          change(a, b, -c, w);
          if (i + 2 < s.size()) {
            change(b, s[i + 2], -c, w);
            change(new_id, s[i + 2], c, w);
          }
          rebuilt.push_back(new_id);
          i += 2;
        } else {
          rebuilt.push_back(s[i]);
          ++i;
        }
      }
      if (rebuilt.size() != s.size()) word.symbols.assign(rebuilt.begin(), rebuilt.end());
    }
    // Queue the current count of every pair that gained, once. (With a reused id such a pair
    // may already be queued with a smaller count; the fresh entry supersedes it.)
    std::sort(created.begin(), created.end());
    created.erase(std::unique(created.begin(), created.end()), created.end());
    for (const uint64_t p : created) {
      const int64_t c = pair_counts[p];
      if (c > 0) queue.push(Candidate{c, p});
    }
  }

  out.vocab = std::move(tokens);
  out.special_tokens = options.special_tokens;
  return out;
}

std::string TrainedBpe::TokenizerJson() const {
  OrderedJson added = OrderedJson::array();
  for (size_t k = 0; k < special_tokens.size(); ++k) {
    added.push_back(OrderedJson{{"id", vocab.size() + k},
                                {"content", special_tokens[k]},
                                {"single_word", false},
                                {"lstrip", false},
                                {"rstrip", false},
                                {"normalized", false},
                                {"special", true}});
  }
  OrderedJson vocab_json = OrderedJson::object();
  for (size_t id = 0; id < vocab.size(); ++id) vocab_json[vocab[id]] = id;
  OrderedJson merges_json = OrderedJson::array();
  for (const auto& [left, right] : merges) merges_json.push_back(OrderedJson::array({left, right}));

  OrderedJson root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  root["added_tokens"] = std::move(added);
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = OrderedJson{
      {"type", "Sequence"},
      {"pretokenizers", OrderedJson::array({OrderedJson{{"type", "Split"},
                                                        {"pattern", {{"Regex", kGpt2Pattern}}},
                                                        {"behavior", "Isolated"},
                                                        {"invert", false}},
                                            ByteLevelComponent()})}};
  root["post_processor"] = ByteLevelComponent();  // adds no BOS/EOS
  root["decoder"] = ByteLevelComponent();
  root["model"] = OrderedJson{{"type", "BPE"},
                              {"dropout", nullptr},
                              {"unk_token", nullptr},
                              {"continuing_subword_prefix", ""},
                              {"end_of_word_suffix", ""},
                              {"fuse_unk", false},
                              {"byte_fallback", false},
                              {"ignore_merges", false},
                              {"vocab", std::move(vocab_json)},
                              {"merges", std::move(merges_json)}};
  return Dump(root);
}

std::string TrainedBpe::TokenizerConfigJson() const {
  const bool has_pad =
      std::find(special_tokens.begin(), special_tokens.end(), kEndOfText) != special_tokens.end();
  OrderedJson decoder = OrderedJson::object();
  OrderedJson additional = OrderedJson::array();
  for (size_t k = 0; k < special_tokens.size(); ++k) {
    decoder[std::to_string(vocab.size() + k)] = OrderedJson{{"content", special_tokens[k]},
                                                            {"lstrip", false},
                                                            {"normalized", false},
                                                            {"rstrip", false},
                                                            {"single_word", false},
                                                            {"special", true}};
    if (special_tokens[k] != kImEnd && special_tokens[k] != kEndOfText) {
      additional.push_back(special_tokens[k]);
    }
  }
  OrderedJson root;
  root["add_bos_token"] = false;
  root["add_prefix_space"] = false;
  root["added_tokens_decoder"] = std::move(decoder);
  root["additional_special_tokens"] = std::move(additional);
  root["bos_token"] = nullptr;
  root["chat_template"] = kChatTemplate;
  root["clean_up_tokenization_spaces"] = false;
  root["eos_token"] = kImEnd;
  root["errors"] = "replace";
  root["model_max_length"] = model_max_length;
  root["pad_token"] = has_pad ? OrderedJson(kEndOfText) : OrderedJson(nullptr);
  root["split_special_tokens"] = false;
  // The generic fast tokenizer: everything it needs is in tokenizer.json.
  root["tokenizer_class"] = "PreTrainedTokenizerFast";
  root["unk_token"] = nullptr;
  return Dump(root);
}

Status WriteTokenizerFiles(const TrainedBpe& bpe, const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError(dir + ": cannot create the directory: " + ec.message());
  KO_RETURN_IF_ERROR(WriteFileAtomically((fs::path(dir) / "tokenizer.json").string(), bpe.TokenizerJson()));
  KO_RETURN_IF_ERROR(
      WriteFileAtomically((fs::path(dir) / "tokenizer_config.json").string(),
                          bpe.TokenizerConfigJson()));
  return Status::Ok();
}

}  // namespace knockout::organism
