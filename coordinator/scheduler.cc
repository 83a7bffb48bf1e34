#include "coordinator/scheduler.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "common/fault_points.h"
#include "experiments/engine.h"
#include "experiments/spec.h"
#include "experiments/spec_inputs.h"

namespace knockout::coordinator {
namespace {

namespace fs = std::filesystem;
using experiments::RecordUpdate;
using experiments::ShardCommit;
using experiments::SweepEngine;

// (sweep, stage, shard): a shard's identity in the lease table.
using ShardKey = std::tuple<std::string, uint32_t, uint32_t>;

ShardKey KeyOf(const v1::Shard& shard) { return {shard.sweep_id(), shard.stage(), shard.index()}; }

// "sweep=demo-1a2b3c4d stage=heads (1) shard=3": how a shard is named in errors and reasons.
std::string ShardName(const v1::Shard& shard) {
  return "sweep=" + shard.sweep_id() + " stage=" + shard.stage_name() + " (" +
         std::to_string(shard.stage()) + ") shard=" + std::to_string(shard.index());
}

std::string RefName(const v1::LeaseRef& ref) {
  return "sweep=" + ref.sweep_id() + " stage=" + std::to_string(ref.stage()) +
         " shard=" + std::to_string(ref.shard()) + " attempt=" + std::to_string(ref.attempt());
}

// Every failed attempt of a shard, oldest first: what a sweep failed by this shard says.
std::string AttemptHistory(const v1::ShardRecord& record) {
  std::string history;
  for (const v1::AttemptError& error : record.errors()) {
    if (!history.empty()) history += "; ";
    history += "attempt " + std::to_string(error.attempt()) + " (worker " + error.worker() + ")" +
               (error.counted() ? "" : " [not counted]") + ": " + error.error();
  }
  return history;
}

// Whether a shard error a worker reports (ReleaseShardRequest.code) will repeat wherever and
// however often the shard runs, so that a retry only spends attempts: such a shard fails at once,
// and so does its sweep, with the message in the shard's history. This is the one place that
// decides it.
//   Deterministic: the shard or its inputs are wrong or unsupported. InvalidArgument (a malformed
//   shard, a position a prompt does not have, a result the coordinator refused as too large or
//   as not matching its shard; gRPC's OUT_OF_RANGE and RESOURCE_EXHAUSTED arrive as this, see
//   rpc/channel.h), Unimplemented, NotFound (a missing file or tensor), FailedPrecondition.
//   Transient, retried up to max_attempts: Unavailable, Internal (a bug or a LibTorch error that
//   may depend on the machine, e.g. out of memory), IOError and Corruption (one worker's disk or
//   copy of a file), PermissionDenied and Unauthenticated (one worker's access), Cancelled,
//   DeadlineExceeded (--shard-timeout: another worker may be faster or less busy), an expired
//   lease, and no code at all (a worker older than the field).
bool IsDeterministic(v1::ErrorCode code) {
  switch (code) {
    case v1::ERROR_INVALID_ARGUMENT:
    case v1::ERROR_UNIMPLEMENTED:
    case v1::ERROR_NOT_FOUND:
    case v1::ERROR_FAILED_PRECONDITION:
      return true;
    default:
      return false;
  }
}

bool Contains(const google::protobuf::RepeatedPtrField<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

}  // namespace

// Everything behind mu_. The store is the source of truth; these are its indexes for leasing:
// per RUNNING sweep the shards that may be leased, and the lease table of RUNNING shards.
// Methods require the owner's mu_ (every caller holds it).
struct Scheduler::State {
  struct Sweep {
    v1::SweepRecord record;
    std::set<std::pair<uint32_t, uint32_t>> pending;  // (stage, shard) leasable, in index order
    std::set<std::pair<uint32_t, uint32_t>> failed;   // shards in state FAILED (queued again)
    uint64_t last_served = 0;  // grant sequence of its last lease: round robin among equals
  };
  struct LeaseEntry {
    std::string worker;
    uint64_t deadline_ms = 0;
    uint32_t attempt = 0;
    // Copies of the shard record's trial indices and leased_to: what Report validates against,
    // so that a report of a leased shard needs no store read.
    std::vector<uint32_t> trials;
    std::vector<std::string> leased_to;
  };
  // From a RUNNING shard record; `lease` (its lease record), when given, has the current
  // deadline (heartbeats move it there, not in the shard record).
  static LeaseEntry EntryOf(const v1::ShardRecord& record, const v1::LeaseRecord* lease = nullptr) {
    LeaseEntry entry{record.worker(), record.lease_deadline_unix_ms(), record.attempt(), {}, {}};
    if (lease != nullptr) entry.deadline_ms = lease->deadline_unix_ms();
    entry.trials.reserve(record.shard().trials_size());
    for (const v1::Trial& trial : record.shard().trials()) entry.trials.push_back(trial.index());
    entry.leased_to.assign(record.leased_to().begin(), record.leased_to().end());
    return entry;
  }

  State(Scheduler* owner, experiments::SweepStore* store, const Clock* clock,
        const SchedulerOptions& options)
      : owner(owner), store(store), clock(clock), options(options) {}

  Scheduler* owner;
  experiments::SweepStore* store;
  const Clock* clock;
  SchedulerOptions options;

  std::map<std::string, Sweep> sweeps;  // every sweep in the store
  std::set<std::string> active;         // the RUNNING ones: the only sweeps Lease looks at
  std::map<std::string, std::unique_ptr<SweepEngine>> engines;
  // The lease table and its deadline-ordered index (expiry reads the front, not every lease);
  // changed only through PutLease and EraseLease, which keep the two equal.
  std::map<ShardKey, LeaseEntry> leases;
  std::set<std::pair<uint64_t, ShardKey>> deadlines;
  std::map<std::string, v1::WorkerRecord> workers;
  std::set<std::string> advance_due;  // sweeps whose Advance failed on a store error: retried
  // Shards of the commit being written (outside mu_): not in any pending queue, and neither
  // expired nor leased until Report has applied (or undone) it.
  std::set<ShardKey> committing;
  // Workers whose record Lease wrote while a commit was being written: that record lacks the
  // commit's counts, so Report writes the merged one again.
  std::set<std::string> written_during_commit;
  uint64_t grant_sequence = 0;
  SchedulerCounters counters;  // the monotonic counters; gauges are computed when asked

  void Changed() {
    owner->mu_.AssertHeld();  // every State method runs under it
    ++owner->changes_;
    owner->changed_.SignalAll();
  }

  // ----------------------------------------------------------------------------------------
  // Sweeps

  // The sweep's engine, created once from the model shape the stored spec carries (the
  // coordinator opens no model file).
  StatusOr<SweepEngine*> Engine(const v1::SweepRecord& record) {
    auto it = engines.find(record.id());
    if (it != engines.end()) return it->second.get();
    KO_ASSIGN_OR_RETURN(experiments::ModelShape shape, experiments::SpecModelShape(record.spec()));
    auto engine = std::make_unique<SweepEngine>(store, shape);
    engine->set_checkpoint_root(options.checkpoint_root);
    SweepEngine* raw = engine.get();
    engines.emplace(record.id(), std::move(engine));
    return raw;
  }

