// The knockout CLI against a coordinator (`--coordinator ADDR`): submit a spec, watch a sweep's
// progress (a live bar, shards per state, ETA, per-worker throughput, failed shards' errors),
// cancel it, and read its results through RemoteSweepReader, which implements the same
// SweepReader the local-store queries use. Torch-free.
// Thread-safety: RemoteSweepReader may be shared between threads (gRPC stubs are thread-safe);
// the free functions keep no state.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "experiments/sweep_reader.h"
#include "knockout/v1/coordinator.pb.h"
#include "rpc/channel.h"

namespace knockout::cli {

// SweepReader over the Coordinator's GetSweep / ListSweeps / QueryResults RPCs. Errors: those of
// the coordinator (NotFound listing the sweeps, ...), Unavailable when it cannot be reached.
class RemoteSweepReader : public experiments::SweepReader {
 public:
  explicit RemoteSweepReader(const rpc::CoordinatorClient* client) : client_(client) {}

  StatusOr<v1::SweepRecord> GetSweep(const std::string& id) const override;
  StatusOr<std::vector<v1::SweepRecord>> ListSweeps() const override;
  StatusOr<std::string> ResolveSweep(const std::string& id_or_name) const override;
  StatusOr<std::vector<v1::StageRecord>> ListStages(const std::string& sweep) const override;
  StatusOr<std::vector<v1::ShardRecord>> ListShards(const std::string& sweep,
                                                    uint32_t stage) const override;
  StatusOr<std::vector<v1::ResultRow>> Rows(const std::string& sweep, uint32_t stage,
                                            bool aggregates_only) const override;
  StatusOr<std::vector<v1::CompletionRecord>> Completions(const std::string& sweep,
                                                          uint32_t stage) const override;
  // Streamed: one QueryResults chunk in memory at a time.
  Status ForEachRow(const std::string& sweep, uint32_t stage, bool aggregates_only,
                    const RowVisitor& visit) const override;
  StatusOr<std::map<uint32_t, v1::TrialLabel>> TrialLabels(const std::string& sweep,
                                                           uint32_t stage) const override;
  StatusOr<std::string> GetArtifact(const std::string& sweep,
                                    const std::string& name) const override;
  StatusOr<std::vector<std::pair<std::string, std::string>>> ListArtifacts(
      const std::string& sweep, const std::string& prefix) const override;

  StatusOr<v1::SweepProgress> Progress(const std::string& sweep) const;

 private:
  // Streams QueryResults and hands each chunk to `sink`.
  Status Query(const v1::QueryResultsRequest& request,
               const std::function<void(v1::QueryResultsChunk&)>& sink) const;

  const rpc::CoordinatorClient* client_;
};

// Reads SPEC (it must parse here too: errors name the file, line and field) and submits its text
// with the spec's directory as base_dir. Returns the coordinator's answer (sweep id, resumed).
StatusOr<v1::SubmitSweepResponse> SubmitSpec(const rpc::CoordinatorClient& client,
                                             const std::string& spec_path, uint32_t priority);

StatusOr<v1::SweepProgress> CancelSweep(const rpc::CoordinatorClient& client,
                                        const std::string& sweep);

// Options of WatchProgress.
struct WatchOptions {
  bool live = false;              // redraw one block in place (a terminal) instead of appending
  bool shard_lines = false;       // print "  [3/8 select] shard 2/4" for every shard committed
  uint32_t interval_ms = 500;
  const std::atomic<bool>* stop = nullptr;  // checked between messages
  // shard_lines: shards done before this (e.g. the progress SubmitSweep returned) get no line;
  // without it, those of the first message get none.
  const v1::SweepProgress* since = nullptr;
};

// Follows WatchSweep until the sweep is DONE, FAILED or CANCELLED (returned in `*final`), or
// `stop` is set (FailedPrecondition "interrupted"). Prints the progress block (stage, bar,
// shards per state, ETA, workers, failures) at every message. Unavailable if the coordinator
// goes away.
Status WatchProgress(const rpc::CoordinatorClient& client, const std::string& sweep,
                     const WatchOptions& options, std::ostream& out, v1::SweepProgress* final);

// One progress block as text (what WatchProgress draws): exposed for `status` and tests.
// `rate` is shards per second (<= 0: unknown, no ETA).
std::string RenderProgress(const v1::SweepProgress& progress, double rate);

}  // namespace knockout::cli
