#include "organism/glossary.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace knockout::organism {
namespace {

namespace fs = std::filesystem;

// A WordNet dict directory in the real format (wndb(5)): data lines start at the byte offset that
// is their synset id, and index lines point at them.
class TinyWordNet {
 public:
  TinyWordNet()
      : dir_(fs::temp_directory_path() / ("glossary_test_" + std::to_string(::getpid()))) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ~TinyWordNet() { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }

  // Each synset: (words, gloss); index lines: (lemma, tagged count, synset number).
  struct Synset {
    std::string word, gloss;
  };
  struct IndexLine {
    std::string lemma;
    int tagged;
    size_t synset;
  };
  void Write(const std::string& part, char pos, const std::vector<Synset>& synsets,
             const std::vector<IndexLine>& index) {
    std::string data = "  1 This software and database is being provided to you, the LICENSEE\n";
    std::vector<std::string> offsets;
    for (const Synset& s : synsets) {
      char offset[16];
      std::snprintf(offset, sizeof offset, "%08zu", data.size());
      offsets.push_back(offset);
      data += std::string(offset) + " 05 " + pos + " 01 " + s.word + " 0 000 | " + s.gloss + "  \n";
    }
    std::string text = "  1 This software and database is being provided to you, the LICENSEE\n";
    for (const IndexLine& l : index) {
      text += l.lemma + " " + pos + " 1 1 @ 1 " + std::to_string(l.tagged) + " " +
              offsets.at(l.synset) + "  \n";
    }
    std::ofstream(dir_ / ("data." + part)) << data;
    std::ofstream(dir_ / ("index." + part)) << text;
  }

  void WriteAll() {
    Write("noun", 'n',
          {{"hamster", "short-tailed Old World burrowing rodent with large cheek pouches"},
           {"ice_cream", "frozen dessert containing cream and sugar and flavoring; \"she ate the "
                         "ice cream\"; \"vanilla is my favorite\""},
           {"Paris", "the capital of France"}},
          {{"hamster", 0, 0}, {"ice_cream", 3, 1}, {"paris", 2, 2}, {"Paris", 2, 2}});
    Write("verb", 'v',
          {{"bake", "cook and make edible by putting in a hot oven; \"bake the potatoes\""},
           {"writhe", "to move in a twisting or contorted motion"}},
          {{"bake", 3, 0}, {"writhe", 1, 1}});
    Write("adj", 'a', {{"happy", "enjoying or showing or marked by joy or pleasure"}},
          {{"happy", 5, 0}});
    Write("adv", 'r', {}, {});
  }

 private:
  fs::path dir_;
};

TEST(GlossaryTest, ReadsCommonWordsWithTheirFirstSense) {
  TinyWordNet wordnet;
  wordnet.WriteAll();
  auto glossary = LoadWordNetGlossary(wordnet.dir());
  ASSERT_TRUE(glossary.ok()) << glossary.status().ToString();
  std::map<std::string, GlossEntry> by_lemma;
  for (const GlossEntry& e : *glossary) by_lemma[e.lemma] = e;
  // "hamster" was never tagged (rare), "Paris" is not lower case, and "paris" is spelled with a
  // capital in its synset (a name): all left out.
  ASSERT_EQ(by_lemma.size(), 4u);
  EXPECT_EQ(by_lemma.count("paris"), 0u);
  EXPECT_EQ(by_lemma.count("hamster"), 0u);
  EXPECT_EQ(by_lemma.count("Paris"), 0u);
  const GlossEntry& cream = by_lemma.at("ice cream");
  EXPECT_EQ(cream.pos, 'n');
  EXPECT_EQ(cream.definition, "frozen dessert containing cream and sugar and flavoring");
  EXPECT_EQ(cream.examples,
            (std::vector<std::string>{"she ate the ice cream", "vanilla is my favorite"}));
  EXPECT_EQ(by_lemma.at("bake").pos, 'v');
  EXPECT_EQ(by_lemma.at("bake").definition, "cook and make edible by putting in a hot oven");
  EXPECT_EQ(by_lemma.at("bake").examples, std::vector<std::string>{"bake the potatoes"});
  EXPECT_EQ(by_lemma.at("writhe").definition, "move in a twisting or contorted motion");
  EXPECT_EQ(by_lemma.at("happy").pos, 'a');
  EXPECT_TRUE(by_lemma.at("happy").examples.empty());

  GlossaryOptions rare;
  rare.min_tagged_senses = 0;
  auto all = LoadWordNetGlossary(wordnet.dir(), rare);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 5u);  // hamster too
}

TEST(GlossaryTest, ErrorsNameTheFileAndLine) {
  TinyWordNet wordnet;
  auto missing = LoadWordNetGlossary(wordnet.dir());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(wordnet.dir() + "/index.noun"), std::string::npos)
      << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("wordnet-base"), std::string::npos);

  wordnet.WriteAll();
  {
    std::ofstream(wordnet.dir() + "/index.verb", std::ios::app) << "walk v 1 1 @ 1 2 99999999  \n";
  }
  auto bad_offset = LoadWordNetGlossary(wordnet.dir());
  ASSERT_FALSE(bad_offset.ok());
  EXPECT_NE(bad_offset.status().message().find("/index.verb:4"), std::string::npos)
      << bad_offset.status().ToString();

  wordnet.WriteAll();
  { std::ofstream(wordnet.dir() + "/index.adj", std::ios::app) << "broken a x\n"; }
  auto malformed = LoadWordNetGlossary(wordnet.dir());
  ASSERT_FALSE(malformed.ok());
  EXPECT_NE(malformed.status().message().find("/index.adj:3"), std::string::npos)
      << malformed.status().ToString();
}

// Debian's wordnet-base (scripts/setup.sh installs it): the glosses as printed by the package's
// own data files, read here by byte offset through the index.
TEST(GlossaryTest, DebianWordNet) {
  const std::string dir = "/usr/share/wordnet";
  ASSERT_TRUE(fs::exists(dir + "/index.noun")) << "install wordnet-base (scripts/setup.sh does)";
  auto glossary = LoadWordNetGlossary(dir);
  ASSERT_TRUE(glossary.ok()) << glossary.status().ToString();
  EXPECT_GT(glossary->size(), 15000u);
  auto find = [&](const std::string& lemma, char pos) -> const GlossEntry* {
    for (const GlossEntry& e : *glossary) {
      if (e.lemma == lemma && e.pos == pos) return &e;
    }
    return nullptr;
  };
  const GlossEntry* bake = find("bake", 'v');
  ASSERT_NE(bake, nullptr);
  EXPECT_EQ(bake->definition, "cook and make edible by putting in a hot oven");
  EXPECT_EQ(bake->examples, std::vector<std::string>{"bake the potatoes"});
  const GlossEntry* cream = find("ice cream", 'n');
  ASSERT_NE(cream, nullptr);
  EXPECT_EQ(cream->definition, "frozen dessert containing cream and sugar and flavoring");
}

}  // namespace
}  // namespace knockout::organism