  void PutLease(const ShardKey& key, LeaseEntry entry) {
    auto it = leases.find(key);
    if (it != leases.end()) deadlines.erase({it->second.deadline_ms, key});
    deadlines.insert({entry.deadline_ms, key});
    leases[key] = std::move(entry);
  }
  void MoveDeadline(std::map<ShardKey, LeaseEntry>::iterator it, uint64_t deadline) {
    deadlines.erase({it->second.deadline_ms, it->first});
    it->second.deadline_ms = deadline;
    deadlines.insert({deadline, it->first});
  }
  std::map<ShardKey, LeaseEntry>::iterator EraseLease(std::map<ShardKey, LeaseEntry>::iterator it) {
    deadlines.erase({it->second.deadline_ms, it->first});
    return leases.erase(it);
  }
  void EraseLease(const ShardKey& key) {
    auto it = leases.find(key);
    if (it != leases.end()) EraseLease(it);
  }

  void DropLeasesOf(const std::string& id) {
    for (auto it = leases.lower_bound({id, 0, 0});
         it != leases.end() && std::get<0>(it->first) == id;) {
      it = EraseLease(it);
    }
  }

  // Keeps `active` equal to the set of RUNNING sweeps.
  void SetRecord(Sweep* sweep, v1::SweepRecord record) {
    if (record.state() == v1::RUNNING) {
      active.insert(record.id());
    } else {
      active.erase(record.id());
    }
    sweep->record = std::move(record);
  }

  // Re-reads the sweep record and, if it is RUNNING, its current stage's queue from the
  // indexes (sweep_store.h), O(pending keys + leases + failures) and no shard payload parsed
  // except those of leased shards: pending keys not leased become leasable (FAILED ones, by
  // the failure index, too), lease records enter the lease table with their deadlines.
  Status LoadSweep(const std::string& id) {
    KO_ASSIGN_OR_RETURN(v1::SweepRecord record, store->GetSweep(id));
    Sweep& sweep = sweeps[id];
    SetRecord(&sweep, std::move(record));
    sweep.pending.clear();
    sweep.failed.clear();
    DropLeasesOf(id);
    if (sweep.record.state() != v1::RUNNING || sweep.record.stages_expanded() == 0) {
      return Status::Ok();
    }
    const uint32_t stage = sweep.record.stages_expanded() - 1;
    std::set<uint32_t> held, failed;
    KO_ASSIGN_OR_RETURN(auto leased, store->ListLeases(id));
    for (const v1::LeaseRecord& lease : leased) {
      if (lease.stage() != stage) continue;
      auto shard = store->GetShard(id, stage, lease.shard());
      if (!shard.ok() && shard.status().code() == StatusCode::kNotFound) continue;
      KO_RETURN_IF_ERROR(shard.status());
      if (shard->state() != v1::RUNNING) continue;  // not a lease any more
      PutLease({id, stage, lease.shard()}, EntryOf(*shard, &lease));
      held.insert(lease.shard());
    }
    KO_ASSIGN_OR_RETURN(auto failures, store->ListFailures(id));
    for (const v1::ShardFailure& failure : failures) {
      // Only a sweep resumed outside the coordinator has FAILED shards in a running stage (the
      // embedded runner's FailShard); they run again like pending ones.
      if (failure.stage() == stage && failure.state() == v1::FAILED) failed.insert(failure.shard());
    }
    KO_ASSIGN_OR_RETURN(auto pending, store->PendingIndices(id, stage));
    for (uint32_t index : pending) {
      if (held.count(index) > 0) continue;
      sweep.pending.insert({stage, index});
      if (failed.count(index) > 0) sweep.failed.insert({stage, index});
    }
    return Status::Ok();
  }

  // Marks the sweep FAILED now (synced) and forgets its queue and leases.
  Status FailSweep(const std::string& id, const std::string& error) {
    KO_ASSIGN_OR_RETURN(v1::SweepRecord record, store->GetSweep(id));
    record.set_state(v1::FAILED);
    record.set_error(error);
    KO_RETURN_IF_ERROR(store->UpdateSweep(record));
    Changed();
    return LoadSweep(id);
  }

  // Whether the engine has something to do: the sweep has no stage yet, or its current stage is
  // complete (finaliser, next stage) or finished (next stage, sweep DONE).
  StatusOr<bool> NeedsAdvance(const v1::SweepRecord& record) {
    if (record.stages_expanded() == 0) return true;
    KO_ASSIGN_OR_RETURN(v1::StageRecord stage,
                        store->GetStage(record.id(), record.stages_expanded() - 1));
    return stage.state() == v1::DONE || stage.shards_done() >= stage.shards_total();
  }

  // Runs the engine's Advance on a RUNNING sweep, then reloads its queue. A finaliser or
  // expansion error fails the sweep (the engine records it) and is not an error here; a store
  // error is returned, and the sweep is retried at the next ExpireLeases.
  Status AdvanceSweep(const std::string& id) {
    advance_due.erase(id);
    KO_ASSIGN_OR_RETURN(v1::SweepRecord record, store->GetSweep(id));
    if (record.state() != v1::RUNNING) return LoadSweep(id);
    StatusOr<SweepEngine*> engine = Engine(record);
    if (!engine.ok()) {
      KO_ASSIGN_OR_RETURN(bool needed, NeedsAdvance(record));
      // Without the model's shape the next stage cannot be expanded; until then the current
      // stage's shards can still run.
      if (!needed) return LoadSweep(id);
      return FailSweep(id, "cannot advance to the next stage: " + engine.status().ToString());
    }
    auto advanced = (*engine)->Advance(id, /*want_shards=*/false);  // the queue: LoadSweep
    if (!advanced.ok()) {
      KO_ASSIGN_OR_RETURN(v1::SweepRecord now, store->GetSweep(id));
      if (now.state() != v1::FAILED) {
        advance_due.insert(id);
        return advanced.status().WithContext("sweep " + id);
      }
    }
    Changed();
    return LoadSweep(id);
  }

