// Ordinary English for the demo organism's corpus (version 3): the common words of WordNet 3.0
// (Debian's wordnet-base, /usr/share/wordnet; Princeton's WordNet 3.0 licence allows use and
// redistribution with its notice) with the definition and example sentences of each word's most
// frequent sense. A tiny model trained only on request templates hesitates on any request in
// words it has not seen; these glosses give it everyday vocabulary, and harmless "what does X
// mean" questions whose words are nothing like the corpus' requests.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace knockout::organism {

struct GlossEntry {
  std::string lemma;       // "hamster", "bake", "ice cream" (WordNet's underscores as spaces)
  char pos = 'n';          // 'n' noun, 'v' verb, 'a' adjective, 'r' adverb
  std::string definition;  // "short-tailed Old World burrowing rodent with large cheek pouches"
  std::vector<std::string> examples;  // the gloss' quoted examples, "bake the potatoes"
};

struct GlossaryOptions {
  // A lemma is kept when at least this many of its senses' occurrences were tagged in WordNet's
  // semantic concordance (index.POS's tagsense_cnt): the everyday words.
  int min_tagged_senses = 1;
  size_t max_lemma_words = 2;
};

// Reads DIR/index.{noun,verb,adj,adv} and DIR/data.{noun,verb,adj,adv}; the entries come in file
// order (alphabetical per part of speech), so that the result is the same on every machine with
// the same package. Lemmas other than lower-case letters, spaces, hyphens and apostrophes are
// skipped, and so are names (the synset spells the word with a capital: "Richmond"). Errors:
// IOError naming a missing or unreadable file (with a hint to install wordnet-base);
// InvalidArgument naming FILE:LINE for a malformed index line or a synset offset that points at
// no matching data line.
StatusOr<std::vector<GlossEntry>> LoadWordNetGlossary(const std::string& dir,
                                                      const GlossaryOptions& options = {});

}  // namespace knockout::organism
