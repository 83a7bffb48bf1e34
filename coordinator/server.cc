#include "coordinator/server.h"

#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>
#include <absl/time/time.h>
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <iostream>
#include <list>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "common/fault_points.h"
#include "experiments/sweep_store.h"
#include "knockout/v1/coordinator.grpc.pb.h"
#include "proto/protocol.h"
#include "rpc/channel.h"
#include "storage/store.h"

namespace knockout::coordinator {

namespace {

using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;
using SteadyClock = std::chrono::steady_clock;

constexpr uint32_t kDefaultWatchIntervalMs = 500;
// A watch or query thread re-checks for shutdown and client cancellation this often.
constexpr std::chrono::milliseconds kPollSlice{100};
// QueryResults chunks: big enough to amortise a message, small enough to stream.
constexpr size_t kChunkItems = 1000;
constexpr size_t kChunkBytes = 1 << 20;

grpc::Status ShuttingDown() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down");
}

bool Terminal(v1::RunState state) {
  return state == v1::DONE || state == v1::FAILED || state == v1::CANCELLED;
}

// Compares in time independent of where the strings differ, so that a client cannot find the
// token byte by byte from response times. (The length is not secret.)
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

struct ListenAddress {
  std::string host;  // as written ("[::1]" keeps its brackets)
  bool local = false;  // loopback, or a Unix socket: unreachable from other machines
  bool unix_socket = false;
};

StatusOr<ListenAddress> ParseListen(const std::string& listen) {
  ListenAddress address;
  if (listen.rfind("unix:", 0) == 0 || listen.rfind("unix-abstract:", 0) == 0) {
    address.host = listen;
    address.local = true;
    address.unix_socket = true;
    return address;
  }
  std::string inner;  // the host without IPv6 brackets
  if (!listen.empty() && listen.front() == '[') {
    const size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return Status::InvalidArgument("listen address \"" + listen +
                                     "\": expected [IPv6]:port");
    }
    address.host = listen.substr(0, close + 1);
    inner = listen.substr(1, close - 1);
  } else {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) {
      return Status::InvalidArgument("listen address \"" + listen + "\": expected host:port");
    }
    address.host = listen.substr(0, colon);
    inner = address.host;
  }
  if (inner == "localhost") {
    address.local = true;
  } else if (in_addr v4{}; inet_pton(AF_INET, inner.c_str(), &v4) == 1) {
    address.local = (ntohl(v4.s_addr) >> 24) == 127;
  } else if (in6_addr v6{}; inet_pton(AF_INET6, inner.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) address.local = true;
    // ::ffff:127.x.y.z is the IPv4 loopback seen through an IPv6 socket.
    if (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127) address.local = true;
  }
  return address;
}

// gRPC only says "cannot start" for a bad certificate; OpenSSL can say which file is wrong.
Status CheckCertificateAndKey(const std::string& cert_pem, const std::string& cert_path,
                              const std::string& key_pem, const std::string& key_path) {
  BIO* cert_bio = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* cert = cert_bio ? PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(cert_bio);
  if (!cert) {
    return Status::InvalidArgument("TLS certificate " + cert_path +
                                   ": not a PEM certificate");
  }
  Status status;
  if (!key_pem.empty()) {
    BIO* key_bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
    EVP_PKEY* key =
        key_bio ? PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr) : nullptr;
    BIO_free(key_bio);
    if (!key) {
      status = Status::InvalidArgument("TLS key " + key_path +
                                       ": not an unencrypted PEM private key");
    } else if (X509_check_private_key(cert, key) != 1) {
      status = Status::InvalidArgument("TLS key " + key_path + " does not belong to certificate " +
                                       cert_path);
    }
    EVP_PKEY_free(key);
  }
  X509_free(cert);
  return status;
}

