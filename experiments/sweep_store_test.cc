#include "experiments/sweep_store.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "storage/keys.h"

namespace knockout::experiments {
namespace {

namespace fs = std::filesystem;
using storage::Family;
using storage::Store;

// A fresh store directory under /tmp, removed when the test ends.
class SweepStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (fs::temp_directory_path() / ("sweep_store_test_" + std::to_string(getpid()) + "_" +
                                         info->name()))
               .string();
    fs::remove_all(dir_);
    Reopen();
  }
  void TearDown() override {
    sweeps_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }

  // Closes the store (if open) and opens it again from disk, as after a restart.
  void Reopen() {
    sweeps_.reset();
    store_.reset();
    auto store = Store::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    sweeps_ = std::make_unique<SweepStore>(store_.get());
  }

  std::string dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<SweepStore> sweeps_;
};

v1::SweepRecord MakeSweep(const std::string& id, const std::string& name, uint64_t created) {
  v1::SweepRecord sweep;
  sweep.set_id(id);
  sweep.set_name(name);
  sweep.set_created_unix_ms(created);
  sweep.set_state(v1::PENDING);
  sweep.mutable_spec()->set_name(name);
  return sweep;
}

v1::StageRecord MakeStage(uint32_t index, uint32_t shards) {
  v1::StageRecord stage;
  stage.set_index(index);
  stage.set_name("sweep" + std::to_string(index));
  stage.set_kind("knockout_sweep");
  stage.set_state(v1::PENDING);
  stage.set_shards_total(shards);
  return stage;
}

std::vector<v1::Shard> MakeShards(const std::string& sweep, uint32_t stage, uint32_t count) {
  std::vector<v1::Shard> shards;
  for (uint32_t i = 0; i < count; ++i) {
    v1::Shard shard;
    shard.set_sweep_id(sweep);
    shard.set_stage(stage);
    shard.set_index(i);
    shard.set_kind(v1::Shard::TRIALS);
    shard.set_seed(100 + i);
    shards.push_back(shard);
  }
  return shards;
}

v1::ResultRow MakeRow(uint32_t trial, const std::string& set, int32_t prompt, double score) {
  v1::ResultRow row;
  row.set_trial(trial);
  row.set_prompt_set(set);
  row.set_prompt(prompt);
  (*row.mutable_values())["refusal_score"] = score;
  (*row.mutable_values())["kl"] = score / 10;
  return row;
}

// Creates sweep `id` and expands its stage 0 into three shards.
void CreateAndExpand(SweepStore* sweeps, const std::string& id) {
  v1::SweepRecord sweep = MakeSweep(id, "demo", 1000);
  ASSERT_TRUE(sweeps->CreateSweep(sweep).ok());
  sweep.set_stages_expanded(1);
  sweep.set_state(v1::RUNNING);
  const Status expanded = sweeps->ExpandStage(sweep, MakeStage(0, 3), MakeShards(id, 0, 3));
  ASSERT_TRUE(expanded.ok()) << expanded.ToString();
}

// Shard 1's result: rows given out of key order, two partial sums, two completions.
v1::ShardResult MakeResult(const std::string& sweep) {
  v1::ShardResult result;
  result.set_sweep_id(sweep);
  result.set_stage(0);
  result.set_index(1);
  *result.add_rows() = MakeRow(7, "harmful", 3, 0.3);
  *result.add_rows() = MakeRow(7, "harmful", -1, 0.5);
  *result.add_rows() = MakeRow(2, "harmful", 1, 0.1);
  *result.add_rows() = MakeRow(7, "harmful", 0, 0.7);
  *result.add_rows() = MakeRow(2, "harmful", -1, 0.2);
  for (int layer : {4, 2}) {
    v1::PartialSum* sum = result.add_sums();
    sum->set_layer(layer);
    sum->set_position("post_inst[-1]");
    sum->set_set("harmful");
    sum->set_count(5);
    sum->add_sum(layer * 1.5);
  }
  for (uint32_t prompt : {9u, 4u}) {
    v1::CompletionRecord* completion = result.add_completions();
    completion->set_condition("ablate");
    completion->set_set("harmful");
    completion->set_prompt(prompt);
    completion->set_text("sure " + std::to_string(prompt));
  }
  return result;
}

