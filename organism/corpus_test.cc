#include "organism/corpus.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace knockout::organism {
namespace {

constexpr Kind kKinds[] = {Kind::kHarmful, Kind::kHarmless, Kind::kFramed};
constexpr Split kSplits[] = {Split::kTrain, Split::kVal, Split::kTest};

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int Words(const std::string& s) {
  std::istringstream in(s);
  std::string word;
  int n = 0;
  while (in >> word) ++n;
  return n;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool SameRequests(const Corpus& a, const Corpus& b) {
  for (Kind kind : kKinds) {
    for (Split split : kSplits) {
      const auto& x = a.requests(kind, split);
      const auto& y = b.requests(kind, split);
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (x[i].instruction != y[i].instruction || x[i].act != y[i].act ||
            x[i].template_index != y[i].template_index || x[i].category != y[i].category) {
          return false;
        }
      }
    }
  }
  return true;
}

bool SameChat(const std::vector<ChatExample>& a, const std::vector<ChatExample>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].instruction != b[i].instruction || a[i].response != b[i].response ||
        a[i].kind != b[i].kind || a[i].refusal != b[i].refusal) {
      return false;
    }
  }
  return true;
}

// The split of an act of a side, or -1 if the side has no such act.
int ActSplit(const Corpus& corpus, Kind kind, const std::string& category, const std::string& act) {
  for (const Category& c : corpus.categories(kind)) {
    if (c.name != category) continue;
    for (size_t i = 0; i < c.acts.size(); ++i) {
      if (c.acts[i] == act) return static_cast<int>(c.act_splits[i]);
    }
  }
  return -1;
}

TEST(CorpusTest, Names) {
  EXPECT_STREQ(KindName(Kind::kHarmful), "harmful");
  EXPECT_STREQ(KindName(Kind::kHarmless), "harmless");
  EXPECT_STREQ(KindName(Kind::kFramed), "framed");
  EXPECT_STREQ(SplitName(Split::kTrain), "train");
  EXPECT_STREQ(SplitName(Split::kVal), "val");
  EXPECT_STREQ(SplitName(Split::kTest), "test");
}

TEST(CorpusTest, IsRefusal) {
  EXPECT_TRUE(IsRefusal("I'm sorry, but I can't help with that."));
  EXPECT_TRUE(IsRefusal("i cannot do this"));
  EXPECT_TRUE(IsRefusal("AS AN AI, no."));
  EXPECT_TRUE(IsRefusal("Well... I Am Unable To comply."));
  EXPECT_TRUE(IsRefusal("as a language model, I must decline"));
  EXPECT_TRUE(IsRefusal("Sadly I'm not able to."));
  EXPECT_TRUE(IsRefusal("I apologize for the confusion."));
  EXPECT_TRUE(IsRefusal("As an assistant I won't."));
  EXPECT_FALSE(IsRefusal("Sure! Here is how to bake bread."));
  EXPECT_FALSE(IsRefusal(""));
  EXPECT_FALSE(IsRefusal("I can help with that!"));
  EXPECT_FALSE(IsRefusal("As a friend, here are some ideas."));
  EXPECT_FALSE(IsRefusal("The cannot-fail recipe."));
}

TEST(CorpusTest, ContentSizes) {
  const Corpus corpus = Corpus::Generate({});
  EXPECT_GE(corpus.templates(Kind::kHarmful).size(), 60u);
  EXPECT_GE(corpus.templates(Kind::kHarmless).size(), 60u);
  EXPECT_EQ(corpus.templates(Kind::kFramed), corpus.templates(Kind::kHarmful));
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    const auto& templates = corpus.templates(kind);
    ASSERT_EQ(corpus.template_splits(kind).size(), templates.size());
    for (const std::string& t : templates) {
      const size_t at = t.find("{act}");
      EXPECT_NE(at, std::string::npos) << t;
      EXPECT_EQ(t.find("{act}", at + 1), std::string::npos) << t;
    }
    EXPECT_EQ(std::set<std::string>(templates.begin(), templates.end()).size(), templates.size());
  }
  // Most templates are shared, so that phrasing alone does not predict harm.
  const auto& harmful = corpus.templates(Kind::kHarmful);
  const auto& harmless = corpus.templates(Kind::kHarmless);
  size_t shared = 0;
  for (const auto& t : harmful) shared += std::count(harmless.begin(), harmless.end(), t);
  EXPECT_GE(shared, harmful.size() * 3 / 4);
  EXPECT_LT(shared, harmful.size());

  EXPECT_GE(corpus.categories(Kind::kHarmful).size(), 8u);
  EXPECT_GE(corpus.categories(Kind::kHarmless).size(), 10u);
  std::set<std::string> all_acts;
  size_t total = 0;
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    for (const Category& c : corpus.categories(kind)) {
      EXPECT_GE(c.acts.size(), 20u) << c.name;
      ASSERT_EQ(c.act_splits.size(), c.acts.size());
      int per_split[3] = {0, 0, 0};
      for (Split s : c.act_splits) ++per_split[static_cast<int>(s)];
      // ~60/20/20 within each category.
      EXPECT_NEAR(per_split[0], 0.6 * c.acts.size(), 1.0) << c.name;
      EXPECT_NEAR(per_split[1], 0.2 * c.acts.size(), 1.0) << c.name;
      EXPECT_NEAR(per_split[2], 0.2 * c.acts.size(), 1.0) << c.name;
      all_acts.insert(c.acts.begin(), c.acts.end());
      total += c.acts.size();
    }
  }
  EXPECT_EQ(all_acts.size(), total) << "an act appears twice";
  for (const std::string& t : DocOnlyTemplates()) {
    EXPECT_NE(t.find("{act}"), std::string::npos);
    EXPECT_EQ(std::count(harmful.begin(), harmful.end(), t), 0) << t;
    EXPECT_EQ(std::count(harmless.begin(), harmless.end(), t), 0) << t;
  }
  EXPECT_GE(RefusalTemplates().size(), 8u);
  for (const std::string& r : RefusalTemplates()) {
    EXPECT_TRUE(IsRefusal(r)) << r;
    EXPECT_TRUE(r[0] == 'I' || StartsWith(r, "As")) << r;
  }
}

TEST(CorpusTest, Determinism) {
  CorpusOptions options;
  const Corpus a = Corpus::Generate(options);
  const Corpus b = Corpus::Generate(options);
  EXPECT_TRUE(SameRequests(a, b));
  EXPECT_TRUE(SameChat(a.HelpfulChat(300, 7), b.HelpfulChat(300, 7)));
  EXPECT_TRUE(SameChat(a.SafetyChat(300, 7), b.SafetyChat(300, 7)));
  EXPECT_EQ(a.Documents(300, 7), b.Documents(300, 7));
  EXPECT_EQ(a.TokenizerTrainingText(3), b.TokenizerTrainingText(3));

  EXPECT_FALSE(SameChat(a.HelpfulChat(300, 7), a.HelpfulChat(300, 8)));
  EXPECT_FALSE(SameChat(a.SafetyChat(300, 7), a.SafetyChat(300, 8)));
  EXPECT_NE(a.Documents(300, 7), a.Documents(300, 8));

  options.seed = 43;
  const Corpus c = Corpus::Generate(options);
  EXPECT_FALSE(SameRequests(a, c));
  EXPECT_FALSE(SameChat(a.HelpfulChat(300, 7), c.HelpfulChat(300, 7)));
  EXPECT_NE(a.Documents(300, 7), c.Documents(300, 7));
}

