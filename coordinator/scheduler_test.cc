// The scheduler without gRPC: leases, affinity, priority and fairness, heartbeats, expiry and
// retries, late and duplicate reports, group commit, cancellation and restart, driven with a
// FakeClock (no sleeps) over a real store, the demo model's config.json and its prompt files.
// Workers are played by the test: results are fake rows whose trial indices come from the
// leased shard.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "experiments/spec_inputs.h"
#include "storage/store.h"

namespace knockout::coordinator {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kLeaseMs = 10'000;

const std::string kSpecsDir = std::string(KNOCKOUT_SOURCE_DIR) + "/experiments/specs";
const std::string kDemoModel =
    (fs::path(KNOCKOUT_SOURCE_DIR) / "models/demo-refusal").lexically_normal().string();

// A two-stage head sweep on `model`: stage "early" (layers 0-3: 32 trials, 4 shards of 8) and
// stage "late" (layers 4-5: 16 trials, 2 shards). Paths are relative to experiments/specs.
std::string SpecYaml(const std::string& name, const std::string& model = "../../models/demo-refusal") {
  return "name: " + name + "\n" +
         "model: {path: " + model + "}\n"
         "prompt_sets:\n"
         "  harmful_val: {path: ../prompts/demo/harmful_val.jsonl, limit: 4}\n"
         "metrics: {refusal_tokens: [\"I\"]}\n"
         "shard_trials: 8\n"
         "stages:\n"
         "  - name: early\n"
         "    knockout_sweep:\n"
         "      prompt_sets: [harmful_val]\n"
         "      targets: [{kind: heads, layers: [0, 1, 2, 3]}]\n"
         "      ablations: [zero]\n"
         "      positions: [post_inst]\n"
         "  - name: late\n"
         "    knockout_sweep:\n"
         "      prompt_sets: [harmful_val]\n"
         "      targets: [{kind: heads, layers: [4, 5]}]\n"
         "      ablations: [zero]\n"
         "      positions: [post_inst]\n";
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // One directory per test: ctest runs the tests of this binary in parallel processes.
    dir_ = fs::temp_directory_path() /
           ("scheduler_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    options_.lease_ms = kLeaseMs;
    options_.max_attempts = 3;
    options_.retry_after_ms = 250;
    Reopen();
  }
  void TearDown() override {
    Close();
    fs::remove_all(dir_);
  }

  void Close() {
    scheduler_.reset();
    sweeps_.reset();
    store_.reset();
  }

  // Destroys the scheduler and the store and opens both again on the same directory: a restart.
  void Reopen() {
    Close();
    auto store = storage::Store::Open((dir_ / "store").string());
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    sweeps_ = std::make_unique<experiments::SweepStore>(store_.get());
    auto scheduler = Scheduler::Open(sweeps_.get(), &clock_, options_);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status().ToString();
    scheduler_ = std::move(scheduler).value();
  }

  // A second "model": a directory with a copy of the demo model's config.json.
  std::string OtherModel() {
    const fs::path model = dir_ / "other-model";
    fs::create_directories(model);
    fs::copy_file(fs::path(kDemoModel) / "config.json", model / "config.json",
                  fs::copy_options::overwrite_existing);
    return model.string();
  }

  StatusOr<v1::SubmitSweepResponse> TrySubmit(const std::string& yaml, uint32_t priority = 0,
                                              const std::string& label = "test.yaml") {
    v1::SubmitSweepRequest request;
    request.set_spec_yaml(yaml);
    request.set_spec_label(label);
    request.set_base_dir(kSpecsDir);
    request.set_priority(priority);
    // What the CLI sends with the spec: the model's shape and the prompts, read here.
    KO_ASSIGN_OR_RETURN(*request.mutable_inputs(),
                        experiments::ReadSpecInputs(yaml, label, kSpecsDir));
    return scheduler_->Submit(request);
  }

  std::string Submit(const std::string& name, uint32_t priority = 0,
                     const std::string& model = "../../models/demo-refusal") {
    auto response = TrySubmit(SpecYaml(name, model), priority);
    EXPECT_TRUE(response.ok()) << response.status().ToString();
    return response.ok() ? response->sweep_id() : "";
  }

  v1::LeaseShardsResponse Lease(const std::string& worker, uint32_t capacity = 1,
                                const std::string& loaded_model = "") {
    v1::LeaseShardsRequest request;
    request.mutable_worker()->set_id(worker);
    request.mutable_worker()->set_host("test-host");
    request.set_capacity(capacity);
    request.set_loaded_model(loaded_model);
    auto response = scheduler_->Lease(request);
    EXPECT_TRUE(response.ok()) << response.status().ToString();
    return response.ok() ? *response : v1::LeaseShardsResponse();
  }

  v1::HeartbeatResponse Heartbeat(const std::string& worker,
                                  const std::vector<v1::LeaseRef>& refs) {
    v1::HeartbeatRequest request;
    request.set_worker_id(worker);
    for (const auto& ref : refs) *request.add_leases() = ref;
    auto response = scheduler_->Heartbeat(request);
    EXPECT_TRUE(response.ok()) << response.status().ToString();
    return response.ok() ? *response : v1::HeartbeatResponse();
  }

  // What a worker reports for `shard`: an aggregate and a per-prompt row per trial, with
  // refusal_score = `value`.
  static v1::ShardResult ResultFor(const v1::Shard& shard, double value = 1.0) {
    v1::ShardResult result;
    result.set_sweep_id(shard.sweep_id());
    result.set_stage(shard.stage());
    result.set_index(shard.index());
    for (const v1::Trial& trial : shard.trials()) {
      for (int prompt : {-1, 0}) {
        v1::ResultRow* row = result.add_rows();
        row->set_trial(trial.index());
        row->set_prompt_set("harmful_val");
        row->set_prompt(prompt);
        (*row->mutable_values())["refusal_score"] = value;
      }
    }
    result.set_trials_run(shard.trials_size());
    result.set_seconds(2.0);
    return result;
  }

  static v1::ReportResultsRequest ReportRequest(const std::string& worker, const v1::Lease& lease,
                                                double value = 1.0) {
    v1::ReportResultsRequest request;
    request.set_worker_id(worker);
    *request.mutable_lease() = lease.ref();
    *request.mutable_result() = ResultFor(lease.shard(), value);
    return request;
  }

  StatusOr<v1::ReportResultsResponse> Report(const v1::ReportResultsRequest& request) {
    auto responses = scheduler_->Report({&request});
    EXPECT_EQ(responses.size(), 1u);
    return responses[0];
  }

  Status Release(const std::string& worker, const v1::LeaseRef& ref, const std::string& error,
                 v1::ErrorCode code = v1::ERROR_CODE_UNSPECIFIED) {
    v1::ReleaseShardRequest request;
    request.set_worker_id(worker);
    *request.mutable_lease() = ref;
    request.set_error(error);
    request.set_code(code);
    return scheduler_->Release(request);
  }

  v1::ShardRecord Shard(const std::string& sweep, uint32_t stage, uint32_t shard) {
    auto record = sweeps_->GetShard(sweep, stage, shard);
    EXPECT_TRUE(record.ok()) << record.status().ToString();
    return record.ok() ? *record : v1::ShardRecord();
  }

  v1::SweepProgress Progress(const std::string& sweep) {
    auto progress = scheduler_->Progress(sweep);
    EXPECT_TRUE(progress.ok()) << progress.status().ToString();
    return progress.ok() ? *progress : v1::SweepProgress();
  }

  size_t RowCount(const std::string& sweep, uint32_t stage) {
    auto rows = sweeps_->Rows(sweep, stage, /*aggregates_only=*/false);
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    return rows.ok() ? rows->size() : 0;
  }

  static std::vector<uint32_t> Indices(const v1::LeaseShardsResponse& response) {
    std::vector<uint32_t> out;
    for (const auto& lease : response.leases()) out.push_back(lease.ref().shard());
    return out;
  }

  fs::path dir_;
  SchedulerOptions options_;
  FakeClock clock_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<experiments::SweepStore> sweeps_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, SubmitExpandsTheFirstStageAndStoresThePriority) {
  auto response = TrySubmit(SpecYaml("unit"), /*priority=*/7);
  ASSERT_TRUE(response.ok()) << response.status().ToString();
  EXPECT_FALSE(response->resumed());
  const v1::SweepProgress& progress = response->progress();
  EXPECT_EQ(progress.sweep().state(), v1::RUNNING);
  EXPECT_EQ(progress.sweep().priority(), 7u);
  EXPECT_EQ(progress.sweep().spec().model().path(), kDemoModel);
  EXPECT_EQ(progress.sweep().spec().source(), kSpecsDir + "/test.yaml");
  ASSERT_EQ(progress.stages_size(), 1);
  EXPECT_EQ(progress.stages(0).name(), "early");
  EXPECT_EQ(progress.shards_total(), 4u);
  EXPECT_EQ(progress.shards_pending(), 4u);
  EXPECT_EQ(progress.unix_ms(), clock_.NowMs());

  // The same spec again resumes the same sweep; the new priority replaces the old one.
  auto again = TrySubmit(SpecYaml("unit"), /*priority=*/2);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(again->resumed());
  EXPECT_EQ(again->sweep_id(), response->sweep_id());
  EXPECT_EQ(again->progress().sweep().priority(), 2u);
  EXPECT_EQ(again->progress().shards_total(), 4u);
}

TEST_F(SchedulerTest, LeasesShardsInIndexOrderAndRecordsTheLeases) {
  const std::string id = Submit("unit");
  const uint64_t start = clock_.NowMs();
  const uint64_t before = scheduler_->change_counter();
  v1::LeaseShardsResponse first = Lease("w1", 2);
  EXPECT_GT(scheduler_->change_counter(), before);
  EXPECT_EQ(first.lease_ms(), kLeaseMs);
  ASSERT_EQ(Indices(first), (std::vector<uint32_t>{0, 1}));
  for (const v1::Lease& lease : first.leases()) {
    EXPECT_EQ(lease.ref().sweep_id(), id);
    EXPECT_EQ(lease.ref().stage(), 0u);
    EXPECT_EQ(lease.ref().attempt(), 1u);
    EXPECT_EQ(lease.deadline_unix_ms(), start + kLeaseMs);
    EXPECT_EQ(lease.shard().index(), lease.ref().shard());
    EXPECT_EQ(lease.shard().trials_size(), 8);
    const v1::ShardRecord record = Shard(id, 0, lease.ref().shard());
    EXPECT_EQ(record.state(), v1::RUNNING);
    EXPECT_EQ(record.worker(), "w1");
    EXPECT_EQ(record.attempt(), 1u);
    EXPECT_EQ(record.lease_deadline_unix_ms(), start + kLeaseMs);
    ASSERT_EQ(record.leased_to_size(), 1);
    EXPECT_EQ(record.leased_to(0), "w1");
  }
  // The worker record is written with the grant.
  auto workers = sweeps_->ListWorkers();
  ASSERT_TRUE(workers.ok()) << workers.status().ToString();
  ASSERT_EQ(workers->size(), 1u);
  EXPECT_EQ((*workers)[0].info().id(), "w1");
  EXPECT_EQ((*workers)[0].info().host(), "test-host");
  EXPECT_EQ((*workers)[0].last_seen_unix_ms(), start);

  // More than is left: what is left.
  EXPECT_EQ(Indices(Lease("w2", 3)), (std::vector<uint32_t>{2, 3}));
  // Nothing left: come back later.
  v1::LeaseShardsResponse none = Lease("w3", 1);
  EXPECT_EQ(none.leases_size(), 0);
  EXPECT_EQ(none.retry_after_ms(), 250u);

  const v1::SweepProgress progress = Progress("unit");
  EXPECT_EQ(progress.shards_running(), 4u);
  EXPECT_EQ(progress.shards_pending(), 0u);
  EXPECT_EQ(progress.workers_size(), 2);
  const SchedulerCounters counters = scheduler_->Counters();
  EXPECT_EQ(counters.leases_granted, 4u);
  EXPECT_EQ(counters.shards_running, 4u);
  EXPECT_EQ(counters.shards_pending, 0u);

  v1::LeaseShardsRequest anonymous;
  EXPECT_EQ(scheduler_->Lease(anonymous).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, ModelAffinityComesBeforePriority) {
  const std::string demo = Submit("on-demo", /*priority=*/5);
  const std::string other_model = OtherModel();
  const std::string other = Submit("on-other", /*priority=*/0, other_model);

  // A worker with the other model loaded gets that sweep's shards despite its lower priority.
  v1::LeaseShardsResponse affine = Lease("w-other", 2, other_model);
  ASSERT_EQ(affine.leases_size(), 2);
  for (const auto& lease : affine.leases()) {
    EXPECT_EQ(lease.ref().sweep_id(), other);
    EXPECT_EQ(lease.shard().model().path(), other_model);
  }
  // A worker with the demo model, and one with none (priority decides), get the demo sweep's.
  v1::LeaseShardsResponse on_demo = Lease("w-demo", 1, kDemoModel);
  ASSERT_EQ(on_demo.leases_size(), 1);
  EXPECT_EQ(on_demo.leases(0).ref().sweep_id(), demo);
  v1::LeaseShardsResponse fresh = Lease("w-fresh", 1);
  ASSERT_EQ(fresh.leases_size(), 1);
  EXPECT_EQ(fresh.leases(0).ref().sweep_id(), demo);
  // Once its model's sweep is drained, an affine worker takes other work.
  v1::LeaseShardsResponse rest = Lease("w-other", 4, other_model);
  ASSERT_EQ(rest.leases_size(), 4);
  EXPECT_EQ(rest.leases(0).ref().sweep_id(), other);
  EXPECT_EQ(rest.leases(1).ref().sweep_id(), other);
  EXPECT_EQ(rest.leases(2).ref().sweep_id(), demo);
  EXPECT_EQ(rest.leases(3).ref().sweep_id(), demo);
}

TEST_F(SchedulerTest, HigherPriorityFirstThenRoundRobinAmongEquals) {
  const std::string low = Submit("low", /*priority=*/0);
  const std::string high_a = Submit("high-a", /*priority=*/3);
  const std::string high_b = Submit("high-b", /*priority=*/3);
  std::vector<std::string> order;
  for (int i = 0; i < 8; ++i) {
    v1::LeaseShardsResponse response = Lease("w" + std::to_string(i % 2), 1);
    ASSERT_EQ(response.leases_size(), 1);
    order.push_back(response.leases(0).ref().sweep_id());
  }
  // The two high-priority sweeps alternate, shard by shard, across calls and workers.
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(order[i] == high_a || order[i] == high_b) << i << ": " << order[i];
    if (i > 0) {
      EXPECT_NE(order[i], order[i - 1]) << i;
    }
  }
  // Within one call too; and the low-priority sweep only once they are drained.
  v1::LeaseShardsResponse response = Lease("w9", 2);
  ASSERT_EQ(response.leases_size(), 2);
  EXPECT_EQ(response.leases(0).ref().sweep_id(), low);
  EXPECT_EQ(Indices(response), (std::vector<uint32_t>{0, 1}));
}

TEST_F(SchedulerTest, RoundRobinWithinOneLeaseCall) {
  const std::string a = Submit("rr-a");
  const std::string b = Submit("rr-b");
  v1::LeaseShardsResponse response = Lease("w1", 4);
  ASSERT_EQ(response.leases_size(), 4);
  std::map<std::string, int> per_sweep;
  for (int i = 0; i < 4; ++i) {
    ++per_sweep[response.leases(i).ref().sweep_id()];
    if (i > 0) {
      EXPECT_NE(response.leases(i).ref().sweep_id(), response.leases(i - 1).ref().sweep_id());
    }
  }
  EXPECT_EQ(per_sweep[a], 2);
  EXPECT_EQ(per_sweep[b], 2);
}

TEST_F(SchedulerTest, HeartbeatRenewsTheLeaseSoItDoesNotExpire) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 1);
  ASSERT_EQ(granted.leases_size(), 1);
  const v1::LeaseRef ref = granted.leases(0).ref();

  clock_.Advance(kLeaseMs - 2'000);
  v1::HeartbeatResponse beat = Heartbeat("w1", {ref});
  EXPECT_EQ(beat.lease_ms(), kLeaseMs);
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_TRUE(beat.leases(0).keep()) << beat.leases(0).reason();
  EXPECT_EQ(beat.leases(0).deadline_unix_ms(), clock_.NowMs() + kLeaseMs);
  // The renewal is written to the small lease record; the shard record (its payload) is not
  // rewritten and keeps the grant's deadline.
  auto leases = sweeps_->ListLeases(id);
  ASSERT_TRUE(leases.ok()) << leases.status().ToString();
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_EQ((*leases)[0].deadline_unix_ms(), clock_.NowMs() + kLeaseMs);
  EXPECT_EQ((*leases)[0].worker(), "w1");
  EXPECT_EQ(Shard(id, 0, 0).lease_deadline_unix_ms(), granted.leases(0).deadline_unix_ms());

  // Past the first deadline, within the renewed one: nothing expires.
  clock_.Advance(kLeaseMs - 2'000);
  auto expired = scheduler_->ExpireLeases();
  ASSERT_TRUE(expired.ok()) << expired.status().ToString();
  EXPECT_EQ(*expired, 0);
  EXPECT_EQ(Shard(id, 0, 0).state(), v1::RUNNING);
  beat = Heartbeat("w1", {ref});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_TRUE(beat.leases(0).keep()) << beat.leases(0).reason();

  // The worker's last_seen follows its heartbeats.
  auto workers = sweeps_->ListWorkers();
  ASSERT_TRUE(workers.ok());
  ASSERT_EQ(workers->size(), 1u);
  EXPECT_EQ((*workers)[0].last_seen_unix_ms(), clock_.NowMs());

  v1::HeartbeatRequest anonymous;
  EXPECT_EQ(scheduler_->Heartbeat(anonymous).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, ExpiredLeaseReturnsToPendingWithTheAttemptCounted) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 1);
  ASSERT_EQ(granted.leases_size(), 1);
  const v1::LeaseRef first = granted.leases(0).ref();

  clock_.Advance(kLeaseMs);  // at the deadline: still held
  ASSERT_EQ(*scheduler_->ExpireLeases(), 0);
  clock_.Advance(1);
  auto expired = scheduler_->ExpireLeases();
  ASSERT_TRUE(expired.ok()) << expired.status().ToString();
  EXPECT_EQ(*expired, 1);
  v1::ShardRecord record = Shard(id, 0, 0);
  EXPECT_EQ(record.state(), v1::PENDING);
  EXPECT_EQ(record.failed_attempts(), 1u);
  EXPECT_EQ(record.attempt(), 1u);
  ASSERT_EQ(record.errors_size(), 1);
  EXPECT_EQ(record.errors(0).error(), "lease expired (worker w1)");
  EXPECT_EQ(record.errors(0).worker(), "w1");
  EXPECT_EQ(record.errors(0).attempt(), 1u);
  EXPECT_TRUE(record.errors(0).counted());
  EXPECT_EQ(scheduler_->Counters().leases_expired, 1u);

  v1::HeartbeatResponse beat = Heartbeat("w1", {first});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_FALSE(beat.leases(0).keep());
  EXPECT_EQ(beat.leases(0).reason(), "lease expired");

  // Shard 0 is leased again first (index order), as attempt 2.
  v1::LeaseShardsResponse again = Lease("w2", 1);
  ASSERT_EQ(again.leases_size(), 1);
  EXPECT_EQ(again.leases(0).ref().shard(), 0u);
  EXPECT_EQ(again.leases(0).ref().attempt(), 2u);
  beat = Heartbeat("w1", {first});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_FALSE(beat.leases(0).keep());
  EXPECT_EQ(beat.leases(0).reason(), "lease expired; shard re-leased to w2");

  const v1::SweepProgress progress = Progress(id);
  ASSERT_EQ(progress.failures_size(), 1);
  EXPECT_EQ(progress.failures(0).shard(), 0u);
  EXPECT_EQ(progress.failures(0).state(), v1::RUNNING);
  EXPECT_EQ(progress.failures(0).errors_size(), 1);
}

