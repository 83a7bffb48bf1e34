// knockout-coordinator: the coordinator process. Serves the Coordinator gRPC service over one
// store directory until SIGINT or SIGTERM, then shuts down gracefully and exits 0. Prints one
// line, "knockout-coordinator listening on HOST:PORT", to stdout once it serves (scripts and
// tests read the port from it when --listen asks for port 0); errors are one line on stderr
// and exit status 1.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>

#include "common/version.h"
#include "coordinator/server.h"
#include "rpc/channel.h"
#include "storage/store.h"

namespace {

int Fail(const std::string& message) {
  std::cerr << "knockout-coordinator: " << message << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using knockout::coordinator::Server;
  using knockout::coordinator::ServerOptions;

  ServerOptions options;
  double lease_seconds = options.scheduler.lease_ms / 1000.0;
  int max_message_mb = options.max_message_bytes >> 20;

  CLI::App app{"knockout coordinator: leases sweep shards to workers and stores their results"};
  app.set_version_flag("--version", [] {
    auto libraries = knockout::rpc::LibraryVersions();
    libraries.emplace_back("RocksDB", knockout::storage::Store::RocksDbVersion());
    std::string text = knockout::VersionText("knockout-coordinator", libraries);
    return text.substr(0, text.size() - 1);  // CLI11 ends the line
  });
  app.add_option("--store", options.store_dir, "Store directory (created if missing)")
      ->required();
  app.add_option("--listen", options.listen,
                 "host:port to serve gRPC on; port 0 picks a free port")
      ->capture_default_str();
  app.add_option("--tls-cert", options.tls_cert, "PEM server certificate (with --tls-key)");
  app.add_option("--tls-key", options.tls_key, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", options.tls_client_ca,
                 "PEM CA: require client certificates signed by it (mutual TLS)");
  app.add_option("--token-file", options.token_file,
                 "File holding the bearer token every RPC must carry");
  app.add_flag("--insecure", options.insecure,
               "Allow plaintext on a non-loopback address (logs a warning)");
  app.add_option("--metrics-listen", options.metrics_listen,
                 "host:port of the Prometheus /metrics endpoint (none by default)");
  app.add_option("--health-listen", options.health_listen,
                 "host:port of a plaintext gRPC health service for probes (none by default)");
  bool check_flags = false;
  app.add_flag("--check-flags", check_flags,
               "parse the command line, then exit 0 without starting (deployment checks)");
  app.add_option("--lease-seconds", lease_seconds,
                 "Lease length; workers heartbeat every third of it")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  app.add_option("--max-attempts", options.scheduler.max_attempts,
                 "Counted attempts before a shard (and its sweep) fails")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--max-message-mb", max_message_mb, "Largest gRPC message accepted, in MiB")
      ->check(CLI::Range(1, 2047))
      ->capture_default_str();
  app.add_option("--checkpoint-root", options.scheduler.checkpoint_root,
                 "Where orthogonalize stages without output: write (ROOT/SWEEP/STAGE), on storage "
                 "the workers share (default: STORE/checkpoints, only right when the workers see "
                 "the store's directory)");
  app.add_option("--max-streams", options.max_streams,
                 "WatchSweep/QueryResults streams open at once; more are refused until one ends")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForAllHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForVersion& version) {
    return app.exit(version);
  } catch (const CLI::ParseError& error) {
    return Fail(error.what());
  }
  if (check_flags) return 0;
  options.scheduler.lease_ms = static_cast<uint32_t>(lease_seconds * 1000.0 + 0.5);
  options.max_message_bytes = max_message_mb << 20;

  // Block the signals in every thread (the server's threads inherit the mask) and take them
  // synchronously here, so that shutdown runs in ordinary code rather than a signal handler.
  // A no-op handler first: a shell that starts us in the background sets SIGINT to "ignored",
  // and an ignored signal would never reach sigwait.
  struct sigaction action {};
  action.sa_handler = [](int) {};
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = Server::Start(options);
  if (!server.ok()) return Fail(server.status().ToString());
  std::cout << "knockout-coordinator listening on " << (*server)->address() << std::endl;

  int signal_number = 0;
  while (sigwait(&signals, &signal_number) != 0) {
  }
  std::cerr << "knockout-coordinator: signal " << signal_number << ", shutting down"
            << std::endl;
  (*server)->Shutdown();
  return 0;
}
