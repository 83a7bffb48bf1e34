// The agent against a fake Coordinator service (gRPC, loopback) that hands out real shards of
// the demo model, expanded by the torch-free engine: lease -> run -> report, report retries,
// riding out an unreachable coordinator, heartbeat drops, release on stop, fatal protocol
// mismatch, executor errors. Timings are short (lease_ms 450: a heartbeat every 150 ms).
#include "worker/agent/agent.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "experiments/checkpoint_info.h"
#include "experiments/engine.h"
#include "experiments/spec.h"
#include "proto/protocol.h"

namespace knockout::agent {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

std::string Source(const std::string& relative) {
  return std::string(KNOCKOUT_SOURCE_DIR) + "/" + relative;
}

// A port nothing listens on (bound once, then closed): where the "unreachable" test starts its
// agent before a coordinator exists.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    close(fd);
    return 0;
  }
  close(fd);
  return ntohs(address.sin_port);
}

// The Coordinator's worker calls, scripted by the test and recorded for it.
class FakeCoordinator final : public v1::Coordinator::Service {
 public:
  // --- script (set before the agent starts, or under mu) -----------------------------------
  std::deque<v1::Shard> pending;
  uint32_t lease_ms = 450;
  uint32_t retry_after_ms = 50;
  int report_unavailable = 0;   // answer this many reports UNAVAILABLE first
  bool drop_on_heartbeat = false;
  bool drop_once_reporting = false;  // keep=false from the first heartbeat after a report came
  bool hold_reports = false;    // reports wait (unanswered) until this is cleared
  grpc::Status lease_error = grpc::Status::OK;

  // --- record ---------------------------------------------------------------------------
  std::mutex mu;
  std::condition_variable changed;
  std::vector<v1::LeaseShardsRequest> lease_requests;
  std::vector<v1::Lease> granted;
  int report_calls = 0;
  std::vector<v1::ReportResultsRequest> reports;  // accepted
  std::vector<v1::HeartbeatRequest> heartbeats;
  int drops_sent = 0;
  std::vector<v1::ReleaseShardRequest> releases;

  template <typename Predicate>
  bool WaitFor(Predicate predicate, milliseconds timeout = milliseconds(15000)) {
    std::unique_lock<std::mutex> lock(mu);
    return changed.wait_for(lock, timeout, [&] { return predicate(); });
  }

  grpc::Status LeaseShards(grpc::ServerContext*, const v1::LeaseShardsRequest* request,
                           v1::LeaseShardsResponse* response) override {
    std::lock_guard<std::mutex> lock(mu);
    lease_requests.push_back(*request);
    changed.notify_all();
    if (!lease_error.ok()) return lease_error;
    response->set_lease_ms(lease_ms);
    const uint32_t capacity = std::max<uint32_t>(1, request->capacity());
    while (!pending.empty() && static_cast<uint32_t>(response->leases_size()) < capacity) {
      v1::Lease* lease = response->add_leases();
      *lease->mutable_shard() = pending.front();
      pending.pop_front();
      lease->mutable_ref()->set_sweep_id(lease->shard().sweep_id());
      lease->mutable_ref()->set_stage(lease->shard().stage());
      lease->mutable_ref()->set_shard(lease->shard().index());
      lease->mutable_ref()->set_attempt(1);
      granted.push_back(*lease);
    }
    if (response->leases_size() == 0) response->set_retry_after_ms(retry_after_ms);
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    std::lock_guard<std::mutex> lock(mu);
    heartbeats.push_back(*request);
    response->set_lease_ms(lease_ms);
    const bool drop = drop_on_heartbeat || (drop_once_reporting && report_calls > 0);
    for (const v1::LeaseRef& ref : request->leases()) {
      v1::LeaseStatus* status = response->add_leases();
      *status->mutable_ref() = ref;
      status->set_keep(!drop);
      if (drop) {
        status->set_reason(drop_on_heartbeat ? "sweep cancelled" : "lease expired");
        ++drops_sent;
      }
    }
    changed.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status ReportResults(grpc::ServerContext* context, const v1::ReportResultsRequest* request,
                             v1::ReportResultsResponse* response) override {
    std::unique_lock<std::mutex> lock(mu);
    ++report_calls;
    changed.notify_all();
    while (hold_reports && !context->IsCancelled()) changed.wait_for(lock, milliseconds(20));
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "fake: cancelled");
    if (report_unavailable > 0) {
      --report_unavailable;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: store busy");
    }
    reports.push_back(*request);
    return grpc::Status::OK;
  }