// Builds the metric families from the scheduler's counters at every scrape, so the endpoint never
// shows numbers older than the request.
class SchedulerMetrics : public prometheus::Collectable {
 public:
  explicit SchedulerMetrics(const Scheduler* scheduler) : scheduler_(scheduler) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    const SchedulerCounters counters = scheduler_->Counters();
    std::vector<prometheus::MetricFamily> families;

    prometheus::MetricFamily shards{"knockout_shards",
                                    "Shards of the running sweeps' expanded stages, by state",
                                    prometheus::MetricType::Gauge, {}};
    const std::pair<const char*, uint64_t> states[] = {{"pending", counters.shards_pending},
                                                       {"running", counters.shards_running},
                                                       {"done", counters.shards_done},
                                                       {"failed", counters.shards_failed}};
    for (const auto& [state, value] : states) {
      prometheus::ClientMetric metric;
      metric.label.push_back({"state", state});
      metric.gauge.value = static_cast<double>(value);
      shards.metric.push_back(std::move(metric));
    }
    families.push_back(std::move(shards));

    AddCounter(&families, "knockout_leases_granted_total", "Shard leases granted",
               counters.leases_granted);
    AddCounter(&families, "knockout_leases_expired_total",
               "Shard leases that expired without a report", counters.leases_expired);
    AddCounter(&families, "knockout_leases_released_total", "Shard leases given back by workers",
               counters.leases_released);
    AddCounter(&families, "knockout_results_committed_total", "Shard results committed",
               counters.reports_committed);
    AddCounter(&families, "knockout_results_duplicate_total",
               "Shard results acknowledged and ignored (the shard was already done)",
               counters.reports_duplicate);
    AddCounter(&families, "knockout_results_late_total",
               "Shard results committed from an expired lease", counters.reports_late);
    AddCounter(&families, "knockout_result_rows_total",
               "Result rows committed (its rate is rows per second)", counters.rows_committed);

    prometheus::MetricFamily alive{"knockout_workers_alive",
                                   "Workers heard from within two lease periods",
                                   prometheus::MetricType::Gauge, {}};
    prometheus::ClientMetric alive_metric;
    alive_metric.gauge.value = static_cast<double>(counters.workers_alive);
    alive.metric.push_back(std::move(alive_metric));
    families.push_back(std::move(alive));

