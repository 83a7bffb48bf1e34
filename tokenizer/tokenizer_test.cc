// Unit tests for tokenizer/: small hand-written tokenizer.json files exercising each
// component, load errors, and (when the npm reference packages are installed locally) spot checks
// against ids produced by @lenml/tokenizers for the real Llama 3 / Qwen 3 / Llama 2 / Gemma 3
// files.

#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace knockout::tokenizer {
namespace {

using nlohmann::json;
using Ids = std::vector<int64_t>;

const char kMeta[] = "\xE2\x96\x81";  // U+2581, the metaspace

// A tokenizer.json with the given parts; absent parts are null.
json Doc(json model, json normalizer = nullptr, json pre_tokenizer = nullptr,
         json decoder = nullptr, json post_processor = nullptr, json added_tokens = json::array()) {
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added_tokens},
              {"normalizer", normalizer},
              {"pre_tokenizer", pre_tokenizer},
              {"post_processor", post_processor},
              {"decoder", decoder},
              {"model", model}};
}

json Bpe(json vocab, json merges, json extra = json::object()) {
  json m{{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  for (auto& [k, v] : extra.items()) m[k] = v;
  return m;
}

std::unique_ptr<Tokenizer> MustLoad(const json& doc, const json& config = nullptr) {
  auto t = Tokenizer::FromJson(doc.dump(), config.is_null() ? "" : config.dump(), "test.json");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  if (!t.ok()) return nullptr;
  return std::move(t).value();
}

Ids Enc(const Tokenizer& t, const std::string& text, bool special = false) {
  auto e = t.Encode(text, special);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? e->ids : Ids{};
}

std::vector<std::string> Toks(const Tokenizer& t, const std::string& text) {
  auto e = t.Encode(text, false);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? e->tokens : std::vector<std::string>{};
}

std::string Dec(const Tokenizer& t, const Ids& ids, bool skip = false) {
  auto d = t.Decode(ids, skip);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? *d : "";
}

Status LoadStatus(const json& doc, const std::string& config = "") {
  auto t = Tokenizer::FromJson(doc.dump(), config, "test.json");
  return t.ok() ? Status::Ok() : t.status();
}

// ---------------------------------------------------------------------------------------------
// BPE merge order

TEST(BpeTest, LowestRankMergesFirst) {
  // "b c" outranks "a b", so "abc" becomes a + bc rather than ab + c.
  auto t = MustLoad(Doc(Bpe({{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}}, {"b c", "a b"})));
  EXPECT_EQ(Enc(*t, "abc"), (Ids{0, 4}));
}

TEST(BpeTest, LeftmostWinsAmongEqualRanks) {
  auto t = MustLoad(Doc(Bpe({{"a", 0}, {"aa", 1}}, {"a a"})));
  EXPECT_EQ(Enc(*t, "aaa"), (Ids{1, 0}));
  EXPECT_EQ(Enc(*t, "aaaa"), (Ids{1, 1}));
}

TEST(BpeTest, MergesChainAndAcceptPairForm) {
  // The [left, right] form of merges (tokenizers >= 0.20) reads like "left right".
  auto t = MustLoad(Doc(
      Bpe({{"h", 0}, {"e", 1}, {"l", 2}, {"o", 3}, {"he", 4}, {"ll", 5}, {"hell", 6}, {"hello", 7}},
          json::array({{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}}))));
  EXPECT_EQ(Enc(*t, "hello"), (Ids{7}));
  EXPECT_EQ(Enc(*t, "hellohe"), (Ids{7, 4}));
  EXPECT_EQ(Enc(*t, "lol"), (Ids{2, 3, 2}));
}

TEST(BpeTest, IgnoreMergesEmitsVocabularyWordsWhole) {
  // "abc" is in the vocabulary but no merge builds it.
  json vocab{{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"abc", 4}};
  auto plain = MustLoad(Doc(Bpe(vocab, {"a b"})));
  auto ignoring = MustLoad(Doc(Bpe(vocab, {"a b"}, {{"ignore_merges", true}})));
  EXPECT_EQ(Enc(*plain, "abc"), (Ids{3, 2}));
  EXPECT_EQ(Enc(*ignoring, "abc"), (Ids{4}));
  EXPECT_EQ(Enc(*ignoring, "abcab"), (Ids{3, 2, 3}));  // not a vocabulary word: merges apply
}

TEST(BpeTest, UnknownCharactersUseUnkAndFuse) {
  json vocab{{"<unk>", 0}, {"a", 1}, {"b", 2}};
  auto fused =
      MustLoad(Doc(Bpe(vocab, json::array(), {{"unk_token", "<unk>"}, {"fuse_unk", true}})));
  auto separate = MustLoad(Doc(Bpe(vocab, json::array(), {{"unk_token", "<unk>"}})));
  auto none = MustLoad(Doc(Bpe(vocab, json::array())));
  EXPECT_EQ(Enc(*fused, "axyzb"), (Ids{1, 0, 2}));
  EXPECT_EQ(Enc(*separate, "axyzb"), (Ids{1, 0, 0, 0, 2}));
  EXPECT_EQ(Enc(*none, "axyzb"), (Ids{1, 2}));  // without an unk token they are dropped
}

TEST(BpeTest, CacheGivesTheSameAnswerConcurrently) {
  auto t = MustLoad(Doc(Bpe({{"a", 0}, {"b", 1}, {"ab", 2}, {"aab", 3}}, {"a b", "a ab"}), nullptr,
                        {{"type", "Split"},
                         {"pattern", {{"String", " "}}},
                         {"behavior", "Removed"},
                         {"invert", false}}));
  const std::string text = "ab aab ba aaab abab b a";
  const Ids expected = Enc(*t, text);
  ASSERT_FALSE(expected.empty());
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 200; ++i) {
        auto e = t->Encode(text, false);
        if (!e.ok() || e->ids != expected) ++failures[k];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE

// Vocabulary of the 256 byte characters (ids 0..255) plus `extra` tokens from id 256.
json ByteLevelVocab(const std::vector<std::string>& extra) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[internal::ByteToUnicode()[b]] = b;
  for (size_t i = 0; i < extra.size(); ++i) vocab[extra[i]] = 256 + static_cast<int>(i);
  return vocab;
}

json ByteLevelDoc(json pre_tokenizer, json added = json::array()) {
  const json vocab = ByteLevelVocab({"\xC4\xA0w", "\xC4\xA0wo", "He", "Hel", "Hell", "Hello"});
  return Doc(Bpe(vocab, {"\xC4\xA0 w", "\xC4\xA0w o", "H e", "He l", "Hel l", "Hell o"}), nullptr,
             pre_tokenizer, {{"type", "ByteLevel"}}, nullptr, added);
}

TEST(ByteLevelTest, RegexSplitThenByteLevel) {
  json pre{{"type", "Sequence"},
           {"pretokenizers",
            {{{"type", "Split"},
              {"pattern",
               {{"Regex",
                 "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                 "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
              {"behavior", "Isolated"},
              {"invert", false}},
             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  auto t = MustLoad(ByteLevelDoc(pre));
  EXPECT_EQ(Toks(*t, "Hello wo"), (std::vector<std::string>{"Hello", "\xC4\xA0wo"}));
  // `\s+(?!\S)` leaves the last space of a run to the next word.
  // (No merge joins two spaces in this vocabulary.)
  EXPECT_EQ(Toks(*t, "Hello   wo"),
            (std::vector<std::string>{"Hello", "\xC4\xA0", "\xC4\xA0", "\xC4\xA0wo"}));
}

TEST(ByteLevelTest, Gpt2RegexAndPrefixSpace) {
  auto t = MustLoad(ByteLevelDoc({{"type", "ByteLevel"}, {"add_prefix_space", true}}));
  // The prefix space turns "wo" into "Ġwo"; "Hello" is split off by the GPT-2 regex.
  EXPECT_EQ(Toks(*t, "wo"), (std::vector<std::string>{"\xC4\xA0wo"}));
  EXPECT_EQ(Toks(*t, "Hello"), (std::vector<std::string>{"\xC4\xA0", "Hello"}));
}

TEST(ByteLevelTest, DecodeRoundTripsAnyText) {
  auto t = MustLoad(ByteLevelDoc({{"type", "ByteLevel"}, {"add_prefix_space", false}}));
  for (const std::string text :
       {"Hello wo", "caf\xC3\xA9 \xF0\x9F\x98\x80 \xE6\x97\xA5\xE6\x9C\xAC", "tab\tnew\nline\r\n",
        "  leading and trailing  ", ""}) {
    EXPECT_EQ(Dec(*t, Enc(*t, text)), text);
  }
  // A lone byte of a multi-byte character decodes to U+FFFD.
  EXPECT_EQ(Dec(*t, {0xC3}), "\xEF\xBF\xBD");
}

TEST(ByteLevelTest, AddedTokensAreMatchedFirstAndDecodedVerbatim) {
  json added = json::array({{{"id", 300},
                             {"content", "<|end|>"},
                             {"special", true},
                             {"lstrip", false},
                             {"rstrip", false},
                             {"single_word", false},
                             {"normalized", false}}});
  auto t = MustLoad(ByteLevelDoc({{"type", "ByteLevel"}, {"add_prefix_space", false}}, added));
  EXPECT_EQ(Enc(*t, "Hello<|end|>Hello"), (Ids{261, 300, 261}));
  EXPECT_EQ(Dec(*t, {261, 300, 261}), "Hello<|end|>Hello");
  EXPECT_EQ(Dec(*t, {261, 300, 261}, /*skip=*/true), "HelloHello");
  EXPECT_TRUE(t->IsSpecial(300));
  EXPECT_FALSE(t->IsSpecial(261));
  EXPECT_EQ(t->vocab_size(), 301);
  EXPECT_EQ(t->TokenToId("<|end|>"), 300);
  EXPECT_EQ(t->IdToToken(261), "Hello");
  EXPECT_FALSE(t->IdToToken(299).has_value());  // a gap in the id space
  auto bad = t->Decode({299}, false);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Metaspace, byte fallback

// A Llama 2 style tokenizer: Prepend + Replace normalizer, byte fallback, <s> template.
json LlamaStyleDoc(bool byte_fallback = true) {
  json vocab{{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  int id = 3;
  static const char* kHex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    vocab[std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">"] = id++;
  }
  // ids 259..
  for (const std::string& tok : {std::string(kMeta), std::string("h"), std::string("i"),
                                 std::string(kMeta) + "h", std::string(kMeta) + "hi"}) {
    vocab[tok] = id++;
  }
  json merges = json::array({std::string(kMeta) + " h", std::string(kMeta) + "h i"});
  json normalizer{{"type", "Sequence"},
                  {"normalizers",
                   {{{"type", "Prepend"}, {"prepend", kMeta}},
                    {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMeta}}}}};
  json decoder{{"type", "Sequence"},
               {"decoders",
                {{{"type", "Replace"}, {"pattern", {{"String", kMeta}}}, {"content", " "}},
                 {{"type", "ByteFallback"}},
                 {{"type", "Fuse"}},
                 {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  json post{{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair", json::array()},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  json added = json::array();
  for (const auto& [content, i] :
       {std::pair<std::string, int>{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}}) {
    added.push_back({{"id", i},
                     {"content", content},
                     {"special", true},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"single_word", false},
                     {"normalized", false}});
  }
  return Doc(Bpe(vocab, merges,
                 {{"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", byte_fallback}}),
             normalizer, nullptr, decoder, post, added);
}

TEST(MetaspaceTest, ByteFallbackForUnknownCharacters) {
  auto t = MustLoad(LlamaStyleDoc());
  // "▁hi" merges; "日" (E6 97 A5) is not in the vocabulary, so it becomes its byte tokens.
  EXPECT_EQ(Toks(*t, "hi \xE6\x97\xA5"), (std::vector<std::string>{std::string(kMeta) + "hi", kMeta,
                                                                   "<0xE6>", "<0x97>", "<0xA5>"}));
  EXPECT_EQ(Dec(*t, Enc(*t, "hi \xE6\x97\xA5")), "hi \xE6\x97\xA5");
  EXPECT_EQ(Dec(*t, Enc(*t, "hi hi", true), true), "hi hi");
}

TEST(MetaspaceTest, FusedUnkWithoutByteFallback) {
  auto t = MustLoad(LlamaStyleDoc(/*byte_fallback=*/false));
  EXPECT_EQ(Toks(*t, "hi xyz"),
            (std::vector<std::string>{std::string(kMeta) + "hi", kMeta, "<unk>"}));
}

TEST(MetaspaceTest, TemplateAddsBosAndConfigOverrides) {
  auto t = MustLoad(LlamaStyleDoc());
  EXPECT_EQ(Enc(*t, "hi", true), (Ids{1, 263}));
  EXPECT_TRUE(t->special_tokens().add_bos);
  EXPECT_FALSE(t->special_tokens().add_eos);
  EXPECT_EQ(t->special_tokens().bos_id, 1);
  EXPECT_EQ(t->special_tokens().unk, "<unk>");

  json config{{"add_bos_token", false},
              {"add_eos_token", true},
              {"bos_token", {{"__type", "AddedToken"}, {"content", "<s>"}}},
              {"eos_token", "</s>"},
              {"pad_token", nullptr}};
  auto c = MustLoad(LlamaStyleDoc(), config);
  EXPECT_EQ(Enc(*c, "hi", true), (Ids{263, 2}));
  EXPECT_FALSE(c->special_tokens().add_bos);
  EXPECT_TRUE(c->special_tokens().add_eos);
  EXPECT_EQ(c->special_tokens().bos, "<s>");
  EXPECT_EQ(c->special_tokens().eos_id, 2);
  EXPECT_FALSE(c->special_tokens().pad.has_value());
}

TEST(MetaspaceTest, PreTokenizerPrependSchemesAndDecoder) {
  json vocab{{kMeta, 0}, {"a", 1}, {"b", 2}, {"<x>", 3}};
  auto make = [&](const std::string& scheme, bool split) {
    json pre{{"type", "Metaspace"},
             {"replacement", kMeta},
             {"prepend_scheme", scheme},
             {"split", split}};
    json dec{{"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", scheme}};
    json added =
        json::array({{{"id", 3}, {"content", "<x>"}, {"special", true}, {"normalized", false}}});
    return MustLoad(Doc(Bpe(vocab, json::array()), nullptr, pre, dec, nullptr, added));
  };
  auto always = make("always", true);
  auto first = make("first", true);
  auto never = make("never", true);
  EXPECT_EQ(Enc(*always, "a b<x>a"), (Ids{0, 1, 0, 2, 3, 0, 1}));
  EXPECT_EQ(Enc(*first, "a b<x>a"), (Ids{0, 1, 0, 2, 3, 1}));
  EXPECT_EQ(Enc(*never, "a b<x>a"), (Ids{1, 0, 2, 3, 1}));
  EXPECT_EQ(Dec(*always, {0, 1, 0, 2}), "a b");
  EXPECT_EQ(Dec(*never, {0, 1, 0, 2}), " a b");
}

// ---------------------------------------------------------------------------------------------
// Added tokens

json MaskDoc(bool lstrip, bool rstrip, bool single_word) {
  json vocab{{"a", 0}, {"b", 1}, {" ", 2}, {"x", 3}, {"<mask>", 4}};
  json added = json::array({{{"id", 4},
                             {"content", "<mask>"},
                             {"special", true},
                             {"lstrip", lstrip},
                             {"rstrip", rstrip},
                             {"single_word", single_word},
                             {"normalized", false}}});
  return Doc(Bpe(vocab, json::array()), nullptr, nullptr, nullptr, nullptr, added);
}

TEST(AddedTokensTest, LstripAndRstripAbsorbWhitespace) {
  auto plain = MustLoad(MaskDoc(false, false, false));
  auto left = MustLoad(MaskDoc(true, false, false));
  auto right = MustLoad(MaskDoc(false, true, false));
  auto both = MustLoad(MaskDoc(true, true, false));
  const std::string text = "a  <mask>  b";
  EXPECT_EQ(Enc(*plain, text), (Ids{0, 2, 2, 4, 2, 2, 1}));
  EXPECT_EQ(Enc(*left, text), (Ids{0, 4, 2, 2, 1}));
  EXPECT_EQ(Enc(*right, text), (Ids{0, 2, 2, 4, 1}));
  EXPECT_EQ(Enc(*both, text), (Ids{0, 4, 1}));
}

TEST(AddedTokensTest, SingleWordNeedsWordBoundaries) {
  auto t = MustLoad(MaskDoc(false, false, true));
  EXPECT_EQ(Enc(*t, "a <mask> b"), (Ids{0, 2, 4, 2, 1}));
  // Glued to a word: not matched, so the model sees the characters; only x and the a of "mask"
  // are in the vocabulary (and without an unk token the rest are dropped).
  EXPECT_EQ(Enc(*t, "x<mask>"), (Ids{3, 0}));
}

TEST(AddedTokensTest, LongestMatchWins) {
  json vocab{{"a", 0}, {"<t>", 1}, {"<t><t>", 2}};
  json added =
      json::array({{{"id", 1}, {"content", "<t>"}, {"special", false}, {"normalized", false}},
                   {{"id", 2}, {"content", "<t><t>"}, {"special", false}, {"normalized", false}}});
  auto t = MustLoad(Doc(Bpe(vocab, json::array()), nullptr, nullptr, nullptr, nullptr, added));
  EXPECT_EQ(Enc(*t, "<t><t><t>a"), (Ids{2, 1, 0}));
}

// ---------------------------------------------------------------------------------------------
// Split behaviours

std::vector<std::string> SplitPieces(const std::string& behavior, bool invert,
                                     const json& pattern) {
  // With ignore_merges and every expected piece in the vocabulary, each pre-token comes out as
  // one token, so the tokens are the pre-tokens.
  json vocab = json::object();
  int id = 0;
  for (const std::string tok :
       {"t",         "h",    "e",      "f",      "i",          "n", "a",   "l",
        "c",         "o",    "u",      "d",      "w",          "-", "the", "final",
        "countdown", "the-", "final-", "-final", "-countdown", "--"}) {
    vocab[tok] = id++;
  }
  json pre{{"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", invert}};
  auto t = MustLoad(Doc(Bpe(vocab, json::array(), {{"ignore_merges", true}}), nullptr, pre));
  return t ? Toks(*t, "the-final--countdown") : std::vector<std::string>{};
}

TEST(SplitTest, Behaviours) {
  using V = std::vector<std::string>;
  const json dash{{"String", "-"}};
  EXPECT_EQ(SplitPieces("Removed", false, dash), (V{"the", "final", "countdown"}));
  EXPECT_EQ(SplitPieces("Isolated", false, dash), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(SplitPieces("MergedWithPrevious", false, dash),
            (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(SplitPieces("MergedWithNext", false, dash), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(SplitPieces("Contiguous", false, dash), (V{"the", "-", "final", "--", "countdown"}));
  // invert: the pattern matches the pieces to keep.
  EXPECT_EQ(SplitPieces("Removed", true, {{"Regex", "[a-z]+"}}), (V{"the", "final", "countdown"}));
  EXPECT_EQ(SplitPieces("Isolated", false, {{"Regex", "-+"}}),
            (V{"the", "-", "final", "--", "countdown"}));
}

// ---------------------------------------------------------------------------------------------
// Normalizers, UTF-8

TEST(NormalizerTest, NfcComposes) {
  json vocab{{"e", 0}, {"\xC3\xA9", 1}, {"\xCC\x81", 2}};
  auto nfc = MustLoad(Doc(Bpe(vocab, json::array()), {{"type", "NFC"}}));
  auto none = MustLoad(Doc(Bpe(vocab, json::array())));
  EXPECT_EQ(Enc(*nfc, "e\xCC\x81"), (Ids{1}));
  EXPECT_EQ(Enc(*none, "e\xCC\x81"), (Ids{0, 2}));
}

TEST(NormalizerTest, NfkcLowercaseAndRegexReplace) {
  json vocab{{"f", 0}, {"i", 1}, {"a", 2}, {"_", 3}};
  json norm{{"type", "Sequence"},
            {"normalizers",
             {{{"type", "NFKC"}},
              {{"type", "Lowercase"}},
              {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", "_"}}}}};
  auto t = MustLoad(Doc(Bpe(vocab, json::array()), norm));
  // U+FB01 (the fi ligature) becomes "fi" and U+00A0 a space under NFKC.
  EXPECT_EQ(Enc(*t, "\xEF\xAC\x81 \xC2\xA0 A"), (Ids{0, 1, 3, 2}));
}

TEST(Utf8Test, InvalidInputNamesTheOffset) {
  auto t = MustLoad(Doc(Bpe({{"a", 0}}, json::array())));
  for (const auto& [text, offset] : {std::pair<std::string, int>{"\xFF", 0},
                                     {"ab\xC3", 2},
                                     {"a\xED\xA0\x80", 1},
                                     {"aa\xC0\xAF", 2}}) {
    auto e = t->Encode(text, false);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(e.status().message().find("byte offset " + std::to_string(offset)), std::string::npos)
        << e.status().message();
  }
}

TEST(RegexTest, WhitespaceIsUnicodeWhiteSpace) {
  auto re = internal::Regex::Compile("\\s+|[^\\s\\p{L}]+");
  ASSERT_TRUE(re.ok());
  std::vector<std::pair<size_t, size_t>> m;
  // U+180E is not White_Space (PCRE2's own \s would match it); U+3000 is.
  const std::string text = "\xE1\xA0\x8E\xE3\x80\x80";
  (*re)->FindAll(text, &m);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0], (std::pair<size_t, size_t>{0, 3}));
  EXPECT_EQ(m[1], (std::pair<size_t, size_t>{3, 6}));
  EXPECT_EQ(internal::Regex::RewriteWhitespace("[\\s]\\\\s"),
            std::string("[") +
                "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}"
                "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}]\\\\s");
}

// ---------------------------------------------------------------------------------------------
// Errors

void ExpectError(const Status& s, StatusCode code, const std::string& fragment) {
  EXPECT_EQ(s.code(), code) << s.ToString();
  EXPECT_NE(s.message().find(fragment), std::string::npos) << s.ToString();
}

TEST(ErrorsTest, UnsupportedComponentsNameTheirPath) {
  const json model = Bpe({{"a", 0}}, json::array());
  ExpectError(LoadStatus(Doc(model, nullptr,
                             {{"type", "Sequence"},
                              {"pretokenizers",
                               {{{"type", "Metaspace"}, {"replacement", kMeta}},
                                {{"type", "Digits"}, {"individual_digits", true}}}}})),
              StatusCode::kUnimplemented,
              "test.json: pre_tokenizer.pretokenizers[1]: unsupported pre-tokenizer type "
              "\"Digits\"");
  ExpectError(LoadStatus(Doc(model, {{"type", "Precompiled"}})), StatusCode::kUnimplemented,
              "normalizer: unsupported normalizer type \"Precompiled\"");
  ExpectError(LoadStatus(Doc(model, nullptr, nullptr, {{"type", "CTC"}})),
              StatusCode::kUnimplemented, "decoder: unsupported decoder type \"CTC\"");
  ExpectError(LoadStatus(Doc(model, nullptr, nullptr, nullptr, {{"type", "Whatever"}})),
              StatusCode::kUnimplemented, "post_processor: unsupported post-processor type");
  ExpectError(LoadStatus(Doc({{"type", "Unigram"}, {"vocab", json::array()}})),
              StatusCode::kUnimplemented, "model: unsupported model type \"Unigram\"");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}}, json::array(), {{"dropout", 0.1}}))),
              StatusCode::kUnimplemented, "model.dropout");
}

TEST(ErrorsTest, MalformedFilesAreInvalidArgument) {
  auto bad_json = Tokenizer::FromJson("{\"model\": [1, 2", "", "tok.json");
  ExpectError(bad_json.status(), StatusCode::kInvalidArgument, "tok.json: malformed JSON");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}, {"b", 1}}, {"a c"}))), StatusCode::kInvalidArgument,
              "model.merges[0]: token \"c\" is not in the vocab");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}, {"b", 1}}, {"a b"}))), StatusCode::kInvalidArgument,
              "merged token \"ab\" is not in the vocabulary");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}, {"b", 1}}, {"ab"}))), StatusCode::kInvalidArgument,
              "model.merges[0]");
  ExpectError(LoadStatus(Doc(Bpe({{"a", -3}}, json::array()))), StatusCode::kInvalidArgument,
              "out of range");
  ExpectError(LoadStatus(Doc(Bpe({{"a", "zero"}}, json::array()))), StatusCode::kInvalidArgument,
              "model.vocab[\"a\"]: expected an integer");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}}, json::array(), {{"unk_token", "<unk>"}}))),
              StatusCode::kInvalidArgument, "model.unk_token");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}}, json::array()), nullptr, nullptr, nullptr, nullptr,
                             json::array({{{"id", "7"}, {"content", "<x>"}}}))),
              StatusCode::kInvalidArgument, "added_tokens[0].id: expected an integer");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}}, json::array()), nullptr, nullptr, nullptr, nullptr,
                             json::array({{{"id", 1LL << 40}, {"content", "<x>"}}}))),
              StatusCode::kInvalidArgument, "added_tokens[0].id");
  ExpectError(
      LoadStatus(Doc(
          Bpe({{"a", 0}}, json::array()), nullptr,
          {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}})),
      StatusCode::kInvalidArgument, "pre_tokenizer.pattern.Regex: regex does not compile");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}}, json::array())), "{\"add_bos_token\": \"yes\"}"),
              StatusCode::kInvalidArgument,
              "test.json: tokenizer_config.json: add_bos_token: expected a boolean");
  ExpectError(LoadStatus(Doc(Bpe({{"a", 0}}, json::array())), "{\"add_bos_token\": true}"),
              StatusCode::kInvalidArgument, "add_bos_token is true but bos_token is not set");
  ExpectError(LoadStatus(json::array()), StatusCode::kInvalidArgument, "expected an object");
  ExpectError(LoadStatus(json{{"normalizer", nullptr}}), StatusCode::kInvalidArgument,
              "model: missing");
}

