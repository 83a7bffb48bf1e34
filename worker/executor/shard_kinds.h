// Internal to worker/executor: one function per shard kind (trials.cc, extract.cc,
// generate.cc); executor.cc dispatches on v1::Shard::kind. Each returns InvalidArgument for a
// malformed shard and lets LibTorch exceptions through to ShardExecutor::Run, which converts them.
// Thread-safety: each call only reads the model.
#pragma once

#include "common/status.h"
#include "knockout/v1/sweep.pb.h"
#include "worker/executor/executor.h"

namespace knockout::executor::internal {

// TRIALS: knockout sweeps and direction selection (trials.cc).
StatusOr<v1::ShardResult> RunTrials(const LoadedModel& m, const ExecutorOptions& options,
                                    const v1::Shard& shard);
// EXTRACT: float64 partial sums for diff-in-means, in blocks of options.max_batch_rows prompts.
StatusOr<v1::ShardResult> RunExtract(const LoadedModel& m, const ExecutorOptions& options,
                                     const v1::Shard& shard);
// GENERATE: greedy generation per condition, judged; cross-entropy on the text set.
StatusOr<v1::ShardResult> RunGenerate(const LoadedModel& m, const ExecutorOptions& options,
                                      const v1::Shard& shard);
// ORTHOGONALIZE: the weight-edited checkpoint, written, loaded back and evaluated.
StatusOr<v1::ShardResult> RunOrthogonalize(const LoadedModel& m, const ExecutorOptions& options,
                                           const v1::Shard& shard);
// RANK: neuron rankings against a direction for knockout targets with top_k (rank.cc).
StatusOr<v1::ShardResult> RunRank(const LoadedModel& m, const ExecutorOptions& options,
                                  const v1::Shard& shard);
// SCREEN: attribution scores of every unit from gradients (screen.cc).
StatusOr<v1::ShardResult> RunScreen(const LoadedModel& m, const ExecutorOptions& options,
                                    const v1::Shard& shard);

}  // namespace knockout::executor::internal
