// Tests for formats/positions: the selector grammar (every kind parses, prints canonically and
// parses back to an equal value; malformed text is refused by name) and resolution against a
// hand-written prompt layout, whose expected indices are counted by hand in the comments.
#include "formats/positions.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace knockout::formats {
namespace {

using Kind = Positions::Kind;

// Every selector kind with its canonical text (the spellings of science.md and the spec docs).
TEST(PositionsTest, EveryKindRoundTrips) {
  const std::vector<std::pair<std::string, Positions>> cases = {
      {"inst_last", Positions::InstLast()},
      {"inst", Positions::Inst()},
      {"post_inst", Positions::PostInst()},
      {"post_inst[-1]", Positions::PostInstAt(-1)},
      {"post_inst[-12]", Positions::PostInstAt(-12)},
      {"all", Positions::All()},
      {"[3,-1]", Positions::Explicit({3, -1})},
      {"[0]", Positions::Explicit({0})},
      {"[-2147483648,2147483647]", Positions::Explicit({INT32_MIN, INT32_MAX})},
  };
  for (const auto& [text, value] : cases) {
    StatusOr<Positions> parsed = ParsePositions(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status().ToString();
    EXPECT_EQ(*parsed, value) << text;
    EXPECT_EQ(PositionsName(*parsed), text);
    StatusOr<Positions> again = ParsePositions(PositionsName(*parsed));
    ASSERT_TRUE(again.ok()) << text;
    EXPECT_EQ(*again, *parsed) << text;
  }
}

TEST(PositionsTest, SpacesAndSignsNormalise) {
  StatusOr<Positions> spaced = ParsePositions("[ 3, -1 ]");
  ASSERT_TRUE(spaced.ok()) << spaced.status().ToString();
  EXPECT_EQ(spaced->kind, Kind::kExplicit);
  EXPECT_EQ(PositionsName(*spaced), "[3,-1]");
  StatusOr<Positions> plus = ParsePositions("[+4]");
  ASSERT_TRUE(plus.ok());
  EXPECT_EQ(PositionsName(*plus), "[4]");
  StatusOr<Positions> at = ParsePositions("post_inst[-3]");
  ASSERT_TRUE(at.ok());
  EXPECT_EQ(at->kind, Kind::kPostInstAt);
  EXPECT_EQ(at->index, -3);
}

TEST(PositionsTest, MalformedTextIsRefusedByName) {
  for (const std::string text :
       {"", "instr", "inst[-1]", "ALL", " all", "post_inst[0]", "post_inst[1]", "post_inst[+1]", "post_inst[-x]",
        "post_inst[-1", "post_inst[]", "[]", "[ ]", "[a]", "[1,,2]", "[1,]", "[,1]", "[1 2]",
        "[99999999999]", "[2147483648]", "3,-1", "-1", "[[3]]"}) {
    StatusOr<Positions> positions = ParsePositions(text);
    ASSERT_FALSE(positions.ok()) << "\"" << text << "\" parsed as " << PositionsName(*positions);
    EXPECT_EQ(positions.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(positions.status().message().rfind("position \"" + text + "\": ", 0), 0u)
        << positions.status().message();
  }
  // The errors say what was expected.
  EXPECT_NE(ParsePositions("post_inst[2]").status().message().find("-1 is the last token"),
            std::string::npos);
  EXPECT_NE(ParsePositions("-1").status().message().find("write [-1]"), std::string::npos);
  EXPECT_NE(ParsePositions("[]").status().message().find("empty"), std::string::npos);
  EXPECT_NE(ParsePositions("last").status().message().find("inst_last, inst, post_inst"),
            std::string::npos);
}

// Layout of an 8-token prompt: tokens 0-1 template prefix, 2-4 instruction, 5-7 post-instruction.
PromptLayout EightTokens() { return {8, 2, 5, 5}; }

std::vector<int64_t> Resolve(const std::string& text, const PromptLayout& layout) {
  StatusOr<Positions> positions = ParsePositions(text);
  EXPECT_TRUE(positions.ok()) << text;
  if (!positions.ok()) return {};
  StatusOr<std::vector<int64_t>> indices = ResolvePositions(*positions, layout);
  EXPECT_TRUE(indices.ok()) << text << ": " << indices.status().ToString();
  return indices.ok() ? *indices : std::vector<int64_t>{};
}

TEST(PositionsTest, ResolvesAgainstTheLayout) {
  const PromptLayout p = EightTokens();
  EXPECT_EQ(Resolve("inst_last", p), (std::vector<int64_t>{4}));
  EXPECT_EQ(Resolve("inst", p), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(Resolve("post_inst", p), (std::vector<int64_t>{5, 6, 7}));
  EXPECT_EQ(Resolve("post_inst[-1]", p), (std::vector<int64_t>{7}));
  EXPECT_EQ(Resolve("post_inst[-3]", p), (std::vector<int64_t>{5}));
  EXPECT_EQ(Resolve("all", p), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  // Negative indices count from the end (-1: 7, -8: 0); duplicates collapse, output ascends.
  EXPECT_EQ(Resolve("[3,-1]", p), (std::vector<int64_t>{3, 7}));
  EXPECT_EQ(Resolve("[0,-1,-1,7]", p), (std::vector<int64_t>{0, 7}));
  EXPECT_EQ(Resolve("[-8]", p), (std::vector<int64_t>{0}));
}

TEST(PositionsTest, PositionsOutsideThePromptAreErrors) {
  const PromptLayout p = EightTokens();
  for (const std::string text : {"[8]", "[-9]", "[0,8]", "post_inst[-4]"}) {
    StatusOr<Positions> positions = ParsePositions(text);
    ASSERT_TRUE(positions.ok()) << text;
    StatusOr<std::vector<int64_t>> indices = ResolvePositions(*positions, p);
    ASSERT_FALSE(indices.ok()) << text;
    EXPECT_EQ(indices.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(indices.status().message().rfind("position \"" + text + "\": ", 0), 0u)
        << indices.status().message();
  }
  EXPECT_NE(ResolvePositions(Positions::Explicit({8}), p).status().message().find(
                "index 8 outside a prompt of 8 tokens"),
            std::string::npos);
  EXPECT_NE(ResolvePositions(Positions::PostInstAt(-4), p).status().message().find(
                "only 3 post-instruction tokens"),
            std::string::npos);
  // Values no parser produces are still refused, never resolved out of range.
  EXPECT_FALSE(ResolvePositions(Positions::PostInstAt(0), p).ok());
  EXPECT_FALSE(ResolvePositions(Positions::Explicit({}), p).ok());
  EXPECT_FALSE(ResolvePositions(Positions::InstLast(), PromptLayout{3, 0, 0, 0}).ok());
}

TEST(PositionsTest, LeftPaddingShiftsByThePadding) {
  const PromptLayout p = EightTokens();
  // Width 11: three pad columns on the left, so every index moves by 3.
  StatusOr<std::vector<int64_t>> padded = ResolvePaddedPositions(Positions::InstLast(), p, 11);
  ASSERT_TRUE(padded.ok());
  EXPECT_EQ(*padded, (std::vector<int64_t>{7}));
  padded = ResolvePaddedPositions(Positions::Explicit({0, -1}), p, 11);
  ASSERT_TRUE(padded.ok());
  EXPECT_EQ(*padded, (std::vector<int64_t>{3, 10}));
  EXPECT_FALSE(ResolvePaddedPositions(Positions::InstLast(), p, 7).ok());
}

}  // namespace
}  // namespace knockout::formats