TEST_F(SchedulerTest, MaxAttemptsFailTheShardAndTheSweepWithItsHistory) {
  const std::string id = Submit("unit");
  // Attempt 1: the worker reports an error; 2: the lease expires; 3: an error again.
  v1::LeaseShardsResponse one = Lease("w1", 1);
  ASSERT_EQ(one.leases_size(), 1);
  ASSERT_TRUE(Release("w1", one.leases(0).ref(), "CUDA error: out of memory").ok());
  v1::LeaseShardsResponse two = Lease("w2", 1);
  ASSERT_EQ(two.leases_size(), 1);
  ASSERT_EQ(two.leases(0).ref().shard(), 0u);
  clock_.Advance(kLeaseMs + 1);
  ASSERT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(Progress(id).sweep().state(), v1::RUNNING);
  v1::LeaseShardsResponse three = Lease("w3", 1);
  ASSERT_EQ(three.leases_size(), 1);
  ASSERT_EQ(three.leases(0).ref().shard(), 0u);
  ASSERT_EQ(three.leases(0).ref().attempt(), 3u);
  // Another shard held meanwhile: its worker is told to drop it once the sweep fails.
  v1::LeaseShardsResponse other = Lease("w4", 1);
  ASSERT_EQ(other.leases_size(), 1);
  ASSERT_TRUE(Release("w3", three.leases(0).ref(), "tokenizer: unknown byte").ok());

  const v1::ShardRecord record = Shard(id, 0, 0);
  EXPECT_EQ(record.state(), v1::FAILED);
  EXPECT_EQ(record.failed_attempts(), 3u);
  EXPECT_EQ(record.error(), "tokenizer: unknown byte");
  ASSERT_EQ(record.errors_size(), 3);
  const v1::SweepProgress progress = Progress(id);
  EXPECT_EQ(progress.sweep().state(), v1::FAILED);
  const std::string& error = progress.sweep().error();
  EXPECT_NE(error.find("stage=early"), std::string::npos) << error;
  EXPECT_NE(error.find("shard=0"), std::string::npos) << error;
  EXPECT_NE(error.find("attempt 1 (worker w1): CUDA error: out of memory"), std::string::npos)
      << error;
  EXPECT_NE(error.find("attempt 2 (worker w2): lease expired (worker w2)"), std::string::npos)
      << error;
  EXPECT_NE(error.find("attempt 3 (worker w3): tokenizer: unknown byte"), std::string::npos)
      << error;
  EXPECT_EQ(progress.shards_failed(), 1u);
  ASSERT_GE(progress.failures_size(), 1);
  EXPECT_EQ(progress.failures(0).state(), v1::FAILED);

  EXPECT_EQ(Lease("w5", 4).leases_size(), 0);
  v1::HeartbeatResponse beat = Heartbeat("w4", {other.leases(0).ref()});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_FALSE(beat.leases(0).keep());
  EXPECT_EQ(beat.leases(0).reason(), "sweep failed");

  // Submitting it again retries: the failed shard gets its attempts back.
  auto again = TrySubmit(SpecYaml("unit"));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(again->resumed());
  EXPECT_EQ(again->progress().sweep().state(), v1::RUNNING);
  v1::LeaseShardsResponse retry = Lease("w1", 1);
  ASSERT_EQ(retry.leases_size(), 1);
  EXPECT_EQ(retry.leases(0).ref().shard(), 0u);
  EXPECT_EQ(retry.leases(0).ref().attempt(), 4u);
  EXPECT_EQ(Shard(id, 0, 0).failed_attempts(), 0u);
  EXPECT_EQ(Shard(id, 0, 0).errors_size(), 3);
}

