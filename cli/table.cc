// Rendering of the CLI's tables (aligned, CSV, JSON lines) and the --where filters (table.h).
#include "cli/table.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "formats/positions.h"

namespace knockout::cli {

std::string FormatDouble(double value, int significant) {
  if (value == 0) value = 0;  // "-0" (e.g. 0 / -x) reads as a sign that is not there
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[40];
  std::snprintf(buffer, sizeof(buffer), "%.*g", significant, value);
  return buffer;
}

// The shortest decimal text that reads back as exactly `value`.
static std::string FormatDoubleExact(double value) {
  if (!std::isfinite(value)) return FormatDouble(value, 17);
  for (int digits = 1; digits < 17; ++digits) {
    std::string text = FormatDouble(value, digits);
    if (std::strtod(text.c_str(), nullptr) == value) return text;
  }
  return FormatDouble(value, 17);
}

// Table format shows 4 significant digits; machine formats keep every bit.
static std::string CellText(const Cell& cell, bool exact) {
  switch (cell.kind) {
    case Cell::Kind::kEmpty: return "";
    case Cell::Kind::kText: return cell.text;
    case Cell::Kind::kInteger: return std::to_string(cell.integer);
    case Cell::Kind::kNumber: return exact ? FormatDoubleExact(cell.number) : FormatDouble(cell.number, 4);
    case Cell::Kind::kBool: return cell.flag ? "true" : "false";
  }
  return "";
}

static Json CellJson(const Cell& cell) {
  if (!cell.structured.is_null()) return cell.structured;
  switch (cell.kind) {
    case Cell::Kind::kEmpty: return nullptr;
    case Cell::Kind::kText: return cell.text;
    case Cell::Kind::kInteger: return cell.integer;
    case Cell::Kind::kNumber:
      if (!std::isfinite(cell.number)) return nullptr;
      return cell.number;
    case Cell::Kind::kBool: return cell.flag;
  }
  return nullptr;
}

// UTF-8 code points, for column widths.
static size_t DisplayWidth(const std::string& text) {
  size_t width = 0;
  for (unsigned char c : text) width += (c & 0xC0) != 0x80;
  return width;
}

// One line, at most kMaxCell code points: control characters escaped, long text cut (the
// machine formats keep it whole).
constexpr size_t kMaxCell = 120;
static std::string DisplayText(const std::string& text) {
  std::string out;
  size_t width = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c & 0xC0) != 0x80) {
      if (width == kMaxCell - 3 && DisplayWidth(text.substr(i)) > 3) return out + "...";
      ++width;
    }
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

static int g_table_width = 0;

void SetTableWidth(int columns) { g_table_width = std::max(0, columns); }

// The columns of `table` that fit in `width` characters (every one when width is 0), and per
// column the one text every row has ("" when the rows differ, are empty, or fewer than two):
// what the note under the table names a left-out column with.
struct Fit {
  std::vector<size_t> keep;
  std::vector<std::string> one_value;
};

static Fit FittingColumns(const Table& table, const std::string& indent, int width) {
  Fit fit;
  fit.keep.resize(table.columns.size());
  fit.one_value.assign(table.columns.size(), "");
  std::vector<size_t>& keep = fit.keep;
  for (size_t i = 0; i < keep.size(); ++i) keep[i] = i;
  if (width <= 0) return fit;
  std::vector<size_t> widths(table.columns.size(), 0);
  std::vector<bool> empty(table.columns.size(), true), constant(table.columns.size(), true);
  std::vector<std::string> first(table.columns.size());
  for (size_t i = 0; i < table.columns.size(); ++i) widths[i] = DisplayWidth(table.columns[i]);
  for (size_t r = 0; r < table.rows.size(); ++r) {
    const auto& row = table.rows[r];
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      const std::string text = DisplayText(CellText(row[i], /*exact=*/false));
      widths[i] = std::max(widths[i], DisplayWidth(text));
      empty[i] = empty[i] && text.empty();
      if (r == 0) first[i] = text;
      constant[i] = constant[i] && text == first[i];
    }
  }
  if (table.rows.size() < 2) constant.assign(constant.size(), false);
  for (size_t i = 0; i < constant.size(); ++i) {
    if (constant[i]) fit.one_value[i] = first[i];
  }
  auto total = [&] {
    size_t sum = indent.size();
    for (size_t i = 0; i < keep.size(); ++i) sum += widths[keep[i]] + (i ? 2 : 0);
    return sum;
  };
  // Empty columns go first, then those with one value in every row (the note gives it), then
  // the rightmost, while the table is too wide; the first two columns always stay.
  for (const std::vector<bool>* drop : {&empty, &constant}) {
    for (size_t i = keep.size(); i-- > 2 && total() > static_cast<size_t>(width);) {
      if ((*drop)[keep[i]]) keep.erase(keep.begin() + static_cast<long>(i));
    }
  }
  while (keep.size() > 2 && total() > static_cast<size_t>(width)) keep.pop_back();
  return fit;
}