    // Alive workers only: a label per worker that ever existed would grow without bound.
    prometheus::MetricFamily speed{"knockout_worker_trials_per_second",
                                   "Trials per busy second of each alive worker",
                                   prometheus::MetricType::Gauge, {}};
    for (const v1::WorkerStatus& worker : counters.workers) {
      if (!worker.alive()) continue;
      prometheus::ClientMetric metric;
      metric.label.push_back({"worker", worker.info().id()});
      metric.gauge.value = worker.trials_per_second();
      speed.metric.push_back(std::move(metric));
    }
    families.push_back(std::move(speed));
    return families;
  }

 private:
  static void AddCounter(std::vector<prometheus::MetricFamily>* families, const char* name,
                         const char* help, uint64_t value) {
    prometheus::MetricFamily family{name, help, prometheus::MetricType::Counter, {}};
    prometheus::ClientMetric metric;
    metric.counter.value = static_cast<double>(value);
    family.metric.push_back(std::move(metric));
    families->push_back(std::move(family));
  }

  const Scheduler* scheduler_;
};

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
  grpc::Status Stream() {
    // Read the counter before the progress: a change in between wakes the next round.
    uint64_t seen = scheduler_->change_counter();
    StatusOr<v1::SweepProgress> progress = scheduler_->Progress(sweep_);
    while (true) {
      if (!progress.ok()) return rpc::ToGrpc(progress.status());
      message_ = std::move(*progress);
      const auto sent_at = SteadyClock::now();
      if (!Send(message_)) return StopStatus();
      if (Terminal(message_.sweep().state())) return grpc::Status::OK;
      // Wait for a change in slices, so that cancellation and shutdown are seen promptly.
      while (scheduler_->WaitForChange(seen, static_cast<uint32_t>(kPollSlice.count())) == seen) {
        if (Stopped()) return StopStatus();
      }
      // Changes within the interval coalesce into the next message.
      if (!SleepUntil(sent_at + interval_)) return StopStatus();
      seen = scheduler_->change_counter();
      progress = scheduler_->Progress(sweep_);
    }
  }

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
  grpc::Status Stream() {
    StatusOr<std::string> sweep = sweeps_->ResolveSweep(request_.sweep());
    if (!sweep.ok()) return rpc::ToGrpc(sweep.status());
    const uint32_t stage = request_.stage();
    switch (request_.what()) {
      case v1::QueryResultsRequest::ROWS:
        return SendAll(sweeps_->Rows(*sweep, stage, request_.aggregates_only()),
                       [](v1::QueryResultsChunk* c) { return c->mutable_rows(); });
      case v1::QueryResultsRequest::SHARDS:
        return SendAll(sweeps_->ListShards(*sweep, stage),
                       [](v1::QueryResultsChunk* c) { return c->mutable_shards(); });
      case v1::QueryResultsRequest::COMPLETIONS:
        return SendAll(sweeps_->Completions(*sweep, stage),
                       [](v1::QueryResultsChunk* c) { return c->mutable_completions(); });
      case v1::QueryResultsRequest::PARTIAL_SUMS:
        return SendAll(sweeps_->PartialSums(*sweep, stage),
                       [](v1::QueryResultsChunk* c) { return c->mutable_sums(); });
      case v1::QueryResultsRequest::ARTIFACTS: {
        auto artifacts = sweeps_->ListArtifacts(*sweep, request_.artifact_prefix());
        if (!artifacts.ok()) return rpc::ToGrpc(artifacts.status());
        std::vector<v1::NamedBytes> named;
        named.reserve(artifacts->size());
        for (auto& [name, value] : *artifacts) {
          v1::NamedBytes item;
          item.set_name(std::move(name));
          item.set_value(std::move(value));
          named.push_back(std::move(item));
        }
        return SendAll(StatusOr<std::vector<v1::NamedBytes>>(std::move(named)),
                       [](v1::QueryResultsChunk* c) { return c->mutable_artifacts(); });
      }
      default:
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "QueryResults: `what` must be ROWS, SHARDS, COMPLETIONS, ARTIFACTS "
                            "or PARTIAL_SUMS");
    }
  }

  // Streams the items in chunks of at most kChunkItems items or about chunk_bytes_ bytes (one
  // item larger than that travels alone).
  template <typename Item, typename Field>
  grpc::Status SendAll(StatusOr<std::vector<Item>> items, Field field) {
    if (!items.ok()) return rpc::ToGrpc(items.status());
    size_t count = 0, bytes = 0;
    for (Item& item : *items) {
      const size_t size = item.ByteSizeLong();
      if (count > 0 && (count >= kChunkItems || bytes + size > chunk_bytes_)) {
        if (Stopped() || !Send(chunk_)) return StopStatus();
        chunk_.Clear();
        count = bytes = 0;
      }
      *field(&chunk_)->Add() = std::move(item);
      ++count;
      bytes += size;
    }
    if (count > 0 && (Stopped() || !Send(chunk_))) return StopStatus();
    return grpc::Status::OK;
  }

  const experiments::SweepStore* sweeps_;
  const v1::QueryResultsRequest request_;
  const size_t chunk_bytes_;
  v1::QueryResultsChunk chunk_;  // alive until its write is done
};

}  // namespace

// ------------------------------------------------------------------------------------------

struct Server::Impl : public v1::Coordinator::CallbackService {
  explicit Impl(const ServerOptions& server_options) : options(server_options) {
    clock = options.clock ? options.clock : &system_clock;
    log = options.log ? options.log : &std::cerr;
  }
  ~Impl() override { Shutdown(0); }

  Status Start();
  void Shutdown(uint32_t grace_ms) ABSL_LOCKS_EXCLUDED(shutdown_mu);
  void Wait() ABSL_LOCKS_EXCLUDED(shutdown_mu);

