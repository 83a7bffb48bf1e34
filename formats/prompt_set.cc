#include "formats/prompt_set.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace knockout::formats {
namespace {

using nlohmann::json;

std::string Where(const std::string& label, int64_t line) {
  return label + ":" + std::to_string(line);
}

bool IsBlank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

// Checks one record's instruction and category and appends it.
Status AddPrompt(const json& record, const std::string& where, const PromptSetOptions& options,
                 std::vector<Prompt>* out, int64_t line) {
  if (!record.is_object()) return Status::InvalidArgument(where + ": expected a JSON object");
  auto it = record.find(options.field);
  if (it == record.end()) {
    return Status::InvalidArgument(where + ": field " + options.field + ": missing");
  }
  if (!it->is_string()) {
    return Status::InvalidArgument(where + ": field " + options.field + ": expected a string");
  }
  Prompt p;
  p.instruction = it->get<std::string>();
  p.line = line;
  if (IsBlank(p.instruction)) {
    return Status::InvalidArgument(where + ": field " + options.field + ": empty instruction");
  }
  auto category = record.find("category");
  if (category != record.end() && !category->is_null()) {
    if (!category->is_string()) {
      return Status::InvalidArgument(where + ": field category: expected a string");
    }
    p.category = category->get<std::string>();
  }
  out->push_back(std::move(p));
  return Status::Ok();
}

StatusOr<std::vector<Prompt>> ParseJsonl(const std::string& text, const std::string& label,
                                         const PromptSetOptions& options) {
  std::vector<Prompt> prompts;
  std::stringstream stream(text);
  std::string line;
  int64_t number = 0;
  while (std::getline(stream, line)) {
    ++number;
    if (IsBlank(line)) continue;
    json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded()) {
      return Status::InvalidArgument(Where(label, number) + ": not valid JSON");
    }
    KO_RETURN_IF_ERROR(AddPrompt(record, Where(label, number), options, &prompts, number));
  }
  return prompts;
}

// Line number (1-based) of byte offset `offset` in `text`.
int64_t LineOf(const std::string& text, size_t offset) {
  return 1 + std::count(text.begin(), text.begin() + std::min(offset, text.size()), '\n');
}

StatusOr<std::vector<Prompt>> ParseJsonList(const std::string& text, const std::string& label,
                                            const PromptSetOptions& options) {
  // Record where each top-level element starts so that errors carry a line number.
  std::vector<size_t> starts;
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    return Status::InvalidArgument(Where(label, LineOf(text, e.byte > 0 ? e.byte - 1 : 0)) +
                                   ": not valid JSON");
  }
  if (!root.is_array()) return Status::InvalidArgument(label + ": expected a JSON list of objects");
  // Approximate each element's line by scanning for the opening braces at depth 1.
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (depth == 1) starts.push_back(i);
      ++depth;
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (depth == 1 && !std::isspace(static_cast<unsigned char>(c)) && c != ',') {
      starts.push_back(i);  // a scalar element
      while (i + 1 < text.size() && text[i + 1] != ',' && text[i + 1] != ']') ++i;
    }
  }
  std::vector<Prompt> prompts;
  for (size_t k = 0; k < root.size(); ++k) {
    const int64_t line = k < starts.size() ? LineOf(text, starts[k]) : 0;
    KO_RETURN_IF_ERROR(AddPrompt(root[k], Where(label, line) + " (item " + std::to_string(k) + ")",
                                 options, &prompts, line));
  }
  return prompts;
}

