// SweepStore: what sweeps, stages, shards, results and artifacts mean in the RocksDB store.
// Every state change is one write batch; result commits are synced before they return.
// Used by the embedded runner today and by the coordinator later (no LibTorch here).
//
// Key layout (storage/keys.h encoding: big-endian integers, length-prefixed strings):
//   sweeps:    sweep                                        -> SweepRecord
//   stages:    sweep, stage(u32)                            -> StageRecord
//   shards:    sweep, stage(u32), shard(u32)                -> ShardRecord
//   pending:   sweep, stage(u32), shard(u32)                -> "" (present while not done)
//   results:   sweep, stage(u32), 0(u32), trial(u32), set, prompt+1(u32) -> ResultRow
//                                                              (prompt+1 == 0: the aggregate row)
//              sweep, stage(u32), 1(u32), shard(u32), n(u32) -> PartialSum
//              sweep, stage(u32), 2(u32), condition, set, prompt(u32) -> CompletionRecord
//              sweep, stage(u32), 3(u32), shard(u32), n(u32) -> NeuronRanking (RANK shards)
//              sweep, stage(u32), 4(u32), trial(u32)        -> TrialLabel (written with the
//                                                              shards: tables read no shard)
//   artifacts: sweep, name (raw bytes, not length-prefixed: it is the last component, so a
//              prefix scan lists names in name order)   -> bytes (a serialised artifact)
//   workers:   worker id (raw bytes)                        -> WorkerRecord (coordinator.proto)
//   leases:    sweep, stage(u32), shard(u32)                -> LeaseRecord (while RUNNING)
//   failures:  sweep, stage(u32), shard(u32)                -> ShardFailure (coordinator.proto)
//
// Indexes: every write of a shard record writes, in the same batch, its lease record (put while
// the shard is RUNNING, deleted otherwise) and, once the shard has an error history or is
// FAILED, its failure entry (state and errors as in the record). So the progress views read
// stage records, lease records and failure entries, O(stages + leases + failures), never every
// shard, and a heartbeat rewrites a lease record (RecordUpdate.leases) instead of the shard.
// A store written before the indexes existed gets them at EnsureIndexes (one scan, once).
// Values are protos serialised deterministically; one that does not parse is Corruption naming
// the family and the key.
//
// Thread-safety: safe to share between threads (the Store is). Read-modify-write operations
// (create, expand, commit, fail, update, finish) are serialised by internal mutexes, which makes
// first-commit-wins exact within one process; the RocksDB directory lock keeps other processes
// out, so the process embedding the store (the runner, later the coordinator) owns all commits.
// A result commit's synced write happens outside the mutex that WriteRecords takes: the shards
// it commits are marked in flight instead, and only a WriteRecords touching one of them waits
// for it, so that the coordinator's unsynced lease grants do not queue behind every fdatasync.
#pragma once

#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "experiments/sweep_reader.h"
#include "knockout/v1/coordinator.pb.h"
#include "knockout/v1/sweep.pb.h"
#include "storage/store.h"

namespace knockout::experiments {

// One shard result to commit, with the lease it came from (SweepStore::CommitShards).
struct ShardCommit {
  const v1::ShardResult* result = nullptr;  // not owned; must outlive the call
  uint32_t attempt = 0;                     // the committing lease's number (ShardRecord.attempt)
  std::string worker;                       // ShardRecord.worker once DONE; "" keeps the stored one
};

// Records replaced together in one write batch: what the coordinator writes when it grants,
// renews, expires or takes back leases (SweepStore::WriteRecords).
struct RecordUpdate {
  std::vector<v1::SweepRecord> sweeps;
  std::vector<v1::ShardRecord> shards;
  std::vector<v1::WorkerRecord> workers;
  // Lease records alone (heartbeats: the deadline moves, the shard record is not rewritten).
  std::vector<v1::LeaseRecord> leases;
  bool empty() const {
    return sweeps.empty() && shards.empty() && workers.empty() && leases.empty();
  }
};

class SweepStore : public SweepReader {
 public:
  // `store` must outlive this object.
  explicit SweepStore(storage::Store* store) : store_(store) {}

