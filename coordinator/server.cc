// The Server class: the Coordinator service's unary calls, the group-commit thread, lease
// expiry, start-up and shutdown. Streams are in server_streams.h, the listen/TLS/metrics
// plumbing in server_setup.h.
#include "coordinator/server.h"

#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>
#include <absl/time/time.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/exposer.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <iostream>
#include <list>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "common/fault_points.h"
#include "coordinator/server_setup.h"
#include "coordinator/server_streams.h"
#include "experiments/sweep_store.h"
#include "knockout/v1/coordinator.grpc.pb.h"
#include "proto/protocol.h"
#include "rpc/channel.h"
#include "storage/store.h"

namespace knockout::coordinator {

namespace {

using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;
using server_internal::ConstantTimeEquals;
using server_internal::kChunkBytes;
using server_internal::ListenAddress;
using server_internal::Listener;
using server_internal::PrepareListener;
using server_internal::QueryStream;
using server_internal::SchedulerMetrics;
using server_internal::ShuttingDown;
using server_internal::WatchStream;

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
  // queued as one batch, and the syncer thread makes it durable and then finishes each call.
  // The two overlap: the next group is accepted, encoded and written while this one syncs.
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
    } else if (open_streams.fetch_add(1) >= options.max_streams) {
      open_streams.fetch_sub(1);
      stream->Finish(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          "the coordinator has " + std::to_string(options.max_streams) +
              " WatchSweep/QueryResults streams open (--max-streams); retry when one ends"));
    } else if (SpawnHelper([this, stream] {
                 stream->Run();  // ends with Finish; the stream may be gone after it
                 open_streams.fetch_sub(1);
                 EndCall();
               })) {
      return;
    } else {
      open_streams.fetch_sub(1);
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
      std::vector<StatusOr<v1::ReportResultsResponse>> results =
          scheduler->Report(requests, /*sync=*/false);
      {
        absl::MutexLock lock(&sync_mu);
        to_sync.push_back(Written{std::move(batch), std::move(results)});
        sync_cv.Signal();
      }
      batch.clear();
    }
  }

  // Syncs what the committer wrote, every group written since the last sync at once, then
  // answers those reports: none is acknowledged before its commit is durable.
  void SyncLoop() ABSL_LOCKS_EXCLUDED(sync_mu) {
    std::vector<Written> groups;
    while (true) {
      {
        absl::MutexLock lock(&sync_mu);
        while (!syncer_stop && to_sync.empty()) sync_cv.Wait(&sync_mu);
        if (to_sync.empty()) return;  // stopping, and everything written has been answered
        groups.swap(to_sync);
      }
      const Status synced = scheduler->SyncCommits();
      for (Written& group : groups) {
        for (size_t i = 0; i < group.batch.size(); ++i) {
          StatusOr<v1::ReportResultsResponse>* result =
              i < group.results.size() ? &group.results[i] : nullptr;
          if (result != nullptr && result->ok() && !synced.ok()) *result = synced;
          group.batch[i].reactor->Finish(Answer(result, group.batch[i].response));
          EndCall();
        }
      }
      groups.clear();
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
  struct Written {  // a group the committer wrote, waiting for the syncer
    std::vector<PendingReport> batch;
    std::vector<StatusOr<v1::ReportResultsResponse>> results;
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
  std::unique_ptr<grpc::Server> health_server;  // ServerOptions::health_listen
  // The health server's only registered service: every call it receives other than the health
  // service's is answered UNIMPLEMENTED (gRPC attaches the default health service to a server
  // only when it has a service of its own).
  grpc::CallbackGenericService health_unimplemented;
  int health_bound_port = 0;
  int bound_port = 0;
  std::string bound_address;

  absl::Mutex calls_mu;
  absl::CondVar calls_cv;  // signalled when active_calls reaches zero
  int active_calls ABSL_GUARDED_BY(calls_mu) = 0;
  bool accepting ABSL_GUARDED_BY(calls_mu) = true;

  std::atomic<bool> stopping{false};
  std::atomic<uint32_t> open_streams{0};  // WatchSweep and QueryResults streams running
  absl::Mutex helpers_mu;
  std::list<Helper> helpers ABSL_GUARDED_BY(helpers_mu);

  absl::Mutex report_mu;
  absl::CondVar report_cv;  // signalled when reports or committer_stop changes
  std::vector<PendingReport> reports ABSL_GUARDED_BY(report_mu);
  bool committer_stop ABSL_GUARDED_BY(report_mu) = false;
  std::thread committer;
  absl::Mutex sync_mu;
  absl::CondVar sync_cv;  // signalled when to_sync or syncer_stop changes
  std::vector<Written> to_sync ABSL_GUARDED_BY(sync_mu);
  bool syncer_stop ABSL_GUARDED_BY(sync_mu) = false;
  std::thread syncer;

  boost::asio::io_context io;
  std::unique_ptr<boost::asio::steady_timer> expiry_timer;
  std::thread timer_thread;

  std::shared_ptr<SchedulerMetrics> metrics;
  std::unique_ptr<prometheus::Exposer> exposer;

  // Held for the whole shutdown, so a second caller waits for it; taken before the others.
  absl::Mutex shutdown_mu ABSL_ACQUIRED_BEFORE(calls_mu, helpers_mu, report_mu, sync_mu);
  absl::CondVar shutdown_cv;
  bool shut_down ABSL_GUARDED_BY(shutdown_mu) = false;
};

Status Server::Impl::Start() {
  if (options.store_dir.empty()) return Status::InvalidArgument("no store directory given");
  if (options.max_message_bytes <= 0) {
    return Status::InvalidArgument("max_message_bytes must be positive");
  }
  KO_ASSIGN_OR_RETURN(Listener listener, PrepareListener(options));
  const ListenAddress& listen = listener.address;
  if (listener.plaintext_on_network) {
    Log("WARNING: serving plaintext gRPC on " + options.listen +
        " (--insecure): requests and the bearer token travel unencrypted");
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
  builder.AddListeningPort(options.listen, listener.credentials, &selected_port);
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
  if (!options.health_listen.empty()) {
    // Only the default health service (enabled above) answers; anything else is UNIMPLEMENTED.
    grpc::ServerBuilder health_builder;
    health_builder.RegisterCallbackGenericService(&health_unimplemented);
    health_builder.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(),
                                    &health_bound_port);
    health_builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    health_server = health_builder.BuildAndStart();
    if (!health_server || health_bound_port == 0) {
      if (health_server) health_server->Shutdown();
      health_server.reset();
      server->Shutdown();
      server.reset();
      return Status::Unavailable("cannot listen on " + options.health_listen +
                                 " (--health-listen: address in use or not local?)");
    }
    if (grpc::HealthCheckServiceInterface* health = health_server->GetHealthCheckService()) {
      health->SetServingStatus(true);
      health->SetServingStatus(v1::Coordinator::service_full_name(), true);
    }
    Log("health service (plaintext, for probes) on port " + std::to_string(health_bound_port));
  }

  committer = std::thread([this] { CommitLoop(); });
  syncer = std::thread([this] { SyncLoop(); });
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
  for (grpc::Server* s : {server.get(), health_server.get()}) {
    if (!s) continue;
    if (grpc::HealthCheckServiceInterface* health = s->GetHealthCheckService()) {
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
  if (health_server) health_server->Shutdown(std::chrono::system_clock::now());
  JoinHelpers();
  {
    absl::MutexLock lock(&report_mu);
    committer_stop = true;
    report_cv.SignalAll();
  }
  if (committer.joinable()) committer.join();
  {
    absl::MutexLock lock(&sync_mu);
    syncer_stop = true;
    sync_cv.SignalAll();
  }
  if (syncer.joinable()) syncer.join();
  io.stop();
  if (timer_thread.joinable()) timer_thread.join();
  expiry_timer.reset();
  exposer.reset();  // before the scheduler its collector reads
  metrics.reset();
  server.reset();
  health_server.reset();
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
int Server::health_port() const { return impl_->health_bound_port; }
std::string Server::address() const { return impl_->bound_address; }
Scheduler* Server::scheduler() const { return impl_->scheduler.get(); }
experiments::SweepStore* Server::sweeps() const { return impl_->sweeps.get(); }

void Server::Shutdown(uint32_t grace_ms) { impl_->Shutdown(grace_ms); }
void Server::Wait() { impl_->Wait(); }

}  // namespace knockout::coordinator
