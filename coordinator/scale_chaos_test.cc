// The chaos test's scale phase (issue 17): a sweep of 10,240 one-trial shards, 16 simulated
// workers on loopback gRPC that abandon leases (a killed worker: its lease expires), release
// shards with transient errors, report twice, heartbeat, and a coordinator shut down and started
// again on the same store and port while they run. Afterwards every shard holds exactly one
// committed result: the stage counts every shard once, and the store holds exactly one row per
// trial and prompt, with the value the simulated worker computed for it (nothing lost, nothing
// duplicated, nothing from another shard).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/server.h"
#include "coordinator/synthetic_sweep.h"
#include "experiments/spec_inputs.h"
#include "experiments/sweep_store.h"
#include "proto/protocol.h"
#include "rpc/channel.h"
#include "storage/store.h"

namespace knockout::coordinator {
namespace {

namespace fs = std::filesystem;

constexpr int kLayers = 16, kHeads = 64;  // 16 layers x 64 heads x 10 trials = 10,240 shards
constexpr uint32_t kShards = kLayers * kHeads * 10;
constexpr int kWorkers = 16;
constexpr int kPromptsPerShard = 3;

// What a simulated worker reports for a trial and prompt: a function of both only, so that a row
// in the wrong place or from a stale attempt of another shard would not match.
double ValueOf(uint32_t trial, int prompt) { return trial * 0.25 + prompt * 1e-3 + 1.0; }

class ScaleChaosTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("scale_chaos_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  StatusOr<std::unique_ptr<Server>> Start(int port) {
    ServerOptions options;
    options.store_dir = (dir_ / "store").string();
    options.listen = "127.0.0.1:" + std::to_string(port);
    options.log = &log_;
    options.expire_interval_ms = 50;
    options.scheduler.lease_ms = 600;
    options.scheduler.max_attempts = 1000;  // faults are frequent here; none may fail the sweep
    return Server::Start(options);
  }