// The deterministic codes of IsDeterministic (scheduler.cc; the list: a malformed shard,
// an unsupported feature, a missing file, a wrong state): one release fails the shard and its
// sweep, with the message in the shard's history. The old scheduler retried every error up to
// max_attempts (3).
TEST_F(SchedulerTest, ADeterministicErrorFailsTheShardAndTheSweepAtOnce) {
  for (v1::ErrorCode code : {v1::ERROR_INVALID_ARGUMENT, v1::ERROR_UNIMPLEMENTED,
                             v1::ERROR_NOT_FOUND, v1::ERROR_FAILED_PRECONDITION}) {
    SCOPED_TRACE(v1::ErrorCode_Name(code));
    const std::string name = "det" + std::to_string(static_cast<int>(code));
    const std::string id = Submit(name);
    v1::LeaseShardsResponse held = Lease("w1", 2);
    ASSERT_EQ(held.leases_size(), 2);
    ASSERT_EQ(held.leases(0).shard().sweep_id(), id);
    const std::string message =
        "InvalidArgument: position selector \"[3,-1]\": expected comma-separated indices";
    ASSERT_TRUE(Release("w1", held.leases(0).ref(), message, code).ok());

    const v1::ShardRecord record = Shard(id, 0, 0);
    EXPECT_EQ(record.state(), v1::FAILED);
    EXPECT_EQ(record.failed_attempts(), 1u);
    EXPECT_EQ(record.error(), message);
    ASSERT_EQ(record.errors_size(), 1);
    EXPECT_TRUE(record.errors(0).counted());
    const v1::SweepProgress progress = Progress(id);
    EXPECT_EQ(progress.sweep().state(), v1::FAILED);
    EXPECT_NE(progress.sweep().error().find("attempt 1 (worker w1): " + message),
              std::string::npos)
        << progress.sweep().error();
    EXPECT_NE(progress.sweep().error().find("not retried"), std::string::npos)
        << progress.sweep().error();
    // Nothing of the sweep is leased again, and the other held shard is dropped.
    EXPECT_EQ(Lease("w2", 4).leases_size(), 0);
    v1::HeartbeatResponse beat = Heartbeat("w1", {held.leases(1).ref()});
    ASSERT_EQ(beat.leases_size(), 1);
    EXPECT_FALSE(beat.leases(0).keep());
    EXPECT_EQ(beat.leases(0).reason(), "sweep failed");
  }
}