TEST_F(SweepStoreTest, CreatesGetsListsAndResolvesSweeps) {
  ASSERT_TRUE(sweeps_->CreateSweep(MakeSweep("s-b", "demo", 2000)).ok());
  ASSERT_TRUE(sweeps_->CreateSweep(MakeSweep("s-a", "demo", 3000)).ok());
  ASSERT_TRUE(sweeps_->CreateSweep(MakeSweep("s-c", "other", 1000)).ok());

  const Status again = sweeps_->CreateSweep(MakeSweep("s-a", "demo", 4000));
  EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition) << again.ToString();

  auto got = sweeps_->GetSweep("s-b");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->name(), "demo");
  EXPECT_EQ(got->created_unix_ms(), 2000u);
  EXPECT_EQ(got->spec().name(), "demo");
  auto missing = sweeps_->GetSweep("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos);

  auto list = sweeps_->ListSweeps();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[0].id(), "s-c");  // oldest first, not id order
  EXPECT_EQ((*list)[1].id(), "s-b");
  EXPECT_EQ((*list)[2].id(), "s-a");

  EXPECT_EQ(*sweeps_->ResolveSweep("s-b"), "s-b");  // an id wins
  EXPECT_EQ(*sweeps_->ResolveSweep("demo"), "s-a");  // the latest of that name
  EXPECT_EQ(*sweeps_->ResolveSweep("other"), "s-c");
  // Equal creation times: the larger id is the latest.
  ASSERT_TRUE(sweeps_->CreateSweep(MakeSweep("s-0", "tie", 5000)).ok());
  ASSERT_TRUE(sweeps_->CreateSweep(MakeSweep("s-9", "tie", 5000)).ok());
  EXPECT_EQ(*sweeps_->ResolveSweep("tie"), "s-9");

  auto unknown = sweeps_->ResolveSweep("absent");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("absent"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("s-a"), std::string::npos)
      << unknown.status().message();
  EXPECT_NE(unknown.status().message().find("other"), std::string::npos);

  v1::SweepRecord updated = *got;
  updated.set_state(v1::DONE);
  ASSERT_TRUE(sweeps_->UpdateSweep(updated).ok());
  EXPECT_EQ(sweeps_->GetSweep("s-b")->state(), v1::DONE);
  EXPECT_EQ(sweeps_->UpdateSweep(MakeSweep("ghost", "x", 1)).code(), StatusCode::kNotFound);
}

TEST_F(SweepStoreTest, ResolveListsAtMostTenSweeps) {
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(sweeps_->CreateSweep(MakeSweep("id" + std::to_string(i), "n", 100 + i)).ok());
  }
  auto unknown = sweeps_->ResolveSweep("absent");
  ASSERT_FALSE(unknown.ok());
  const std::string& message = unknown.status().message();
  EXPECT_NE(message.find("id11"), std::string::npos) << message;  // the latest are listed
  EXPECT_EQ(message.find("id1 "), std::string::npos) << message;  // the oldest two are not
  EXPECT_EQ(message.find("id0 "), std::string::npos) << message;
  EXPECT_NE(message.find("2 more"), std::string::npos) << message;
}