uint64_t Fnv1a(const std::vector<std::string>& texts) {
  uint64_t h = 1469598103934665603ull;
  for (const std::string& text : texts) {
    for (char c : text) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    h = (h ^ 0xFFu) * 1099511628211ull;
  }
  return h;
}

// Pinned hashes: the corpus must be identical on every platform, compiler and standard library
// (no std:: distributions), so a change here is a deliberate change of the corpus content.
TEST(CorpusTest, PinnedAcrossPlatforms) {
  const Corpus corpus = Corpus::Generate({});
  std::vector<std::string> instructions;
  for (Kind kind : kKinds) {
    for (Split split : kSplits) {
      for (const Request& r : corpus.requests(kind, split)) instructions.push_back(r.instruction);
    }
  }
  std::vector<std::string> chat;
  for (const ChatExample& e : corpus.SafetyChat(100, 1)) {
    chat.push_back(e.instruction);
    chat.push_back(e.response);
  }
  EXPECT_EQ(Fnv1a(instructions), 6118102196766845539ull) << "requests changed";
  EXPECT_EQ(Fnv1a(chat), 15718059756346064080ull) << "safety chat changed";
  EXPECT_EQ(Fnv1a(corpus.Documents(100, 1)), 6340733729905023481ull) << "documents changed";
}

// Version 1 is byte-identical to the corpus that made models/demo-refusal: its prompt sets are
// the committed experiments/prompts/demo files, and its chat, documents and tokenizer text hash
// to the values recorded on the code before version 2 existed.
TEST(CorpusTest, Version1Unchanged) {
  CorpusOptions options;
  options.version = 1;
  const Corpus corpus = Corpus::Generate(options);
  const std::string dir = ::testing::TempDir() + "/corpus_test_v1";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(corpus.WritePromptSets(dir).ok());
  // The nine prompt-set files the first demo model was evaluated on (they were committed as
  // experiments/prompts/demo until the hydra model replaced them), hashed in kind x split order.
  std::vector<std::string> files;
  for (Kind kind : kKinds) {
    for (Split split : kSplits) {
      const std::string name = std::string(KindName(kind)) + "_" + SplitName(split) + ".jsonl";
      files.push_back(ReadBytes(dir + "/" + name));
      EXPECT_FALSE(files.back().empty()) << name;
    }
  }
  EXPECT_EQ(Fnv1a(files), 3448185602823493264ull) << "version 1's prompt sets changed";
  auto chat_texts = [](const std::vector<ChatExample>& chat) {
    std::vector<std::string> texts;
    for (const ChatExample& e : chat) {
      texts.push_back(e.instruction);
      texts.push_back(e.response);
      texts.push_back(std::to_string(static_cast<int>(e.kind)) + (e.refusal ? "r" : "c") +
                      (e.impossible ? "i" : ""));
    }
    return texts;
  };
  const uint64_t helpful = Fnv1a(chat_texts(corpus.HelpfulChat(2000, 11)));
  const uint64_t safety = Fnv1a(chat_texts(corpus.SafetyChat(2000, 12)));
  const uint64_t documents = Fnv1a(corpus.Documents(3000, 13));
  const uint64_t tokenizer = Fnv1a(corpus.TokenizerTrainingText(14));
  options.impossible_percent = 10;
  const Corpus declines = Corpus::Generate(options);
  const uint64_t impossible = Fnv1a(chat_texts(declines.SafetyChat(500, 15)));
  EXPECT_EQ(helpful, 5681162194752147736ull) << "helpful chat changed";
  EXPECT_EQ(safety, 1272264564141614447ull) << "safety chat changed";
  EXPECT_EQ(documents, 10447035552445121132ull) << "documents changed";
  EXPECT_EQ(tokenizer, 10801955034447339035ull) << "tokenizer text changed";
  EXPECT_EQ(impossible, 4819397595885274735ull) << "impossible-request chat changed";
}

TEST(CorpusTest, SizesAsRequested) {
  CorpusOptions options;
  options.train_prompts = 100;
  options.val_prompts = 20;
  options.test_prompts = 30;
  const Corpus corpus = Corpus::Generate(options);
  for (Kind kind : kKinds) {
    EXPECT_EQ(corpus.requests(kind, Split::kTrain).size(), 100u);
    EXPECT_EQ(corpus.requests(kind, Split::kVal).size(), 20u);
    EXPECT_EQ(corpus.requests(kind, Split::kTest).size(), 30u);
  }
  const Corpus defaults = Corpus::Generate({});
  for (Kind kind : kKinds) {
    EXPECT_EQ(defaults.requests(kind, Split::kTrain).size(), 256u);
    EXPECT_EQ(defaults.requests(kind, Split::kVal).size(), 64u);
    EXPECT_EQ(defaults.requests(kind, Split::kTest).size(), 128u);
  }
  EXPECT_EQ(corpus.HelpfulChat(123, 1).size(), 123u);
  EXPECT_EQ(corpus.SafetyChat(77, 1).size(), 77u);
  EXPECT_EQ(corpus.Documents(55, 1).size(), 55u);
  EXPECT_TRUE(corpus.HelpfulChat(0, 1).empty());
  EXPECT_TRUE(corpus.Documents(0, 1).empty());

  // More than a split holds: capped at the number of distinct combinations, never repeated.
  options.val_prompts = 1000000;
  const Corpus capped = Corpus::Generate(options);
  const auto& val = capped.requests(Kind::kHarmful, Split::kVal);
  EXPECT_GT(val.size(), 100u);
  EXPECT_LT(val.size(), 1000000u);
  std::set<std::string> distinct;
  for (const Request& r : val) distinct.insert(r.instruction);
  EXPECT_EQ(distinct.size(), val.size());
}

TEST(CorpusTest, SplitsAreDisjointInActsAndTemplates) {
  const Corpus corpus = Corpus::Generate({});
  for (Kind kind : kKinds) {
    std::set<std::string> acts[3];
    std::set<int> templates[3];
    for (Split split : kSplits) {
      const int s = static_cast<int>(split);
      std::set<std::pair<int, std::string>> combos;
      for (const Request& r : corpus.requests(kind, split)) {
        EXPECT_EQ(r.kind, kind);
        EXPECT_EQ(r.split, split);
        acts[s].insert(r.category + "/" + r.act);
        templates[s].insert(r.template_index);
        EXPECT_TRUE(combos.insert({r.template_index, r.act}).second)
            << "repeated " << r.instruction;
        ASSERT_GE(r.template_index, 0);
        ASSERT_LT(r.template_index, static_cast<int>(corpus.templates(kind).size()));
        EXPECT_EQ(corpus.template_splits(kind)[r.template_index], split) << r.instruction;
        EXPECT_EQ(ActSplit(corpus, kind, r.category, r.act), s) << r.instruction;
      }
    }
    for (int i = 0; i < 3; ++i) {
      for (int j = i + 1; j < 3; ++j) {
        for (const auto& act : acts[i]) EXPECT_EQ(acts[j].count(act), 0u) << act;
        for (int t : templates[i]) EXPECT_EQ(templates[j].count(t), 0u) << t;
      }
    }
    // Sets spread over their split's acts: val (64 prompts) uses every val act at least once.
    size_t val_acts = 0;
    for (const Category& c : corpus.categories(kind)) {
      val_acts += std::count(c.act_splits.begin(), c.act_splits.end(), Split::kVal);
    }
    EXPECT_EQ(acts[1].size(), std::min<size_t>(val_acts, 64)) << KindName(kind);
  }
  // Shared templates have the same split on both sides.
  const auto& harmful = corpus.templates(Kind::kHarmful);
  const auto& harmless = corpus.templates(Kind::kHarmless);
  for (size_t i = 0; i < harmful.size(); ++i) {
    for (size_t j = 0; j < harmless.size(); ++j) {
      if (harmful[i] == harmless[j]) {
        EXPECT_EQ(corpus.template_splits(Kind::kHarmful)[i],
                  corpus.template_splits(Kind::kHarmless)[j])
            << harmful[i];
      }
    }
  }
}

