// Training sparse autoencoders on a model's activations at one hook (science.md "SAE formats
// and encoders"; `knockout-worker train-sae`):
//   TopK (Gao et al. 2024): f = ReLU(top-k of pre), unit-norm decoder rows (the gradient
//     component parallel to each row removed before the step, rows renormalised after it),
//     encoder initialised as the decoder's transpose, b_dec initialised to the data mean, and
//     the AuxK loss: the k_aux largest pre-activations among dead latents reconstruct the
//     residual e = x - x_hat, weighted by 1/32.
//   JumpReLU (Rajamanoharan et al. 2024): f = pre * 1[pre > theta], theta = exp(log_theta);
//     straight-through estimators with a rectangle kernel of width `bandwidth` give theta its
//     gradient through the reconstruction and through an L0 penalty.
// Gradients are written out by hand (no autograd); the optimiser is Adam with a linear warm-up
// and a linear decay to zero over the last fifth of the steps.
//
// Loss units: the reconstruction term is the batch's fraction of variance unexplained,
// sum |x - x_hat|^2 / sum |x - mean_batch x|^2, so that the learning rate, the AuxK weight and
// the L0 coefficient do not depend on the activations' scale. Internally the rows are divided
// by one scale s (the data's per-dimension standard deviation, from the first buffer); the
// written weights are in the data's units (b_enc, b_dec and threshold multiplied by s; W_enc
// and W_dec unchanged, so decoder rows stay unit-norm), which encodes exactly the same latents
// times s.
//
// Activations come from an ActivationSource in blocks and are served in shuffled batches by an
// ActivationBuffer that holds at most `buffer_tokens` rows: when one pass over the source fits,
// all its rows are kept and permuted anew each epoch; otherwise the buffer is a mixing buffer
// (fill, permute, serve half, refill), so a large corpus is never held in memory.
//
// The SAE is trained on the CPU in float32 (the activations are collected on the model's device
// and copied over): the demo-sized SAEs take about a minute each on 2 cores.
//
// Determinism: every random draw (initialisation, permutations, prompt order) comes from CPU
// generators seeded from `seed`. Same seed, same inputs and the same LibTorch thread count give
// bit-identical weights; a different thread count may change the last bits (BLAS and reduction
// splits), which is why the command defaults to one thread.
//
// Thread-safety: a SaeTrainer, ActivationBuffer and ActivationSource are used by one thread.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "formats/sae.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "worker/sae/sae.h"

namespace knockout::sae {

struct SaeTrainOptions {
  formats::SaeArchitecture architecture = formats::SaeArchitecture::kTopK;  // kTopK, kJumpRelu
  int64_t d_sae = 0;  // latents; 0: 4 * d_in
  int64_t k = 32;     // TopK: active latents per token
  int64_t steps = 2000;
  int64_t batch_tokens = 1024;  // rows per optimiser step
  // Adam's learning rate; 0: 2e-4 / sqrt(d_sae / 2^14) (Gao et al.'s scaling law, as sparsify).
  double lr = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double warmup_fraction = 0.02;  // linear warm-up over this fraction of the steps
  double decay_fraction = 0.2;    // linear decay to 0 over the last fraction of the steps
  uint64_t seed = 0;
  // TopK's AuxK loss: a latent is dead when it has not been active for `dead_tokens` training
  // rows; the k_aux (0: d_in / 2) largest pre-activations of the dead latents reconstruct the
  // residual, weighted by aux_coefficient * min(1, dead / k_aux).
  int64_t k_aux = 0;
  double aux_coefficient = 1.0 / 32.0;
  int64_t dead_tokens = 200000;
  // JumpReLU: loss = FVU + l0_coefficient * mean L0 (warmed up linearly over the first
  // `l0_warmup_fraction` of the steps); the rectangle kernel's width and the initial threshold
  // are in units of the internally scaled data (unit per-dimension standard deviation).
  double l0_coefficient = 2e-3;
  double l0_warmup_fraction = 0.1;
  double bandwidth = 0.05;
  double initial_threshold = 0.1;
  // The most rows held in memory.
  int64_t buffer_tokens = 262144;
};

// InvalidArgument naming the option by its train-sae flag (--k, --steps, ...) for values that
// cannot train (k > d_sae, steps < 1, a buffer smaller than a batch, ...).
Status ValidateTrainOptions(const SaeTrainOptions& options, int64_t d_in);
// The learning rate actually used (options.lr, or the default for d_sae).
double EffectiveLearningRate(const SaeTrainOptions& options, int64_t d_sae);

// Rows of activations [n, d_in] float32 on the CPU, read in passes.
class ActivationSource {
 public:
  virtual ~ActivationSource() = default;
  virtual int64_t d_in() const = 0;
  // Rows in one pass when known without running one (the buffer then decides whether a pass
  // fits in memory); -1 if unknown.
  virtual int64_t RowsPerPass() const = 0;
  // Begins a pass; a source may reorder its units (prompts) with `generator`.
  virtual Status StartPass(at::Generator& generator) = 0;
  // The next block of the pass, or an undefined tensor when the pass is over.
  virtual StatusOr<at::Tensor> NextBlock() = 0;
};

// Rows already in memory (tests, benchmarks), served in blocks of `block_rows` in order.
class TensorSource : public ActivationSource {
 public:
  TensorSource(at::Tensor rows, int64_t block_rows);
  int64_t d_in() const override;
  int64_t RowsPerPass() const override;
  Status StartPass(at::Generator& generator) override;
  StatusOr<at::Tensor> NextBlock() override;