  // After a failed or cancelled sweep is submitted again: its failed shards get their attempts
  // back and shards still marked RUNNING (their workers were told to drop them) are pending
  // again; the history is kept, the resets are not counted.
  Status ResetShards(const std::string& id, const std::string& reason) {
    KO_ASSIGN_OR_RETURN(v1::SweepRecord record, store->GetSweep(id));
    if (record.stages_expanded() == 0) return Status::Ok();
    const uint32_t stage = record.stages_expanded() - 1;
    // The shards to reset are the RUNNING and FAILED ones: the lease and failure indexes name
    // them, so that no other shard record is read.
    std::set<uint32_t> indices;
    KO_ASSIGN_OR_RETURN(auto leased, store->ListLeases(id));
    for (const v1::LeaseRecord& lease : leased) {
      if (lease.stage() == stage) indices.insert(lease.shard());
    }
    KO_ASSIGN_OR_RETURN(auto failures, store->ListFailures(id));
    for (const v1::ShardFailure& failure : failures) {
      if (failure.stage() == stage && failure.state() == v1::FAILED) indices.insert(failure.shard());
    }
    std::vector<v1::ShardRecord> shards;
    for (uint32_t index : indices) {
      KO_ASSIGN_OR_RETURN(v1::ShardRecord shard, store->GetShard(id, stage, index));
      shards.push_back(std::move(shard));
    }
    RecordUpdate update;
    const uint64_t now = clock->NowMs();
    for (v1::ShardRecord& shard : shards) {
      if (shard.state() == v1::FAILED) {
        shard.set_failed_attempts(0);
      } else if (shard.state() == v1::RUNNING) {
        v1::AttemptError* error = shard.add_errors();
        error->set_attempt(shard.attempt());
        error->set_worker(shard.worker());
        error->set_error(reason);
        error->set_unix_ms(now);
        error->set_counted(false);
      } else {
        continue;
      }
      shard.set_state(v1::PENDING);
      shard.clear_worker();
      shard.set_lease_deadline_unix_ms(0);
      update.shards.push_back(std::move(shard));
    }
    return store->WriteRecords(update, /*sync=*/true);
  }

  // ----------------------------------------------------------------------------------------
  // Workers

  // A copy of the worker's record seen now (a new one if unknown): changes are made on the copy
  // and kept only once they are written.
  v1::WorkerRecord SeenWorker(const std::string& id, uint64_t now) const {
    v1::WorkerRecord worker;
    auto it = workers.find(id);
    if (it != workers.end()) {
      worker = it->second;
    } else {
      worker.mutable_info()->set_id(id);
      worker.set_first_seen_unix_ms(now);
    }
    worker.set_last_seen_unix_ms(now);
    return worker;
  }

  // How many leases each worker holds (one pass over the lease table).
  std::map<std::string, uint32_t> LeasesHeld() const {
    std::map<std::string, uint32_t> held;
    for (const auto& [key, lease] : leases) ++held[lease.worker];
    return held;
  }

  v1::WorkerStatus WorkerStatusOf(const v1::WorkerRecord& worker, uint64_t now,
                                  uint32_t held) const {
    v1::WorkerStatus status;
    *status.mutable_info() = worker.info();
    const uint64_t last_seen = worker.last_seen_unix_ms();
    status.set_alive(last_seen + 2ull * options.lease_ms >= now);
    status.set_last_seen_unix_ms(last_seen);
    status.set_loaded_model(worker.loaded_model());
    status.set_leases_held(held);
    status.set_shards_done(worker.shards_done());
    status.set_trials_run(worker.trials_run());
    status.set_busy_seconds(worker.busy_seconds());
    status.set_trials_per_second(worker.busy_seconds() > 0
                                     ? static_cast<double>(worker.trials_run()) /
                                           worker.busy_seconds()
                                     : 0.0);
    return status;
  }

  // ----------------------------------------------------------------------------------------
  // Failed attempts

  // Records a failed attempt on `shard` (RUNNING): back to PENDING, or FAILED once counted
  // failures reach max_attempts or at once if the error is `deterministic` (IsDeterministic).
  // Returns whether it failed for good.
  bool RecordFailure(v1::ShardRecord* shard, const std::string& worker, const std::string& error,
                     bool counted, uint64_t now, bool deterministic = false) const {
    v1::AttemptError* attempt = shard->add_errors();
    attempt->set_attempt(shard->attempt());
    attempt->set_worker(worker);
    attempt->set_error(error);
    attempt->set_unix_ms(now);
    attempt->set_counted(counted);
    shard->clear_worker();
    shard->set_lease_deadline_unix_ms(0);
    if (counted) {
      shard->set_failed_attempts(shard->failed_attempts() + 1);
      shard->set_error(error);
    }
    const bool failed =
        counted && (deterministic || shard->failed_attempts() >= options.max_attempts);
    shard->set_state(failed ? v1::FAILED : v1::PENDING);
    return failed;
  }

  // The sweep record that a shard failed for good turns into (`deterministic`: by an error
  // that is not retried).
  StatusOr<v1::SweepRecord> FailedSweep(const v1::ShardRecord& shard,
                                        bool deterministic = false) const {
    auto it = sweeps.find(shard.shard().sweep_id());
    if (it == sweeps.end()) return Status::NotFound("sweep " + shard.shard().sweep_id());
    v1::SweepRecord record = it->second.record;
    record.set_state(v1::FAILED);
    const std::string why =
        deterministic ? " failed with an error that would repeat (not retried): "
                      : " failed " + std::to_string(shard.failed_attempts()) +
                            " times (max_attempts " + std::to_string(options.max_attempts) +
                            "): ";
    record.set_error("shard " + ShardName(shard.shard()) + why + AttemptHistory(shard));
    return record;
  }

  // Applies, after a successful write, what `update` did to shards and sweeps: failed sweeps
  // lose their queue and leases, pending shards are leasable again.
  void ApplyReturned(const RecordUpdate& update) {
    for (const v1::SweepRecord& record : update.sweeps) {
      Sweep& sweep = sweeps[record.id()];
      SetRecord(&sweep, record);
      sweep.pending.clear();
      sweep.failed.clear();
      DropLeasesOf(record.id());
    }
    for (const v1::ShardRecord& shard : update.shards) {
      EraseLease(KeyOf(shard.shard()));
      auto it = sweeps.find(shard.shard().sweep_id());
      if (it == sweeps.end() || it->second.record.state() != v1::RUNNING) continue;
      if (shard.state() == v1::PENDING) {
        it->second.pending.insert({shard.shard().stage(), shard.shard().index()});
      }
    }
  }

