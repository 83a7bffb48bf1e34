#include "worker/agent/agent.h"

#include <ATen/Parallel.h>
#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>
#include <absl/time/time.h>
#include <google/protobuf/util/message_differencer.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cmath>
#include <deque>
#include <iomanip>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "common/fault_points.h"
#include "proto/protocol.h"
#include "worker/executor/executor.h"

namespace knockout::agent {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Deadlines of the calls. A lease or release is a few small RocksDB writes; a report is a synced
// write of many rows (and may queue behind other workers' group commits), hence the longer one.
// A deadline that passes reads like an outage: the call is retried with backoff.
constexpr milliseconds kLeaseTimeout{5000};
constexpr milliseconds kReportTimeout{60000};
constexpr milliseconds kReleaseTimeout{5000};
// On stop, every held lease is released within this budget in total: returning promptly matters
// more than the release, since an unreleased lease only expires a little later.
constexpr milliseconds kStopReleaseBudget{3000};
// Before the first LeaseShardsResponse names the lease length.
constexpr uint32_t kDefaultLeaseMs = 30000;
// Nothing granted and the coordinator gave no retry_after_ms.
constexpr uint32_t kDefaultRetryAfterMs = 1000;
// How often a waiting loop looks at the stop flag (a signal handler cannot notify a condition
// variable, so the flag is polled).
constexpr milliseconds kStopPoll{50};
// After a stop, calls still in flight this long are cancelled (WatchStop).
constexpr milliseconds kStopCancelGrace{500};

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string HostName() {
  char buffer[256] = {};
  if (gethostname(buffer, sizeof(buffer) - 1) != 0 || buffer[0] == '\0') return "localhost";
  return buffer;
}

}  // namespace

bool IsDeviceLost(const Status& error) {
  if (error.ok()) return false;
  const std::string& m = error.message();
  auto has = [&](const char* text) { return m.find(text) != std::string::npos; };
  if (has("out of memory")) return false;  // the next shard may fit: an ordinary failure
  return has("CUDA error") || has("CUDA driver error") || has("cudaError") ||
         has("CUBLAS_STATUS") || has("CUDNN_STATUS") || has("no CUDA GPUs are available") ||
         has("device-side assert");
}

namespace {

std::string LeaseKey(const v1::LeaseRef& ref) {
  return ShardName(ref) + "#" + std::to_string(ref.attempt());
}

// Unavailable and DeadlineExceeded mean "nobody answered": retried with backoff; so does
// Cancelled, which a worker that is not stopping gets from a coordinator shutting down with the
// call in flight. A protocol mismatch or a refused token will not change by retrying: fatal.
// Anything else is the coordinator's answer about this one call.
enum class Outcome { kOk, kUnreachable, kFatal, kRejected };

Outcome Classify(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return Outcome::kOk;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
      return Outcome::kUnreachable;
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::UNAUTHENTICATED:
      return Outcome::kFatal;
    default:
      return Outcome::kRejected;
  }
}

// Exponential backoff with jitter: the n-th wait is drawn from [b/2, b], b = min * 2^n capped at
// max, so that a fleet of workers does not hammer a coordinator that just came back in lockstep.
class Backoff {
 public:
  Backoff(uint32_t min_ms, uint32_t max_ms)
      : min_ms_(std::max<uint32_t>(1, min_ms)), max_ms_(std::max(max_ms, min_ms_)),
        rng_(std::random_device{}()) {}

  milliseconds Next() {
    const double base =
        std::min<double>(max_ms_, static_cast<double>(min_ms_) * std::pow(2.0, std::min(attempt_, 30)));
    ++attempt_;
    std::uniform_real_distribution<double> jitter(base / 2, base);
    return milliseconds(static_cast<int64_t>(std::max<double>(min_ms_, jitter(rng_))));
  }
  void Reset() { attempt_ = 0; }

 private:
  uint32_t min_ms_, max_ms_;
  int attempt_ = 0;
  std::mt19937 rng_;
};

// Whole lines to the log from several threads.
class Logger {
 public:
  Logger(std::ostream* out, std::string prefix) : out_(out), prefix_(std::move(prefix)) {}
  void Line(const std::string& text) ABSL_LOCKS_EXCLUDED(mu_) {
    if (!out_) return;
    absl::MutexLock lock(&mu_);
    *out_ << prefix_ << text << std::endl;
  }

