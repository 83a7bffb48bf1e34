// The coordinator's server-streaming calls (WatchSweep, QueryResults), each driven by a helper
// thread of its own that may block on the store or the scheduler without holding one of gRPC's
// callback threads (server.cc starts them). Private to coordinator/.
// Thread-safety: a stream's Send/Stopped/SleepUntil run on its helper thread; gRPC's OnWriteDone
// and OnCancel on its own threads; the state they share is guarded by the stream's mutex.
#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>
#include <absl/time/time.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "coordinator/scheduler.h"
#include "experiments/sweep_store.h"
#include "knockout/v1/coordinator.pb.h"

namespace knockout::coordinator::server_internal {

using SteadyClock = std::chrono::steady_clock;

constexpr uint32_t kDefaultWatchIntervalMs = 500;
// A watch or query thread re-checks for shutdown and client cancellation this often.
constexpr std::chrono::milliseconds kPollSlice{100};
// QueryResults chunks: big enough to amortise a message, small enough to stream.
constexpr size_t kChunkItems = 1000;
constexpr size_t kChunkBytes = 1 << 20;

inline grpc::Status ShuttingDown() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down");
}

// A server stream driven by a helper thread that may block (on the store, on the scheduler's
// change counter) without holding one of gRPC's callback threads. Send() waits until gRPC has
// taken the message; the thread's last act is Finish(), after which OnDone deletes the reactor.
template <typename Message>
class HelperStream : public grpc::ServerWriteReactor<Message> {
 public:
  explicit HelperStream(const std::atomic<bool>* stopping) : stopping_(stopping) {}

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    write_ok_ = ok;
    cv_.SignalAll();
  }
  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    cv_.SignalAll();
  }
  void OnDone() override { delete this; }

 protected:
  // False if the stream broke (the client left or the server is shutting down).
  bool Send(const Message& message) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      writing_ = true;
    }
    this->StartWrite(&message);
    absl::MutexLock lock(&mu_);
    while (writing_) cv_.Wait(&mu_);
    return write_ok_;
  }

  bool Stopped() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return cancelled_ || stopping_->load();
  }

  // Sleeps until `until`; false (early) if the stream should stop.
  bool SleepUntil(SteadyClock::time_point until) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    while (!cancelled_ && !stopping_->load()) {
      const auto now = SteadyClock::now();
      if (now >= until) return true;
      cv_.WaitWithTimeout(
          &mu_, absl::FromChrono(std::min<SteadyClock::duration>(until - now, kPollSlice)));
    }
    return false;
  }

  // Why a stream ends before its natural end.
  grpc::Status StopStatus() {
    if (stopping_->load()) return ShuttingDown();
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the stream");
  }

 private:
  const std::atomic<bool>* stopping_;
  absl::Mutex mu_;
  absl::CondVar cv_;  // signalled when writing_ or cancelled_ changes
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool write_ok_ ABSL_GUARDED_BY(mu_) = true;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

class WatchStream : public HelperStream<v1::SweepProgress> {
 public:
  WatchStream(const std::atomic<bool>* stopping, const Scheduler* scheduler, std::string sweep,
              uint32_t interval_ms)
      : HelperStream(stopping),
        scheduler_(scheduler),
        sweep_(std::move(sweep)),
        interval_(interval_ms ? interval_ms : kDefaultWatchIntervalMs) {}

  // The helper thread's body. Ends with Finish (and nothing after it: OnDone may delete us).
  void Run() { Finish(Stream()); }

 private:
  grpc::Status Stream();

  const Scheduler* scheduler_;
  const std::string sweep_;
  const std::chrono::milliseconds interval_;
  v1::SweepProgress message_;  // alive until its write is done
};

class QueryStream : public HelperStream<v1::QueryResultsChunk> {
 public:
  QueryStream(const std::atomic<bool>* stopping, const experiments::SweepStore* sweeps,
              v1::QueryResultsRequest request, size_t chunk_bytes)
      : HelperStream(stopping),
        sweeps_(sweeps),
        request_(std::move(request)),
        chunk_bytes_(chunk_bytes) {}

  void Run() { Finish(Stream()); }

 private:
  grpc::Status Stream();

  // Streams the items in chunks of at most kChunkItems items or about chunk_bytes_ bytes (one
  // item larger than that travels alone).
  template <typename Item, typename Field>
  grpc::Status SendAll(StatusOr<std::vector<Item>> items, Field field);
  // The same, one item at a time as a store iterator yields it (memory: one chunk): Add moves
  // `item` into the chunk and sends the chunk first when it is full (false: the stream broke);
  // Flush sends what is left.
  template <typename Item, typename Field>
  bool Add(Item& item, Field field);
  grpc::Status Flush();
  size_t count_ = 0, bytes_ = 0;  // in chunk_

  const experiments::SweepStore* sweeps_;
  const v1::QueryResultsRequest request_;
  const size_t chunk_bytes_;
  v1::QueryResultsChunk chunk_;  // alive until its write is done
};

}  // namespace knockout::coordinator::server_internal