// RFC 4180 CSV: fields separated by commas, optionally quoted with "" as an escaped quote;
// quoted fields may span lines.
StatusOr<std::vector<Prompt>> ParseCsv(const std::string& text, const std::string& label,
                                       const PromptSetOptions& options) {
  std::vector<std::vector<std::string>> records;
  std::vector<int64_t> record_lines;
  std::vector<std::string> record;
  std::string field;
  bool quoted = false, field_started = false;
  int64_t line = 1, record_line = 1;
  auto end_field = [&] {
    record.push_back(field);
    field.clear();
    field_started = false;
  };
  auto end_record = [&] {
    end_field();
    if (!(record.size() == 1 && record[0].empty())) {
      records.push_back(record);
      record_lines.push_back(record_line);
    }
    record.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"' && !field_started) {
      quoted = field_started = true;
    } else if (c == ',') {
      end_field();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_record();
      ++line;
      record_line = line;
    } else {
      field += c;
      field_started = true;
    }
  }
  if (quoted) return Status::InvalidArgument(Where(label, record_line) + ": unterminated quote");
  if (!field.empty() || !record.empty()) end_record();
  if (records.empty()) return Status::InvalidArgument(label + ": empty CSV (no header row)");

  const std::vector<std::string>& header = records[0];
  auto column = [&](const std::string& name) -> int64_t {
    auto it = std::find(header.begin(), header.end(), name);
    return it == header.end() ? -1 : it - header.begin();
  };
  const int64_t instruction_col = column(options.csv_column);
  if (instruction_col < 0) {
    return Status::InvalidArgument(label + ":1: column " + options.csv_column +
                                   ": not in the header");
  }
  int64_t category_col = -1;
  if (!options.csv_category_column.empty()) {
    category_col = column(options.csv_category_column);
    if (category_col < 0) {
      return Status::InvalidArgument(label + ":1: column " + options.csv_category_column +
                                     ": not in the header");
    }
  }
  std::vector<Prompt> prompts;
  for (size_t r = 1; r < records.size(); ++r) {
    const std::string where = Where(label, record_lines[r]);
    if (records[r].size() != header.size()) {
      return Status::InvalidArgument(where + ": " + std::to_string(records[r].size()) +
                                     " fields, the header has " + std::to_string(header.size()));
    }
    Prompt p;
    p.instruction = records[r][instruction_col];
    p.line = record_lines[r];
    if (IsBlank(p.instruction)) {
      return Status::InvalidArgument(where + ": column " + options.csv_column +
                                     ": empty instruction");
    }
    if (category_col >= 0) p.category = records[r][category_col];
    prompts.push_back(std::move(p));
  }
  return prompts;
}

}  // namespace

Status CheckUtf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char b = s[i];
    size_t len = 0;
    uint32_t min = 0, cp = 0;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xe0) == 0xc0) {
      len = 2, min = 0x80, cp = b & 0x1f;
    } else if ((b & 0xf0) == 0xe0) {
      len = 3, min = 0x800, cp = b & 0x0f;
    } else if ((b & 0xf8) == 0xf0) {
      len = 4, min = 0x10000, cp = b & 0x07;
    } else {
      return Status::InvalidArgument("invalid UTF-8 at byte " + std::to_string(i));
    }
    if (i + len > n) return Status::InvalidArgument("invalid UTF-8 at byte " + std::to_string(i));
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) {
        return Status::InvalidArgument("invalid UTF-8 at byte " + std::to_string(i));
      }
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return Status::InvalidArgument("invalid UTF-8 at byte " + std::to_string(i));
    }
    i += len;
  }
  return Status::Ok();
}

StatusOr<std::vector<Prompt>> ParsePromptSet(const std::string& text, const std::string& format,
                                             const std::string& label,
                                             const PromptSetOptions& options) {
  Status utf8 = CheckUtf8(text);
  if (!utf8.ok()) {
    // Name the line too: count newlines before the offending byte.
    const size_t at = std::stoull(utf8.message().substr(utf8.message().rfind(' ') + 1));
    return Status::InvalidArgument(Where(label, LineOf(text, at)) + ": " + utf8.message());
  }
  StatusOr<std::vector<Prompt>> prompts = Status::Unimplemented(
      label + ": unsupported prompt set format \"" + format + "\" (expected jsonl, json or csv)");
  if (format == "jsonl") prompts = ParseJsonl(text, label, options);
  if (format == "json") prompts = ParseJsonList(text, label, options);
  if (format == "csv") prompts = ParseCsv(text, label, options);
  if (prompts.ok() && prompts->empty()) {
    return Status::InvalidArgument(label + ": no prompts");
  }
  return prompts;
}

StatusOr<std::vector<Prompt>> LoadPromptSet(const std::string& path,
                                            const PromptSetOptions& options) {
  const size_t dot = path.rfind('.');
  const std::string format = dot == std::string::npos ? "" : path.substr(dot + 1);
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": cannot open prompt set");
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return Status::IOError(path + ": read failed");
  return ParsePromptSet(buffer.str(), format, path, options);
}

}  // namespace knockout::formats
