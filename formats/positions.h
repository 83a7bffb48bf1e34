// Position selectors: the one grammar of the text a spec, a shard label, an artifact name and a
// query write for "which prompt tokens" (inst_last, post_inst, post_inst[-k], all, [i,j,...]),
// its parser and printer, and its resolution against one prompt's token layout (science.md:
// harmfulness is read at t_inst, refusal at t_post_inst). Torch-free and proto-free; the
// v1::Positions message converts to and from Positions in proto/positions.h.
// Stateless functions over plain values; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace knockout::formats {

// A parsed selector. Values compare equal exactly when they print the same text.
struct Positions {
  enum class Kind {
    kInstLast,    // "inst_last": t_inst, the last instruction token
    kInst,        // "inst": every instruction token (where an upstream harm sensor reads)
    kPostInst,    // "post_inst": every post-instruction template token
    kPostInstAt,  // "post_inst[-k]": one post-instruction token, -k counting from the prompt's end
    kAll,         // "all": every prompt token
    kExplicit,    // "[3,-1]": prompt positions as written; negative ones count from the end
  };
  Kind kind = Kind::kAll;
  int32_t index = 0;             // kPostInstAt: -k (k >= 1)
  std::vector<int32_t> indices;  // kExplicit, in the order written, at least one

  static Positions InstLast() { return {Kind::kInstLast, 0, {}}; }
  static Positions Inst() { return {Kind::kInst, 0, {}}; }
  static Positions PostInst() { return {Kind::kPostInst, 0, {}}; }
  static Positions PostInstAt(int32_t index) { return {Kind::kPostInstAt, index, {}}; }
  static Positions All() { return {Kind::kAll, 0, {}}; }
  static Positions Explicit(std::vector<int32_t> indices) {
    return {Kind::kExplicit, 0, std::move(indices)};
  }

  bool operator==(const Positions& o) const {
    return kind == o.kind && index == o.index && indices == o.indices;
  }
  bool operator!=(const Positions& o) const { return !(*this == o); }
};

// Parses selector text: `inst_last`, `inst`, `post_inst`, `post_inst[-k]` (k >= 1), `all`, or an
// explicit list `[3,-1]` (spaces allowed around items; every item an int32). InvalidArgument
// naming the text and what was expected otherwise.
StatusOr<Positions> ParsePositions(std::string_view text);

// The canonical text, which ParsePositions reads back to an equal value: inst_last, inst, post_inst,
// post_inst[-2], all, [3,-1]. Artifact names and trial labels in stores are made of it.
std::string PositionsName(const Positions& positions);

// Where one tokenized prompt's parts are, in the coordinates of the unpadded prompt.
struct PromptLayout {
  int64_t length = 0;             // number of tokens
  int64_t instruction_begin = 0;  // first token that contains instruction text
  int64_t instruction_end = 0;    // one past the last instruction token (t_inst + 1)
  int64_t post_begin = 0;         // first post-instruction template token
};

// Indices into the unpadded prompt, ascending and distinct. InvalidArgument naming the selector
// if an explicit index falls outside the prompt (i >= length or i < -length), post_inst[-k] has
// fewer than k post-instruction tokens, or the layout has no instruction token for inst_last or
// inst.
StatusOr<std::vector<int64_t>> ResolvePositions(const Positions& positions,
                                                const PromptLayout& prompt);

// The same shifted into a left-padded batch row of width `padded_length` (>= prompt.length).
StatusOr<std::vector<int64_t>> ResolvePaddedPositions(const Positions& positions,
                                                      const PromptLayout& prompt,
                                                      int64_t padded_length);

}  // namespace knockout::formats