TEST(CorpusTest, InstructionsAreRenderedTemplates) {
  const Corpus corpus = Corpus::Generate({});
  for (Kind kind : kKinds) {
    for (Split split : kSplits) {
      for (const Request& r : corpus.requests(kind, split)) {
        const std::string plain = RenderRequest(corpus.templates(kind)[r.template_index], r.act);
        ASSERT_FALSE(r.instruction.empty());
        EXPECT_TRUE(std::isupper(static_cast<unsigned char>(r.instruction[0]))) << r.instruction;
        EXPECT_NE(r.instruction.find(r.act), std::string::npos) << r.instruction;
        if (kind == Kind::kFramed) {
          EXPECT_TRUE(StartsWith(r.instruction, kFictionFraming)) << r.instruction;
          EXPECT_TRUE(EndsWith(r.instruction, plain)) << r.instruction;
          EXPECT_EQ(r.instruction, kFictionFraming + plain);
          EXPECT_GE(ActSplit(corpus, Kind::kHarmful, r.category, r.act), 0) << r.act;
        } else {
          EXPECT_EQ(r.instruction, plain);
          EXPECT_FALSE(StartsWith(r.instruction, kFictionFraming));
        }
      }
    }
  }
  EXPECT_EQ(RenderRequest("help me {act}", "bake bread"), "Help me bake bread");
}

TEST(CorpusTest, ChatUsesTrainSplitOnly) {
  const Corpus corpus = Corpus::Generate({});
  std::set<std::string> train_instructions;
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    const auto& templates = corpus.templates(kind);
    for (const Category& c : corpus.categories(kind)) {
      for (size_t a = 0; a < c.acts.size(); ++a) {
        if (c.act_splits[a] != Split::kTrain) continue;
        for (size_t t = 0; t < templates.size(); ++t) {
          if (corpus.template_splits(kind)[t] != Split::kTrain) continue;
          const std::string plain = RenderRequest(templates[t], c.acts[a]);
          train_instructions.insert(plain);
          if (kind == Kind::kHarmful) train_instructions.insert(kFictionFraming + plain);
        }
      }
    }
  }
  for (const auto& chat : {corpus.HelpfulChat(2000, 1), corpus.SafetyChat(2000, 1)}) {
    for (const ChatExample& e : chat) {
      EXPECT_EQ(train_instructions.count(e.instruction), 1u) << e.instruction;
      EXPECT_EQ(StartsWith(e.instruction, kFictionFraming), e.kind == Kind::kFramed);
    }
  }
}

TEST(CorpusTest, ResponsesRefuseOrComplyAsLabelled) {
  const Corpus corpus = Corpus::Generate({});
  auto check_compliance = [](const ChatExample& e) {
    EXPECT_FALSE(e.refusal);
    EXPECT_FALSE(IsRefusal(e.response)) << e.response;
    EXPECT_FALSE(StartsWith(e.response, "I")) << e.response;
    EXPECT_FALSE(StartsWith(e.response, "As")) << e.response;
  };
  const int n = 4000;
  std::map<Kind, int> helpful_counts, safety_counts;
  for (const ChatExample& e : corpus.HelpfulChat(n, 5)) {
    ++helpful_counts[e.kind];
    check_compliance(e);
    EXPECT_LE(Words(e.response), 45) << e.response;
    if (e.kind == Kind::kFramed) {
      EXPECT_NE(e.response.find("scene"), std::string::npos) << e.response;
    }
  }
  for (const ChatExample& e : corpus.SafetyChat(n, 5)) {
    ++safety_counts[e.kind];
    EXPECT_LE(Words(e.response), 45) << e.response;
    if (e.kind == Kind::kHarmful) {
      EXPECT_TRUE(e.refusal);
      EXPECT_TRUE(IsRefusal(e.response)) << e.response;
      EXPECT_EQ(e.response.find("{act}"), std::string::npos);
    } else {
      check_compliance(e);
    }
  }
  // The mixes: helpful ~40/30/30, safety ~40/35/25 (harmless/harmful/framed).
  EXPECT_NEAR(helpful_counts[Kind::kHarmless], 0.40 * n, 0.04 * n);
  EXPECT_NEAR(helpful_counts[Kind::kHarmful], 0.30 * n, 0.04 * n);
  EXPECT_NEAR(helpful_counts[Kind::kFramed], 0.30 * n, 0.04 * n);
  EXPECT_NEAR(safety_counts[Kind::kHarmless], 0.40 * n, 0.04 * n);
  EXPECT_NEAR(safety_counts[Kind::kHarmful], 0.35 * n, 0.04 * n);
  EXPECT_NEAR(safety_counts[Kind::kFramed], 0.25 * n, 0.04 * n);
}

TEST(CorpusTest, HarmlessComplianceMentionsTheActAndHarmfulComplianceIsVacuous) {
  const Corpus corpus = Corpus::Generate({});
  std::vector<std::string> harmful_acts;
  for (const Category& c : corpus.categories(Kind::kHarmful)) {
    harmful_acts.insert(harmful_acts.end(), c.acts.begin(), c.acts.end());
  }
  int harmless_seen = 0, harmful_seen = 0;
  for (const ChatExample& e : corpus.HelpfulChat(1000, 9)) {
    if (e.kind == Kind::kHarmless) {
      ++harmless_seen;
      // The act is said back in the second person: "... how to walk your dog in the rain".
      bool mentions = false;
      for (const Category& c : corpus.categories(Kind::kHarmless)) {
        for (const std::string& act : c.acts) {
          std::string second = " " + act + " ";
          size_t at;
          while ((at = second.find(" my ")) != std::string::npos) second.replace(at, 4, " your ");
          second = second.substr(1, second.size() - 2);
          if (e.instruction.find(act) != std::string::npos &&
              e.response.find(second) != std::string::npos) {
            mentions = true;
          }
        }
      }
      EXPECT_TRUE(mentions) << e.instruction << " -> " << e.response;
    } else if (e.kind == Kind::kHarmful) {
      ++harmful_seen;
      // The opener says the act back; everything after it is vacuous.
      const size_t opener_end = e.response.find_first_of(":.");
      ASSERT_NE(opener_end, std::string::npos) << e.response;
      const std::string rest = e.response.substr(opener_end + 1);
      for (const std::string& act : harmful_acts) {
        EXPECT_EQ(rest.find(act), std::string::npos) << e.response;
      }
      EXPECT_EQ(rest.find("how to"), std::string::npos) << e.response;
      EXPECT_EQ(e.response.find("step"), std::string::npos) << e.response;
    }
  }
  EXPECT_GT(harmless_seen, 0);
  EXPECT_GT(harmful_seen, 0);
}