 private:
  absl::Mutex mu_;
  std::ostream* const out_ ABSL_PT_GUARDED_BY(mu_);
  const std::string prefix_;
};

std::string FormatSeconds(double seconds) {
  std::ostringstream text;
  text << std::fixed << std::setprecision(2) << seconds << " s";
  return text.str();
}

}  // namespace

std::string MakeWorkerId(const std::string& name) {
  std::random_device device;
  std::ostringstream id;
  id << (name.empty() ? HostName() : name) << "-" << getpid() << "-" << std::hex
     << std::setfill('0') << std::setw(6) << (device() & 0xffffff);
  return id.str();
}

std::string ShardName(const v1::LeaseRef& ref) {
  return ref.sweep_id() + "/" + std::to_string(ref.stage()) + "/" + std::to_string(ref.shard());
}

class Agent::Impl {
 public:
  explicit Impl(AgentOptions options)
      : options_(std::move(options)),
        worker_id_(MakeWorkerId(options_.name)),
        host_(HostName()),
        threads_(options_.threads > 0
                     ? options_.threads
                     : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))),
        log_(options_.log, "worker " + worker_id_ + ": "),
        backoff_(options_.backoff_min_ms, options_.backoff_max_ms),
        heartbeat_timer_(io_),
        stop_watch_timer_(io_) {}

  ~Impl() {
    StopBackgroundCalls();
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
      jobs_cv_.SignalAll();
    }
    if (executor_thread_.joinable()) executor_thread_.join();
  }

  const std::string& worker_id() const { return worker_id_; }

  Status Run() {
    KO_ASSIGN_OR_RETURN(client_, rpc::CoordinatorClient::Connect(options_.channel));
    log_.Line("started on " + host_ + " (pid " + std::to_string(getpid()) + ", device " +
              (options_.device.empty() ? "from the sweep" : options_.device) + ", threads " +
              std::to_string(threads_) + ", capacity " +
              std::to_string(std::max<uint32_t>(1, options_.capacity)) + "), coordinator " +
              client_->address());
    executor_thread_ = std::thread([this] { ExecutorLoop(); });
    StartBackgroundCalls();
    Status status = Loop();
    StopBackgroundCalls();
    // After a lost device the other held leases go back too: this worker will run nothing more.
    if (status.ok() || device_lost_) ReleaseAllHeld();
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;  // the executor thread ends after the shard it is running, if any
      jobs_cv_.SignalAll();
    }
    log_.Line(status.ok() ? "stopped" : "fatal: " + status.ToString());
    return status;
  }

 private:
  struct HeldLease {
    v1::Lease lease;
    bool dropped = false;  // the coordinator said keep=false: never report its result
    std::string reason;
    // When the executor took it up; while it executes past options.shard_timeout_s from then,
    // it is overdue.
    std::optional<Clock::time_point> started;
    bool executing = false;
    bool timed_out = false;  // overdue: given back (not renewed), its result never reported
  };
  struct Finished {
    std::string key;
    bool skipped = false;  // dropped before it ran
    Status error;
    v1::ShardResult result;
    Clock::time_point at;  // when the executor was done with it
  };
  enum class Settled { kDone, kStopped };

  bool Stopping() const { return options_.stop && options_.stop->load(); }

  // Whether a shard started at `started` has run longer than options.shard_timeout_s at `at`.
  bool PastTimeout(const std::optional<Clock::time_point>& started, Clock::time_point at) const {
    return options_.shard_timeout_s > 0 && started &&
           std::chrono::duration<double>(at - *started).count() > options_.shard_timeout_s;
  }
  // Whether `held` is still executing past its deadline at `now`.
  bool Overdue(const HeldLease& held, Clock::time_point now) const {
    return held.executing && PastTimeout(held.started, now);
  }

  std::string TimeoutText() const {
    std::ostringstream text;
    text << "shard ran longer than the worker's --shard-timeout of " << options_.shard_timeout_s
         << " s";
    return text.str();
  }

  // --- the main loop ------------------------------------------------------------------------

  Status Loop() {
    const uint32_t capacity = std::max<uint32_t>(1, options_.capacity);
    Clock::time_point next_lease = Clock::now();
    for (;;) {
      if (Stopping()) return Status::Ok();
      KO_RETURN_IF_ERROR(ReleaseOverdue());
      if (std::optional<Finished> finished = PopFinished()) {
        KO_RETURN_IF_ERROR(Settle(*finished));
        continue;
      }
      const size_t held = HeldCount();
      if (held < capacity && Clock::now() >= next_lease) {
        milliseconds wait{0};
        KO_RETURN_IF_ERROR(LeaseMore(capacity - static_cast<uint32_t>(held), &wait));
        next_lease = Clock::now() + wait;
        continue;
      }
      Clock::time_point until = Clock::now() + kStopPoll;
      if (held < capacity) until = std::min(until, next_lease);
      absl::MutexLock lock(&mu_);
      for (Clock::time_point now = Clock::now(); finished_.empty() && now < until;
           now = Clock::now()) {
        finished_cv_.WaitWithTimeout(&mu_, absl::FromChrono(until - now));
      }
    }
  }

  size_t HeldCount() {
    absl::MutexLock lock(&mu_);
    return held_.size();
  }

  std::optional<Finished> PopFinished() {
    absl::MutexLock lock(&mu_);
    if (finished_.empty()) return std::nullopt;
    Finished finished = std::move(finished_.front());
    finished_.pop_front();
    return finished;
  }

  // Waits `duration` unless the stop flag is set first.
  void SleepUnlessStopped(milliseconds duration) {
    const Clock::time_point until = Clock::now() + duration;
    while (!Stopping() && Clock::now() < until) {
      std::this_thread::sleep_for(std::min<Clock::duration>(kStopPoll, until - Clock::now()));
    }
  }

  // One synchronous call with a fresh context; the stop watcher cancels it when the stop flag
  // is set, so that a call into an unresponsive coordinator never delays a stop.
  template <typename Invoke>
  grpc::Status Call(milliseconds timeout, Invoke invoke) {
    std::unique_ptr<grpc::ClientContext> context = client_->MakeContext(timeout);
    {
      absl::MutexLock lock(&calls_mu_);
      calls_.insert(context.get());
    }
    grpc::Status status = invoke(context.get());
    {
      absl::MutexLock lock(&calls_mu_);
      calls_.erase(context.get());
    }
    return status;
  }

  void NoteUnreachable(const grpc::Status& status, const char* what) {
    if (unreachable_) return;
    unreachable_ = true;
    outage_start_ = Clock::now();
    log_.Line("coordinator " + client_->address() + " unreachable, retrying (" +
              rpc::FromGrpc(status, what).ToString() + ")");
  }

  void NoteReachable() {
    backoff_.Reset();
    if (!unreachable_) return;
    unreachable_ = false;
    log_.Line("coordinator " + client_->address() + " reachable again after " +
              FormatSeconds(SecondsSince(outage_start_)));
  }

  v1::WorkerInfo Info() {
    v1::WorkerInfo info;
    info.set_id(worker_id_);
    info.set_host(host_);
    info.set_pid(static_cast<uint32_t>(getpid()));
    absl::MutexLock lock(&mu_);
    info.set_device(!options_.device.empty() ? options_.device
                    : !loaded_device_.empty() ? loaded_device_
                                              : "cpu");
    info.set_threads(static_cast<uint32_t>(threads_));
    return info;
  }

  // Asks for `want` more shards. `*wait` is how long to wait before asking again.
  Status LeaseMore(uint32_t want, milliseconds* wait) {
    v1::LeaseShardsRequest request;
    *request.mutable_version() = CurrentProtocol();
    *request.mutable_worker() = Info();
    request.set_capacity(want);
    {
      absl::MutexLock lock(&mu_);
      request.set_loaded_model(loaded_model_);
    }
    v1::LeaseShardsResponse response;
    const grpc::Status status = Call(kLeaseTimeout, [&](grpc::ClientContext* context) {
      return client_->stub()->LeaseShards(context, request, &response);
    });
    // Leases granted just as the stop came are still recorded: the stop releases them.
    if (Stopping() && !status.ok()) return Status::Ok();
    switch (Classify(status)) {
      case Outcome::kUnreachable:
        NoteUnreachable(status, "LeaseShards");
        *wait = backoff_.Next();
        return Status::Ok();
      case Outcome::kFatal:
        return rpc::FromGrpc(status, "LeaseShards");
      case Outcome::kRejected:
        // The coordinator answered but could not lease (e.g. a store error): not this worker's
        // to fix, so it keeps asking, slowly.
        log_.Line("LeaseShards failed, retrying: " + rpc::FromGrpc(status, "LeaseShards").ToString());
        *wait = backoff_.Next();
        return Status::Ok();
      case Outcome::kOk:
        break;
    }
    NoteReachable();
    if (response.lease_ms() > 0) lease_ms_ = response.lease_ms();
    for (const v1::Lease& lease : response.leases()) {
      const std::string key = LeaseKey(lease.ref());
      log_.Line("leased " + ShardName(lease.ref()) + " attempt " +
                std::to_string(lease.ref().attempt()) + " (" +
                std::to_string(lease.shard().trials_size()) + " trials, " +
                std::to_string(lease.shard().prompts_size()) + " prompts)");
      {
        absl::MutexLock lock(&mu_);
        if (held_.count(key)) continue;  // granted twice: run it once
        held_[key].lease = lease;
        jobs_.push_back(key);
        jobs_cv_.SignalAll();
      }
      // A worker killed while holding a lease (the chaos tests arm it with crash).
      (void)KO_FAULT_POINT("worker.after_lease");
    }
    if (response.leases_size() > 0) RestartHeartbeats();
    if (static_cast<uint32_t>(response.leases_size()) >= want) {
      *wait = milliseconds(0);
    } else {
      *wait = milliseconds(response.retry_after_ms() > 0 ? response.retry_after_ms()
                                                         : kDefaultRetryAfterMs);
    }
    return Status::Ok();
  }

  // Gives back, with a DeadlineExceeded error, every shard that has run past the shard
  // deadline while it is still executing: from now on it is not heartbeated, the executor is
  // asked to stop (ShouldStopRunning) and its result is not reported. Its entry stays in held_
  // until the executor is done with it, so that the worker does not lease work it cannot start.
  // Only a fatal error is returned.
  Status ReleaseOverdue() {
    std::vector<std::pair<std::string, v1::LeaseRef>> overdue;
    {
      absl::MutexLock lock(&mu_);
      const Clock::time_point now = Clock::now();
      for (auto& [key, held] : held_) {
        if (held.dropped || held.timed_out || !Overdue(held, now)) continue;
        held.timed_out = true;
        held.reason = TimeoutText();
        overdue.emplace_back(key, held.lease.ref());
      }
    }
    for (const auto& [key, ref] : overdue) {
      log_.Line("giving back " + ShardName(ref) + " attempt " + std::to_string(ref.attempt()) +
                ": " + TimeoutText());
      KO_ASSIGN_OR_RETURN(Settled settled,
                          ReleaseFailed(key, ref, Status::DeadlineExceeded(TimeoutText())));
      if (settled == Settled::kStopped) return Status::Ok();
    }
    return Status::Ok();
  }

  // What happens to a shard the executor is done with. Only a fatal error is returned.
  Status Settle(const Finished& finished) {
    HeldLease held;
    {
      absl::MutexLock lock(&mu_);
      auto it = held_.find(finished.key);
      if (it == held_.end()) return Status::Ok();
      held = it->second;
    }
    const v1::LeaseRef& ref = held.lease.ref();
    const std::string name = ShardName(ref) + " attempt " + std::to_string(ref.attempt());
    Settled settled = Settled::kDone;
    if (finished.skipped || held.dropped || held.timed_out) {
      log_.Line("not reporting " + name + " (" + (held.dropped ? "dropped: " : "") + held.reason +
                ")");
    } else if (PastTimeout(held.started, finished.at)) {
      // Done, but after its deadline (before ReleaseOverdue saw it): not reported either.
      log_.Line("not reporting " + name + " (" + TimeoutText() + ")");
      KO_ASSIGN_OR_RETURN(settled, ReleaseFailed(finished.key, ref,
                                                 Status::DeadlineExceeded(TimeoutText())));
    } else if (!finished.error.ok()) {
      log_.Line("shard " + name + " failed: " + finished.error.ToString());
      KO_ASSIGN_OR_RETURN(settled, ReleaseFailed(finished.key, ref, finished.error));
      if (IsDeviceLost(finished.error)) {
        absl::MutexLock lock(&mu_);
        held_.erase(finished.key);
        return Status::Unavailable("device lost (" + finished.error.message() +
                                   "): releasing every shard and exiting so that the "
                                   "supervisor restarts this worker");
      }
    } else {
      KO_ASSIGN_OR_RETURN(settled, Report(finished.key, ref, finished.result));
    }
    // A stop interrupted the call: the lease stays held so that the stop releases it.
    if (settled == Settled::kStopped) return Status::Ok();
    absl::MutexLock lock(&mu_);
    held_.erase(finished.key);
    return Status::Ok();
  }

  bool Dropped(const std::string& key) {
    absl::MutexLock lock(&mu_);
    auto it = held_.find(key);
    return it == held_.end() || it->second.dropped;
  }

  // Reports until the coordinator answers. Retrying is safe: the first commit wins and a repeat
  // is acknowledged as a duplicate. A drop that arrives while the report is retrying does not
  // stop it: the work is done, and the coordinator accepts a late report if nobody finished
  // first (typically the lease expired while the coordinator was down, and its first answer
  // after coming back is the heartbeat's keep=false).
  // A result the coordinator refuses (too large, not matching its shard) gives the shard back
  // with that cause, so that the shard's error history says why.
  StatusOr<Settled> Report(const std::string& key, const v1::LeaseRef& ref,
                           const v1::ShardResult& result) {
    const std::string name = ShardName(ref) + " attempt " + std::to_string(ref.attempt());
    if (KO_FAULT_POINT("worker.before_report") == fault::Action::kDrop) {
      log_.Line("fault point worker.before_report: not reporting " + name);
      return Settled::kDone;
    }
    v1::ReportResultsRequest request;
    *request.mutable_version() = CurrentProtocol();
    request.set_worker_id(worker_id_);
    *request.mutable_lease() = ref;
    *request.mutable_result() = result;
    for (;;) {
      if (Stopping()) return Settled::kStopped;
      v1::ReportResultsResponse response;
      const grpc::Status status = Call(kReportTimeout, [&](grpc::ClientContext* context) {
        return client_->stub()->ReportResults(context, request, &response);
      });
      if (Stopping() && !status.ok()) return Settled::kStopped;
      switch (Classify(status)) {
        case Outcome::kOk: {
          NoteReachable();
          std::string note;
          if (response.duplicate()) note = " (duplicate)";
          if (response.late()) note = " (late)";
          log_.Line("reported " + name + ": " + std::to_string(result.rows_size()) + " rows, " +
                    std::to_string(result.trials_run()) + " trials in " +
                    FormatSeconds(result.seconds()) + note);
          return Settled::kDone;
        }
        case Outcome::kUnreachable:
          NoteUnreachable(status, "ReportResults");
          SleepUnlessStopped(backoff_.Next());
          continue;
        case Outcome::kFatal:
          return rpc::FromGrpc(status, "ReportResults");
        case Outcome::kRejected: {
          // RESOURCE_EXHAUSTED (larger than the coordinator accepts; it arrives as
          // InvalidArgument), InvalidArgument (the result does not match its shard),
          // PermissionDenied (never leased), NotFound (sweep gone): retrying cannot help. The
          // shard is given back with the cause and its code (a lease the worker no longer
          // holds is left alone by the coordinator).
          NoteReachable();
          const Status rejected = rpc::FromGrpc(status, "ReportResults");
          std::string cause = "result of " + name + " not accepted";
          if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
            cause += " (a report of " + std::to_string(request.ByteSizeLong()) + " bytes)";
          }
          log_.Line(cause + ", giving the shard back: " + rejected.ToString());
          return ReleaseFailed(key, ref, Status(rejected.code(), cause + ": " + rejected.message()));
        }
      }
    }
  }

  // Gives back a shard that failed to run, with its error and the error's code (a counted
  // attempt; the coordinator fails the shard at once if the code says the error would repeat).
  StatusOr<Settled> ReleaseFailed(const std::string& key, const v1::LeaseRef& ref,
                                  const Status& error) {
    v1::ReleaseShardRequest request;
    *request.mutable_version() = CurrentProtocol();
    request.set_worker_id(worker_id_);
    *request.mutable_lease() = ref;
    request.set_error(error.ToString());
    request.set_code(ToWire(error.code()));
    for (;;) {
      if (Stopping()) return Settled::kStopped;
      if (Dropped(key)) return Settled::kDone;
      v1::ReleaseShardResponse response;
      const grpc::Status status = Call(kReleaseTimeout, [&](grpc::ClientContext* context) {
        return client_->stub()->ReleaseShard(context, request, &response);
      });
      if (Stopping() && !status.ok()) return Settled::kStopped;
      switch (Classify(status)) {
        case Outcome::kOk:
          NoteReachable();
          log_.Line("released " + ShardName(ref) + " attempt " + std::to_string(ref.attempt()) +
                    " with its error");
          return Settled::kDone;
        case Outcome::kUnreachable:
          NoteUnreachable(status, "ReleaseShard");
          SleepUnlessStopped(backoff_.Next());
          continue;
        case Outcome::kFatal:
          return rpc::FromGrpc(status, "ReleaseShard");
        case Outcome::kRejected:
          NoteReachable();
          log_.Line("release of " + ShardName(ref) + " refused: " +
                    rpc::FromGrpc(status, "ReleaseShard").ToString());
          return Settled::kDone;
      }
    }
  }

  // On stop: every lease still held goes back to pending without using up an attempt. One try
  // each within kStopReleaseBudget; a lease not released expires.
  void ReleaseAllHeld() {
    std::vector<v1::LeaseRef> refs;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [key, held] : held_) {
        // A timed-out lease was given back with its error already (or expires).
        if (!held.dropped && !held.timed_out) refs.push_back(held.lease.ref());
      }
      held_.clear();
      jobs_.clear();
    }
    const Clock::time_point deadline = Clock::now() + kStopReleaseBudget;
    for (const v1::LeaseRef& ref : refs) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      const std::string name = ShardName(ref) + " attempt " + std::to_string(ref.attempt());
      if (left <= milliseconds(0)) {
        log_.Line("no time left to release " + name + "; its lease will expire");
        continue;
      }
      v1::ReleaseShardRequest request;
      *request.mutable_version() = CurrentProtocol();
      request.set_worker_id(worker_id_);
      *request.mutable_lease() = ref;
      v1::ReleaseShardResponse response;
      std::unique_ptr<grpc::ClientContext> context =
          client_->MakeContext(std::min(left, kReleaseTimeout));
      const grpc::Status status = client_->stub()->ReleaseShard(context.get(), request, &response);
      log_.Line(status.ok() ? "released " + name + " (stopping)"
                            : "could not release " + name + ", its lease will expire: " +
                                  rpc::FromGrpc(status, "ReleaseShard").ToString());
    }
  }

  // --- the executor thread ------------------------------------------------------------------

  void ExecutorLoop() {
    // LibTorch's OpenMP thread count is per calling thread: set it on the one that runs shards.
    at::set_num_threads(threads_);
    for (;;) {
      std::string key;
      v1::Shard shard;
      {
        absl::MutexLock lock(&mu_);
        // After a lost device nothing more runs here: the held leases wait for Run to give
        // them back.
        while (!closing_ && (jobs_.empty() || device_lost_.load())) jobs_cv_.Wait(&mu_);
        if (closing_) return;
        key = jobs_.front();
        jobs_.pop_front();
        auto it = held_.find(key);
        if (it == held_.end()) continue;
        if (it->second.dropped) {
          Finished skipped;
          skipped.key = key;
          skipped.skipped = true;
          finished_.push_back(std::move(skipped));
          finished_cv_.SignalAll();
          continue;
        }
        shard = it->second.lease.shard();
        it->second.started = Clock::now();
        it->second.executing = true;
        running_ = key;
      }
      Finished finished;
      finished.key = key;
      finished.error = RunShard(shard, &finished.result);
      finished.at = Clock::now();
      if (IsDeviceLost(finished.error)) device_lost_ = true;
      absl::MutexLock lock(&mu_);
      running_.clear();
      if (auto it = held_.find(key); it != held_.end()) it->second.executing = false;
      finished_.push_back(std::move(finished));
      finished_cv_.SignalAll();
    }
  }

  // The executor's should_stop: the shard it runs is no longer worth finishing (the worker is
  // stopping, the lease was dropped or given back, or the shard is past its deadline).
  bool ShouldStopRunning() {
    if (Stopping()) return true;
    absl::MutexLock lock(&mu_);
    auto it = held_.find(running_);
    return it == held_.end() || it->second.dropped || it->second.timed_out ||
           Overdue(it->second, Clock::now());
  }

  Status RunShard(const v1::Shard& shard, v1::ShardResult* result) {
    try {
      KO_RETURN_IF_ERROR(EnsureModel(shard.model()));
      if (options_.before_run) options_.before_run(shard);
      if (options_.fail_run) KO_RETURN_IF_ERROR(options_.fail_run(shard));
      KO_ASSIGN_OR_RETURN(*result, shard_executor_->Run(shard));
      return Status::Ok();
    } catch (const std::exception& e) {
      // The executor converts LibTorch's exceptions itself; this is the last line.
      return Status::Internal(std::string("shard executor: ") + e.what());
    }
  }

  // One model cached per worker: loaded again only when a shard names another one.
  Status EnsureModel(v1::ModelRef ref) {
    if (!options_.device.empty()) ref.set_device(options_.device);
    if (model_ && google::protobuf::util::MessageDifferencer::Equals(ref, model_ref_)) {
      return Status::Ok();
    }
    // Free the old model before loading the next: a GPU may not hold both.
    shard_executor_.reset();
    model_.reset();
    {
      absl::MutexLock lock(&mu_);
      loaded_model_.clear();
      loaded_device_.clear();
    }
    const Clock::time_point start = Clock::now();
    StatusOr<executor::LoadedModel> loaded = executor::LoadModel(ref);
    if (!loaded.ok()) return loaded.status();
    model_ = std::make_unique<executor::LoadedModel>(std::move(*loaded));
    model_ref_ = ref;
    executor::ExecutorOptions executor_options;
    executor_options.max_batch_rows = options_.max_batch_rows;
    executor_options.should_stop = [this] { return ShouldStopRunning(); };
    shard_executor_ = std::make_unique<executor::ShardExecutor>(*model_, executor_options);
    const std::string device = ref.device().empty() ? "cpu" : ref.device();
    {
      absl::MutexLock lock(&mu_);
      loaded_model_ = ref.path();
      loaded_device_ = device;
    }
    log_.Line("loaded model " + ref.path() + " on " + device + " in " +
              FormatSeconds(SecondsSince(start)));
    return Status::Ok();
  }

  // --- heartbeats and the stop watcher (the io_context thread) -------------------------------

  void StartBackgroundCalls() {
    work_.emplace(io_.get_executor());
    background_thread_ = std::thread([this] { io_.run(); });
    RestartHeartbeats();
    if (options_.stop) boost::asio::post(io_, [this] { WatchStop(); });
  }

  void StopBackgroundCalls() {
    if (!background_thread_.joinable()) return;
    CancelCalls();
    // io_.stop() lets the handler in progress finish (its call was just cancelled) and runs
    // no other.
    work_.reset();
    io_.stop();
    background_thread_.join();
  }

  void CancelCalls() {
    absl::MutexLock lock(&calls_mu_);
    for (grpc::ClientContext* context : calls_) context->TryCancel();
  }

  // A healthy coordinator answers a call in flight when the stop comes well within the grace;
  // one that does not answer must not hold the stop up for a whole deadline.
  void WatchStop() {
    if (Stopping()) {
      if (!stop_seen_) stop_seen_ = Clock::now();
      if (Clock::now() - *stop_seen_ >= kStopCancelGrace) CancelCalls();
    }
    stop_watch_timer_.expires_after(kStopPoll);
    stop_watch_timer_.async_wait([this](const boost::system::error_code& error) {
      if (!error) WatchStop();
    });
  }

  // (Re)arms the heartbeat timer at lease_ms/3 from now: called when leases are granted, so
  // the first heartbeat of a new lease uses the lease length the coordinator just gave.
  void RestartHeartbeats() {
    boost::asio::post(io_, [this] {
      ++heartbeat_generation_;
      ScheduleHeartbeat(heartbeat_generation_);
    });
  }

  void ScheduleHeartbeat(uint64_t generation) {
    heartbeat_timer_.expires_after(milliseconds(std::max<uint32_t>(50, lease_ms_.load() / 3)));
    heartbeat_timer_.async_wait([this, generation](const boost::system::error_code& error) {
      // A restart supersedes this chain even if its wait had already completed.
      if (error || generation != heartbeat_generation_) return;
      Heartbeat();
      ScheduleHeartbeat(generation);
    });
  }

  void Heartbeat() {
    v1::HeartbeatRequest request;
    *request.mutable_version() = CurrentProtocol();
    request.set_worker_id(worker_id_);
    std::vector<std::string> keys;
    {
      absl::MutexLock lock(&mu_);
      const Clock::time_point now = Clock::now();
      for (const auto& [key, held] : held_) {
        // An overdue shard is not renewed, even before the main loop has given it back.
        if (held.dropped || held.timed_out || Overdue(held, now)) continue;
        *request.add_leases() = held.lease.ref();
        keys.push_back(key);
      }
    }
    if (keys.empty()) return;
    const milliseconds timeout(std::clamp<uint32_t>(lease_ms_.load() / 3, 1000, 10000));
    v1::HeartbeatResponse response;
    const grpc::Status status = Call(timeout, [&](grpc::ClientContext* context) {
      return client_->stub()->Heartbeat(context, request, &response);
    });
    if (!status.ok()) {
      // Tolerated: the lease may expire, and a late report is still accepted if nobody else
      // finished the shard first.
      if (!heartbeat_failing_ && !Stopping()) {
        log_.Line("heartbeat failed, leases may expire: " +
                  rpc::FromGrpc(status, "Heartbeat").ToString());
      }
      heartbeat_failing_ = true;
      return;
    }
    if (heartbeat_failing_) log_.Line("heartbeats answered again");
    heartbeat_failing_ = false;
    if (response.lease_ms() > 0) lease_ms_ = response.lease_ms();
    for (int i = 0; i < response.leases_size(); ++i) {
      const v1::LeaseStatus& lease = response.leases(i);
      if (lease.keep()) continue;
      // Answers come in request order; the ref, when given, names the lease itself.
      const std::string key = lease.has_ref() ? LeaseKey(lease.ref())
                              : i < static_cast<int>(keys.size()) ? keys[i]
                                                                   : std::string();
      absl::MutexLock lock(&mu_);
      auto it = held_.find(key);
      if (it == held_.end() || it->second.dropped || it->second.timed_out) continue;
      it->second.dropped = true;
      it->second.reason = lease.reason().empty() ? "the coordinator said so" : lease.reason();
      log_.Line("dropping " + ShardName(it->second.lease.ref()) + " attempt " +
                std::to_string(it->second.lease.ref().attempt()) + ": " + it->second.reason);
    }
  }

  const AgentOptions options_;
  const std::string worker_id_;
  const std::string host_;
  const int threads_;
  Logger log_;
  std::unique_ptr<rpc::CoordinatorClient> client_;

  // Main thread only.
  Backoff backoff_;
  bool unreachable_ = false;
  Clock::time_point outage_start_;

  // Shared by the main, executor and heartbeat threads.
  absl::Mutex mu_;
  absl::CondVar jobs_cv_;      // executor: a job or closing
  absl::CondVar finished_cv_;  // main: a finished shard
  std::map<std::string, HeldLease> held_ ABSL_GUARDED_BY(mu_);  // by LeaseKey
  std::deque<std::string> jobs_ ABSL_GUARDED_BY(mu_);  // keys waiting to run, lease order
  std::deque<Finished> finished_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  // A shard failed with IsDeviceLost: Run gives every lease back and returns the error.
  std::atomic<bool> device_lost_{false};
  std::string running_ ABSL_GUARDED_BY(mu_);        // key of the shard executing
  std::string loaded_model_ ABSL_GUARDED_BY(mu_);   // path of the cached model
  std::string loaded_device_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint32_t> lease_ms_{kDefaultLeaseMs};

  // Executor thread only.
  std::thread executor_thread_;
  std::unique_ptr<executor::LoadedModel> model_;
  std::unique_ptr<executor::ShardExecutor> shard_executor_;
  v1::ModelRef model_ref_;

  // In-flight calls, cancelled when the stop flag is set.
  absl::Mutex calls_mu_;
  std::set<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(calls_mu_);

  // The io_context thread: heartbeats and the stop watcher.
  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  boost::asio::steady_timer heartbeat_timer_;
  boost::asio::steady_timer stop_watch_timer_;
  uint64_t heartbeat_generation_ = 0;  // io thread only
  std::optional<Clock::time_point> stop_seen_;  // io thread only
  bool heartbeat_failing_ = false;     // io thread only
  std::thread background_thread_;
};

Agent::Agent(AgentOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Agent::~Agent() = default;
Status Agent::Run() { return impl_->Run(); }
const std::string& Agent::worker_id() const { return impl_->worker_id(); }

}  // namespace knockout::agent
