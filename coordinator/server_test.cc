// The coordinator's gRPC server in-process on 127.0.0.1:0, driven through rpc::CoordinatorClient:
// bad input through the API, the security rules (token, TLS, mutual TLS, loopback-only
// plaintext), the dropped ReportResults reply after a commit, the health service, WatchSweep,
// QueryResults, group commit under concurrency, metrics, lease expiry on the timer, a restart on
// the same directory, and the knockout-coordinator process itself.
#include "coordinator/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/fault_points.h"
#include "experiments/spec_inputs.h"
#include "proto/protocol.h"
#include "rpc/channel.h"

namespace knockout::coordinator {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr milliseconds kTimeout{10'000};

// Two layers x 8 heads = 16 trials over 4 prompts, 8 trials per shard.
constexpr char kSpec[] = R"(name: tiny
seed: 1
model:
  path: models/demo-refusal
prompt_sets:
  harmful_val: {path: experiments/prompts/demo/harmful_val.jsonl, limit: 4}
metrics:
  refusal_tokens: ["I"]
shard_trials: 8
shard_prompts: 4
stages:
  - name: heads
    knockout_sweep:
      prompt_sets: [harmful_val]
      targets:
        - {kind: heads, layers: [0, 1]}
      ablations: [zero]
      positions: [post_inst]
)";

// An ostream the server may write to while the test reads it.
class LockedLog : public std::streambuf {
 public:
  std::string text() {
    std::lock_guard<std::mutex> lock(mu_);
    return text_;
  }

 protected:
  int overflow(int c) override {
    if (c == EOF) return 0;
    std::lock_guard<std::mutex> lock(mu_);
    text_.push_back(static_cast<char>(c));
    return c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    std::lock_guard<std::mutex> lock(mu_);
    text_.append(s, static_cast<size_t>(n));
    return n;
  }

 private:
  std::mutex mu_;
  std::string text_;
};

void WriteText(const fs::path& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary);
  file << text;
}