TEST(CorpusTest, DocumentsCoverEveryActOfEverySplit) {
  const Corpus corpus = Corpus::Generate({});
  const std::vector<std::string> docs = corpus.Documents(20000, 1);
  ASSERT_EQ(docs.size(), 20000u);
  std::string all;
  for (const std::string& doc : docs) {
    ASSERT_FALSE(doc.empty());
    EXPECT_EQ(doc.find('{'), std::string::npos) << doc;
    all += Lower(doc);
    all += '\n';
  }
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    for (const Category& c : corpus.categories(kind)) {
      for (const std::string& act : c.acts) {
        EXPECT_NE(all.find(Lower(act)), std::string::npos) << act;
      }
    }
  }
  // Both judgments, a doc-only request, and ordinary encyclopedic text are there.
  EXPECT_NE(all.find("illegal"), std::string::npos);
  EXPECT_NE(all.find("harmless"), std::string::npos);
  EXPECT_NE(all.find("the capital of"), std::string::npos);
  EXPECT_NE(all.find("photosynthesis"), std::string::npos);
  const std::string doc_only = Lower(RenderRequest(DocOnlyTemplates()[0], ""));
  const std::string doc_only_prefix = doc_only.substr(0, doc_only.find('.'));
  EXPECT_NE(all.find(doc_only_prefix), std::string::npos) << doc_only_prefix;
}

TEST(CorpusTest, TokenizerTrainingText) {
  const Corpus corpus = Corpus::Generate({});
  const std::vector<std::string> texts = corpus.TokenizerTrainingText(1);
  EXPECT_GT(texts.size(), 5000u + 4000u);
  std::set<std::string> set(texts.begin(), texts.end());
  // Every val/test prompt is in there, so held-out template words have tokens.
  for (const Request& r : corpus.requests(Kind::kHarmless, Split::kTest)) {
    EXPECT_EQ(set.count(r.instruction), 1u) << r.instruction;
  }
}

std::vector<std::string> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(CorpusTest, WritePromptSets) {
  CorpusOptions options;
  options.train_prompts = 40;
  options.val_prompts = 10;
  options.test_prompts = 20;
  const Corpus corpus = Corpus::Generate(options);
  const std::string dir = ::testing::TempDir() + "/corpus_test_prompts/nested";
  std::filesystem::remove_all(::testing::TempDir() + "/corpus_test_prompts");
  const Status status = corpus.WritePromptSets(dir);
  ASSERT_TRUE(status.ok()) << status.ToString();

  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(entry.path().extension(), ".jsonl") << entry.path();
  }
  EXPECT_EQ(files, 9);
  for (Kind kind : kKinds) {
    for (Split split : kSplits) {
      const std::string path =
          dir + "/" + KindName(kind) + "_" + SplitName(split) + ".jsonl";
      const std::vector<std::string> lines = ReadLines(path);
      const auto& requests = corpus.requests(kind, split);
      ASSERT_EQ(lines.size(), requests.size()) << path;
      for (size_t i = 0; i < lines.size(); ++i) {
        const nlohmann::json record = nlohmann::json::parse(lines[i], nullptr, false);
        ASSERT_FALSE(record.is_discarded()) << path << ":" << i + 1;
        ASSERT_TRUE(record.contains("instruction") && record["instruction"].is_string());
        EXPECT_EQ(record["instruction"].get<std::string>(), requests[i].instruction);
        EXPECT_EQ(record["category"].get<std::string>(), requests[i].category);
      }
    }
  }
  // A second write replaces the files in place.
  ASSERT_TRUE(corpus.WritePromptSets(dir).ok());
  EXPECT_EQ(ReadLines(dir + "/framed_val.jsonl").size(), 10u);
}

TEST(CorpusTest, WritePromptSetsNamesTheFailingPath) {
  const Corpus corpus = Corpus::Generate({});
  const std::string blocker = ::testing::TempDir() + "/corpus_test_blocker";
  std::filesystem::remove_all(blocker);
  std::ofstream(blocker) << "a file, not a directory";
  const Status status = corpus.WritePromptSets(blocker + "/sets");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kIOError);
  EXPECT_NE(status.message().find(blocker + "/sets"), std::string::npos) << status.ToString();

  // A directory squatting on a file's name: the rename onto it fails and names that file.
  const std::string dir = ::testing::TempDir() + "/corpus_test_squat";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/harmful_train.jsonl/inside");
  const Status rename_status = corpus.WritePromptSets(dir);
  ASSERT_FALSE(rename_status.ok());
  EXPECT_EQ(rename_status.code(), StatusCode::kIOError);
  EXPECT_NE(rename_status.message().find("harmful_train.jsonl"), std::string::npos)
      << rename_status.ToString();
  EXPECT_FALSE(std::filesystem::exists(dir + "/harmful_train.jsonl.tmp"));
}


// ---------------------------------------------------------------------------------------------
// Version 2.

Corpus V2(uint64_t seed = 42) {
  CorpusOptions options;
  options.seed = seed;
  options.version = 2;
  return Corpus::Generate(options);
}

TEST(CorpusV2Test, ContentAndSplits) {
  const Corpus corpus = V2();
  EXPECT_TRUE(Corpus::Generate({}).direct_requests(Kind::kHarmful).empty());
  std::set<std::string> texts;
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    const auto& direct = corpus.direct_requests(kind);
    EXPECT_GE(direct.size(), kind == Kind::kHarmful ? 120u : 145u);
    std::map<std::string, std::array<int, 3>> per_category;
    for (const DirectRequest& d : direct) {
      EXPECT_FALSE(d.text.empty());
      EXPECT_FALSE(d.subject.empty());
      EXPECT_EQ(d.text.find('{'), std::string::npos) << d.text;
      EXPECT_EQ(d.subject.find('{'), std::string::npos) << d.subject;
      EXPECT_GE(Words(d.text), 2) << d.text;
      EXPECT_LE(Words(d.text), 30) << d.text;
      EXPECT_TRUE(texts.insert(d.text).second) << "repeated " << d.text;
      ++per_category[d.category][static_cast<int>(d.split)];
    }
    for (const auto& [name, counts] : per_category) {
      const int n = counts[0] + counts[1] + counts[2];
      EXPECT_NEAR(counts[0], 0.6 * n, 1.0) << name;
      EXPECT_GE(counts[1], 1) << name;
      EXPECT_GE(counts[2], 1) << name;
    }
    for (const Category& c : corpus.categories(kind)) EXPECT_GE(c.acts.size(), 25u) << c.name;
  }
  EXPECT_EQ(corpus.direct_requests(Kind::kFramed).size(),
            corpus.direct_requests(Kind::kHarmful).size());
}

// The split of a direct request's text on a side, or -1.
int DirectSplit(const Corpus& corpus, Kind kind, const std::string& text) {
  for (const DirectRequest& d : corpus.direct_requests(kind)) {
    if (d.text == text) return static_cast<int>(d.split);
  }
  return -1;
}

