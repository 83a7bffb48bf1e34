// The SAE runtime: a sparse autoencoder (formats/sae.h) on a device, bound to one hook point of a
// model, with batched encode/decode and latent interventions that keep the error term
// (science.md "SAE formats and encoders", "Upstream sensors, downstream refusal features").
//
//   pre    = (x * s - b_dec * apply_b_dec_to_input) W_enc + b_enc      (s: normalization scale)
//   f      = standard ReLU(pre) | jumprelu ReLU(pre) * 1[pre > threshold]
//            | topk: the k largest pre, ReLU'd, the rest 0
//            | gated: 1[x_c W_enc + b_gate > 0] * ReLU(x_c (W_enc * exp(r_mag)) + b_mag),
//              x_c = x * s - b_dec * apply_b_dec_to_input
//   decode = (f W_dec + b_dec) / s
//   edit   = x' = x + ((f' - f) W_dec) / s     (= decode(f') + (x - decode(f)), error term kept)
//
// At `blocks.{l}.attn.hook_z` the activation [B, T, n_heads, d_head] is flattened to
// [B, T, n_heads * d_head] (= d_in) and edits are reshaped back.
//
// Weights are held in the compute dtype; matmuls accumulate in float32 (activations and weights
// are cast to float32 on the CPU and for half dtypes the products are computed in float32), and
// every returned latent/reconstruction tensor is float32.
//
// Thread-safety: a loaded Sae is immutable; share it (shared_ptr<const Sae>) across threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "formats/sae.h"
#include "worker/model/hooks.h"

namespace knockout::sae {

class Sae {
 public:
  // Reads `path` (formats::ReadSae) and binds it to its hook (or `hook_override`), checked
  // against `config`: InvalidArgument naming the file if no hook is known, the hook is not a
  // residual/sublayer hook this runtime encodes (hook_resid_pre, hook_resid_mid,
  // hook_resid_post, hook_attn_out, hook_mlp_out, attn.hook_z), or d_in differs from the hook's
  // width.
  static StatusOr<std::shared_ptr<const Sae>> Load(const std::string& path,
                                                   const std::string& hook_override,
                                                   const model::ModelConfig& config,
                                                   c10::Device device, c10::ScalarType dtype);
  static StatusOr<std::shared_ptr<const Sae>> FromWeights(const formats::SaeWeights& weights,
                                                          const model::ModelConfig& config,
                                                          c10::Device device,
                                                          c10::ScalarType dtype);

  const formats::SaeConfig& config() const { return config_; }
  const model::HookPoint& hook() const { return hook_; }
  const std::string& path() const { return path_; }
  int64_t d_in() const { return config_.d_in; }
  int64_t d_sae() const { return config_.d_sae; }

  // x: [..., d_in] (or the hook's unflattened shape at attn.hook_z: [..., n_heads, d_head]) in
  // any float dtype. Float32 results with x's leading shape.
  at::Tensor PreActivations(const at::Tensor& x) const;  // [..., d_sae]
  at::Tensor Encode(const at::Tensor& x) const;          // f [..., d_sae]
  at::Tensor Decode(const at::Tensor& f) const;          // [..., d_in] float32
  // The activations of `latents` only, [..., n]. JumpReLU/standard/gated: from those latents'
  // columns of W_enc alone (no full encode); topk: a full encode, then gathered.
  at::Tensor EncodeLatents(const at::Tensor& x, const std::vector<int64_t>& latents) const;
  // Decoder rows [n, d_in] float32 of `latents`, and the whole W_dec [d_sae, d_in] float32.
  at::Tensor DecoderRows(const std::vector<int64_t>& latents) const;
  const at::Tensor& W_dec() const { return W_dec_; }

  // InvalidArgument naming the latent and the SAE if a latent is outside [0, d_sae).
  Status CheckLatents(const std::vector<int64_t>& latents) const;

 private:
  Sae() = default;
  formats::SaeConfig config_;
  std::string path_;
  model::HookPoint hook_;
  std::vector<int64_t> hook_shape_;  // the activation's trailing shape at the hook
  at::Tensor W_enc_, W_dec_, b_enc_, b_dec_, threshold_, b_gate_, r_mag_, b_mag_;
};

// What a latent intervention does to the chosen latents (science.md; Yeo et al. multiply by -3):
//   zero: f_i' = 0;  clamp: f_i' = value;  scale: f_i' = value * f_i;
//   mean: f_i' = values[j] (the latent's mean over a reference set, given per latent).
struct LatentEdit {
  enum class Op { kZero, kClamp, kScale, kMean };
  Op op = Op::kZero;
  std::vector<int64_t> latents;
  double value = 0.0;          // clamp / scale
  std::vector<double> values;  // mean: one per latent
};
const char* LatentOpName(LatentEdit::Op op);  // "zero", "clamp", "scale", "mean"

// An intervention at `sae->hook()` applying `edit` with the error term kept. For zero/clamp/
// mean on a non-topk SAE it computes only the edited latents' activations (EncodeLatents).
// Register it at sae->hook() like any other (row and position masks, generated tokens).
// InvalidArgument for latents out of range or a mean without one value per latent.
StatusOr<model::Intervention> MakeLatentIntervention(std::shared_ptr<const Sae> sae,
                                                     LatentEdit edit);

// The fraction of variance unexplained of `x` [N, d_in] by the SAE's reconstruction:
// sum |x - x_hat|^2 / sum |x - mean_N x|^2, in float64.
double Fvu(const Sae& sae, const at::Tensor& x);

}  // namespace knockout::sae