  void Log(const std::string& line) ABSL_LOCKS_EXCLUDED(log_mu) {
    absl::MutexLock lock(&log_mu);
    *log << line << std::endl;
  }

  // ---- the service

  // The bearer token (when one is configured), then the protocol version.
  Status Admit(const CallbackServerContext* context, const v1::ProtocolVersion& version,
               const char* method) const {
    if (!token.empty()) {
      const auto& metadata = context->client_metadata();
      const auto found = metadata.find(rpc::kAuthorizationHeader);
      const std::string expected = std::string(rpc::kBearerPrefix) + token;
      if (found == metadata.end() ||
          !ConstantTimeEquals(std::string_view(found->second.data(), found->second.size()),
                              expected)) {
        return Status::Unauthenticated("missing or wrong bearer token");
      }
    }
    return CheckProtocol(version, std::string("the caller of ") + method);
  }

  // A unary call answered on the callback thread: admission, then `call`.
  template <typename Request, typename Call>
  ServerUnaryReactor* Unary(CallbackServerContext* context, const Request* request,
                            const char* method, Call&& call) {
    ServerUnaryReactor* reactor = context->DefaultReactor();
    if (!BeginCall()) {
      reactor->Finish(ShuttingDown());
      return reactor;
    }
    Status status = Admit(context, request->version(), method);
    if (status.ok()) status = call();
    reactor->Finish(rpc::ToGrpc(status));
    EndCall();
    return reactor;
  }

  ServerUnaryReactor* SubmitSweep(CallbackServerContext* context,
                                  const v1::SubmitSweepRequest* request,
                                  v1::SubmitSweepResponse* response) override {
    return Unary(context, request, "SubmitSweep", [&]() -> Status {
      KO_ASSIGN_OR_RETURN(*response, scheduler->Submit(*request));
      return Status::Ok();
    });
  }

  ServerUnaryReactor* GetSweep(CallbackServerContext* context, const v1::GetSweepRequest* request,
                               v1::SweepProgress* response) override {
    return Unary(context, request, "GetSweep", [&]() -> Status {
      KO_ASSIGN_OR_RETURN(*response, scheduler->Progress(request->sweep()));
      return Status::Ok();
    });
  }

  ServerUnaryReactor* ListSweeps(CallbackServerContext* context,
                                 const v1::ListSweepsRequest* request,
                                 v1::ListSweepsResponse* response) override {
    return Unary(context, request, "ListSweeps", [&]() -> Status {
      KO_ASSIGN_OR_RETURN(std::vector<v1::SweepProgress> sweeps, scheduler->List());
      for (v1::SweepProgress& sweep : sweeps) *response->add_sweeps() = std::move(sweep);
      return Status::Ok();
    });
  }

  ServerUnaryReactor* CancelSweep(CallbackServerContext* context,
                                  const v1::CancelSweepRequest* request,
                                  v1::SweepProgress* response) override {
    return Unary(context, request, "CancelSweep", [&]() -> Status {
      KO_ASSIGN_OR_RETURN(*response, scheduler->Cancel(request->sweep()));
      return Status::Ok();
    });
  }

  ServerUnaryReactor* LeaseShards(CallbackServerContext* context,
                                  const v1::LeaseShardsRequest* request,
                                  v1::LeaseShardsResponse* response) override {
    return Unary(context, request, "LeaseShards", [&]() -> Status {
      KO_ASSIGN_OR_RETURN(*response, scheduler->Lease(*request));
      return Status::Ok();
    });
  }

  ServerUnaryReactor* Heartbeat(CallbackServerContext* context,
                                const v1::HeartbeatRequest* request,
                                v1::HeartbeatResponse* response) override {
    return Unary(context, request, "Heartbeat", [&]() -> Status {
      KO_ASSIGN_OR_RETURN(*response, scheduler->Heartbeat(*request));
      return Status::Ok();
    });
  }