 private:
  at::Tensor rows_;
  int64_t block_rows_;
  int64_t next_ = 0;
};

// The activations of `model` at `hook` over token sequences (chat-templated prompts), at every
// position but each sequence's first: the first token (BOS, or the template's first token) is
// the same in every prompt and carries an outlier activation (an attention sink) that an SAE
// should not spend latents on, and SAEs are conventionally trained and evaluated without it.
// Prompts run `batch_prompts` at a time, left-padded; a pass visits them in an order drawn
// from the generator. attn.hook_z is flattened to [n, n_heads * d_head].
class PromptActivationSource : public ActivationSource {
 public:
  // InvalidArgument if `hook` is not one an SAE can read (resid_pre/mid/post, attn_out,
  // mlp_out, attn.hook_z), if a sequence has fewer than 2 tokens, or if there are none.
  static StatusOr<std::unique_ptr<PromptActivationSource>> Create(
      const model::Model& model, const model::HookPoint& hook,
      std::vector<std::vector<int64_t>> sequences, int64_t pad_id, int64_t batch_prompts);
  int64_t d_in() const override { return d_in_; }
  int64_t RowsPerPass() const override { return rows_; }
  Status StartPass(at::Generator& generator) override;
  StatusOr<at::Tensor> NextBlock() override;

 private:
  PromptActivationSource(const model::Model& model, const model::HookPoint& hook);
  const model::Model& model_;
  model::HookPoint hook_;
  std::vector<std::vector<int64_t>> sequences_;
  int64_t pad_id_ = 0;
  int64_t batch_prompts_ = 32;
  int64_t d_in_ = 0;
  int64_t rows_ = 0;
  std::vector<int64_t> order_;
  size_t next_ = 0;
};

// Runs `sequences` (left-padded into one batch) through `model` up to `hook` and returns the
// activations at every real position but each sequence's first, sequence-major, [n, d_in]
// float32 on the CPU.
StatusOr<at::Tensor> HookActivations(const model::Model& model, const model::HookPoint& hook,
                                     const std::vector<std::vector<int64_t>>& sequences,
                                     int64_t pad_id);
// The same selection from an activation `cached` [B, T, ...] of the left-padded batch of
// `sequences` (flattened to `width` per position).
at::Tensor SaePositionRows(const at::Tensor& cached,
                           const std::vector<std::vector<int64_t>>& sequences, int64_t width);
// The bool mask [B, T] of those positions in the left-padded batch (T: the longest sequence).
at::Tensor SaePositionMask(const std::vector<std::vector<int64_t>>& sequences);

// Shuffled training batches from a source, holding at most `capacity` rows (see the top).
class ActivationBuffer {
 public:
  // Reads the first fill. `generator` must outlive the buffer.
  static StatusOr<std::unique_ptr<ActivationBuffer>> Create(ActivationSource* source,
                                                            int64_t capacity,
                                                            at::Generator* generator);
  // `rows` rows [rows, d_in]; FailedPrecondition if the source yields no rows at all.
  StatusOr<at::Tensor> Next(int64_t rows);
  // The rows held now (the first fill: what initialisation statistics are computed from).
  const at::Tensor& held() const { return rows_; }
  bool holds_everything() const { return everything_; }
  int64_t epochs_started() const { return epochs_; }