  grpc::Status ReleaseShard(grpc::ServerContext*, const v1::ReleaseShardRequest* request,
                            v1::ReleaseShardResponse*) override {
    std::lock_guard<std::mutex> lock(mu);
    releases.push_back(*request);
    changed.notify_all();
    return grpc::Status::OK;
  }
};

class FakeServer {
 public:
  // `max_receive_bytes` > 0: gRPC refuses larger requests (RESOURCE_EXHAUSTED), as the
  // coordinator does above its --max-message-mb.
  FakeServer(FakeCoordinator* service, int port, int max_receive_bytes = 0) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(),
                             &port_);
    if (max_receive_bytes > 0) builder.SetMaxReceiveMessageSize(max_receive_bytes);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + milliseconds(500));
  }
  bool ok() const { return server_ != nullptr && port_ > 0; }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// An agent on its own thread, with its stop flag and log.
class RunningAgent {
 public:
  RunningAgent(const std::string& address, AgentOptions options = {}) {
    options.channel.address = address;
    options.stop = &stop_;
    options.log = &log_;
    options.threads = 1;
    options.backoff_min_ms = 50;
    options.backoff_max_ms = 300;
    agent_ = std::make_unique<Agent>(std::move(options));
    thread_ = std::thread([this] {
      status_ = agent_->Run();
      done_ = true;
    });
  }
  ~RunningAgent() { (void)Stop(); }

  // Sets the stop flag and waits for Run to return.
  Status Stop() {
    stop_ = true;
    return Join();
  }
  Status Join() {
    if (thread_.joinable()) thread_.join();
    return status_;
  }
  bool done() const { return done_; }
  // Read only after Run returned (the agent writes it from several threads).
  std::string log() const { return log_.str(); }
  const Agent& agent() const { return *agent_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<bool> done_{false};
  std::ostringstream log_;
  std::unique_ptr<Agent> agent_;
  std::thread thread_;
  Status status_;
};

class AgentTest : public ::testing::Test {
 protected:
  // Shards of a small knockout sweep over the demo model: 4 heads of layer 1, zero-ablated at
  // the post-instruction tokens, 4 harmful prompts, 2 trials per shard.
  static void SetUpTestSuite() {
    const std::string yaml = "name: agent-test\nseed: 1\n"
                             "model: {path: " + Source("models/demo-refusal") +
                             ", dtype: float32, device: cpu}\n"
                             "prompt_sets:\n"
                             "  harmful: {path: " + Source("experiments/prompts/demo/harmful_val.jsonl") +
                             ", limit: 4}\n"
                             "metrics:\n  refusal_tokens: [\"I\"]\n"
                             "shard_trials: 2\nshard_prompts: 4\n"
                             "stages:\n"
                             "  - name: heads\n"
                             "    knockout_sweep:\n"
                             "      prompt_sets: [harmful]\n"
                             "      targets: [{kind: heads, layers: [1], units: [0, 1, 2, 3]}]\n"
                             "      ablations: [zero]\n"
                             "      positions: [post_inst]\n";
    auto parsed = experiments::ParseSpec(yaml, "agent-test.yaml");
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    auto shape = experiments::ReadModelShape(Source("models/demo-refusal"));
    ASSERT_TRUE(shape.ok()) << shape.status().ToString();
    experiments::SweepEngine engine(nullptr, *shape);
    auto shards = engine.Expand(parsed->spec, "agent-test", 0);
    ASSERT_TRUE(shards.ok()) << shards.status().ToString();
    ASSERT_GE(shards->size(), 2u);
    shards_ = new std::vector<v1::Shard>(std::move(*shards));
  }
  static void TearDownTestSuite() { delete shards_; }

