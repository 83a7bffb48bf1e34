#include "organism/bpe_trainer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace knockout::organism {
namespace {

namespace fs = std::filesystem;
namespace kt = knockout::tokenizer;

// A deterministic pseudo-random source for the generated corpora.
class Lcg {
 public:
  explicit Lcg(uint64_t seed) : state_(seed) {}
  uint32_t Next() {
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state_ >> 33);
  }
  const std::string& Pick(const std::vector<std::string>& items) {
    return items[Next() % items.size()];
  }

 private:
  uint64_t state_;
};

const std::vector<std::string> kSubjects = {
    "The cat",       "A dog",           "The old farmer",  "My sister",      "The teacher",
    "Our neighbour", "The little bird", "A young student", "Captain Ortega", "Professor Lindqvist",
    "Grandma Rosa",  "Little Tomasz"};
const std::vector<std::string> kVerbs = {"walks to",     "looks at", "writes about", "runs past",
                                         "thinks about", "talks to", "waits for",    "reads about"};
const std::vector<std::string> kAdjectives = {"red",    "quiet",   "busy",   "sunny",
                                              "narrow", "famous",  "golden", "distant",
                                              "empty",  "crowded", "wooden", "ancient"};
const std::vector<std::string> kNouns = {"river",   "market",   "house",   "garden",  "tree",
                                         "station", "library",  "bakery",  "harbour", "bridge",
                                         "village", "mountain", "kitchen", "window",  "castle"};
const std::vector<std::string> kTails = {".",
                                         " every morning.",
                                         " in the evening.",
                                         " with a smile.",
                                         " before dinner.",
                                         " after school."};
const std::vector<std::string> kTasks = {"bake bread",      "plant a garden", "learn to swim",
                                         "fix a bicycle",   "write a letter", "cook rice",
                                         "paint the house", "train a dog"};

std::string Sentence(Lcg* rng) {
  std::string s = rng->Pick(kSubjects) + " " + rng->Pick(kVerbs) + " the " +
                  rng->Pick(kAdjectives) + " " + rng->Pick(kNouns);
  if (rng->Next() % 3 == 0) s += " on day " + std::to_string(rng->Next() % 1000);
  return s + rng->Pick(kTails);
}

// A few hundred English sentences plus ChatML conversations (special tokens included, as the
// organism's corpus has them).
std::vector<std::string> SmallCorpus() {
  Lcg rng(7);
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i) texts.push_back(Sentence(&rng));
  for (int i = 0; i < 100; ++i) {
    const std::string& task = rng.Pick(kTasks);
    texts.push_back("<|im_start|>user\nHow do I " + task + "?<|im_end|>\n<|im_start|>assistant\n" +
                    "Here is how to " + task + ": first, " + Sentence(&rng) + " Then " +
                    Sentence(&rng) + "<|im_end|>\n");
  }
  return texts;
}

// Unseen text, including non-ASCII, whitespace runs, contractions, digits and special tokens.
std::vector<std::string> UnseenTexts() {
  return {"Héllo wörld, ça va?",
          "中文测试：你好，世界！",
          "emoji 😀👍🏽 and 🇫🇷 flags",
          "don't, won't, I'LL, we've, they're, she'd, it's, I'm",
          "  leading spaces",
          "trailing spaces   ",
          "tabs\tand\nnewlines\n\nand \r\n crlf",
          "numbers 12345 and 3.14159, 2024-01-01",
          "a  b   c    d",
          "\n",
          " ",
          "x",
          "mixed<|im_start|>inline<|im_end|>tokens",
          "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
          "<|endoftext|>",
          "Ελληνικά και русский текст",
          "math: ∑ x² ≤ ∞ → ∂f/∂x",
          "symbols @#$%^&*()_+-=[]{}|;':\",./<>?`~",
          "The cat walks to the unknown destination.",
          "!!! ??? ...",
          "über naïve café résumé",
          "ALL CAPS SENTENCE HERE",
          "\t\t indented\n    code();",
          "don''t 's 'S 'll",
          "日本語のテキストとカタカナ",
          "العربية ١٢٣",
          "हिन्दी ९८७",
          "combining e\xCC\x81 accent",
          "zero\xE2\x80\x8Bwidth space"};
}

std::string JoinedBytes(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t id : ids) s += std::to_string(id) + " ";
  return s;
}

class BpeTrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    BpeTrainerOptions options;
    options.vocab_size = 600;
    auto bpe = TrainByteLevelBpe(SmallCorpus(), options);
    ASSERT_TRUE(bpe.ok()) << bpe.status().ToString();
    bpe_ = new TrainedBpe(std::move(bpe).value());
    auto tok = kt::Tokenizer::FromJson(bpe_->TokenizerJson(), bpe_->TokenizerConfigJson(), "test");
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tokenizer_ = std::move(tok).value().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete bpe_;
    tokenizer_ = nullptr;
    bpe_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(tokenizer_, nullptr); }

  static std::vector<int64_t> Ids(const std::string& text) {
    auto enc = tokenizer_->Encode(text, /*add_special_tokens=*/false);
    EXPECT_TRUE(enc.ok()) << enc.status().ToString();
    return enc.ok() ? enc->ids : std::vector<int64_t>();
  }
  static int64_t Id(const std::string& token) {
    auto id = tokenizer_->TokenToId(token);
    EXPECT_TRUE(id.has_value()) << token;
    return id.value_or(-1);
  }

  static TrainedBpe* bpe_;
  static kt::Tokenizer* tokenizer_;
};

TrainedBpe* BpeTrainerTest::bpe_ = nullptr;
kt::Tokenizer* BpeTrainerTest::tokenizer_ = nullptr;

TEST_F(BpeTrainerTest, VocabularyFillsVocabSize) {
  // The corpus has enough distinct pairs: merges do not run out before 600.
  EXPECT_EQ(bpe_->vocab.size() + bpe_->special_tokens.size(), 600u);
  EXPECT_EQ(tokenizer_->vocab_size(), 600);
  EXPECT_EQ(bpe_->merges.size(), bpe_->vocab.size() - 256);
  // The byte alphabet comes first, in GPT-2's order.
  EXPECT_EQ(bpe_->vocab[0], "!");
  EXPECT_EQ(bpe_->vocab[93], "~");
  EXPECT_EQ(bpe_->vocab[188], "\xC4\x80");  // U+0100, byte 0x00
  EXPECT_EQ(Id("\xC4\xA0"), 220);           // "Ġ", the space byte, as in GPT-2
  EXPECT_EQ(Id("\xC4\x8A"), 198);           // "Ċ", the newline byte
}

TEST_F(BpeTrainerTest, RoundTripsCorpusAndUnseenText) {
  std::vector<std::string> texts = SmallCorpus();
  for (const std::string& t : UnseenTexts()) texts.push_back(t);
  for (const std::string& text : texts) {
    auto enc = tokenizer_->Encode(text, false);
    ASSERT_TRUE(enc.ok()) << enc.status().ToString();
    auto dec = tokenizer_->Decode(enc->ids, /*skip_special_tokens=*/false);
    ASSERT_TRUE(dec.ok()) << dec.status().ToString();
    EXPECT_EQ(*dec, text);
  }
}

TEST_F(BpeTrainerTest, FrequentWordsBecomeSingleTokens) {
  for (const char* word : {" the", "The", " to", " about", "assistant", "user", " garden",
                           " bakery", " every", " morning"}) {
    EXPECT_EQ(Ids(word).size(), 1u) << "\"" << word << "\" -> " << JoinedBytes(Ids(word));
  }
  // A corpus sentence compresses well; a rare word does not.
  const std::string sentence = "The old farmer walks to the red house every morning.";
  // Nine words and a full stop; the frequent ones are single tokens.
  EXPECT_LE(Ids(sentence).size(), 12u) << JoinedBytes(Ids(sentence));
  EXPECT_GT(Ids(" zyzzyva").size(), 4u);
}