 private:
  ActivationBuffer() = default;
  Status Fill();       // mixing mode: tops rows_ up to capacity from the source
  Status NextPass();
  ActivationSource* source_ = nullptr;
  at::Generator* generator_ = nullptr;
  int64_t capacity_ = 0;
  bool everything_ = false;
  at::Tensor rows_;         // [held, d_in]
  at::Tensor order_;        // everything: this epoch's permutation
  int64_t cursor_ = 0;      // next unserved entry (of order_, or of the served half)
  int64_t serve_end_ = 0;   // mixing: rows [0, serve_end_) of rows_ are to be served
  int64_t epochs_ = 0;
};

// Per-step numbers (training batch).
struct TrainStepStats {
  int64_t step = 0;     // 1-based
  double lr = 0.0;
  double loss = 0.0;    // fvu + aux or + l0 penalty
  double fvu = 0.0;     // of the batch
  double l0 = 0.0;      // mean active latents per row
  double aux_loss = 0.0;  // TopK: the weighted AuxK term
  int64_t dead = 0;     // latents inactive for dead_tokens rows (before this step's update)
};

// One SAE being optimised. Its parameters live in the internally scaled units.
class SaeTrainer {
 public:
  // InvalidArgument (ValidateTrainOptions).
  static StatusOr<std::unique_ptr<SaeTrainer>> Create(int64_t d_in, const SaeTrainOptions& options);

  // Sets the scale s and b_dec from `sample` [n, d_in] (the data mean; InvalidArgument if the
  // sample has no variance) and draws the initial weights from a generator seeded with the
  // options' seed. Must be called once before Step.
  Status Initialize(const at::Tensor& sample);
  // One Adam step on `batch` [n, d_in] (data units).
  TrainStepStats Step(const at::Tensor& batch);

  // The SAE in the data's units (SAELens conventions: apply_b_dec_to_input, no normalisation),
  // bound to `hook`.
  formats::SaeWeights Weights(const std::string& hook) const;
  double scale() const { return scale_; }
  int64_t steps_done() const { return step_; }
  int64_t d_sae() const { return d_sae_; }

 private:
  SaeTrainer() = default;
  double LearningRate(int64_t step) const;  // 1-based step
  void AdamUpdate(at::Tensor& param, const at::Tensor& grad, at::Tensor& m, at::Tensor& v,
                  double lr);
  at::Tensor TopKGradients(const at::Tensor& x, TrainStepStats* stats);
  at::Tensor JumpReluGradients(const at::Tensor& x, TrainStepStats* stats);

  SaeTrainOptions options_;
  int64_t d_in_ = 0, d_sae_ = 0, k_aux_ = 0;
  double lr_ = 0.0;
  double scale_ = 1.0;
  int64_t step_ = 0;
  bool initialized_ = false;
  // Parameters (float32, scaled units; W_enc_ [d_sae, d_in] holds one encoder row per latent),
  // their gradients and Adam moments.
  at::Tensor W_enc_, b_enc_, W_dec_, b_dec_, log_threshold_;
  at::Tensor grad_W_enc_, grad_b_enc_, grad_W_dec_, grad_b_dec_, grad_log_threshold_;
  std::vector<at::Tensor> m_, v_;
  at::Tensor tokens_since_active_;  // int64 [d_sae]
};

struct TrainProgress {
  TrainStepStats stats;
  int64_t epochs = 0;  // passes over the data started
};
using TrainProgressCallback = std::function<void(const TrainProgress&)>;

struct TrainResult {
  formats::SaeWeights weights;
  formats::SaeWeights initial_weights;  // before the first step (for comparisons)
  double scale = 1.0;
  double lr = 0.0;
  int64_t steps = 0;
  int64_t rows_seen = 0;
  int64_t epochs = 0;           // passes over the data started
  bool held_everything = false;  // one pass fit in the buffer
  TrainStepStats last;          // the last step
  TrainStepStats final_mean;    // means over the last 5% of steps (at least 1)
};

// Trains an SAE on `source` for options.steps steps, reporting every `progress_every` steps
// (and the last) to `progress` (may be empty). Errors: InvalidArgument (options, a source
// whose width is not d_in), the source's errors.
StatusOr<TrainResult> TrainSae(ActivationSource& source, const SaeTrainOptions& options,
                               const std::string& hook,
                               const TrainProgressCallback& progress = nullptr,
                               int64_t progress_every = 100);

}  // namespace knockout::sae