  void SetUp() override { ASSERT_NE(shards_, nullptr); }

  // The result's rows are exactly the shard's trials (each with per-prompt and aggregate rows).
  static void ExpectRowsMatch(const v1::Shard& shard, const v1::ShardResult& result) {
    EXPECT_EQ(result.sweep_id(), shard.sweep_id());
    EXPECT_EQ(result.stage(), shard.stage());
    EXPECT_EQ(result.index(), shard.index());
    std::set<uint32_t> trials, reported;
    for (const v1::Trial& trial : shard.trials()) trials.insert(trial.index());
    for (const v1::ResultRow& row : result.rows()) {
      reported.insert(row.trial());
      EXPECT_TRUE(row.values().count("refusal_score")) << "trial " << row.trial();
    }
    EXPECT_EQ(trials, reported);
    EXPECT_GE(result.rows_size(), shard.trials_size() * (shard.prompts_size() + 1));
  }

  static std::vector<v1::Shard>* shards_;
};
std::vector<v1::Shard>* AgentTest::shards_ = nullptr;

TEST(AgentIdTest, WorkerIdsAreUniquePerProcessAndNamed) {
  const std::string a = MakeWorkerId("gpu7");
  const std::string b = MakeWorkerId("gpu7");
  EXPECT_NE(a, b);
  EXPECT_EQ(a.rfind("gpu7-" + std::to_string(getpid()) + "-", 0), 0u) << a;
  EXPECT_FALSE(MakeWorkerId("").empty());
  v1::LeaseRef ref;
  ref.set_sweep_id("s");
  ref.set_stage(2);
  ref.set_shard(5);
  EXPECT_EQ(ShardName(ref), "s/2/5");
}

TEST_F(AgentTest, LeasesRunsAndReportsEveryShardWithOneModel) {
  FakeCoordinator fake;
  for (const v1::Shard& shard : *shards_) fake.pending.push_back(shard);
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  AgentOptions options;
  options.name = "unit";
  RunningAgent agent(server.address(), options);
  ASSERT_TRUE(fake.WaitFor([&] { return fake.reports.size() == shards_->size(); }))
      << "reports: " << fake.reports.size();
  ASSERT_TRUE(agent.Stop().ok());
  const std::string log = agent.log();

  std::lock_guard<std::mutex> lock(fake.mu);
  for (const v1::ReportResultsRequest& report : fake.reports) {
    EXPECT_EQ(report.version().major(), kProtocolMajor);
    EXPECT_EQ(report.worker_id(), agent.agent().worker_id());
    const v1::Shard& shard = (*shards_)[report.lease().shard()];
    ExpectRowsMatch(shard, report.result());
    EXPECT_EQ(report.lease().attempt(), 1u);
  }
  // The first lease asks without a model; later ones name the cached one (affinity).
  ASSERT_GE(fake.lease_requests.size(), shards_->size());
  const v1::LeaseShardsRequest& first = fake.lease_requests.front();
  EXPECT_EQ(first.loaded_model(), "");
  EXPECT_EQ(first.capacity(), 1u);
  EXPECT_EQ(first.worker().id(), agent.agent().worker_id());
  EXPECT_EQ(first.worker().pid(), static_cast<uint32_t>(getpid()));
  EXPECT_EQ(first.worker().threads(), 1u);
  EXPECT_FALSE(first.worker().host().empty());
  EXPECT_EQ(fake.lease_requests.back().loaded_model(), Source("models/demo-refusal"));
  EXPECT_TRUE(fake.releases.empty());  // nothing held at the stop
  // One model load for every shard.
  size_t loads = 0;
  for (size_t at = log.find("loaded model"); at != std::string::npos;
       at = log.find("loaded model", at + 1)) {
    ++loads;
  }
  EXPECT_EQ(loads, 1u) << log;
  EXPECT_NE(log.find("leased agent-test/0/0 attempt 1"), std::string::npos) << log;
  EXPECT_NE(log.find("reported agent-test/0/0 attempt 1"), std::string::npos) << log;
}

TEST_F(AgentTest, HoldsUpToCapacityLeasesAndRunsThemAll) {
  FakeCoordinator fake;
  for (const v1::Shard& shard : *shards_) fake.pending.push_back(shard);
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  AgentOptions options;
  options.capacity = 2;
  RunningAgent agent(server.address(), options);
  ASSERT_TRUE(fake.WaitFor([&] { return fake.reports.size() == shards_->size(); }));
  ASSERT_TRUE(agent.Stop().ok());
  std::lock_guard<std::mutex> lock(fake.mu);
  EXPECT_EQ(fake.lease_requests.front().capacity(), 2u);
  std::set<uint32_t> reported;
  for (const auto& report : fake.reports) reported.insert(report.result().index());
  EXPECT_EQ(reported.size(), shards_->size());
}

TEST_F(AgentTest, RetriesAReportAnsweredUnavailable) {
  FakeCoordinator fake;
  fake.pending.push_back(shards_->front());
  fake.report_unavailable = 1;
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  RunningAgent agent(server.address());
  ASSERT_TRUE(fake.WaitFor([&] { return fake.reports.size() == 1; }));
  ASSERT_TRUE(agent.Stop().ok());
  std::lock_guard<std::mutex> lock(fake.mu);
  EXPECT_EQ(fake.report_calls, 2);
  ExpectRowsMatch(shards_->front(), fake.reports.front().result());
  EXPECT_NE(agent.log().find("unreachable, retrying"), std::string::npos) << agent.log();
}

TEST_F(AgentTest, KeepsRetryingUntilTheCoordinatorComesUp) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  RunningAgent agent("127.0.0.1:" + std::to_string(port));
  std::this_thread::sleep_for(milliseconds(1200));  // several backoff rounds against nothing
  EXPECT_FALSE(agent.done());

