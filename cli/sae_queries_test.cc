// The SAE latent queries (features, backups) and the latent columns of compensation, over a
// store written by hand (standing in for the engine and a worker). Output is read back as JSON
// lines, independently of how the tables are drawn.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/queries.h"
#include "experiments/engine.h"
#include "experiments/sweep_store.h"
#include "storage/store.h"

namespace knockout::cli {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

std::vector<Json> ParseJsonl(const std::string& text) {
  std::vector<Json> objects;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) objects.push_back(Json::parse(line));
  return objects;
}

v1::UnitReading Backup(int layer, int latent, double clean, double ablated, bool dormant) {
  v1::UnitReading b;
  b.set_kind(v1::UnitReading::SAE_LATENT);
  b.set_layer(layer);
  b.set_unit(latent);
  b.set_hook("blocks." + std::to_string(layer) + ".hook_resid_post");
  b.set_clean(clean);
  b.set_ablated(ablated);
  b.set_dormant(dormant);
  b.set_spread(0.5);
  b.set_cosine(0.25);
  b.set_de_clean(0.0);
  b.set_de_ablated(0.75);
  return b;
}

class SaeQueriesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = ::testing::TempDir() + "/sae_queries_test_" + info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    auto store = storage::Store::Open(dir_ + "/store");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    sweeps_ = std::make_unique<experiments::SweepStore>(store_.get());

    v1::SweepRecord sweep;
    sweep.set_id("h1");
    sweep.set_name("hydra");
    sweep.set_state(v1::RUNNING);
    sweep.mutable_spec()->add_stages()->set_name("hydra");
    sweep.mutable_spec()->mutable_stages(0)->mutable_knockout_sweep()->set_compensation(true);
    sweep.set_stages_expanded(1);
    ASSERT_TRUE(sweeps_->CreateSweep(sweep).ok());

    v1::StageRecord stage;
    stage.set_index(0);
    stage.set_name("hydra");
    stage.set_kind("knockout_sweep");
    stage.set_state(v1::PENDING);
    stage.set_shards_total(1);
    stage.set_trials_total(2);
    v1::Shard shard;
    shard.set_sweep_id("h1");
    shard.set_stage(0);
    shard.set_index(0);
    v1::Trial* single = shard.add_trials();
    single->set_index(0);
    single->mutable_label()->set_unit_kind("sae_latent");
    single->mutable_label()->set_layer(3);
    single->mutable_label()->set_unit(7);
    single->mutable_label()->set_unit_name("L3F7");
    single->mutable_label()->set_role("downstream");
    single->mutable_label()->set_ablation("zero");
    single->mutable_label()->set_positions("all");
    v1::Trial* group = shard.add_trials();
    group->set_index(1);
    group->mutable_label()->set_unit_kind("sae_latents");
    group->mutable_label()->set_layer(-1);  // over layers 1 and 2: no DE
    group->mutable_label()->set_unit(-1);
    group->mutable_label()->set_unit_name("L1-2F[2 latents]");
    group->mutable_label()->set_role("upstream");
    group->mutable_label()->set_ablation("zero");
    group->mutable_label()->set_positions("all");
    ASSERT_TRUE(sweeps_->ExpandStage(sweep, stage, {shard}).ok());

    v1::ShardResult result;
    result.set_sweep_id("h1");
    result.set_stage(0);
    result.set_index(0);
    v1::ResultRow* row = result.add_rows();
    row->set_trial(0);
    row->set_prompt_set("harmful_val");
    row->set_prompt(-1);
    (*row->mutable_values())["te"] = -1.5;
    (*row->mutable_values())["de"] = -0.5;
    (*row->mutable_values())["norm_effect"] = 0.0;
    (*row->mutable_values())["prompts"] = 32;
    // Stored by mean rise: an active latent rising most, then two dormant ones.
    *row->add_backups() = Backup(4, 11, 2.0, 6.0, false);
    *row->add_backups() = Backup(5, 3, 0.0, 3.0, true);
    *row->add_backups() = Backup(4, 9, 0.01, 1.0, true);
    v1::ResultRow* other = result.add_rows();
    other->set_trial(1);
    other->set_prompt_set("harmful_val");
    other->set_prompt(-1);
    (*other->mutable_values())["te"] = -0.25;
    (*other->mutable_values())["prompts"] = 32;
    ASSERT_TRUE(sweeps_->CommitShard(result, 1).ok());

    v1::RankingArtifact rankings;
    v1::NeuronRanking* r = rankings.add_rankings();
    r->set_layer(3);
    r->set_score("decoder_cosine");
    r->set_sae_hook("blocks.3.hook_resid_post");
    r->set_top_k(2);
    for (auto [unit, score] : std::vector<std::pair<int, double>>{{7, 0.5}, {40, 0.75}}) {
      r->add_units(unit);
      r->add_scores(score);
      r->add_cosines(score);
    }
    v1::NeuronRanking* neurons = rankings.add_rankings();  // a neuron ranking is not a feature
    neurons->set_layer(2);
    neurons->set_score("direction_cosine");
    neurons->add_units(1);
    neurons->add_scores(0.9);
    auto record = sweeps_->GetStage("h1", 0);
    ASSERT_TRUE(record.ok());
    ASSERT_TRUE(sweeps_->FinishStage(sweep, *record,
                                     {{experiments::RankingArtifactName("hydra"),
                                       rankings.SerializeAsString()}})
                    .ok());
  }
  void TearDown() override {
    sweeps_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }

  std::string dir_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<experiments::SweepStore> sweeps_;
};