  StatusOr<int> Expire(uint64_t now) {
    // Sweeps whose Advance hit a store error get another try here (the service's timer); not
    // while a commit is being written (Lease runs beside it): the next call retries.
    if (committing.empty()) {
      for (const std::string& id : std::set<std::string>(advance_due)) {
        (void)AdvanceSweep(id);  // still failing: stays due
      }
    }
    RecordUpdate update;
    std::set<std::string> failing;
    std::vector<std::pair<ShardKey, v1::RunState>> stale;  // the store moved on without us
    // The deadline index, front first: only the leases that are due are looked at.
    for (auto due = deadlines.begin(); due != deadlines.end() && due->first < now; ++due) {
      const ShardKey& key = due->second;
      const LeaseEntry& lease = leases.at(key);
      // Being committed: its result wins; if the write fails, it expires at a later call.
      if (committing.count(key) > 0) continue;
      const auto& [sweep, stage, index] = key;
      KO_ASSIGN_OR_RETURN(v1::ShardRecord shard, store->GetShard(sweep, stage, index));
      if (shard.state() != v1::RUNNING) {
        stale.emplace_back(key, shard.state());
        continue;
      }
      const bool failed = RecordFailure(&shard, lease.worker,
                                        "lease expired (worker " + lease.worker + ")",
                                        /*counted=*/true, now);
      if (failed && failing.insert(sweep).second) {
        KO_ASSIGN_OR_RETURN(v1::SweepRecord record, FailedSweep(shard));
        update.sweeps.push_back(std::move(record));
      }
      update.shards.push_back(std::move(shard));
    }
    for (const auto& [key, stored] : stale) {
      EraseLease(key);
      auto sweep = sweeps.find(std::get<0>(key));
      if (stored != v1::DONE && sweep != sweeps.end() &&
          sweep->second.record.state() == v1::RUNNING) {
        sweep->second.pending.insert({std::get<1>(key), std::get<2>(key)});
      }
    }
    if (update.empty()) return 0;
    KO_RETURN_IF_ERROR(store->WriteRecords(update, /*sync=*/!update.sweeps.empty()));
    ApplyReturned(update);
    const int expired = static_cast<int>(update.shards.size());
    counters.leases_expired += expired;
    Changed();
    return expired;
  }

  // ----------------------------------------------------------------------------------------
  // Reports (Scheduler::Report): accept each report under mu_, write the accepted ones without
  // it, then apply (or undo) the write under mu_ again.

  // The reports of one Report call that are being committed, and what undoes or applies them.
  struct ReportBatch {
    std::map<ShardKey, v1::ShardRecord> read;  // shard records read from the store, once each
    std::vector<ShardCommit> commits;
    std::vector<size_t> request_of;            // commits[i] answers requests[request_of[i]]
    std::vector<bool> late;
    // Shards taken out of their pending queue while they are written (put back on error).
    std::vector<std::pair<std::string, std::pair<uint32_t, uint32_t>>> unqueued;
    std::map<std::string, v1::WorkerRecord> workers;  // copies, kept if the write succeeds
  };

  // The stored record of a shard, read once per batch.
  StatusOr<const v1::ShardRecord*> StoredShard(const ShardKey& key, ReportBatch* batch) const {
    auto it = batch->read.find(key);
    if (it == batch->read.end()) {
      const auto& [sweep, stage, index] = key;
      KO_ASSIGN_OR_RETURN(v1::ShardRecord record, store->GetShard(sweep, stage, index));
      it = batch->read.emplace(key, std::move(record)).first;
    }
    return &it->second;
  }

  v1::WorkerRecord& BatchWorker(const std::string& id, uint64_t now, ReportBatch* batch) const {
    auto it = batch->workers.find(id);
    if (it != batch->workers.end()) return it->second;
    return batch->workers[id] = SeenWorker(id, now);
  }

  // Validates one report on its own. A shard in the lease table is checked against the entry's
  // cached trials and leased_to (it is not DONE: committing one erases its entry); any other
  // shard is read from the store once per batch, so that a shard reported twice in one call is
  // committed once (the second is a duplicate). Returns the report's final answer (an error or
  // a duplicate), or nothing when it joins `batch` to be committed (as request `i`).
  std::optional<StatusOr<v1::ReportResultsResponse>> AcceptReport(
      const v1::ReportResultsRequest& request, size_t i, uint64_t now, ReportBatch* batch) {
    const v1::LeaseRef& ref = request.lease();
    const v1::ShardResult& result = request.result();
    if (request.worker_id().empty()) {
      return Status::InvalidArgument("ReportResults: empty worker id");
    }
    if (ref.sweep_id() != result.sweep_id() || ref.stage() != result.stage() ||
        ref.shard() != result.index()) {
      return Status::InvalidArgument(
          "result of sweep=" + result.sweep_id() + " stage=" + std::to_string(result.stage()) +
          " shard=" + std::to_string(result.index()) + " reported for lease " + RefName(ref));
    }
    if (sweeps.find(ref.sweep_id()) == sweeps.end()) {
      return Status::NotFound("sweep " + ref.sweep_id() + " not found");
    }
    const ShardKey key{ref.sweep_id(), ref.stage(), ref.shard()};
    auto lease = leases.find(key);
    const LeaseEntry* entry = lease != leases.end() ? &lease->second : nullptr;
    const v1::ShardRecord* record = nullptr;
    if (entry == nullptr) {
      auto read = StoredShard(key, batch);
      if (!read.ok()) return read.status();
      record = *read;
    }
    const bool held =
        entry != nullptr
            ? std::find(entry->leased_to.begin(), entry->leased_to.end(), request.worker_id()) !=
                  entry->leased_to.end()
            : Contains(record->leased_to(), request.worker_id());
    // Errors name the shard with its stage name, which only the record has.
    auto name = [&]() -> std::string {
      if (record == nullptr) {
        auto read = StoredShard(key, batch);
        if (!read.ok()) return RefName(ref);
        record = *read;
      }
      return ShardName(record->shard());
    };
    if (!held) {
      return Status::PermissionDenied("worker " + request.worker_id() +
                                      " never held a lease on " + name());
    }
    std::set<uint32_t> trials;
    if (entry != nullptr) {
      trials.insert(entry->trials.begin(), entry->trials.end());
    } else {
      for (const v1::Trial& trial : record->shard().trials()) trials.insert(trial.index());
    }
    for (const v1::ResultRow& row : result.rows()) {
      if (trials.count(row.trial()) == 0) {
        return Status::InvalidArgument("result row of trial " + std::to_string(row.trial()) +
                                       ": " + name() + " has no such trial");
      }
      if (row.prompt() < -1) {
        return Status::InvalidArgument("result row of trial " + std::to_string(row.trial()) +
                                       " has prompt " + std::to_string(row.prompt()) +
                                       " (expected >= -1)");
      }
    }
    v1::WorkerRecord& worker = BatchWorker(request.worker_id(), now, batch);
    if ((entry == nullptr && record->state() == v1::DONE) || committing.count(key) > 0) {
      v1::ReportResultsResponse duplicate;
      duplicate.set_duplicate(true);
      ++counters.reports_duplicate;
      return duplicate;
    }
    const bool current = entry != nullptr && entry->worker == request.worker_id() &&
                         entry->attempt == ref.attempt();
    committing.insert(key);
    // Out of the queue while it is written, so that Lease cannot grant it meanwhile.
    Sweep& sweep = sweeps[ref.sweep_id()];
    if (sweep.pending.erase({ref.stage(), ref.shard()}) > 0) {
      batch->unqueued.emplace_back(ref.sweep_id(), std::make_pair(ref.stage(), ref.shard()));
    }
    ShardCommit commit;
    commit.result = &result;
    commit.attempt = ref.attempt();
    commit.worker = request.worker_id();
    batch->commits.push_back(commit);
    batch->request_of.push_back(i);
    batch->late.push_back(!current);
    worker.set_shards_done(worker.shards_done() + 1);
    worker.set_trials_run(worker.trials_run() + result.trials_run());
    worker.set_busy_seconds(worker.busy_seconds() + result.seconds());
    return std::nullopt;
  }