  // Creates the sweep record. FailedPrecondition if a sweep with this id exists.
  Status CreateSweep(const v1::SweepRecord& sweep);
  // NotFound naming the id.
  StatusOr<v1::SweepRecord> GetSweep(const std::string& id) const override;
  // Every sweep, oldest first (by created_unix_ms, then id).
  StatusOr<std::vector<v1::SweepRecord>> ListSweeps() const override;
  // `id_or_name` is a sweep id, or a spec name (the latest sweep of that name). NotFound lists
  // what exists.
  StatusOr<std::string> ResolveSweep(const std::string& id_or_name) const override;

  // Writes, in one synced batch: the stage record, one ShardRecord (state PENDING) and one
  // pending key per shard, and the updated sweep record (stages_expanded advanced by the
  // caller). FailedPrecondition if the stage already exists (expansion happens once).
  Status ExpandStage(const v1::SweepRecord& updated_sweep, const v1::StageRecord& stage,
                     const std::vector<v1::Shard>& shards);
  // Adds shards to an expanded stage (a knockout stage's trial shards after its RANK shards),
  // in one synced batch with the updated stage record (shards_total, trials_total) and
  // `artifacts`. FailedPrecondition if the stage is not expanded or a shard index is taken.
  Status ExtendStage(const v1::SweepRecord& sweep, const v1::StageRecord& stage,
                     const std::vector<v1::Shard>& shards,
                     const std::vector<std::pair<std::string, std::string>>& artifacts);
  StatusOr<std::vector<v1::StageRecord>> ListStages(const std::string& sweep) const override;
  StatusOr<v1::StageRecord> GetStage(const std::string& sweep, uint32_t stage) const;
  StatusOr<std::vector<v1::ShardRecord>> ListShards(const std::string& sweep,
                                                    uint32_t stage) const override;
  // Shards of a stage still pending (not DONE), in index order.
  StatusOr<std::vector<v1::ShardRecord>> PendingShards(const std::string& sweep,
                                                       uint32_t stage) const;
  // One shard record. NotFound naming the sweep, stage and shard.
  StatusOr<v1::ShardRecord> GetShard(const std::string& sweep, uint32_t stage,
                                     uint32_t shard) const;

  // Commits a shard's result in one synced batch: every row, partial sum and completion, the
  // shard record (DONE, attempt), the pending key removed, the stage's shards_done advanced.
  // First commit wins: if the shard is already DONE, returns OK and writes nothing
  // (`*duplicate` set to true when given). NotFound if the shard does not exist.
  Status CommitShard(const v1::ShardResult& result, uint32_t attempt, bool* duplicate = nullptr);
  // Group commit: does for every commit what CommitShard does, all in ONE synced batch, together
  // with `workers` (replaced as given). Per commit, `(*duplicate)[i]` (resized to commits.size())
  // is true when its shard was already DONE, or committed by an earlier entry of the same call:
  // nothing of it is written. Several shards of one stage advance shards_done by their number.
  // NotFound if a shard does not exist, InvalidArgument for a malformed row (prompt < -1) or a
  // commit without a result; nothing at all is written then.
  // `sync` false: written but not yet durable; the caller calls Sync() before it acknowledges
  // anything (a pipelined group commit: the next group is written while this one syncs).
  Status CommitShards(const std::vector<ShardCommit>& commits, std::vector<bool>* duplicate,
                      const std::vector<v1::WorkerRecord>& workers = {}, bool sync = true);
  // Makes every write so far durable (storage::Store::Sync).
  Status Sync() { return store_->Sync(); }
  // Records a failed attempt (state FAILED, the error kept) without touching results; the
  // pending key stays (the shard may be retried). A shard already DONE is left as it is (OK).
  // NotFound if the shard does not exist.
  Status FailShard(const std::string& sweep, uint32_t stage, uint32_t shard, uint32_t attempt,
                   const std::string& error);

  // Finishes a stage in one synced batch: its artifacts, result rows the finaliser computed
  // (an attribution screen's means over every shard's prompts), the stage record (state DONE)
  // and the sweep record (e.g. state DONE after the last stage).
  Status FinishStage(const v1::SweepRecord& updated_sweep, const v1::StageRecord& stage,
                     const std::vector<std::pair<std::string, std::string>>& artifacts,
                     const std::vector<v1::ResultRow>& rows = {});
  // Replaces the sweep record (synced). NotFound if no sweep has its id.
  Status UpdateSweep(const v1::SweepRecord& sweep);