void RenderAligned(const Table& full, std::ostream& out, const std::string& indent) {
  const Fit fit = FittingColumns(full, indent, g_table_width);
  const std::vector<size_t>& keep = fit.keep;
  Table table;
  std::vector<std::string> hidden;
  for (size_t i = 0, k = 0; i < full.columns.size(); ++i) {
    if (k < keep.size() && keep[k] == i) {
      table.columns.push_back(full.columns[i]);
      ++k;
    } else {
      // A column with one value in every row is named with it.
      hidden.push_back(full.columns[i] + (fit.one_value[i].empty() ? "" : "=" + fit.one_value[i]));
    }
  }
  for (const auto& full_row : full.rows) {
    std::vector<Cell> row;
    for (size_t i : keep) row.push_back(i < full_row.size() ? full_row[i] : Cell::Empty());
    table.rows.push_back(std::move(row));
  }
  std::vector<std::vector<std::string>> lines;
  lines.push_back(table.columns);
  for (const auto& row : table.rows) {
    std::vector<std::string> line;
    for (const Cell& cell : row) line.push_back(DisplayText(CellText(cell, /*exact=*/false)));
    lines.push_back(std::move(line));
  }
  std::vector<size_t> widths(table.columns.size(), 0);
  for (const auto& line : lines) {
    for (size_t i = 0; i < line.size(); ++i) widths[i] = std::max(widths[i], DisplayWidth(line[i]));
  }
  for (size_t r = 0; r < lines.size(); ++r) {
    std::string text = indent;
    for (size_t i = 0; i < lines[r].size(); ++i) {
      const std::string& value = lines[r][i];
      const std::string pad(widths[i] - DisplayWidth(value), ' ');
      const bool right = r > 0 && table.rows[r - 1][i].numeric();
      if (i > 0) text += "  ";
      text += right ? pad + value : value + pad;
    }
    while (!text.empty() && text.back() == ' ') text.pop_back();
    out << text << "\n";
  }
  if (table.rows.empty()) out << indent << "(no rows)\n";
  if (!hidden.empty()) {
    std::string names;
    for (const std::string& name : hidden) names += (names.empty() ? "" : ", ") + name;
    out << indent << "(" << hidden.size() << " more column" << (hidden.size() == 1 ? "" : "s")
        << " for a wider terminal: " << names << "; --format csv shows every column)\n";
  }
}

std::string CsvField(const std::string& text) {
  const bool quote = text.find_first_of(",\"\r\n") != std::string::npos ||
                     (!text.empty() && (text.front() == ' ' || text.back() == ' '));
  if (!quote) return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  return out + "\"";
}

static void RenderCsv(const Table& table, std::ostream& out, bool header = true) {
  for (size_t i = 0; header && i < table.columns.size(); ++i) {
    out << (i ? "," : "") << CsvField(table.columns[i]);
  }
  if (header) out << "\n";
  for (const auto& row : table.rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      out << (i ? "," : "") << CsvField(CellText(row[i], /*exact=*/true));
    }
    out << "\n";
  }
}

static void RenderJsonl(const Table& table, std::ostream& out) {
  for (const auto& row : table.rows) {
    Json object = Json::object();
    object["table"] = table.name;
    for (size_t i = 0; i < row.size(); ++i) object[table.columns[i]] = CellJson(row[i]);
    // Replace, not throw, on invalid UTF-8 in stored text (a completion cut mid-character).
    out << object.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
  }
}

// Several tables as one, for a CSV that pandas.read_csv loads as it is: a first column `table`
// (what the row is), then every table's columns in the order they first appear; a row leaves the
// columns of other tables empty.
static Table LongTable(const std::vector<Table>& tables) {
  Table long_table;
  long_table.name = "tables";
  long_table.columns = {"table"};
  for (const Table& table : tables) {
    for (const std::string& column : table.columns) {
      if (std::find(long_table.columns.begin(), long_table.columns.end(), column) ==
          long_table.columns.end()) {
        long_table.columns.push_back(column);
      }
    }
  }
  for (const Table& table : tables) {
    std::vector<int> at;
    for (const std::string& column : table.columns) at.push_back(long_table.Column(column));
    for (const auto& row : table.rows) {
      std::vector<Cell> cells(long_table.columns.size());
      cells[0] = Cell::Text(table.name);
      for (size_t i = 0; i < row.size() && i < at.size(); ++i) cells[at[i]] = row[i];
      long_table.rows.push_back(std::move(cells));
    }
  }
  return long_table;
}

void RenderRows(const Table& table, OutputFormat format, bool header, std::ostream& out) {
  switch (format) {
    case OutputFormat::kTable:
      RenderAligned(table, out, "");
      break;
    case OutputFormat::kCsv:
      RenderCsv(table, out, header);
      break;
    case OutputFormat::kJsonl:
      RenderJsonl(table, out);
      break;
  }
}

void RenderTables(const std::vector<Table>& tables, OutputFormat format, std::ostream& out) {
  for (size_t t = 0; t < tables.size(); ++t) {
    switch (format) {
      case OutputFormat::kTable:
        if (t > 0) out << "\n";
        out << "# " << tables[t].title << "\n";
        RenderAligned(tables[t], out, "");
        break;
      case OutputFormat::kCsv:
        if (tables.size() == 1) {
          RenderCsv(tables[t], out);
        } else if (t == 0) {
          RenderCsv(LongTable(tables), out);  // several tables: one tidy CSV
        }
        break;
      case OutputFormat::kJsonl:
        RenderJsonl(tables[t], out);
        break;
    }
  }
}


