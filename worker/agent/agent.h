// The worker agent: the pull loop of a knockout-worker process. It leases shards from the
// coordinator, runs them on one cached model (executor.h), heartbeats the leases it holds on a
// Boost.Asio timer, reports results, releases what it cannot finish (with the error's code, so
// that the coordinator can tell an error that would repeat from a transient one) or what runs
// past the shard deadline, and rides out coordinator outages with exponential backoff.
// Torch-free header: the executor stays behind agent.cc.
//
// Thread-safety: one Agent is driven by one thread (Run). Internally it owns an executor thread
// (shards block it) and a heartbeat thread; `options.stop` may be set from anywhere, including a
// signal handler (it is only read).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "common/status.h"
#include "knockout/v1/sweep.pb.h"
#include "rpc/channel.h"

namespace knockout::agent {

struct AgentOptions {
  rpc::ChannelOptions channel;
  // Overrides ModelRef.device of every shard (cpu, cuda, cuda:N): the machine a scheduler placed
  // the worker on decides, not the spec. "": as the shard's model says.
  std::string device;
  int threads = 0;               // LibTorch CPU threads; 0: all cores
  int64_t max_batch_rows = 128;  // ExecutorOptions::max_batch_rows
  uint32_t capacity = 1;         // leases held at once (run one after another)
  uint32_t backoff_min_ms = 100;   // coordinator unreachable: first wait...
  uint32_t backoff_max_ms = 5000;  // ...doubling up to this, with jitter
  std::string name;              // prefix of the worker id; "": the host name
  // A shard that runs longer than this (from when the executor takes it up, model load
  // included) is given back with a DeadlineExceeded error, which the coordinator retries: its
  // lease is no longer renewed, the executor is asked to stop, and a result that comes after
  // the deadline is not reported. 0: no limit. (knockout-worker --shard-timeout)
  double shard_timeout_s = 6 * 3600;
  // Set (e.g. by SIGTERM) to stop: Run releases every held lease and returns OK without waiting
  // for a shard still executing. Never written by the agent.
  const std::atomic<bool>* stop = nullptr;
  std::ostream* log = nullptr;  // one line per event; nullptr: silent
  // Tests only: called on the executor thread before each shard runs (model loaded), so a test
  // can hold a shard "executing" for as long as it needs.
  std::function<void(const v1::Shard&)> before_run;
  // Tests only: an error returned here is the shard's error instead of running it (e.g. a CUDA
  // error, which no CPU machine can produce).
  std::function<Status(const v1::Shard&)> fail_run;
};

// Whether a shard's error says the worker's device is gone or broken (a CUDA, cuBLAS or cuDNN
// error other than running out of memory; no GPU left): nothing on this device will succeed
// again, so the agent releases its shards with the error and Run returns Unavailable, and the
// worker process exits non-zero for its supervisor (Slurm, Kubernetes) to restart it.
bool IsDeviceLost(const Status& error);

// A worker id unique per process: "<name or host>-<pid>-<6 random hex digits>".
std::string MakeWorkerId(const std::string& name);

// "sweep/stage/shard", how the log names a lease's shard.
std::string ShardName(const v1::LeaseRef& ref);

class Agent {
 public:
  explicit Agent(AgentOptions options);
  // Waits for a shard still executing (a process that must exit at once calls std::_Exit
  // instead of destroying its Agent).
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Runs the loop until `options.stop` is set (returns OK after releasing the held leases) or a
  // fatal error: the coordinator refuses this worker's protocol version (FailedPrecondition) or
  // its token (Unauthenticated), with the coordinator's message; a token or PEM file that cannot
  // be read (NotFound / InvalidArgument naming it). An unreachable coordinator is never fatal.
  // Call once.
  Status Run();

  const std::string& worker_id() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace knockout::agent