  FakeCoordinator fake;
  fake.pending.push_back(shards_->front());
  FakeServer server(&fake, port);
  ASSERT_TRUE(server.ok()) << "port " << port << " was taken meanwhile";
  ASSERT_TRUE(fake.WaitFor([&] { return fake.reports.size() == 1; }, milliseconds(20000)));
  ASSERT_TRUE(agent.Stop().ok());
  const std::string log = agent.log();
  // Logged once per outage, however many retries it took.
  const size_t first = log.find("unreachable, retrying");
  ASSERT_NE(first, std::string::npos) << log;
  EXPECT_EQ(log.find("unreachable, retrying", first + 1), std::string::npos) << log;
  EXPECT_NE(log.find("reachable again"), std::string::npos) << log;
  std::lock_guard<std::mutex> lock(fake.mu);
  ExpectRowsMatch(shards_->front(), fake.reports.front().result());
}

TEST_F(AgentTest, ALeaseDroppedByAHeartbeatIsNotReported) {
  FakeCoordinator fake;
  fake.pending.push_back(shards_->front());
  fake.drop_on_heartbeat = true;
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  AgentOptions options;
  // Hold the shard "executing" until a heartbeat has told the agent to drop it.
  options.before_run = [&](const v1::Shard&) {
    fake.WaitFor([&] { return fake.drops_sent > 0; });
  };
  RunningAgent agent(server.address(), options);
  ASSERT_TRUE(fake.WaitFor([&] { return fake.drops_sent > 0; }));
  // The shard runs to its end; then the agent leases again (the fake has nothing left).
  ASSERT_TRUE(fake.WaitFor([&] { return fake.lease_requests.size() >= 2; }));
  ASSERT_TRUE(agent.Stop().ok());
  std::lock_guard<std::mutex> lock(fake.mu);
  // The heartbeat carried the lease held; after the drop it is no longer heartbeated.
  ASSERT_FALSE(fake.heartbeats.empty());
  EXPECT_EQ(fake.heartbeats[0].worker_id(), agent.agent().worker_id());
  ASSERT_EQ(fake.heartbeats[0].leases_size(), 1);
  EXPECT_EQ(fake.heartbeats[0].leases(0).SerializeAsString(),
            fake.granted[0].ref().SerializeAsString());
  for (const v1::HeartbeatRequest& heartbeat : fake.heartbeats) EXPECT_LE(heartbeat.leases_size(), 1);
  EXPECT_EQ(fake.report_calls, 0);
  EXPECT_TRUE(fake.releases.empty());  // a dropped lease is not the worker's to give back
  EXPECT_NE(agent.log().find("sweep cancelled"), std::string::npos) << agent.log();
}