// Every other code (and none: a worker older than the field) is retried: the shard is pending
// again after each failure and fails only at max_attempts (3), as before.
TEST_F(SchedulerTest, TransientErrorsAreRetriedUpToMaxAttempts) {
  const std::vector<v1::ErrorCode> codes = {
      v1::ERROR_CODE_UNSPECIFIED, v1::ERROR_UNAVAILABLE,     v1::ERROR_INTERNAL,
      v1::ERROR_IO,               v1::ERROR_CORRUPTION,      v1::ERROR_DEADLINE_EXCEEDED,
      v1::ERROR_CANCELLED,        v1::ERROR_PERMISSION_DENIED, v1::ERROR_UNAUTHENTICATED};
  for (size_t i = 0; i < codes.size(); ++i) {
    SCOPED_TRACE(v1::ErrorCode_Name(codes[i]));
    const std::string id = Submit("transient" + std::to_string(i));
    for (uint32_t attempt = 1; attempt <= 3; ++attempt) {
      v1::LeaseShardsResponse held = Lease("w1", 1);
      ASSERT_EQ(held.leases_size(), 1);
      ASSERT_EQ(held.leases(0).ref().shard(), 0u);
      ASSERT_EQ(held.leases(0).ref().attempt(), attempt);
      ASSERT_TRUE(Release("w1", held.leases(0).ref(), "flaky", codes[i]).ok());
      const v1::RunState expected = attempt < 3 ? v1::PENDING : v1::FAILED;
      EXPECT_EQ(Shard(id, 0, 0).state(), expected);
      EXPECT_EQ(Progress(id).sweep().state(), attempt < 3 ? v1::RUNNING : v1::FAILED);
    }
    EXPECT_NE(Progress(id).sweep().error().find("failed 3 times (max_attempts 3)"),
              std::string::npos)
        << Progress(id).sweep().error();
  }
}

TEST_F(SchedulerTest, LateReportIsCommittedAndTheLaterDuplicateIgnored) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse first = Lease("w1", 1);
  ASSERT_EQ(first.leases_size(), 1);
  clock_.Advance(kLeaseMs + 1);
  ASSERT_EQ(*scheduler_->ExpireLeases(), 1);
  v1::LeaseShardsResponse second = Lease("w2", 1);
  ASSERT_EQ(second.leases_size(), 1);
  ASSERT_EQ(second.leases(0).ref().shard(), 0u);

  // w1's lease expired, but nobody finished the shard: its result wins.
  auto late = Report(ReportRequest("w1", first.leases(0), /*value=*/1.0));
  ASSERT_TRUE(late.ok()) << late.status().ToString();
  EXPECT_TRUE(late->late());
  EXPECT_FALSE(late->duplicate());
  v1::ShardRecord record = Shard(id, 0, 0);
  EXPECT_EQ(record.state(), v1::DONE);
  EXPECT_EQ(record.worker(), "w1");
  EXPECT_EQ(record.attempt(), 1u);

  // w2 finishes too: acknowledged, ignored.
  auto duplicate = Report(ReportRequest("w2", second.leases(0), /*value=*/2.0));
  ASSERT_TRUE(duplicate.ok()) << duplicate.status().ToString();
  EXPECT_TRUE(duplicate->duplicate());
  EXPECT_FALSE(duplicate->late());
  auto rows = sweeps_->Rows(id, 0, /*aggregates_only=*/false);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 16u);  // 8 trials x (aggregate + one prompt), once
  for (const auto& row : *rows) EXPECT_EQ(row.values().at("refusal_score"), 1.0);
  auto stage = sweeps_->GetStage(id, 0);
  ASSERT_TRUE(stage.ok());
  EXPECT_EQ(stage->shards_done(), 1u);

  v1::HeartbeatResponse beat = Heartbeat("w2", {second.leases(0).ref()});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_FALSE(beat.leases(0).keep());
  EXPECT_EQ(beat.leases(0).reason(), "shard already done");

  const SchedulerCounters counters = scheduler_->Counters();
  EXPECT_EQ(counters.reports_committed, 1u);
  EXPECT_EQ(counters.reports_late, 1u);
  EXPECT_EQ(counters.reports_duplicate, 1u);
  EXPECT_EQ(counters.rows_committed, 16u);
  EXPECT_EQ(counters.shards_done, 1u);
  EXPECT_EQ(counters.shards_running, 0u);
  EXPECT_EQ(counters.shards_pending, 3u);
}

TEST_F(SchedulerTest, ReportOfAShardNeverLeasedIsPermissionDeniedAndStoresNothing) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 1);
  ASSERT_EQ(granted.leases_size(), 1);

  // Another worker reports w1's shard.
  auto stranger = Report(ReportRequest("w2", granted.leases(0)));
  EXPECT_EQ(stranger.status().code(), StatusCode::kPermissionDenied)
      << stranger.status().ToString();
  // w1 reports a shard nobody leased.
  auto ungranted = sweeps_->GetShard(id, 0, 3);
  ASSERT_TRUE(ungranted.ok());
  v1::Lease forged;
  forged.mutable_ref()->set_sweep_id(id);
  forged.mutable_ref()->set_shard(3);
  forged.mutable_ref()->set_attempt(1);
  *forged.mutable_shard() = ungranted->shard();
  auto never = Report(ReportRequest("w1", forged));
  EXPECT_EQ(never.status().code(), StatusCode::kPermissionDenied) << never.status().ToString();

  EXPECT_EQ(RowCount(id, 0), 0u);
  EXPECT_EQ(Shard(id, 0, 0).state(), v1::RUNNING);
  EXPECT_EQ(Shard(id, 0, 3).state(), v1::PENDING);
}

TEST_F(SchedulerTest, ResultThatDoesNotMatchItsShardIsInvalidArgument) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 2);
  ASSERT_EQ(granted.leases_size(), 2);

  // The result names shard 1, the lease shard 0.
  v1::ReportResultsRequest swapped = ReportRequest("w1", granted.leases(0));
  *swapped.mutable_result() = ResultFor(granted.leases(1).shard());
  auto mismatch = Report(swapped);
  EXPECT_EQ(mismatch.status().code(), StatusCode::kInvalidArgument)
      << mismatch.status().ToString();

  // A row of a trial that shard 0 does not have (shard 0 holds trials 0-7).
  v1::ReportResultsRequest foreign = ReportRequest("w1", granted.leases(0));
  foreign.mutable_result()->mutable_rows(3)->set_trial(12);
  auto trial = Report(foreign);
  EXPECT_EQ(trial.status().code(), StatusCode::kInvalidArgument) << trial.status().ToString();
  EXPECT_NE(trial.status().message().find("trial 12"), std::string::npos);

  EXPECT_EQ(RowCount(id, 0), 0u);
  EXPECT_EQ(Shard(id, 0, 0).state(), v1::RUNNING);
}