  ServerUnaryReactor* ReleaseShard(CallbackServerContext* context,
                                   const v1::ReleaseShardRequest* request,
                                   v1::ReleaseShardResponse* /*response*/) override {
    return Unary(context, request, "ReleaseShard",
                 [&]() -> Status { return scheduler->Release(*request); });
  }

  // Group commit: the handler only queues the report; the committer thread writes everything
  // queued as one synced batch and then finishes each call.
  ServerUnaryReactor* ReportResults(CallbackServerContext* context,
                                    const v1::ReportResultsRequest* request,
                                    v1::ReportResultsResponse* response) override {
    ServerUnaryReactor* reactor = context->DefaultReactor();
    if (!BeginCall()) {
      reactor->Finish(ShuttingDown());
      return reactor;
    }
    const Status status = Admit(context, request->version(), "ReportResults");
    if (!status.ok()) {
      reactor->Finish(rpc::ToGrpc(status));
      EndCall();
      return reactor;
    }
    // The committer runs until every call has ended (Shutdown stops it last), so a queued report
    // is always answered; EndCall follows its Finish there.
    absl::MutexLock lock(&report_mu);
    reports.push_back(PendingReport{reactor, request, response});
    report_cv.Signal();
    return reactor;
  }

  grpc::ServerWriteReactor<v1::SweepProgress>* WatchSweep(
      CallbackServerContext* context, const v1::WatchSweepRequest* request) override {
    auto* stream = new WatchStream(&stopping, scheduler.get(), request->sweep(),
                                   request->interval_ms());
    StartStream(stream, Admit(context, request->version(), "WatchSweep"));
    return stream;
  }

  grpc::ServerWriteReactor<v1::QueryResultsChunk>* QueryResults(
      CallbackServerContext* context, const v1::QueryResultsRequest* request) override {
    // Leave room for the chunk's own framing under the message limit.
    const size_t chunk_bytes =
        std::min(kChunkBytes, static_cast<size_t>(options.max_message_bytes) / 2);
    auto* stream = new QueryStream(&stopping, sweeps.get(), *request, chunk_bytes);
    StartStream(stream, Admit(context, request->version(), "QueryResults"));
    return stream;
  }

  // Runs an admitted stream on its helper thread, or finishes it at once.
  template <typename Stream>
  void StartStream(Stream* stream, const Status& admitted) {
    if (!BeginCall()) {
      stream->Finish(ShuttingDown());
      return;
    }
    if (!admitted.ok()) {
      stream->Finish(rpc::ToGrpc(admitted));
    } else if (SpawnHelper([this, stream] {
                 stream->Run();  // ends with Finish; the stream may be gone after it
                 EndCall();
               })) {
      return;
    } else {
      stream->Finish(ShuttingDown());
    }
    EndCall();
  }

  // ---- calls in flight

  // Counts a call that is being answered; false once Shutdown has begun (the caller answers
  // UNAVAILABLE). Shutdown waits for the count to reach zero, then closes gRPC at once: gRPC's
  // own graceful shutdown would also wait for idle client connections to close, which a worker
  // busy running a shard only does when it next polls its channel, i.e. for the whole grace.
  bool BeginCall() ABSL_LOCKS_EXCLUDED(calls_mu) {
    absl::MutexLock lock(&calls_mu);
    if (!accepting) return false;
    ++active_calls;
    return true;
  }
  void EndCall() ABSL_LOCKS_EXCLUDED(calls_mu) {
    absl::MutexLock lock(&calls_mu);
    if (--active_calls == 0) calls_cv.SignalAll();
  }

  // ---- helper threads (one per WatchSweep / QueryResults stream)