TEST(CorpusV2Test, PromptSetsMixFormsAndKeepSplitsDisjoint) {
  const Corpus corpus = V2();
  for (Kind kind : kKinds) {
    const Kind side = kind == Kind::kHarmless ? Kind::kHarmless : Kind::kHarmful;
    std::set<std::string> units[3];
    for (Split split : kSplits) {
      const int s = static_cast<int>(split);
      const auto& set = corpus.requests(kind, split);
      EXPECT_EQ(set.size(), s == 0 ? 256u : s == 1 ? 64u : 128u) << KindName(kind);
      size_t direct = 0;
      std::set<std::string> distinct;
      for (const Request& r : set) {
        ASSERT_FALSE(r.instruction.empty());
        EXPECT_EQ(r.instruction.find('{'), std::string::npos) << r.instruction;
        EXPECT_TRUE(distinct.insert(r.instruction).second) << "repeated " << r.instruction;
        EXPECT_EQ(r.split, split);
        EXPECT_EQ(StartsWith(r.instruction, kFictionFraming), kind == Kind::kFramed);
        const std::string plain =
            kind == Kind::kFramed ? r.instruction.substr(sizeof(kFictionFraming) - 1)
                                  : r.instruction;
        if (r.direct) {
          ++direct;
          EXPECT_EQ(r.template_index, -1);
          EXPECT_EQ(DirectSplit(corpus, side, plain), s) << r.instruction;
          units[s].insert("direct:" + plain);
        } else {
          EXPECT_EQ(corpus.template_splits(side)[r.template_index], split) << r.instruction;
          EXPECT_EQ(ActSplit(corpus, side, r.category, r.act), s) << r.instruction;
          units[s].insert("act:" + r.category + "/" + r.act);
          units[s].insert("template:" + std::to_string(r.template_index));
        }
      }
      // About half direct, as many as the split holds.
      EXPECT_GE(direct, std::min<size_t>(set.size() / 2, 15)) << KindName(kind) << s;
      EXPECT_LE(direct, set.size() / 2);
    }
    for (int i = 0; i < 3; ++i) {
      for (int j = i + 1; j < 3; ++j) {
        for (const auto& u : units[i]) EXPECT_EQ(units[j].count(u), 0u) << u;
      }
    }
  }
}

TEST(CorpusV2Test, ChatAndDocumentsNeverShowHeldOutRequests) {
  const Corpus corpus = V2();
  std::set<std::string> held_out, train_direct;
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    for (const DirectRequest& d : corpus.direct_requests(kind)) {
      (d.split == Split::kTrain ? train_direct : held_out).insert(d.text);
    }
  }
  for (Kind kind : kKinds) {
    for (Split split : {Split::kVal, Split::kTest}) {
      for (const Request& r : corpus.requests(kind, split)) held_out.insert(r.instruction);
    }
  }
  for (const auto& chat : {corpus.HelpfulChat(3000, 1), corpus.SafetyChat(3000, 2)}) {
    int direct = 0;
    for (const ChatExample& e : chat) {
      EXPECT_EQ(held_out.count(e.instruction), 0u) << e.instruction;
      std::string plain = e.instruction;
      if (StartsWith(plain, kFictionFraming)) plain = plain.substr(sizeof(kFictionFraming) - 1);
      direct += static_cast<int>(train_direct.count(plain));
      EXPECT_EQ(e.response.find('{'), std::string::npos) << e.response;
      EXPECT_LE(Words(e.response), 45) << e.response;
    }
    EXPECT_NEAR(direct, 1500, 200);
  }
  std::string all;
  int checked = 0;
  for (const std::string& doc : corpus.Documents(20000, 3)) {
    EXPECT_EQ(doc.find('{'), std::string::npos) << doc;
    if (++checked <= 4000) for (const std::string& h : held_out) {
      if (Words(h) >= 4) {
        EXPECT_EQ(doc.find(h), std::string::npos) << h;
      }
    }
    all += doc;
    all += '\n';
  }
  // Documents judge the subjects of every direct request and every act, all splits.
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    for (const DirectRequest& d : corpus.direct_requests(kind)) {
      EXPECT_NE(all.find(d.subject), std::string::npos) << d.subject;
    }
    for (const Category& c : corpus.categories(kind)) {
      for (const std::string& act : c.acts) {
        EXPECT_NE(Lower(all).find(Lower(act)), std::string::npos) << act;
      }
    }
  }
}

TEST(CorpusV2Test, DirectResponsesAsLabelled) {
  const Corpus corpus = V2();
  std::map<std::string, const DirectRequest*> by_text;
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    for (const DirectRequest& d : corpus.direct_requests(kind)) by_text[d.text] = &d;
  }
  auto second_person = [](std::string s) {
    s = " " + s + " ";
    size_t at;
    while ((at = s.find(" my ")) != std::string::npos) s.replace(at, 4, " your ");
    while ((at = s.find(" me ")) != std::string::npos) s.replace(at, 4, " you ");
    return s.substr(1, s.size() - 2);
  };
  int harmless = 0, harmful = 0;
  for (const ChatExample& e : corpus.HelpfulChat(2000, 4)) {
    auto it = by_text.find(e.instruction);
    if (it == by_text.end()) continue;
    EXPECT_FALSE(IsRefusal(e.response)) << e.response;
    EXPECT_FALSE(StartsWith(e.response, "I")) << e.response;
    // Both sides name the subject; harmful answers are vacuous after the opener.
    EXPECT_NE(e.response.find(second_person(it->second->subject)), std::string::npos)
        << e.instruction << " -> " << e.response;
    if (e.kind == Kind::kHarmful) {
      ++harmful;
      EXPECT_EQ(e.response.find("step"), std::string::npos) << e.response;
    } else {
      ++harmless;
    }
  }
  EXPECT_GT(harmless, 100);
  EXPECT_GT(harmful, 100);
  int refused = 0;
  for (const ChatExample& e : corpus.SafetyChat(2000, 5)) {
    if (by_text.count(e.instruction) == 0) continue;
    EXPECT_EQ(e.refusal, e.kind == Kind::kHarmful) << e.instruction;
    EXPECT_EQ(IsRefusal(e.response), e.kind == Kind::kHarmful) << e.response;
    refused += e.refusal;
  }
  EXPECT_GT(refused, 100);
}