// Holds a shard "executing" (AgentOptions::before_run) until opened.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false;
  bool open = false;
  void Enter() {
    std::unique_lock<std::mutex> lock(mu);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  }
  bool WaitEntered() {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, seconds(15), [&] { return entered; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
};

// Opens the gate when it leaves scope, before the agent that waits on it is destroyed.
struct OpenOnExit {
  std::shared_ptr<Gate> gate;
  ~OpenOnExit() { gate->Open(); }
};

TEST_F(AgentTest, AResultBeingReportedIsDeliveredDespiteALaterDrop) {
  FakeCoordinator fake;
  fake.pending.push_back(shards_->front());
  fake.report_unavailable = 1000;  // "down" for reports until the drop has been sent
  fake.drop_once_reporting = true;
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  RunningAgent agent(server.address());
  ASSERT_TRUE(fake.WaitFor([&] { return fake.drops_sent > 0; }));
  {
    std::lock_guard<std::mutex> lock(fake.mu);
    fake.report_unavailable = 0;
  }
  ASSERT_TRUE(fake.WaitFor([&] { return fake.reports.size() == 1; }));
  ASSERT_TRUE(agent.Stop().ok());
  std::lock_guard<std::mutex> lock(fake.mu);
  ExpectRowsMatch(shards_->front(), fake.reports.front().result());
  EXPECT_TRUE(fake.releases.empty());
}

TEST_F(AgentTest, StopReleasesTheHeldLeaseWithoutWaitingForTheShard) {
  FakeCoordinator fake;
  fake.pending.push_back(shards_->front());
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  auto gate = std::make_shared<Gate>();
  AgentOptions options;
  options.before_run = [gate](const v1::Shard&) { gate->Enter(); };
  RunningAgent agent(server.address(), options);
  OpenOnExit open_on_exit{gate};
  ASSERT_TRUE(gate->WaitEntered());
  // Run returns while the shard is still "executing".
  EXPECT_TRUE(agent.Stop().ok());
  std::lock_guard<std::mutex> lock(fake.mu);
  ASSERT_EQ(fake.releases.size(), 1u);
  EXPECT_EQ(fake.releases[0].error(), "");
  EXPECT_EQ(fake.releases[0].lease().SerializeAsString(), fake.granted[0].ref().SerializeAsString());
  EXPECT_EQ(fake.releases[0].worker_id(), agent.agent().worker_id());
  EXPECT_EQ(fake.report_calls, 0);
  EXPECT_NE(agent.log().find("released agent-test/0/0 attempt 1 (stopping)"), std::string::npos)
      << agent.log();
}

TEST_F(AgentTest, AProtocolMismatchIsFatal) {
  FakeCoordinator fake;
  fake.lease_error = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                  "worker speaks knockout protocol 1.0, this coordinator speaks "
                                  "2.0; run the same knockout version on both sides");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  RunningAgent agent(server.address());
  const Status status = agent.Join();  // no stop: it must end by itself
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status.ToString();
  EXPECT_NE(status.message().find("this coordinator speaks 2.0"), std::string::npos)
      << status.ToString();
}

TEST_F(AgentTest, ARefusedTokenIsFatal) {
  FakeCoordinator fake;
  fake.lease_error = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad bearer token");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  RunningAgent agent(server.address());
  const Status status = agent.Join();
  EXPECT_EQ(status.code(), StatusCode::kUnauthenticated) << status.ToString();
}