  // Replaces sweep, shard and worker records in one batch (synced if `sync`): the coordinator's
  // lease grants, renewals, expiries and releases. The caller read-modify-writes the records
  // and must serialise that itself (the coordinator's mutex). First commit wins all the same:
  // a shard that is DONE in the store is never overwritten (FailedPrecondition naming it).
  // NotFound if a sweep or shard does not exist. Nothing is written on error.
  Status WriteRecords(const RecordUpdate& update, bool sync);

  // The lease records of a sweep's RUNNING shards, in (stage, shard) order.
  StatusOr<std::vector<v1::LeaseRecord>> ListLeases(const std::string& sweep) const;
  // The failure entries of a sweep (shards with an error history, or FAILED), in order.
  StatusOr<std::vector<v1::ShardFailure>> ListFailures(const std::string& sweep) const;
  // The indices of a stage's shards that are not DONE (the pending keys), in order, read
  // without parsing a shard record.
  StatusOr<std::vector<uint32_t>> PendingIndices(const std::string& sweep, uint32_t stage) const;
  // Whether any shard of the stage is not DONE (one key read).
  StatusOr<bool> HasPending(const std::string& sweep, uint32_t stage) const;
  // Builds the lease and failure indexes of a store written before they existed (one scan of
  // every shard record, in batches), then marks the store as indexed; a no-op afterwards.
  // Call before the store is written to (the coordinator's Open does).
  Status EnsureIndexes();

  // Workers (the coordinator's record of who leased and committed what), in id order.
  StatusOr<std::vector<v1::WorkerRecord>> ListWorkers() const;

  // Result rows of a stage in key order (trial, set, prompt; the aggregate row of a trial
  // first). `aggregates_only` skips per-prompt rows.
  StatusOr<std::vector<v1::ResultRow>> Rows(const std::string& sweep, uint32_t stage,
                                            bool aggregates_only) const override;
  // Streams through a RocksDB iterator: memory stays flat in the number of rows.
  Status ForEachRow(const std::string& sweep, uint32_t stage, bool aggregates_only,
                    const RowVisitor& visit) const override;
  // From the label index; a stage expanded before it existed falls back to its shards (read
  // one at a time).
  StatusOr<std::map<uint32_t, v1::TrialLabel>> TrialLabels(const std::string& sweep,
                                                           uint32_t stage) const override;
  // Every shard record of a stage in index order, one at a time, until `visit` returns false.
  Status ForEachShard(const std::string& sweep, uint32_t stage,
                      const std::function<bool(v1::ShardRecord& shard)>& visit) const;
  StatusOr<std::vector<v1::PartialSum>> PartialSums(const std::string& sweep,
                                                    uint32_t stage) const;
  StatusOr<std::vector<v1::CompletionRecord>> Completions(const std::string& sweep,
                                                          uint32_t stage) const override;
  // The neuron rankings RANK shards of the stage committed, by shard then order.
  StatusOr<std::vector<v1::NeuronRanking>> Rankings(const std::string& sweep,
                                                    uint32_t stage) const;

  // Artifacts by name (e.g. "extract/3/post_inst[-1]", "select"). NotFound naming it.
  StatusOr<std::string> GetArtifact(const std::string& sweep, const std::string& name) const override;
  // Every artifact of a sweep whose name starts with `prefix`, in name order.
  StatusOr<std::vector<std::pair<std::string, std::string>>> ListArtifacts(
      const std::string& sweep, const std::string& prefix) const override;

  storage::Store* store() const { return store_; }

 private:
  storage::Store* store_;
  // Serialises the operations that read-modify-write shard or stage records (commit, expand,
  // fail, finish), across their synced write; taken before mu_.
  std::mutex commit_mu_;
  // Guards every read-check-write sequence (a shard's DONE check, a sweep's existence) and
  // in_flight_; held across the write except by CommitShards (see in_flight_).
  std::mutex mu_;
  std::condition_variable in_flight_done_;
  // Shard keys whose commit is being written (outside mu_): WriteRecords waits for them, then
  // sees them DONE, so a commit in flight is never overwritten. GUARDED_BY(mu_)
  std::set<std::string> in_flight_;
};

}  // namespace knockout::experiments