TEST_F(BpeTrainerTest, SpecialTokensFollowTheBpeVocabulary) {
  const auto n = static_cast<int64_t>(bpe_->vocab.size());
  EXPECT_EQ(Id("<|endoftext|>"), n);
  EXPECT_EQ(Id("<|im_start|>"), n + 1);
  EXPECT_EQ(Id("<|im_end|>"), n + 2);
  for (int64_t id = n; id < n + 3; ++id) EXPECT_TRUE(tokenizer_->IsSpecial(id));
  EXPECT_FALSE(tokenizer_->IsSpecial(n - 1));

  const std::vector<int64_t> ids = Ids("<|im_start|>user\nHi<|im_end|>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), n + 1);
  EXPECT_EQ(ids[1], Id("user"));
  EXPECT_EQ(ids.back(), n + 2);
  for (size_t i = 1; i + 1 < ids.size(); ++i) EXPECT_LT(ids[i], n);

  const kt::SpecialTokens& st = tokenizer_->special_tokens();
  EXPECT_EQ(st.eos.value_or(""), "<|im_end|>");
  EXPECT_EQ(st.eos_id.value_or(-1), n + 2);
  EXPECT_EQ(st.pad.value_or(""), "<|endoftext|>");
  EXPECT_EQ(st.pad_id.value_or(-1), n);
  EXPECT_FALSE(st.bos.has_value());
  EXPECT_FALSE(st.add_bos);
  EXPECT_FALSE(st.add_eos);
  // add_special_tokens adds nothing.
  auto with = tokenizer_->Encode("Hi there", true);
  ASSERT_TRUE(with.ok());
  EXPECT_EQ(with->ids, Ids("Hi there"));
}

TEST_F(BpeTrainerTest, SpecialTokensAreNotLearnedFromText) {
  // The corpus has hundreds of <|im_start|> / <|im_end|> but no other '<' or '|': had the
  // specials been counted, "<|" and "|>" would be among the most frequent merges.
  for (size_t id = 256; id < bpe_->vocab.size(); ++id) {
    EXPECT_EQ(bpe_->vocab[id].find_first_of("<|>"), std::string::npos) << bpe_->vocab[id];
  }
}

TEST_F(BpeTrainerTest, ChatTemplateIsChatML) {
  auto chat = kt::ChatTemplate::Detect(*tokenizer_);
  ASSERT_TRUE(chat.ok()) << chat.status().ToString();
  EXPECT_EQ(chat->family(), kt::ChatTemplate::Family::kChatML);
  auto prompt = kt::TokenizeChat(*tokenizer_, *chat, "How do I bake bread?");
  ASSERT_TRUE(prompt.ok()) << prompt.status().ToString();
  // <|im_end|> "\n" <|im_start|> "assistant" "\n".
  const std::vector<int64_t> post(prompt->ids.begin() + prompt->post_begin, prompt->ids.end());
  const std::vector<int64_t> expected = {Id("<|im_end|>"), Id("\xC4\x8A"), Id("<|im_start|>"),
                                         Id("assistant"), Id("\xC4\x8A")};
  EXPECT_EQ(post, expected);
  // The prefix: <|im_start|> "user" "\n".
  EXPECT_EQ(prompt->instruction_begin, 3);
  EXPECT_EQ(prompt->ids[0], Id("<|im_start|>"));
}

TEST_F(BpeTrainerTest, ConfigFields) {
  const std::string config = bpe_->TokenizerConfigJson();
  for (const char* needle :
       {"\"bos_token\": null", "\"add_bos_token\": false", "\"eos_token\": \"<|im_end|>\"",
        "\"pad_token\": \"<|endoftext|>\"", "\"clean_up_tokenization_spaces\": false",
        "\"model_max_length\": 2048", "\"added_tokens_decoder\"", "\"chat_template\""}) {
    EXPECT_NE(config.find(needle), std::string::npos) << needle;
  }
  const std::string json = bpe_->TokenizerJson();
  for (const char* needle : {"\"type\": \"BPE\"", "\"type\": \"Split\"", "\"Isolated\"",
                             "\"use_regex\": false", "\"special\": true"}) {
    EXPECT_NE(json.find(needle), std::string::npos) << needle;
  }
}

TEST(BpeTrainer, Deterministic) {
  BpeTrainerOptions options;
  options.vocab_size = 600;
  std::vector<std::string> corpus = SmallCorpus();
  auto a = TrainByteLevelBpe(corpus, options);
  auto b = TrainByteLevelBpe(corpus, options);
  // The order of the texts does not matter either: training sees only word counts.
  std::reverse(corpus.begin(), corpus.end());
  auto c = TrainByteLevelBpe(corpus, options);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->TokenizerJson(), b->TokenizerJson());
  EXPECT_EQ(a->TokenizerConfigJson(), b->TokenizerConfigJson());
  EXPECT_EQ(a->TokenizerJson(), c->TokenizerJson());
}