  // After a failed write: nothing was written, the shards are leasable again as they were.
  void UndoReports(const ReportBatch& batch) {
    for (const auto& [id, at] : batch.unqueued) {
      auto sweep = sweeps.find(id);
      if (sweep != sweeps.end() && sweep->second.record.state() == v1::RUNNING) {
        sweep->second.pending.insert(at);
      }
    }
  }

  // After a successful write: the batch's worker records replace the in-memory ones. Lease may
  // have updated a worker meanwhile (last_seen, its info): the newer last_seen is kept; the
  // counts are only changed here. A record Lease wrote during the commit (`rewrite`) lacks the
  // commit's counts and is written again.
  void MergeReportWorkers(ReportBatch* batch, const std::set<std::string>& rewrite) {
    RecordUpdate refreshed;
    for (auto& [id, worker] : batch->workers) {
      auto it = workers.find(id);
      if (it != workers.end() && it->second.last_seen_unix_ms() > worker.last_seen_unix_ms()) {
        worker.set_last_seen_unix_ms(it->second.last_seen_unix_ms());
      }
      if (it != workers.end()) {
        *worker.mutable_info() = it->second.info();
        worker.set_loaded_model(it->second.loaded_model());
      }
      workers[id] = worker;
      if (rewrite.count(id) > 0) refreshed.workers.push_back(worker);
    }
    if (!refreshed.empty()) {
      // Not synced, like the lease grant that wrote the stale copy; statistics only.
      (void)store->WriteRecords(refreshed, /*sync=*/false);
    }
  }

  // After a successful write: each commit's answer (duplicate, or committed and maybe late),
  // its lease and queue entries gone. Returns the sweeps that committed something.
  std::set<std::string> ApplyReports(const ReportBatch& batch, const std::vector<bool>& duplicate,
                                     std::vector<StatusOr<v1::ReportResultsResponse>>* out) {
    std::set<std::string> touched;
    for (size_t c = 0; c < batch.commits.size(); ++c) {
      v1::ReportResultsResponse response;
      if (duplicate[c]) {
        response.set_duplicate(true);
        ++counters.reports_duplicate;
      } else {
        const v1::ShardResult& result = *batch.commits[c].result;
        EraseLease({result.sweep_id(), result.stage(), result.index()});
        auto sweep = sweeps.find(result.sweep_id());
        if (sweep != sweeps.end()) {
          sweep->second.pending.erase({result.stage(), result.index()});
          sweep->second.failed.erase({result.stage(), result.index()});
        }
        touched.insert(result.sweep_id());
        response.set_late(batch.late[c]);
        ++counters.reports_committed;
        counters.reports_late += batch.late[c];
        counters.rows_committed += result.rows_size();
      }
      (*out)[batch.request_of[c]] = response;
    }
    if (!batch.commits.empty()) Changed();
    return touched;
  }

  // A stage whose last shard just committed: its finaliser and the next stage's expansion (or a
  // ranked stage's trial shards). The commits are durable whatever happens here; a store error
  // is retried by ExpireLeases.
  void AdvanceCommitted(const std::set<std::string>& touched) {
    for (const std::string& id : touched) {
      auto sweep = sweeps.find(id);
      if (sweep == sweeps.end() || sweep->second.record.state() != v1::RUNNING) continue;
      auto needed = NeedsAdvance(sweep->second.record);
      if (!needed.ok()) {
        advance_due.insert(id);
        continue;
      }
      if (*needed) (void)AdvanceSweep(id);  // failures are kept in advance_due
    }
  }

  // ----------------------------------------------------------------------------------------
  // Progress