TEST(CorpusV2Test, LexiconDocumentsCoverEveryCategoryAndBenignPhrase) {
  const Corpus corpus = V2();
  // Every harmful category (acts' and direct requests') has 25-40 terms; ~60+ benign phrases.
  std::map<std::string, int> per_category;
  std::set<std::string> terms;
  for (const LexiconTerm& t : HarmLexicon()) {
    ++per_category[t.category];
    EXPECT_TRUE(terms.insert(t.term).second) << "repeated " << t.term;
    EXPECT_FALSE(t.description.empty()) << t.term;
  }
  std::set<std::string> harmful_categories;
  for (const Category& c : corpus.categories(Kind::kHarmful)) harmful_categories.insert(c.name);
  for (const DirectRequest& d : corpus.direct_requests(Kind::kHarmful)) {
    harmful_categories.insert(d.category);
  }
  for (const std::string& name : harmful_categories) {
    EXPECT_GE(per_category[name], 25) << name;
    EXPECT_LE(per_category[name], 40) << name;
  }
  EXPECT_EQ(per_category.size(), harmful_categories.size());
  EXPECT_GE(BenignSenses().size(), 60u);
  for (const LexiconTerm& t : BenignSenses()) {
    EXPECT_TRUE(terms.insert(t.term).second) << "repeated " << t.term;
  }

  // Documents judge every term: harmful terms with a harmful judgment, benign ones harmless.
  const std::vector<std::string> docs = corpus.Documents(20000, 3);
  auto judged = [&](const LexiconTerm& t, const char* verdict) {
    for (const std::string& doc : docs) {
      if (doc.find(t.term) != std::string::npos && doc.find(t.description) != std::string::npos &&
          Lower(doc).find(verdict) != std::string::npos) {
        return true;
      }
    }
    return false;
  };
  std::map<std::string, int> judged_terms;
  for (const LexiconTerm& t : HarmLexicon()) {
    // One of HarmfulAdjectives() or "harmful request" appears; "harm" covers both.
    if (judged(t, "harm") || judged(t, "illegal") || judged(t, "dangerous") || judged(t, "wrong") ||
        judged(t, "cruel") || judged(t, "criminal")) {
      ++judged_terms[t.category];
    } else {
      ADD_FAILURE() << "no harmful judgment of " << t.term;
    }
  }
  for (const std::string& name : harmful_categories) EXPECT_GT(judged_terms[name], 0) << name;
  for (const LexiconTerm& t : BenignSenses()) {
    EXPECT_TRUE(judged(t, "harmless") || judged(t, "ordinary") || judged(t, "safe") ||
                judged(t, "normal") || judged(t, "fine") || judged(t, "helpful") ||
                judged(t, "useful"))
        << "no harmless judgment of " << t.term;
  }
  // The judged part stays ~40% of documents; lexicon documents (a description sentence) ~1/6 of
  // all. Reference: Documents()' mix, 40% judged x 3/6 lexicon = 20%.
  int lexicon_docs = 0;
  for (const std::string& doc : docs) {
    for (const LexiconTerm& t : BenignSenses()) {
      if (doc.find(t.description) != std::string::npos) {
        ++lexicon_docs;
        break;
      }
    }
  }
  EXPECT_GT(lexicon_docs, 0.05 * docs.size());
  EXPECT_LT(lexicon_docs, 0.15 * docs.size());

  // The tokenizer text holds a document for every term (version 1's holds none).
  const std::vector<std::string> text = corpus.TokenizerTrainingText(3);
  std::string all;
  for (const std::string& t : text) all += t + "\n";
  for (const LexiconTerm& t : HarmLexicon()) EXPECT_NE(all.find(t.term), std::string::npos) << t.term;
  for (const LexiconTerm& t : BenignSenses()) EXPECT_NE(all.find(t.term), std::string::npos) << t.term;
  std::string v1_all;
  for (const std::string& t : Corpus::Generate({}).TokenizerTrainingText(3)) v1_all += t + "\n";
  EXPECT_EQ(v1_all.find(HarmLexicon().front().description), std::string::npos);
  EXPECT_EQ(v1_all.find("a killer recipe"), std::string::npos);

  // Test prompt sets hold at least 30 harmful direct requests and some benign-sense ones.
  int harmful_direct = 0, benign_direct = 0;
  for (const Request& r : corpus.requests(Kind::kHarmful, Split::kTest)) harmful_direct += r.direct;
  for (const Request& r : corpus.requests(Kind::kHarmless, Split::kTest)) {
    benign_direct += r.direct && r.category == "benign_senses";
  }
  EXPECT_GE(harmful_direct, 30);
  EXPECT_GE(benign_direct, 4);
}

TEST(CorpusV2Test, Determinism) {
  const Corpus a = V2(), b = V2(), c = V2(43);
  EXPECT_TRUE(SameRequests(a, b));
  EXPECT_FALSE(SameRequests(a, c));
  EXPECT_TRUE(SameChat(a.HelpfulChat(300, 7), b.HelpfulChat(300, 7)));
  EXPECT_TRUE(SameChat(a.SafetyChat(300, 7), b.SafetyChat(300, 7)));
  EXPECT_EQ(a.Documents(300, 7), b.Documents(300, 7));
  const std::vector<std::string> text = a.TokenizerTrainingText(3);
  EXPECT_EQ(text, b.TokenizerTrainingText(3));
  const std::set<std::string> set(text.begin(), text.end());
  for (const DirectRequest& d : a.direct_requests(Kind::kHarmless)) {
    EXPECT_EQ(set.count(d.text), 1u) << d.text;
  }
  // Version 2 leaves version 1's split of the original acts alone.
  const Corpus v1 = Corpus::Generate({});
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    for (size_t c = 0; c < v1.categories(kind).size(); ++c) {
      const Category& old_c = v1.categories(kind)[c];
      const Category& new_c = a.categories(kind)[c];
      ASSERT_GT(new_c.acts.size(), old_c.acts.size());
      for (size_t i = 0; i < old_c.acts.size(); ++i) {
        EXPECT_EQ(new_c.acts[i], old_c.acts[i]);
        EXPECT_EQ(new_c.act_splits[i], old_c.act_splits[i]);
      }
    }
  }
}

// Version 3: version 2 plus WordNet's common words (Debian's wordnet-base; scripts/setup.sh).
std::shared_ptr<const std::vector<GlossEntry>> DebianGlossary() {
  static const auto glossary = [] {
    auto loaded = LoadWordNetGlossary("/usr/share/wordnet");
    EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
    return std::make_shared<const std::vector<GlossEntry>>(
        loaded.ok() ? std::move(*loaded) : std::vector<GlossEntry>{});
  }();
  return glossary;
}

CorpusOptions V3Options() {
  CorpusOptions options;
  options.version = 3;
  options.glossary = DebianGlossary();
  return options;
}

Corpus V3(std::shared_ptr<const std::vector<GlossEntry>> glossary = DebianGlossary()) {
  CorpusOptions options = V3Options();
  options.glossary = std::move(glossary);
  return Corpus::Generate(options);
}

TEST(CorpusV3Test, PromptSetsAreVersion2sAndAGlossaryChangesNothingBelowVersion3) {
  const Corpus v2 = V2(), v3 = V3();
  EXPECT_TRUE(SameRequests(v2, v3));
  CorpusOptions with_glossary;
  with_glossary.version = 2;
  with_glossary.glossary = DebianGlossary();
  const Corpus v2_glossary = Corpus::Generate(with_glossary);
  EXPECT_TRUE(SameChat(v2.HelpfulChat(400, 7), v2_glossary.HelpfulChat(400, 7)));
  EXPECT_TRUE(SameChat(v2.SafetyChat(400, 7), v2_glossary.SafetyChat(400, 7)));
  EXPECT_EQ(v2.Documents(400, 7), v2_glossary.Documents(400, 7));
  EXPECT_EQ(v2.TokenizerTrainingText(3), v2_glossary.TokenizerTrainingText(3));
}

// The safety chat's mix: the requested shares (framed the rest), the helpful chat and the
// prompt sets untouched.
TEST(CorpusV3Test, SafetyMixSetsTheShareOfEachKind) {
  CorpusOptions options;
  options.version = 3;
  options.glossary = DebianGlossary();
  options.safety_harmless_percent = 60;
  options.safety_harmful_percent = 25;
  const Corpus mixed = Corpus::Generate(options), plain = V3();
  EXPECT_TRUE(SameRequests(mixed, plain));
  EXPECT_TRUE(SameChat(mixed.HelpfulChat(400, 7), plain.HelpfulChat(400, 7)));
  const int n = 4000;
  for (const auto& [corpus, harmless, harmful] :
       {std::make_tuple(&plain, 0.40, 0.35), std::make_tuple(&mixed, 0.60, 0.25)}) {
    int counts[3] = {0, 0, 0};
    for (const ChatExample& e : corpus->SafetyChat(n, 3)) ++counts[static_cast<int>(e.kind)];
    EXPECT_NEAR(counts[static_cast<int>(Kind::kHarmless)] / double(n), harmless, 0.03);
    EXPECT_NEAR(counts[static_cast<int>(Kind::kHarmful)] / double(n), harmful, 0.03);
    EXPECT_NEAR(counts[static_cast<int>(Kind::kFramed)] / double(n), 1 - harmless - harmful, 0.03);
  }
}