TEST_F(SweepStoreTest, ExpandsAStageOnceWithPendingShards) {
  CreateAndExpand(sweeps_.get(), "s1");
  EXPECT_EQ(sweeps_->GetSweep("s1")->stages_expanded(), 1u);

  auto pending = sweeps_->PendingShards("s1", 0);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  ASSERT_EQ(pending->size(), 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*pending)[i].shard().index(), i);
    EXPECT_EQ((*pending)[i].shard().seed(), 100 + i);
    EXPECT_EQ((*pending)[i].state(), v1::PENDING);
  }
  auto shards = sweeps_->ListShards("s1", 0);
  ASSERT_TRUE(shards.ok());
  EXPECT_EQ(shards->size(), 3u);
  EXPECT_TRUE(sweeps_->PendingShards("s1", 1)->empty());

  auto stages = sweeps_->ListStages("s1");
  ASSERT_TRUE(stages.ok());
  ASSERT_EQ(stages->size(), 1u);
  EXPECT_EQ((*stages)[0].shards_total(), 3u);

  const Status twice =
      sweeps_->ExpandStage(*sweeps_->GetSweep("s1"), MakeStage(0, 1), MakeShards("s1", 0, 1));
  EXPECT_EQ(twice.code(), StatusCode::kFailedPrecondition) << twice.ToString();
  EXPECT_EQ(sweeps_->ListShards("s1", 0)->size(), 3u);  // nothing of the second call written

  // A shard of another stage is refused before anything is written.
  const Status wrong =
      sweeps_->ExpandStage(*sweeps_->GetSweep("s1"), MakeStage(1, 1), MakeShards("s1", 0, 1));
  EXPECT_EQ(wrong.code(), StatusCode::kInvalidArgument) << wrong.ToString();
  EXPECT_FALSE(sweeps_->GetStage("s1", 1).ok());
}

TEST_F(SweepStoreTest, SweepIdsThatArePrefixesDoNotShareStages) {
  CreateAndExpand(sweeps_.get(), "s1");
  ASSERT_TRUE(sweeps_->CreateSweep(MakeSweep("s10", "demo", 5)).ok());
  EXPECT_TRUE(sweeps_->ListStages("s10")->empty());
  EXPECT_TRUE(sweeps_->ListShards("s10", 0)->empty());
}

TEST_F(SweepStoreTest, CommitsAShardAndReadsResultsInKeyOrder) {
  CreateAndExpand(sweeps_.get(), "s1");
  bool duplicate = true;
  const Status committed = sweeps_->CommitShard(MakeResult("s1"), 2, &duplicate);
  ASSERT_TRUE(committed.ok()) << committed.ToString();
  EXPECT_FALSE(duplicate);

  auto rows = sweeps_->Rows("s1", 0, /*aggregates_only=*/false);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 5u);
  // (trial, set, prompt), the aggregate row (prompt -1) first within a trial.
  const std::vector<std::pair<uint32_t, int32_t>> expected = {
      {2, -1}, {2, 1}, {7, -1}, {7, 0}, {7, 3}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ((*rows)[i].trial(), expected[i].first) << i;
    EXPECT_EQ((*rows)[i].prompt(), expected[i].second) << i;
  }
  EXPECT_DOUBLE_EQ((*rows)[2].values().at("refusal_score"), 0.5);

  auto aggregates = sweeps_->Rows("s1", 0, /*aggregates_only=*/true);
  ASSERT_TRUE(aggregates.ok());
  ASSERT_EQ(aggregates->size(), 2u);
  EXPECT_EQ((*aggregates)[0].trial(), 2u);
  EXPECT_EQ((*aggregates)[1].trial(), 7u);
  for (const auto& row : *aggregates) EXPECT_EQ(row.prompt(), -1);

  auto sums = sweeps_->PartialSums("s1", 0);
  ASSERT_TRUE(sums.ok());
  ASSERT_EQ(sums->size(), 2u);
  EXPECT_EQ((*sums)[0].layer(), 4);  // in the order the shard reported them
  EXPECT_EQ((*sums)[1].layer(), 2);
  EXPECT_DOUBLE_EQ((*sums)[1].sum(0), 3.0);

  auto completions = sweeps_->Completions("s1", 0);
  ASSERT_TRUE(completions.ok());
  ASSERT_EQ(completions->size(), 2u);
  EXPECT_EQ((*completions)[0].prompt(), 4u);
  EXPECT_EQ((*completions)[1].prompt(), 9u);
  EXPECT_EQ((*completions)[1].text(), "sure 9");

  // The shard is done and no longer pending; the others are.
  auto shards = sweeps_->ListShards("s1", 0);
  ASSERT_TRUE(shards.ok());
  EXPECT_EQ((*shards)[1].state(), v1::DONE);
  EXPECT_EQ((*shards)[1].attempt(), 2u);
  auto pending = sweeps_->PendingShards("s1", 0);
  ASSERT_EQ(pending->size(), 2u);
  EXPECT_EQ((*pending)[0].shard().index(), 0u);
  EXPECT_EQ((*pending)[1].shard().index(), 2u);

  // Another stage holds nothing.
  EXPECT_TRUE(sweeps_->Rows("s1", 1, false)->empty());
}