// ---------------------------------------------------------------------------------------------
// Files

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("tokenizer_test_" + std::to_string(::getpid()) + "_" +
             std::to_string(reinterpret_cast<uintptr_t>(this)));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path Write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name) << text;
    return path_ / name;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

TEST(LoadTest, DirectoryWithConfigAndChatTemplates) {
  TempDir dir;
  dir.Write("tokenizer.json", LlamaStyleDoc().dump());
  dir.Write(
      "tokenizer_config.json",
      json{{"bos_token", "<s>"},
           {"eos_token", "</s>"},
           {"chat_template",
            {{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}}}}
          .dump());
  auto t = Tokenizer::Load(dir.path().string());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ((*t)->chat_template(), "D");
  EXPECT_EQ((*t)->Encode("hi", true)->ids, (Ids{1, 263}));

  // A file path works too; without a template in the config, chat_template.jinja is read.
  TempDir dir2;
  const auto file = dir2.Write("tokenizer.json", LlamaStyleDoc().dump());
  dir2.Write("chat_template.jinja", "{{ messages }}");
  auto t2 = Tokenizer::Load(file.string());
  ASSERT_TRUE(t2.ok()) << t2.status().ToString();
  EXPECT_EQ((*t2)->chat_template(), "{{ messages }}");
}