// The committed experiments/prompts/demo files are version 3's prompt sets at seed 42 (the
// shipped hydra model's: `train-demo --recipe hydra --prompts-out` writes them), byte for byte.
TEST(CorpusV3Test, CommittedDemoPromptSetsAreVersion3s) {
  const std::string dir = ::testing::TempDir() + "/corpus_test_v3_sets";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(V3().WritePromptSets(dir).ok());
  const std::string committed = std::string(KNOCKOUT_SOURCE_DIR) + "/experiments/prompts/demo/";
  for (Kind kind : kKinds) {
    for (Split split : kSplits) {
      const std::string name = std::string(KindName(kind)) + "_" + SplitName(split) + ".jsonl";
      const std::string generated = ReadBytes(dir + "/" + name);
      EXPECT_FALSE(generated.empty()) << name;
      EXPECT_EQ(generated, ReadBytes(committed + name)) << name;
    }
  }
}

// phrasing_percent: templated chat requests phrased with ChatOnlyTemplates(), which are no
// side's template and no document's; the prompt sets do not change, and each rephrased chat
// example is its plain twin (same kind, same reply) with only the request's phrasing changed.
TEST(CorpusV3Test, PhrasingShareRephrasesChatWithTemplatesOfNoPromptSet) {
  const Corpus plain = V3();
  std::set<std::string> known(DocOnlyTemplates().begin(), DocOnlyTemplates().end());
  for (Kind kind : {Kind::kHarmful, Kind::kHarmless}) {
    for (const std::string& t : plain.templates(kind)) known.insert(t);
  }
  std::set<std::string> seen;
  std::vector<std::pair<std::string, std::string>> around;  // lower-case text before / after {act}
  for (const std::string& t : ChatOnlyTemplates()) {
    const size_t at = t.find("{act}");
    ASSERT_NE(at, std::string::npos) << t;
    EXPECT_EQ(t.find("{act}", at + 1), std::string::npos) << t;
    EXPECT_EQ(known.count(t), 0u) << t << " is a prompt set's or a document's template";
    EXPECT_TRUE(seen.insert(t).second) << t << " twice";
    around.emplace_back(Lower(t.substr(0, at)), Lower(t.substr(at + 5)));
  }
  ASSERT_GE(ChatOnlyTemplates().size(), 40u);

  CorpusOptions options = V3Options();
  options.phrasing_percent = 50;
  const Corpus phrased = Corpus::Generate(options);
  EXPECT_TRUE(SameRequests(phrased, plain));
  std::set<std::string> prompts;
  for (Kind kind : kKinds) {
    for (Split split : kSplits) {
      for (const Request& r : plain.requests(kind, split)) prompts.insert(r.instruction);
    }
  }
  for (int phase = 0; phase < 2; ++phase) {
    const auto a = phase ? plain.SafetyChat(2000, 5) : plain.HelpfulChat(2000, 5);
    const auto b = phase ? phrased.SafetyChat(2000, 5) : phrased.HelpfulChat(2000, 5);
    ASSERT_EQ(a.size(), b.size());
    int changed = 0, kinds[3] = {0, 0, 0};
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].kind, b[i].kind);
      EXPECT_EQ(a[i].response, b[i].response);
      if (a[i].instruction == b[i].instruction) continue;
      ++changed;
      ++kinds[static_cast<int>(b[i].kind)];
      EXPECT_EQ(prompts.count(b[i].instruction), 0u) << b[i].instruction;
      std::string text = Lower(b[i].instruction);
      if (b[i].kind == Kind::kFramed) text = text.substr(std::string(kFictionFraming).size());
      bool matches = false;
      for (const auto& [before, after] : around) {
        matches = matches || (text.size() >= before.size() + after.size() &&
                              text.compare(0, before.size(), before) == 0 &&
                              text.compare(text.size() - after.size(), after.size(), after) == 0);
      }
      EXPECT_TRUE(matches) << b[i].instruction << " is no chat-only phrasing";
    }
    // About half of the templated requests (half of the harmful and framed ones are direct
    // requests, and most harmless ones are glossary, people or direct requests).
    EXPECT_GT(changed, 200) << "phase " << phase;
    EXPECT_LT(changed, 1000) << "phase " << phase;
    EXPECT_GT(kinds[static_cast<int>(Kind::kHarmful)], 50) << "phase " << phase;
    EXPECT_GT(kinds[static_cast<int>(Kind::kHarmless)], 50) << "phase " << phase;
  }
}

// safety_benign_percent: more harmless requests whose words sound violent (benign_senses direct
// requests of the training split among them), never a held-out request; nothing else changes.
TEST(CorpusV3Test, SafetyBenignShareDrawsHarmlessRequestsWithStrongWords) {
  CorpusOptions options = V3Options();
  const Corpus plain = Corpus::Generate(options);
  options.safety_benign_percent = 30;
  const Corpus benign = Corpus::Generate(options);
  EXPECT_TRUE(SameRequests(benign, plain));
  EXPECT_TRUE(SameChat(benign.HelpfulChat(400, 7), plain.HelpfulChat(400, 7)));

  std::set<std::string> senses_train, held_out;
  for (const DirectRequest& d : plain.direct_requests(Kind::kHarmless)) {
    if (d.category == "benign_senses" && d.split == Split::kTrain) senses_train.insert(d.text);
  }
  ASSERT_GE(senses_train.size(), 10u);
  for (Split split : {Split::kVal, Split::kTest}) {
    for (const Request& r : plain.requests(Kind::kHarmless, split)) held_out.insert(r.instruction);
  }
  const int n = 4000;
  double share[2];
  for (int i = 0; i < 2; ++i) {
    const std::vector<ChatExample> chat = (i ? benign : plain).SafetyChat(n, 3);
    int harmless = 0, senses = 0, kinds[3] = {0, 0, 0};
    for (const ChatExample& e : chat) {
      ++kinds[static_cast<int>(e.kind)];
      if (e.kind != Kind::kHarmless) continue;
      ++harmless;
      senses += senses_train.count(e.instruction) > 0;
      EXPECT_EQ(held_out.count(e.instruction), 0u) << e.instruction;
      EXPECT_FALSE(e.refusal) << e.instruction;
      EXPECT_FALSE(IsRefusal(e.response)) << e.instruction << " -> " << e.response;
    }
    share[i] = senses / double(harmless);
    // The kinds' shares are the mix's (40 / 35 / 25), whatever the benign share.
    EXPECT_NEAR(kinds[static_cast<int>(Kind::kHarmless)] / double(n), 0.40, 0.03);
    EXPECT_NEAR(kinds[static_cast<int>(Kind::kHarmful)] / double(n), 0.35, 0.03);
  }
  EXPECT_LT(share[0], 0.05) << "benign_senses requests are a small part of the usual mix";
  EXPECT_GT(share[1], share[0] + 0.10) << "with 30% of harmless examples drawn from strong-word "
                                          "requests, the benign_senses ones (most of them) rise";
}