  fs::path dir_;
  std::ostringstream log_;
};

TEST_F(ScaleChaosTest, TenThousandShardsSixteenWorkersAndARestartUnderLoad) {
  auto started = Start(0);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  std::unique_ptr<Server> server = std::move(started).value();
  const int port = server->port();

  v1::SubmitSweepRequest submit;
  *submit.mutable_version() = CurrentProtocol();
  submit.set_spec_yaml(WriteSyntheticHeadSweep(dir_ / "inputs", "scale-chaos", kLayers, kHeads));
  submit.set_spec_label("scale-chaos.yaml");
  submit.set_base_dir((dir_ / "inputs").string());
  auto inputs = experiments::ReadSpecInputs(submit.spec_yaml(), "scale-chaos.yaml",
                                            submit.base_dir());
  ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
  *submit.mutable_inputs() = std::move(*inputs);
  auto submitted = server->scheduler()->Submit(submit);
  ASSERT_TRUE(submitted.ok()) << submitted.status().ToString();
  const std::string sweep = submitted->sweep_id();
  ASSERT_EQ(submitted->progress().shards_total(), kShards);

  rpc::ChannelOptions channel;
  channel.address = "127.0.0.1:" + std::to_string(port);
  std::atomic<bool> done{false};
  std::atomic<uint64_t> abandoned{0}, released{0}, doubled{0}, unavailable{0}, committed{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      auto connected = rpc::CoordinatorClient::Connect(channel);
      if (!connected.ok()) return;
      const rpc::CoordinatorClient& client = **connected;
      std::mt19937 random(1000 + w);
      v1::LeaseShardsRequest lease;
      *lease.mutable_version() = CurrentProtocol();
      lease.mutable_worker()->set_id("sim-" + std::to_string(w));
      lease.mutable_worker()->set_host("localhost");
      while (!done.load()) {
        lease.set_capacity(1 + random() % 3);
        v1::LeaseShardsResponse leased;
        auto context = client.MakeContext(std::chrono::seconds(5));
        grpc::Status status = client.stub()->LeaseShards(context.get(), lease, &leased);
        if (!status.ok()) {
          ++unavailable;  // the coordinator is restarting: try again shortly
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          continue;
        }
        if (leased.leases_size() == 0) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          continue;
        }
        for (const v1::Lease& granted : leased.leases()) {
          const uint32_t fate = random() % 100;
          if (fate < 2) {  // the worker "dies" holding it: the lease must expire
            ++abandoned;
            continue;
          }
          if (fate < 4) {  // a transient error (a counted attempt, retried)
            v1::ReleaseShardRequest release;
            *release.mutable_version() = CurrentProtocol();
            release.set_worker_id(lease.worker().id());
            *release.mutable_lease() = granted.ref();
            release.set_error("simulated CUDA error");
            release.set_code(v1::ERROR_INTERNAL);
            v1::ReleaseShardResponse response;
            auto release_context = client.MakeContext(std::chrono::seconds(5));
            (void)client.stub()->ReleaseShard(release_context.get(), release, &response);
            ++released;
            continue;
          }
          if (fate < 8) {  // a heartbeat first
            v1::HeartbeatRequest beat;
            *beat.mutable_version() = CurrentProtocol();
            beat.set_worker_id(lease.worker().id());
            *beat.add_leases() = granted.ref();
            v1::HeartbeatResponse response;
            auto beat_context = client.MakeContext(std::chrono::seconds(5));
            (void)client.stub()->Heartbeat(beat_context.get(), beat, &response);
          }
          v1::ReportResultsRequest report;
          *report.mutable_version() = CurrentProtocol();
          report.set_worker_id(lease.worker().id());
          *report.mutable_lease() = granted.ref();
          v1::ShardResult* result = report.mutable_result();
          result->set_sweep_id(granted.ref().sweep_id());
          result->set_stage(granted.ref().stage());
          result->set_index(granted.ref().shard());
          result->set_trials_run(1);
          const uint32_t trial = granted.shard().trials(0).index();
          for (int prompt = -1; prompt < kPromptsPerShard; ++prompt) {
            v1::ResultRow* row = result->add_rows();
            row->set_trial(trial);
            row->set_prompt_set("p");
            row->set_prompt(prompt);
            (*row->mutable_values())["refusal_score"] = ValueOf(trial, prompt);
          }
          // A lost reply is retried, as the worker does; sometimes the report goes twice anyway.
          const int sends = fate < 12 ? 2 : 1;
          doubled += sends - 1;
          for (int attempt = 0, sent = 0; sent < sends && attempt < 200 && !done.load();
               ++attempt) {
            v1::ReportResultsResponse reported;
            auto report_context = client.MakeContext(std::chrono::seconds(5));
            status = client.stub()->ReportResults(report_context.get(), report, &reported);
            if (status.ok()) {
              ++sent;
              if (!reported.duplicate()) ++committed;
            } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                       status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
              ++unavailable;
              std::this_thread::sleep_for(std::chrono::milliseconds(20));
            } else {
              break;  // refused (e.g. the lease is another's now): not retried
            }
          }
        }
      }
    });
  }

  auto progress = [&]() -> StatusOr<v1::SweepProgress> { return server->scheduler()->Progress(sweep); };
  auto wait_for = [&](auto ready, double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      auto now = progress();
      if (now.ok() && ready(*now)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };
  // Under load, about 40% of the way: the coordinator goes down and comes back on the same store
  // and port; the workers' calls fail meanwhile and they retry.
  ASSERT_TRUE(wait_for([](const v1::SweepProgress& p) { return p.shards_done() >= kShards * 2 / 5; },
                       300));
  server->Shutdown(/*grace_ms=*/200);
  server.reset();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto restarted = Start(port);
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  server = std::move(restarted).value();
  const bool finished = wait_for(
      [](const v1::SweepProgress& p) { return p.sweep().state() != v1::RUNNING; }, 600);
  done.store(true);
  for (std::thread& worker : workers) worker.join();
  ASSERT_TRUE(finished) << "the sweep did not finish";
  auto last = progress();
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->sweep().state(), v1::DONE) << last->sweep().error();
  EXPECT_EQ(last->shards_done(), kShards);
  EXPECT_EQ(last->shards_pending() + last->shards_running() + last->shards_failed(), 0u);
  std::cout << "abandoned " << abandoned << ", released " << released << ", reported twice "
            << doubled << ", calls refused or failed during the restart " << unavailable
            << ", committed " << committed << " of " << kShards << "\n";
  // The faults really happened.
  EXPECT_GT(abandoned.load(), 0u);
  EXPECT_GT(released.load(), 0u);
  EXPECT_GT(doubled.load(), 0u);
  EXPECT_GT(unavailable.load(), 0u);
  // Every shard acknowledged as committed at most once (a reply lost to the restart may leave
  // one unacknowledged: the retry is then a duplicate).
  EXPECT_LE(committed.load(), kShards);
  server->Shutdown(0);
  server.reset();

  // The store, read independently of the coordinator.
  auto store = storage::Store::Open((dir_ / "store").string());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  experiments::SweepStore sweeps(store->get());
  auto stage = sweeps.GetStage(sweep, 0);
  ASSERT_TRUE(stage.ok());
  EXPECT_EQ(stage->shards_done(), kShards);  // each shard counted once
  EXPECT_EQ(stage->shards_total(), kShards);
  uint32_t shards_done = 0;
  std::map<uint32_t, uint32_t> trial_of_shard;
  ASSERT_TRUE(sweeps.ForEachShard(sweep, 0, [&](v1::ShardRecord& shard) {
                      shards_done += shard.state() == v1::DONE;
                      trial_of_shard[shard.shard().index()] = shard.shard().trials(0).index();
                      return true;
                    }).ok());
  EXPECT_EQ(shards_done, kShards);
  std::map<std::pair<uint32_t, int>, int> seen;  // rows by (trial, prompt)
  uint64_t wrong = 0;
  ASSERT_TRUE(sweeps.ForEachRow(sweep, 0, /*aggregates_only=*/false, [&](v1::ResultRow& row) {
                      ++seen[{row.trial(), row.prompt()}];
                      const auto value = row.values().find("refusal_score");
                      wrong += value == row.values().end() ||
                               value->second != ValueOf(row.trial(), row.prompt());
                      return true;
                    }).ok());
  EXPECT_EQ(seen.size(), static_cast<size_t>(kShards) * (kPromptsPerShard + 1));
  EXPECT_EQ(wrong, 0u);
  for (const auto& [shard, trial] : trial_of_shard) {
    ASSERT_EQ(seen.count({trial, -1}), 1u) << "shard " << shard << " has no result";
  }
  auto leases = sweeps.ListLeases(sweep);
  ASSERT_TRUE(leases.ok());
  EXPECT_TRUE(leases->empty());  // no lease outlives a done sweep
}

}  // namespace
}  // namespace knockout::coordinator