TEST(LoadTest, MissingFilesAndBadConfig) {
  TempDir dir;
  ExpectError(Tokenizer::Load(dir.path().string()).status(), StatusCode::kNotFound,
              "tokenizer.json");
  dir.Write("tokenizer.json", LlamaStyleDoc().dump());
  dir.Write("tokenizer_config.json", "{\"eos_token\": 5}");
  ExpectError(Tokenizer::Load(dir.path().string()).status(), StatusCode::kInvalidArgument,
              "tokenizer_config.json: eos_token");
}

// ---------------------------------------------------------------------------------------------
// Spot checks against the JavaScript reference (ids from @lenml/tokenizers 3.7.2), when the npm
// packages are installed where tests/tokenizer installs them or in /tmp/npmtok.

std::string FindReferenceModels(const std::string& family) {
  for (const std::string& root :
       {std::string(KNOCKOUT_SOURCE_DIR) + "/tests/tokenizer", std::string("/tmp/npmtok")}) {
    const std::string dir = root + "/node_modules/@lenml/tokenizer-" + family + "/models";
    if (std::filesystem::exists(dir + "/tokenizer.json")) return dir;
  }
  return "";
}

struct SpotCheck {
  std::string text;
  Ids ids;
};

void RunSpotChecks(const std::string& family, const std::vector<SpotCheck>& checks,
                   const SpotCheck& with_special) {
  const std::string dir = FindReferenceModels(family);
  if (dir.empty()) GTEST_SKIP() << "@lenml/tokenizer-" << family << " is not installed";
  auto t = Tokenizer::Load(dir);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  for (const SpotCheck& c : checks) {
    EXPECT_EQ(Enc(**t, c.text), c.ids) << c.text;
  }
  EXPECT_EQ(Enc(**t, with_special.text, true), with_special.ids) << with_special.text;
}

