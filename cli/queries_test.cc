#include "cli/queries.h"
#include "cli/table.h"

#include "experiments/sweep_store.h"
#include "storage/store.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

namespace knockout::cli {
namespace {

namespace fs = std::filesystem;
using experiments::SweepStore;
using Json = nlohmann::json;

// ------------------------------------------------------------------------------------------
// Parsing what the queries print, independently of how they print it.

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// RFC 4180: fields separated by commas, records by newlines, quoted fields may hold both and
// double their quotes. Returns the records of the whole text (blank lines separate tables and
// are returned as a record with one empty field).
std::vector<std::vector<std::string>> ParseCsv(const std::string& text) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> record;
  std::string field;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field.push_back('"');
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field.push_back(c);
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      record.push_back(field);
      field.clear();
    } else if (c == '\n') {
      record.push_back(field);
      field.clear();
      records.push_back(record);
      record.clear();
    } else {
      field.push_back(c);
    }
  }
  EXPECT_FALSE(quoted) << "unterminated quoted field";
  EXPECT_TRUE(record.empty() && field.empty()) << "last record lacks its newline";
  return records;
}

std::vector<Json> ParseJsonl(const std::string& text) {
  std::vector<Json> objects;
  for (const std::string& line : Lines(text)) objects.push_back(Json::parse(line));
  return objects;
}

// The rows of the table titled `title_start...` in table format, as {column: cell text}.
// Cells are cut at the header's column boundaries (columns are separated by two spaces, numbers
// right-aligned and text left-aligned, so each cell lies under its header's span).
std::vector<std::map<std::string, std::string>> ParseAligned(const std::string& text,
                                                             const std::string& title_start) {
  const auto lines = Lines(text);
  size_t at = 0;
  while (at < lines.size() && lines[at].rfind("# " + title_start, 0) != 0) ++at;
  EXPECT_LT(at, lines.size()) << "no table titled " << title_start << " in:\n" << text;
  if (at + 1 >= lines.size()) return {};
  const std::string& header = lines[at + 1];
  // Column spans: [start, next start - 2).
  std::vector<std::pair<std::string, size_t>> columns;
  for (size_t i = 0; i < header.size();) {
    size_t end = header.find("  ", i);
    if (end == std::string::npos) end = header.size();
    columns.emplace_back(header.substr(i, end - i), i);
    i = header.find_first_not_of(' ', end);
    if (i == std::string::npos) break;
  }
  std::vector<std::map<std::string, std::string>> rows;
  for (size_t l = at + 2; l < lines.size() && !lines[l].empty() && lines[l][0] != '#'; ++l) {
    if (lines[l] == "(no rows)") break;
    std::map<std::string, std::string> row;
    for (size_t c = 0; c < columns.size(); ++c) {
      // A column is as wide as its widest cell, so every cell lies within [start, next start).
      const size_t begin = columns[c].second;
      const size_t end = c + 1 < columns.size() ? columns[c + 1].second : std::string::npos;
      std::string cell = begin < lines[l].size() ? lines[l].substr(begin, end - begin) : "";
      cell.erase(0, cell.find_first_not_of(' '));
      cell.erase(cell.find_last_not_of(' ') + 1);
      row[columns[c].first] = cell;
    }
    rows.push_back(row);
  }
  return rows;
}

// ------------------------------------------------------------------------------------------
// A store with one sweep of every stage kind.

v1::TrialLabel Label(const std::string& kind, int layer, int unit, const std::string& ablation,
                     const std::string& positions, const std::string& role = "") {
  v1::TrialLabel label;
  label.set_unit_kind(kind);
  label.set_layer(layer);
  label.set_unit(unit);
  label.set_ablation(ablation);
  label.set_positions(positions);
  label.set_role(role);
  return label;
}

v1::ResultRow Row(uint32_t trial, const std::string& set, int prompt,
                  std::map<std::string, double> values,
                  std::vector<std::tuple<int, int, double, double>> downstream = {}) {
  v1::ResultRow row;
  row.set_trial(trial);
  row.set_prompt_set(set);
  row.set_prompt(prompt);
  for (const auto& [key, value] : values) (*row.mutable_values())[key] = value;
  for (const auto& [layer, unit, clean, ablated] : downstream) {
    v1::UnitReading* reading = row.add_downstream();
    reading->set_layer(layer);
    reading->set_unit(unit);
    reading->set_clean(clean);
    reading->set_ablated(ablated);
  }
  return row;
}

v1::DirectionArtifact Direction(int layer, std::vector<float> values, double norm) {
  v1::DirectionArtifact direction;
  direction.set_stage("extract");
  direction.set_layer(layer);
  direction.set_position("post_inst[-1]");
  direction.set_hook("resid_pre");
  direction.set_norm(norm);
  direction.set_positive_count(8);
  direction.set_negative_count(7);
  for (float v : values) direction.add_values(v);
  return direction;
}