  // O(stages + leases + failures): the counts from the stage records (total, done), the lease
  // records (running) and the failure index (failed); pending is the rest. Never a shard record.
  StatusOr<v1::SweepProgress> Progress(const std::string& id) const {
    const uint64_t now = clock->NowMs();
    v1::SweepProgress progress;
    KO_ASSIGN_OR_RETURN(*progress.mutable_sweep(), store->GetSweep(id));
    KO_ASSIGN_OR_RETURN(auto stages, store->ListStages(id));
    KO_ASSIGN_OR_RETURN(auto leased, store->ListLeases(id));
    KO_ASSIGN_OR_RETURN(auto failures, store->ListFailures(id));
    uint64_t total = 0, done = 0, failed = 0;
    for (const v1::StageRecord& stage : stages) {
      *progress.add_stages() = stage;
      total += stage.shards_total();
      done += stage.shards_done();
    }
    for (const v1::ShardFailure& failure : failures) failed += failure.state() == v1::FAILED;
    const uint64_t running = leased.size();
    progress.set_shards_total(total);
    progress.set_shards_done(done);
    progress.set_shards_running(running);
    progress.set_shards_failed(failed);
    const uint64_t accounted = done + running + failed;
    progress.set_shards_pending(total > accounted ? total - accounted : 0);
    // Most recent first: by the time of the last error.
    auto last_error = [](const v1::ShardFailure& f) {
      return f.errors().empty() ? 0 : f.errors(f.errors_size() - 1).unix_ms();
    };
    std::stable_sort(failures.begin(), failures.end(),
                     [&](const v1::ShardFailure& a, const v1::ShardFailure& b) {
                       return last_error(a) > last_error(b);
                     });
    if (failures.size() > options.max_failures_shown) failures.resize(options.max_failures_shown);
    for (auto& failure : failures) *progress.add_failures() = std::move(failure);
    std::vector<std::string> worker_ids(progress.sweep().workers().begin(),
                                        progress.sweep().workers().end());
    for (const v1::LeaseRecord& lease : leased) {
      if (std::find(worker_ids.begin(), worker_ids.end(), lease.worker()) == worker_ids.end()) {
        worker_ids.push_back(lease.worker());
      }
    }
    std::sort(worker_ids.begin(), worker_ids.end());
    const std::map<std::string, uint32_t> held = LeasesHeld();
    for (const std::string& worker : worker_ids) {
      auto it = workers.find(worker);
      if (it != workers.end()) {
        auto count = held.find(worker);
        *progress.add_workers() =
            WorkerStatusOf(it->second, now, count == held.end() ? 0 : count->second);
      } else {
        // A worker of a store written by the embedded runner: known by name only.
        v1::WorkerStatus* status = progress.add_workers();
        status->mutable_info()->set_id(worker);
      }
    }
    progress.set_unix_ms(now);
    return progress;
  }
};

// ------------------------------------------------------------------------------------------

Scheduler::Scheduler(experiments::SweepStore* store, const Clock* clock, SchedulerOptions options)
    : store_(store), clock_(clock), options_(options) {
  if (options_.max_attempts == 0) options_.max_attempts = 1;
  state_ = std::make_unique<State>(this, store_, clock_, options_);
}

Scheduler::~Scheduler() = default;

StatusOr<std::unique_ptr<Scheduler>> Scheduler::Open(experiments::SweepStore* store,
                                                     const Clock* clock,
                                                     SchedulerOptions options) {
  std::unique_ptr<Scheduler> scheduler(new Scheduler(store, clock, options));
  absl::MutexLock lock(&scheduler->mu_);
  State& state = *scheduler->state_;
  // A store from before the lease and failure indexes gets them first (once).
  KO_RETURN_IF_ERROR(store->EnsureIndexes());
  KO_ASSIGN_OR_RETURN(auto workers, store->ListWorkers());
  for (auto& worker : workers) state.workers[worker.info().id()] = std::move(worker);
  KO_ASSIGN_OR_RETURN(auto sweeps, store->ListSweeps());
  for (const v1::SweepRecord& sweep : sweeps) {
    state.SetRecord(&state.sweeps[sweep.id()], sweep);
    if (sweep.state() != v1::RUNNING) continue;
    if (options.release_leases_on_open) {
      KO_RETURN_IF_ERROR(state.ResetShards(
          sweep.id(), "lease released: the run that held it ended (coordinator restarted)"));
    }
    // A finaliser or an expansion interrupted by a crash runs again here.
    KO_RETURN_IF_ERROR(state.AdvanceSweep(sweep.id()));
  }
  return scheduler;
}

StatusOr<v1::SubmitSweepResponse> Scheduler::Submit(const v1::SubmitSweepRequest& request) {
  const std::string& label = request.spec_label().empty() ? "spec" : request.spec_label();
  const std::string& base_dir = request.base_dir();
  if (!base_dir.empty() && !fs::path(base_dir).is_absolute()) {
    return Status::InvalidArgument(label + ": base_dir '" + base_dir + "' is not absolute");
  }
  // Everything that can reject the spec happens before the store is touched.
  KO_ASSIGN_OR_RETURN(experiments::ParsedSpec parsed,
                      experiments::ParseSpec(request.spec_yaml(), label));
  experiments::ResolveSpecPaths(base_dir, &parsed.spec);
  parsed.spec.set_source(
      base_dir.empty() ? label : (fs::path(base_dir) / label).lexically_normal().string());
  // The model's shape and the prompts come with the request (read by the CLI on the submitting
  // machine): no model or prompt file is opened here.
  KO_RETURN_IF_ERROR(experiments::ApplySpecInputs(request.inputs(), &parsed));
  KO_ASSIGN_OR_RETURN(const experiments::ModelShape shape,
                      experiments::SpecModelShape(parsed.spec));
  KO_RETURN_IF_ERROR(experiments::ValidateSpecFiles(parsed, shape));
  // The id hashes the spec with its inputs: other prompts or config.json, another sweep.
  KO_ASSIGN_OR_RETURN(const std::string id, experiments::SweepIdFor(parsed.spec));

  absl::MutexLock commit_lock(&commit_mu_);
  absl::MutexLock lock(&mu_);
  State& state = *state_;
  auto previous = store_->GetSweep(id);
  if (!previous.ok() && previous.status().code() != StatusCode::kNotFound) {
    return previous.status();
  }
  auto& engine = state.engines[id];
  if (!engine) {
    engine = std::make_unique<SweepEngine>(store_, shape);
  }
  bool resumed = false;
  KO_ASSIGN_OR_RETURN(std::string sweep_id,
                      engine->Submit(parsed.spec, id, &resumed, request.priority()));
  if (previous.ok() &&
      (previous->state() == v1::FAILED || previous->state() == v1::CANCELLED)) {
    KO_RETURN_IF_ERROR(state.ResetShards(sweep_id, "lease dropped: the sweep was stopped"));
  }
  state.Changed();
  KO_RETURN_IF_ERROR(state.AdvanceSweep(sweep_id));
  KO_ASSIGN_OR_RETURN(v1::SweepProgress progress, state.Progress(sweep_id));
  if (progress.sweep().state() == v1::FAILED) {
    // The first stage could not be expanded (or a rerun finaliser failed again).
    return Status::FailedPrecondition("sweep " + sweep_id + " failed: " + progress.sweep().error());
  }
  v1::SubmitSweepResponse response;
  response.set_sweep_id(sweep_id);
  response.set_resumed(resumed);
  *response.mutable_progress() = std::move(progress);
  return response;
}

StatusOr<v1::SweepProgress> Scheduler::Progress(const std::string& sweep) const {
  absl::MutexLock lock(&mu_);
  KO_ASSIGN_OR_RETURN(std::string id, store_->ResolveSweep(sweep));
  return state_->Progress(id);
}

StatusOr<std::vector<v1::SweepProgress>> Scheduler::List() const {
  absl::MutexLock lock(&mu_);
  KO_ASSIGN_OR_RETURN(auto sweeps, store_->ListSweeps());
  std::vector<v1::SweepProgress> out;
  out.reserve(sweeps.size());
  for (const v1::SweepRecord& sweep : sweeps) {
    KO_ASSIGN_OR_RETURN(v1::SweepProgress progress, state_->Progress(sweep.id()));
    out.push_back(std::move(progress));
  }
  return out;
}

StatusOr<v1::SweepProgress> Scheduler::Cancel(const std::string& sweep) {
  absl::MutexLock commit_lock(&commit_mu_);
  absl::MutexLock lock(&mu_);
  State& state = *state_;
  KO_ASSIGN_OR_RETURN(std::string id, store_->ResolveSweep(sweep));
  KO_ASSIGN_OR_RETURN(v1::SweepRecord record, store_->GetSweep(id));
  if (record.state() == v1::DONE) {
    return Status::FailedPrecondition("sweep " + id + " is done; there is nothing to cancel");
  }
  if (record.state() != v1::CANCELLED) {
    record.set_state(v1::CANCELLED);
    KO_RETURN_IF_ERROR(store_->UpdateSweep(record));
    // Shards stay as they are in the store; without a queue and leases nothing is leased, and
    // heartbeats see the sweep's state.
    KO_RETURN_IF_ERROR(state.LoadSweep(id));
    state.Changed();
  }
  return state.Progress(id);
}

StatusOr<v1::LeaseShardsResponse> Scheduler::Lease(const v1::LeaseShardsRequest& request) {
  const std::string& worker_id = request.worker().id();
  if (worker_id.empty()) return Status::InvalidArgument("LeaseShards: empty worker id");
  absl::MutexLock lock(&mu_);
  State& state = *state_;
  const uint64_t now = clock_->NowMs();
  KO_RETURN_IF_ERROR(state.Expire(now).status());

  v1::WorkerRecord worker = state.SeenWorker(worker_id, now);
  *worker.mutable_info() = request.worker();
  worker.set_loaded_model(request.loaded_model());

  // Picks shards one at a time: affinity, then priority, then the sweep served least recently
  // (round robin), then the oldest sweep; within a sweep the lowest (stage, shard).
  const uint32_t capacity = std::max<uint32_t>(1, request.capacity());
  RecordUpdate update;
  std::vector<std::pair<State::Sweep*, std::pair<uint32_t, uint32_t>>> taken;
  // Sweeps that learn of this worker with this grant (SweepRecord.workers), by id.
  std::map<std::string, v1::SweepRecord> joined;
  while (update.shards.size() < capacity) {
    State::Sweep* best = nullptr;
    auto rank = [&](const State::Sweep& s) {
      const bool affinity = !request.loaded_model().empty() &&
                            s.record.spec().model().path() == request.loaded_model();
      // Larger is better; negations turn "smaller first" into "larger first".
      return std::make_tuple(affinity, s.record.priority(), -static_cast<int64_t>(s.last_served),
                             -static_cast<int64_t>(s.record.created_unix_ms()));
    };
    for (const std::string& id : state.active) {  // RUNNING sweeps only, in id order
      State::Sweep& sweep = state.sweeps[id];
      if (sweep.pending.empty()) continue;
      if (best == nullptr || rank(sweep) > rank(*best)) best = &sweep;  // ties: lower id
    }
    if (best == nullptr) break;
    const auto at = *best->pending.begin();
    best->pending.erase(best->pending.begin());
    best->failed.erase(at);
    best->last_served = ++state.grant_sequence;
    taken.emplace_back(best, at);
    auto record = store_->GetShard(best->record.id(), at.first, at.second);
    if (!record.ok() || (record->state() != v1::PENDING && record->state() != v1::FAILED)) {
      // The store disagrees with the queue (done meanwhile): not leasable, not put back.
      taken.pop_back();
      if (!record.ok() && record.status().code() != StatusCode::kNotFound) {
        for (auto& [sweep, shard] : taken) sweep->pending.insert(shard);
        return record.status();
      }
      continue;
    }
    record->set_state(v1::RUNNING);
    record->set_worker(worker_id);
    record->set_lease_deadline_unix_ms(now + options_.lease_ms);
    record->set_attempt(record->attempt() + 1);
    if (!Contains(record->leased_to(), worker_id)) record->add_leased_to(worker_id);
    update.shards.push_back(std::move(record).value());
    if (!Contains(best->record.workers(), worker_id) && joined.count(best->record.id()) == 0) {
      v1::SweepRecord sweep = best->record;
      sweep.add_workers(worker_id);
      joined.emplace(sweep.id(), std::move(sweep));
    }
  }

  v1::LeaseShardsResponse response;
  response.set_lease_ms(options_.lease_ms);
  if (update.shards.empty()) {
    // Idle polls are not written: last_seen matters for liveness, which lives in memory.
    state.workers[worker_id] = std::move(worker);
    response.set_retry_after_ms(options_.retry_after_ms);
    return response;
  }
  update.workers.push_back(worker);
  for (const auto& [id, sweep] : joined) update.sweeps.push_back(sweep);
  // Not synced: a grant lost to a power failure is a shard leased again, never a lost result.
  if (Status written = store_->WriteRecords(update, /*sync=*/false); !written.ok()) {
    for (auto& [sweep, shard] : taken) sweep->pending.insert(shard);
    return written;
  }
  state.workers[worker_id] = std::move(worker);
  for (auto& [id, sweep] : joined) state.sweeps[id].record = std::move(sweep);
  if (!state.committing.empty()) state.written_during_commit.insert(worker_id);
  for (const v1::ShardRecord& record : update.shards) {
    state.PutLease(KeyOf(record.shard()), State::EntryOf(record));
    v1::Lease* lease = response.add_leases();
    v1::LeaseRef* ref = lease->mutable_ref();
    ref->set_sweep_id(record.shard().sweep_id());
    ref->set_stage(record.shard().stage());
    ref->set_shard(record.shard().index());
    ref->set_attempt(record.attempt());
    *lease->mutable_shard() = record.shard();
    lease->set_deadline_unix_ms(record.lease_deadline_unix_ms());
  }
  state.counters.leases_granted += update.shards.size();
  state.Changed();
  return response;
}

StatusOr<v1::HeartbeatResponse> Scheduler::Heartbeat(const v1::HeartbeatRequest& request) {
  const std::string& worker_id = request.worker_id();
  if (worker_id.empty()) return Status::InvalidArgument("Heartbeat: empty worker id");
  // mu_ only: a heartbeat writes lease records, never a shard record, so it does not wait for
  // a result commit's fdatasync (a shard being committed is answered keep without a write).
  absl::MutexLock lock(&mu_);
  State& state = *state_;
  const uint64_t now = clock_->NowMs();
  KO_RETURN_IF_ERROR(state.Expire(now).status());

  v1::HeartbeatResponse response;
  response.set_lease_ms(options_.lease_ms);
  RecordUpdate update;
  const uint64_t deadline = now + options_.lease_ms;
  for (const v1::LeaseRef& ref : request.leases()) {
    v1::LeaseStatus* status = response.add_leases();
    *status->mutable_ref() = ref;
    status->set_keep(false);
    auto sweep = state.sweeps.find(ref.sweep_id());
    if (sweep == state.sweeps.end()) {
      status->set_reason("sweep not found");
      continue;
    }
    const v1::RunState sweep_state = sweep->second.record.state();
    if (sweep_state == v1::CANCELLED) {
      status->set_reason("sweep cancelled");
      continue;
    }
    if (sweep_state == v1::FAILED) {
      status->set_reason("sweep failed");
      continue;
    }
    const ShardKey key{ref.sweep_id(), ref.stage(), ref.shard()};
    auto lease = state.leases.find(key);
    if (lease != state.leases.end() && lease->second.worker == worker_id &&
        lease->second.attempt == ref.attempt()) {
      status->set_keep(true);
      if (state.committing.count(key) > 0) {
        // Its result is being written: the commit decides; the lease is not extended.
        status->set_deadline_unix_ms(lease->second.deadline_ms);
        continue;
      }
      v1::LeaseRecord record;
      record.set_sweep_id(ref.sweep_id());
      record.set_stage(ref.stage());
      record.set_shard(ref.shard());
      record.set_worker(worker_id);
      record.set_attempt(ref.attempt());
      record.set_deadline_unix_ms(deadline);
      update.leases.push_back(std::move(record));
      status->set_deadline_unix_ms(deadline);
      continue;
    }
    if (lease != state.leases.end()) {
      status->set_reason("lease expired; shard re-leased to " + lease->second.worker);
      continue;
    }
    auto record = store_->GetShard(ref.sweep_id(), ref.stage(), ref.shard());
    if (!record.ok() && record.status().code() == StatusCode::kNotFound) {
      status->set_reason("shard not found");
    } else if (!record.ok()) {
      return record.status();
    } else if (record->state() == v1::DONE || sweep_state == v1::DONE) {
      status->set_reason("shard already done");
    } else {
      status->set_reason("lease expired");
    }
  }
  v1::WorkerRecord worker = state.SeenWorker(worker_id, now);
  update.workers.push_back(worker);
  // Not synced: a renewal lost to a power failure at worst expires a lease early.
  KO_RETURN_IF_ERROR(store_->WriteRecords(update, /*sync=*/false));
  state.workers[worker_id] = std::move(worker);
  for (const v1::LeaseRecord& record : update.leases) {
    auto it = state.leases.find({record.sweep_id(), record.stage(), record.shard()});
    if (it != state.leases.end()) state.MoveDeadline(it, deadline);
  }
  return response;
}

std::vector<StatusOr<v1::ReportResultsResponse>> Scheduler::Report(
    const std::vector<const v1::ReportResultsRequest*>& requests, bool sync) {
  std::vector<StatusOr<v1::ReportResultsResponse>> out(
      requests.size(), Status::Internal("report not processed"));
  if (requests.empty()) return out;
  // One commit at a time, and no Heartbeat, Release, expiry timer, Submit or Cancel while it is
  // written; Lease runs beside the write (under mu_ only) and leaves committing shards alone.
  absl::MutexLock commit_lock(&commit_mu_);
  absl::MutexLock lock(&mu_);
  State& state = *state_;
  const uint64_t now = clock_->NowMs();
  State::ReportBatch batch;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto answer = state.AcceptReport(*requests[i], i, now, &batch);
    if (answer) out[i] = std::move(*answer);
  }