TEST(ReferenceSpotCheck, Llama3) {
  RunSpotChecks(
      "llama3",
      {{"Hello, my dog is cute", {9906, 11, 856, 5679, 374, 19369}},
       {"I'm sure they'll say it's John's, we've done it, you'd THINK'S",
        {40, 2846, 2771, 814,  3358, 2019, 433, 596,  3842,  596,
         11, 584,  3077, 2884, 433,  11,   499, 4265, 93219, 13575}},
       {"Line one\nLine two\n\nLine four\r\nWindows\tTab\t\tDouble",
        {2519, 832, 198, 2519, 1403, 271, 2519, 3116, 319, 13466, 197, 8750, 197, 77883}}},
      {"<|begin_of_text|>Hello, my dog is cute", {128000, 9906, 11, 856, 5679, 374, 19369}});
}

TEST(ReferenceSpotCheck, Qwen3) {
  RunSpotChecks("qwen3",
                {{"Hello, my dog is cute", {9707, 11, 847, 5562, 374, 18838}},
                 {"<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
                  {151644, 872, 198, 14990, 151645, 198, 151644, 77091, 198}}},
                {"Hello, my dog is cute", {9707, 11, 847, 5562, 374, 18838}});
}

TEST(ReferenceSpotCheck, Llama2) {
  RunSpotChecks(
      "llama2",
      {{"Hello, my dog is cute", {22557, 28725, 586, 3914, 349, 17949}},
       {"Line one\nLine two\n\nLine four\r\nWindows\tTab\t\tDouble",
        {9127, 624, 13, 4010, 989, 13, 13, 4010, 2308, 28801, 13, 7984, 12, 7560, 12, 12, 10260}}},
      {"Hello, my dog is cute", {1, 22557, 28725, 586, 3914, 349, 17949}});
}

TEST(ReferenceSpotCheck, Gemma3) {
  RunSpotChecks("gemma3",
                {{"Hello, my dog is cute", {9259, 236764, 1041, 4799, 563, 12864}},
                 {"<bos>Gemma<eos> <start_of_turn>user\nhi<end_of_turn>",
                  {2, 236823, 12367, 1, 236743, 105, 2364, 107, 2202, 106}}},
                {"Hello, my dog is cute", {2, 9259, 236764, 1041, 4799, 563, 12864}});
}

}  // namespace
}  // namespace knockout::tokenizer