const std::string kCompletionText = "Sure, here is \"how\":\nstep 1";

class QueriesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = ::testing::TempDir() + "/queries_test_" + info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    auto store = storage::Store::Open(dir_ + "/store");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    sweeps_ = std::make_unique<SweepStore>(store_.get());
    BuildSweep();
  }

  void TearDown() override {
    sweeps_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }

  // Expands stage `index` with one shard per entry of `shard_trials`, commits `rows` and
  // `completions` (all in the first shard's result; the others commit empty) and, when
  // `finish`, finishes it with `artifacts`.
  void AddStage(uint32_t index, const std::string& name, const std::string& kind,
                std::vector<std::vector<std::pair<uint32_t, v1::TrialLabel>>> shard_trials,
                std::vector<v1::ResultRow> rows, std::vector<v1::CompletionRecord> completions,
                std::vector<std::pair<std::string, std::string>> artifacts, bool finish = true) {
    sweep_.set_stages_expanded(index + 1);
    v1::StageRecord stage;
    stage.set_index(index);
    stage.set_name(name);
    stage.set_kind(kind);
    stage.set_state(v1::PENDING);
    stage.set_shards_total(static_cast<uint32_t>(shard_trials.size()));
    std::vector<v1::Shard> shards;
    for (size_t s = 0; s < shard_trials.size(); ++s) {
      v1::Shard shard;
      shard.set_sweep_id(sweep_.id());
      shard.set_stage(index);
      shard.set_index(static_cast<uint32_t>(s));
      shard.set_stage_name(name);
      for (const auto& [trial_index, label] : shard_trials[s]) {
        v1::Trial* trial = shard.add_trials();
        trial->set_index(trial_index);
        *trial->mutable_label() = label;
        stage.set_trials_total(stage.trials_total() + 1);
      }
      shards.push_back(shard);
    }
    ASSERT_TRUE(sweeps_->ExpandStage(sweep_, stage, shards).ok());
    for (size_t s = 0; s < shards.size(); ++s) {
      v1::ShardResult result;
      result.set_sweep_id(sweep_.id());
      result.set_stage(index);
      result.set_index(static_cast<uint32_t>(s));
      if (s == 0) {
        for (const auto& row : rows) *result.add_rows() = row;
        for (const auto& completion : completions) *result.add_completions() = completion;
      }
      const Status committed = sweeps_->CommitShard(result, 1);
      ASSERT_TRUE(committed.ok()) << committed.ToString();
    }
    if (!finish) return;
    auto record = sweeps_->GetStage(sweep_.id(), index);
    ASSERT_TRUE(record.ok());
    const Status finished = sweeps_->FinishStage(sweep_, *record, artifacts);
    ASSERT_TRUE(finished.ok()) << finished.ToString();
  }

  void BuildSweep() {
    sweep_.set_id("s1");
    sweep_.set_name("demo");
    sweep_.set_created_unix_ms(1700000000000ull);  // 2023-11-14T22:13:20Z
    sweep_.set_state(v1::RUNNING);
    for (const auto& [name, kind] : std::vector<std::pair<std::string, int>>{
             {"extract", 0}, {"select", 1}, {"knock", 2}, {"gen", 3}, {"plain", 2},
             {"later", 2}}) {
      v1::Stage* stage = sweep_.mutable_spec()->add_stages();
      stage->set_name(name);
      if (kind == 0) stage->mutable_extract_directions();
      if (kind == 1) stage->mutable_select_direction();
      if (kind == 2) stage->mutable_knockout_sweep()->set_compensation(true);
      if (kind == 3) stage->mutable_generate();
    }
    ASSERT_TRUE(sweeps_->CreateSweep(sweep_).ok());

    // 0: two directions.
    AddStage(0, "extract", "extract_directions", {{}}, {}, {},
             {{"direction/extract/L001/post_inst[-1]",
               Direction(1, {1, 2, 3, 4}, 5.477).SerializeAsString()},
              {"direction/extract/L002/post_inst[-1]",
               Direction(2, {0.5f, -0.25f, 0, 1e-7f}, 1.146).SerializeAsString()}});

    // 1: selection among three candidates; #1 chosen.
    v1::SelectionArtifact selection;
    selection.set_stage("select");
    for (const auto& [layer, passed] : std::vector<std::pair<int, bool>>{{1, true}, {2, true},
                                                                          {3, false}}) {
      v1::CandidateScore* c = selection.add_candidates();
      c->set_layer(layer);
      c->set_position("post_inst[-1]");
      c->set_bypass(-1.0 - layer);
      c->set_induce(2.0 + layer);
      c->set_kl(0.01 * layer);
      c->set_passed(passed);
      if (!passed) c->set_rejected("layer >= 0.8 * n_layers");
    }
    selection.set_chosen(1);
    *selection.mutable_direction() = Direction(2, {0.5f, -0.25f, 0, 1e-7f}, 1.146);
    AddStage(1, "select", "select_direction",
             {{{0, Label("candidate", 1, -1, "directional", "all", "bypass")},
               {1, Label("candidate", 1, -1, "add", "post_inst[-1]", "induce")}}},
             {Row(0, "harmful_val", -1, {{"refusal_score", -2.5}}),
              Row(1, "harmless_val", -1, {{"refusal_score", 3.25}})},
             {}, {{"selection/select", selection.SerializeAsString()}});

    // 2: heads knocked out, with downstream readings; two shards.
    AddStage(2, "knock", "knockout_sweep",
             {{{0, Label("head", 1, 0, "zero", "all")}, {1, Label("head", 1, 1, "zero", "all")}},
              {{2, Label("head", 2, 0, "mean", "post_inst")}}},
             {Row(0, "harmful", -1,
                  {{"refusal_score", 1.6}, {"clean_refusal_score", 2.0}, {"te", -0.4},
                   {"de", -1.0}, {"norm_effect", 0.15}, {"kl", 0.01}},
                  {{2, 0, 0.1, 0.5}, {2, 1, 0.2, 0.1}, {3, 3, 0.0, 0.25}}),
              Row(0, "harmful", 0, {{"refusal_score", 1.5}, {"te", -0.5}, {"de", -1.1}}),
              Row(0, "harmful", 1, {{"refusal_score", 1.7}, {"te", -0.3}, {"de", -0.9}}),
              Row(0, "harmless", -1,
                  {{"refusal_score", -3.0}, {"clean_refusal_score", -2.95}, {"te", -0.05},
                   {"de", -0.02}, {"norm_effect", 0.0}, {"kl", 0.002}},
                  {{2, 0, 0.0, 0.01}}),
              Row(1, "harmful", -1,
                  {{"refusal_score", 1.876544}, {"clean_refusal_score", 2.0}, {"te", -0.123456},
                   {"de", -0.1}, {"norm_effect", 0.0}, {"kl", 0.003}},
                  {{2, 0, 0.1, 0.05}}),
              Row(2, "harmful", -1,
                  {{"refusal_score", 2.9}, {"clean_refusal_score", 2.0}, {"te", 0.9}, {"de", 0.5},
                   {"norm_effect", 0.1}, {"kl", 0.2}},
                  {{3, 0, 0.3, 0.1}, {3, 1, 0.0, 0.2}})},
             {}, {}, /*finish=*/false);

    // 3: generation under two conditions.
    std::vector<v1::CompletionRecord> completions;
    for (const auto& [condition, refused] : std::vector<std::pair<std::string, int>>{
             {"baseline", 3}, {"ablate", 1}}) {
      for (uint32_t p = 0; p < 3; ++p) {
        v1::CompletionRecord c;
        c.set_set("harmful");
        c.set_prompt(p);
        c.set_condition(condition);
        c.set_instruction("instruction " + std::to_string(p));
        c.set_refused(static_cast<int>(p) < refused);
        c.set_text(c.refused() ? "I cannot help with that." : kCompletionText);
        completions.push_back(c);
      }
    }
    AddStage(3, "gen", "generate", {{{0, Label("condition", -1, -1, "", "", "baseline")}}}, {},
             completions, {});

    // 4: a knockout sweep without compensation readings.
    AddStage(4, "plain", "knockout_sweep", {{{0, Label("mlp_out", 0, -1, "zero", "all")}}},
             {Row(0, "harmful", -1, {{"te", -0.2}, {"de", -0.25}, {"refusal_score", 1.8}})}, {},
             {});
    // 5 ("later") is never expanded.
  }

  std::string Results(ResultsQuery query, Status* status = nullptr) {
    std::ostringstream out;
    if (query.sweep.empty()) query.sweep = "demo";
    const Status s = PrintResults(*sweeps_, query, out);
    if (status != nullptr) {
      *status = s;
    } else {
      EXPECT_TRUE(s.ok()) << s.ToString();
    }
    return out.str();
  }

  std::string dir_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<SweepStore> sweeps_;
  v1::SweepRecord sweep_;
};

