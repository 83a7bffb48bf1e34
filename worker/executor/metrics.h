// The metrics read at the last prompt position (science.md) and the one unembedding path every
// score goes through: the executor's TRIALS shards and the organism's evaluation
// (organism/evaluate.cc) compute them here (library knockout_metrics: LibTorch and the model).
//
// Every refusal score a TRIALS shard stores — clean, ablated, the direct-effect run (clean
// residual plus the unit's change of write, final norm's scale frozen) and the final norm's
// counterfactual — is computed by MetricHead::Unembed from a float32 final residual and an RMS
// scale, in float64, then by RefusalScore. One path and one precision for TE, DE and the norm
// effect, so that C = TE - DE carries no rounding of one side only (whatever the model's compute
// dtype). Memory stays bounded: a float64 copy of W_U only when small (MetricHead).
// Thread-safety: free functions over values; MetricHead is const after construction.
#pragma once

#include <ATen/ATen.h>

namespace knockout::model {
class Model;
}

namespace knockout::executor {

// RMS scale of the final norm for float32 residuals [B, d]: sqrt(mean(x^2) + eps), [B, 1].
at::Tensor FinalScale(const model::Model& model, const at::Tensor& x32);

// The final norm's weight and the unembedding in float64, for one shard: W_U is converted once
// when its float64 copy is small (<= 256 MiB: the demo model, small vocabularies), else in
// vocabulary blocks per call (a 128k x 4096 W_U would be 4 GiB), so memory stays bounded.
// Thread-safety: const after construction.
class MetricHead {
 public:
  explicit MetricHead(const model::Model& model);
  // float64 logits [B, V] (CPU) of residuals x32 [B, d] normalised by `scale` [B, 1]:
  // ((x / scale) * g) @ W_U^T, the model's final norm and unembedding, with g = w_norm (Llama,
  // Qwen2 RMSNorm) or 1 + w_norm (Gemma 2), then Gemma 2's final soft-cap c tanh(z / c) where
  // the config sets final_logit_softcapping: the logits the model's own forward gives.
  at::Tensor Unembed(const at::Tensor& x32, const at::Tensor& scale) const;
  // Rows per metric block: [rows, V] float64 logits stay near 64 MiB (8 to 128 rows).
  int64_t BlockRows() const;

 private:
  const model::Model& model_;
  at::Tensor norm64_;     // [d] on the model's device
  at::Tensor lm_head64_;  // [V, d], or undefined when converted per call in blocks
};

// s = log p_R - log(1 - p_R) per row of float64 logits [B, V]; refusal_ids int64 [R] (CPU).
at::Tensor RefusalScore(const at::Tensor& logits64, const at::Tensor& refusal_ids);
// KL(P_clean || P) per row, float64, eps 1e-6 inside the logs (science.md).
at::Tensor Kl(const at::Tensor& clean_logits64, const at::Tensor& logits64);
// mean logit of `positive` minus mean logit of `negative`, per row.
at::Tensor LogitDiff(const at::Tensor& logits64, const at::Tensor& positive, const at::Tensor& negative);

// d s / d x_final with the final norm's scale frozen at `scale` (float32 [B, d] on the model's
// device), from the clean float64 logits: grad_logits s = p (1[R] - p_R) / (p_R (1 - p_R)),
// back through the soft-cap (times 1 - (z / c)^2, z the capped clean logits, when the model has
// one), W_U and the norm's weight g (w, or 1 + w for Gemma 2). The linearised direct effect of a
// write w is w . m.
at::Tensor MetricDirection(const model::Model& model, const at::Tensor& clean_logits64,
                           const at::Tensor& refusal_ids, const at::Tensor& scale);

}  // namespace knockout::executor