TEST_F(SchedulerTest, UnknownSweepOrShardIsNotFound) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 1);
  ASSERT_EQ(granted.leases_size(), 1);

  v1::ReportResultsRequest unknown_sweep = ReportRequest("w1", granted.leases(0));
  unknown_sweep.mutable_lease()->set_sweep_id("nope-00000000");
  unknown_sweep.mutable_result()->set_sweep_id("nope-00000000");
  EXPECT_EQ(Report(unknown_sweep).status().code(), StatusCode::kNotFound);

  v1::ReportResultsRequest unknown_shard = ReportRequest("w1", granted.leases(0));
  unknown_shard.mutable_lease()->set_shard(99);
  unknown_shard.mutable_result()->set_index(99);
  EXPECT_EQ(Report(unknown_shard).status().code(), StatusCode::kNotFound);

  v1::LeaseRef ref = granted.leases(0).ref();
  ref.set_sweep_id("nope-00000000");
  EXPECT_EQ(Release("w1", ref, "").code(), StatusCode::kNotFound);
  ref = granted.leases(0).ref();
  ref.set_shard(99);
  EXPECT_EQ(Release("w1", ref, "").code(), StatusCode::kNotFound);

  auto progress = scheduler_->Progress("nope");
  EXPECT_EQ(progress.status().code(), StatusCode::kNotFound);
  EXPECT_NE(progress.status().message().find(id), std::string::npos)
      << progress.status().ToString();
  EXPECT_EQ(scheduler_->Cancel("nope").status().code(), StatusCode::kNotFound);
}

TEST_F(SchedulerTest, ReleaseWithoutErrorIsNotCountedWithErrorIs) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse one = Lease("w1", 1);
  ASSERT_EQ(one.leases_size(), 1);
  ASSERT_TRUE(Release("w1", one.leases(0).ref(), "").ok());
  v1::ShardRecord record = Shard(id, 0, 0);
  EXPECT_EQ(record.state(), v1::PENDING);
  EXPECT_EQ(record.failed_attempts(), 0u);
  EXPECT_TRUE(record.error().empty());
  ASSERT_EQ(record.errors_size(), 1);
  EXPECT_FALSE(record.errors(0).counted());

  // Given back: leased again at once, as the next attempt.
  v1::LeaseShardsResponse two = Lease("w2", 1);
  ASSERT_EQ(two.leases_size(), 1);
  ASSERT_EQ(two.leases(0).ref().shard(), 0u);
  EXPECT_EQ(two.leases(0).ref().attempt(), 2u);
  // A lease the worker does not hold (w1's old one, or another worker's): OK, nothing changes.
  EXPECT_TRUE(Release("w1", one.leases(0).ref(), "stale").ok());
  EXPECT_TRUE(Release("w1", two.leases(0).ref(), "not mine").ok());
  EXPECT_EQ(Shard(id, 0, 0).state(), v1::RUNNING);
  EXPECT_EQ(Shard(id, 0, 0).errors_size(), 1);

  ASSERT_TRUE(Release("w2", two.leases(0).ref(), "executor: NaN in logits").ok());
  record = Shard(id, 0, 0);
  EXPECT_EQ(record.state(), v1::PENDING);
  EXPECT_EQ(record.failed_attempts(), 1u);
  EXPECT_EQ(record.error(), "executor: NaN in logits");
  ASSERT_EQ(record.errors_size(), 2);
  EXPECT_TRUE(record.errors(1).counted());
  EXPECT_EQ(record.errors(1).attempt(), 2u);
  EXPECT_EQ(scheduler_->Counters().leases_released, 2u);
}

TEST_F(SchedulerTest, CancelStopsLeasingAndHeartbeatsSayDrop) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse held = Lease("w1", 1);
  ASSERT_EQ(held.leases_size(), 1);

  auto cancelled = scheduler_->Cancel("unit");  // by name
  ASSERT_TRUE(cancelled.ok()) << cancelled.status().ToString();
  EXPECT_EQ(cancelled->sweep().state(), v1::CANCELLED);
  EXPECT_EQ(Lease("w2", 4).leases_size(), 0);
  v1::HeartbeatResponse beat = Heartbeat("w1", {held.leases(0).ref()});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_FALSE(beat.leases(0).keep());
  EXPECT_EQ(beat.leases(0).reason(), "sweep cancelled");
  // Shards stay as they were; cancelling again changes nothing; leases of a cancelled sweep
  // do not expire into failures.
  EXPECT_EQ(Shard(id, 0, 0).state(), v1::RUNNING);
  auto again = scheduler_->Cancel(id);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->sweep().state(), v1::CANCELLED);
  clock_.Advance(kLeaseMs + 1);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 0);

  // Submitted again, it runs again; the shard held at cancellation is pending, not counted.
  auto resumed = TrySubmit(SpecYaml("unit"));
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_TRUE(resumed->resumed());
  EXPECT_EQ(resumed->progress().sweep().state(), v1::RUNNING);
  EXPECT_EQ(resumed->progress().shards_pending(), 4u);
  EXPECT_EQ(Shard(id, 0, 0).failed_attempts(), 0u);
  EXPECT_EQ(Indices(Lease("w2", 4)), (std::vector<uint32_t>{0, 1, 2, 3}));
}

TEST_F(SchedulerTest, GroupCommitWritesAcceptedReportsAndRunsTheStagesToTheEnd) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 4);
  ASSERT_EQ(granted.leases_size(), 4);

  // Shards 0 and 1, shard 1 again (a duplicate within the call), and a bad report of shard 2.
  const v1::ReportResultsRequest r0 = ReportRequest("w1", granted.leases(0));
  const v1::ReportResultsRequest r1 = ReportRequest("w1", granted.leases(1));
  v1::ReportResultsRequest bad = ReportRequest("w1", granted.leases(2));
  bad.mutable_result()->set_index(3);
  const uint64_t before = scheduler_->change_counter();
  auto responses = scheduler_->Report({&r0, &r1, &r1, &bad});
  ASSERT_EQ(responses.size(), 4u);
  ASSERT_TRUE(responses[0].ok()) << responses[0].status().ToString();
  EXPECT_FALSE(responses[0]->duplicate());
  EXPECT_FALSE(responses[0]->late());
  ASSERT_TRUE(responses[1].ok()) << responses[1].status().ToString();
  EXPECT_FALSE(responses[1]->duplicate());
  ASSERT_TRUE(responses[2].ok()) << responses[2].status().ToString();
  EXPECT_TRUE(responses[2]->duplicate());
  EXPECT_EQ(responses[3].status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(scheduler_->WaitForChange(before, 0), scheduler_->change_counter());
  EXPECT_GT(scheduler_->change_counter(), before);
  EXPECT_EQ(RowCount(id, 0), 32u);
  auto stage = sweeps_->GetStage(id, 0);
  ASSERT_TRUE(stage.ok());
  EXPECT_EQ(stage->shards_done(), 2u);

  // The stage's last two shards in one call complete it: the next stage is expanded.
  const v1::ReportResultsRequest r2 = ReportRequest("w1", granted.leases(2));
  const v1::ReportResultsRequest r3 = ReportRequest("w1", granted.leases(3));
  responses = scheduler_->Report({&r2, &r3});
  for (const auto& response : responses) ASSERT_TRUE(response.ok()) << response.status().ToString();
  v1::SweepProgress progress = Progress(id);
  ASSERT_EQ(progress.stages_size(), 2);
  EXPECT_EQ(progress.stages(0).state(), v1::DONE);
  EXPECT_EQ(progress.stages(0).shards_done(), 4u);
  EXPECT_EQ(progress.stages(1).name(), "late");
  EXPECT_EQ(progress.shards_total(), 6u);
  EXPECT_EQ(progress.shards_done(), 4u);
  EXPECT_EQ(progress.shards_pending(), 2u);

  // The worker's throughput: 4 shards x 8 trials in 4 x 2 s.
  ASSERT_EQ(progress.workers_size(), 1);
  const v1::WorkerStatus& worker = progress.workers(0);
  EXPECT_EQ(worker.info().id(), "w1");
  EXPECT_TRUE(worker.alive());
  EXPECT_EQ(worker.shards_done(), 4u);
  EXPECT_EQ(worker.trials_run(), 32u);
  EXPECT_DOUBLE_EQ(worker.busy_seconds(), 8.0);
  EXPECT_DOUBLE_EQ(worker.trials_per_second(), 4.0);
  EXPECT_EQ(worker.leases_held(), 0u);

  v1::LeaseShardsResponse late_stage = Lease("w1", 4);
  ASSERT_EQ(late_stage.leases_size(), 2);
  EXPECT_EQ(late_stage.leases(0).ref().stage(), 1u);
  const v1::ReportResultsRequest l0 = ReportRequest("w1", late_stage.leases(0));
  const v1::ReportResultsRequest l1 = ReportRequest("w1", late_stage.leases(1));
  responses = scheduler_->Report({&l0, &l1});
  for (const auto& response : responses) ASSERT_TRUE(response.ok()) << response.status().ToString();
  progress = Progress(id);
  EXPECT_EQ(progress.sweep().state(), v1::DONE);
  EXPECT_EQ(progress.shards_done(), 6u);
  EXPECT_EQ(scheduler_->Cancel(id).status().code(), StatusCode::kFailedPrecondition);

  // Two lease periods without a word: the worker is no longer alive.
  clock_.Advance(2 * kLeaseMs + 1);
  const SchedulerCounters counters = scheduler_->Counters();
  EXPECT_EQ(counters.workers_alive, 0u);
  ASSERT_EQ(counters.workers.size(), 1u);
  EXPECT_FALSE(counters.workers[0].alive());
  EXPECT_EQ(counters.reports_committed, 6u);
  EXPECT_EQ(counters.reports_duplicate, 1u);
}

