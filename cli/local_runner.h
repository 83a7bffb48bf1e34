// The embedded runner behind `knockout run`: the sweep engine and a shard executor in one
// process, over a local store. Resumable: the store records every committed shard, so a run
// interrupted (Ctrl-C, kill -9) and started again on the same store skips them and finishes
// with exactly the rows a clean run gives. The distributed issue moves the executor into
// worker processes behind the coordinator; the engine and the store stay as they are.
// Thread-safety: one RunLocal per store directory at a time (RocksDB's lock enforces it).
#pragma once

#include <atomic>
#include <cstdint>
#include <ostream>
#include <string>

#include "common/status.h"
#include "experiments/engine.h"
#include "experiments/spec.h"

namespace knockout::cli {

struct LocalRunOptions {
  std::string store_dir;
  int threads = 0;                // LibTorch CPU threads; 0: all cores
  int64_t max_batch_rows = 128;   // rows stacked per forward pass
  bool summary = true;            // print the selection, refusal and compensation tables at the end
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT) to stop between shards
};

// Runs (or resumes) the sweep of `parsed` to completion. Prints the sweep id first, then one
// progress line per shard, then the summary. Errors: those of validation, of the model load,
// of a shard (the sweep is then marked FAILED with the message), FailedPrecondition "interrupted"
// when `stop` was set (the run can be resumed).
Status RunLocal(const experiments::ParsedSpec& parsed, const LocalRunOptions& options,
                std::ostream& out);

}  // namespace knockout::cli
