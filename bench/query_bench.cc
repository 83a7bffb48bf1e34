// query_bench: writes a store holding one knockout_sweep stage with --rows result rows (one-trial
// shards of --rows-per-shard rows each: per-prompt rows and the aggregate), as the coordinator's
// group commit would, so that `knockout results SWEEP --stage heads --per-prompt --format csv`
// can be timed against it (bench/run_query_bench.sh: rows/s and peak RSS at 1M and 10M rows).
//
//   query_bench --store DIR --rows N [--rows-per-shard 1000]
//
// Prints one line: rows written, shards, seconds. The store must not exist yet.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <vector>

#include "experiments/sweep_store.h"
#include "storage/store.h"

namespace {

namespace v1 = knockout::v1;
using knockout::experiments::ShardCommit;
using knockout::experiments::SweepStore;

int Fail(const knockout::Status& status) {
  std::cerr << "query_bench: " << status.ToString() << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Writes a store with many result rows for the query benchmark"};
  std::string dir;
  uint64_t rows = 1'000'000;
  uint32_t per_shard = 1000;
  app.add_option("--store", dir, "store directory to create")->required();
  app.add_option("--rows", rows, "result rows to write")->check(CLI::Range(1ull, 1'000'000'000ull));
  app.add_option("--rows-per-shard", per_shard, "rows per shard (per-prompt rows + aggregate)")
      ->check(CLI::Range(2u, 100'000u));
  CLI11_PARSE(app, argc, argv);
  if (std::filesystem::exists(dir)) {
    std::cerr << "query_bench: " << dir << " exists; give a new directory\n";
    return 1;
  }
  auto store = knockout::storage::Store::Open(dir);
  if (!store.ok()) return Fail(store.status());
  SweepStore sweeps(store->get());
  const uint32_t shards = static_cast<uint32_t>((rows + per_shard - 1) / per_shard);

  v1::SweepRecord sweep;
  sweep.set_id("query-bench-0");
  sweep.set_name("query-bench");
  sweep.set_state(v1::RUNNING);
  sweep.set_stages_expanded(1);
  if (auto s = sweeps.CreateSweep(sweep); !s.ok()) return Fail(s);
  v1::StageRecord stage;
  stage.set_name("heads");
  stage.set_kind("knockout_sweep");
  stage.set_state(v1::RUNNING);
  stage.set_shards_total(shards);
  stage.set_trials_total(shards);
  std::vector<v1::Shard> expanded(shards);
  for (uint32_t i = 0; i < shards; ++i) {
    v1::Shard& shard = expanded[i];
    shard.set_sweep_id(sweep.id());
    shard.set_index(i);
    shard.set_stage_name("heads");
    v1::Trial* trial = shard.add_trials();
    trial->set_index(i);
    v1::TrialLabel* label = trial->mutable_label();
    label->set_unit_kind("head");
    label->set_layer(static_cast<int>(i / 64 % 26));
    label->set_unit(static_cast<int>(i % 64));
    label->set_ablation("zero");
    label->set_positions("post_inst");
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (auto s = sweeps.ExpandStage(sweep, stage, expanded); !s.ok()) return Fail(s);
  expanded.clear();

  uint64_t written = 0;
  constexpr uint32_t kShardsPerCommit = 16;  // a group commit's worth
  for (uint32_t first = 0; first < shards; first += kShardsPerCommit) {
    std::vector<v1::ShardResult> results;
    for (uint32_t i = first; i < std::min(shards, first + kShardsPerCommit); ++i) {
      v1::ShardResult& result = results.emplace_back();
      result.set_sweep_id(sweep.id());
      result.set_index(i);
      const uint64_t n = std::min<uint64_t>(per_shard, rows - written);
      for (uint64_t r = 0; r < n; ++r) {
        v1::ResultRow* row = result.add_rows();
        row->set_trial(i);
        row->set_prompt_set("harmful_val");
        row->set_prompt(static_cast<int>(r) - 1);  // -1: the aggregate
        (*row->mutable_values())["refusal_score"] = 0.001 * static_cast<double>(r) - 1.0;
        (*row->mutable_values())["kl"] = 1e-4 * static_cast<double>(i % 100);
      }
      written += n;
    }
    std::vector<ShardCommit> commits;
    for (const v1::ShardResult& result : results) commits.push_back({&result, 1, "bench"});
    std::vector<bool> duplicate;
    if (auto s = sweeps.CommitShards(commits, &duplicate); !s.ok()) return Fail(s);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %llu rows in %u shards in %.1f s\n", static_cast<unsigned long long>(written),
              shards, seconds);
  return 0;
}
