// Client side of the Coordinator service, shared by the CLI and the workers: a channel to the
// coordinator (plaintext on loopback, TLS with optional client certificate otherwise), the bearer
// token every call carries, per-call deadlines, and the mapping of gRPC statuses to knockout's.
// Thread-safety: a CoordinatorClient may be used from many threads (gRPC stubs are thread-safe);
// MakeContext returns a fresh context per call.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "knockout/v1/coordinator.grpc.pb.h"

namespace knockout::rpc {

// The gRPC and protobuf versions this binary links, for --version (common/version.h).
std::vector<std::pair<std::string, std::string>> LibraryVersions();

struct ChannelOptions {
  std::string address;          // host:port
  std::string token_file;       // bearer token sent as "authorization: Bearer <token>"; "" none
  std::string tls_ca;           // PEM of the CA that signed the coordinator's certificate; "" for
                                // plaintext (allowed by the coordinator on loopback or --insecure)
  std::string tls_cert;         // PEM client certificate and key, for mutual TLS
  std::string tls_key;
  std::string tls_server_name;  // override the name checked against the certificate
  int max_message_bytes = 64 << 20;
};

// The metadata key and scheme of the bearer token.
constexpr const char* kAuthorizationHeader = "authorization";
constexpr const char* kBearerPrefix = "Bearer ";

// Reads a whole PEM or token file; NotFound "<what> <path>: cannot be read".
StatusOr<std::string> ReadPemOrTokenFile(const std::string& path, const std::string& what);

// Reads a token file: its content without surrounding whitespace. NotFound / InvalidArgument
// (empty) naming the file.
StatusOr<std::string> ReadTokenFile(const std::string& path);

// Maps a gRPC status to knockout's (UNAVAILABLE -> kUnavailable, INVALID_ARGUMENT ->
// kInvalidArgument, ...), keeping the server's message and prefixing `what` (e.g. "SubmitSweep").
Status FromGrpc(const grpc::Status& status, const std::string& what);
// The other way, for servers.
grpc::Status ToGrpc(const Status& status);

class CoordinatorClient {
 public:
  // Reads the token and PEM files and creates the channel (it connects lazily). Errors name the
  // file that could not be read.
  static StatusOr<std::unique_ptr<CoordinatorClient>> Connect(const ChannelOptions& options);

  // A context with the token and a deadline of `timeout` from now (wait_for_ready off: a down
  // coordinator fails fast with kUnavailable so that callers can back off).
  std::unique_ptr<grpc::ClientContext> MakeContext(std::chrono::milliseconds timeout) const;

  v1::Coordinator::Stub* stub() const { return stub_.get(); }
  const std::string& address() const { return address_; }

 private:
  CoordinatorClient() = default;
  std::string address_;
  std::string token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
};

}  // namespace knockout::rpc