TEST_F(SchedulerTest, RestartKeepsLeaseDeadlinesAndRebuildsThePendingQueue) {
  const std::string id = Submit("unit");
  const uint64_t start = clock_.NowMs();
  v1::LeaseShardsResponse granted = Lease("w1", 2);
  ASSERT_EQ(granted.leases_size(), 2);
  ASSERT_TRUE(Report(ReportRequest("w1", granted.leases(1))).ok());

  Reopen();
  EXPECT_EQ(Shard(id, 0, 0).lease_deadline_unix_ms(), start + kLeaseMs);
  // Shard 0 is still leased: its heartbeat is answered keep, with a new deadline.
  clock_.Advance(1'000);
  v1::HeartbeatResponse beat = Heartbeat("w1", {granted.leases(0).ref()});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_TRUE(beat.leases(0).keep()) << beat.leases(0).reason();
  EXPECT_EQ(beat.leases(0).deadline_unix_ms(), start + 1'000 + kLeaseMs);

  // Past the first deadline, within the renewed one: the renewal survived the restart.
  Reopen();
  clock_.Advance(kLeaseMs - 1);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 0);
  // Shard 1 is done, shard 0 held: the rebuilt queue holds 2 and 3.
  EXPECT_EQ(Indices(Lease("w2", 4)), (std::vector<uint32_t>{2, 3}));
  clock_.Advance(2);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);  // shard 0; w2's leases run a while longer
  EXPECT_EQ(Shard(id, 0, 0).state(), v1::PENDING);
  // The workers were read back from the store.
  const SchedulerCounters counters = scheduler_->Counters();
  EXPECT_EQ(counters.workers.size(), 2u);
}

// The embedded mode's restart: the workers that held leases died with the previous process,
// so their shards are pending at once (not counted) instead of after their deadlines.
TEST_F(SchedulerTest, ReleaseLeasesOnOpenReturnsEveryLeaseUncounted) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 2);
  ASSERT_EQ(granted.leases_size(), 2);
  options_.release_leases_on_open = true;
  Reopen();
  for (uint32_t shard : {0u, 1u}) {
    const v1::ShardRecord record = Shard(id, 0, shard);
    EXPECT_EQ(record.state(), v1::PENDING);
    EXPECT_EQ(record.failed_attempts(), 0u);
    ASSERT_EQ(record.errors_size(), 1);
    EXPECT_FALSE(record.errors(0).counted());
  }
  // No waiting for the deadline: both are leased again, in index order, first.
  EXPECT_EQ(Indices(Lease("w2", 2)), (std::vector<uint32_t>{0, 1}));
  // The old holder's heartbeat is told to drop.
  v1::HeartbeatResponse beat = Heartbeat("w1", {granted.leases(0).ref()});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_FALSE(beat.leases(0).keep());
}

TEST_F(SchedulerTest, RestartAdvancesAStageCompletedBeforeTheCrash) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 4);
  ASSERT_EQ(granted.leases_size(), 4);
  // The commits land but the process dies before the finaliser: written straight to the store.
  for (const auto& lease : granted.leases()) {
    const v1::ShardResult result = ResultFor(lease.shard());
    ASSERT_TRUE(sweeps_->CommitShard(result, lease.ref().attempt()).ok());
  }
  auto stages = sweeps_->ListStages(id);
  ASSERT_TRUE(stages.ok());
  ASSERT_EQ(stages->size(), 1u);

  Reopen();
  const v1::SweepProgress progress = Progress(id);
  ASSERT_EQ(progress.stages_size(), 2);
  EXPECT_EQ(progress.stages(0).state(), v1::DONE);
  EXPECT_EQ(progress.stages(1).shards_total(), 2u);
  v1::LeaseShardsResponse next = Lease("w1", 4);
  ASSERT_EQ(next.leases_size(), 2);
  EXPECT_EQ(next.leases(0).ref().stage(), 1u);
  EXPECT_EQ(Indices(next), (std::vector<uint32_t>{0, 1}));
}

TEST_F(SchedulerTest, BadSpecIsInvalidArgumentNamingTheLineAndStoresNothing) {
  // A YAML syntax error on line 3.
  auto syntax = TrySubmit("name: bad\nmodel: {path: ../../models/demo-refusal}\nstages: [\n",
                          0, "bad.yaml");
  EXPECT_EQ(syntax.status().code(), StatusCode::kInvalidArgument);
  const std::string& message = syntax.status().message();
  ASSERT_EQ(message.rfind("bad.yaml:", 0), 0u) << syntax.status().ToString();
  EXPECT_TRUE(std::isdigit(static_cast<unsigned char>(message[9]))) << message;

  // An unknown key on line 2.
  auto unknown = TrySubmit("name: bad\nbogus: 1\n", 0, "bad.yaml");
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("bad.yaml:2"), std::string::npos)
      << unknown.status().ToString();

  // Well-formed, but layer 9 does not exist in the 6-layer model (line 11 of the spec).
  std::string yaml = SpecYaml("bad");
  yaml.replace(yaml.find("layers: [0, 1, 2, 3]"), 20, "layers: [0, 9]");
  auto range = TrySubmit(yaml, 0, "bad.yaml");
  EXPECT_EQ(range.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(range.status().message().find("bad.yaml:11"), std::string::npos)
      << range.status().ToString();
  EXPECT_NE(range.status().message().find("layer 9 out of range"), std::string::npos)
      << range.status().ToString();

  // A model directory that does not exist.
  auto missing = TrySubmit(SpecYaml("bad", "no-such-model"), 0, "bad.yaml");
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("bad.yaml:2"), std::string::npos)
      << missing.status().ToString();

  // A relative base_dir cannot be resolved against anything meaningful.
  v1::SubmitSweepRequest relative;
  relative.set_spec_yaml(SpecYaml("bad"));
  relative.set_spec_label("bad.yaml");
  relative.set_base_dir("experiments/specs");
  EXPECT_EQ(scheduler_->Submit(relative).status().code(), StatusCode::kInvalidArgument);

  auto listed = scheduler_->List();
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_TRUE(listed->empty());
  auto sweeps = sweeps_->ListSweeps();
  ASSERT_TRUE(sweeps.ok());
  EXPECT_TRUE(sweeps->empty());
}

