// The coordinator's core, without gRPC: sweeps submitted to the experiments engine, shards
// leased to pulling workers with durable deadlines, heartbeats, expiry and retries, idempotent
// result commits, cancellation, and the progress views the CLI shows. Every state change is one
// write batch in the store (sweep_store.h), so a coordinator restarted on the same directory
// resumes every sweep, and leases keep their deadlines. The gRPC service (service.h) is a thin
// layer over this class; tests drive it directly with a FakeClock.
//
// Leasing: a worker asks for `capacity` shards and says which model it has loaded. Pending shards
// of sweeps on that model come first (model affinity); then sweeps by priority (higher first),
// round robin across sweeps of equal priority (fairness); within a sweep, shards in index order.
// A lease lasts options.lease_ms from the grant or the last heartbeat. An expired lease returns
// the shard to pending with the attempt counted (AttemptError kept); after max_attempts counted
// attempts the shard is FAILED and so is its sweep (the error names the shard and its history).
// A worker's error that would repeat (a malformed shard, a missing file) fails it at once.
//
// Reports: first commit wins. A report for a DONE shard is acknowledged (duplicate) and ignored;
// one from an expired lease is committed if the shard is not DONE (late). A report from a worker
// that never held a lease on the shard is PermissionDenied and stores nothing. After a commit
// that completes a stage, the engine's finaliser runs and the next stage is expanded.
//
// Thread-safety: all public methods may be called concurrently; one mutex (mu_) guards the
// in-memory state (Abseil annotations, checked by clang's -Wthread-safety in ctest). Report's synced group commit is written without mu_: its shards are marked
// committing first (Lease, expiry and the queues leave them alone), so that lease grants do not
// wait for the fdatasync. commit_mu_ serialises Report with the other state changes that may
// touch committing shards (Release, ExpireLeases, Submit, Cancel); Lease, Heartbeat (it writes
// lease records only and leaves committing shards alone), the progress views and the counters
// take mu_ only.
//
// Scale: nothing here reads every shard of a sweep after Open. The progress views read stage
// records, lease records and the failure index (sweep_store.h, "Indexes"); expiry reads the
// front of a deadline-ordered index; Lease ranks the RUNNING sweeps only; the metrics gauges
// come from queue sizes and the lease table. Loading a stage's queue (Open, a stage expanded)
// reads its pending keys, not its shard records.
#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/clock.h"
#include "experiments/sweep_store.h"
#include "knockout/v1/coordinator.pb.h"

namespace knockout::coordinator {

struct SchedulerOptions {
  uint32_t lease_ms = 30'000;      // lease length; workers heartbeat every lease_ms / 3
  uint32_t max_attempts = 3;       // counted attempts before a shard fails
  uint32_t retry_after_ms = 500;   // told to a worker when nothing is pending
  uint32_t max_failures_shown = 20;
  // At Open, give every lease in the store back (not counted) instead of waiting for its
  // deadline: right when the workers that held them cannot be alive, as in the embedded mode,
  // whose workers die with the process that ran the coordinator.
  bool release_leases_on_open = false;
  // Where orthogonalize stages without `output:` write (experiments::SweepEngine::
  // set_checkpoint_root); empty: <store>/checkpoints.
  std::string checkpoint_root;
};

// Counters for the metrics endpoint (monotonic unless noted).
struct SchedulerCounters {
  uint64_t leases_granted = 0;
  uint64_t leases_expired = 0;
  uint64_t leases_released = 0;
  uint64_t reports_committed = 0;
  uint64_t reports_duplicate = 0;
  uint64_t reports_late = 0;
  uint64_t rows_committed = 0;
  // Gauges: shards by state over every RUNNING sweep's expanded stages, workers heard from
  // within two lease periods.
  uint64_t shards_pending = 0;
  uint64_t shards_running = 0;
  uint64_t shards_done = 0;
  uint64_t shards_failed = 0;
  uint64_t workers_alive = 0;
  std::vector<v1::WorkerStatus> workers;  // every known worker, with its throughput
};

class Scheduler {
 public:
  // Opens the scheduler over `store` (which must outlive it): builds the lease and failure
  // indexes of a store written before them (once), reads every sweep, re-runs Advance for
  // RUNNING sweeps (a finaliser interrupted by a crash runs again), and rebuilds the in-memory
  // pending queues (from the pending keys) and lease table (from the lease records). Leases keep
  // their stored deadlines. Errors: those of the store (Corruption naming the key, IOError).
  static StatusOr<std::unique_ptr<Scheduler>> Open(experiments::SweepStore* store,
                                                   const Clock* clock,
                                                   SchedulerOptions options = {});
  ~Scheduler();  // defined where State is complete
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Parses the YAML (errors name request.spec_label, the line and the field), resolves relative
  // paths against base_dir, takes the model's shape and the prompts from request.inputs (read
  // by the CLI: this opens no model or prompt file; InvalidArgument without them) and checks
  // the spec against them, then creates the sweep (or resumes it: same spec on the same prompts
  // and config.json, same id: experiments::SweepIdFor; a FAILED or CANCELLED sweep runs again: its
  // failed shards get their attempts back, shards held when it stopped are pending again,
  // neither counted) and expands its first stage. The request's
  // priority is stored in SweepRecord.priority (a resubmission replaces it). InvalidArgument /
  // NotFound for a bad spec or a base_dir that is not absolute; nothing is stored then.
  // FailedPrecondition naming the sweep if its stage cannot be expanded or a rerun finaliser
  // fails again (the sweep is stored FAILED with that error).
  StatusOr<v1::SubmitSweepResponse> Submit(const v1::SubmitSweepRequest& request)
      ABSL_LOCKS_EXCLUDED(commit_mu_, mu_);

