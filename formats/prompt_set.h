// Prompt sets: the instructions a sweep runs on, loaded from JSONL, JSON or CSV files.
//   JSONL: one object per line with a string field `instruction` (optional `category`);
//   JSON:  a list of such objects;
//   CSV:   a header row and a named column (e.g. AdvBench's `goal`), RFC 4180 quoting.
// Every error names the file and the line (and the field or column): invalid UTF-8, an empty
// instruction, a missing field, malformed JSON or CSV. Stateless functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace knockout::formats {

struct Prompt {
  std::string instruction;
  std::string category;  // empty if the file has none
  int64_t line = 0;      // 1-based line of the file where the record starts
};

struct PromptSetOptions {
  // CSV only: the column holding the instruction (default "goal", AdvBench's), and optionally
  // one holding the category.
  std::string csv_column = "goal";
  std::string csv_category_column;
  // JSON/JSONL: the field holding the instruction.
  std::string field = "instruction";
};

// Loads a prompt set; the format follows the extension (.jsonl, .json, .csv). Errors:
// NotFound (no such file), InvalidArgument ("prompts.jsonl:12: field instruction: missing"),
// Unimplemented for another extension.
StatusOr<std::vector<Prompt>> LoadPromptSet(const std::string& path,
                                            const PromptSetOptions& options = {});

// The same from text already in memory; `format` is "jsonl", "json" or "csv".
StatusOr<std::vector<Prompt>> ParsePromptSet(const std::string& text, const std::string& format,
                                             const std::string& label,
                                             const PromptSetOptions& options = {});

// Returns OK if `text` is valid UTF-8, else InvalidArgument naming the byte offset.
Status CheckUtf8(const std::string& text);

}  // namespace knockout::formats