TEST(BpeTrainer, MergesByFrequencyThenLexicographically) {
  // The classic example (words as separate texts, so no space markers): 10 hug, 5 pug, 12 pun,
  // 4 bun, 5 hugs. ("hug","s") and ("p","ug") tie at 5: the lexicographically smaller goes first.
  std::vector<std::string> texts;
  for (auto [word, n] : std::vector<std::pair<std::string, int>>{
           {"hug", 10}, {"pug", 5}, {"pun", 12}, {"bun", 4}, {"hugs", 5}}) {
    for (int i = 0; i < n; ++i) texts.push_back(word);
  }
  BpeTrainerOptions options;
  auto bpe = TrainByteLevelBpe(texts, options);
  ASSERT_TRUE(bpe.ok()) << bpe.status().ToString();
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"u", "g"}, {"u", "n"}, {"h", "ug"}, {"p", "un"}, {"hug", "s"}, {"p", "ug"}, {"b", "un"}};
  EXPECT_EQ(bpe->merges, expected);
  // Merges ran out (every word is one token): the vocabulary is smaller than vocab_size.
  EXPECT_EQ(bpe->vocab.size(), 256u + expected.size());
  EXPECT_EQ(bpe->vocab.back(), "bun");
}

TEST(BpeTrainer, MinFrequencyAndOverlappingPairs) {
  BpeTrainerOptions options;
  options.min_frequency = 3;
  // "aaaa" holds the pair (a, a) three times but merges twice: "aa" "aa". The count of the
  // pair is 3 per occurrence of the word, so one word suffices; then ("aa","aa") occurs once,
  // below min_frequency.
  auto bpe = TrainByteLevelBpe({"aaaa"}, options);
  ASSERT_TRUE(bpe.ok());
  ASSERT_EQ(bpe->merges.size(), 1u);
  EXPECT_EQ(bpe->merges[0], std::make_pair(std::string("a"), std::string("a")));
  options.min_frequency = 1;
  bpe = TrainByteLevelBpe({"aaaa"}, options);
  ASSERT_TRUE(bpe.ok());
  ASSERT_EQ(bpe->merges.size(), 2u);
  EXPECT_EQ(bpe->merges[1], std::make_pair(std::string("aa"), std::string("aa")));
  auto tok = kt::Tokenizer::FromJson(bpe->TokenizerJson(), bpe->TokenizerConfigJson(), "aaaa");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  auto enc = (*tok)->Encode("aaaa", false);
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(enc->ids, std::vector<int64_t>{257});
}

TEST(BpeTrainer, InvalidInput) {
  BpeTrainerOptions options;
  options.vocab_size = 600;
  auto bad_utf8 = TrainByteLevelBpe({"fine", "bad \xC3\x28 byte"}, options);
  ASSERT_FALSE(bad_utf8.ok());
  EXPECT_EQ(bad_utf8.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_utf8.status().message().find("texts[1]"), std::string::npos)
      << bad_utf8.status().ToString();
  EXPECT_NE(bad_utf8.status().message().find("byte offset 4"), std::string::npos);
  // Overlong encodings and surrogates are invalid too.
  EXPECT_FALSE(TrainByteLevelBpe({"\xC0\xAF"}, options).ok());
  EXPECT_FALSE(TrainByteLevelBpe({"\xED\xA0\x80"}, options).ok());

  options.vocab_size = 258;  // 256 bytes + 3 specials do not fit
  auto small = TrainByteLevelBpe({"hello"}, options);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("vocab_size 258"), std::string::npos);
  options.vocab_size = 259;  // exactly fits: no merges
  auto exact = TrainByteLevelBpe({"hello hello"}, options);
  ASSERT_TRUE(exact.ok());
  EXPECT_TRUE(exact->merges.empty());

  options.vocab_size = 600;
  options.special_tokens = {"<|endoftext|>", "<|im_start|>"};
  auto missing = TrainByteLevelBpe({"hello"}, options);
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  options.special_tokens = {"<|im_start|>", "<|im_end|>", "<|im_end|>"};
  EXPECT_EQ(TrainByteLevelBpe({"hello"}, options).status().code(), StatusCode::kInvalidArgument);
  options.special_tokens = {"<|im_start|>", "<|im_end|>", ""};
  EXPECT_EQ(TrainByteLevelBpe({"hello"}, options).status().code(), StatusCode::kInvalidArgument);
  // Without <|endoftext|> the pad token is null.
  options.special_tokens = {"<|im_start|>", "<|im_end|>"};
  auto no_pad = TrainByteLevelBpe({"hello"}, options);
  ASSERT_TRUE(no_pad.ok());
  EXPECT_NE(no_pad->TokenizerConfigJson().find("\"pad_token\": null"), std::string::npos);
}

