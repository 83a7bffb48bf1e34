#include "cli/report.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli/queries.h"
#include "cli/store_reading.h"
#include "cli/table.h"
#include "experiments/engine.h"

namespace knockout::cli {
namespace {

using experiments::SweepReader;
using Json = nlohmann::ordered_json;
using Rows = std::vector<Json>;

// ------------------------------------------------------------------------------------------
// The data: the rows the table commands print as JSON lines, so that the page shows exactly
// what `knockout results|compensation|... --format jsonl` gives.

StatusOr<Rows> Jsonl(const std::function<Status(std::ostream&)>& print) {
  std::ostringstream out;
  KO_RETURN_IF_ERROR(print(out));
  Rows rows;
  std::istringstream in(out.str());
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    Json row = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded()) return Status::Internal("a table row is not JSON: " + line);
    rows.push_back(std::move(row));
  }
  return rows;
}

Rows OfTable(const Rows& rows, const std::string& table) {
  Rows out;
  for (const Json& row : rows) {
    if (row.value("table", "") == table) out.push_back(row);
  }
  return out;
}

double Num(const Json& row, const std::string& key) {
  auto it = row.find(key);
  if (it == row.end() || !it->is_number()) return std::nan("");
  return it->get<double>();
}

std::string Text(const Json& row, const std::string& key) {
  auto it = row.find(key);
  if (it == row.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

// ------------------------------------------------------------------------------------------
// HTML pieces

std::string Escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string Fmt(double value, int digits = 4) {
  if (std::isnan(value)) return "";
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.*g", digits, value);
  return buffer;
}

std::string Base64(const std::string& bytes) {
  static const char* kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t n = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s : {18, 12, 6, 0}) out.push_back(kAlphabet[(n >> s) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t n = uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= uint8_t(bytes[i + 1]) << 8;
    out.push_back(kAlphabet[(n >> 18) & 63]);
    out.push_back(kAlphabet[(n >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? kAlphabet[(n >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// The columns of a set of rows: every key, in the order first seen ("table" left out).
std::vector<std::string> Columns(const Rows& rows) {
  std::vector<std::string> columns;
  for (const Json& row : rows) {
    for (auto it = row.begin(); it != row.end(); ++it) {
      if (it.key() == "table") continue;
      if (std::find(columns.begin(), columns.end(), it.key()) == columns.end()) {
        columns.push_back(it.key());
      }
    }
  }
  return columns;
}

std::string Csv(const Rows& rows) {
  const std::vector<std::string> columns = Columns(rows);
  std::string out;
  for (size_t i = 0; i < columns.size(); ++i) out += (i ? "," : "") + CsvField(columns[i]);
  out += "\n";
  for (const Json& row : rows) {
    for (size_t i = 0; i < columns.size(); ++i) {
      out += (i ? "," : "") + CsvField(Text(row, columns[i]));
    }
    out += "\n";
  }
  return out;
}

std::string HtmlTable(const Rows& rows, size_t limit = 500) {
  const std::vector<std::string> columns = Columns(rows);
  std::string out = "<div class=\"scroll\"><table><thead><tr>";
  for (const std::string& c : columns) out += "<th scope=\"col\">" + Escape(c) + "</th>";
  out += "</tr></thead><tbody>";
  for (size_t r = 0; r < rows.size() && r < limit; ++r) {
    out += "<tr>";
    for (const std::string& c : columns) {
      auto it = rows[r].find(c);
      const bool number = it != rows[r].end() && it->is_number_float();
      out += number ? "<td class=\"n\">" + Fmt(it->get<double>(), 6) + "</td>"
                    : "<td>" + Escape(Text(rows[r], c)) + "</td>";
    }
    out += "</tr>";
  }
  out += "</tbody></table></div>";
  if (rows.size() > limit) {
    out += "<p class=\"note\">" + std::to_string(rows.size() - limit) +
           " more rows in the CSV.</p>";
  }
  return out;
}

std::string Slug(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    } else if (!out.empty() && out.back() != '-') {
      out.push_back('-');
    }
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "figure" : out;
}

// A figure: the chart (SVG, may be empty), its numbers as a table and a CSV download.
std::string Figure(const std::string& title, const std::string& svg, const Rows& rows,
                   const std::string& caption = "") {
  const std::string slug = Slug(title);
  std::string out = "<figure class=\"chart\" id=\"fig-" + slug + "\"><figcaption><b>" +
                    Escape(title) + "</b>";
  if (!caption.empty()) out += " — " + Escape(caption);
  out += "</figcaption>" + svg;
  out += "<p class=\"download\"><a download=\"" + slug + ".csv\" href=\"data:text/csv;base64," +
         Base64(Csv(rows)) + "\">Download the numbers (CSV, " + std::to_string(rows.size()) +
         " rows)</a></p>";
  out += "<details><summary>Numbers</summary>" + HtmlTable(rows) + "</details></figure>\n";
  return out;
}

// ------------------------------------------------------------------------------------------
// SVG charts

const char* kPalette[] = {"#1b6ca8", "#d1495b", "#2e8b57", "#edae49", "#6a4c93",
                          "#00798c", "#8d6a9f", "#c05805", "#4d4d4d", "#9e2a2b"};

// Diverging blue - white - red, centred on zero; t in [-1, 1].
std::string Diverging(double t) {
  if (std::isnan(t)) return "#dddddd";
  t = std::max(-1.0, std::min(1.0, t));
  const double white[3] = {247, 247, 247}, red[3] = {178, 24, 43}, blue[3] = {33, 102, 172};
  const double* end = t >= 0 ? red : blue;
  const double a = std::fabs(t);
  char buffer[8];
  std::snprintf(buffer, sizeof(buffer), "#%02x%02x%02x",
                static_cast<int>(white[0] + (end[0] - white[0]) * a),
                static_cast<int>(white[1] + (end[1] - white[1]) * a),
                static_cast<int>(white[2] + (end[2] - white[2]) * a));
  return buffer;
}

// Cells (row label, column label, value) on a grid, rows and columns in the given order.
std::string Heatmap(const std::vector<std::string>& row_labels,
                    const std::vector<std::string>& col_labels,
                    const std::map<std::pair<size_t, size_t>, double>& cells,
                    const std::string& value_name, const std::string& row_name,
                    const std::string& col_name) {
  double scale = 0;
  for (const auto& [at, v] : cells) {
    if (!std::isnan(v)) scale = std::max(scale, std::fabs(v));
  }
  if (scale == 0) scale = 1;
  const int cell = 24, left = 56, top = 28;
  const int width = left + cell * static_cast<int>(col_labels.size()) + 150;
  const int height = top + cell * static_cast<int>(row_labels.size()) + 30;
  std::ostringstream svg;
  svg << "<svg class=\"heatmap\" role=\"img\" viewBox=\"0 0 " << width << " " << height
      << "\" width=\"" << width << "\" height=\"" << height << "\"><title>" << Escape(value_name)
      << " by " << Escape(row_name) << " and " << Escape(col_name) << "</title>";
  for (size_t c = 0; c < col_labels.size(); ++c) {
    svg << "<text x=\"" << left + cell * c + cell / 2 << "\" y=\"" << top - 8
        << "\" text-anchor=\"middle\" class=\"tick\">" << Escape(col_labels[c]) << "</text>";
  }
  for (size_t r = 0; r < row_labels.size(); ++r) {
    svg << "<text x=\"" << left - 6 << "\" y=\"" << top + cell * r + cell / 2 + 4
        << "\" text-anchor=\"end\" class=\"tick\">" << Escape(row_labels[r]) << "</text>";
    for (size_t c = 0; c < col_labels.size(); ++c) {
      auto it = cells.find({r, c});
      const double v = it == cells.end() ? std::nan("") : it->second;
      svg << "<rect class=\"cell\" x=\"" << left + cell * c << "\" y=\"" << top + cell * r
          << "\" width=\"" << cell - 1 << "\" height=\"" << cell - 1 << "\" fill=\""
          << Diverging(v / scale) << "\"><title>" << Escape(row_name + " " + row_labels[r] + ", " +
                                                             col_name + " " + col_labels[c] + ": " +
                                                             value_name + " = " +
                                                             (std::isnan(v) ? "none" : Fmt(v)))
          << "</title></rect>";
    }
  }
  // Legend: -scale .. 0 .. +scale.
  const int lx = left + cell * static_cast<int>(col_labels.size()) + 24;
  for (int i = 0; i <= 20; ++i) {
    const double t = 1.0 - i / 10.0;
    svg << "<rect x=\"" << lx << "\" y=\"" << top + i * 8 << "\" width=\"16\" height=\"8\" fill=\""
        << Diverging(t) << "\"/>";
  }
  svg << "<text x=\"" << lx + 22 << "\" y=\"" << top + 8 << "\" class=\"tick\">+" << Fmt(scale, 3)
      << "</text><text x=\"" << lx + 22 << "\" y=\"" << top + 84 << "\" class=\"tick\">0</text>"
      << "<text x=\"" << lx + 22 << "\" y=\"" << top + 168 << "\" class=\"tick\">-"
      << Fmt(scale, 3) << "</text>";
  svg << "<text x=\"" << left << "\" y=\"" << height - 6 << "\" class=\"axis\">" << Escape(col_name)
      << " →</text></svg>";
  return svg.str();
}

struct Point {
  double x, y;
  std::string label;
  bool hollow = false, marked = false;
};

struct Axes {
  double x0, x1, y0, y1;
  int width = 640, height = 300, left = 64, right = 170, top = 16, bottom = 44;
  double X(double x) const {
    return left + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (width - left - right);
  }
  double Y(double y) const {
    return top + (y1 > y0 ? (y1 - y) / (y1 - y0) : 0.5) * (height - top - bottom);
  }
};

Axes AxesFor(const std::map<std::string, std::vector<Point>>& series, bool include_zero) {
  Axes a{1e300, -1e300, 1e300, -1e300};
  for (const auto& [name, points] : series) {
    for (const Point& p : points) {
      if (std::isnan(p.x) || std::isnan(p.y)) continue;
      a.x0 = std::min(a.x0, p.x);
      a.x1 = std::max(a.x1, p.x);
      a.y0 = std::min(a.y0, p.y);
      a.y1 = std::max(a.y1, p.y);
    }
  }
  if (a.x0 > a.x1) a = Axes{0, 1, 0, 1};
  if (include_zero) {
    a.y0 = std::min(a.y0, 0.0);
    a.y1 = std::max(a.y1, 0.0);
  }
  const double pad = (a.y1 - a.y0) * 0.05 + 1e-12;
  a.y0 -= pad;
  a.y1 += pad;
  return a;
}

// Five labelled y ticks with their grid lines.
std::string YTicks(const Axes& a) {
  std::ostringstream svg;
  for (int i = 0; i <= 4; ++i) {
    const double y = a.y0 + (a.y1 - a.y0) * i / 4;
    svg << "<text class=\"tick\" x=\"" << a.left - 6 << "\" y=\"" << a.Y(y) + 4
        << "\" text-anchor=\"end\">" << Fmt(y, 3) << "</text><line class=\"grid\" x1=\"" << a.left
        << "\" x2=\"" << a.width - a.right << "\" y1=\"" << a.Y(y) << "\" y2=\"" << a.Y(y) << "\"/>";
  }
  return svg.str();
}

std::string Frame(const Axes& a, const std::string& xlabel, const std::string& ylabel,
                  bool integer_x) {
  std::ostringstream svg;
  svg << "<line class=\"axis-line\" x1=\"" << a.left << "\" y1=\"" << a.height - a.bottom
      << "\" x2=\"" << a.width - a.right << "\" y2=\"" << a.height - a.bottom << "\"/>"
      << "<line class=\"axis-line\" x1=\"" << a.left << "\" y1=\"" << a.top << "\" x2=\"" << a.left
      << "\" y2=\"" << a.height - a.bottom << "\"/>";
  svg << YTicks(a);
  if (a.y0 < 0 && a.y1 > 0) {
    svg << "<line class=\"zero\" x1=\"" << a.left << "\" x2=\"" << a.width - a.right << "\" y1=\""
        << a.Y(0) << "\" y2=\"" << a.Y(0) << "\"/>";
  }
  const int ticks = integer_x ? static_cast<int>(std::min(20.0, a.x1 - a.x0)) : 4;
  for (int i = 0; i <= std::max(ticks, 1); ++i) {
    const double x = a.x0 + (a.x1 - a.x0) * i / std::max(ticks, 1);
    svg << "<text class=\"tick\" x=\"" << a.X(x) << "\" y=\"" << a.height - a.bottom + 16
        << "\" text-anchor=\"middle\">" << Fmt(x, 3) << "</text>";
  }
  svg << "<text class=\"axis\" x=\"" << (a.left + a.width - a.right) / 2 << "\" y=\""
      << a.height - 6 << "\" text-anchor=\"middle\">" << Escape(xlabel) << "</text>"
      << "<text class=\"axis\" transform=\"translate(14," << (a.top + a.height - a.bottom) / 2
      << ") rotate(-90)\" text-anchor=\"middle\">" << Escape(ylabel) << "</text>";
  return svg.str();
}

std::string Legend(const Axes& a, const std::vector<std::string>& names) {
  std::ostringstream svg;
  for (size_t i = 0; i < names.size() && i < 12; ++i) {
    const int y = a.top + 8 + 16 * static_cast<int>(i);
    svg << "<rect x=\"" << a.width - a.right + 12 << "\" y=\"" << y - 8
        << "\" width=\"10\" height=\"10\" fill=\"" << kPalette[i % 10] << "\"/><text class=\"tick\" x=\""
        << a.width - a.right + 26 << "\" y=\"" << y + 1 << "\">" << Escape(names[i]) << "</text>";
  }
  return svg.str();
}

// Lines (joined in x order) or points only (`lines` false: a scatter).
std::string Chart(const std::map<std::string, std::vector<Point>>& series, const std::string& xlabel,
                  const std::string& ylabel, bool lines, bool integer_x, bool diagonal = false) {
  Axes a = AxesFor(series, /*include_zero=*/true);
  if (diagonal) {  // estimate vs real: the same range on both axes
    a.x0 = a.y0 = std::min(a.x0, a.y0);
    a.x1 = a.y1 = std::max(a.x1, a.y1);
  }
  std::ostringstream svg;
  svg << "<svg class=\"chart\" role=\"img\" viewBox=\"0 0 " << a.width << " " << a.height
      << "\" width=\"" << a.width << "\" height=\"" << a.height << "\"><title>" << Escape(ylabel)
      << " by " << Escape(xlabel) << "</title>" << Frame(a, xlabel, ylabel, integer_x);
  if (diagonal) {
    svg << "<line class=\"grid\" x1=\"" << a.X(a.x0) << "\" y1=\"" << a.Y(a.y0) << "\" x2=\""
        << a.X(a.x1) << "\" y2=\"" << a.Y(a.y1) << "\"/>";
  }
  std::vector<std::string> names;
  size_t s = 0;
  for (const auto& [name, unsorted] : series) {
    names.push_back(name);
    std::vector<Point> points = unsorted;
    std::stable_sort(points.begin(), points.end(), [](const Point& p, const Point& q) { return p.x < q.x; });
    const char* colour = kPalette[s++ % 10];
    if (lines && points.size() > 1) {
      svg << "<polyline class=\"series\" fill=\"none\" stroke=\"" << colour << "\" points=\"";
      for (const Point& p : points) {
        if (!std::isnan(p.y)) svg << a.X(p.x) << "," << a.Y(p.y) << " ";
      }
      svg << "\"/>";
    }
    for (const Point& p : points) {
      if (std::isnan(p.x) || std::isnan(p.y)) continue;
      svg << "<circle class=\"point\" cx=\"" << a.X(p.x) << "\" cy=\"" << a.Y(p.y) << "\" r=\""
          << (p.marked ? 7 : 3.5) << "\" fill=\"" << (p.hollow ? "white" : colour)
          << "\" stroke=\"" << (p.marked ? "black" : colour) << "\" stroke-width=\""
          << (p.marked ? 2.5 : 1.5) << "\"><title>" << Escape(p.label) << "</title></circle>";
    }
  }
  svg << Legend(a, names) << "</svg>";
  return svg.str();
}

// Grouped bars: per category, one bar per series.
std::string Bars(const std::vector<std::string>& categories, const std::vector<std::string>& series,
                 const std::map<std::pair<std::string, std::string>, double>& values,
                 const std::string& ylabel) {
  Axes a{0, 1, 0, 0};
  // Many or long category names are written slanted, below a taller margin.
  size_t longest = 0;
  for (const std::string& c : categories) longest = std::max(longest, c.size());
  const bool slanted = categories.size() * std::max<size_t>(longest, 4) * 7 >
                       static_cast<size_t>(a.width - a.left - a.right);
  if (slanted) {  // a label of n characters reaches about 5 n pixels left and 4 n down
    const int reach = static_cast<int>(std::min<size_t>(longest, 40));
    a.bottom = 30 + reach * 4;
    a.height += a.bottom - 44;
    a.left = std::max(a.left, reach * 5 + 10);
    a.width += a.left - 64;
  }
  for (const auto& [key, v] : values) {
    if (!std::isnan(v)) {
      a.y0 = std::min(a.y0, v);
      a.y1 = std::max(a.y1, v);
    }
  }
  if (a.y1 <= a.y0) a.y1 = a.y0 + 1;
  std::ostringstream svg;
  svg << "<svg class=\"chart\" role=\"img\" viewBox=\"0 0 " << a.width << " " << a.height
      << "\" width=\"" << a.width << "\" height=\"" << a.height << "\"><title>" << Escape(ylabel)
      << "</title>";
  svg << YTicks(a);
  const double group = static_cast<double>(a.width - a.left - a.right) / std::max<size_t>(1, categories.size());
  const double bar = group * 0.8 / std::max<size_t>(1, series.size());
  for (size_t c = 0; c < categories.size(); ++c) {
    const double gx = a.left + group * c + group * 0.1;
    for (size_t s = 0; s < series.size(); ++s) {
      auto it = values.find({categories[c], series[s]});
      if (it == values.end() || std::isnan(it->second)) continue;
      const double y = a.Y(std::max(0.0, it->second)), y0 = a.Y(std::min(0.0, it->second));
      svg << "<rect class=\"bar\" x=\"" << gx + bar * s << "\" y=\"" << y << "\" width=\""
          << bar * 0.95 << "\" height=\"" << std::max(0.5, y0 - y) << "\" fill=\"" << kPalette[s % 10]
          << "\"><title>" << Escape(categories[c] + ", " + series[s] + ": " + Fmt(it->second))
          << "</title></rect>";
    }
    const double lx = gx + group * 0.4, ly = a.height - a.bottom + 16;
    if (slanted) {
      svg << "<text class=\"tick\" text-anchor=\"end\" transform=\"translate(" << lx << "," << ly
          << ") rotate(-40)\">" << Escape(categories[c]) << "</text>";
    } else {
      svg << "<text class=\"tick\" x=\"" << lx << "\" y=\"" << ly << "\" text-anchor=\"middle\">"
          << Escape(categories[c]) << "</text>";
    }
  }
  svg << "<line class=\"axis-line\" x1=\"" << a.left << "\" y1=\"" << a.Y(0) << "\" x2=\""
      << a.width - a.right << "\" y2=\"" << a.Y(0) << "\"/>"
      << "<text class=\"axis\" transform=\"translate(14," << (a.top + a.height - a.bottom) / 2
      << ") rotate(-90)\" text-anchor=\"middle\">" << Escape(ylabel) << "</text>"
      << Legend(a, series) << "</svg>";
  return svg.str();
}

// ------------------------------------------------------------------------------------------
// Sections by stage kind

std::string Note(const std::string& text) { return "<p class=\"note\">" + Escape(text) + "</p>\n"; }

// The value a knockout row is drawn by: te when the stage measured it, else the refusal score.
std::string EffectKey(const Rows& rows) {
  for (const Json& row : rows) {
    if (!std::isnan(Num(row, "te"))) return "te";
  }
  return "refusal_score";
}

std::string Combo(const Json& row) {
  std::string out = Text(row, "ablation") + " @ " + Text(row, "positions") + " on " +
                    Text(row, "prompt_set");
  const std::string direction = Text(row, "direction");
  if (!direction.empty()) out += " (" + direction + ")";
  return out;
}

std::string HeadsSection(const std::string& stage, const Rows& rows, int max_heatmaps) {
  std::map<std::string, Rows> by_combo;
  for (const Json& row : rows) by_combo[Combo(row)].push_back(row);
  const std::string effect = EffectKey(rows);
  const bool with_de = std::any_of(rows.begin(), rows.end(),
                                   [](const Json& r) { return !std::isnan(Num(r, "de")); });
  std::string out = "<h3>Heads: layer × head</h3>\n";
  int drawn = 0;
  for (const auto& [combo, group] : by_combo) {
    std::set<int> layers, heads;
    for (const Json& row : group) {
      layers.insert(static_cast<int>(Num(row, "layer")));
      heads.insert(static_cast<int>(Num(row, "unit")));
    }
    std::vector<std::string> row_labels, col_labels;
    std::map<int, size_t> layer_at, head_at;
    for (int l : layers) {
      layer_at[l] = row_labels.size();
      row_labels.push_back("L" + std::to_string(l));
    }
    for (int h : heads) {
      head_at[h] = col_labels.size();
      col_labels.push_back(std::to_string(h));
    }
    std::vector<std::pair<std::string, std::string>> values = {{effect, effect == "te" ? "TE" : effect}};
    if (with_de) {
      values.push_back({"de", "DE"});
      values.push_back({"c", "C = TE - DE"});
    }
    for (const auto& [key, name] : values) {
      if (drawn >= max_heatmaps) break;
      std::map<std::pair<size_t, size_t>, double> cells;
      Rows numbers;
      for (const Json& row : group) {
        const double v = key == "c" ? Num(row, "te") - Num(row, "de") : Num(row, key);
        const int layer = static_cast<int>(Num(row, "layer")), head = static_cast<int>(Num(row, "unit"));
        cells[{layer_at[layer], head_at[head]}] = v;
        numbers.push_back(Json{{"stage", stage}, {"layer", layer}, {"head", head},
                               {"ablation", Text(row, "ablation")},
                               {"positions", Text(row, "positions")},
                               {"prompt_set", Text(row, "prompt_set")}, {key, v}});
      }
      out += Figure(stage + " " + name + " " + combo,
                    Heatmap(row_labels, col_labels, cells, name, "layer", "head"), numbers,
                    "red raises the measure, blue lowers it; hover a cell for its value");
      ++drawn;
    }
  }
  if (drawn >= max_heatmaps) out += Note("more heatmaps in `knockout results` (the page shows " +
                                         std::to_string(max_heatmaps) + ")");
  return out;
}

// Effect per layer, one line per series key (positions for directions, unit kind for layers).
std::string PerLayerSection(const std::string& stage, const std::string& title, const Rows& rows,
                            const std::function<std::string(const Json&)>& series_of,
                            const std::function<std::string(const Json&)>& group_of) {
  const std::string effect = EffectKey(rows);
  std::map<std::string, Rows> groups;
  for (const Json& row : rows) groups[group_of(row)].push_back(row);
  std::string out = "<h3>" + Escape(title) + "</h3>\n";
  for (const auto& [group, members] : groups) {
    // Knockouts at every layer (directional ablation of one direction: layer -1) have no
    // layer to plot against: a table.
    if (std::all_of(members.begin(), members.end(), [](const Json& r) { return Num(r, "layer") < 0; })) {
      out += Figure(stage + ": " + group + " (every layer)", "", members, effect + " of the knockout at every layer");
      continue;
    }
    std::map<std::string, std::vector<Point>> series;
    for (const Json& row : members) {
      series[series_of(row)].push_back(
          {Num(row, "layer"), Num(row, effect),
           series_of(row) + " L" + Text(row, "layer") + ": " + effect + " = " + Fmt(Num(row, effect))});
    }
    out += Figure(stage + ": " + group, Chart(series, "layer", effect, true, true), members,
                  effect + " per layer, one line per " + (title.rfind("Directions", 0) == 0
                                                              ? std::string("position")
                                                              : std::string("unit kind and position")));
  }
  return out;
}

std::string SelectionSection(const std::string& stage, const Rows& candidates) {
  std::map<std::string, std::vector<Point>> series;
  for (const Json& row : candidates) {
    Point p{Num(row, "layer"), Num(row, "bypass"),
            Text(row, "position") + " L" + Text(row, "layer") + ": bypass " + Fmt(Num(row, "bypass")) +
                ", induce " + Fmt(Num(row, "induce")) + ", kl " + Fmt(Num(row, "kl")) +
                (row.value("passed", false) ? "" : " — rejected: " + Text(row, "rejected"))};
    p.hollow = !row.value("passed", false);
    p.marked = row.value("chosen", false);
    series[Text(row, "position")].push_back(p);
  }
  return "<h3>Direction selection</h3>\n" +
         Figure(stage + " candidates", Chart(series, "layer", "bypass (refusal score, ablated)", true, true),
                candidates,
                "lower bypass is better; hollow points were rejected by a filter (see the table), "
                "the ringed point is the chosen direction");
}

std::string RefusalSection(const std::string& stage, const Rows& refusal, const Rows& completions,
                           int examples) {
  std::vector<std::string> conditions, sets;
  std::map<std::pair<std::string, std::string>, double> values;
  for (const Json& row : refusal) {
    const std::string c = Text(row, "condition"), s = Text(row, "prompt_set");
    if (std::find(conditions.begin(), conditions.end(), c) == conditions.end()) conditions.push_back(c);
    if (std::find(sets.begin(), sets.end(), s) == sets.end()) sets.push_back(s);
    values[{c, s}] = Num(row, "refusal_rate");
  }
  std::string out = "<h3>Refusal rates</h3>\n" +
                    Figure(stage + " refusal rates", Bars(conditions, sets, values, "refusal rate"),
                           refusal, "share of completions that refuse, per condition and prompt set");
  if (!completions.empty()) {
    out += "<h3>Example completions</h3>\n<div class=\"examples\">";
    std::map<std::pair<std::string, std::string>, int> shown;
    for (const Json& row : completions) {
      int& n = shown[{Text(row, "condition"), Text(row, "prompt_set")}];
      if (n >= examples) continue;
      ++n;
      out += "<div class=\"example\"><p class=\"meta\">" + Escape(Text(row, "condition")) + " · " +
             Escape(Text(row, "prompt_set")) + " #" + Text(row, "prompt") +
             (row.value("refused", false) ? " · <b>refused</b>" : " · answered") + "</p><p class=\"q\">" +
             Escape(Text(row, "instruction")) + "</p><pre class=\"a\">" + Escape(Text(row, "text")) +
             "</pre></div>";
    }
    out += "</div>\n";
  }
  return out;
}

std::string LatentsSection(const SweepReader& store, const std::string& sweep,
                           const std::string& stage, const Rows& rows) {
  std::string out = "<h3>SAE latents: knockouts and their backups</h3>\n";
  auto compensation = Jsonl([&](std::ostream& o) {
    return PrintCompensation(store, sweep, stage, 5, o, OutputFormat::kJsonl);
  });
  if (!compensation.ok()) {
    out += Note("compensation not available: " + compensation.status().message());
    out += Figure(stage + " latent knockouts", "", rows);
    return out;
  }
  // Upstream (harm sensors) vs downstream (refusal features): by the role the spec gave them.
  std::vector<std::string> units, kinds = {"te", "de", "c"};
  std::map<std::pair<std::string, std::string>, double> values;
  for (const Json& row : *compensation) {
    const std::string unit = Text(row, "unit") + (Text(row, "role").empty() ? "" : " (" + Text(row, "role") + ")");
    if (units.size() >= 16 && std::find(units.begin(), units.end(), unit) == units.end()) continue;
    if (std::find(units.begin(), units.end(), unit) == units.end()) units.push_back(unit);
    for (const std::string& k : kinds) {
      if (!values.count({unit, k})) values[{unit, k}] = Num(row, k);
    }
  }
  out += Figure(stage + " latent TE DE C", Bars(units, kinds, values, "effect on the refusal score"),
                *compensation,
                "the strongest knockouts by |TE| (first ablation and prompt set of each); "
                "C = TE - DE is what the rest of the model made up; backups in the table");
  // The hydra itself: for the strongest downstream knockouts, the latents that rose to replace
  // them, clean vs ablated activation (dormant ones, silent on the clean run, marked *).
  std::vector<std::string> shown_units;
  for (const Json& row : *compensation) {
    const std::string unit = Text(row, "unit");
    if (Text(row, "role") == "upstream" || unit.empty()) continue;
    if (std::find(shown_units.begin(), shown_units.end(), unit) != shown_units.end()) continue;
    shown_units.push_back(unit);
    if (shown_units.size() == 3) break;
  }
  for (const std::string& unit : shown_units) {
    BackupsQuery query;
    query.sweep = sweep;
    query.stage = stage;
    query.unit = unit;
    query.top = 8;
    query.format = OutputFormat::kJsonl;
    auto backups = Jsonl([&](std::ostream& o) { return PrintBackups(store, query, o); });
    if (!backups.ok() || backups->empty()) continue;  // the stage stored no backups
    // One trial and prompt set (the first): the same latents under another ablation are in the CSV.
    const std::string trial = Text(backups->front(), "trial"), set = Text(backups->front(), "prompt_set");
    std::vector<std::string> latents;
    std::map<std::pair<std::string, std::string>, double> values;
    for (const Json& row : *backups) {
      if (Text(row, "trial") != trial || Text(row, "prompt_set") != set) continue;
      const std::string name = Text(row, "backup") + (row.value("dormant", false) ? " *" : "");
      latents.push_back(name);
      values[{name, "clean"}] = Num(row, "clean");
      values[{name, "ablated"}] = Num(row, "ablated");
    }
    out += Figure(stage + " backups of " + unit,
                  Bars(latents, {"clean", "ablated"}, values, "latent activation"), *backups,
                  "the latents that rose when " + unit + " was knocked out (" +
                      Text(backups->front(), "ablation") + " @ " +
                      Text(backups->front(), "positions") + " on " + set +
                      "): mean activation on the clean and the ablated run; * dormant on the "
                      "clean run");
  }
  auto features = Jsonl([&](std::ostream& o) {
    return PrintFeatures(store, sweep, stage, o, OutputFormat::kJsonl);
  });
  if (features.ok() && !features->empty()) {
    out += Figure(stage + " chosen latents", "", *features, "the latents each target chose, with their scores");
  }
  return out;
}

std::string ScreenSection(const SweepReader& store, const std::string& sweep, const std::string& stage) {
  auto rows = Jsonl([&](std::ostream& o) {
    return PrintScreenCheck(store, sweep, stage, o, OutputFormat::kJsonl);
  });
  if (!rows.ok()) return Note("screen check not available yet: " + rows.status().message());
  const Rows units = OfTable(*rows, "screen_units"), summary = OfTable(*rows, "screen_check");
  std::map<std::string, std::vector<Point>> series;
  for (const Json& row : units) {
    series[Text(row, "verify_stage") + " " + Text(row, "prompt_set")].push_back(
        {Num(row, "estimate"), Num(row, "te"),
         Text(row, "unit") + ": estimate " + Fmt(Num(row, "estimate")) + ", real " + Fmt(Num(row, "te"))});
  }
  std::string out = "<h3>Screen vs verified knockouts</h3>\n";
  if (!units.empty()) {
    out += Figure(stage + " screen vs verified", Chart(series, "screen estimate", "real TE", false, false, true),
                  units, "each point a unit the screen ranked and a knockout verified; the line is y = x");
  }
  if (!summary.empty()) out += Figure(stage + " screen agreement", "", summary, "Spearman and top-k recall");
  return out;
}

std::string KnockoutSection(const SweepReader& store, const std::string& sweep,
                            const std::string& stage, const Rows& results, int max_heatmaps) {
  std::map<std::string, Rows> by_kind;
  for (const Json& row : results) by_kind[Text(row, "unit_kind")].push_back(row);
  std::string out;
  bool latents_done = false;
  for (const auto& [kind, rows] : by_kind) {
    if (kind == "head") {
      out += HeadsSection(stage, rows, max_heatmaps);
    } else if (kind == "direction") {
      out += PerLayerSection(
          stage, "Directions: effect per layer and position", rows,
          [](const Json& r) { return Text(r, "positions"); },
          [](const Json& r) {
            // A per-layer direction (harm@3/inst_last) is one family across its layers.
            std::string direction = Text(r, "direction");
            const size_t at = direction.find('@');
            if (at != std::string::npos) {
              size_t end = at + 1;
              while (end < direction.size() && std::isdigit(static_cast<unsigned char>(direction[end]))) ++end;
              direction.erase(at, end - at);
            }
            return direction + " " + Text(r, "ablation") + " on " + Text(r, "prompt_set");
          });
    } else if (kind == "attn_out" || kind == "mlp_out") {
      out += PerLayerSection(
          stage, "Whole layers: " + kind, rows,
          [](const Json& r) { return Text(r, "unit_kind") + " @ " + Text(r, "positions"); },
          [](const Json& r) { return Text(r, "ablation") + " on " + Text(r, "prompt_set"); });
    } else if (kind == "sae_latent" || kind == "sae_latents") {
      // One section for both kinds: it reads the stage's compensation, not these rows alone.
      if (!latents_done) out += LatentsSection(store, sweep, stage, rows);
      latents_done = true;
    } else {
      const std::string effect = EffectKey(rows);
      Rows sorted = rows;
      std::stable_sort(sorted.begin(), sorted.end(), [&](const Json& a, const Json& b) {
        return std::fabs(Num(a, effect)) > std::fabs(Num(b, effect));
      });
      out += "<h3>" + Escape(kind.empty() ? "Other units" : kind + " units") + "</h3>\n" +
             Figure(stage + " " + kind + " by effect", "", sorted, "sorted by |" + effect + "|");
    }
  }
  return out;
}


const char kStyle[] = R"(
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:24px;color:#222}
h1{font-size:26px;margin:0 0 4px}h2{margin-top:40px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{margin-top:28px}table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4;position:sticky;top:0}
.scroll{max-height:420px;overflow:auto}figure.chart{margin:16px 0 28px;padding:12px;border:1px solid #e4e4e4;border-radius:6px;break-inside:avoid}
figcaption{margin-bottom:8px}.tick{font-size:11px;fill:#444}.axis{font-size:12px;fill:#222}
.axis-line{stroke:#444}.grid{stroke:#eee}.zero{stroke:#999;stroke-dasharray:3 3}.series{stroke-width:1.8}
.note{color:#666;font-style:italic}.meta-table td:first-child{font-weight:600;white-space:nowrap}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:10px}
.example{border:1px solid #e4e4e4;border-radius:6px;padding:8px}.example .meta{margin:0;color:#555;font-size:12px}
.example .q{font-weight:600;margin:4px 0}.example pre{white-space:pre-wrap;margin:0;font-size:12px}
pre.spec{max-height:360px;overflow:auto;background:#f7f7f7;padding:8px;font-size:12px}
nav ul{columns:2}@media print{.scroll{max-height:none}details{display:block}details>*{display:block}a[download]{display:none}}
)";

}  // namespace

Status WriteReport(const SweepReader& store, const ReportOptions& options, std::ostream& out) {
  KO_ASSIGN_OR_RETURN(const std::string id, store.ResolveSweep(options.sweep));
  KO_ASSIGN_OR_RETURN(const v1::SweepRecord sweep, store.GetSweep(id));
  KO_ASSIGN_OR_RETURN(const auto stages, store.ListStages(id));
  const v1::SweepSpec& spec = sweep.spec();

  std::string body;
  // ---- the sweep
  Rows stage_rows;
  std::set<uint32_t> expanded;
  for (const v1::StageRecord& stage : stages) {
    expanded.insert(stage.index());
    stage_rows.push_back(Json{{"stage", stage.index()}, {"name", stage.name()}, {"kind", stage.kind()},
                              {"state", RunStateName(stage.state())},
                              {"shards_done", stage.shards_done()}, {"shards_total", stage.shards_total()},
                              {"trials", stage.trials_total()}});
  }
  for (int i = 0; i < spec.stages_size(); ++i) {
    if (expanded.count(static_cast<uint32_t>(i))) continue;
    stage_rows.push_back(Json{{"stage", i}, {"name", spec.stages(i).name()},
                              {"kind", experiments::StageKindName(spec.stages(i))}, {"state", "waiting"},
                              {"shards_done", 0}, {"shards_total", 0}, {"trials", 0}});
  }
  std::stable_sort(stage_rows.begin(), stage_rows.end(),
                   [](const Json& a, const Json& b) { return a["stage"].get<int>() < b["stage"].get<int>(); });
  std::string sets;
  for (const v1::PromptSetRef& set : spec.prompt_sets()) {
    sets += (sets.empty() ? "" : ", ") + set.name() + " (" + std::to_string(set.prompts_size()) + " prompts)";
  }
  std::string spec_json;
  {
    google::protobuf::util::JsonPrintOptions json;
    json.add_whitespace = true;
    v1::SweepSpec shown = spec;
    for (v1::PromptSetRef& set : *shown.mutable_prompt_sets()) set.clear_prompts();  // long
    (void)google::protobuf::util::MessageToJsonString(shown, &spec_json, json);
  }
  body += "<section id=\"sweep\"><h2>The sweep</h2><table class=\"meta-table\">";
  auto meta = [&](const std::string& k, const std::string& v) {
    body += "<tr><td>" + Escape(k) + "</td><td>" + Escape(v) + "</td></tr>";
  };
  meta("name", sweep.name());
  meta("id", sweep.id());
  meta("state", RunStateName(sweep.state()) + (sweep.error().empty() ? "" : ": " + sweep.error()));
  meta("created", UtcTime(sweep.created_unix_ms(), /*readable=*/true));
  meta("model", spec.model().path());
  meta("prompt sets", sets);
  meta("read from", options.source);
  meta("report written", UtcTime(static_cast<uint64_t>(std::time(nullptr)) * 1000, /*readable=*/true));
  body += "</table>\n" + Figure("stages", "", stage_rows) +
          "<details><summary>The spec (as stored; prompts left out)</summary><pre class=\"spec\">" +
          Escape(spec_json) + "</pre></details></section>\n";

  // ---- the stages
  std::string nav = "<nav><ul><li><a href=\"#sweep\">The sweep</a></li>";
  bool cosines_done = false;
  for (const v1::StageRecord& stage : stages) {
    const std::string name = stage.name(), kind = stage.kind();
    const std::string anchor = "stage-" + Slug(name);
    nav += "<li><a href=\"#" + anchor + "\">" + Escape(name) + " (" + Escape(kind) + ")</a></li>";
    body += "<section id=\"" + anchor + "\" class=\"stage\" data-kind=\"" + Escape(kind) + "\"><h2>" +
            Escape(name) + " <small>(" + Escape(kind) + ", " + RunStateName(stage.state()) + ", " +
            std::to_string(stage.shards_done()) + "/" + std::to_string(stage.shards_total()) +
            " shards)</small></h2>\n";
    ResultsQuery query;
    query.sweep = id;
    query.stage = name;
    query.format = OutputFormat::kJsonl;
    auto rows = Jsonl([&](std::ostream& o) { return PrintResults(store, query, o); });
    if (!rows.ok()) {
      body += Note("results not available: " + rows.status().message()) + "</section>\n";
      continue;
    }
    if (kind == "extract_directions") {
      body += Figure(name + " directions", "", OfTable(*rows, "directions"),
                     "the difference-in-means directions and their norms");
      if (!cosines_done) {
        cosines_done = true;
        auto cosines = Jsonl([&](std::ostream& o) {
          return PrintDirectionCosines(store, id, o, OutputFormat::kJsonl);
        });
        if (cosines.ok() && !cosines->empty()) {
          std::map<std::string, std::vector<Point>> series;
          for (const Json& row : *cosines) {
            series[Text(row, "other")].push_back(
                {Num(row, "layer"), Num(row, "cosine"),
                 Text(row, "other") + " L" + Text(row, "layer") + ": cos " + Fmt(Num(row, "cosine"))});
          }
          body += "<h3>Harmfulness vs refusal</h3>\n" +
                  Figure("cosine with the refusal direction", Chart(series, "layer", "cosine", true, true),
                         *cosines, "per layer, the selected refusal direction against every other "
                                   "extracted direction");
        }
      }
    } else if (kind == "select_direction") {
      const Rows candidates = OfTable(*rows, "candidates");
      if (!candidates.empty()) body += SelectionSection(name, candidates);
      const Rows results = OfTable(*rows, "results");
      if (candidates.empty()) body += Note("the selection has not finished yet");
      if (!results.empty()) body += Figure(name + " selection trials", "", results);
    } else if (kind == "generate" || kind == "orthogonalize") {
      ResultsQuery per_prompt = query;
      per_prompt.per_prompt = true;
      auto completions = Jsonl([&](std::ostream& o) { return PrintResults(store, per_prompt, o); });
      const Rows refusal = OfTable(*rows, "refusal");
      if (refusal.empty()) body += Note("no completions yet");
      else body += RefusalSection(name, refusal, completions.ok() ? OfTable(*completions, "completions") : Rows{},
                                  options.examples_per_cell);
      const Rows ce = OfTable(*rows, "cross_entropy"), checkpoint = OfTable(*rows, "checkpoint");
      if (!ce.empty()) body += Figure(name + " cross-entropy", "", ce, "capability cost on the text set");
      if (!checkpoint.empty()) {
        body += "<p>Orthogonalized checkpoint: <code>" + Escape(Text(checkpoint[0], "output")) + "</code></p>";
      }
    } else if (kind == "attribution_screen") {
      body += ScreenSection(store, id, name);
      const Rows results = OfTable(*rows, "results");
      if (!results.empty()) body += Figure(name + " screen scores", "", results, "every screened unit");
    } else {
      const Rows results = OfTable(*rows, "results");
      if (results.empty()) {
        body += Note("no results yet");
      } else {
        body += KnockoutSection(store, id, name, results, options.max_heatmaps);
      }
    }
    body += "</section>\n";
  }
  nav += "</ul></nav>";

  out << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      << "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
         "style-src 'unsafe-inline'; img-src data:\">"
      << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
      << "<meta name=\"generator\" content=\"knockout report\">"
      << "<title>knockout report: " << Escape(sweep.name()) << "</title><style>" << kStyle
      << "</style></head><body><header><h1>knockout report: " << Escape(sweep.name())
      << "</h1><p class=\"note\">sweep " << Escape(sweep.id()) << " · " << RunStateName(sweep.state())
      << " · read from " << Escape(options.source) << "</p></header>" << nav << body
      << "<footer><p class=\"note\">Written by knockout. Every figure's numbers are in the table "
         "under it and in its CSV; the columns are those of <code>knockout results|compensation|"
         "screen-check --format csv</code>.</p></footer></body></html>\n";
  if (!out) return Status::IOError("writing the report failed");
  return Status::Ok();
}

Status WriteReportFile(const SweepReader& store, const ReportOptions& options,
                       const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path temporary = target.string() + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    if (!file) return Status::IOError(path + ": cannot write here (" + temporary.string() + ")");
    Status written = WriteReport(store, options, file);
    file.close();
    if (!written.ok() || !file) {
      std::error_code ignored;
      fs::remove(temporary, ignored);
      return written.ok() ? Status::IOError(path + ": writing failed (disk full?)") : written;
    }
  }
  std::error_code ec;
  fs::rename(temporary, target, ec);
  if (ec) {
    fs::remove(temporary, ec);
    return Status::IOError(path + ": cannot replace it: " + ec.message());
  }
  return Status::Ok();
}

}  // namespace knockout::cli