TEST_F(AgentTest, AShardThatFailsIsReleasedWithItsError) {
  FakeCoordinator fake;
  v1::Shard broken = shards_->front();
  ASSERT_GT(broken.trials(0).edits_size(), 0);
  broken.mutable_trials(0)->mutable_edits(0)->set_hook("blocks.99.attn.hook_z");
  fake.pending.push_back(broken);
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  RunningAgent agent(server.address());
  ASSERT_TRUE(fake.WaitFor([&] { return !fake.releases.empty(); }));
  ASSERT_TRUE(agent.Stop().ok());
  std::lock_guard<std::mutex> lock(fake.mu);
  ASSERT_EQ(fake.releases.size(), 1u);
  EXPECT_NE(fake.releases[0].error(), "");
  EXPECT_NE(fake.releases[0].error().find("blocks.99"), std::string::npos)
      << fake.releases[0].error();
  // The executor's code travels with the text (executor.h: InvalidArgument for an unknown
  // hook), so that the coordinator fails the shard at once instead of retrying it.
  EXPECT_EQ(fake.releases[0].code(), v1::ERROR_INVALID_ARGUMENT) << fake.releases[0].error();
  EXPECT_EQ(fake.report_calls, 0);
}

TEST(DeviceLostTest, CudaErrorsButNotOutOfMemory) {
  EXPECT_TRUE(IsDeviceLost(Status::Internal(
      "forward pass failed in LibTorch: CUDA error: an illegal memory access was encountered")));
  EXPECT_TRUE(IsDeviceLost(Status::Internal("CUBLAS_STATUS_EXECUTION_FAILED when calling gemm")));
  EXPECT_TRUE(IsDeviceLost(Status::InvalidArgument("no CUDA GPUs are available")));
  EXPECT_FALSE(IsDeviceLost(Status::Internal("CUDA out of memory. Tried to allocate 2.00 GiB")));
  EXPECT_FALSE(IsDeviceLost(Status::InvalidArgument("blocks.99.attn.hook_z: out of range")));
  EXPECT_FALSE(IsDeviceLost(Status::Ok()));
}