// ------------------------------------------------------------------------------------------
// --where filters


StatusOr<std::vector<Filter>> ParseFilters(const std::vector<std::string>& where) {
  std::vector<Filter> filters;
  for (const std::string& text : where) {
    const size_t equals = text.find('=');
    if (equals == std::string::npos || equals == 0) {
      return Status::InvalidArgument("filter \"" + text + "\": expected FIELD=VALUE");
    }
    Filter filter{text, text.substr(0, equals), text.substr(equals + 1)};
    // Position selectors compare in their canonical spelling: "[ 3, -1 ]" finds "[3,-1]".
    if ((filter.field == "positions" || filter.field == "position") && !filter.value.empty()) {
      StatusOr<formats::Positions> positions = formats::ParsePositions(filter.value);
      if (!positions.ok()) return positions.status().WithContext("filter \"" + text + "\"");
      filter.value = formats::PositionsName(*positions);
    }
    filters.push_back(std::move(filter));
  }
  return filters;
}

static bool ParseNumber(const std::string& text, double* value) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text.front()))) return false;
  char* end = nullptr;
  errno = 0;
  *value = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && errno != ERANGE;
}

static bool CellMatches(const Cell& cell, const std::string& wanted) {
  double wanted_number = 0;
  const bool wanted_is_number = ParseNumber(wanted, &wanted_number);
  double number = 0;
  bool is_number = false;
  switch (cell.kind) {
    case Cell::Kind::kEmpty: return wanted.empty();
    case Cell::Kind::kBool:
      if (wanted == "true" || wanted == "false") return cell.flag == (wanted == "true");
      return wanted_is_number && wanted_number == (cell.flag ? 1.0 : 0.0);
    case Cell::Kind::kInteger:
      number = static_cast<double>(cell.integer);
      is_number = true;
      break;
    case Cell::Kind::kNumber:
      number = cell.number;
      is_number = true;
      break;
    case Cell::Kind::kText:
      is_number = ParseNumber(cell.text, &number);
      break;
  }
  if (is_number && wanted_is_number) {
    const double scale = std::max({1.0, std::fabs(number), std::fabs(wanted_number)});
    return std::fabs(number - wanted_number) <= 1e-9 * scale;
  }
  return CellText(cell, /*exact=*/true) == wanted;
}

// Keeps the rows that pass every filter; drops tables that lack a filtered column.
// InvalidArgument for a field that no table has, listing the columns there are.
Status ApplyFilters(const std::vector<Filter>& filters, std::vector<Table>* tables) {
  if (filters.empty()) return Status::Ok();
  std::vector<std::string> known;
  for (const Table& table : *tables) {
    for (const std::string& column : table.columns) {
      if (std::find(known.begin(), known.end(), column) == known.end()) known.push_back(column);
    }
  }
  for (const Filter& filter : filters) {
    if (std::find(known.begin(), known.end(), filter.field) != known.end()) continue;
    std::string list;
    for (const std::string& column : known) list += (list.empty() ? "" : ", ") + column;
    return Status::InvalidArgument("filter \"" + filter.text + "\": unknown field \"" +
                                   filter.field + "\"; fields: " +
                                   (list.empty() ? "none (nothing to filter)" : list));
  }
  std::vector<Table> kept;
  for (Table& table : *tables) {
    std::vector<std::pair<int, const Filter*>> checks;
    for (const Filter& filter : filters) checks.emplace_back(table.Column(filter.field), &filter);
    if (std::any_of(checks.begin(), checks.end(), [](const auto& c) { return c.first < 0; })) {
      continue;
    }
    std::vector<std::vector<Cell>> rows;
    for (auto& row : table.rows) {
      const bool pass = std::all_of(checks.begin(), checks.end(), [&](const auto& check) {
        return CellMatches(row[check.first], check.second->value);
      });
      if (pass) rows.push_back(std::move(row));
    }
    table.rows = std::move(rows);
    kept.push_back(std::move(table));
  }
  *tables = std::move(kept);
  return Status::Ok();
}

Status SelectColumns(const std::vector<std::string>& columns, Table* table) {
  if (columns.empty()) return Status::Ok();
  std::vector<int> picked;
  for (const std::string& column : columns) {
    const int index = table->Column(column);
    if (index < 0) {
      std::string list;
      for (const std::string& c : table->columns) list += (list.empty() ? "" : ", ") + c;
      return Status::InvalidArgument("--columns: the " + table->name + " table has no column \"" +
                                     column + "\"; columns: " + list);
    }
    picked.push_back(index);
  }
  for (auto& row : table->rows) {
    std::vector<Cell> kept;
    for (int index : picked) kept.push_back(row[index]);
    row = std::move(kept);
  }
  table->columns = columns;
  return Status::Ok();
}

}  // namespace knockout::cli