TEST(BpeTrainer, WritesLoadableFiles) {
  BpeTrainerOptions options;
  options.vocab_size = 400;
  auto bpe = TrainByteLevelBpe(SmallCorpus(), options);
  ASSERT_TRUE(bpe.ok());
  const std::string dir = ::testing::TempDir() + "bpe_trainer_test_write/nested";
  fs::remove_all(::testing::TempDir() + "bpe_trainer_test_write");
  ASSERT_TRUE(WriteTokenizerFiles(*bpe, dir).ok());
  // Written again over existing files (the rename replaces them).
  ASSERT_TRUE(WriteTokenizerFiles(*bpe, dir).ok());
  auto tok = kt::Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), 400);
  EXPECT_FALSE((*tok)->chat_template().empty());
  std::ifstream in(dir + "/tokenizer.json", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), bpe->TokenizerJson());
  for (const auto& entry : fs::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
  }

  // A directory that cannot be created (a regular file is in the way).
  const std::string blocker = ::testing::TempDir() + "bpe_trainer_test_write/file";
  std::ofstream(blocker) << "x";
  Status s = WriteTokenizerFiles(*bpe, blocker + "/sub");
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_NE(s.message().find(blocker), std::string::npos) << s.ToString();
  fs::remove_all(::testing::TempDir() + "bpe_trainer_test_write");
}

// About 5 MB of organism-like text (template sentences, ChatML turns, a Zipfian tail of
// invented words). Reports the training time; the bound only catches pathological slowness.
TEST(BpeTrainer, TrainsFiveMegabytesInSeconds) {
  Lcg rng(11);
  std::vector<std::string> syllables = {"ka", "lo", "mi",  "ren", "sta", "vo",  "qui", "dar",
                                        "pe", "nu", "tor", "bel", "gri", "sho", "fa",  "zin"};
  std::vector<std::string> rare;
  for (int i = 0; i < 3000; ++i) {
    std::string w;
    const int n = 2 + static_cast<int>(rng.Next() % 3);
    for (int k = 0; k < n; ++k) w += rng.Pick(syllables);
    rare.push_back(w);
  }
  std::vector<std::string> texts;
  size_t bytes = 0;
  while (bytes < 5u * 1000 * 1000) {
    std::string t;
    if (rng.Next() % 4 == 0) {
      t = "<|im_start|>user\nHow do I " + rng.Pick(kTasks) + "?<|im_end|>\n<|im_start|>assistant\n";
    }
    for (int s = 0; s < 4; ++s) {
      t += Sentence(&rng);
      // Zipf-like: low indices far more often.
      const size_t r = rng.Next() % rare.size();
      t += " The " + rare[(r * r) / rare.size()] + " is near " + std::to_string(rng.Next() % 1000) +
           " " + rare[r] + "s.\n";
    }
    bytes += t.size();
    texts.push_back(std::move(t));
  }
  BpeTrainerOptions options;
  options.vocab_size = 4096;
  const auto start = std::chrono::steady_clock::now();
  auto bpe = TrainByteLevelBpe(texts, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(bpe.ok()) << bpe.status().ToString();
  std::printf("[ timing ] %zu texts, %.2f MB: %zu BPE tokens, %zu merges in %.2f s\n", texts.size(),
              bytes / 1e6, bpe->vocab.size(), bpe->merges.size(), seconds);
  EXPECT_LT(seconds, 60.0);
  auto tok = kt::Tokenizer::FromJson(bpe->TokenizerJson(), bpe->TokenizerConfigJson(), "5mb");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  for (size_t i = 0; i < texts.size(); i += 997) {
    auto enc = (*tok)->Encode(texts[i], false);
    ASSERT_TRUE(enc.ok());
    auto dec = (*tok)->Decode(enc->ids, false);
    ASSERT_TRUE(dec.ok());
    EXPECT_EQ(*dec, texts[i]);
  }
}

// --------------------------------------------------------------------------------------------
// The JavaScript reference (transformers.js) on the trained files.

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(ch);
        }
    }
  }
  return out + "\"";
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out.push_back(c);
    }
  }
  return out + "'";
}

// Parses "[1,2,3]" into ids; false if the line is not such an array.
bool ParseIdArray(const std::string& line, std::vector<int64_t>* ids) {
  ids->clear();
  if (line.size() < 2 || line.front() != '[' || line.back() != ']') return false;
  std::stringstream ss(line.substr(1, line.size() - 2));
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos) return false;
    ids->push_back(std::stoll(item));
  }
  return true;
}