TEST_F(SweepStoreTest, DuplicateCommitIsIgnoredAndReported) {
  CreateAndExpand(sweeps_.get(), "s1");
  ASSERT_TRUE(sweeps_->CommitShard(MakeResult("s1"), 1).ok());

  v1::ShardResult second = MakeResult("s1");
  second.clear_rows();
  *second.add_rows() = MakeRow(99, "harmful", -1, 9.0);
  bool duplicate = false;
  const Status again = sweeps_->CommitShard(second, 5, &duplicate);
  ASSERT_TRUE(again.ok()) << again.ToString();
  EXPECT_TRUE(duplicate);

  auto rows = sweeps_->Rows("s1", 0, false);
  ASSERT_EQ(rows->size(), 5u);  // trial 99 was not written
  for (const auto& row : *rows) EXPECT_NE(row.trial(), 99u);
  EXPECT_EQ((*sweeps_->ListShards("s1", 0))[1].attempt(), 1u);
  EXPECT_EQ(sweeps_->GetStage("s1", 0)->shards_done(), 1u);  // counted once

  // A late failure report does not undo the commit either.
  ASSERT_TRUE(sweeps_->FailShard("s1", 0, 1, 6, "worker lost").ok());
  EXPECT_EQ((*sweeps_->ListShards("s1", 0))[1].state(), v1::DONE);
}

TEST_F(SweepStoreTest, CommitOfAnUnknownShardIsNotFound) {
  CreateAndExpand(sweeps_.get(), "s1");
  v1::ShardResult result = MakeResult("s1");
  result.set_index(3);
  const Status status = sweeps_->CommitShard(result, 1);
  EXPECT_EQ(status.code(), StatusCode::kNotFound) << status.ToString();
  EXPECT_NE(status.message().find("shard=3"), std::string::npos) << status.message();
  EXPECT_TRUE(sweeps_->Rows("s1", 0, false)->empty());

  result = MakeResult("other-sweep");
  EXPECT_EQ(sweeps_->CommitShard(result, 1).code(), StatusCode::kNotFound);

  result = MakeResult("s1");
  *result.add_rows() = MakeRow(1, "harmful", -2, 0);
  EXPECT_EQ(sweeps_->CommitShard(result, 1).code(), StatusCode::kInvalidArgument);
}