  // Runs `body` on a new thread that Shutdown joins; false (nothing started) when stopping.
  bool SpawnHelper(std::function<void()> body) ABSL_LOCKS_EXCLUDED(helpers_mu) {
    absl::MutexLock lock(&helpers_mu);
    if (stopping.load()) return false;
    // Join the threads of streams that have ended, so that the list stays short.
    for (auto it = helpers.begin(); it != helpers.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = helpers.erase(it);
      } else {
        ++it;
      }
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    helpers.push_back(Helper{std::thread([body = std::move(body), done] {
                               body();
                               done->store(true);
                             }),
                             done});
    return true;
  }

  void JoinHelpers() ABSL_LOCKS_EXCLUDED(helpers_mu) {
    std::list<Helper> joining;
    {
      absl::MutexLock lock(&helpers_mu);
      joining.swap(helpers);
    }
    for (Helper& helper : joining) helper.thread.join();
  }

  // ---- group commit

  void CommitLoop() ABSL_LOCKS_EXCLUDED(report_mu) {
    std::vector<PendingReport> batch;
    while (true) {
      {
        absl::MutexLock lock(&report_mu);
        while (!committer_stop && reports.empty()) report_cv.Wait(&report_mu);
        if (reports.empty()) return;  // stopping, and everything queued has been answered
        batch.swap(reports);
      }
      std::vector<const v1::ReportResultsRequest*> requests;
      requests.reserve(batch.size());
      for (const PendingReport& report : batch) requests.push_back(report.request);
      std::vector<StatusOr<v1::ReportResultsResponse>> results = scheduler->Report(requests);
      for (size_t i = 0; i < batch.size(); ++i) {
        batch[i].reactor->Finish(Answer(i < results.size() ? &results[i] : nullptr,
                                        batch[i].response));
        EndCall();
      }
      batch.clear();
    }
  }

  // The reply to one report of a committed batch.
  static grpc::Status Answer(StatusOr<v1::ReportResultsResponse>* result,
                             v1::ReportResultsResponse* response) {
    if (!result) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          "the scheduler answered fewer reports than it was given");
    }
    if (!result->ok()) return rpc::ToGrpc(result->status());
    *response = std::move(**result);
    // The commit is durable; losing the reply here is what a network drop after the commit looks
    // like to the worker, which then reports again (and must see duplicate = true).
    if (KO_FAULT_POINT("report.drop_response") == fault::Action::kDrop) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "fault point: response dropped after commit");
    }
    return grpc::Status::OK;
  }

  // ---- lease expiry

  void ScheduleExpiry() {
    expiry_timer->expires_after(std::chrono::milliseconds(options.expire_interval_ms));
    expiry_timer->async_wait([this](const boost::system::error_code& error) {
      if (error) return;  // cancelled: shutting down
      StatusOr<int> expired = scheduler->ExpireLeases();
      if (!expired.ok()) Log("WARNING: lease expiry failed: " + expired.status().ToString());
      ScheduleExpiry();
    });
  }

  struct PendingReport {
    ServerUnaryReactor* reactor;
    const v1::ReportResultsRequest* request;
    v1::ReportResultsResponse* response;
  };
  struct Helper {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };

  const ServerOptions options;
  SystemClock system_clock;
  const Clock* clock;
  absl::Mutex log_mu;
  std::ostream* log ABSL_PT_GUARDED_BY(log_mu);
  std::string token;  // "" when no token file was given

  std::unique_ptr<storage::Store> store;
  std::unique_ptr<experiments::SweepStore> sweeps;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<grpc::Server> server;
  int bound_port = 0;
  std::string bound_address;

  absl::Mutex calls_mu;
  absl::CondVar calls_cv;  // signalled when active_calls reaches zero
  int active_calls ABSL_GUARDED_BY(calls_mu) = 0;
  bool accepting ABSL_GUARDED_BY(calls_mu) = true;

  std::atomic<bool> stopping{false};
  absl::Mutex helpers_mu;
  std::list<Helper> helpers ABSL_GUARDED_BY(helpers_mu);

  absl::Mutex report_mu;
  absl::CondVar report_cv;  // signalled when reports or committer_stop changes
  std::vector<PendingReport> reports ABSL_GUARDED_BY(report_mu);
  bool committer_stop ABSL_GUARDED_BY(report_mu) = false;
  std::thread committer;

  boost::asio::io_context io;
  std::unique_ptr<boost::asio::steady_timer> expiry_timer;
  std::thread timer_thread;

  std::shared_ptr<SchedulerMetrics> metrics;
  std::unique_ptr<prometheus::Exposer> exposer;

  // Held for the whole shutdown, so a second caller waits for it; taken before the others.
  absl::Mutex shutdown_mu ABSL_ACQUIRED_BEFORE(calls_mu, helpers_mu, report_mu);
  absl::CondVar shutdown_cv;
  bool shut_down ABSL_GUARDED_BY(shutdown_mu) = false;
};