TEST_F(SchedulerTest, ListShowsEverySweepOldestFirst) {
  const std::string a = Submit("list-a");
  const std::string b = Submit("list-b", 1);
  auto listed = scheduler_->List();
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), 2u);
  std::set<std::string> ids{(*listed)[0].sweep().id(), (*listed)[1].sweep().id()};
  EXPECT_EQ(ids, (std::set<std::string>{a, b}));
  for (const auto& progress : *listed) EXPECT_EQ(progress.shards_total(), 4u);
}

// The coordinator opens no model or prompt file: a spec whose model directory and prompt file
// exist only on the submitting machine is expanded from what the request carries (shape and
// prompts), and a request without them is refused with a clear error. Before, Submit read
// <model>/config.json and the prompt files itself and failed with NotFound here.
TEST_F(SchedulerTest, TheCoordinatorNeedsNoModelOrPromptFiles) {
  // Read "on the submitting machine": the demo model and prompts, as the CLI would.
  auto inputs = experiments::ReadSpecInputs(SpecYaml("remote"), "remote.yaml", kSpecsDir);
  ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
  // On the coordinator's machine neither path exists.
  std::string yaml = SpecYaml("remote", "/nonexistent/submitting-machine/model");
  const std::string from = "../prompts/demo/harmful_val.jsonl";
  yaml.replace(yaml.find(from), from.size(), "/nonexistent/submitting-machine/harmful_val.jsonl");
  ASSERT_FALSE(fs::exists("/nonexistent/submitting-machine"));
  v1::SubmitSweepRequest request;
  request.set_spec_yaml(yaml);
  request.set_spec_label("remote.yaml");
  request.set_base_dir(kSpecsDir);
  *request.mutable_inputs() = *inputs;
  auto submitted = scheduler_->Submit(request);
  ASSERT_TRUE(submitted.ok()) << submitted.status().ToString();
  // Stage "early": 4 layers x 8 heads (the demo model's config.json, carried in the request)
  // in shards of 8 trials, each with the 4 prompts of harmful_val (limit 4).
  v1::LeaseShardsResponse held = Lease("w1", 100);
  ASSERT_EQ(held.leases_size(), 4);
  const auto demo = experiments::ReadSpecInputs(SpecYaml("x"), "x.yaml", kSpecsDir);
  ASSERT_TRUE(demo.ok());
  for (const v1::Lease& lease : held.leases()) {
    EXPECT_EQ(lease.shard().trials_size(), 8);
    EXPECT_EQ(lease.shard().model().path(), "/nonexistent/submitting-machine/model");
    ASSERT_EQ(lease.shard().prompts_size(), 4);
    EXPECT_EQ(lease.shard().prompts(0).instruction(),
              demo->prompt_sets(0).prompts(0).instruction());
  }
  // After a restart the stored spec still carries everything: the next stage expands.
  Reopen();
  auto progress = scheduler_->Progress(submitted->sweep_id());
  ASSERT_TRUE(progress.ok()) << progress.status().ToString();
  EXPECT_EQ(progress->sweep().spec().model().shape().num_layers(), 6);

  // Without the inputs: refused, naming what is missing, and nothing is stored.
  request.clear_inputs();
  request.set_spec_yaml(SpecYaml("bare"));
  auto bare = scheduler_->Submit(request);
  EXPECT_EQ(bare.status().code(), StatusCode::kInvalidArgument) << bare.status().ToString();
  EXPECT_NE(bare.status().message().find("no model shape"), std::string::npos)
      << bare.status().ToString();
  // With the shape but a prompt set missing.
  *request.mutable_inputs()->mutable_model_shape() = inputs->model_shape();
  bare = scheduler_->Submit(request);
  EXPECT_EQ(bare.status().code(), StatusCode::kInvalidArgument) << bare.status().ToString();
  EXPECT_NE(bare.status().message().find("prompt set \"harmful_val\""), std::string::npos)
      << bare.status().ToString();
  auto listed = scheduler_->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 1u);
}

// The same spec text over an edited prompt file is another sweep (experiments::SweepIdFor
// hashes the prompts loaded and config.json); before, it resumed the old sweep, whose shards
// carry the old prompts.
TEST_F(SchedulerTest, AnEditedPromptFileStartsANewSweepInsteadOfResuming) {
  const fs::path prompts = dir_ / "prompts.jsonl";
  fs::copy_file(fs::path(kSpecsDir) / "../prompts/demo/harmful_val.jsonl", prompts);
  std::string yaml = SpecYaml("edit");
  const std::string from = "../prompts/demo/harmful_val.jsonl";
  yaml.replace(yaml.find(from), from.size(), prompts.string());
  auto first = TrySubmit(yaml);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_FALSE(first->resumed());
  auto same = TrySubmit(yaml);
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  EXPECT_TRUE(same->resumed());
  EXPECT_EQ(same->sweep_id(), first->sweep_id());

  std::ofstream(prompts, std::ios::trunc) << "{\"instruction\": \"An edited request.\"}\n";
  auto edited = TrySubmit(yaml);
  ASSERT_TRUE(edited.ok()) << edited.status().ToString();
  EXPECT_FALSE(edited->resumed());
  EXPECT_NE(edited->sweep_id(), first->sweep_id());
  v1::LeaseShardsResponse held = Lease("w1", 8);
  bool saw_edited = false;
  for (const v1::Lease& lease : held.leases()) {
    if (lease.shard().sweep_id() != edited->sweep_id()) continue;
    ASSERT_EQ(lease.shard().prompts_size(), 1);
    EXPECT_EQ(lease.shard().prompts(0).instruction(), "An edited request.");
    saw_edited = true;
  }
  EXPECT_TRUE(saw_edited);
}

// Report writes its group commit without the scheduler's mutex; Lease runs meanwhile and must
// neither grant a shard being committed nor fail on one (its record turning DONE under it).
TEST_F(SchedulerTest, LeaseRunsBesideAGroupCommitWithoutTouchingItsShards) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse first = Lease("w1", 100);
  std::vector<uint32_t> stage0;
  for (const v1::Lease& lease : first.leases()) {
    if (lease.ref().stage() == 0) stage0.push_back(lease.ref().shard());
  }
  ASSERT_GE(stage0.size(), 2u);
  // Every lease expires: the shards are pending again, w1's reports are late but still win.
  clock_.Advance(kLeaseMs + 1);
  ASSERT_EQ(*scheduler_->ExpireLeases(), first.leases_size());

  std::vector<v1::ReportResultsRequest> requests;
  for (const v1::Lease& lease : first.leases()) requests.push_back(ReportRequest("w1", lease));
  std::vector<const v1::ReportResultsRequest*> pointers;
  for (const auto& request : requests) pointers.push_back(&request);

  std::atomic<bool> reported{false};
  std::vector<StatusOr<v1::ReportResultsResponse>> responses;
  std::thread reporter([&] {
    responses = scheduler_->Report(pointers);
    reported = true;
  });
  std::vector<v1::Lease> granted;
  std::vector<Status> lease_errors;
  for (int i = 0; !reported.load() || i < 3; ++i) {
    v1::LeaseShardsRequest request;
    request.mutable_worker()->set_id("w2");
    request.set_capacity(1);
    auto response = scheduler_->Lease(request);
    if (!response.ok()) {
      lease_errors.push_back(response.status());
      continue;
    }
    for (const v1::Lease& lease : response->leases()) granted.push_back(lease);
  }
  reporter.join();
  EXPECT_TRUE(lease_errors.empty()) << lease_errors.front().ToString();
  ASSERT_EQ(responses.size(), requests.size());
  for (const auto& response : responses) {
    ASSERT_TRUE(response.ok()) << response.status().ToString();
    EXPECT_FALSE(response->duplicate());
    EXPECT_TRUE(response->late());
  }
  for (uint32_t shard : stage0) {
    const v1::ShardRecord record = Shard(id, 0, shard);
    EXPECT_EQ(record.state(), v1::DONE) << shard;
    EXPECT_EQ(record.worker(), "w1") << shard;
  }
  // A stage-0 shard w2 got before the commit is done now: its heartbeat says drop.
  for (const v1::Lease& lease : granted) {
    if (lease.ref().stage() != 0) continue;
    v1::HeartbeatResponse beat = Heartbeat("w2", {lease.ref()});
    ASSERT_EQ(beat.leases_size(), 1);
    EXPECT_FALSE(beat.leases(0).keep());
  }
  auto stage = sweeps_->GetStage(id, 0);
  ASSERT_TRUE(stage.ok());
  EXPECT_EQ(stage->shards_done(), stage0.size());
  size_t rows = 0;  // each result once: an aggregate and a per-prompt row per trial
  for (const auto& request : requests) {
    if (request.result().stage() == 0) rows += request.result().rows_size();
  }
  EXPECT_EQ(RowCount(id, 0), rows);
}

