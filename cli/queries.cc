#include "cli/queries.h"

#include "experiments/engine.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "cli/store_reading.h"
#include "cli/table.h"
#include "experiments/compensation.h"
#include "formats/positions.h"
#include "formats/safetensors.h"

namespace knockout::cli {
namespace {

using experiments::SweepReader;

// ------------------------------------------------------------------------------------------
// Reading the store


std::string Title(const v1::StageRecord& stage, const std::string& what) {
  return stage.name() + " (" + stage.kind() + "): " + what;
}

// ------------------------------------------------------------------------------------------
// Result tables by stage kind

// The results table's columns: the label columns, then the value keys in order, then "error"
// when a row carries one.
std::vector<std::string> ResultColumns(const std::set<std::string>& keys, bool per_prompt,
                                       bool errors) {
  std::vector<std::string> columns = {"stage",     "trial",     "unit_kind",   "layer",
                                      "unit",      "ablation",  "positions",   "direction",
                                      "coefficient", "role",    "prompt_set"};
  if (per_prompt) columns.push_back("prompt");
  columns.insert(columns.end(), keys.begin(), keys.end());
  if (errors) columns.push_back("error");
  return columns;
}

std::vector<Cell> ResultCells(const v1::StageRecord& stage, const v1::ResultRow& row,
                              const std::map<uint32_t, v1::TrialLabel>& labels,
                              const std::set<std::string>& keys, bool per_prompt, bool errors) {
  std::vector<Cell> cells = {Cell::Text(stage.name()), Cell::Integer(row.trial())};
  const auto label = labels.find(row.trial());
  if (label != labels.end()) {
    const v1::TrialLabel& l = label->second;
    cells.insert(cells.end(), {Cell::Text(l.unit_kind()), Cell::Integer(l.layer()),
                               Cell::Integer(l.unit()), Cell::Text(l.ablation()),
                               Cell::Text(l.positions()), Cell::Text(l.direction()),
                               Cell::Number(l.coefficient()), Cell::Text(l.role())});
  } else {
    cells.resize(cells.size() + 8);  // a row whose trial no shard lists: shown unlabelled
  }
  cells.push_back(Cell::Text(row.prompt_set()));
  if (per_prompt) cells.push_back(Cell::Integer(row.prompt()));
  for (const std::string& key : keys) {
    const auto value = row.values().find(key);
    cells.push_back(value == row.values().end() ? Cell::Empty() : Cell::Number(value->second));
  }
  if (errors) cells.push_back(Cell::Text(row.error()));
  return cells;
}

std::string ResultsTitle(const v1::StageRecord& stage, bool per_prompt) {
  return Title(stage, per_prompt ? "results per prompt" : "results (means over prompts)");
}

StatusOr<Table> ResultsTable(const SweepReader& store, const std::string& sweep,
                             const v1::StageRecord& stage, bool per_prompt) {
  KO_ASSIGN_OR_RETURN(auto rows, store.Rows(sweep, stage.index(), !per_prompt));
  KO_ASSIGN_OR_RETURN(auto labels, TrialLabels(store, sweep, stage.index()));
  rows.erase(std::remove_if(rows.begin(), rows.end(),
                            [&](const v1::ResultRow& row) { return (row.prompt() >= 0) != per_prompt; }),
             rows.end());
  std::set<std::string> keys;
  for (const v1::ResultRow& row : rows) {
    for (const auto& [key, value] : row.values()) keys.insert(key);
  }
  // Per-prompt rows left out of their aggregate's means (non-finite values) say why.
  const bool errors = std::any_of(rows.begin(), rows.end(),
                                  [](const v1::ResultRow& row) { return !row.error().empty(); });
  Table table;
  table.name = "results";
  table.title = ResultsTitle(stage, per_prompt);
  table.columns = ResultColumns(keys, per_prompt, errors);
  for (const v1::ResultRow& row : rows) {
    table.rows.push_back(ResultCells(stage, row, labels, keys, per_prompt, errors));
  }
  return table;
}

// The results table of one stage written as CSV or JSON lines straight from the reader's row
// stream, a few thousand rows at a time: memory stays flat in the number of rows (a 10M-row
// stage). Two passes: the first finds the columns (value keys, errors), the second writes.
Status StreamResults(const SweepReader& store, const std::string& sweep,
                     const v1::StageRecord& stage, bool per_prompt,
                     const std::vector<Filter>& filters, OutputFormat format, std::ostream& out) {
  std::set<std::string> keys;
  bool errors = false;
  KO_RETURN_IF_ERROR(store.ForEachRow(sweep, stage.index(), !per_prompt, [&](v1::ResultRow& row) {
    if ((row.prompt() >= 0) != per_prompt) return true;
    for (const auto& [key, value] : row.values()) keys.insert(key);
    errors = errors || !row.error().empty();
    return true;
  }));
  KO_ASSIGN_OR_RETURN(auto labels, TrialLabels(store, sweep, stage.index()));
  Table chunk;
  chunk.name = "results";
  chunk.title = ResultsTitle(stage, per_prompt);
  chunk.columns = ResultColumns(keys, per_prompt, errors);
  {
    // A filter on a column no table has is an error; one this table lacks prints nothing.
    std::vector<Table> probe = {chunk};
    KO_RETURN_IF_ERROR(ApplyFilters(filters, &probe));
    if (probe.empty()) return Status::Ok();
  }
  bool header = true;
  Status failed;
  auto flush = [&] {
    std::vector<Table> one = {std::move(chunk)};
    failed = ApplyFilters(filters, &one);
    if (failed.ok() && !one.empty()) RenderRows(one[0], format, header, out);
    header = false;
    chunk = Table{one.empty() ? "results" : one[0].name, ResultsTitle(stage, per_prompt),
                  ResultColumns(keys, per_prompt, errors), {}};
    return failed.ok();
  };
  constexpr size_t kRowsPerChunk = 4096;
  KO_RETURN_IF_ERROR(store.ForEachRow(sweep, stage.index(), !per_prompt, [&](v1::ResultRow& row) {
    if ((row.prompt() >= 0) != per_prompt) return true;
    chunk.rows.push_back(ResultCells(stage, row, labels, keys, per_prompt, errors));
    return chunk.rows.size() < kRowsPerChunk || flush();
  }));
  KO_RETURN_IF_ERROR(failed);
  flush();
  KO_RETURN_IF_ERROR(failed);
  if (!out) return Status::IOError("writing the results failed (disk full or output closed?)");
  return Status::Ok();
}

StatusOr<Table> DirectionsTable(const SweepReader& store, const std::string& sweep,
                                const v1::StageRecord& stage) {
  KO_ASSIGN_OR_RETURN(auto artifacts,
                      store.ListArtifacts(sweep, "direction/" + stage.name() + "/"));
  Table table;
  table.name = "directions";
  table.title = Title(stage, "directions");
  table.columns = {"stage", "layer", "position", "hook", "norm", "positive_count",
                   "negative_count", "dim"};
  for (const auto& [name, bytes] : artifacts) {
    KO_ASSIGN_OR_RETURN(auto direction, ParseArtifact<v1::DirectionArtifact>(sweep, name, bytes));
    table.rows.push_back({Cell::Text(stage.name()), Cell::Integer(direction.layer()),
                          Cell::Text(direction.position()), Cell::Text(direction.hook()),
                          Cell::Number(direction.norm()),
                          Cell::Integer(static_cast<int64_t>(direction.positive_count())),
                          Cell::Integer(static_cast<int64_t>(direction.negative_count())),
                          Cell::Integer(direction.values_size())});
  }
  return table;
}

Table CandidatesTable(const v1::StageRecord& stage, const v1::SelectionArtifact& selection) {
  Table table;
  table.name = "candidates";
  table.title = Title(stage, selection.chosen() >= 0
                                 ? "candidates (chosen: #" + std::to_string(selection.chosen()) + ")"
                                 : "candidates (none passed the filters)");
  table.columns = {"stage",  "candidate", "layer",  "position", "bypass",
                   "induce", "kl",        "passed", "rejected", "chosen"};
  for (int i = 0; i < selection.candidates_size(); ++i) {
    const v1::CandidateScore& c = selection.candidates(i);
    table.rows.push_back({Cell::Text(stage.name()), Cell::Integer(i), Cell::Integer(c.layer()),
                          Cell::Text(c.position()), Cell::Number(c.bypass()),
                          Cell::Number(c.induce()), Cell::Number(c.kl()), Cell::Bool(c.passed()),
                          Cell::Text(c.rejected()), Cell::Bool(i == selection.chosen())});
  }
  return table;
}

StatusOr<Table> CompletionsTable(const SweepReader& store, const std::string& sweep,
                                 const v1::StageRecord& stage, bool per_prompt) {
  KO_ASSIGN_OR_RETURN(auto completions, store.Completions(sweep, stage.index()));
  Table table;
  if (per_prompt) {
    table.name = "completions";
    table.title = Title(stage, "completions");
    table.columns = {"stage",   "condition",   "prompt_set", "prompt",
                     "refused", "instruction", "text"};
    for (const v1::CompletionRecord& c : completions) {
      table.rows.push_back({Cell::Text(stage.name()), Cell::Text(c.condition()),
                            Cell::Text(c.set()), Cell::Integer(c.prompt()), Cell::Bool(c.refused()),
                            Cell::Text(c.instruction()), Cell::Text(c.text())});
    }
    return table;
  }
  table.name = "refusal";
  table.title = Title(stage, "refusal rate");
  table.columns = {"stage", "condition", "prompt_set", "prompts", "refused", "refusal_rate"};
  std::map<std::pair<std::string, std::string>, std::pair<int64_t, int64_t>> counts;
  for (const v1::CompletionRecord& c : completions) {
    auto& [prompts, refused] = counts[{c.condition(), c.set()}];
    ++prompts;
    refused += c.refused() ? 1 : 0;
  }
  for (const auto& [key, count] : counts) {
    table.rows.push_back({Cell::Text(stage.name()), Cell::Text(key.first), Cell::Text(key.second),
                          Cell::Integer(count.first), Cell::Integer(count.second),
                          Cell::Number(static_cast<double>(count.second) / count.first)});
  }
  return table;
}

Status AppendStageTables(const SweepReader& store, const std::string& sweep,
                         const v1::StageRecord& stage, bool per_prompt,
                         std::vector<Table>* tables) {
  const std::string& kind = stage.kind();
  if (kind == "extract_directions") {
    KO_ASSIGN_OR_RETURN(Table table, DirectionsTable(store, sweep, stage));
    tables->push_back(std::move(table));
    return Status::Ok();
  }
  if (kind == "generate" || kind == "orthogonalize") {
    KO_ASSIGN_OR_RETURN(Table table, CompletionsTable(store, sweep, stage, per_prompt));
    tables->push_back(std::move(table));
    // Capability cost (cross-entropy on the text set per condition), when the spec asks for it.
    KO_ASSIGN_OR_RETURN(Table results, ResultsTable(store, sweep, stage, false));
    if (!results.rows.empty()) {
      results.name = "cross_entropy";
      results.title = Title(stage, "cross-entropy on the text set per condition");
      tables->push_back(std::move(results));
    }
    if (kind == "orthogonalize") {
      KO_ASSIGN_OR_RETURN(auto artifact, OptionalArtifact<v1::OrthogonalizeArtifact>(
                                             store, sweep, "orthogonalize/" + stage.name()));
      if (artifact) {
        Table checkpoint;
        checkpoint.name = "checkpoint";
        checkpoint.title = Title(stage, "weight-orthogonalized checkpoint");
        checkpoint.columns = {"stage", "output", "direction"};
        checkpoint.rows.push_back({Cell::Text(stage.name()), Cell::Text(artifact->output()),
                                   Cell::Text(artifact->direction())});
        tables->push_back(std::move(checkpoint));
      }
    }
    return Status::Ok();
  }
  // knockout_sweep, select_direction, and kinds this version does not know that report rows.
  KO_ASSIGN_OR_RETURN(Table results, ResultsTable(store, sweep, stage, per_prompt));
  tables->push_back(std::move(results));
  if (kind == "select_direction") {
    KO_ASSIGN_OR_RETURN(auto selection, OptionalArtifact<v1::SelectionArtifact>(
                                            store, sweep, "selection/" + stage.name()));
    if (selection) tables->push_back(CandidatesTable(stage, *selection));
  }
  return Status::Ok();
}

// ------------------------------------------------------------------------------------------
// Compensation

// A downstream reading's name from its kind (v1::UnitReading::Kind). Rows stored before kinds
// read heads downstream of head knockouts, else attention (unit 0) and MLP (unit 1) outputs.
std::string DownstreamName(const std::string& swept_kind, v1::UnitReading::Kind kind, int layer,
                           int unit) {
  if (kind == v1::UnitReading::HEAD) return UnitName("head", layer, unit);
  if (kind == v1::UnitReading::ATTN_OUT) return UnitName("attn_out", layer, -1);
  if (kind == v1::UnitReading::MLP_OUT) return UnitName("mlp_out", layer, -1);
  if (swept_kind == "head") return UnitName(swept_kind, layer, unit);
  if (unit == 0) return UnitName("attn_out", layer, -1);
  if (unit == 1) return UnitName("mlp_out", layer, -1);
  return UnitName("", layer, unit);
}

std::string SignedShort(double value) {
  std::string text = FormatDouble(value, 4);
  return value > 0 ? "+" + text : text;
}

Table CompensationTable(
    const std::vector<std::pair<std::string, experiments::CompensationRow>>& rows) {
  Table table;
  table.name = "compensation";
  table.title = "compensation (C = TE - DE), by |TE|";
  // C = norm_effect + explained + unexplained: the final norm's part, the sum of the read
  // downstream units' changes (`read` says which units), and the rest (non-linearity).
  table.columns = {"stage",       "trial",     "unit",        "layer",     "ablation",
                   "positions",   "prompt_set", "te",         "de",        "c",
                   "c/|de|",      "norm_effect", "explained", "unexplained", "norm_share",
                   "read",        "backups",   "role",      "latent_backups"};
  for (const auto& [stage, row] : rows) {
    const v1::TrialLabel& label = row.label;
    std::string backups_text;
    Json backups = Json::array();
    for (const experiments::UnitChange& change : row.top_backups) {
      if (!change.compensating) continue;
      const std::string name = DownstreamName(label.unit_kind(), change.kind, change.layer, change.unit);
      backups_text += (backups_text.empty() ? "" : ", ") + name + " " + SignedShort(change.change);
      backups.push_back(Json{{"unit", name},         {"layer", change.layer},
                             {"index", change.unit}, {"clean", change.clean},
                             {"ablated", change.ablated}, {"change", change.change}});
    }
    Cell backups_cell = Cell::Text(backups_text);
    backups_cell.structured = std::move(backups);
    // SAE latents that rose (dormant ones marked): "L5F12 0->3.1 dormant, L4F7 0.5->1.2".
    std::string latents_text;
    Json latents = Json::array();
    for (const v1::UnitReading& b : row.latent_backups) {
      const std::string name = "L" + std::to_string(b.layer()) + "F" + std::to_string(b.unit());
      latents_text += (latents_text.empty() ? "" : ", ") + name + " " + FormatDouble(b.clean(), 3) +
                      "->" + FormatDouble(b.ablated(), 3) + (b.dormant() ? " dormant" : "");
      latents.push_back(Json{{"unit", name},          {"hook", b.hook()},
                             {"clean", b.clean()},    {"ablated", b.ablated()},
                             {"spread", b.spread()},  {"dormant", b.dormant()},
                             {"cosine", b.cosine()},  {"de_clean", b.de_clean()},
                             {"de_ablated", b.de_ablated()}});
    }
    Cell latents_cell = Cell::Text(latents_text);
    latents_cell.structured = std::move(latents);
    table.rows.push_back({Cell::Text(stage), Cell::Integer(row.trial),
                          Cell::Text(TrialUnitName(label)),
                          Cell::Integer(label.layer()), Cell::Text(label.ablation()),
                          Cell::Text(label.positions()), Cell::Text(row.prompt_set),
                          Cell::Number(row.te), Cell::Number(row.de), Cell::Number(row.c),
                          std::isnan(row.ratio) ? Cell::Text("-") : Cell::Number(row.ratio),
                          Cell::Number(row.norm_effect),
                          Cell::Number(row.explained), Cell::Number(row.unexplained),
                          Cell::Number(row.norm_share), Cell::Text(row.read),
                          std::move(backups_cell), Cell::Text(label.role()),
                          std::move(latents_cell)});
  }
  return table;
}

}  // namespace

// ------------------------------------------------------------------------------------------

std::string RunStateName(v1::RunState state) {
  switch (state) {
    case v1::PENDING: return "pending";
    case v1::RUNNING: return "running";
    case v1::DONE: return "done";
    case v1::FAILED: return "failed";
    case v1::CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

StatusOr<OutputFormat> ParseOutputFormat(const std::string& name) {
  if (name == "table") return OutputFormat::kTable;
  if (name == "csv") return OutputFormat::kCsv;
  if (name == "jsonl") return OutputFormat::kJsonl;
  return Status::InvalidArgument("unknown output format \"" + name +
                                 "\"; formats: table, csv, jsonl");
}

Status PrintStatus(const SweepReader& store, const std::string& sweep_or_empty,
                   std::ostream& out, OutputFormat format) {
  std::vector<v1::SweepRecord> sweeps;
  if (sweep_or_empty.empty()) {
    KO_ASSIGN_OR_RETURN(sweeps, store.ListSweeps());
  } else {
    KO_ASSIGN_OR_RETURN(const std::string id, store.ResolveSweep(sweep_or_empty));
    KO_ASSIGN_OR_RETURN(v1::SweepRecord sweep, store.GetSweep(id));
    sweeps.push_back(std::move(sweep));
  }
  if (format != OutputFormat::kTable) {
    Table table;
    table.name = "status";
    table.columns = {"sweep", "sweep_name", "sweep_state", "created", "error", "stage",
                     "name", "kind", "state", "shards_done", "shards_total", "trials"};
    for (const v1::SweepRecord& sweep : sweeps) {
      KO_ASSIGN_OR_RETURN(auto stages, store.ListStages(sweep.id()));
      std::map<int, v1::StageRecord> expanded;
      for (const v1::StageRecord& stage : stages) expanded[static_cast<int>(stage.index())] = stage;
      for (int i = 0; i < sweep.spec().stages_size(); ++i) {
        std::vector<Cell> row = {Cell::Text(sweep.id()), Cell::Text(sweep.name()),
                                 Cell::Text(RunStateName(sweep.state())),
                                 Cell::Text(UtcTime(sweep.created_unix_ms())), Cell::Text(sweep.error()),
                                 Cell::Integer(i)};
        auto it = expanded.find(i);
        if (it != expanded.end()) {
          const v1::StageRecord& stage = it->second;
          row.insert(row.end(), {Cell::Text(stage.name()), Cell::Text(stage.kind()),
                                 Cell::Text(RunStateName(stage.state())),
                                 Cell::Integer(stage.shards_done()), Cell::Integer(stage.shards_total()),
                                 Cell::Integer(static_cast<int64_t>(stage.trials_total()))});
        } else {
          row.insert(row.end(), {Cell::Text(sweep.spec().stages(i).name()),
                                 Cell::Text(experiments::StageKindName(sweep.spec().stages(i))),
                                 Cell::Text("waiting"), Cell::Integer(0), Cell::Integer(0),
                                 Cell::Integer(0)});
        }
        table.rows.push_back(std::move(row));
      }
    }
    RenderTables({table}, format, out);
    return Status::Ok();
  }
  if (sweeps.empty()) {
    out << "no sweeps\n";
    return Status::Ok();
  }
  for (size_t s = 0; s < sweeps.size(); ++s) {
    const v1::SweepRecord& sweep = sweeps[s];
    if (s > 0) out << "\n";
    out << "sweep " << sweep.id() << "  " << sweep.name() << "  " << RunStateName(sweep.state())
        << "  created " << UtcTime(sweep.created_unix_ms()) << "\n";
    if (!sweep.error().empty()) out << "  error: " << sweep.error() << "\n";
    KO_ASSIGN_OR_RETURN(auto stages, store.ListStages(sweep.id()));
    Table table;
    table.columns = {"stage", "name", "kind", "state", "shards", "trials"};
    std::set<uint32_t> listed;
    for (const v1::StageRecord& stage : stages) {
      listed.insert(stage.index());
      table.rows.push_back(
          {Cell::Integer(stage.index()), Cell::Text(stage.name()), Cell::Text(stage.kind()),
           Cell::Text(RunStateName(stage.state())),
           Cell::Text(std::to_string(stage.shards_done()) + "/" +
                      std::to_string(stage.shards_total())),
           Cell::Integer(static_cast<int64_t>(stage.trials_total()))});
    }
    for (int i = 0; i < sweep.spec().stages_size(); ++i) {
      if (listed.count(static_cast<uint32_t>(i))) continue;
      const v1::Stage& stage = sweep.spec().stages(i);
      table.rows.push_back({Cell::Integer(i), Cell::Text(stage.name()),
                            Cell::Text(experiments::StageKindName(stage)), Cell::Text("waiting"),
                            Cell::Text("-"), Cell::Empty()});
    }
    std::stable_sort(table.rows.begin(), table.rows.end(),
                     [](const auto& a, const auto& b) { return a[0].integer < b[0].integer; });
    RenderAligned(table, out, "  ");
  }
  return Status::Ok();
}

Status PrintResults(const SweepReader& store, const ResultsQuery& query, std::ostream& out) {
  KO_ASSIGN_OR_RETURN(const auto filters, ParseFilters(query.where));
  KO_ASSIGN_OR_RETURN(const std::string sweep, store.ResolveSweep(query.sweep));
  KO_ASSIGN_OR_RETURN(const auto stages, SelectStages(store, sweep, query.stage));
  // One stage whose only table is its results, as CSV or JSON lines: streamed (any size).
  if (query.format != OutputFormat::kTable && stages.size() == 1 &&
      (stages[0].kind() == "knockout_sweep" || stages[0].kind() == "attribution_screen")) {
    const Status status = StreamResults(store, sweep, stages[0], query.per_prompt, filters,
                                        query.format, out);
    return status.ok() ? status : status.WithContext("stage " + stages[0].name());
  }
  std::vector<Table> tables;
  for (const v1::StageRecord& stage : stages) {
    const Status status = AppendStageTables(store, sweep, stage, query.per_prompt, &tables);
    if (!status.ok()) return status.WithContext("stage " + stage.name());
  }
  KO_RETURN_IF_ERROR(ApplyFilters(filters, &tables));
  RenderTables(tables, query.format, out);
  return Status::Ok();
}

Status PrintCompensation(const SweepReader& store, const std::string& sweep_name,
                         const std::string& stage_name, int top, std::ostream& out,
                         OutputFormat format, const std::vector<std::string>& columns) {
  if (top < 0) {
    return Status::InvalidArgument("--top " + std::to_string(top) + ": must be 0 or more");
  }
  KO_ASSIGN_OR_RETURN(const std::string sweep, store.ResolveSweep(sweep_name));
  KO_ASSIGN_OR_RETURN(const auto stages, SelectStages(store, sweep, stage_name));
  std::vector<std::pair<std::string, experiments::CompensationRow>> rows;
  for (const v1::StageRecord& stage : stages) {
    if (stage.kind() != "knockout_sweep") {
      if (stage_name.empty()) continue;
      return Status::InvalidArgument("stage \"" + stage.name() + "\" is a " + stage.kind() +
                                     " stage; compensation reads knockout_sweep stages");
    }
    KO_ASSIGN_OR_RETURN(auto aggregates, store.Rows(sweep, stage.index(), true));
    const bool has_readings =
        std::any_of(aggregates.begin(), aggregates.end(),
                    [](const v1::ResultRow& row) {
                      return row.downstream_size() > 0 || row.backups_size() > 0;
                    });
    if (stage_name.empty() && !has_readings) continue;
    KO_ASSIGN_OR_RETURN(auto labels, TrialLabels(store, sweep, stage.index()));
    auto computed = experiments::ComputeCompensation(aggregates, labels, top);
    if (!computed.ok()) return computed.status().WithContext("stage " + stage.name());
    for (auto& row : *computed) rows.emplace_back(stage.name(), std::move(row));
  }
  if (stage_name.empty() && rows.empty()) {
    return Status::NotFound("sweep " + sweep +
                            ": no knockout_sweep stage has downstream readings (run one with "
                            "compensation: true)");
  }
  std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return std::fabs(a.second.te) > std::fabs(b.second.te);
  });
  Table table = CompensationTable(rows);
  KO_RETURN_IF_ERROR(SelectColumns(columns, &table));
  RenderTables({table}, format, out);
  return Status::Ok();
}

Status PrintDirectionCosines(const SweepReader& store, const std::string& sweep_name,
                             std::ostream& out, OutputFormat format) {
  KO_ASSIGN_OR_RETURN(const std::string sweep, store.ResolveSweep(sweep_name));
  KO_ASSIGN_OR_RETURN(auto selections, store.ListArtifacts(sweep, "selection/"));
  KO_ASSIGN_OR_RETURN(auto artifacts, store.ListArtifacts(sweep, "direction/"));
  std::vector<v1::DirectionArtifact> directions;
  for (const auto& [key, bytes] : artifacts) {
    KO_ASSIGN_OR_RETURN(auto d, ParseArtifact<v1::DirectionArtifact>(sweep, key, bytes));
    directions.push_back(std::move(d));
  }
  auto cosine = [](const v1::DirectionArtifact& a, const v1::DirectionArtifact& b) {
    double dot = 0, na = 0, nb = 0;
    for (int i = 0; i < a.values_size() && i < b.values_size(); ++i) {
      dot += static_cast<double>(a.values(i)) * b.values(i);
      na += static_cast<double>(a.values(i)) * a.values(i);
      nb += static_cast<double>(b.values(i)) * b.values(i);
    }
    return dot / (std::sqrt(na * nb) + 1e-30);
  };
  Table table;
  table.name = "cosines";
  table.title = "per-layer cosine: selected refusal position vs the other extracted directions";
  table.columns = {"layer", "refusal", "other", "cosine", "refusal_norm", "other_norm"};
  for (const auto& [key, bytes] : selections) {
    KO_ASSIGN_OR_RETURN(auto selection, ParseArtifact<v1::SelectionArtifact>(sweep, key, bytes));
    if (selection.chosen() < 0) continue;
    const v1::DirectionArtifact& chosen = selection.direction();
    for (const auto& refusal : directions) {
      if (refusal.stage() != chosen.stage() || refusal.position() != chosen.position()) continue;
      for (const auto& other : directions) {
        if (other.stage() == chosen.stage() || other.layer() != refusal.layer()) continue;
        table.rows.push_back({Cell::Integer(refusal.layer()),
                              Cell::Text(refusal.stage() + "@" + refusal.position()),
                              Cell::Text(other.stage() + "@" + other.position()),
                              Cell::Number(cosine(refusal, other)), Cell::Number(refusal.norm()),
                              Cell::Number(other.norm())});
      }
    }
  }
  if (table.rows.empty()) {
    return Status::NotFound("sweep " + sweep +
                            ": no selected direction with another extracted direction to compare");
  }
  RenderTables({table}, format, out);
  return Status::Ok();
}

Status ExportDirections(const SweepReader& store, const std::string& sweep_name,
                        const std::string& path) {
  KO_ASSIGN_OR_RETURN(const std::string sweep, store.ResolveSweep(sweep_name));
  struct Export {
    std::string name;
    Json metadata;
    std::vector<float> values;
  };
  std::deque<Export> exports;  // stable addresses: the writer reads the values in place
  auto add = [&](const std::string& name, const v1::DirectionArtifact& direction,
                 const std::string& stage) {
    Json metadata = {{"stage", stage},
                     {"layer", direction.layer()},
                     {"position", direction.position()},
                     {"hook", direction.hook()},
                     {"norm", direction.norm()},
                     {"positive_count", direction.positive_count()},
                     {"negative_count", direction.negative_count()}};
    exports.push_back({name, std::move(metadata),
                       std::vector<float>(direction.values().begin(), direction.values().end())});
  };

  const std::string direction_prefix = "direction/";
  KO_ASSIGN_OR_RETURN(auto directions, store.ListArtifacts(sweep, direction_prefix));
  for (const auto& [key, bytes] : directions) {
    KO_ASSIGN_OR_RETURN(auto direction, ParseArtifact<v1::DirectionArtifact>(sweep, key, bytes));
    // "direction/<stage>/L003/<position>": the stage from the key if the artifact lacks it.
    std::string stage = direction.stage();
    if (stage.empty()) {
      const size_t slash = key.find('/', direction_prefix.size());
      stage = key.substr(direction_prefix.size(), slash - direction_prefix.size());
    }
    add(stage + "/L" + std::to_string(direction.layer()) + "/" + direction.position(), direction,
        stage);
  }
  const std::string selection_prefix = "selection/";
  KO_ASSIGN_OR_RETURN(auto selections, store.ListArtifacts(sweep, selection_prefix));
  for (const auto& [key, bytes] : selections) {
    KO_ASSIGN_OR_RETURN(auto selection, ParseArtifact<v1::SelectionArtifact>(sweep, key, bytes));
    if (selection.chosen() < 0 || selection.direction().values_size() == 0) continue;
    const std::string stage =
        selection.stage().empty() ? key.substr(selection_prefix.size()) : selection.stage();
    add(stage + "/best", selection.direction(), stage);
    exports.back().metadata["source_stage"] = selection.direction().stage();
  }
  if (exports.empty()) {
    return Status::NotFound("sweep " + sweep +
                            ": no directions yet (no extract_directions stage has finished)");
  }

  std::vector<formats::TensorToWrite> tensors;
  // "format": "pt" is the convention of torch-saved files; "knockout_format" says what they are.
  std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"knockout_format", "directions/1"}, {"sweep", sweep}};
  for (const Export& e : exports) {
    tensors.push_back({e.name, formats::DType::kF32, {static_cast<int64_t>(e.values.size())},
                       e.values.data(), e.values.size() * sizeof(float)});
    metadata[e.name] = e.metadata.dump(-1, ' ', false, Json::error_handler_t::replace);
  }
  return formats::WriteSafetensors(path, tensors, metadata);
}

}  // namespace knockout::cli