Status Server::Impl::Start() {
  if (options.store_dir.empty()) return Status::InvalidArgument("no store directory given");
  if (options.max_message_bytes <= 0) {
    return Status::InvalidArgument("max_message_bytes must be positive");
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return Status::InvalidArgument(
        "TLS needs both a certificate and its key (--tls-cert and --tls-key)");
  }
  const bool tls = !options.tls_cert.empty();
  if (!options.tls_client_ca.empty() && !tls) {
    return Status::InvalidArgument(
        "a client CA (--tls-client-ca) needs TLS: give --tls-cert and --tls-key too");
  }
  KO_ASSIGN_OR_RETURN(ListenAddress listen, ParseListen(options.listen));
  if (!tls && !listen.local && !options.insecure) {
    return Status::InvalidArgument(
        "listen address " + options.listen +
        " is not a loopback address: serve it with TLS (--tls-cert, --tls-key) or pass "
        "--insecure to accept plaintext from the network");
  }

  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (tls) {
    KO_ASSIGN_OR_RETURN(std::string cert,
                        rpc::ReadPemOrTokenFile(options.tls_cert, "TLS certificate"));
    KO_ASSIGN_OR_RETURN(std::string key, rpc::ReadPemOrTokenFile(options.tls_key, "TLS key"));
    KO_RETURN_IF_ERROR(CheckCertificateAndKey(cert, options.tls_cert, key, options.tls_key));
    grpc::SslServerCredentialsOptions ssl(
        options.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                      : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    if (!options.tls_client_ca.empty()) {
      KO_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                          rpc::ReadPemOrTokenFile(options.tls_client_ca, "TLS client CA"));
      KO_RETURN_IF_ERROR(
          CheckCertificateAndKey(ssl.pem_root_certs, options.tls_client_ca, "", ""));
    }
    ssl.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    credentials = grpc::InsecureServerCredentials();
    if (!listen.local) {
      Log("WARNING: serving plaintext gRPC on " + options.listen +
          " (--insecure): requests and the bearer token travel unencrypted");
    }
  }
  if (!options.token_file.empty()) {
    KO_ASSIGN_OR_RETURN(token, rpc::ReadTokenFile(options.token_file));
  }

  KO_ASSIGN_OR_RETURN(store, storage::Store::Open(options.store_dir));
  sweeps = std::make_unique<experiments::SweepStore>(store.get());
  KO_ASSIGN_OR_RETURN(scheduler, Scheduler::Open(sweeps.get(), clock, options.scheduler));

  if (!options.metrics_listen.empty()) {
    metrics = std::make_shared<SchedulerMetrics>(scheduler.get());
    // prometheus-cpp (CivetWeb) throws when it cannot bind; errors are values past this point.
    try {
      exposer = std::make_unique<prometheus::Exposer>(options.metrics_listen, 2);
    } catch (const std::exception& error) {
      return Status::Unavailable("cannot serve metrics on " + options.metrics_listen + ": " +
                                 error.what());
    }
    exposer->RegisterCollectable(metrics);
    std::string where = options.metrics_listen;
    const std::vector<int> ports = exposer->GetListeningPorts();
    if (!ports.empty()) {
      const size_t colon = where.rfind(':');
      where = (colon == std::string::npos ? where : where.substr(0, colon)) + ":" +
              std::to_string(ports.front());
    }
    Log("metrics on http://" + where + "/metrics");
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(options.listen, credentials, &selected_port);
  // gRPC sets SO_REUSEPORT by default: a second coordinator on the same port would then share
  // (and split) the traffic instead of failing to bind.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // Debian's Abseil is built with deadlock detection on: every absl::Mutex gRPC takes then
  // updates a global lock graph (coordinator_bench, 64 workers: ~15% more round trips without
  // it). It is a debugging aid; the coordinator's own lock order is stated by its
  // ABSL_ACQUIRED_BEFORE annotations instead.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  builder.RegisterService(this);
  server = builder.BuildAndStart();
  if (!server || selected_port == 0) {
    if (server) server->Shutdown();
    server.reset();
    return Status::Unavailable("cannot listen on " + options.listen +
                               " (address in use or not local to this machine?)");
  }
  bound_port = selected_port;
  // A Unix socket has no port: its address is the path as given.
  bound_address = listen.unix_socket
                      ? listen.host
                      : listen.host + ":" + std::to_string(selected_port);
  if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
    health->SetServingStatus(true);
    health->SetServingStatus(v1::Coordinator::service_full_name(), true);
  }

  committer = std::thread([this] { CommitLoop(); });
  if (options.expire_interval_ms > 0) {
    expiry_timer = std::make_unique<boost::asio::steady_timer>(io);
    ScheduleExpiry();
    timer_thread = std::thread([this] { io.run(); });
  }
  return Status::Ok();
}

