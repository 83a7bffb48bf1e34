// coordinator_bench: how many shard round trips (LeaseShards + a synced ReportResults) the
// coordinator sustains, and how fast it ingests result rows, with N simulated workers on
// loopback (issue 6). Client and server share this machine's cores, like the measurements in
// build-notes.md.
//
//   coordinator_bench [--workers 8,64,512] [--seconds 5] [--warmup 1] [--rows 64]
//                     [--shards 0] [--dir /tmp] [--json OUT]
//
// --shards N (issue 17): instead, ONE sweep of about N one-trial shards (a config-only model of
// ceil(N / 640) layers x 64 heads, 2 ablations x 5 positions per head), so that the coordinator
// works against a sweep of that size; reported besides: the time to submit (expand) it, the
// p50 / p99 latency of GetSweep (what `knockout status SWEEP` asks, polled every 100 ms by one
// more client meanwhile) and the process's peak RSS.
//
// Per worker count: a fresh store and an in-process coordinator::Server on 127.0.0.1:0; sweeps
// over a config-only 32-layer x 32-head model (the coordinator never loads weights), one trial
// per shard, enough shards that nobody runs dry. Each simulated worker is a thread with its own
// worker id that loops: LeaseShards(capacity 1), then ReportResults with `--rows` result rows for
// the leased trial (fake values; the coordinator commits them like real ones, synced, first
// commit wins). Counted after the warm-up: round trips per second, result rows per second, and
// the p50 / p99 latency of LeaseShards and of ReportResults.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "coordinator/server.h"
#include "coordinator/synthetic_sweep.h"
#include "experiments/spec_inputs.h"
#include "proto/protocol.h"
#include "rpc/channel.h"

