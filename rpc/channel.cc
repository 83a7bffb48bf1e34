#include "rpc/channel.h"

#include <google/protobuf/stubs/common.h>
#include <grpcpp/grpcpp.h>

#include <fstream>
#include <sstream>
#include <utility>

namespace knockout::rpc {

std::vector<std::pair<std::string, std::string>> LibraryVersions() {
  const int pb = GOOGLE_PROTOBUF_VERSION;  // e.g. 3021012
  return {{"gRPC", grpc::Version()},
          {"protobuf", std::to_string(pb / 1000000) + "." + std::to_string(pb / 1000 % 1000) + "." +
                           std::to_string(pb % 1000)}};
}

namespace {

std::string Trim(const std::string& text) {
  const char* kSpace = " \t\r\n\f\v";
  const size_t begin = text.find_first_not_of(kSpace);
  if (begin == std::string::npos) return "";
  const size_t end = text.find_last_not_of(kSpace);
  return text.substr(begin, end - begin + 1);
}

}  // namespace

StatusOr<std::string> ReadPemOrTokenFile(const std::string& path, const std::string& what) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return Status::NotFound(what + " " + path + ": cannot be read");
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) return Status::NotFound(what + " " + path + ": cannot be read");
  return text.str();
}

StatusOr<std::string> ReadTokenFile(const std::string& path) {
  KO_ASSIGN_OR_RETURN(std::string text, ReadPemOrTokenFile(path, "token file"));
  std::string token = Trim(text);
  if (token.empty()) return Status::InvalidArgument("token file " + path + " is empty");
  // A token with a line break or control character could not travel as one metadata value.
  for (const char c : token) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Status::InvalidArgument("token file " + path +
                                     ": the token holds a control character or line break");
    }
  }
  return token;
}

Status FromGrpc(const grpc::Status& status, const std::string& what) {
  if (status.ok()) return Status::Ok();
  const std::string message = what.empty() ? status.error_message()
                                           : what + ": " + status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return Status::Ok();
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return Status::InvalidArgument(message);
    // The request (or reply) was larger than a peer accepts: retrying the same call cannot
    // succeed, so it reads as a bad argument, not as a transient failure.
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return Status::InvalidArgument(message);
    case grpc::StatusCode::NOT_FOUND:
      return Status::NotFound(message);
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ABORTED:
      return Status::FailedPrecondition(message);
    case grpc::StatusCode::PERMISSION_DENIED:
      return Status::PermissionDenied(message);
    case grpc::StatusCode::UNAUTHENTICATED:
      return Status::Unauthenticated(message);
    case grpc::StatusCode::UNIMPLEMENTED:
      return Status::Unimplemented(message);
    case grpc::StatusCode::DATA_LOSS:
      return Status::Corruption(message);
    // A deadline that passed says nothing about the request: the coordinator was slow or
    // unreachable, and the caller may back off and retry.
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::CANCELLED:
      return Status::Unavailable(message);
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
    default:
      return Status::Internal(message);
  }
}

grpc::Status ToGrpc(const Status& status) {
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  switch (status.code()) {
    case StatusCode::kOk: return grpc::Status::OK;
    case StatusCode::kInvalidArgument: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case StatusCode::kNotFound: code = grpc::StatusCode::NOT_FOUND; break;
    case StatusCode::kCorruption: code = grpc::StatusCode::DATA_LOSS; break;
    // A failed disk write on the coordinator is a server-side fault the client cannot fix.
    case StatusCode::kIOError: code = grpc::StatusCode::INTERNAL; break;
    case StatusCode::kUnimplemented: code = grpc::StatusCode::UNIMPLEMENTED; break;
    case StatusCode::kFailedPrecondition: code = grpc::StatusCode::FAILED_PRECONDITION; break;
    case StatusCode::kInternal: code = grpc::StatusCode::INTERNAL; break;
    case StatusCode::kPermissionDenied: code = grpc::StatusCode::PERMISSION_DENIED; break;
    case StatusCode::kUnavailable: code = grpc::StatusCode::UNAVAILABLE; break;
    case StatusCode::kUnauthenticated: code = grpc::StatusCode::UNAUTHENTICATED; break;
    case StatusCode::kCancelled: code = grpc::StatusCode::CANCELLED; break;
    case StatusCode::kDeadlineExceeded: code = grpc::StatusCode::DEADLINE_EXCEEDED; break;
  }
  // kIOError travels as INTERNAL; keep its name in the text so that the client still sees it.
  std::string message = status.code() == StatusCode::kIOError
                            ? std::string(StatusCodeName(status.code())) + ": " + status.message()
                            : status.message();
  return grpc::Status(code, std::move(message));
}

StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Connect(
    const ChannelOptions& options) {
  if (options.address.empty()) return Status::InvalidArgument("no coordinator address given");
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return Status::InvalidArgument(
        "a client certificate needs its key and the reverse (tls_cert and tls_key)");
  }
  if (!options.tls_cert.empty() && options.tls_ca.empty()) {
    return Status::InvalidArgument(
        "a client certificate is only sent over TLS: give the coordinator's CA (tls_ca) too");
  }
  std::unique_ptr<CoordinatorClient> client(new CoordinatorClient());
  client->address_ = options.address;
  if (!options.token_file.empty()) {
    KO_ASSIGN_OR_RETURN(client->token_, ReadTokenFile(options.token_file));
  }

  std::shared_ptr<grpc::ChannelCredentials> credentials;
  grpc::ChannelArguments arguments;
  if (!options.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    KO_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemOrTokenFile(options.tls_ca, "TLS CA file"));
    if (!options.tls_cert.empty()) {
      KO_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPemOrTokenFile(options.tls_cert, "TLS certificate"));
      KO_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPemOrTokenFile(options.tls_key, "TLS key"));
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      arguments.SetSslTargetNameOverride(options.tls_server_name);
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  arguments.SetMaxReceiveMessageSize(options.max_message_bytes);
  arguments.SetMaxSendMessageSize(options.max_message_bytes);
  // gRPC's default reconnect backoff grows to 120 s: a worker would sit idle for minutes after a
  // coordinator restart. Cap it at a few seconds; workers back off on their own as well.
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  arguments.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  client->channel_ = grpc::CreateCustomChannel(options.address, credentials, arguments);
  if (!client->channel_) {
    return Status::InvalidArgument("cannot create a channel to " + options.address);
  }
  client->stub_ = v1::Coordinator::NewStub(client->channel_);
  return client;
}

std::unique_ptr<grpc::ClientContext> CoordinatorClient::MakeContext(
    std::chrono::milliseconds timeout) const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + timeout);
  context->set_wait_for_ready(false);
  if (!token_.empty()) context->AddMetadata(kAuthorizationHeader, kBearerPrefix + token_);
  return context;
}

}  // namespace knockout::rpc