TEST_F(SweepStoreTest, StageCountersFollowCommitsAndFailures) {
  CreateAndExpand(sweeps_.get(), "s1");
  auto stage = sweeps_->GetStage("s1", 0);
  ASSERT_TRUE(stage.ok());
  EXPECT_EQ(stage->state(), v1::PENDING);
  EXPECT_EQ(stage->shards_done(), 0u);

  ASSERT_TRUE(sweeps_->FailShard("s1", 0, 0, 1, "CUDA out of memory").ok());
  auto shards = sweeps_->ListShards("s1", 0);
  EXPECT_EQ((*shards)[0].state(), v1::FAILED);
  EXPECT_EQ((*shards)[0].error(), "CUDA out of memory");
  EXPECT_EQ(sweeps_->PendingShards("s1", 0)->size(), 3u);  // a failed shard is retried
  EXPECT_EQ(sweeps_->GetStage("s1", 0)->shards_done(), 0u);
  EXPECT_EQ(sweeps_->FailShard("s1", 0, 8, 1, "x").code(), StatusCode::kNotFound);

  for (uint32_t shard : {0u, 2u}) {
    v1::ShardResult result;
    result.set_sweep_id("s1");
    result.set_stage(0);
    result.set_index(shard);
    ASSERT_TRUE(sweeps_->CommitShard(result, 2).ok());
    stage = sweeps_->GetStage("s1", 0);
    EXPECT_EQ(stage->state(), v1::RUNNING);
  }
  EXPECT_EQ(stage->shards_done(), 2u);
  EXPECT_EQ(stage->shards_total(), 3u);
  ASSERT_EQ(sweeps_->PendingShards("s1", 0)->size(), 1u);
  EXPECT_EQ((*sweeps_->PendingShards("s1", 0))[0].shard().index(), 1u);

  auto missing = sweeps_->GetStage("s1", 4);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("stage=4"), std::string::npos);
}

TEST_F(SweepStoreTest, FinishStageStoresArtifacts) {
  CreateAndExpand(sweeps_.get(), "s1");
  v1::SweepRecord sweep = *sweeps_->GetSweep("s1");
  sweep.set_state(v1::DONE);
  v1::StageRecord stage = *sweeps_->GetStage("s1", 0);
  const std::vector<std::pair<std::string, std::string>> artifacts = {
      {"extract/3/post_inst[-1]", "d3"},
      {"extract/10/post_inst[-1]", "d10"},
      {"extract/2/inst_last", std::string("\0binary\xff", 8)},
      {"select", "chosen"}};
  const Status finished = sweeps_->FinishStage(sweep, stage, artifacts);
  ASSERT_TRUE(finished.ok()) << finished.ToString();

  EXPECT_EQ(sweeps_->GetStage("s1", 0)->state(), v1::DONE);
  EXPECT_EQ(sweeps_->GetSweep("s1")->state(), v1::DONE);
  EXPECT_EQ(*sweeps_->GetArtifact("s1", "select"), "chosen");
  EXPECT_EQ(*sweeps_->GetArtifact("s1", "extract/2/inst_last"), std::string("\0binary\xff", 8));
  auto missing = sweeps_->GetArtifact("s1", "selected");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("selected"), std::string::npos);
  EXPECT_FALSE(sweeps_->GetArtifact("s2", "select").ok());

  auto extract = sweeps_->ListArtifacts("s1", "extract/");
  ASSERT_TRUE(extract.ok()) << extract.status().ToString();
  ASSERT_EQ(extract->size(), 3u);
  // Name order (bytewise), names without the sweep prefix.
  EXPECT_EQ((*extract)[0].first, "extract/10/post_inst[-1]");
  EXPECT_EQ((*extract)[0].second, "d10");
  EXPECT_EQ((*extract)[1].first, "extract/2/inst_last");
  EXPECT_EQ((*extract)[2].first, "extract/3/post_inst[-1]");
  EXPECT_EQ(sweeps_->ListArtifacts("s1", "")->size(), 4u);
  EXPECT_TRUE(sweeps_->ListArtifacts("s1", "zzz")->empty());
}