std::string ReadText(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

// Certificates made once for the whole suite with the openssl command line: a self-signed server
// certificate for localhost / 127.0.0.1, a CA, and a client certificate signed by that CA.
struct Certificates {
  fs::path dir;
  bool ok = false;
  fs::path server_cert() const { return dir / "server.pem"; }
  fs::path server_key() const { return dir / "server.key"; }
  fs::path ca_cert() const { return dir / "ca.pem"; }
  fs::path client_cert() const { return dir / "client.pem"; }
  fs::path client_key() const { return dir / "client.key"; }
};

Certificates* MakeCertificates() {
  auto* certs = new Certificates();
  char pattern[] = "/tmp/knockout-server-certs-XXXXXX";
  certs->dir = mkdtemp(pattern);
  const std::string d = certs->dir.string();
  const std::string commands =
      "cd " + d + " && " +
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout server.key -out server.pem "
      "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 && "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout ca.key -out ca.pem "
      "-subj /CN=knockout-test-ca && "
      "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=worker && "
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "-out client.pem";
  certs->ok = std::system(("(" + commands + ") > " + d + "/openssl.log 2>&1").c_str()) == 0;
  return certs;
}

Certificates* made_certificates = nullptr;

const Certificates& Certs() {
  if (!made_certificates) made_certificates = MakeCertificates();
  return *made_certificates;
}

// Removes the certificates' directory after the last test.
class CertificatesCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    if (!made_certificates) return;
    std::error_code ignored;
    fs::remove_all(made_certificates->dir, ignored);
  }
};
::testing::Environment* const kCleanup =
    ::testing::AddGlobalTestEnvironment(new CertificatesCleanup);

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/knockout-server-test-XXXXXX";
    dir_ = mkdtemp(pattern);
    fault::DisarmAll();
  }
  void TearDown() override {
    fault::DisarmAll();
    server_.reset();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  ServerOptions Options() {
    ServerOptions options;
    options.store_dir = (dir_ / "store").string();
    options.listen = "127.0.0.1:0";
    options.log = &log_stream_;
    return options;
  }

  void Start(ServerOptions options) {
    auto server = Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    ASSERT_GT(server_->port(), 0);
  }

  std::unique_ptr<rpc::CoordinatorClient> Connect(rpc::ChannelOptions options = {}) {
    if (options.address.empty()) options.address = "127.0.0.1:" + std::to_string(server_->port());
    auto client = rpc::CoordinatorClient::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(*client) : nullptr;
  }

  static v1::SubmitSweepRequest SubmitRequest(const std::string& yaml = kSpec) {
    v1::SubmitSweepRequest request;
    *request.mutable_version() = CurrentProtocol();
    request.set_spec_yaml(yaml);
    request.set_spec_label("tiny.yaml");
    request.set_base_dir(KNOCKOUT_SOURCE_DIR);
    // What the CLI sends with the spec; a malformed spec (some tests send one on purpose) goes
    // without, for the coordinator to refuse.
    auto inputs = experiments::ReadSpecInputs(yaml, "tiny.yaml", KNOCKOUT_SOURCE_DIR);
    if (inputs.ok()) *request.mutable_inputs() = std::move(*inputs);
    return request;
  }

  // Submits kSpec; returns the sweep id.
  std::string Submit(rpc::CoordinatorClient& client) {
    v1::SubmitSweepResponse response;
    auto context = client.MakeContext(kTimeout);
    grpc::Status status = client.stub()->SubmitSweep(context.get(), SubmitRequest(), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.sweep_id();
  }

  static grpc::Status ListSweeps(rpc::CoordinatorClient& client,
                                 v1::ListSweepsResponse* response = nullptr) {
    v1::ListSweepsRequest request;
    *request.mutable_version() = CurrentProtocol();
    v1::ListSweepsResponse ignored;
    auto context = client.MakeContext(kTimeout);
    return client.stub()->ListSweeps(context.get(), request, response ? response : &ignored);
  }

  static std::vector<v1::Lease> Lease(rpc::CoordinatorClient& client, const std::string& worker,
                                      uint32_t capacity) {
    v1::LeaseShardsRequest request;
    *request.mutable_version() = CurrentProtocol();
    request.mutable_worker()->set_id(worker);
    request.mutable_worker()->set_device("cpu");
    request.set_capacity(capacity);
    v1::LeaseShardsResponse response;
    auto context = client.MakeContext(kTimeout);
    grpc::Status status = client.stub()->LeaseShards(context.get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return {response.leases().begin(), response.leases().end()};
  }

  // A result for every trial x prompt of the shard, plus each trial's aggregate row.
  static v1::ShardResult FakeResult(const v1::Shard& shard) {
    v1::ShardResult result;
    result.set_sweep_id(shard.sweep_id());
    result.set_stage(shard.stage());
    result.set_index(shard.index());
    for (const v1::Trial& trial : shard.trials()) {
      for (const v1::ShardPrompt& prompt : shard.prompts()) {
        if (!trial.prompt_set().empty() && trial.prompt_set() != prompt.set()) continue;
        v1::ResultRow* row = result.add_rows();
        row->set_trial(trial.index());
        row->set_prompt_set(prompt.set());
        row->set_prompt(static_cast<int32_t>(prompt.index()));
        (*row->mutable_values())["refusal_score"] = 0.25 * trial.index() + prompt.index();
      }
      v1::ResultRow* aggregate = result.add_rows();
      aggregate->set_trial(trial.index());
      aggregate->set_prompt_set(shard.prompts(0).set());
      aggregate->set_prompt(-1);
      (*aggregate->mutable_values())["refusal_score"] = 0.25 * trial.index();
    }
    result.set_seconds(0.5);
    result.set_trials_run(static_cast<uint64_t>(shard.trials_size()));
    return result;
  }

  static v1::ReportResultsRequest ReportRequest(const std::string& worker, const v1::Lease& lease) {
    v1::ReportResultsRequest request;
    *request.mutable_version() = CurrentProtocol();
    request.set_worker_id(worker);
    *request.mutable_lease() = lease.ref();
    *request.mutable_result() = FakeResult(lease.shard());
    return request;
  }

  static grpc::Status Report(rpc::CoordinatorClient& client, const v1::ReportResultsRequest& request,
                             v1::ReportResultsResponse* response) {
    auto context = client.MakeContext(kTimeout);
    return client.stub()->ReportResults(context.get(), request, response);
  }

  // Every chunk of a QueryResults call; the status in *status.
  static std::vector<v1::QueryResultsChunk> Query(rpc::CoordinatorClient& client,
                                                  const std::string& sweep,
                                                  v1::QueryResultsRequest::What what,
                                                  grpc::Status* status) {
    v1::QueryResultsRequest request;
    *request.mutable_version() = CurrentProtocol();
    request.set_sweep(sweep);
    request.set_what(what);
    request.set_stage(0);
    auto context = client.MakeContext(kTimeout);
    auto reader = client.stub()->QueryResults(context.get(), request);
    std::vector<v1::QueryResultsChunk> chunks;
    v1::QueryResultsChunk chunk;
    while (reader->Read(&chunk)) chunks.push_back(chunk);
    *status = reader->Finish();
    return chunks;
  }

  static std::vector<v1::ResultRow> Rows(rpc::CoordinatorClient& client, const std::string& sweep) {
    grpc::Status status;
    std::vector<v1::ResultRow> rows;
    for (const auto& chunk : Query(client, sweep, v1::QueryResultsRequest::ROWS, &status)) {
      rows.insert(rows.end(), chunk.rows().begin(), chunk.rows().end());
    }
    EXPECT_TRUE(status.ok()) << status.error_message();
    return rows;
  }

  static std::vector<v1::ShardRecord> Shards(rpc::CoordinatorClient& client,
                                             const std::string& sweep) {
    grpc::Status status;
    std::vector<v1::ShardRecord> shards;
    for (const auto& chunk : Query(client, sweep, v1::QueryResultsRequest::SHARDS, &status)) {
      shards.insert(shards.end(), chunk.shards().begin(), chunk.shards().end());
    }
    EXPECT_TRUE(status.ok()) << status.error_message();
    return shards;
  }

  fs::path dir_;
  FakeClock clock_;  // outlives server_ (TearDown stops the server first)
  LockedLog log_buffer_;
  std::ostream log_stream_{&log_buffer_};
  std::unique_ptr<Server> server_;
};

// ------------------------------------------------------------------------------------------
// Bad input through the API

TEST_F(ServerTest, MalformedSpecIsInvalidArgumentNamingTheLineAndStoresNothing) {
  Start(Options());
  auto client = Connect();
  v1::SubmitSweepResponse response;
  auto context = client->MakeContext(kTimeout);
  grpc::Status status = client->stub()->SubmitSweep(
      context.get(), SubmitRequest(std::string(kSpec) + "bogus_key: 1\n"), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(std::regex_search(status.error_message(), std::regex("tiny\\.yaml:[0-9]+")))
      << status.error_message();
  EXPECT_NE(status.error_message().find("bogus_key"), std::string::npos);

  // An index the model does not have is refused as well, before anything is stored.
  std::string out_of_range = kSpec;
  out_of_range.replace(out_of_range.find("layers: [0, 1]"), 14, "layers: [0, 9]");
  context = client->MakeContext(kTimeout);
  status = client->stub()->SubmitSweep(context.get(), SubmitRequest(out_of_range), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_TRUE(std::regex_search(status.error_message(), std::regex("tiny\\.yaml:[0-9]+")))
      << status.error_message();

  v1::ListSweepsResponse list;
  ASSERT_TRUE(ListSweeps(*client, &list).ok());
  EXPECT_EQ(list.sweeps_size(), 0);
}

TEST_F(ServerTest, UnknownSweepIsNotFound) {
  Start(Options());
  auto client = Connect();
  v1::GetSweepRequest get;
  *get.mutable_version() = CurrentProtocol();
  get.set_sweep("no-such-sweep");
  v1::SweepProgress progress;
  auto context = client->MakeContext(kTimeout);
  grpc::Status status = client->stub()->GetSweep(context.get(), get, &progress);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_NE(status.error_message().find("no-such-sweep"), std::string::npos);

  v1::CancelSweepRequest cancel;
  *cancel.mutable_version() = CurrentProtocol();
  cancel.set_sweep("no-such-sweep");
  context = client->MakeContext(kTimeout);
  EXPECT_EQ(client->stub()->CancelSweep(context.get(), cancel, &progress).error_code(),
            grpc::StatusCode::NOT_FOUND);

  grpc::Status query_status;
  Query(*client, "no-such-sweep", v1::QueryResultsRequest::ROWS, &query_status);
  EXPECT_EQ(query_status.error_code(), grpc::StatusCode::NOT_FOUND);

  v1::WatchSweepRequest watch;
  *watch.mutable_version() = CurrentProtocol();
  watch.set_sweep("no-such-sweep");
  context = client->MakeContext(kTimeout);
  auto reader = client->stub()->WatchSweep(context.get(), watch);
  EXPECT_FALSE(reader->Read(&progress));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);

  // The client library maps it back to knockout's NotFound, keeping the message.
  Status mapped = rpc::FromGrpc(status, "GetSweep");
  EXPECT_EQ(mapped.code(), StatusCode::kNotFound);
  EXPECT_NE(mapped.message().find("GetSweep: "), std::string::npos);
}

TEST_F(ServerTest, ReportForAShardNeverLeasedIsPermissionDeniedAndStoresNothing) {
  Start(Options());
  auto client = Connect();
  const std::string sweep = Submit(*client);
  // Another worker holds shard 0; "intruder" never leased it.
  std::vector<v1::Lease> leases = Lease(*client, "holder", 1);
  ASSERT_EQ(leases.size(), 1u);
  v1::ReportResultsResponse response;
  grpc::Status status = Report(*client, ReportRequest("intruder", leases[0]), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();

  EXPECT_TRUE(Rows(*client, sweep).empty());
  for (const v1::ShardRecord& shard : Shards(*client, sweep)) EXPECT_NE(shard.state(), v1::DONE);
}

TEST_F(ServerTest, OversizedMessageIsResourceExhausted) {
  ServerOptions options = Options();
  options.max_message_bytes = 1 << 20;
  Start(options);
  auto client = Connect();  // the client itself would send up to 64 MiB
  std::string yaml = kSpec;
  yaml += "# " + std::string(2 << 20, 'x') + "\n";
  v1::SubmitSweepResponse response;
  auto context = client->MakeContext(kTimeout);
  grpc::Status status = client->stub()->SubmitSweep(context.get(), SubmitRequest(yaml), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_EQ(rpc::FromGrpc(status, "SubmitSweep").code(), StatusCode::kInvalidArgument);

  v1::ListSweepsResponse list;
  ASSERT_TRUE(ListSweeps(*client, &list).ok());
  EXPECT_EQ(list.sweeps_size(), 0);
}

TEST_F(ServerTest, WrongProtocolMajorIsFailedPreconditionNamingBothVersions) {
  Start(Options());
  auto client = Connect();
  v1::ListSweepsRequest request;
  request.mutable_version()->set_major(kProtocolMajor + 1);
  request.mutable_version()->set_minor(3);
  v1::ListSweepsResponse response;
  auto context = client->MakeContext(kTimeout);
  grpc::Status status = client->stub()->ListSweeps(context.get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  const std::string theirs = std::to_string(kProtocolMajor + 1) + ".3";
  const std::string ours = std::to_string(kProtocolMajor) + "." + std::to_string(kProtocolMinor);
  EXPECT_NE(status.error_message().find(theirs), std::string::npos) << status.error_message();
  EXPECT_NE(status.error_message().find(ours), std::string::npos) << status.error_message();

  // A report from an old worker never reaches the scheduler either.
  v1::ReportResultsRequest report;
  report.mutable_lease()->set_sweep_id("x");
  v1::ReportResultsResponse report_response;
  EXPECT_EQ(Report(*client, report, &report_response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// ------------------------------------------------------------------------------------------
// Security

TEST_F(ServerTest, TokenIsRequiredOnEveryCall) {
  WriteText(dir_ / "token", "s3cret-token\n");
  WriteText(dir_ / "wrong", "s3cret-tokem\n");
  ServerOptions options = Options();
  options.token_file = (dir_ / "token").string();
  Start(options);

  auto anonymous = Connect();
  grpc::Status status = ListSweeps(*anonymous);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "missing or wrong bearer token");
  EXPECT_EQ(rpc::FromGrpc(status, "").code(), StatusCode::kUnauthenticated);
  // Streams and the group-committed report are guarded too.
  grpc::Status query_status;
  Query(*anonymous, "x", v1::QueryResultsRequest::ROWS, &query_status);
  EXPECT_EQ(query_status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  v1::ReportResultsRequest report;
  *report.mutable_version() = CurrentProtocol();
  v1::ReportResultsResponse report_response;
  EXPECT_EQ(Report(*anonymous, report, &report_response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  rpc::ChannelOptions wrong;
  wrong.token_file = (dir_ / "wrong").string();
  EXPECT_EQ(ListSweeps(*Connect(wrong)).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  rpc::ChannelOptions right;
  right.token_file = (dir_ / "token").string();
  EXPECT_TRUE(ListSweeps(*Connect(right)).ok());
}

TEST_F(ServerTest, TlsWorksEndToEndAndRefusesPlaintextClients) {
  ASSERT_TRUE(Certs().ok) << ReadText(Certs().dir / "openssl.log");
  ServerOptions options = Options();
  options.tls_cert = Certs().server_cert().string();
  options.tls_key = Certs().server_key().string();
  Start(options);

  rpc::ChannelOptions tls;
  tls.tls_ca = Certs().server_cert().string();
  auto client = Connect(tls);  // 127.0.0.1: checked against the certificate's IP SAN
  grpc::Status status = ListSweeps(*client);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(Submit(*client).empty());

  rpc::ChannelOptions by_name = tls;
  by_name.tls_server_name = "localhost";
  status = ListSweeps(*Connect(by_name));
  EXPECT_TRUE(status.ok()) << status.error_message();

  // A name the certificate does not hold fails the handshake.
  rpc::ChannelOptions wrong_name = tls;
  wrong_name.tls_server_name = "elsewhere.example";
  EXPECT_EQ(ListSweeps(*Connect(wrong_name)).error_code(), grpc::StatusCode::UNAVAILABLE);

  auto plaintext = Connect();
  status = ListSweeps(*plaintext);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST_F(ServerTest, MutualTlsRequiresAClientCertificateSignedByTheCa) {
  ASSERT_TRUE(Certs().ok) << ReadText(Certs().dir / "openssl.log");
  ServerOptions options = Options();
  options.tls_cert = Certs().server_cert().string();
  options.tls_key = Certs().server_key().string();
  options.tls_client_ca = Certs().ca_cert().string();
  Start(options);

  rpc::ChannelOptions no_cert;
  no_cert.tls_ca = Certs().server_cert().string();
  grpc::Status status = ListSweeps(*Connect(no_cert));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  // The server's own (self-signed, not CA-signed) certificate is not accepted as a client's.
  rpc::ChannelOptions foreign = no_cert;
  foreign.tls_cert = Certs().server_cert().string();
  foreign.tls_key = Certs().server_key().string();
  EXPECT_EQ(ListSweeps(*Connect(foreign)).error_code(), grpc::StatusCode::UNAVAILABLE);

  rpc::ChannelOptions with_cert = no_cert;
  with_cert.tls_cert = Certs().client_cert().string();
  with_cert.tls_key = Certs().client_key().string();
  status = ListSweeps(*Connect(with_cert));
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(ServerTest, PlaintextOnlyOnLoopbackUnlessInsecure) {
  ServerOptions options = Options();
  options.listen = "0.0.0.0:0";
  auto refused = Server::Start(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("0.0.0.0:0"), std::string::npos);
  EXPECT_EQ(log_buffer_.text().find("WARNING"), std::string::npos);

  options.insecure = true;
  Start(options);
  EXPECT_NE(log_buffer_.text().find("WARNING"), std::string::npos) << log_buffer_.text();
  EXPECT_EQ(server_->address(), "0.0.0.0:" + std::to_string(server_->port()));
  EXPECT_TRUE(ListSweeps(*Connect()).ok());
  server_->Shutdown();

  // Every loopback spelling is plaintext without a warning.
  for (const char* listen : {"localhost:0", "127.0.0.2:0", "[::1]:0"}) {
    ServerOptions loopback = Options();
    loopback.listen = listen;
    std::ostringstream quiet;
    loopback.log = &quiet;
    auto server = Server::Start(loopback);
    // [::1] may be missing in a container without IPv6; the address check passed if the error
    // is about binding.
    if (!server.ok()) {
      EXPECT_EQ(server.status().code(), StatusCode::kUnavailable) << listen;
      continue;
    }
    EXPECT_EQ(quiet.str().find("WARNING"), std::string::npos) << listen;
  }
}

TEST_F(ServerTest, StartErrorsNameTheFile) {
  ServerOptions options = Options();
  options.token_file = (dir_ / "missing-token").string();
  auto server = Server::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kNotFound);
  EXPECT_NE(server.status().message().find("missing-token"), std::string::npos);

  options = Options();
  options.tls_cert = (dir_ / "missing.pem").string();
  options.tls_key = (dir_ / "missing.key").string();
  server = Server::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kNotFound);
  EXPECT_NE(server.status().message().find("missing.pem"), std::string::npos);

  options = Options();
  options.tls_cert = (dir_ / "cert-only.pem").string();
  server = Server::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);

  WriteText(dir_ / "garbage.pem", "not a certificate\n");
  WriteText(dir_ / "garbage.key", "not a key\n");
  options = Options();
  options.tls_cert = (dir_ / "garbage.pem").string();
  options.tls_key = (dir_ / "garbage.key").string();
  server = Server::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("garbage.pem"), std::string::npos);

  // The store directory is locked by a running server.
  Start(Options());
  ServerOptions second = Options();
  server = Server::Start(second);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kIOError) << server.status().ToString();
}

// ------------------------------------------------------------------------------------------
// Reports

TEST_F(ServerTest, DroppedReportResponseIsRetriedAsADuplicateAndCommittedOnce) {
  ASSERT_TRUE(fault::Enabled()) << "test binaries link the armable fault points";
  Start(Options());
  auto client = Connect();
  const std::string sweep = Submit(*client);
  std::vector<v1::Lease> leases = Lease(*client, "w1", 1);
  ASSERT_EQ(leases.size(), 1u);
  const v1::ReportResultsRequest request = ReportRequest("w1", leases[0]);

  fault::Arm("report.drop_response", fault::Action::kDrop);
  v1::ReportResultsResponse response;
  grpc::Status status = Report(*client, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "fault point: response dropped after commit");

  status = Report(*client, request, &response);  // the worker's retry, same lease
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(response.duplicate());

  // Exactly one commit: the shard's rows once, the shard DONE.
  std::vector<v1::ResultRow> rows = Rows(*client, sweep);
  EXPECT_EQ(rows.size(), static_cast<size_t>(request.result().rows_size()));
  std::set<std::tuple<uint32_t, std::string, int32_t>> keys;
  for (const v1::ResultRow& row : rows) keys.insert({row.trial(), row.prompt_set(), row.prompt()});
  EXPECT_EQ(keys.size(), rows.size());
  for (const v1::ShardRecord& shard : Shards(*client, sweep)) {
    if (shard.shard().index() == leases[0].ref().shard()) {
      EXPECT_EQ(shard.state(), v1::DONE);
      EXPECT_EQ(shard.worker(), "w1");
    }
  }
  EXPECT_EQ(server_->scheduler()->Counters().reports_committed, 1u);
}

TEST_F(ServerTest, ConcurrentReportsAreGroupCommittedAndAllAnswered) {
  Start(Options());
  auto client = Connect();
  const std::string sweep = Submit(*client);
  std::vector<v1::Lease> leases = Lease(*client, "w1", 100);
  ASSERT_GE(leases.size(), 2u);

  std::vector<std::thread> threads;
  std::atomic<int> committed{0};
  size_t expected_rows = 0;
  std::vector<v1::ReportResultsRequest> requests;
  for (const v1::Lease& lease : leases) {
    requests.push_back(ReportRequest("w1", lease));
    expected_rows += static_cast<size_t>(requests.back().result().rows_size());
  }
  // Each report twice at once: one commit and one duplicate per shard, whatever the batching.
  std::atomic<int> duplicates{0};
  for (int copy = 0; copy < 2; ++copy) {
    for (const v1::ReportResultsRequest& request : requests) {
      threads.emplace_back([&, request] {
        v1::ReportResultsResponse response;
        grpc::Status status = Report(*client, request, &response);
        EXPECT_TRUE(status.ok()) << status.error_message();
        if (status.ok()) (response.duplicate() ? duplicates : committed)++;
      });
    }
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(committed.load(), static_cast<int>(leases.size()));
  EXPECT_EQ(duplicates.load(), static_cast<int>(leases.size()));
  EXPECT_EQ(Rows(*client, sweep).size(), expected_rows);
}

// ------------------------------------------------------------------------------------------
// Health, watch, query

// Calls /grpc.health.v1.Health/Check for `service` on a plaintext channel to `port`; returns
// the response bytes (HealthCheckResponse) or the call's error.
StatusOr<std::string> HealthCheck(int port, const std::string& service,
                                  const std::string& method = "/grpc.health.v1.Health/Check") {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                     grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  // grpc.health.v1.HealthCheckRequest{service}: field 1, length-delimited.
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes = std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kTimeout);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                 [&](grpc::Status status) { done.set_value(status); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return Status::Unavailable(status.error_message());
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return Status::Internal("no response");
  std::string bytes;
  for (const grpc::Slice& part : slices) {
    bytes.append(reinterpret_cast<const char*>(part.begin()), part.size());
  }
  return bytes;
}

// --health-listen: a second, plaintext server with the health service alone (Kubernetes' gRPC
// probes cannot speak TLS); the coordinator's own service is not reachable there.
TEST_F(ServerTest, HealthListenServesTheHealthServiceAlone) {
  WriteText(dir_ / "token", "s3cret-token\n");
  ServerOptions options = Options();
  options.token_file = (dir_ / "token").string();
  options.health_listen = "127.0.0.1:0";
  Start(options);
  ASSERT_GT(server_->health_port(), 0);
  ASSERT_NE(server_->health_port(), server_->port());
  for (const std::string service : {"", "knockout.v1.Coordinator"}) {
    auto bytes = HealthCheck(server_->health_port(), service);
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    EXPECT_EQ(*bytes, std::string("\x08\x01", 2)) << service;  // SERVING
  }
  auto other = HealthCheck(server_->health_port(), "", "/knockout.v1.Coordinator/ListSweeps");
  EXPECT_FALSE(other.ok()) << "the coordinator's RPCs must not be served on the health port";
}

TEST_F(ServerTest, HealthServiceSaysServing) {
  WriteText(dir_ / "token", "s3cret-token\n");
  ServerOptions options = Options();
  options.token_file = (dir_ / "token").string();  // health checks need no token
  Start(options);
  for (const std::string service : {"", "knockout.v1.Coordinator"}) {
    auto bytes = HealthCheck(server_->port(), service);
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    // HealthCheckResponse{status: SERVING (1)}.
    EXPECT_EQ(*bytes, std::string("\x08\x01", 2)) << service;
  }
}

TEST_F(ServerTest, WatchSweepStreamsUntilTheSweepIsCancelled) {
  Start(Options());
  auto client = Connect();
  const std::string sweep = Submit(*client);

  v1::WatchSweepRequest request;
  *request.mutable_version() = CurrentProtocol();
  request.set_sweep("tiny");  // by name
  request.set_interval_ms(20);
  auto context = client->MakeContext(kTimeout);
  auto reader = client->stub()->WatchSweep(context.get(), request);
  v1::SweepProgress progress;
  ASSERT_TRUE(reader->Read(&progress));
  EXPECT_EQ(progress.sweep().id(), sweep);
  EXPECT_EQ(progress.sweep().state(), v1::RUNNING);

  // A change (a lease) produces a message; then the cancellation ends the stream.
  ASSERT_EQ(Lease(*client, "w1", 1).size(), 1u);
  ASSERT_TRUE(reader->Read(&progress));
  EXPECT_EQ(progress.shards_running(), 1u);

  v1::CancelSweepRequest cancel;
  *cancel.mutable_version() = CurrentProtocol();
  cancel.set_sweep(sweep);
  v1::SweepProgress cancelled;
  auto cancel_context = client->MakeContext(kTimeout);
  ASSERT_TRUE(client->stub()->CancelSweep(cancel_context.get(), cancel, &cancelled).ok());

  int messages = 0;
  v1::SweepProgress last = progress;
  while (reader->Read(&progress)) {
    last = progress;
    ++messages;
  }
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_GE(messages, 1);
  EXPECT_EQ(last.sweep().state(), v1::CANCELLED);
}

TEST_F(ServerTest, WatchEndsWhenTheClientCancelsOrTheServerShutsDown) {
  Start(Options());
  auto client = Connect();
  Submit(*client);
  v1::WatchSweepRequest request;
  *request.mutable_version() = CurrentProtocol();
  request.set_sweep("tiny");
  auto context = client->MakeContext(kTimeout);
  auto reader = client->stub()->WatchSweep(context.get(), request);
  v1::SweepProgress progress;
  ASSERT_TRUE(reader->Read(&progress));
  context->TryCancel();
  while (reader->Read(&progress)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  // A second watch is still open when the server shuts down: Shutdown ends it promptly.
  auto context2 = client->MakeContext(kTimeout);
  auto reader2 = client->stub()->WatchSweep(context2.get(), request);
  ASSERT_TRUE(reader2->Read(&progress));
  const auto before = std::chrono::steady_clock::now();
  server_->Shutdown(5000);
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::seconds(3));
  while (reader2->Read(&progress)) {
  }
  EXPECT_FALSE(reader2->Finish().ok());
}

TEST_F(ServerTest, QueryResultsStreamsTheCommittedRows) {
  Start(Options());
  auto client = Connect();
  const std::string sweep = Submit(*client);
  std::vector<v1::Lease> leases = Lease(*client, "w1", 100);
  ASSERT_FALSE(leases.empty());
  std::multiset<std::tuple<uint32_t, std::string, int32_t, double>> sent;
  for (const v1::Lease& lease : leases) {
    v1::ReportResultsRequest request = ReportRequest("w1", lease);
    for (const v1::ResultRow& row : request.result().rows()) {
      sent.insert({row.trial(), row.prompt_set(), row.prompt(), row.values().at("refusal_score")});
    }
    v1::ReportResultsResponse response;
    ASSERT_TRUE(Report(*client, request, &response).ok());
  }
  std::multiset<std::tuple<uint32_t, std::string, int32_t, double>> received;
  for (const v1::ResultRow& row : Rows(*client, "tiny")) {
    received.insert({row.trial(), row.prompt_set(), row.prompt(), row.values().at("refusal_score")});
  }
  EXPECT_EQ(received, sent);

  // Aggregates only, and shards.
  v1::QueryResultsRequest request;
  *request.mutable_version() = CurrentProtocol();
  request.set_sweep(sweep);
  request.set_what(v1::QueryResultsRequest::ROWS);
  request.set_aggregates_only(true);
  auto context = client->MakeContext(kTimeout);
  auto reader = client->stub()->QueryResults(context.get(), request);
  v1::QueryResultsChunk chunk;
  size_t aggregates = 0;
  while (reader->Read(&chunk)) {
    for (const v1::ResultRow& row : chunk.rows()) {
      EXPECT_EQ(row.prompt(), -1);
      ++aggregates;
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  size_t trials = 0;
  for (const v1::Lease& lease : leases) trials += static_cast<size_t>(lease.shard().trials_size());
  EXPECT_EQ(aggregates, trials);

  // WHAT_UNSPECIFIED is a bad request.
  grpc::Status status;
  Query(*client, sweep, v1::QueryResultsRequest::WHAT_UNSPECIFIED, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerTest, QueryResultsSplitsLargeAnswersIntoChunks) {
  Start(Options());
  auto client = Connect();
  Submit(*client);
  std::vector<v1::Lease> leases = Lease(*client, "w1", 1);
  ASSERT_EQ(leases.size(), 1u);
  // Pad the rows so that the shard's answer is larger than one ~1 MB chunk.
  v1::ReportResultsRequest request = ReportRequest("w1", leases[0]);
  for (v1::ResultRow& row : *request.mutable_result()->mutable_rows()) {
    for (int i = 0; i < 2000; ++i) (*row.mutable_values())["pad" + std::to_string(i)] = i;
  }
  ASSERT_GT(request.ByteSizeLong(), size_t{1} << 20);
  v1::ReportResultsResponse response;
  grpc::Status status = Report(*client, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<v1::QueryResultsChunk> chunks =
      Query(*client, "tiny", v1::QueryResultsRequest::ROWS, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GE(chunks.size(), 2u);
  size_t rows = 0;
  for (const auto& chunk : chunks) {
    EXPECT_LE(chunk.ByteSizeLong(), size_t{3} << 20);
    rows += static_cast<size_t>(chunk.rows_size());
  }
  EXPECT_EQ(rows, static_cast<size_t>(request.result().rows_size()));
}

// ------------------------------------------------------------------------------------------
// Process-level behaviour

TEST_F(ServerTest, RestartsOnTheSameDirectoryInTheSameProcess) {
  Start(Options());
  auto client = Connect();
  const std::string sweep = Submit(*client);
  server_->Shutdown();
  server_->Shutdown();  // idempotent
  EXPECT_EQ(server_->scheduler(), nullptr);
  server_.reset();

  Start(Options());
  client = Connect();
  v1::ListSweepsResponse list;
  ASSERT_TRUE(ListSweeps(*client, &list).ok());
  ASSERT_EQ(list.sweeps_size(), 1);
  EXPECT_EQ(list.sweeps(0).sweep().id(), sweep);
}

TEST_F(ServerTest, WaitReturnsOnceAnotherThreadShutsDown) {
  Start(Options());
  std::thread stopper([&] {
    std::this_thread::sleep_for(milliseconds(50));
    server_->Shutdown();
  });
  server_->Wait();
  EXPECT_EQ(server_->sweeps(), nullptr);
  stopper.join();
}

// A minimal HTTP GET, enough for the Prometheus text endpoint.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return "";
  }
  const std::string request =
      "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return "";
  }
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, static_cast<size_t>(n));
  close(fd);
  return response;
}

TEST_F(ServerTest, MetricsEndpointExportsTheSchedulerCounters) {
  ServerOptions options = Options();
  options.metrics_listen = "127.0.0.1:0";
  Start(options);
  std::smatch match;
  const std::string log = log_buffer_.text();
  ASSERT_TRUE(std::regex_search(log, match, std::regex("metrics on http://127\\.0\\.0\\.1:([0-9]+)/metrics")))
      << log;
  const int metrics_port = std::stoi(match[1]);
  ASSERT_GT(metrics_port, 0);

  auto client = Connect();
  Submit(*client);
  std::vector<v1::Lease> leases = Lease(*client, "w1", 1);
  ASSERT_EQ(leases.size(), 1u);
  v1::ReportResultsResponse response;
  const v1::ReportResultsRequest request = ReportRequest("w1", leases[0]);
  ASSERT_TRUE(Report(*client, request, &response).ok());

  const std::string text = HttpGet(metrics_port, "/metrics");
  EXPECT_NE(text.find("knockout_shards{state=\"pending\"}"), std::string::npos) << text;
  EXPECT_NE(text.find("knockout_shards{state=\"done\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("knockout_leases_granted_total 1"), std::string::npos) << text;
  EXPECT_NE(text.find("knockout_results_committed_total 1"), std::string::npos) << text;
  EXPECT_NE(text.find("knockout_result_rows_total " +
                      std::to_string(request.result().rows_size())),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("knockout_leases_expired_total 0"), std::string::npos) << text;
  EXPECT_NE(text.find("knockout_workers_alive 1"), std::string::npos) << text;
  EXPECT_NE(text.find("knockout_worker_trials_per_second{worker=\"w1\"}"), std::string::npos)
      << text;
}

TEST_F(ServerTest, ExpiredLeasesAreRequeuedByTheTimer) {
  ServerOptions options = Options();
  options.clock = &clock_;
  options.expire_interval_ms = 10;
  options.scheduler.lease_ms = 1000;
  Start(options);
  auto client = Connect();
  const std::string sweep = Submit(*client);
  ASSERT_EQ(Lease(*client, "w1", 1).size(), 1u);
  clock_.Advance(5000);
  // The timer runs every 10 ms of real time; the lease is past its (fake) deadline.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  uint64_t expired = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    expired = server_->scheduler()->Counters().leases_expired;
    if (expired > 0) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_EQ(expired, 1u);
}

// The knockout-coordinator process: one stdout line with the bound port, SIGTERM -> exit 0,
// an error -> one stderr line and exit 1.
struct Process {
  pid_t pid = -1;
  int status = 0;
};

Process Spawn(const std::vector<std::string>& arguments, const fs::path& out,
              const fs::path& err) {
  std::vector<char*> argv;
  std::vector<std::string> storage = arguments;
  storage.insert(storage.begin(), KNOCKOUT_COORDINATOR_BINARY);
  for (std::string& argument : storage) argv.push_back(argument.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  Process process;
  if (posix_spawn(&process.pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) {
    process.pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  return process;
}

int WaitExit(Process& process) {
  waitpid(process.pid, &process.status, 0);
  return WIFEXITED(process.status) ? WEXITSTATUS(process.status) : -1;
}

TEST_F(ServerTest, CoordinatorProcessPrintsItsPortAndStopsOnSigterm) {
  const fs::path out = dir_ / "out.txt", err = dir_ / "err.txt";
  Process process = Spawn({"--store", (dir_ / "store").string(), "--listen", "127.0.0.1:0",
                           "--lease-seconds", "5", "--max-attempts", "2"},
                          out, err);
  ASSERT_GT(process.pid, 0);
  std::smatch match;
  std::string text;
  const std::regex line("^knockout-coordinator listening on 127\\.0\\.0\\.1:([0-9]+)\n$");
  for (int i = 0; i < 200 && !std::regex_match(text = ReadText(out), match, line); ++i) {
    std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_TRUE(std::regex_match(text, match, line)) << text << ReadText(err);
  rpc::ChannelOptions options;
  options.address = "127.0.0.1:" + match[1].str();
  auto client = rpc::CoordinatorClient::Connect(options);
  ASSERT_TRUE(client.ok());
  v1::LeaseShardsRequest request;
  *request.mutable_version() = CurrentProtocol();
  request.mutable_worker()->set_id("w1");
  v1::LeaseShardsResponse response;
  auto context = (*client)->MakeContext(kTimeout);
  grpc::Status status = (*client)->stub()->LeaseShards(context.get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.lease_ms(), 5000u);  // --lease-seconds reached the scheduler

  // Idle connected clients must not hold the shutdown for its whole grace period.
  const auto before = std::chrono::steady_clock::now();
  kill(process.pid, SIGTERM);
  EXPECT_EQ(WaitExit(process), 0) << ReadText(err);
  EXPECT_LT(std::chrono::steady_clock::now() - before, milliseconds(1500));
  EXPECT_EQ(ReadText(out), text);  // nothing else on stdout

  // The store is free again; a bad address is one line on stderr and exit status 1.
  Process refused = Spawn({"--store", (dir_ / "store").string(), "--listen", "0.0.0.0:0"}, out,
                          err);
  EXPECT_EQ(WaitExit(refused), 1);
  const std::string error = ReadText(err);
  EXPECT_EQ(error.rfind("knockout-coordinator: InvalidArgument: listen address 0.0.0.0:0", 0), 0u)
      << error;
  EXPECT_EQ(std::count(error.begin(), error.end(), '\n'), 1) << error;
  EXPECT_EQ(ReadText(out), "");
}

// ------------------------------------------------------------------------------------------
// Status mapping (rpc/channel.h)

TEST(StatusMappingTest, EveryKnockoutCodeSurvivesARoundTrip) {
  for (StatusCode code :
       {StatusCode::kInvalidArgument, StatusCode::kNotFound, StatusCode::kCorruption,
        StatusCode::kUnimplemented, StatusCode::kFailedPrecondition, StatusCode::kInternal,
        StatusCode::kPermissionDenied, StatusCode::kUnavailable, StatusCode::kUnauthenticated}) {
    const Status back = rpc::FromGrpc(rpc::ToGrpc(Status(code, "why")), "");
    EXPECT_EQ(back.code(), code) << StatusCodeName(code);
    EXPECT_EQ(back.message(), "why");
  }
  // IOError travels as INTERNAL with its name kept in the message.
  const Status io = rpc::FromGrpc(rpc::ToGrpc(Status::IOError("disk")), "Call");
  EXPECT_EQ(io.code(), StatusCode::kInternal);
  EXPECT_EQ(io.message(), "Call: IOError: disk");
  EXPECT_TRUE(rpc::ToGrpc(Status::Ok()).ok());
  EXPECT_TRUE(rpc::FromGrpc(grpc::Status::OK, "x").ok());
  EXPECT_EQ(rpc::FromGrpc(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "slow"), "Lease")
                .ToString(),
            "Unavailable: Lease: slow");
  EXPECT_EQ(rpc::FromGrpc(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "big"), "").code(),
            StatusCode::kInvalidArgument);
}

TEST(TokenFileTest, ReadsTrimmedAndRefusesEmptyOrMissing) {
  char pattern[] = "/tmp/knockout-token-test-XXXXXX";
  const fs::path dir = mkdtemp(pattern);
  WriteText(dir / "token", "  abc123 \n\n");
  auto token = rpc::ReadTokenFile((dir / "token").string());
  ASSERT_TRUE(token.ok());
  EXPECT_EQ(*token, "abc123");
  WriteText(dir / "empty", " \n");
  EXPECT_EQ(rpc::ReadTokenFile((dir / "empty").string()).status().code(),
            StatusCode::kInvalidArgument);
  auto missing = rpc::ReadTokenFile((dir / "missing").string());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("missing"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace knockout::coordinator
