// WatchSweep's and QueryResults' stream bodies (server_streams.h).
#include "coordinator/server_streams.h"

#include "rpc/channel.h"

namespace knockout::coordinator::server_internal {
namespace {

bool Terminal(v1::RunState state) {
  return state == v1::DONE || state == v1::FAILED || state == v1::CANCELLED;
}

}  // namespace

grpc::Status WatchStream::Stream() {
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

grpc::Status QueryStream::Stream() {
  StatusOr<std::string> sweep = sweeps_->ResolveSweep(request_.sweep());
  if (!sweep.ok()) return rpc::ToGrpc(sweep.status());
  const uint32_t stage = request_.stage();
  switch (request_.what()) {
    case v1::QueryResultsRequest::ROWS: {
      // Straight from the store's iterator: a 10M-row stage never sits in memory.
      bool broke = false;
      Status read = sweeps_->ForEachRow(*sweep, stage, request_.aggregates_only(),
                                        [&](v1::ResultRow& row) {
                                          broke = !Add(row, [](v1::QueryResultsChunk* c) {
                                            return c->mutable_rows();
                                          });
                                          return !broke;
                                        });
      if (broke) return StopStatus();
      if (!read.ok()) return rpc::ToGrpc(read);
      return Flush();
    }
    case v1::QueryResultsRequest::SHARDS: {
      bool broke = false;
      Status read = sweeps_->ForEachShard(*sweep, stage, [&](v1::ShardRecord& shard) {
        broke = !Add(shard, [](v1::QueryResultsChunk* c) { return c->mutable_shards(); });
        return !broke;
      });
      if (broke) return StopStatus();
      if (!read.ok()) return rpc::ToGrpc(read);
      return Flush();
    }
    case v1::QueryResultsRequest::LABELS: {
      auto labels = sweeps_->TrialLabels(*sweep, stage);
      if (!labels.ok()) return rpc::ToGrpc(labels.status());
      for (auto& [index, label] : *labels) {
        v1::Trial trial;
        trial.set_index(index);
        *trial.mutable_label() = std::move(label);
        if (!Add(trial, [](v1::QueryResultsChunk* c) { return c->mutable_labels(); })) {
          return StopStatus();
        }
      }
      return Flush();
    }
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

template <typename Item, typename Field>
bool QueryStream::Add(Item& item, Field field) {
  const size_t size = item.ByteSizeLong();
  if (count_ > 0 && (count_ >= kChunkItems || bytes_ + size > chunk_bytes_)) {
    if (Stopped() || !Send(chunk_)) return false;
    chunk_.Clear();
    count_ = bytes_ = 0;
  }
  *field(&chunk_)->Add() = std::move(item);
  ++count_;
  bytes_ += size;
  return true;
}

grpc::Status QueryStream::Flush() {
  if (count_ > 0 && (Stopped() || !Send(chunk_))) return StopStatus();
  chunk_.Clear();
  count_ = bytes_ = 0;
  return grpc::Status::OK;
}

// Streams the items in chunks of at most kChunkItems items or about chunk_bytes_ bytes (one
// item larger than that travels alone).
template <typename Item, typename Field>
grpc::Status QueryStream::SendAll(StatusOr<std::vector<Item>> items, Field field) {
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

}  // namespace knockout::coordinator::server_internal
