// The server's plumbing: listen address and credentials, token comparison, metrics collector
// (server_setup.h).
#include "coordinator/server_setup.h"

#include <arpa/inet.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <utility>

#include "rpc/channel.h"

namespace knockout::coordinator::server_internal {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

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

StatusOr<Listener> PrepareListener(const ServerOptions& options) {
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

  Listener listener;
  listener.address = listen;
  std::shared_ptr<grpc::ServerCredentials>& credentials = listener.credentials;
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
    listener.plaintext_on_network = !listen.local;
  }
  return listener;
}

std::vector<prometheus::MetricFamily> SchedulerMetrics::Collect() const {
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

void SchedulerMetrics::AddCounter(std::vector<prometheus::MetricFamily>* families, const char* name,
                       const char* help, uint64_t value) {
  prometheus::MetricFamily family{name, help, prometheus::MetricType::Counter, {}};
  prometheus::ClientMetric metric;
  metric.counter.value = static_cast<double>(value);
  family.metric.push_back(std::move(metric));
  families->push_back(std::move(family));
}

}  // namespace knockout::coordinator::server_internal