// ------------------------------------------------------------------------------------------

TEST(OutputFormatTest, ParsesTheThreeNames) {
  EXPECT_EQ(*ParseOutputFormat("table"), OutputFormat::kTable);
  EXPECT_EQ(*ParseOutputFormat("csv"), OutputFormat::kCsv);
  EXPECT_EQ(*ParseOutputFormat("jsonl"), OutputFormat::kJsonl);
  const auto bad = ParseOutputFormat("xml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("table, csv, jsonl"), std::string::npos);
}

TEST_F(QueriesTest, StatusListsSweepsStagesProgressAndWaitingStages) {
  std::ostringstream out;
  ASSERT_TRUE(PrintStatus(*sweeps_, "", out).ok());
  const std::string text = out.str();
  EXPECT_NE(text.find("sweep s1  demo  running  created 2023-11-14T22:13:20Z"), std::string::npos)
      << text;
  const auto lines = Lines(text);
  auto line_of = [&](const std::string& name) {
    for (const auto& line : lines) {
      if (line.find("  " + name + "  ") != std::string::npos) return line;
    }
    return std::string();
  };
  EXPECT_NE(line_of("extract").find("done"), std::string::npos) << text;
  EXPECT_NE(line_of("knock").find("knockout_sweep"), std::string::npos);
  EXPECT_NE(line_of("knock").find("running"), std::string::npos);  // not finished
  EXPECT_NE(line_of("knock").find("2/2"), std::string::npos);
  EXPECT_NE(line_of("knock").find("  3"), std::string::npos);  // trials
  EXPECT_NE(line_of("later").find("waiting"), std::string::npos) << text;

  std::ostringstream one;
  ASSERT_TRUE(PrintStatus(*sweeps_, "s1", one).ok());
  EXPECT_EQ(one.str(), text);  // the only sweep
  std::ostringstream none;
  const Status missing = PrintStatus(*sweeps_, "nope", none);
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
}

TEST_F(QueriesTest, ResultsTableJoinsTrialLabelsWithValues) {
  ResultsQuery query;
  query.stage = "knock";
  const std::string text = Results(query);
  const auto rows = ParseAligned(text, "knock (knockout_sweep)");
  ASSERT_EQ(rows.size(), 4u) << text;  // aggregates: (0, harmful), (0, harmless), 1, 2
  EXPECT_EQ(rows[0].at("trial"), "0");
  EXPECT_EQ(rows[0].at("unit_kind"), "head");
  EXPECT_EQ(rows[0].at("layer"), "1");
  EXPECT_EQ(rows[0].at("unit"), "0");
  EXPECT_EQ(rows[0].at("ablation"), "zero");
  EXPECT_EQ(rows[0].at("prompt_set"), "harmful");
  EXPECT_EQ(rows[0].at("te"), "-0.4");
  EXPECT_EQ(rows[0].at("de"), "-1");
  EXPECT_EQ(rows[0].at("norm_effect"), "0.15");
  EXPECT_EQ(rows.at(2).at("trial"), "1");
  EXPECT_EQ(rows[2].at("te"), "-0.1235");  // 4 significant digits
  EXPECT_EQ(rows[2].at("refusal_score"), "1.877");
  EXPECT_EQ(rows[3].at("positions"), "post_inst");
  EXPECT_EQ(rows[3].at("ablation"), "mean");
  EXPECT_EQ(rows[0].count("prompt"), 0u);  // aggregates have no prompt column
}

// On a narrow terminal, aligned tables leave out the columns that do not fit (empty ones
// first, then from the right) and say which, and how to see them all.
TEST_F(QueriesTest, NarrowTerminalsGetTheColumnsThatFitAndANote) {
  ResultsQuery query;
  query.stage = "knock";
  SetTableWidth(70);
  const std::string text = Results(query);
  SetTableWidth(0);
  size_t widest = 0;
  const auto lines = Lines(text);
  for (const std::string& line : lines) {
    if (line.rfind("(", 0) == 0 || line.rfind("#", 0) == 0) continue;  // the note, the title
    widest = std::max(widest, line.size());
  }
  EXPECT_LE(widest, 70u) << text;
  ASSERT_FALSE(lines.empty());
  const std::string& note = lines.back();
  EXPECT_NE(note.find("more columns for a wider terminal"), std::string::npos) << text;
  EXPECT_NE(note.find("--format csv shows every column"), std::string::npos);
  EXPECT_NE(note.find("refusal_score"), std::string::npos) << note;  // a value column left out
  EXPECT_NE(note.find("direction"), std::string::npos) << note;      // empty: left out first
  EXPECT_EQ(lines[1].rfind("stage", 0), 0u) << text;                 // the first columns stay
  // Without a width every column is printed, and no note.
  const std::string wide = Results(query);
  EXPECT_EQ(wide.find("more column"), std::string::npos);
  EXPECT_NE(wide.find("refusal_score"), std::string::npos);
}

TEST_F(QueriesTest, PerPromptRowsCarryThePromptColumn) {
  ResultsQuery query;
  query.stage = "knock";
  query.per_prompt = true;
  query.format = OutputFormat::kJsonl;
  const auto objects = ParseJsonl(Results(query));
  ASSERT_EQ(objects.size(), 2u);
  EXPECT_EQ(objects[0]["prompt"], 0);
  EXPECT_EQ(objects[1]["prompt"], 1);
  EXPECT_DOUBLE_EQ(objects[1]["te"].get<double>(), -0.3);
  EXPECT_EQ(objects[1]["unit_kind"], "head");
  EXPECT_TRUE(objects[1]["clean_refusal_score"].is_null() ||
              !objects[1].contains("clean_refusal_score"));
}

TEST_F(QueriesTest, CsvParsesWithFullPrecisionAndQuoting) {
  ResultsQuery query;
  query.stage = "knock";
  query.format = OutputFormat::kCsv;
  const auto records = ParseCsv(Results(query));
  ASSERT_EQ(records.size(), 5u);  // header + 4 rows
  const auto& header = records[0];
  // The label columns, then the value keys sorted.
  EXPECT_EQ(header, (std::vector<std::string>{
                        "stage", "trial", "unit_kind", "layer", "unit", "ablation", "positions",
                        "direction", "coefficient", "role", "prompt_set", "clean_refusal_score",
                        "de", "kl", "norm_effect", "refusal_score", "te"}));
  const auto column = [&](const std::string& name) {
    return std::find(header.begin(), header.end(), name) - header.begin();
  };
  ASSERT_LT(column("te"), static_cast<long>(header.size()));
  for (const auto& record : records) EXPECT_EQ(record.size(), header.size());
  EXPECT_EQ(records[3][column("trial")], "1");
  EXPECT_EQ(std::stod(records[3][column("te")]), -0.123456);  // exact, not 4 digits
  EXPECT_EQ(records[3][column("refusal_score")], "1.876544");

  query.stage = "gen";
  query.per_prompt = true;
  const auto completions = ParseCsv(Results(query));
  ASSERT_EQ(completions.size(), 7u);
  const auto& ch = completions[0];
  const auto text_column = std::find(ch.begin(), ch.end(), "text") - ch.begin();
  int quoted = 0;
  for (size_t r = 1; r < completions.size(); ++r) {
    if (completions[r][text_column] == kCompletionText) ++quoted;
  }
  EXPECT_EQ(quoted, 2);  // ablate refused 1 of 3: two answered with commas, quotes, newline
}

// Several tables as CSV: one tidy table (a `table` column, then every column once), so that
// pandas.read_csv loads it with no arguments; the same rows as the JSON lines.
TEST_F(QueriesTest, SeveralTablesAsCsvAreOneLongTable) {
  ResultsQuery query;
  query.format = OutputFormat::kCsv;
  const auto records = ParseCsv(Results(query));
  ASSERT_GT(records.size(), 1u);
  const auto& header = records[0];
  EXPECT_EQ(header[0], "table");
  EXPECT_EQ(std::set<std::string>(header.begin(), header.end()).size(), header.size())
      << "every column once";
  std::map<std::string, int> tables;
  for (size_t r = 1; r < records.size(); ++r) {
    ASSERT_EQ(records[r].size(), header.size()) << "row " << r;
    tables[records[r][0]]++;
  }
  query.format = OutputFormat::kJsonl;
  std::map<std::string, int> expected;
  for (const Json& object : ParseJsonl(Results(query))) expected[object["table"].get<std::string>()]++;
  EXPECT_EQ(tables, expected);
}

TEST_F(QueriesTest, JsonlOneObjectPerRowWithTheTableName) {
  ResultsQuery query;
  query.format = OutputFormat::kJsonl;
  const auto objects = ParseJsonl(Results(query));
  std::map<std::string, int> tables;
  for (const Json& object : objects) tables[object["table"].get<std::string>()]++;
  EXPECT_EQ(tables["directions"], 2);
  EXPECT_EQ(tables["results"], 2 + 4 + 1);  // select, knock, plain
  EXPECT_EQ(tables["candidates"], 3);
  EXPECT_EQ(tables["refusal"], 2);
  for (const Json& object : objects) {
    if (object["table"] == "results" && object["stage"] == "knock" && object["trial"] == 2) {
      EXPECT_DOUBLE_EQ(object["te"].get<double>(), 0.9);
      EXPECT_EQ(object["layer"], 2);
      EXPECT_EQ(object["positions"], "post_inst");
    }
  }
}

TEST_F(QueriesTest, WhereFiltersRowsNumericallyAndByText) {
  ResultsQuery query;
  query.stage = "knock";
  query.format = OutputFormat::kJsonl;
  query.where = {"layer=1.0", "prompt_set=harmful"};
  auto objects = ParseJsonl(Results(query));
  ASSERT_EQ(objects.size(), 2u);
  EXPECT_EQ(objects[0]["trial"], 0);
  EXPECT_EQ(objects[1]["trial"], 1);

  query.where = {"te=-0.123456"};
  objects = ParseJsonl(Results(query));
  ASSERT_EQ(objects.size(), 1u);
  EXPECT_EQ(objects[0]["trial"], 1);

  query.where = {"ablation=mean"};
  objects = ParseJsonl(Results(query));
  ASSERT_EQ(objects.size(), 1u);
  EXPECT_EQ(objects[0]["trial"], 2);

  // Every stage: tables without the column drop out; the candidates filter by a boolean.
  query.stage.clear();
  query.where = {"chosen=true"};
  objects = ParseJsonl(Results(query));
  ASSERT_EQ(objects.size(), 1u);
  EXPECT_EQ(objects[0]["table"], "candidates");
  EXPECT_EQ(objects[0]["layer"], 2);
}

TEST_F(QueriesTest, UnknownFieldStageAndMalformedFilterAreErrors) {
  ResultsQuery query;
  query.stage = "knock";
  query.where = {"colour=red"};
  Status status;
  Results(query, &status);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("colour"), std::string::npos);
  EXPECT_NE(status.message().find("refusal_score"), std::string::npos);  // lists valid fields
  EXPECT_NE(status.message().find("unit_kind"), std::string::npos);

  query.where = {"layer"};
  Results(query, &status);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("FIELD=VALUE"), std::string::npos);

  query.where.clear();
  query.stage = "nope";
  Results(query, &status);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("extract, select, knock, gen, plain, later"), std::string::npos)
      << status.message();

  query.stage = "later";
  Results(query, &status);
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);

  query.stage.clear();
  query.sweep = "missing";
  Results(query, &status);
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
}