  // Progress of one sweep (`sweep`: id or name), O(stages + leases + failures): counts from the
  // stage records, the lease records and the failure index. NotFound lists the sweeps that
  // exist.
  StatusOr<v1::SweepProgress> Progress(const std::string& sweep) const ABSL_LOCKS_EXCLUDED(mu_);
  StatusOr<std::vector<v1::SweepProgress>> List() const ABSL_LOCKS_EXCLUDED(mu_);

  // Marks the sweep CANCELLED: its pending shards are no longer leased and heartbeats of
  // workers holding its shards answer keep = false. Shard records stay as they are (a lease of
  // a cancelled sweep never expires into a counted failure). Cancelling a DONE sweep is
  // FailedPrecondition; a CANCELLED one is a no-op. NotFound for an unknown sweep.
  StatusOr<v1::SweepProgress> Cancel(const std::string& sweep)
      ABSL_LOCKS_EXCLUDED(commit_mu_, mu_);

  // Grants up to max(1, capacity) shards, records the leases (state RUNNING, worker, deadline,
  // attempt + 1, leased_to) and the worker record in one batch, not synced (a grant lost to a
  // power failure is a shard leased again, never a lost result). No shard: an empty list and
  // retry_after_ms (the worker's last_seen is then updated in memory only).
  // InvalidArgument for an empty worker id.
  StatusOr<v1::LeaseShardsResponse> Lease(const v1::LeaseShardsRequest& request)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Per lease: keep (the worker still holds it: deadline extended in its lease record, written
  // in one unsynced batch with the worker's last_seen; the shard record is not rewritten; a
  // shard whose result is being committed is kept without extension) or drop with a reason: "sweep cancelled", "sweep
  // failed", "shard already done", "lease expired; shard re-leased to W", "lease expired",
  // "sweep not found", "shard not found". InvalidArgument for an empty worker id.
  StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request)
      ABSL_LOCKS_EXCLUDED(commit_mu_, mu_);

  // Commits many reports in one synced write batch (group commit) and returns one result per
  // request, in order. Per report: InvalidArgument (the result names another shard than the
  // lease, a trial index the shard does not have), NotFound (sweep or shard), PermissionDenied
  // (the worker never held a lease on the shard); none of these stores anything. Accepted
  // reports answer duplicate (the shard was DONE, or an earlier report of the call commits it)
  // or late (committed though the lease was no longer the worker's current one). If the write
  // fails, every accepted report gets its error. Fault points "scheduler.before_commit" and
  // "scheduler.after_commit" surround the synced write (kError before it: Unavailable).
  //
  // `sync` false (the server's pipelined group commit): the batch is written and applied but
  // not yet durable, and the fault point "scheduler.after_commit" is not hit here: the caller
  // must call SyncCommits() and see it succeed before it answers any of these reports (the next
  // Report may run meanwhile; a later sync covers every earlier write).
  std::vector<StatusOr<v1::ReportResultsResponse>> Report(
      const std::vector<const v1::ReportResultsRequest*>& requests, bool sync = true)
      ABSL_LOCKS_EXCLUDED(commit_mu_, mu_);

  // Makes every commit so far durable (after Report with sync = false), then hits the fault
  // point "scheduler.after_commit". IOError if the log cannot be synced: the reports must then
  // be answered with that error (their results may be readable, and are acknowledged as
  // duplicates only once a later sync succeeds).
  Status SyncCommits();

  // Gives a lease back (see coordinator.proto). A lease the worker does not hold (expired,
  // re-leased, done) is OK and changes nothing. A counted failure that uses up max_attempts, or
  // whose code says it would repeat (IsDeterministic in scheduler.cc: InvalidArgument, NotFound,
  // Unimplemented, FailedPrecondition), fails the shard and its sweep in the same batch.
  // NotFound for an unknown sweep or shard.
  Status Release(const v1::ReleaseShardRequest& request) ABSL_LOCKS_EXCLUDED(commit_mu_, mu_);

  // Returns every lease whose deadline has passed to pending (or FAILED after max_attempts) in
  // one batch. Returns how many expired. The service calls it on a timer; tests call it after
  // advancing the FakeClock. Lease and Heartbeat also expire what is due before they act. It
  // also retries a stage advance (finaliser, expansion) that a store error interrupted.
  StatusOr<int> ExpireLeases() ABSL_LOCKS_EXCLUDED(commit_mu_, mu_);

  // A counter bumped at every state change; WaitForChange blocks until it differs from `seen`
  // or `timeout_ms` passes, and returns the current value (WatchSweep's wake-up).
  uint64_t change_counter() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t WaitForChange(uint64_t seen, uint32_t timeout_ms) const ABSL_LOCKS_EXCLUDED(mu_);

  SchedulerCounters Counters() const ABSL_LOCKS_EXCLUDED(mu_);
  const SchedulerOptions& options() const { return options_; }

 private:
  Scheduler(experiments::SweepStore* store, const Clock* clock, SchedulerOptions options);

  // Implementation state is private to scheduler.cc; reaching it needs mu_ (State's methods
  // run with mu_ held: they are reached only through state_).
  struct State;
  experiments::SweepStore* store_;
  const Clock* clock_;
  SchedulerOptions options_;
  absl::Mutex commit_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // see "Thread-safety" above
  mutable absl::Mutex mu_;
  mutable absl::CondVar changed_;  // signalled when changes_ moves
  std::unique_ptr<State> state_ ABSL_PT_GUARDED_BY(mu_);
  uint64_t changes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace knockout::coordinator
