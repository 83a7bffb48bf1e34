// The shard executor: runs one v1::Shard on a loaded model and returns its v1::ShardResult.
//
// TRIALS shards (knockout sweeps, direction selection) are fast because they reuse the clean
// run (design.md, "Data flow" step 4): one clean pass caches every layer's residual stream and
// the keys/values; each trial then starts at its first intervened layer from the cached
// residual (layer prefix), recomputes only the columns from its first intervened position on,
// attending to the clean cached keys/values of the earlier ones (sequence prefix: exact, since
// attention is causal), unembeds only the last position, and many (trial, prompt) rows are
// stacked along the batch dimension, each with its own intervention. With
// `reuse_prefixes = false` the same trials run naively (one full forward per trial), which the
// exactness test and the benchmark compare against.
//
// Metrics (science.md), per (trial, prompt) and averaged per (trial, prompt set):
//   refusal_score s = log p_R - log(1 - p_R) at the last position (ablated run), and the clean
//   one; te = s_ablated - s_clean; kl = KL(P_clean || P_ablated) (float64, eps 1e-6);
//   logit_diff when positive/negative tokens are configured; with compensation:
//   de = M((x_clean + delta_u) / scale_clean) - M_clean, the unit's own change of write reaching
//   the unembedding with every downstream component and the final norm's scale frozen;
//   norm_effect = M(x_ablated / scale_ablated) - M(x_ablated / scale_clean), the final norm's
//   part of te; and the downstream readings: each downstream unit's direct effect on s,
//   linearised at the clean run (grad of s w.r.t. the logits, scale frozen), clean and ablated.
// Every score goes through one float64 unembedding of the final residual (metrics.h). Prompts
// run in blocks of max_batch_rows, so memory does not grow with a shard's prompt count. The
// kinds' implementations: trials.cc, extract.cc, generate.cc, rank.cc (README.md).
//
// SAE latents (Shard.saes, loaded through LoadedModel::saes): edits with `sae` knock latents
// out with the error term kept (zero, clamp, scale, mean_all_positions); with Shard.backups a
// trial's aggregate row lists the latents of the SAEs after its last edit whose activation at
// the read positions rose most (ResultRow.backups); RANK shards rank an SAE's latents.
//
// Thread-safety: a ShardExecutor only reads its model (and takes SAEs from its synchronised
// cache); Run may be called from several threads if LibTorch's own threading is acceptable to
// the caller.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "knockout/v1/sweep.pb.h"

namespace knockout::model {
class Model;
}
namespace knockout::tokenizer {
class Tokenizer;
class ChatTemplate;
}  // namespace knockout::tokenizer

namespace knockout::executor {

class SaeCache;  // sae_cache.h

// A model with its tokenizer and chat template, loaded once per worker, and the SAEs its shards
// have used (kept across shards; internally synchronised, so shards running at once on one
// LoadedModel may share it).
struct LoadedModel {
  LoadedModel();
  ~LoadedModel();
  LoadedModel(LoadedModel&&) noexcept;
  LoadedModel& operator=(LoadedModel&&) noexcept;

  std::string path;
  std::unique_ptr<model::Model> model;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<tokenizer::ChatTemplate> chat;
  std::unique_ptr<SaeCache> saes;  // never null (made by the constructor)
};

// Loads the checkpoint, its tokenizer and the chat template (ref.chat_template, else detected).
// Errors name the path and the field (dtype, device, template).
StatusOr<LoadedModel> LoadModel(const v1::ModelRef& ref);

struct ExecutorOptions {
  // (trial, prompt) rows stacked in one forward pass. ~100 is best on 2 CPU cores for a
  // 12-layer d768 model (docs/benchmarks.md); larger batches gain nothing there.
  int64_t max_batch_rows = 128;
  // Also the prompts per clean pass and per reference pass: a shard's peak memory is bounded by
  // this block size, not by its number of prompts.
  bool reuse_prefixes = true;    // false: one full forward per trial (the naive reference)
  int64_t generation_batch = 64;
  // Asked between chunks; true: Run stops and returns Cancelled. May be
  // called from the executing thread while other threads change what it reads.
  std::function<bool()> should_stop;
};

class ShardExecutor {
 public:
  // `model` must outlive the executor.
  ShardExecutor(const LoadedModel& model, ExecutorOptions options)
      : model_(model), options_(options) {}

  // Runs the shard. InvalidArgument for a malformed shard (unknown hook, a tensor it names is
  // missing, a position the prompt does not have, a refusal token that is not one token, an
  // SAE file that does not fit the model, a latent out of range); NotFound for an SAE file
  // that does not exist (both messages name the file);
  // IOError for an orthogonalize output that cannot be written; Internal for LibTorch errors.
  StatusOr<v1::ShardResult> Run(const v1::Shard& shard) const;

  const ExecutorOptions& options() const { return options_; }

 private:
  const LoadedModel& model_;
  ExecutorOptions options_;
};

}  // namespace knockout::executor