TEST_F(QueriesTest, ExtractAndSelectStagesShowDirectionsAndCandidates) {
  ResultsQuery query;
  query.stage = "extract";
  const std::string text = Results(query);
  const auto directions = ParseAligned(text, "extract (extract_directions): directions");
  ASSERT_EQ(directions.size(), 2u) << text;
  EXPECT_EQ(directions[0].at("layer"), "1");
  EXPECT_EQ(directions[0].at("position"), "post_inst[-1]");
  EXPECT_EQ(directions[0].at("norm"), "5.477");
  EXPECT_EQ(directions[0].at("positive_count"), "8");
  EXPECT_EQ(directions[0].at("negative_count"), "7");
  EXPECT_EQ(directions[1].at("dim"), "4");

  query.stage = "select";
  const std::string select = Results(query);
  const auto candidates = ParseAligned(select, "select (select_direction): candidates");
  ASSERT_EQ(candidates.size(), 3u) << select;
  EXPECT_EQ(candidates[1].at("chosen"), "true");
  EXPECT_EQ(candidates[0].at("chosen"), "false");
  EXPECT_EQ(candidates[2].at("passed"), "false");
  EXPECT_EQ(candidates[2].at("rejected"), "layer >= 0.8 * n_layers");
  EXPECT_EQ(candidates[1].at("bypass"), "-3");
  const auto trials = ParseAligned(select, "select (select_direction): results");
  ASSERT_EQ(trials.size(), 2u);
  EXPECT_EQ(trials[0].at("role"), "bypass");
  EXPECT_EQ(trials[1].at("refusal_score"), "3.25");
}