TEST_F(SaeQueriesTest, FeaturesListTheRankedLatentsBestFirst) {
  std::ostringstream out;
  const Status s = PrintFeatures(*sweeps_, "hydra", "", out, OutputFormat::kJsonl);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const auto rows = ParseJsonl(out.str());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["table"], "features");
  EXPECT_EQ(rows[0]["unit"], "L3F40");
  EXPECT_EQ(rows[0]["rank"], 1);
  EXPECT_DOUBLE_EQ(rows[0]["value"].get<double>(), 0.75);
  EXPECT_EQ(rows[1]["unit"], "L3F7");
  EXPECT_EQ(rows[1]["hook"], "blocks.3.hook_resid_post");
  EXPECT_TRUE(rows[1]["activation_diff"].is_null());
}

TEST_F(SaeQueriesTest, BackupsPutDormantLatentsFirstThenByRise) {
  BackupsQuery query;
  query.sweep = "hydra";
  query.stage = "hydra";
  query.unit = "L3F7";
  query.top = 2;
  query.format = OutputFormat::kJsonl;
  std::ostringstream out;
  const Status s = PrintBackups(*sweeps_, query, out);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const auto rows = ParseJsonl(out.str());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["backup"], "L5F3");
  EXPECT_EQ(rows[0]["dormant"], true);
  EXPECT_DOUBLE_EQ(rows[0]["rise"].get<double>(), 3.0);
  EXPECT_EQ(rows[1]["backup"], "L4F9");
  EXPECT_EQ(rows[1]["role"], "downstream");
  EXPECT_EQ(rows[1]["prompts"], 32);
  EXPECT_DOUBLE_EQ(rows[1]["de_change"].get<double>(), 0.75);

  query.unit = "L9F1";
  std::ostringstream missing;
  const Status unknown = PrintBackups(*sweeps_, query, missing);
  EXPECT_EQ(unknown.code(), StatusCode::kNotFound);
  EXPECT_NE(unknown.message().find("units: L1-2F[2 latents], L3F7"), std::string::npos) << unknown.message();
  query.unit = "L1-2F[2 latents]";  // knocked out, but no backups stored
  EXPECT_EQ(PrintBackups(*sweeps_, query, missing).code(), StatusCode::kNotFound);
}

TEST_F(SaeQueriesTest, CompensationShowsRolesAndLatentBackupsInChosenColumns) {
  std::ostringstream out;
  const Status s = PrintCompensation(*sweeps_, "hydra", "hydra", 2, out, OutputFormat::kJsonl,
                                     {"unit", "role", "te", "de", "c", "latent_backups"});
  ASSERT_TRUE(s.ok()) << s.ToString();
  const auto rows = ParseJsonl(out.str());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["unit"], "L3F7");
  EXPECT_EQ(rows[0]["role"], "downstream");
  EXPECT_DOUBLE_EQ(rows[0]["c"].get<double>(), -1.0);
  ASSERT_EQ(rows[0]["latent_backups"].size(), 2u);  // --top 2
  EXPECT_EQ(rows[0]["latent_backups"][1]["unit"], "L5F3");
  EXPECT_EQ(rows[0]["latent_backups"][1]["dormant"], true);
  EXPECT_EQ(rows[0].size(), 7u);  // the six columns and "table"
  EXPECT_EQ(rows[1]["unit"], "L1-2F[2 latents]");
  EXPECT_TRUE(rows[1]["de"].is_null());  // a group over layers has no DE, nor C
  EXPECT_TRUE(rows[1]["c"].is_null());

  std::ostringstream bad;
  const Status unknown =
      PrintCompensation(*sweeps_, "hydra", "hydra", 2, bad, OutputFormat::kTable, {"unit", "x"});
  EXPECT_EQ(unknown.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.message().find("no column \"x\""), std::string::npos) << unknown.message();
}

}  // namespace
}  // namespace knockout::cli