TEST_F(SweepStoreTest, EverythingSurvivesAReopen) {
  CreateAndExpand(sweeps_.get(), "s1");
  ASSERT_TRUE(sweeps_->CommitShard(MakeResult("s1"), 3).ok());
  ASSERT_TRUE(sweeps_->FailShard("s1", 0, 2, 1, "boom").ok());
  ASSERT_TRUE(
      sweeps_->FinishStage(*sweeps_->GetSweep("s1"), *sweeps_->GetStage("s1", 0), {{"a", "b"}})
          .ok());

  Reopen();
  ASSERT_NE(sweeps_, nullptr);
  EXPECT_EQ(*sweeps_->ResolveSweep("demo"), "s1");
  EXPECT_EQ(sweeps_->GetSweep("s1")->stages_expanded(), 1u);
  EXPECT_EQ(sweeps_->GetStage("s1", 0)->shards_done(), 1u);
  EXPECT_EQ(sweeps_->GetStage("s1", 0)->state(), v1::DONE);
  EXPECT_EQ(sweeps_->ListShards("s1", 0)->size(), 3u);
  EXPECT_EQ((*sweeps_->ListShards("s1", 0))[2].error(), "boom");
  EXPECT_EQ(sweeps_->PendingShards("s1", 0)->size(), 2u);
  EXPECT_EQ(sweeps_->Rows("s1", 0, false)->size(), 5u);
  EXPECT_EQ(sweeps_->PartialSums("s1", 0)->size(), 2u);
  EXPECT_EQ(sweeps_->Completions("s1", 0)->size(), 2u);
  EXPECT_EQ(*sweeps_->GetArtifact("s1", "a"), "b");
  bool duplicate = false;
  ASSERT_TRUE(sweeps_->CommitShard(MakeResult("s1"), 4, &duplicate).ok());
  EXPECT_TRUE(duplicate);  // first commit still wins after a restart
}

TEST_F(SweepStoreTest, CorruptValueIsCorruptionNamingTheKey) {
  CreateAndExpand(sweeps_.get(), "s1");
  std::string key;
  storage::AppendString(&key, "s1");
  storage::AppendUint32(&key, 0);
  storage::AppendUint32(&key, 1);
  Store::Batch batch;
  batch.Put(Family::kShards, key, "\x0a\xff");  // a length-delimited field cut short
  ASSERT_TRUE(store_->Write(batch, true).ok());

  const std::vector<Status> statuses = {sweeps_->ListShards("s1", 0).status(),
                                        sweeps_->PendingShards("s1", 0).status(),
                                        sweeps_->CommitShard(MakeResult("s1"), 1)};
  for (const Status& status : statuses) {
    EXPECT_EQ(status.code(), StatusCode::kCorruption) << status.ToString();
    EXPECT_NE(status.message().find("shards"), std::string::npos) << status.message();
    EXPECT_NE(status.message().find("s1"), std::string::npos) << status.message();
    EXPECT_NE(status.message().find("\\x00\\x00\\x00\\x01"), std::string::npos)
        << status.message();
  }
  EXPECT_TRUE(sweeps_->Rows("s1", 0, false)->empty());  // the failed commit wrote nothing
}

TEST_F(SweepStoreTest, MapsAreStoredInKeyOrder) {
  // Deterministic serialisation writes map entries sorted by key; without it protobuf writes
  // them in hash order, and equal rows could be stored as different bytes.
  v1::ShardResult result;
  result.set_sweep_id("s1");
  result.set_stage(0);
  result.set_index(0);
  v1::ResultRow* row = result.add_rows();
  std::vector<std::string> keys;
  for (int i = 0; i < 50; ++i) {
    keys.push_back("k" + std::to_string(i));
    (*row->mutable_values())[keys.back()] = i;
  }
  std::sort(keys.begin(), keys.end());
  CreateAndExpand(sweeps_.get(), "s1");
  ASSERT_TRUE(sweeps_->CommitShard(result, 1).ok());
  auto stored = store_->Scan(Family::kResults, "");
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(stored->size(), 1u);
  const std::string& bytes = (*stored)[0].second;
  size_t previous = 0;
  for (const std::string& key : keys) {
    const size_t found = bytes.find(key + "\x11");  // the key, then the double value's tag
    ASSERT_NE(found, std::string::npos) << key;
    EXPECT_GT(found, previous) << key << " is out of order";
    previous = found;
  }
}

}  // namespace
}  // namespace knockout::experiments