TEST_F(QueriesTest, GenerateStagesGiveRefusalRatesAndCompletions) {
  ResultsQuery query;
  query.stage = "gen";
  const std::string text = Results(query);
  const auto rates = ParseAligned(text, "gen (generate): refusal rate");
  ASSERT_EQ(rates.size(), 2u) << text;
  EXPECT_EQ(rates[0].at("condition"), "ablate");
  EXPECT_EQ(rates[0].at("prompts"), "3");
  EXPECT_EQ(rates[0].at("refused"), "1");
  EXPECT_EQ(rates[0].at("refusal_rate"), "0.3333");
  EXPECT_EQ(rates[1].at("condition"), "baseline");
  EXPECT_EQ(rates[1].at("refusal_rate"), "1");

  query.per_prompt = true;
  query.where = {"refused=false"};
  const std::string completions = Results(query);
  const auto rows = ParseAligned(completions, "gen (generate): completions");
  ASSERT_EQ(rows.size(), 2u) << completions;
  EXPECT_EQ(rows[0].at("text"), "Sure, here is \"how\":\\nstep 1");  // one line in a table
}

TEST_F(QueriesTest, CompensationIsTotalMinusDirectSortedByTotalEffect) {
  std::ostringstream out;
  const Status status = PrintCompensation(*sweeps_, "demo", "", 2, out, OutputFormat::kJsonl);
  ASSERT_TRUE(status.ok()) << status.ToString();
  const auto objects = ParseJsonl(out.str());
  ASSERT_EQ(objects.size(), 4u);  // "plain" has no readings and is skipped
  double last = 1e9;
  for (const Json& row : objects) {
    EXPECT_EQ(row["stage"], "knock");
    const double te = row["te"].get<double>(), de = row["de"].get<double>();
    EXPECT_DOUBLE_EQ(row["c"].get<double>(), te - de);
    EXPECT_LE(std::fabs(te), last);
    last = std::fabs(te);
  }
  EXPECT_EQ(objects[0]["trial"], 2);
  EXPECT_EQ(objects[0]["unit"], "L2H0");
  EXPECT_NEAR(objects[0]["c/|de|"].get<double>(), 0.8, 1e-12);
  EXPECT_NEAR(objects[0]["norm_share"].get<double>(), 0.25, 1e-12);
  // DE > 0: L3H0 fell by 0.2 (compensating); L3H1 rose (not a backup).
  ASSERT_EQ(objects[0]["backups"].size(), 1u);
  EXPECT_EQ(objects[0]["backups"][0]["unit"], "L3H0");
  EXPECT_NEAR(objects[0]["backups"][0]["change"].get<double>(), -0.2, 1e-12);
  EXPECT_EQ(objects[1]["trial"], 0);
  EXPECT_EQ(objects[1]["prompt_set"], "harmful");
  EXPECT_NEAR(objects[1]["c"].get<double>(), 0.6, 1e-12);
  // --top 2 keeps the two largest that grew back: L2H0 +0.4, L3H3 +0.25 (not L2H1 -0.1).
  ASSERT_EQ(objects[1]["backups"].size(), 2u);
  EXPECT_EQ(objects[1]["backups"][0]["unit"], "L2H0");
  EXPECT_EQ(objects[1]["backups"][1]["unit"], "L3H3");

  std::ostringstream table;
  ASSERT_TRUE(PrintCompensation(*sweeps_, "demo", "knock", 2, table).ok());
  const auto rows = ParseAligned(table.str(), "compensation");
  ASSERT_EQ(rows.size(), 4u) << table.str();
  EXPECT_EQ(rows[1].at("unit"), "L1H0");
  EXPECT_EQ(rows[1].at("te"), "-0.4");
  EXPECT_EQ(rows[1].at("c"), "0.6");
  EXPECT_EQ(rows[1].at("c/|de|"), "0.6");
  EXPECT_EQ(rows[1].at("norm_share"), "0.25");
  EXPECT_EQ(rows[1].at("backups"), "L2H0 +0.4, L3H3 +0.25");
}

