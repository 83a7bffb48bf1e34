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
// Weights are held in float32 on the SAE's device (the file's values, whatever the model's compute
// dtype: a bf16 model's SAE costs 2x the memory of a bf16 copy); activations are cast to float32
// and every product is computed in float32, so every returned latent/reconstruction tensor is
// float32. An edit returns the activation in its own dtype.
//
// Normalization scale s (formats::SaeNormalization): none 1; expected_average_only_in the file's
// constant; constant_norm_rescale per token sqrt(d_in) / max(|x|, 1e-12) (SAELens has no floor;
// it keeps an all-zero activation, e.g. at a padded column, from producing NaN).
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

class LatentIntervention;

class Sae {
 public:
  // `device`: where the weights live (the model's device). `dtype`, the model's compute dtype,
  // is unused today: the SAE computes in float32 whatever the model's dtype (above).
  //
  // Reads `path` (formats::ReadSae, whose errors pass through) and binds it to its hook (or
  // `hook_override`), checked against `config`: InvalidArgument naming the file if no hook is
  // known, the hook is unknown, out of the model's layers or not a residual/sublayer hook this
  // runtime encodes (hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out,
  // hook_mlp_out, attn.hook_z), d_in differs from the hook's width, a tensor's shape disagrees
  // with d_in/d_sae or one the architecture needs is missing (b_enc except gated, threshold,
  // b_gate/r_mag/b_mag), k is outside [1, d_sae], or the scaling factor is not positive;
  // Internal for a LibTorch failure (e.g. device memory).
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
  // PreActivations: `pre` above; for gated, the gate's pre-activation x_c W_enc + b_gate (the
  // latent is active iff it is > 0).
  at::Tensor PreActivations(const at::Tensor& x) const;  // [..., d_sae]
  at::Tensor Encode(const at::Tensor& x) const;          // f [..., d_sae]
  // (f W_dec + b_dec) / s for a constant s; with constant_norm_rescale (s per token, unknown
  // without x) the reconstruction in the normalised space, f W_dec + b_dec: use Reconstruct.
  at::Tensor Decode(const at::Tensor& f) const;          // [..., d_in] float32
  // decode(encode(x)) with x's own scale, [..., d_in] float32 (flattened at attn.hook_z).
  at::Tensor Reconstruct(const at::Tensor& x) const;
  // The normalization scale s of x, float32 [..., 1] (all ones for kNone).
  at::Tensor Scale(const at::Tensor& x) const;
  // The activations of `latents` only, [..., n]. JumpReLU/standard/gated: from those latents'
  // columns of W_enc alone (no full encode); topk: a full encode, then gathered.
  at::Tensor EncodeLatents(const at::Tensor& x, const std::vector<int64_t>& latents) const;
  // Decoder rows [n, d_in] float32 of `latents`, and the whole W_dec [d_sae, d_in] float32.
  at::Tensor DecoderRows(const std::vector<int64_t>& latents) const;
  const at::Tensor& W_dec() const { return W_dec_; }

  // InvalidArgument naming the latent and the SAE if a latent is outside [0, d_sae).
  Status CheckLatents(const std::vector<int64_t>& latents) const;

  // x [..., d_in], or [..., n_heads, d_head] at attn.hook_z flattened to [..., d_in] (a view);
  // throws c10::Error naming the SAE for any other trailing shape.
  at::Tensor Flatten(const at::Tensor& x) const;
  // The file's path, or "SAE" when built from weights without one (for messages).
  std::string Label() const;

 private:
  friend class LatentIntervention;
  Sae() = default;
  // x * s - b_dec * apply_b_dec_to_input, x float32 [..., d_in], s from Scale.
  at::Tensor Centred(const at::Tensor& x32, const at::Tensor& scale) const;
  // The architecture's activation of `linear` = x_c W_enc[:, index] (every latent when `index`
  // is undefined; topk needs every latent).
  at::Tensor Activate(const at::Tensor& linear, const at::Tensor& index) const;
  // What encoding some latents alone needs: their indices, W_enc[:, latents] [d_in, n] and
  // b_dec W_enc[:, latents] [n] (the centring folded in: one pass over x instead of two).
  // Only the indices for topk, which needs the full encode.
  struct Columns {
    at::Tensor index, W, b_dec_W;
  };
  Columns EncoderColumns(const std::vector<int64_t>& latents) const;
  // f[..., latents] of x32 [..., d_in] whose scale is `scale`.
  at::Tensor EncodeColumns(const at::Tensor& x32, const Columns& columns,
                           const at::Tensor& scale) const;

  formats::SaeConfig config_;
  std::string path_;
  model::HookPoint hook_;
  std::vector<int64_t> hook_shape_;  // the activation's trailing shape at the hook
  // float32 on the SAE's device; b_enc undefined for gated, threshold for non-jumprelu,
  // b_gate/r_mag/b_mag for non-gated.
  at::Tensor W_enc_, W_dec_, b_enc_, b_dec_, threshold_, b_gate_, r_mag_, b_mag_;
  at::Tensor mag_factor_;  // exp(r_mag) (gated)
};

// What a latent intervention does to the chosen latents (science.md; Yeo et al. multiply by -3):
//   zero: f_i' = 0;  clamp: f_i' = value, or values[j] when `values` is given (one per latent:
//   several clamps at once, applied together);  scale: f_i' = value * f_i;
//   mean: f_i' = values[j] (the latent's mean over a reference set, given per latent).
// Latents must be distinct (a repeated latent would count its change twice).
struct LatentEdit {
  enum class Op { kZero, kClamp, kScale, kMean };
  Op op = Op::kZero;
  std::vector<int64_t> latents;
  double value = 0.0;          // clamp / scale
  std::vector<double> values;  // mean (and clamp, if given): one per latent
};
const char* LatentOpName(LatentEdit::Op op);  // "zero", "clamp", "scale", "mean"

// An intervention at `sae->hook()` applying `edit` with the error term kept. On a non-topk SAE
// it computes only the edited latents' activations (their W_enc columns, as EncodeLatents).
// Register it at sae->hook() like any other (row and position masks, generated tokens).
// Its KindName() is "sae_latent_<op>" (zero, clamp, scale, mean).
// InvalidArgument for no latents, latents out of range or repeated, or a mean (or a clamp with
// values) without one value per latent. The edit's Validate refuses any other hook, or a model
// whose activation there is not the SAE's width.
StatusOr<model::Intervention> MakeLatentIntervention(std::shared_ptr<const Sae> sae,
                                                     LatentEdit edit);

// The fraction of variance unexplained of `x` [N, d_in] by the SAE's reconstruction:
// sum |x - x_hat|^2 / sum |x - mean_N x|^2, in float64 (x_hat = Reconstruct(x); NaN or inf when
// every row of x is the same).
double Fvu(const Sae& sae, const at::Tensor& x);

// The hook's width as an SAE sees it (d_model, or n_heads * d_head at attn.hook_z);
// InvalidArgument naming the hook if it is not one this runtime encodes (hook_resid_pre,
// hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out, attn.hook_z).
StatusOr<int64_t> SaeHookWidth(const model::ModelConfig& config, const model::HookPoint& hook);

// The FVU of each vector on its own, float64 [...]: |x - x_hat|^2 / |x - mean(x)|^2 with the mean
// over the vector's d_in components (what `knockout-worker sae encode` prints for one position).
at::Tensor VectorFvu(const Sae& sae, const at::Tensor& x);

}  // namespace knockout::sae