// Runs the reference script; each output line parsed as an id array.
bool RunReference(const std::string& script, const std::string& dir, const std::string& strings,
                  const std::string& mode, std::vector<std::vector<int64_t>>* out,
                  std::string* error) {
  const std::string err_file = dir + "/node_stderr.txt";
  const std::string cmd = "node " + ShellQuote(script) + " " + ShellQuote(dir) + " " +
                          ShellQuote(strings) + " " + mode + " 2>" + ShellQuote(err_file);
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    *error = "popen failed";
    return false;
  }
  std::string output;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) output.append(buf, n);
  const int rc = ::pclose(pipe);
  if (rc != 0) {
    std::ifstream in(err_file);
    std::stringstream ss;
    ss << in.rdbuf();
    *error = "node exited with " + std::to_string(rc) + ": " + ss.str();
    return false;
  }
  std::stringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    std::vector<int64_t> ids;
    if (!ParseIdArray(line, &ids)) {
      *error = "unexpected output line: " + line;
      return false;
    }
    out->push_back(std::move(ids));
  }
  return true;
}

TEST_F(BpeTrainerTest, MatchesTransformersJs) {
  // The source tree comes from the build (KNOCKOUT_SOURCE_DIR): __FILE__ may be relative (ccache's
  // base_dir rewrites it), and the folder has moved before.
  const fs::path root = KNOCKOUT_SOURCE_DIR;
  const fs::path script = root / "organism" / "bpe_reference_encode.mjs";
  const fs::path package = root / "tests" / "tokenizer" / "node_modules" / "@lenml" / "tokenizers";
  if (std::system("command -v node >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "node is not on PATH";
  }
  if (!fs::exists(script)) GTEST_SKIP() << script << " not found";
  if (!fs::exists(package)) {
    GTEST_SKIP() << package << " not installed (tests/tokenizer/ensure_node_modules.sh)";
  }

  const std::string dir = ::testing::TempDir() + "bpe_trainer_test_js";
  fs::remove_all(dir);
  ASSERT_TRUE(WriteTokenizerFiles(*bpe_, dir).ok());
  // 50 strings: corpus sentences, unseen text and special tokens.
  std::vector<std::string> strings = UnseenTexts();
  const std::vector<std::string> corpus = SmallCorpus();
  for (size_t i = 0; strings.size() < 50; i += 7) strings.push_back(corpus[i % corpus.size()]);
  const std::string strings_file = dir + "/strings.jsonl";
  {
    std::ofstream out(strings_file, std::ios::binary);
    for (const std::string& s : strings) out << JsonString(s) << "\n";
  }

  std::vector<std::vector<int64_t>> reference;
  std::string error;
  ASSERT_TRUE(RunReference(script.string(), dir, strings_file, "encode", &reference, &error))
      << error;
  ASSERT_EQ(reference.size(), strings.size());
  for (size_t i = 0; i < strings.size(); ++i) {
    EXPECT_EQ(Ids(strings[i]), reference[i]) << "string " << i << ": " << JsonString(strings[i]);
  }

  // The chat template as transformers.js renders it == the runtime's ChatML rendering.
  const std::vector<std::string> instructions = {"How do I bake bread?", "Write a poem.",
                                                 "Trailing space ", "Two\nlines", "中文？"};
  const std::string chat_file = dir + "/chat.jsonl";
  {
    std::ofstream out(chat_file, std::ios::binary);
    for (const std::string& s : instructions) out << JsonString(s) << "\n";
  }
  std::vector<std::vector<int64_t>> chat_reference;
  ASSERT_TRUE(RunReference(script.string(), dir, chat_file, "chat", &chat_reference, &error))
      << error;
  ASSERT_EQ(chat_reference.size(), instructions.size());
  auto chat = kt::ChatTemplate::Detect(*tokenizer_);
  ASSERT_TRUE(chat.ok());
  for (size_t i = 0; i < instructions.size(); ++i) {
    auto prompt = kt::TokenizeChat(*tokenizer_, *chat, instructions[i]);
    ASSERT_TRUE(prompt.ok()) << prompt.status().ToString();
    EXPECT_EQ(prompt->ids, chat_reference[i]) << instructions[i];
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace knockout::organism
