// The coordinator process's plumbing around its service (server.cc): the listen address and
// its credentials (TLS files checked with OpenSSL, plaintext only on loopback unless insecure),
// the bearer token's comparison, and the Prometheus collector over the scheduler's counters.
// Private to coordinator/. Thread-safety: stateless functions; SchedulerMetrics::Collect may run
// on any thread (Scheduler::Counters is thread-safe).
#pragma once

#include <grpcpp/security/server_credentials.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "coordinator/scheduler.h"
#include "coordinator/server.h"

namespace knockout::coordinator::server_internal {

// Compares in time independent of where the strings differ, so that a client cannot find the
// token byte by byte from response times. (The length is not secret.)
bool ConstantTimeEquals(std::string_view a, std::string_view b);

struct ListenAddress {
  std::string host;  // as written ("[::1]" keeps its brackets)
  bool local = false;  // loopback, or a Unix socket: unreachable from other machines
  bool unix_socket = false;
};

// Parses "host:port", "[IPv6]:port", "unix:PATH" or "unix-abstract:NAME"; InvalidArgument
// naming the address otherwise.
StatusOr<ListenAddress> ParseListen(const std::string& listen);

// gRPC only says "cannot start" for a bad certificate; OpenSSL can say which file is wrong.
// InvalidArgument naming the file. An empty key_pem checks the certificate alone.
Status CheckCertificateAndKey(const std::string& cert_pem, const std::string& cert_path,
                              const std::string& key_pem, const std::string& key_path);

// Where and how the server listens.
struct Listener {
  ListenAddress address;
  std::shared_ptr<grpc::ServerCredentials> credentials;
  bool plaintext_on_network = false;  // --insecure on a non-loopback address: warn
};

// Checks the flags' combination (TLS needs a certificate and its key, a client CA needs TLS, a
// non-loopback address needs TLS or `insecure`), reads and checks the PEM files. InvalidArgument
// naming the flag or file; NotFound for a missing file.
StatusOr<Listener> PrepareListener(const ServerOptions& options);

// shows numbers older than the request.
class SchedulerMetrics : public prometheus::Collectable {
 public:
  explicit SchedulerMetrics(const Scheduler* scheduler) : scheduler_(scheduler) {}

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  static void AddCounter(std::vector<prometheus::MetricFamily>* families, const char* name,
                         const char* help, uint64_t value);

  const Scheduler* scheduler_;
};

}  // namespace knockout::coordinator::server_internal
