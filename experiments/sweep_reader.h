// The read side of a sweep store as an interface: what the CLI's queries (status, results,
// compensation, directions) need. Two implementations: SweepStore (a local RocksDB directory)
// and the CLI's RemoteSweepReader (the Coordinator's GetSweep/ListSweeps/QueryResults RPCs), so
// one query code path serves `--store DIR` and `--coordinator ADDR`.
// Thread-safety: implementations are safe to call from several threads.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "knockout/v1/sweep.pb.h"

namespace knockout::experiments {

class SweepReader {
 public:
  virtual ~SweepReader() = default;
  // NotFound naming the id.
  virtual StatusOr<v1::SweepRecord> GetSweep(const std::string& id) const = 0;
  // Every sweep, oldest first.
  virtual StatusOr<std::vector<v1::SweepRecord>> ListSweeps() const = 0;
  // A sweep id, or a spec name (the latest sweep of that name). NotFound lists what exists.
  virtual StatusOr<std::string> ResolveSweep(const std::string& id_or_name) const = 0;
  virtual StatusOr<std::vector<v1::StageRecord>> ListStages(const std::string& sweep) const = 0;
  virtual StatusOr<std::vector<v1::ShardRecord>> ListShards(const std::string& sweep,
                                                            uint32_t stage) const = 0;
  // Result rows of a stage in key order; `aggregates_only` skips per-prompt rows.
  virtual StatusOr<std::vector<v1::ResultRow>> Rows(const std::string& sweep, uint32_t stage,
                                                    bool aggregates_only) const = 0;
  // The streaming form of Rows: `visit` gets each row in key order (it may move from it) until
  // it returns false, with memory flat in the number of rows where the reader streams (the
  // store, the coordinator's QueryResults); this default reads Rows() whole.
  using RowVisitor = std::function<bool(v1::ResultRow& row)>;
  virtual Status ForEachRow(const std::string& sweep, uint32_t stage, bool aggregates_only,
                            const RowVisitor& visit) const {
    KO_ASSIGN_OR_RETURN(auto rows, Rows(sweep, stage, aggregates_only));
    for (v1::ResultRow& row : rows) {
      if (!visit(row)) break;
    }
    return Status::Ok();
  }
  // Each trial's label (unit, ablation, positions, ...), by trial index. This default reads
  // every shard of the stage; the store reads its label index instead (sweep_store.h).
  virtual StatusOr<std::map<uint32_t, v1::TrialLabel>> TrialLabels(const std::string& sweep,
                                                                   uint32_t stage) const {
    KO_ASSIGN_OR_RETURN(auto shards, ListShards(sweep, stage));
    std::map<uint32_t, v1::TrialLabel> labels;
    for (const v1::ShardRecord& shard : shards) {
      for (const v1::Trial& trial : shard.shard().trials()) labels[trial.index()] = trial.label();
    }
    return labels;
  }
  virtual StatusOr<std::vector<v1::CompletionRecord>> Completions(const std::string& sweep,
                                                                  uint32_t stage) const = 0;
  // NotFound naming the artifact.
  virtual StatusOr<std::string> GetArtifact(const std::string& sweep,
                                            const std::string& name) const = 0;
  // Every artifact whose name starts with `prefix`, in name order.
  virtual StatusOr<std::vector<std::pair<std::string, std::string>>> ListArtifacts(
      const std::string& sweep, const std::string& prefix) const = 0;
};

}  // namespace knockout::experiments