void Server::Impl::Shutdown(uint32_t grace_ms) {
  absl::MutexLock shutdown_lock(&shutdown_mu);
  if (shut_down) return;
  if (server) {
    if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
      health->Shutdown();  // NOT_SERVING from now on
    }
  }
  {
    // New calls are refused from here on; streams see `stopping` within kPollSlice and finish;
    // queued reports are committed and answered (the committer still runs).
    absl::MutexLock lock(&calls_mu);
    accepting = false;
    stopping.store(true);
    const absl::Time deadline = absl::Now() + absl::Milliseconds(grace_ms);
    while (active_calls != 0 && !calls_cv.WaitWithDeadline(&calls_mu, deadline)) {
    }
  }
  // Nothing is in flight (or the grace is over): a deadline of now cancels what is left and
  // closes the connections without waiting for idle clients to hang up.
  if (server) server->Shutdown(std::chrono::system_clock::now());
  JoinHelpers();
  {
    absl::MutexLock lock(&report_mu);
    committer_stop = true;
    report_cv.SignalAll();
  }
  if (committer.joinable()) committer.join();
  io.stop();
  if (timer_thread.joinable()) timer_thread.join();
  expiry_timer.reset();
  exposer.reset();  // before the scheduler its collector reads
  metrics.reset();
  server.reset();
  // Closing the store releases the RocksDB lock: a new Server may open the directory.
  scheduler.reset();
  sweeps.reset();
  store.reset();
  shut_down = true;
  shutdown_cv.SignalAll();
}

void Server::Impl::Wait() {
  absl::MutexLock lock(&shutdown_mu);
  while (!shut_down) shutdown_cv.Wait(&shutdown_mu);
}

// ------------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  const Status status = impl->Start();
  if (!status.ok()) {
    impl->Shutdown(0);
    return status;
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Shutdown(); }

int Server::port() const { return impl_->bound_port; }
std::string Server::address() const { return impl_->bound_address; }
Scheduler* Server::scheduler() const { return impl_->scheduler.get(); }
experiments::SweepStore* Server::sweeps() const { return impl_->sweeps.get(); }

void Server::Shutdown(uint32_t grace_ms) { impl_->Shutdown(grace_ms); }
void Server::Wait() { impl_->Wait(); }

}  // namespace knockout::coordinator
