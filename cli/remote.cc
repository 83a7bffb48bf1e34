#include "cli/remote.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <sstream>
#include <thread>

#include "cli/queries.h"
#include "experiments/spec.h"
#include "experiments/spec_inputs.h"
#include "experiments/spec_tokens.h"
#include "proto/protocol.h"

namespace knockout::cli {

namespace fs = std::filesystem;

namespace {

constexpr std::chrono::milliseconds kUnaryTimeout{30'000};
constexpr std::chrono::milliseconds kQueryTimeout{600'000};

bool Terminal(v1::RunState state) {
  return state == v1::DONE || state == v1::FAILED || state == v1::CANCELLED;
}

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char text[32];
  if (s >= 3600) {
    std::snprintf(text, sizeof(text), "%ldh%02ldm", s / 3600, (s / 60) % 60);
  } else if (s >= 60) {
    std::snprintf(text, sizeof(text), "%ldm%02lds", s / 60, s % 60);
  } else {
    std::snprintf(text, sizeof(text), "%lds", s);
  }
  return text;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// RemoteSweepReader

StatusOr<v1::SweepProgress> RemoteSweepReader::Progress(const std::string& sweep) const {
  v1::GetSweepRequest request;
  *request.mutable_version() = CurrentProtocol();
  request.set_sweep(sweep);
  v1::SweepProgress progress;
  auto context = client_->MakeContext(kUnaryTimeout);
  grpc::Status status = client_->stub()->GetSweep(context.get(), request, &progress);
  if (!status.ok()) return rpc::FromGrpc(status, "GetSweep");
  return progress;
}

StatusOr<v1::SweepRecord> RemoteSweepReader::GetSweep(const std::string& id) const {
  KO_ASSIGN_OR_RETURN(v1::SweepProgress progress, Progress(id));
  return progress.sweep();
}

StatusOr<std::vector<v1::SweepRecord>> RemoteSweepReader::ListSweeps() const {
  v1::ListSweepsRequest request;
  *request.mutable_version() = CurrentProtocol();
  v1::ListSweepsResponse response;
  auto context = client_->MakeContext(kUnaryTimeout);
  grpc::Status status = client_->stub()->ListSweeps(context.get(), request, &response);
  if (!status.ok()) return rpc::FromGrpc(status, "ListSweeps");
  std::vector<v1::SweepRecord> sweeps;
  for (const v1::SweepProgress& progress : response.sweeps()) sweeps.push_back(progress.sweep());
  return sweeps;
}

StatusOr<std::string> RemoteSweepReader::ResolveSweep(const std::string& id_or_name) const {
  KO_ASSIGN_OR_RETURN(v1::SweepProgress progress, Progress(id_or_name));
  return progress.sweep().id();
}

StatusOr<std::vector<v1::StageRecord>> RemoteSweepReader::ListStages(
    const std::string& sweep) const {
  KO_ASSIGN_OR_RETURN(v1::SweepProgress progress, Progress(sweep));
  return std::vector<v1::StageRecord>(progress.stages().begin(), progress.stages().end());
}

Status RemoteSweepReader::Query(const v1::QueryResultsRequest& request,
                                const std::function<void(v1::QueryResultsChunk&)>& sink) const {
  v1::QueryResultsRequest versioned = request;
  *versioned.mutable_version() = CurrentProtocol();
  auto context = client_->MakeContext(kQueryTimeout);
  auto reader = client_->stub()->QueryResults(context.get(), versioned);
  v1::QueryResultsChunk chunk;
  while (reader->Read(&chunk)) sink(chunk);
  grpc::Status status = reader->Finish();
  if (!status.ok()) return rpc::FromGrpc(status, "QueryResults");
  return Status::Ok();
}

StatusOr<std::vector<v1::ShardRecord>> RemoteSweepReader::ListShards(const std::string& sweep,
                                                                     uint32_t stage) const {
  v1::QueryResultsRequest request;
  request.set_sweep(sweep);
  request.set_what(v1::QueryResultsRequest::SHARDS);
  request.set_stage(stage);
  std::vector<v1::ShardRecord> shards;
  KO_RETURN_IF_ERROR(Query(request, [&](v1::QueryResultsChunk& chunk) {
    for (auto& shard : *chunk.mutable_shards()) shards.push_back(std::move(shard));
  }));
  return shards;
}

StatusOr<std::vector<v1::ResultRow>> RemoteSweepReader::Rows(const std::string& sweep,
                                                             uint32_t stage,
                                                             bool aggregates_only) const {
  std::vector<v1::ResultRow> rows;
  KO_RETURN_IF_ERROR(ForEachRow(sweep, stage, aggregates_only, [&](v1::ResultRow& row) {
    rows.push_back(std::move(row));
    return true;
  }));
  return rows;
}

Status RemoteSweepReader::ForEachRow(const std::string& sweep, uint32_t stage,
                                     bool aggregates_only, const RowVisitor& visit) const {
  v1::QueryResultsRequest request;
  request.set_sweep(sweep);
  request.set_what(v1::QueryResultsRequest::ROWS);
  request.set_stage(stage);
  request.set_aggregates_only(aggregates_only);
  bool stopped = false;
  return Query(request, [&](v1::QueryResultsChunk& chunk) {
    for (auto& row : *chunk.mutable_rows()) {
      if (stopped) return;
      stopped = !visit(row);
    }
  });
}

StatusOr<std::map<uint32_t, v1::TrialLabel>> RemoteSweepReader::TrialLabels(
    const std::string& sweep, uint32_t stage) const {
  v1::QueryResultsRequest request;
  request.set_sweep(sweep);
  request.set_what(v1::QueryResultsRequest::LABELS);
  request.set_stage(stage);
  std::map<uint32_t, v1::TrialLabel> labels;
  KO_RETURN_IF_ERROR(Query(request, [&](v1::QueryResultsChunk& chunk) {
    for (auto& trial : *chunk.mutable_labels()) labels[trial.index()] = std::move(*trial.mutable_label());
  }));
  return labels;
}

StatusOr<std::vector<v1::CompletionRecord>> RemoteSweepReader::Completions(
    const std::string& sweep, uint32_t stage) const {
  v1::QueryResultsRequest request;
  request.set_sweep(sweep);
  request.set_what(v1::QueryResultsRequest::COMPLETIONS);
  request.set_stage(stage);
  std::vector<v1::CompletionRecord> completions;
  KO_RETURN_IF_ERROR(Query(request, [&](v1::QueryResultsChunk& chunk) {
    for (auto& completion : *chunk.mutable_completions()) {
      completions.push_back(std::move(completion));
    }
  }));
  return completions;
}

StatusOr<std::vector<std::pair<std::string, std::string>>> RemoteSweepReader::ListArtifacts(
    const std::string& sweep, const std::string& prefix) const {
  v1::QueryResultsRequest request;
  request.set_sweep(sweep);
  request.set_what(v1::QueryResultsRequest::ARTIFACTS);
  request.set_artifact_prefix(prefix);
  std::vector<std::pair<std::string, std::string>> artifacts;
  KO_RETURN_IF_ERROR(Query(request, [&](v1::QueryResultsChunk& chunk) {
    for (auto& artifact : *chunk.mutable_artifacts()) {
      artifacts.emplace_back(std::move(*artifact.mutable_name()),
                             std::move(*artifact.mutable_value()));
    }
  }));
  return artifacts;
}

StatusOr<std::string> RemoteSweepReader::GetArtifact(const std::string& sweep,
                                                     const std::string& name) const {
  KO_ASSIGN_OR_RETURN(auto artifacts, ListArtifacts(sweep, name));
  for (auto& [artifact_name, value] : artifacts) {
    if (artifact_name == name) return std::move(value);
  }
  return Status::NotFound("sweep " + sweep + " has no artifact " + name);
}

// ------------------------------------------------------------------------------------------
// Submit, cancel, watch

StatusOr<v1::SubmitSweepResponse> SubmitSpec(const rpc::CoordinatorClient& client,
                                             const std::string& spec_path, uint32_t priority) {
  // Parse here first: the user gets file:line errors without a round trip, and a spec the
  // coordinator would refuse is never sent. The tokenizer checks run only here (the coordinator
  // opens no model files): metric tokens and positions against the stages' prompts.
  KO_ASSIGN_OR_RETURN(experiments::ParsedSpec parsed, experiments::LoadSpec(spec_path));
  // The model's shape and the prompts, read once here: sent with the spec (the coordinator
  // opens no model or prompt file) and checked against the tokenizer.
  KO_ASSIGN_OR_RETURN(v1::SpecInputs inputs, experiments::ReadSpecInputs(parsed));
  KO_RETURN_IF_ERROR(experiments::ApplySpecInputs(inputs, &parsed));
  KO_RETURN_IF_ERROR(experiments::ValidateSpecTokens(parsed));
  std::ifstream file(spec_path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  if (!file.good() && !file.eof()) return Status::IOError(spec_path + ": could not read");
  std::error_code error;
  const fs::path absolute = fs::absolute(spec_path, error);
  if (error) return Status::IOError(spec_path + ": " + error.message());

  v1::SubmitSweepRequest request;
  *request.mutable_version() = CurrentProtocol();
  request.set_spec_yaml(text.str());
  request.set_spec_label(spec_path);
  request.set_base_dir(absolute.parent_path().lexically_normal().string());
  request.set_priority(priority);
  *request.mutable_inputs() = std::move(inputs);
  v1::SubmitSweepResponse response;
  auto context = client.MakeContext(kUnaryTimeout);
  grpc::Status status = client.stub()->SubmitSweep(context.get(), request, &response);
  if (!status.ok()) return rpc::FromGrpc(status, "SubmitSweep");
  return response;
}

StatusOr<v1::SweepProgress> CancelSweep(const rpc::CoordinatorClient& client,
                                        const std::string& sweep) {
  v1::CancelSweepRequest request;
  *request.mutable_version() = CurrentProtocol();
  request.set_sweep(sweep);
  v1::SweepProgress progress;
  auto context = client.MakeContext(kUnaryTimeout);
  grpc::Status status = client.stub()->CancelSweep(context.get(), request, &progress);
  if (!status.ok()) return rpc::FromGrpc(status, "CancelSweep");
  return progress;
}

std::string RenderProgress(const v1::SweepProgress& progress, double rate) {
  std::ostringstream out;
  const v1::SweepRecord& sweep = progress.sweep();
  const int stages_total = sweep.spec().stages_size();
  const v1::StageRecord* current = nullptr;
  // The first stage not done, or the last one.
  for (const v1::StageRecord& stage : progress.stages()) {
    current = &stage;
    if (stage.state() != v1::DONE) break;
  }
  out << "sweep " << sweep.id() << "  " << RunStateName(sweep.state());
  if (current) {
    out << "  stage " << current->index() + 1 << "/" << stages_total << " " << current->name()
        << " (" << current->kind() << ")";
  }
  out << "\n";
  const uint64_t total = progress.shards_total(), done = progress.shards_done();
  constexpr int kWidth = 30;
  const int filled = total ? static_cast<int>(kWidth * done / total) : 0;
  out << "  [" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] " << done
      << "/" << total << " shards of the expanded stages";
  if (rate > 0 && !Terminal(sweep.state())) {
    out << ", " << std::fixed << std::setprecision(1) << rate << " shards/s, ETA "
        << Duration(static_cast<double>(total - done) / rate);
  }
  out << "\n  pending " << progress.shards_pending() << ", running " << progress.shards_running()
      << ", done " << done << ", failed " << progress.shards_failed() << "\n";
  if (!sweep.error().empty()) out << "  error: " << sweep.error() << "\n";
  for (const v1::WorkerStatus& worker : progress.workers()) {
    out << "  worker " << worker.info().id() << " (" << worker.info().device() << ")  "
        << (worker.alive() ? "alive" : "gone") << ", " << worker.leases_held() << " held, "
        << worker.shards_done() << " shards, " << std::fixed << std::setprecision(1)
        << worker.trials_per_second() << " trials/s\n";
  }
  for (const v1::ShardFailure& failure : progress.failures()) {
    out << "  shard " << failure.stage() << "/" << failure.shard() << " "
        << RunStateName(failure.state()) << ":";
    for (const v1::AttemptError& error : failure.errors()) {
      out << " [attempt " << error.attempt() << (error.counted() ? "" : ", not counted") << ", "
          << error.worker() << "] " << error.error() << ";";
    }
    out << "\n";
  }
  return out.str();
}

Status WatchProgress(const rpc::CoordinatorClient& client, const std::string& sweep,
                     const WatchOptions& options, std::ostream& out, v1::SweepProgress* final) {
  v1::WatchSweepRequest request;
  *request.mutable_version() = CurrentProtocol();
  request.set_sweep(sweep);
  request.set_interval_ms(options.interval_ms);
  // No deadline: a sweep may run for days. The stop flag cancels the call instead.
  auto context = client.MakeContext(std::chrono::hours(24 * 365));
  auto reader = client.stub()->WatchSweep(context.get(), request);

  // Shards done per stage as first seen: only shards committed while watching get a line.
  std::map<uint32_t, uint32_t> seen_done;
  bool first = options.since == nullptr;
  if (options.since) {
    for (const v1::StageRecord& stage : options.since->stages()) {
      seen_done[stage.index()] = stage.shards_done();
    }
  }
  // (time, shards done) samples over the last ~30 s for the rate and ETA.
  std::deque<std::pair<double, uint64_t>> samples;
  size_t drawn_lines = 0;
  v1::SweepProgress progress;
  std::atomic<bool> finished{false};
  // Read in this thread; a watcher thread cancels the call when `stop` is set.
  std::thread canceller([&] {
    while (!finished.load()) {
      if (options.stop && options.stop->load()) {
        context->TryCancel();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  while (reader->Read(&progress)) {
    const double now = progress.unix_ms() / 1000.0;
    samples.emplace_back(now, progress.shards_done());
    while (samples.size() > 2 && now - samples.front().first > 30) samples.pop_front();
    double rate = 0;
    if (samples.size() >= 2 && samples.back().first > samples.front().first) {
      rate = static_cast<double>(samples.back().second - samples.front().second) /
             (samples.back().first - samples.front().first);
    }
    if (options.shard_lines) {
      for (const v1::StageRecord& stage : progress.stages()) {
        uint32_t& seen = seen_done[stage.index()];
        if (first) {
          seen = stage.shards_done();
          continue;
        }
        for (uint32_t n = seen + 1; n <= stage.shards_done(); ++n) {
          out << "  [" << stage.index() + 1 << "/" << progress.sweep().spec().stages_size() << " "
              << stage.name() << "] shard " << n << "/" << stage.shards_total() << "\n";
        }
        seen = std::max(seen, stage.shards_done());
      }
      out << std::flush;
    } else {
      const std::string block = RenderProgress(progress, rate);
      if (options.live && drawn_lines > 0) {
        out << "\x1b[" << drawn_lines << "F\x1b[J";  // back to the block's start, clear below
      }
      out << block << std::flush;
      drawn_lines = static_cast<size_t>(std::count(block.begin(), block.end(), '\n'));
      if (!options.live) out << "\n";
    }
    first = false;
    if (Terminal(progress.sweep().state())) break;
  }
  finished = true;
  canceller.join();
  if (options.stop && options.stop->load()) {
    return Status::FailedPrecondition("interrupted");
  }
  grpc::Status status = reader->Finish();
  if (!Terminal(progress.sweep().state())) {
    if (!status.ok()) return rpc::FromGrpc(status, "WatchSweep");
    return Status::Unavailable("WatchSweep: the stream ended before the sweep finished");
  }
  if (final) *final = progress;
  return Status::Ok();
}

}  // namespace knockout::cli
