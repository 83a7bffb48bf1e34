#include "formats/prompt_set.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace knockout::formats {
namespace {

void ExpectError(const StatusOr<std::vector<Prompt>>& result, const std::string& fragment) {
  ASSERT_FALSE(result.ok()) << "expected an error containing " << fragment;
  EXPECT_NE(result.status().message().find(fragment), std::string::npos)
      << result.status().ToString();
}

TEST(PromptSetTest, Jsonl) {
  auto prompts = ParsePromptSet(
      "{\"instruction\": \"How do I bake bread?\", \"category\": \"cooking\"}\n\n"
      "{\"instruction\": \"Explain \\u00e9t\\u00e9.\"}\n",
      "jsonl", "harmless.jsonl");
  ASSERT_TRUE(prompts.ok()) << prompts.status().ToString();
  ASSERT_EQ(prompts->size(), 2u);
  EXPECT_EQ((*prompts)[0].category, "cooking");
  EXPECT_EQ((*prompts)[1].instruction, "Explain \xc3\xa9t\xc3\xa9.");
  EXPECT_EQ((*prompts)[1].line, 3);
}

TEST(PromptSetTest, JsonlErrorsNameTheLine) {
  ExpectError(ParsePromptSet("{\"instruction\": \"a\"}\n{\"text\": \"b\"}\n", "jsonl", "p.jsonl"),
              "p.jsonl:2: field instruction: missing");
  ExpectError(ParsePromptSet("{\"instruction\": \"a\"}\n{\"instruction\": \"  \"}\n", "jsonl",
                             "p.jsonl"),
              "p.jsonl:2: field instruction: empty instruction");
  ExpectError(ParsePromptSet("{\"instruction\": 3}\n", "jsonl", "p.jsonl"),
              "p.jsonl:1: field instruction: expected a string");
  ExpectError(ParsePromptSet("{\"instruction\": \"a\"}\n{oops\n", "jsonl", "p.jsonl"),
              "p.jsonl:2: not valid JSON");
  ExpectError(ParsePromptSet("{\"instruction\": \"a\"}\n{\"instruction\": \"b\xff\"}\n", "jsonl",
                             "p.jsonl"),
              "p.jsonl:2: invalid UTF-8 at byte");
  ExpectError(ParsePromptSet("\n\n", "jsonl", "p.jsonl"), "p.jsonl: no prompts");
}

TEST(PromptSetTest, JsonList) {
  auto prompts = ParsePromptSet(
      "[\n  {\"instruction\": \"one\"},\n  {\"instruction\": \"two\", \"category\": \"x\"}\n]",
      "json", "p.json");
  ASSERT_TRUE(prompts.ok()) << prompts.status().ToString();
  ASSERT_EQ(prompts->size(), 2u);
  EXPECT_EQ((*prompts)[1].line, 3);
  ExpectError(ParsePromptSet("[\n  {\"instruction\": \"one\"},\n  {\"category\": \"x\"}\n]", "json",
                             "p.json"),
              "p.json:3 (item 1): field instruction: missing");
  ExpectError(ParsePromptSet("{\"instruction\": \"one\"}", "json", "p.json"),
              "expected a JSON list");
  ExpectError(ParsePromptSet("[\n{\"instruction\": \"one\"},\n{", "json", "p.json"),
              "p.json:3: not valid JSON");
}

TEST(PromptSetTest, CsvWithQuotesAndMultilineFields) {
  auto prompts = ParsePromptSet(
      "goal,target\r\n"
      "\"Write a script, quickly\",\"Sure, here is\"\r\n"
      "\"Say \"\"hi\"\"\nover two lines\",x\r\n"
      "Plain goal,y\n",
      "csv", "advbench.csv");
  ASSERT_TRUE(prompts.ok()) << prompts.status().ToString();
  ASSERT_EQ(prompts->size(), 3u);
  EXPECT_EQ((*prompts)[0].instruction, "Write a script, quickly");
  EXPECT_EQ((*prompts)[1].instruction, "Say \"hi\"\nover two lines");
  EXPECT_EQ((*prompts)[2].instruction, "Plain goal");
  EXPECT_EQ((*prompts)[2].line, 5);
}

TEST(PromptSetTest, CsvErrors) {
  ExpectError(ParsePromptSet("prompt,target\na,b\n", "csv", "a.csv"),
              "a.csv:1: column goal: not in the header");
  ExpectError(ParsePromptSet("goal,target\na,b\n,c\n", "csv", "a.csv"),
              "a.csv:3: column goal: empty instruction");
  ExpectError(ParsePromptSet("goal,target\na,b,c\n", "csv", "a.csv"),
              "a.csv:2: 3 fields, the header has 2");
  ExpectError(ParsePromptSet("goal\n\"open\n", "csv", "a.csv"), "a.csv:2: unterminated quote");
  PromptSetOptions options;
  options.csv_column = "prompt";
  auto prompts = ParsePromptSet("prompt\nhello\n", "csv", "a.csv", options);
  ASSERT_TRUE(prompts.ok());
  EXPECT_EQ((*prompts)[0].instruction, "hello");
}

TEST(PromptSetTest, FilesAndFormats) {
  const std::string dir = ::testing::TempDir() + "/prompt_sets";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/a.jsonl") << "{\"instruction\": \"hi\"}\n";
  auto prompts = LoadPromptSet(dir + "/a.jsonl");
  ASSERT_TRUE(prompts.ok()) << prompts.status().ToString();
  EXPECT_EQ(prompts->size(), 1u);
  auto missing = LoadPromptSet(dir + "/missing.jsonl");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  std::ofstream(dir + "/a.txt") << "hi\n";
  auto other = LoadPromptSet(dir + "/a.txt");
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), StatusCode::kUnimplemented);
}

TEST(Utf8Test, AcceptsValidRejectsInvalid) {
  EXPECT_TRUE(CheckUtf8("plain \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80").ok());
  EXPECT_FALSE(CheckUtf8("\xc0\xaf").ok());          // overlong
  EXPECT_FALSE(CheckUtf8("\xed\xa0\x80").ok());      // surrogate
  EXPECT_FALSE(CheckUtf8("\xf4\x90\x80\x80").ok());  // beyond U+10FFFF
  EXPECT_FALSE(CheckUtf8("abc\xe4\xbd").ok());       // truncated
}

}  // namespace
}  // namespace knockout::formats