// A worker whose device is gone (a CUDA error) gives back the failed shard with its error and
// every other lease it holds, and Run returns Unavailable: the process exits non-zero so that
// its supervisor restarts it. Out of memory stays an ordinary shard failure.
TEST_F(AgentTest, ALostDeviceReleasesEveryShardAndEndsTheWorker) {
  FakeCoordinator fake;
  for (const v1::Shard& shard : *shards_) fake.pending.push_back(shard);
  ASSERT_GE(shards_->size(), 2u);
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  AgentOptions options;
  options.capacity = 2;
  std::atomic<int> runs{0};
  options.fail_run = [&](const v1::Shard&) {
    ++runs;
    return Status::Internal("forward pass failed in LibTorch: CUDA error: unspecified launch failure");
  };
  RunningAgent agent(server.address(), options);
  const Status status = agent.Join();  // no stop: the agent ends by itself
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find("device lost"), std::string::npos) << status.ToString();
  EXPECT_EQ(runs.load(), 1) << "nothing runs after the device is lost";
  std::lock_guard<std::mutex> lock(fake.mu);
  ASSERT_EQ(fake.releases.size(), 2u) << agent.log();
  EXPECT_NE(fake.releases[0].error().find("unspecified launch failure"), std::string::npos);
  EXPECT_EQ(fake.reports.size(), 0u);

  // Out of memory: released with its error, and the worker goes on (stopped by the test).
  FakeCoordinator oom_fake;
  oom_fake.pending.push_back(shards_->front());
  FakeServer oom_server(&oom_fake, 0);
  ASSERT_TRUE(oom_server.ok());
  AgentOptions oom_options;
  oom_options.fail_run = [](const v1::Shard&) {
    return Status::Internal("CUDA out of memory. Tried to allocate 20.00 GiB");
  };
  RunningAgent oom_agent(oom_server.address(), oom_options);
  ASSERT_TRUE(oom_fake.WaitFor([&] { return !oom_fake.releases.empty(); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(oom_agent.done());
  EXPECT_TRUE(oom_agent.Stop().ok());
}

TEST_F(AgentTest, AShardPastTheDeadlineIsGivenBackAndItsResultNotReported) {
  FakeCoordinator fake;
  fake.pending.push_back(shards_->front());
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  auto gate = std::make_shared<Gate>();
  AgentOptions options;
  options.shard_timeout_s = 0.3;
  // The shard "executes" until the gate opens, well past its deadline.
  options.before_run = [gate](const v1::Shard&) { gate->Enter(); };
  RunningAgent agent(server.address(), options);
  OpenOnExit open_on_exit{gate};
  ASSERT_TRUE(gate->WaitEntered());
  const auto entered = std::chrono::steady_clock::now();
  // Released while the shard still runs (the old agent held it through heartbeats forever).
  ASSERT_TRUE(fake.WaitFor([&] { return !fake.releases.empty(); }, seconds(5)));
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - entered).count();
  EXPECT_GE(waited, 0.25);
  size_t heartbeats_at_release = 0;
  {
    std::lock_guard<std::mutex> lock(fake.mu);
    ASSERT_EQ(fake.releases.size(), 1u);
    EXPECT_EQ(fake.releases[0].code(), v1::ERROR_DEADLINE_EXCEEDED);
    EXPECT_NE(fake.releases[0].error().find("--shard-timeout of 0.3 s"), std::string::npos)
        << fake.releases[0].error();
    EXPECT_EQ(fake.releases[0].lease().SerializeAsString(),
              fake.granted[0].ref().SerializeAsString());
    heartbeats_at_release = fake.heartbeats.size();
  }
  // Three heartbeat periods (lease_ms 450 / 3) with the shard still running: the lease is no
  // longer renewed (a heartbeat already in flight at the release may still carry it).
  std::this_thread::sleep_for(milliseconds(500));
  {
    std::lock_guard<std::mutex> lock(fake.mu);
    for (size_t i = heartbeats_at_release + 1; i < fake.heartbeats.size(); ++i) {
      EXPECT_EQ(fake.heartbeats[i].leases_size(), 0) << "heartbeat " << i;
    }
  }
  // The shard ends (the executor may stop early or run to its end): nothing is reported, and
  // the worker asks for work again.
  gate->Open();
  const size_t leases_before = [&] {
    std::lock_guard<std::mutex> lock(fake.mu);
    return fake.lease_requests.size();
  }();
  ASSERT_TRUE(fake.WaitFor([&] { return fake.lease_requests.size() > leases_before; }));
  ASSERT_TRUE(agent.Stop().ok());
  std::lock_guard<std::mutex> lock(fake.mu);
  EXPECT_EQ(fake.report_calls, 0);
  EXPECT_EQ(fake.releases.size(), 1u);  // not released again at the stop
  EXPECT_NE(agent.log().find("not reporting agent-test/0/0 attempt 1 (shard ran longer"),
            std::string::npos)
      << agent.log();
}

TEST_F(AgentTest, AReportTooLargeForTheCoordinatorReleasesTheShardWithTheCause) {
  FakeCoordinator fake;
  fake.pending.push_back(shards_->front());
  // Room for leases, heartbeats and releases, not for a report of the shard's rows.
  constexpr int kLimit = 1024;
  FakeServer server(&fake, 0, kLimit);
  ASSERT_TRUE(server.ok());
  RunningAgent agent(server.address());
  ASSERT_TRUE(fake.WaitFor([&] { return !fake.releases.empty(); }));
  ASSERT_TRUE(agent.Stop().ok());
  std::lock_guard<std::mutex> lock(fake.mu);
  EXPECT_TRUE(fake.reports.empty());
  EXPECT_EQ(fake.report_calls, 0);  // refused by gRPC before the service saw it
  ASSERT_EQ(fake.releases.size(), 1u);
  const v1::ReleaseShardRequest& release = fake.releases[0];
  // The old agent logged the refusal and dropped the result: the shard's history got only
  // "lease expired". Now the release names the size and gRPC's limit, with a code the
  // coordinator does not retry (RESOURCE_EXHAUSTED reads as InvalidArgument: rpc/channel.h).
  EXPECT_EQ(release.code(), v1::ERROR_INVALID_ARGUMENT) << release.error();
  EXPECT_NE(release.error().find("not accepted (a report of "), std::string::npos)
      << release.error();
  EXPECT_NE(release.error().find(std::to_string(kLimit)), std::string::npos) << release.error();
  EXPECT_EQ(release.lease().SerializeAsString(), fake.granted[0].ref().SerializeAsString());
}

// knockout-worker as the CLI runs it: a child process, stopped by SIGTERM.
class WorkerProcess {
 public:
  WorkerProcess(const std::string& address, const std::string& name) {
    stderr_path_ = ::testing::TempDir() + "agent_test_" + name + "_" + std::to_string(getpid()) + ".log";
    std::vector<std::string> args = {KNOCKOUT_WORKER_BINARY, "--coordinator", address,
                                     "--threads", "1", "--name", name};
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    const int fd = open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_ = fork();
    if (pid_ == 0) {  // only async-signal-safe calls until exec
      dup2(fd, 2);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fd);
  }
  ~WorkerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    unlink(stderr_path_.c_str());
  }
  void Signal(int signal) { kill(pid_, signal); }
  // The exit status, or -1 if it did not exit within `timeout`.
  int Wait(milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
    return -1;
  }
  std::string Stderr() const {
    std::ifstream in(stderr_path_);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string stderr_path_;
};

TEST_F(AgentTest, TheWorkerProcessReleasesAndExitsZeroOnSigterm) {
  FakeCoordinator fake;
  fake.pending.push_back(shards_->front());
  fake.hold_reports = true;  // the shard is done, its report unanswered: the lease is held
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  WorkerProcess worker(server.address(), "proc");
  ASSERT_TRUE(fake.WaitFor([&] { return fake.report_calls > 0; }, milliseconds(20000)))
      << worker.Stderr();
  const auto start = std::chrono::steady_clock::now();
  worker.Signal(SIGTERM);
  const int code = worker.Wait(milliseconds(10000));
  const double seconds_to_exit =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  {
    std::lock_guard<std::mutex> lock(fake.mu);
    fake.hold_reports = false;
  }
  const std::string log = worker.Stderr();
  EXPECT_EQ(code, 0) << log;
  EXPECT_LT(seconds_to_exit, 3.0) << log;
  std::lock_guard<std::mutex> lock(fake.mu);
  ASSERT_EQ(fake.releases.size(), 1u) << log;
  EXPECT_EQ(fake.releases[0].error(), "");
  EXPECT_TRUE(fake.reports.empty());
  EXPECT_NE(log.find("leased agent-test/0/0 attempt 1"), std::string::npos) << log;
  EXPECT_NE(log.find("released agent-test/0/0 attempt 1 (stopping)"), std::string::npos) << log;
}

TEST_F(AgentTest, TheWorkerProcessExitsOneWithOneLineOnAFatalError) {
  FakeCoordinator fake;
  fake.lease_error = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                  "worker speaks knockout protocol 1.0, this coordinator speaks 2.0");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  WorkerProcess worker(server.address(), "fatal");
  const int code = worker.Wait(milliseconds(20000));
  const std::string log = worker.Stderr();
  EXPECT_EQ(code, 1) << log;
  // The last line is the error, for the parent to show.
  std::string last;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) last = line;
  }
  EXPECT_EQ(last.rfind("knockout-worker: FailedPrecondition: LeaseShards: worker speaks knockout "
                       "protocol 1.0",
                       0),
            0u)
      << log;
}

}  // namespace
}  // namespace knockout::agent