TEST_F(QueriesTest, CompensationOfANamedStageWithoutReadingsAndWrongKinds) {
  std::ostringstream out;
  ASSERT_TRUE(PrintCompensation(*sweeps_, "s1", "plain", 3, out, OutputFormat::kCsv).ok());
  const auto records = ParseCsv(out.str());
  ASSERT_EQ(records.size(), 2u);
  const auto& header = records[0];
  const auto at = [&](const std::string& name) {
    return records[1][std::find(header.begin(), header.end(), name) - header.begin()];
  };
  EXPECT_EQ(at("unit"), "L0.mlp_out");
  EXPECT_NEAR(std::stod(at("c")), 0.05, 1e-15);
  EXPECT_EQ(at("backups"), "");

  const Status wrong = PrintCompensation(*sweeps_, "s1", "select", 3, out);
  EXPECT_EQ(wrong.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.message().find("select_direction"), std::string::npos);
  EXPECT_EQ(PrintCompensation(*sweeps_, "s1", "", -1, out).code(), StatusCode::kInvalidArgument);
}

TEST_F(QueriesTest, CompensationNamesTheTrialWithoutADirectEffect) {
  v1::SweepRecord other;
  other.set_id("s2");
  other.set_name("broken");
  other.set_created_unix_ms(1700000001000ull);
  ASSERT_TRUE(sweeps_->CreateSweep(other).ok());
  sweep_ = other;
  AddStage(0, "knock", "knockout_sweep", {{{5, Label("head", 0, 1, "zero", "all")}}},
           {Row(5, "harmful", -1, {{"te", -0.2}}, {{1, 0, 0.0, 0.1}})}, {}, {});
  std::ostringstream out;
  const Status status = PrintCompensation(*sweeps_, "broken", "", 3, out);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("trial 5"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("stage knock"), std::string::npos);
}

