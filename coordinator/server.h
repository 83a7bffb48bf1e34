// The coordinator process in a class: the store, the scheduler, the gRPC Coordinator service
// (callback API) with the standard health service, the lease-expiry timer, the group-commit
// thread for ReportResults, and the Prometheus endpoint. `knockout-coordinator` runs one; the
// CLI's `knockout run` embeds one on loopback.
//
// Security: without TLS the server only listens on loopback addresses unless `insecure` is set
// (a warning is logged). With a token file every RPC (health checks excepted) must carry
// "authorization: Bearer <token>" or fails UNAUTHENTICATED. Messages above max_message_bytes
// are refused by gRPC (RESOURCE_EXHAUSTED).
// Thread-safety: Start, port and Shutdown may be called from any thread; Shutdown is idempotent
// and also runs in the destructor.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>

#include "common/status.h"
#include "coordinator/clock.h"
#include "coordinator/scheduler.h"

namespace knockout::coordinator {

struct ServerOptions {
  std::string store_dir;
  std::string listen = "127.0.0.1:7070";  // host:port; port 0 picks a free one (see port())
  std::string tls_cert;                   // PEM files; both or neither
  std::string tls_key;
  std::string tls_client_ca;              // require client certificates signed by this CA
  std::string token_file;                 // bearer token required on every RPC
  bool insecure = false;                  // allow plaintext on a non-loopback address
  std::string metrics_listen;             // host:port of the Prometheus endpoint; "" none
  // host:port of a plaintext gRPC server with the standard health service alone (no other
  // service, no token): what Kubernetes' native gRPC probes can reach when the main port
  // requires TLS. "" none; port 0 picks a free one (health_port()).
  std::string health_listen;
  int max_message_bytes = 64 << 20;
  // WatchSweep and QueryResults streams open at once (each has a helper thread and a store
  // iterator); one more is refused with RESOURCE_EXHAUSTED until one ends.
  uint32_t max_streams = 64;
  uint32_t expire_interval_ms = 250;      // how often leases are checked for expiry
  SchedulerOptions scheduler;
  const Clock* clock = nullptr;           // nullptr: the system clock
  std::ostream* log = nullptr;            // start-up and warning lines; nullptr: std::cerr
};

class Server {
 public:
  // Opens the store (IOError if another process holds it), opens the scheduler, and starts
  // serving. Errors: InvalidArgument for a plaintext non-loopback listen address without
  // `insecure`, for a TLS certificate without a key (or the reverse); NotFound naming an
  // unreadable PEM or token file; Unavailable if the address cannot be bound.
  static StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  int port() const;                       // the bound port
  int health_port() const;                // the health server's bound port; 0 without one
  std::string address() const;            // host:port actually bound
  Scheduler* scheduler() const;
  experiments::SweepStore* sweeps() const;  // the store, for in-process queries

  // Stops accepting calls, finishes in-flight ones (at most `grace_ms`), stops the timers and the
  // committer, closes the store.
  void Shutdown(uint32_t grace_ms = 2000);
  // Blocks until Shutdown (from another thread or a signal handler's thread) has completed.
  void Wait();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace knockout::coordinator
