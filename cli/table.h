// The knockout CLI's tables: what every query builds (Cell, Table) before it is rendered as an
// aligned table, CSV or JSON lines, and the --where filters over their rows. Private to cli/
// (queries.cc builds them). Thread-safety: plain values and stateless functions.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "cli/queries.h"
#include "common/status.h"

namespace knockout::cli {

using Json = nlohmann::ordered_json;

struct Cell {
  enum class Kind { kEmpty, kText, kInteger, kNumber, kBool };
  Kind kind = Kind::kEmpty;
  std::string text;
  int64_t integer = 0;
  double number = 0;
  bool flag = false;
  Json structured;  // jsonl: written instead of the text when set (e.g. a list of backups)

  static Cell Empty() { return Cell(); }
  static Cell Text(std::string value) {
    Cell cell;
    cell.kind = Kind::kText;
    cell.text = std::move(value);
    return cell;
  }
  static Cell Integer(int64_t value) {
    Cell cell;
    cell.kind = Kind::kInteger;
    cell.integer = value;
    return cell;
  }
  static Cell Number(double value) {
    Cell cell;
    cell.kind = Kind::kNumber;
    cell.number = value;
    return cell;
  }
  static Cell Bool(bool value) {
    Cell cell;
    cell.kind = Kind::kBool;
    cell.flag = value;
    return cell;
  }
  bool numeric() const { return kind == Kind::kInteger || kind == Kind::kNumber; }
};

struct Table {
  std::string name;   // what a row is, for jsonl's "table" key: results, candidates, ...
  std::string title;  // the heading in table format
  std::vector<std::string> columns;
  std::vector<std::vector<Cell>> rows;

  int Column(const std::string& column) const {
    const auto it = std::find(columns.begin(), columns.end(), column);
    return it == columns.end() ? -1 : static_cast<int>(it - columns.begin());
  }
};

std::string FormatDouble(double value, int significant);

void RenderAligned(const Table& table, std::ostream& out, const std::string& indent);

// The width aligned tables are fitted to (0, the default: no limit). Columns that would run past
// it are left out, empty ones first, then from the right (the first two always stay), and a
// line under the table names them and says `--format csv` shows every column. `knockout` sets
// it to the terminal's width when its output is a terminal.
void SetTableWidth(int columns);

void RenderTables(const std::vector<Table>& tables, OutputFormat format, std::ostream& out);

// One CSV field, RFC 4180: quoted when it holds a comma, a quote or a line break, or starts or
// ends with a space; quotes doubled.
std::string CsvField(const std::string& text);

// CSV (with the header line when `header`) or JSON lines of one table's rows: how a table
// streamed in chunks is written (kTable renders aligned, header and all, as RenderTables does).
void RenderRows(const Table& table, OutputFormat format, bool header, std::ostream& out);

// --where filters: FIELD=VALUE; numbers compare numerically (relative 1e-9), position selectors
// in their canonical spelling, anything else as its exact text.
struct Filter {
  std::string text;  // as given, for messages
  std::string field;
  std::string value;
};

StatusOr<std::vector<Filter>> ParseFilters(const std::vector<std::string>& where);

// Keeps the rows that pass every filter; drops tables that lack a filtered column.
// InvalidArgument for a field that no table has, listing the columns there are.
Status ApplyFilters(const std::vector<Filter>& filters, std::vector<Table>* tables);

// Keeps only `columns` (in that order) of `table`; empty: all. InvalidArgument for a column the
// table lacks, listing those it has.
Status SelectColumns(const std::vector<std::string>& columns, Table* table);

}  // namespace knockout::cli