// A stage too large for one chunk of the streamed CSV / JSON lines (4096 rows): every row once,
// the header once, labels joined from the label index, filters applied across chunks.
TEST_F(QueriesTest, LargeResultsStreamInChunksWithOneHeader) {
  v1::SweepRecord other;
  other.set_id("s3");
  other.set_name("large");
  other.set_created_unix_ms(1700000002000ull);
  ASSERT_TRUE(sweeps_->CreateSweep(other).ok());
  sweep_ = other;
  constexpr uint32_t kTrials = 10000;
  std::vector<std::pair<uint32_t, v1::TrialLabel>> trials;
  std::vector<v1::ResultRow> rows;
  for (uint32_t t = 0; t < kTrials; ++t) {
    trials.emplace_back(t, Label("head", static_cast<int>(t % 7), static_cast<int>(t / 7),
                                 "zero", "all"));
    rows.push_back(Row(t, "harmful", -1, {{"te", 0.5 * t}}));
  }
  AddStage(0, "big", "knockout_sweep", {trials}, rows, {}, {});

  ResultsQuery query;
  query.sweep = "large";
  query.stage = "big";
  query.format = OutputFormat::kCsv;
  const auto records = ParseCsv(Results(query));
  ASSERT_EQ(records.size(), kTrials + 1);
  const auto& header = records[0];
  EXPECT_EQ(header[0], "stage");
  const auto column = [&](const std::string& name) {
    return static_cast<size_t>(std::find(header.begin(), header.end(), name) - header.begin());
  };
  for (uint32_t t = 0; t < kTrials; ++t) {
    const auto& record = records[t + 1];
    ASSERT_EQ(record.size(), header.size());
    EXPECT_EQ(record[column("trial")], std::to_string(t));
    EXPECT_EQ(record[column("layer")], std::to_string(t % 7));
    EXPECT_EQ(std::stod(record[column("te")]), 0.5 * t);
  }
  query.format = OutputFormat::kJsonl;
  query.where = {"layer=3"};
  const auto objects = ParseJsonl(Results(query));
  size_t expected = 0;
  for (uint32_t t = 0; t < kTrials; ++t) expected += t % 7 == 3;
  ASSERT_EQ(objects.size(), expected);
  for (const Json& object : objects) EXPECT_EQ(object["layer"], 3);
  // A field no column has is still an error, before anything is written.
  query.where = {"nope=1"};
  Status status;
  EXPECT_EQ(Results(query, &status), "");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
}

