#include "organism/glossary.h"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <unordered_map>
#include <utility>

namespace knockout::organism {
namespace {

StatusOr<std::string> ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status::IOError(path +
                           ": cannot read WordNet (install Debian's wordnet-base, or point the "
                           "recipe's wordnet_dir at a WordNet 3.0 dict directory)");
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) return Status::IOError(path + ": read error");
  return text.str();
}

bool KeptLemma(const std::string& lemma, size_t max_words) {
  if (lemma.empty()) return false;
  size_t words = 1;
  for (char c : lemma) {
    if (c == '_') {
      ++words;
    } else if (!((c >= 'a' && c <= 'z') || c == '-' || c == '\'')) {
      return false;
    }
  }
  return words <= max_words;
}

// A data line: "OFFSET LEX_FILENUM SS_TYPE W_CNT WORD LEX_ID ... | GLOSS". The gloss is a
// definition, then "; "-separated further definitions or quoted examples.
void SplitGloss(const std::string& gloss, std::string* definition,
                std::vector<std::string>* examples) {
  std::vector<std::string> parts;
  std::string current;
  bool quoted = false;
  for (char c : gloss) {
    if (c == '"') quoted = !quoted;
    if (c == ';' && !quoted) {
      parts.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  parts.push_back(current);
  auto trim = [](std::string s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    const size_t e = s.find_last_not_of(" \t\r\n");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  for (std::string& part : parts) {
    part = trim(part);
    if (part.empty()) continue;
    if (part.front() == '"') {
      const size_t close = part.find('"', 1);
      const std::string example = trim(part.substr(1, close == std::string::npos ? std::string::npos
                                                                                  : close - 1));
      if (!example.empty()) examples->push_back(example);
    } else if (definition->empty()) {
      *definition = part;
    }
  }
}

// Whether the synset line spells `lemma` (an index lemma: lower case) with a capital, i.e. the
// word is a name ("Richmond"). A data line: OFFSET LEX_FILENUM SS_TYPE W_CNT(hex) then W_CNT
// pairs WORD LEX_ID; adjectives may carry a syntactic marker ("big(a)").
bool SpelledAsName(const std::string& synset, const std::string& lemma) {
  std::istringstream words(synset);
  std::string skip, count_hex, word;
  words >> skip >> skip >> skip >> count_hex;
  const long count = std::strtol(count_hex.c_str(), nullptr, 16);
  for (long i = 0; i < count && (words >> word >> skip); ++i) {
    std::string lower = word;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const bool same =
        lower.rfind(lemma, 0) == 0 && (lower.size() == lemma.size() || lower[lemma.size()] == '(');
    if (same) return word != lower;
  }
  return false;
}

}  // namespace

StatusOr<std::vector<GlossEntry>> LoadWordNetGlossary(const std::string& dir,
                                                      const GlossaryOptions& options) {
  std::vector<GlossEntry> entries;
  const std::pair<const char*, char> parts[] = {{"noun", 'n'}, {"verb", 'v'}, {"adj", 'a'},
                                                {"adv", 'r'}};
  for (const auto& [name, pos] : parts) {
    const std::string index_path = dir + "/index." + name;
    const std::string data_path = dir + "/data." + name;
    KO_ASSIGN_OR_RETURN(const std::string index, ReadWhole(index_path));
    KO_ASSIGN_OR_RETURN(const std::string data, ReadWhole(data_path));
    std::istringstream lines(index);
    std::string line;
    size_t line_number = 0;
    while (std::getline(lines, line)) {
      ++line_number;
      if (line.empty() || line[0] == ' ') continue;  // the licence header
      const std::string where = index_path + ":" + std::to_string(line_number);
      std::istringstream fields(line);
      std::string lemma, pos_field;
      long synset_count = -1, pointer_count = -1;
      fields >> lemma >> pos_field >> synset_count >> pointer_count;
      if (!fields || synset_count < 1 || pointer_count < 0) {
        return Status::InvalidArgument(where + ": not a WordNet index line");
      }
      std::string pointer;
      for (long i = 0; i < pointer_count; ++i) fields >> pointer;
      long sense_count = -1, tagged = -1;
      std::string first_offset;
      fields >> sense_count >> tagged >> first_offset;
      if (!fields || tagged < 0 || first_offset.empty()) {
        return Status::InvalidArgument(where + ": not a WordNet index line");
      }
      if (tagged < options.min_tagged_senses || !KeptLemma(lemma, options.max_lemma_words)) {
        continue;
      }
      // The synset offset is the byte offset of its line in data.POS (WordNet's wndb(5)).
      char* end = nullptr;
      const unsigned long long offset = std::strtoull(first_offset.c_str(), &end, 10);
      if (*end != '\0' || offset >= data.size() ||
          data.compare(offset, first_offset.size(), first_offset) != 0) {
        return Status::InvalidArgument(where + ": synset offset " + first_offset +
                                       " is not a line of " + data_path);
      }
      const size_t line_end = data.find('\n', offset);
      const size_t length = line_end == std::string::npos ? std::string::npos : line_end - offset;
      const std::string synset = data.substr(offset, length);
      const size_t bar = synset.find(" | ");
      if (bar == std::string::npos) {
        return Status::InvalidArgument(where + ": synset " + first_offset + " of " + data_path +
                                       " has no gloss");
      }
      if (SpelledAsName(synset, lemma)) continue;
      GlossEntry entry;
      entry.pos = pos;
      entry.lemma = lemma;
      for (char& c : entry.lemma) {
        if (c == '_') c = ' ';
      }
      SplitGloss(synset.substr(bar + 3), &entry.definition, &entry.examples);
      // Verb glosses sometimes start with their own "to " ("to move in a twisting motion").
      if (pos == 'v' && entry.definition.rfind("to ", 0) == 0) entry.definition.erase(0, 3);
      if (entry.definition.empty()) continue;
      entries.push_back(std::move(entry));
    }
  }
  return entries;
}

}  // namespace knockout::organism