  std::vector<v1::WorkerRecord> worker_records;
  for (const auto& [id, worker] : batch.workers) worker_records.push_back(worker);
  std::vector<bool> duplicate;
  Status written;
  // The synced write without mu_: the committing shards are kept out of Lease's and expiry's
  // way, and commit_mu_ keeps everything else that could touch them out.
  mu_.Unlock();
  if (fault::Action action = KO_FAULT_POINT("scheduler.before_commit");
      action == fault::Action::kError) {
    written = Status::Unavailable("fault injected at scheduler.before_commit");
  } else {
    written = store_->CommitShards(batch.commits, &duplicate, worker_records, sync);
  }
  if (written.ok() && sync) {
    (void)KO_FAULT_POINT("scheduler.after_commit");  // kCrash: acknowledged to nobody, durable
  }
  mu_.Lock();
  state.committing.clear();
  std::set<std::string> rewrite;
  rewrite.swap(state.written_during_commit);
  if (!written.ok()) {
    state.UndoReports(batch);
    for (size_t c = 0; c < batch.commits.size(); ++c) out[batch.request_of[c]] = written;
    return out;
  }
  state.MergeReportWorkers(&batch, rewrite);
  state.AdvanceCommitted(state.ApplyReports(batch, duplicate, &out));
  return out;
}

Status Scheduler::SyncCommits() {
  KO_RETURN_IF_ERROR(store_->Sync());
  (void)KO_FAULT_POINT("scheduler.after_commit");  // kCrash: acknowledged to nobody, durable
  return Status::Ok();
}

Status Scheduler::Release(const v1::ReleaseShardRequest& request) {
  const std::string& worker_id = request.worker_id();
  if (worker_id.empty()) return Status::InvalidArgument("ReleaseShard: empty worker id");
  absl::MutexLock commit_lock(&commit_mu_);
  absl::MutexLock lock(&mu_);
  State& state = *state_;
  const uint64_t now = clock_->NowMs();
  const v1::LeaseRef& ref = request.lease();
  if (state.sweeps.find(ref.sweep_id()) == state.sweeps.end()) {
    return Status::NotFound("sweep " + ref.sweep_id() + " not found");
  }
  KO_ASSIGN_OR_RETURN(v1::ShardRecord shard,
                      store_->GetShard(ref.sweep_id(), ref.stage(), ref.shard()));
  auto lease = state.leases.find({ref.sweep_id(), ref.stage(), ref.shard()});
  if (lease == state.leases.end() || lease->second.worker != worker_id ||
      lease->second.attempt != ref.attempt() || shard.state() != v1::RUNNING) {
    return Status::Ok();  // not this worker's current lease: nothing to give back
  }
  const bool counted = !request.error().empty();
  const bool deterministic = counted && IsDeterministic(request.code());
  const std::string error = counted ? request.error() : "released by the worker";
  RecordUpdate update;
  if (state.RecordFailure(&shard, worker_id, error, counted, now, deterministic)) {
    KO_ASSIGN_OR_RETURN(v1::SweepRecord record, state.FailedSweep(shard, deterministic));
    update.sweeps.push_back(std::move(record));
  }
  update.shards.push_back(std::move(shard));
  v1::WorkerRecord worker = state.SeenWorker(worker_id, now);
  update.workers.push_back(worker);
  KO_RETURN_IF_ERROR(store_->WriteRecords(update, /*sync=*/!update.sweeps.empty()));
  state.workers[worker_id] = std::move(worker);
  state.ApplyReturned(update);
  ++state.counters.leases_released;
  state.Changed();
  return Status::Ok();
}

StatusOr<int> Scheduler::ExpireLeases() {
  absl::MutexLock commit_lock(&commit_mu_);
  absl::MutexLock lock(&mu_);
  return state_->Expire(clock_->NowMs());
}

uint64_t Scheduler::change_counter() const {
  absl::MutexLock lock(&mu_);
  return changes_;
}

uint64_t Scheduler::WaitForChange(uint64_t seen, uint32_t timeout_ms) const {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(timeout_ms);
  while (changes_ == seen && !changed_.WaitWithDeadline(&mu_, deadline)) {
  }
  return changes_;
}

SchedulerCounters Scheduler::Counters() const {
  absl::MutexLock lock(&mu_);
  const State& state = *state_;
  const uint64_t now = clock_->NowMs();
  SchedulerCounters counters = state.counters;
  // Gauges from the in-memory indexes, O(running sweeps' stages + leases + workers): pending
  // and failed from the queues' sizes, running from the lease table, done from the stage
  // records.
  for (const std::string& id : state.active) {
    const State::Sweep& sweep = state.sweeps.at(id);
    counters.shards_failed += sweep.failed.size();
    // A failed shard whose late report is being committed has left the queue already.
    counters.shards_pending += sweep.pending.size() > sweep.failed.size()
                                   ? sweep.pending.size() - sweep.failed.size()
                                   : 0;
    auto stages = store_->ListStages(id);
    if (!stages.ok()) continue;  // a gauge, not worth failing a metrics scrape
    for (const v1::StageRecord& stage : *stages) counters.shards_done += stage.shards_done();
  }
  for (const auto& [key, lease] : state.leases) {
    counters.shards_running += state.active.count(std::get<0>(key));
  }
  const std::map<std::string, uint32_t> held = state.LeasesHeld();
  for (const auto& [id, worker] : state.workers) {
    auto count = held.find(id);
    v1::WorkerStatus status =
        state.WorkerStatusOf(worker, now, count == held.end() ? 0 : count->second);
    counters.workers_alive += status.alive();
    counters.workers.push_back(std::move(status));
  }
  return counters;
}

}  // namespace knockout::coordinator