namespace {

namespace fs = std::filesystem;
namespace kc = knockout::coordinator;
namespace v1 = knockout::v1;
using Clock = std::chrono::steady_clock;

constexpr int kLayers = 32, kHeads = 32;

// A model directory with only config.json, a prompt set, and a spec whose knockout_sweep has
// layers * heads * 2 ablations * 5 positions one-trial shards (10240 at the default 32 x 32).
std::string MakeInputs(const fs::path& dir, int index, int layers = kLayers, int heads = kHeads) {
  return kc::WriteSyntheticHeadSweep(dir, "bench-" + std::to_string(index), layers, heads);
}

double Percentile(std::vector<double>& values, double q) {
  if (values.empty()) return 0;
  const size_t k = std::min(values.size() - 1, static_cast<size_t>(q * values.size()));
  std::nth_element(values.begin(), values.begin() + k, values.end());
  return values[k];
}

struct Result {
  int workers = 0;
  double seconds = 0;
  uint64_t round_trips = 0, rows = 0, errors = 0;
  double lease_p50 = 0, lease_p99 = 0, report_p50 = 0, report_p99 = 0;
  uint64_t shards = 0;  // --shards: the sweep's shard count
  double submit_s = 0, status_p50 = 0, status_p99 = 0, peak_rss_mb = 0;
};

// Submits one spec (inputs written under `inputs`); exits on error.
void SubmitSpec(kc::Server& server, const fs::path& inputs, const std::string& yaml) {
  v1::SubmitSweepRequest request;
  *request.mutable_version() = knockout::CurrentProtocol();
  request.set_spec_yaml(yaml);
  request.set_spec_label("bench.yaml");
  request.set_base_dir(inputs.string());
  auto read = knockout::experiments::ReadSpecInputs(request.spec_yaml(), "bench.yaml",
                                                    inputs.string());
  if (!read.ok()) {
    std::cerr << "coordinator_bench: " << read.status().ToString() << "\n";
    std::exit(1);
  }
  *request.mutable_inputs() = std::move(*read);
  auto submitted = server.scheduler()->Submit(request);
  if (!submitted.ok()) {
    std::cerr << "coordinator_bench: " << submitted.status().ToString() << "\n";
    std::exit(1);
  }
}

double PeakRssMb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

Result RunOne(int workers, double seconds, double warmup, int rows_per_report, const fs::path& root,
              uint64_t shards) {
  const fs::path dir = root / ("coordinator-bench-" + std::to_string(workers));
  fs::remove_all(dir);
  fs::create_directories(dir);
  kc::ServerOptions options;
  options.store_dir = (dir / "store").string();
  options.listen = "127.0.0.1:0";
  std::ostringstream quiet;
  options.log = &quiet;
  auto server = kc::Server::Start(options);
  if (!server.ok()) {
    std::cerr << "coordinator_bench: " << server.status().ToString() << "\n";
    std::exit(1);
  }
  knockout::rpc::ChannelOptions channel;
  channel.address = (*server)->address();

  Result result;
  std::string sweep_name;
  if (shards > 0) {
    // One sweep of ~`shards` one-trial shards: 64 heads x 10 trials per layer.
    const int layers = static_cast<int>((shards + 639) / 640);
    const fs::path inputs = dir / "inputs-0";
    const auto t0 = Clock::now();
    SubmitSpec(**server, inputs, MakeInputs(inputs, 0, layers, 64));
    result.submit_s = std::chrono::duration<double>(Clock::now() - t0).count();
    result.shards = static_cast<uint64_t>(layers) * 640;
    sweep_name = "bench-0";
  } else {
    // Enough shards for the fastest expected rate (10240 per sweep).
    const double wanted = 8000.0 * (seconds + warmup);
    for (int i = 0; i * 10240.0 < wanted; ++i) {
      const fs::path inputs = dir / ("inputs-" + std::to_string(i));
      SubmitSpec(**server, inputs, MakeInputs(inputs, i));
    }
  }

  // A channel per 8 simulated workers (each its own TCP connection), as separate processes
  // would have.
  std::vector<std::unique_ptr<knockout::rpc::CoordinatorClient>> clients;
  for (int i = 0; i < (workers + 7) / 8; ++i) {
    auto client = knockout::rpc::CoordinatorClient::Connect(channel);
    if (!client.ok()) std::exit(1);
    clients.push_back(std::move(*client));
  }

  std::atomic<bool> measuring{false}, stop{false};
  std::mutex mu;
  result.workers = workers;
  std::vector<double> lease_ms, report_ms;
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      const knockout::rpc::CoordinatorClient& client = *clients[w / 8];
      v1::LeaseShardsRequest lease;
      *lease.mutable_version() = knockout::CurrentProtocol();
      lease.mutable_worker()->set_id("bench-" + std::to_string(w));
      lease.mutable_worker()->set_host("localhost");
      lease.set_capacity(1);
      std::vector<double> my_lease, my_report;
      uint64_t trips = 0, rows = 0, errors = 0;
      while (!stop.load()) {
        const auto t0 = Clock::now();
        v1::LeaseShardsResponse leased;
        auto context = client.MakeContext(std::chrono::seconds(30));
        grpc::Status status = client.stub()->LeaseShards(context.get(), lease, &leased);
        const auto t1 = Clock::now();
        if (!status.ok() || leased.leases_size() == 0) {
          ++errors;
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          continue;
        }
        const v1::Lease& granted = leased.leases(0);
        v1::ReportResultsRequest report;
        *report.mutable_version() = knockout::CurrentProtocol();
        report.set_worker_id(lease.worker().id());
        *report.mutable_lease() = granted.ref();
        v1::ShardResult* shard_result = report.mutable_result();
        shard_result->set_sweep_id(granted.ref().sweep_id());
        shard_result->set_stage(granted.ref().stage());
        shard_result->set_index(granted.ref().shard());
        shard_result->set_seconds(0.001);
        shard_result->set_trials_run(1);
        const uint32_t trial = granted.shard().trials(0).index();
        for (int r = 0; r < rows_per_report; ++r) {
          v1::ResultRow* row = shard_result->add_rows();
          row->set_trial(trial);
          row->set_prompt_set("p");
          row->set_prompt(r);
          (*row->mutable_values())["refusal_score"] = 0.5 + r;
          (*row->mutable_values())["kl"] = 0.01 * r;
        }
        v1::ReportResultsResponse reported;
        auto report_context = client.MakeContext(std::chrono::seconds(30));
        status = client.stub()->ReportResults(report_context.get(), report, &reported);
        const auto t2 = Clock::now();
        if (!status.ok()) {
          ++errors;
          continue;
        }
        if (measuring.load()) {
          ++trips;
          rows += rows_per_report;
          my_lease.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
          my_report.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      result.round_trips += trips;
      result.rows += rows;
      result.errors += errors;
      lease_ms.insert(lease_ms.end(), my_lease.begin(), my_lease.end());
      report_ms.insert(report_ms.end(), my_report.begin(), my_report.end());
    });
  }
  // --shards: one more client polls GetSweep (what `knockout status SWEEP` asks).
  std::vector<double> status_ms;
  std::thread status_thread;
  if (!sweep_name.empty()) {
    status_thread = std::thread([&] {
      auto client = knockout::rpc::CoordinatorClient::Connect(channel);
      if (!client.ok()) return;
      while (!stop.load()) {
        v1::GetSweepRequest request;
        *request.mutable_version() = knockout::CurrentProtocol();
        request.set_sweep(sweep_name);
        v1::SweepProgress progress;
        auto context = (*client)->MakeContext(std::chrono::seconds(30));
        const auto t0 = Clock::now();
        grpc::Status status = (*client)->stub()->GetSweep(context.get(), request, &progress);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (status.ok() && measuring.load()) status_ms.push_back(ms);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(warmup));
  measuring = true;
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  measuring = false;
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  stop = true;
  for (std::thread& thread : threads) thread.join();
  if (status_thread.joinable()) status_thread.join();
  result.status_p50 = Percentile(status_ms, 0.50);
  result.status_p99 = Percentile(status_ms, 0.99);
  result.peak_rss_mb = PeakRssMb();
  result.lease_p50 = Percentile(lease_ms, 0.50);
  result.lease_p99 = Percentile(lease_ms, 0.99);
  result.report_p50 = Percentile(report_ms, 0.50);
  result.report_p99 = Percentile(report_ms, 0.99);
  (*server)->Shutdown();
  server->reset();
  fs::remove_all(dir);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"coordinator_bench: shard round trips and result ingestion on loopback"};
  std::vector<int> worker_counts = {8, 64, 512};
  double seconds = 5, warmup = 1;
  int rows = 64;
  std::string root = fs::temp_directory_path().string(), json_path;
  app.add_option("--workers", worker_counts, "simulated worker counts")->delimiter(',');
  app.add_option("--seconds", seconds, "measured seconds per count");
  app.add_option("--warmup", warmup, "seconds before measuring");
  app.add_option("--rows", rows, "result rows per report");
  app.add_option("--dir", root, "where the temporary stores go");
  app.add_option("--json", json_path, "also write the results as JSON lines");
  uint64_t shards = 0;
  app.add_option("--shards", shards, "one sweep of about this many shards (0: the issue-6 setup)");
  CLI11_PARSE(app, argc, argv);

  std::printf("| simulated workers | round trips/s | result rows/s | lease p50 / p99 (ms) | "
              "report p50 / p99 (ms) | errors |\n|---|---|---|---|---|---|\n");
  std::ofstream json;
  if (!json_path.empty()) json.open(json_path);
  for (int workers : worker_counts) {
    const Result r = RunOne(workers, seconds, warmup, rows, root, shards);
    const double trips = r.round_trips / r.seconds, row_rate = r.rows / r.seconds;
    std::printf("| %d | %.0f | %.0f | %.2f / %.2f | %.2f / %.2f | %llu |\n", workers, trips,
                row_rate, r.lease_p50, r.lease_p99, r.report_p50, r.report_p99,
                static_cast<unsigned long long>(r.errors));
    if (shards > 0) {
      std::printf("|   sweep of %llu shards: submitted (expanded) in %.1f s; GetSweep p50 / p99 %.1f / %.1f ms; "
                  "peak RSS %.0f MB |\n",
                  static_cast<unsigned long long>(r.shards), r.submit_s, r.status_p50, r.status_p99,
                  r.peak_rss_mb);
    }
    std::fflush(stdout);
    if (json.is_open()) {
      json << "{\"workers\": " << workers << ", \"round_trips_per_s\": " << trips
           << ", \"rows_per_s\": " << row_rate << ", \"lease_p50_ms\": " << r.lease_p50
           << ", \"lease_p99_ms\": " << r.lease_p99 << ", \"report_p50_ms\": " << r.report_p50
           << ", \"report_p99_ms\": " << r.report_p99 << ", \"errors\": " << r.errors
           << ", \"shards\": " << r.shards << ", \"submit_s\": " << r.submit_s
           << ", \"status_p50_ms\": " << r.status_p50 << ", \"status_p99_ms\": " << r.status_p99
           << ", \"peak_rss_mb\": " << r.peak_rss_mb << "}\n";
    }
  }
  return 0;
}