TEST_F(QueriesTest, ExportDirectionsWritesAReadableSafetensorsFile) {
  const std::string path = dir_ + "/directions.safetensors";
  const Status status = ExportDirections(*sweeps_, "demo", path);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));

  // Parse the file by the format's definition, not with the repo's reader.
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(bytes[i]);
  ASSERT_LE(8 + header_size, bytes.size());
  const Json header = Json::parse(bytes.substr(8, header_size));
  const std::string data = bytes.substr(8 + header_size);

  const std::map<std::string, std::vector<float>> expected = {
      {"extract/L1/post_inst[-1]", {1, 2, 3, 4}},
      {"extract/L2/post_inst[-1]", {0.5f, -0.25f, 0, 1e-7f}},
      {"select/best", {0.5f, -0.25f, 0, 1e-7f}}};
  ASSERT_EQ(header.size(), expected.size() + 1) << header.dump();  // + __metadata__
  for (const auto& [name, values] : expected) {
    ASSERT_TRUE(header.contains(name)) << name;
    const Json& entry = header[name];
    EXPECT_EQ(entry["dtype"], "F32");
    EXPECT_EQ(entry["shape"], Json::array({4}));
    const uint64_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
    ASSERT_EQ(end - begin, 16u);
    ASSERT_LE(end, data.size());
    std::vector<float> read(4);
    std::memcpy(read.data(), data.data() + begin, 16);
    EXPECT_EQ(read, values) << name;
  }
  const Json& metadata = header["__metadata__"];
  EXPECT_EQ(metadata["sweep"], "s1");
  const Json l1 = Json::parse(metadata["extract/L1/post_inst[-1]"].get<std::string>());
  EXPECT_EQ(l1["layer"], 1);
  EXPECT_EQ(l1["position"], "post_inst[-1]");
  EXPECT_EQ(l1["hook"], "resid_pre");
  EXPECT_DOUBLE_EQ(l1["norm"].get<double>(), 5.477);
  const Json best = Json::parse(metadata["select/best"].get<std::string>());
  EXPECT_EQ(best["layer"], 2);
  EXPECT_EQ(best["stage"], "select");
  EXPECT_EQ(best["source_stage"], "extract");
}

TEST_F(QueriesTest, ExportWithoutDirectionsIsNotFound) {
  v1::SweepRecord other;
  other.set_id("s3");
  other.set_name("empty");
  other.set_created_unix_ms(1700000002000ull);
  ASSERT_TRUE(sweeps_->CreateSweep(other).ok());
  const std::string path = dir_ + "/none.safetensors";
  const Status status = ExportDirections(*sweeps_, "empty", path);
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(path));
  std::ostringstream out;
  const Status compensation = PrintCompensation(*sweeps_, "empty", "", 3, out);
  EXPECT_EQ(compensation.code(), StatusCode::kNotFound);
  EXPECT_NE(compensation.message().find("downstream readings"), std::string::npos);
}

}  // namespace
}  // namespace knockout::cli