// The progress views read the stage records, the lease records and the failure index, never
// the shards. Checked here against a full scan of every shard record (the old way, written out
// independently) after each step of a random run: leases, heartbeats, reports, releases with
// and without errors, expiries, cancellations and resubmissions, restarts.
TEST_F(SchedulerTest, ProgressFromTheIndexesEqualsAScanOfEveryShard) {
  options_.max_attempts = 2;
  Reopen();
  const std::vector<std::string> names = {"alpha", "beta", "gamma"};
  std::map<std::string, std::string> ids;  // name -> id
  for (const std::string& name : names) ids[name] = Submit(name);
  std::mt19937 random(20261206);
  auto pick = [&](size_t n) { return static_cast<size_t>(random() % n); };
  std::vector<std::pair<std::string, v1::Lease>> held;  // (worker, lease) as workers see them

  auto check = [&](int step) {
    for (const auto& [name, id] : ids) {
      SCOPED_TRACE("step " + std::to_string(step) + " sweep " + name);
      const v1::SweepProgress progress = Progress(id);
      uint64_t total = 0, pending = 0, running = 0, done = 0, failed = 0;
      std::set<std::tuple<uint32_t, uint32_t, int, int>> expected_failures;
      auto stages = sweeps_->ListStages(id);
      ASSERT_TRUE(stages.ok());
      std::set<std::string> workers;
      for (const v1::StageRecord& stage : *stages) {
        auto shards = sweeps_->ListShards(id, stage.index());
        ASSERT_TRUE(shards.ok());
        for (const v1::ShardRecord& shard : *shards) {
          ++total;
          switch (shard.state()) {
            case v1::RUNNING: ++running; break;
            case v1::DONE: ++done; break;
            case v1::FAILED: ++failed; break;
            default: ++pending;
          }
          if (shard.errors_size() > 0 || shard.state() == v1::FAILED) {
            expected_failures.insert({shard.shard().stage(), shard.shard().index(),
                                      static_cast<int>(shard.state()), shard.errors_size()});
          }
          for (const std::string& w : shard.leased_to()) workers.insert(w);
        }
      }
      EXPECT_EQ(progress.shards_total(), total);
      EXPECT_EQ(progress.shards_pending(), pending);
      EXPECT_EQ(progress.shards_running(), running);
      EXPECT_EQ(progress.shards_done(), done);
      EXPECT_EQ(progress.shards_failed(), failed);
      std::set<std::tuple<uint32_t, uint32_t, int, int>> failures;
      for (const v1::ShardFailure& f : progress.failures()) {
        failures.insert({f.stage(), f.shard(), static_cast<int>(f.state()), f.errors_size()});
      }
      EXPECT_EQ(failures, expected_failures);
      std::set<std::string> listed;
      for (const v1::WorkerStatus& w : progress.workers()) listed.insert(w.info().id());
      EXPECT_EQ(listed, workers);
    }
    // The metrics gauges agree with the progress of the running sweeps.
    const SchedulerCounters counters = scheduler_->Counters();
    uint64_t pending = 0, running = 0, done = 0, failed = 0;
    for (const auto& [name, id] : ids) {
      const v1::SweepProgress progress = Progress(id);
      if (progress.sweep().state() != v1::RUNNING) continue;
      pending += progress.shards_pending();
      running += progress.shards_running();
      done += progress.shards_done();
      failed += progress.shards_failed();
    }
    EXPECT_EQ(counters.shards_pending, pending) << "step " << step;
    EXPECT_EQ(counters.shards_running, running) << "step " << step;
    EXPECT_EQ(counters.shards_done, done) << "step " << step;
    EXPECT_EQ(counters.shards_failed, failed) << "step " << step;
  };

  for (int step = 0; step < 240 && !HasFailure(); ++step) {
    const size_t action = pick(100);
    const std::string worker = "w" + std::to_string(pick(4));
    if (action < 30) {
      v1::LeaseShardsResponse granted = Lease(worker, 1 + pick(3));
      for (const v1::Lease& lease : granted.leases()) held.emplace_back(worker, lease);
    } else if (action < 42 && !held.empty()) {
      const auto& [w, lease] = held[pick(held.size())];
      Heartbeat(w, {lease.ref()});
    } else if (action < 65 && !held.empty()) {
      const size_t i = pick(held.size());
      (void)Report(ReportRequest(held[i].first, held[i].second));
      held.erase(held.begin() + i);
    } else if (action < 77 && !held.empty()) {
      const size_t i = pick(held.size());
      const bool with_error = pick(2) == 0;
      (void)Release(held[i].first, held[i].second.ref(), with_error ? "CUDA out of memory" : "",
                    v1::ERROR_INTERNAL);
      held.erase(held.begin() + i);
    } else if (action < 87) {
      clock_.Advance(pick(2) == 0 ? kLeaseMs + 1 : kLeaseMs / 3);
      ASSERT_TRUE(scheduler_->ExpireLeases().ok());
    } else if (action < 91) {
      const std::string& id = ids[names[pick(names.size())]];
      (void)scheduler_->Cancel(id);
    } else if (action < 96) {
      const std::string name = names[pick(names.size())];
      auto response = TrySubmit(SpecYaml(name));  // resumes; a stopped sweep runs again
      if (response.ok()) {
        EXPECT_EQ(response->sweep_id(), ids[name]);
      }
    } else {
      Reopen();
    }
    check(step);
  }
}

// A store written before the lease and failure indexes: Open builds them (once) from the shard
// records, and the progress reads the same as before.
TEST_F(SchedulerTest, OpenBuildsTheIndexesOfAnOlderStore) {
  const std::string id = Submit("unit");
  v1::LeaseShardsResponse granted = Lease("w1", 3);
  ASSERT_EQ(granted.leases_size(), 3);
  ASSERT_TRUE(Release("w1", granted.leases(0).ref(), "CUDA out of memory", v1::ERROR_INTERNAL).ok());
  ASSERT_TRUE(Report(ReportRequest("w1", granted.leases(1))).ok());
  const v1::SweepProgress before = Progress(id);
  ASSERT_EQ(before.shards_running(), 1u);
  ASSERT_EQ(before.failures_size(), 1);

  // Take the indexes away, as in a store of the previous build.
  {
    storage::Store::Batch batch;
    for (auto family : {storage::Family::kLeases, storage::Family::kFailures}) {
      auto entries = store_->Scan(family, "");
      ASSERT_TRUE(entries.ok());
      for (const auto& entry : *entries) batch.Delete(family, entry.first);
    }
    batch.Delete(storage::Family::kMeta, "sweep_store.indexes");
    ASSERT_TRUE(store_->Write(batch, /*sync=*/true).ok());
  }
  Reopen();
  const v1::SweepProgress after = Progress(id);
  EXPECT_EQ(after.shards_running(), 1u);
  EXPECT_EQ(after.shards_pending(), before.shards_pending());
  EXPECT_EQ(after.shards_done(), 1u);
  ASSERT_EQ(after.failures_size(), 1);
  EXPECT_EQ(after.failures(0).shard(), granted.leases(0).ref().shard());
  // The rebuilt lease table: the held shard's heartbeat is answered keep.
  v1::HeartbeatResponse beat = Heartbeat("w1", {granted.leases(2).ref()});
  ASSERT_EQ(beat.leases_size(), 1);
  EXPECT_TRUE(beat.leases(0).keep()) << beat.leases(0).reason();
}

}  // namespace
}  // namespace knockout::coordinator