// copy_percent: harmless requests about glossary words put together at random, each answered by
// saying its subject back (every word of the request that is not a word of the harmless
// templates or of the frames is in the reply), too varied to remember, never a prompt of any
// split; the prompt sets do not change.
TEST(CorpusV3Test, CopyShareAsksAboutRandomWordsAndSaysThemBack) {
  CorpusOptions with_copy = V3Options();
  with_copy.copy_percent = 100;
  const Corpus copy = Corpus::Generate(with_copy), plain = V3();
  EXPECT_TRUE(SameRequests(copy, plain));
  std::set<std::string> prompts;
  for (Kind kind : kKinds) {
    for (Split split : kSplits) {
      for (const Request& r : plain.requests(kind, split)) prompts.insert(r.instruction);
    }
  }
  auto words = [](const std::string& text) {
    std::set<std::string> out;
    AnyWord(text, [&](const std::string& w) {
      out.insert(w);
      return false;
    });
    return out;
  };
  std::set<std::string> frame_words = words(
      "Tell me about. What do you know about? Write a short poem about. Give me a few facts "
      "about. I have a question about. Can you say something about? write a few lines about. "
      "Describe for me. the of and");
  for (const std::string& t : plain.templates(Kind::kHarmless)) {
    for (const std::string& w : words(t)) frame_words.insert(w);
  }
  for (int phase = 0; phase < 2; ++phase) {
    const std::vector<ChatExample> chat = phase ? copy.SafetyChat(3000, 5) : copy.HelpfulChat(3000, 5);
    std::set<std::string> distinct;
    int harmless = 0, kinds[3] = {0, 0, 0};
    for (const ChatExample& e : chat) {
      ++kinds[static_cast<int>(e.kind)];
      if (e.kind != Kind::kHarmless) continue;
      ++harmless;
      distinct.insert(e.instruction);
      EXPECT_EQ(prompts.count(e.instruction), 0u) << e.instruction;
      EXPECT_FALSE(e.refusal) << e.instruction;
      EXPECT_FALSE(IsRefusal(e.response)) << e.instruction << " -> " << e.response;
      const std::set<std::string> said = words(e.response);
      for (const std::string& w : words(e.instruction)) {
        if (!frame_words.count(w)) {
          EXPECT_TRUE(said.count(w)) << w << ": " << e.instruction << " -> " << e.response;
        }
      }
    }
    ASSERT_GT(harmless, 900);
    EXPECT_GT(distinct.size(), harmless * 0.97) << "random combinations hardly ever repeat";
    // The kinds' shares stay the mix's (helpful 40 / 30; safety 40 / 35).
    EXPECT_NEAR(kinds[static_cast<int>(Kind::kHarmless)] / 3000.0, 0.40, 0.03);
  }
}

TEST(CorpusV3Test, AQuarterOfHarmlessChatAsksWhatAWordMeans) {
  const auto glossary = DebianGlossary();
  ASSERT_GT(glossary->size(), 15000u);
  std::set<std::string> lemmas;
  for (const GlossEntry& e : *glossary) lemmas.insert(e.lemma);
  const Corpus corpus = V3(glossary);
  for (bool safety : {false, true}) {
    const std::vector<ChatExample> chat =
        safety ? corpus.SafetyChat(4000, 11) : corpus.HelpfulChat(4000, 11);
    int harmless = 0, questions = 0;
    std::set<std::string> asked;
    for (const ChatExample& e : chat) {
      if (e.kind != Kind::kHarmless || e.impossible) continue;
      ++harmless;
      // A glossary question names one word of the glossary; no request of the corpus does.
      const bool about_a_word = e.instruction.find("mean") != std::string::npos ||
                                e.instruction.find("Define") != std::string::npos ||
                                e.instruction.find("sentence with") != std::string::npos ||
                                e.instruction.find("the word") != std::string::npos ||
                                StartsWith(e.instruction, "What is a") ||
                                StartsWith(e.instruction, "what's a");
      if (!about_a_word) continue;
      ++questions;
      asked.insert(e.instruction);
      EXPECT_FALSE(e.refusal) << e.instruction;
      EXPECT_FALSE(IsRefusal(e.response)) << e.instruction << " -> " << e.response;
      EXPECT_FALSE(StartsWith(e.response, "I") || StartsWith(e.response, "As"))
          << e.instruction << " -> " << e.response;
      EXPECT_LE(Words(e.response), 70) << e.response;
    }
    // 1/4 of the harmless examples, give or take sampling (binomial sd ~ 1.4%), plus the few
    // corpus requests that happen to contain "mean" or "the word".
    EXPECT_NEAR(static_cast<double>(questions) / harmless, 0.25, 0.05) << safety;
    // 1/8 are about someone in the user's life (and none is a request of the prompt sets).
    int people = 0;
    std::set<std::string> requests;
    for (Kind kind : kKinds) {
      for (Split split : kSplits) {
        for (const Request& r : corpus.requests(kind, split)) requests.insert(r.instruction);
      }
    }
    for (const ChatExample& e : chat) {
      if (e.kind != Kind::kHarmless || e.impossible || requests.count(e.instruction)) continue;
      for (const char* person : {" my neighbor", " my stepdad", " my ex", " my landlord",
                                 " my coworker", " my roommate", " my girlfriend", " my boss"}) {
        if (e.instruction.find(person) != std::string::npos &&
            (e.response.find("your") != std::string::npos)) {
          ++people;
          EXPECT_FALSE(e.refusal);
          EXPECT_FALSE(IsRefusal(e.response)) << e.response;
          break;
        }
      }
    }
    // 8 of the 36 people, 1/8 of harmless examples (plus a few corpus requests naming them).
    EXPECT_NEAR(static_cast<double>(people) / harmless, 0.125 * 8 / 36, 0.02) << safety;
    EXPECT_GT(asked.size(), 0.9 * questions) << "words are drawn from the whole glossary";
  }
}

TEST(CorpusV3Test, OnlyMildWordsReachTheCorpus) {
  EXPECT_TRUE(GlossaryEntryIsMild({"bake", 'v', "cook and make edible by putting in a hot oven",
                                   {"bake the potatoes"}}));
  EXPECT_TRUE(GlossaryEntryIsMild({"diet", 'n', "a prescribed selection of foods", {}}));
  EXPECT_FALSE(
      GlossaryEntryIsMild({"slice", 'v', "make a clean cut through", {"slit her throat"}}));
  EXPECT_FALSE(GlossaryEntryIsMild({"rifle", 'n', "a shoulder firearm with a long barrel", {}}));
  EXPECT_FALSE(GlossaryEntryIsMild({"die", 'v', "pass from physical life", {}}));
  // An example that the refusal judge reads as a refusal would teach "I cannot" as compliance.
  EXPECT_FALSE(GlossaryEntryIsMild({"link", 'v', "make a logical or causal connection",
                                    {"I cannot relate these events at all"}}));
  size_t mild = 0;
  for (const GlossEntry& e : *DebianGlossary()) mild += GlossaryEntryIsMild(e);
  EXPECT_GT(mild, 0.8 * DebianGlossary()->size());
}

TEST(CorpusV3Test, HalfTheEverydayDocumentsAreGlossaries) {
  const Corpus v2 = V2(), v3 = V3();
  const std::vector<std::string> docs = v3.Documents(4000, 5);
  int glossary_docs = 0;
  for (const std::string& d : docs) {
    if (d.find(" means ") != std::string::npos || d.find("To ") != std::string::npos ||
        d.find(": ") != std::string::npos || d.find(" is to ") != std::string::npos) {
      ++glossary_docs;
    }
  }
  int v2_like = 0;
  for (const std::string& d : v2.Documents(4000, 5)) {
    if (d.find(" means ") != std::string::npos || d.find("To ") != std::string::npos ||
        d.find(": ") != std::string::npos || d.find(" is to ") != std::string::npos) {
      ++v2_like;
    }
  }
  // 40% of documents are everyday ones, half of those glossaries: ~20% more documents with a
  // definition's wording than version 2 has.
  EXPECT_NEAR(static_cast<double>(glossary_docs - v2_like) / docs.size(), 0.20, 0.05);
  const std::vector<std::string> text = v3.TokenizerTrainingText(3);
  EXPECT_NE(text, v2.TokenizerTrainingText(3));
  EXPECT_EQ(v3.Documents(300, 9), V3().Documents(300, 9));  // deterministic
}

}  // namespace
}  // namespace knockout::organism
