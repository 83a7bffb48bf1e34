// The embedded mode behind `knockout run`: a coordinator on loopback (coordinator/server.h) over
// a local store, plus N knockout-worker child processes that pull its shards — the same code
// paths as a cluster, on one machine with one command. Resumable: the store records every
// committed shard, so a run interrupted (Ctrl-C, kill -9) and started again on the same store
// skips them and finishes with exactly the rows a clean run gives. Workers die with the CLI
// (PR_SET_PDEATHSIG), and the leases a killed run left behind are released when it starts again.
// Torch-free: the model runs in the workers.
// Thread-safety: one RunLocal per store directory at a time (RocksDB's lock enforces it).
#pragma once

#include <atomic>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "common/status.h"
#include "experiments/spec.h"

namespace knockout::cli {

struct LocalRunOptions {
  std::string store_dir;
  int workers = 1;                // worker processes
  // One worker per entry, pinned to it ("cpu", "cuda", "cuda:N"; `knockout-worker --device`);
  // empty: `workers` workers on the device the spec's model names.
  std::vector<std::string> devices;
  int threads = 0;                // LibTorch CPU threads per worker; 0: cores / workers (>= 1)
  int64_t max_batch_rows = 128;   // rows stacked per forward pass
  bool summary = true;            // print the selection, refusal and compensation tables at the end
  // On a terminal: the live block of `status --watch` (bar, shards per state, rate, ETA,
  // workers' trials/s, errors) redrawn in place, instead of a line per shard.
  bool live = false;
  std::string worker_binary;      // "": knockout-worker next to this executable (or its build dir)
  uint32_t lease_ms = 10'000;
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT) to stop the run
};

// Runs (or resumes) the sweep of `parsed` to completion. Prints the sweep id first, then one
// progress line per shard committed ("  [2/8 harm] shard 2/4"; with `live`, the progress block
// redrawn instead), then the summary. Errors: those
// of validation; the sweep's error when it FAILED; Internal naming the worker and its log when a
// worker process exits on its own; FailedPrecondition "interrupted" when `stop` was set (run the
// same command again to resume). InvalidArgument, before anything starts, for a device that is
// not cpu, cuda or cuda:N, or `devices` together with a different `workers` count.
Status RunLocal(const experiments::ParsedSpec& parsed, const LocalRunOptions& options,
                std::ostream& out);

}  // namespace knockout::cli
