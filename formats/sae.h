// Sparse-autoencoder files (science.md "SAE formats and encoders"), torch-free: SAELens
// (`cfg.json` + `sae_weights.safetensors`), Gemma Scope (`params.npz`) and EleutherAI sparsify
// (`cfg.json` + `sae.safetensors`), read into one canonical float32 layout; and a SAELens writer
// (what `knockout-worker train-sae` produces). The runtime that encodes and decodes is worker/sae.
//
// Canonical layout, whatever the source:
//   W_enc [d_in, d_sae]  (sparsify's `encoder.weight [d_sae, d_in]` transposed)
//   W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in]
//   threshold [d_sae]                 jumprelu only (SAELens' `log_threshold` exponentiated)
//   b_gate, r_mag, b_mag [d_sae]      gated only; b_enc is then empty (SAELens' gated SAEs have
//                                     none: b_gate and b_mag take its place)
// A SAELens/Gemma Scope finetuning `scaling_factor [d_sae]` (multiplying the latents before the
// decoder) is folded into W_dec's rows.
// Encode: pre = (x * scale - b_dec * apply_b_dec_to_input) W_enc + b_enc, then the
// architecture's activation; decode: (f W_dec + b_dec) / scale (scale: normalize_activations).
//
// Thread-safety: values; the functions keep no state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace knockout::formats {

enum class SaeArchitecture { kStandard, kJumpRelu, kTopK, kGated };
// "standard", "jumprelu", "topk", "gated".
const char* SaeArchitectureName(SaeArchitecture architecture);

enum class SaeSource { kSaeLens, kGemmaScope, kSparsify };
// "saelens", "gemma_scope", "sparsify".
const char* SaeSourceName(SaeSource source);

// SAELens' `normalize_activations`.
enum class SaeNormalization {
  kNone,
  // `expected_average_only_in`: the input is multiplied by a constant the file gives
  // (cfg.json `scaling_factor`, or a scalar tensor `scaling_factor`); the reconstruction is
  // divided by it.
  kExpectedAverageOnlyIn,
  // `constant_norm_rescale`: every token's input is scaled to norm sqrt(d_in) and the
  // reconstruction scaled back by the same per-token factor.
  kConstantNormRescale,
};
// "none", "expected_average_only_in", "constant_norm_rescale".
const char* SaeNormalizationName(SaeNormalization normalization);

struct SaeConfig {
  SaeSource source = SaeSource::kSaeLens;
  SaeArchitecture architecture = SaeArchitecture::kStandard;
  // TransformerLens hook name (`blocks.3.hook_resid_post`): from the file (SAELens `hook_name`,
  // pre-6.0 `hook_point`, 6.x `metadata.hook_name`; sparsify: a `layers.L` directory name; Gemma
  // Scope: a `layer_L/width_.../average_l0_N` path, residual unless the path says mlp/att), or
  // the caller's override. Empty when nothing says.
  std::string hook;
  int64_t d_in = 0;
  int64_t d_sae = 0;
  int64_t k = 0;  // topk only
  bool apply_b_dec_to_input = false;
  SaeNormalization normalization = SaeNormalization::kNone;
  double scaling_factor = 1.0;  // kExpectedAverageOnlyIn
  std::string dtype = "float32";  // the stored dtype (float32, bfloat16, float16, float64)
};

// A float32 tensor, row-major.
struct SaeTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
  bool empty() const { return values.empty(); }
};

struct SaeWeights {
  SaeConfig config;
  std::string path;  // what was read (for messages)
  SaeTensor W_enc, W_dec, b_enc, b_dec;
  SaeTensor threshold;  // jumprelu
  SaeTensor b_gate, r_mag, b_mag;  // gated
};

// `path` is a SAELens or sparsify directory (cfg.json + weights), a file in one (cfg.json or the
// .safetensors), a Gemma Scope `params.npz` or its directory. The weights file's name decides:
// sae_weights.safetensors -> SAELens, sae.safetensors -> sparsify, params.npz -> Gemma Scope (in
// that order when a directory holds several). `hook_override` (non-empty) replaces the file's
// hook. ReadSaeConfig reads cfg.json and the weights' headers only (no tensor data is
// converted; for .npz only each member's .npy header is inflated) but checks every shape as
// ReadSae does. SAELens defaults for absent fields: architecture standard,
// apply_b_dec_to_input true, normalize_activations none.
//
// Errors name the file and the field or tensor: NotFound (no such path, no cfg.json / weights /
// params.npz), InvalidArgument (unknown architecture or normalization, missing k or threshold,
// missing expected_average_only_in scale, a tensor missing or with a shape that disagrees with
// d_in/d_sae or with the other tensors, a non-float dtype, Fortran-ordered or non-float npy, a
// field of the wrong JSON type), Corruption (truncated or malformed zip/npy/safetensors/JSON),
// Unimplemented (sparsify skip connections, transcoders and groupmax; SAELens layer_norm
// normalisation, SAEs on one attention head (hook_head_index), activations other than relu and
// topk; Gemma Scope embedding SAEs and transcoders; .npz in a build without libzip). sparsify's
// `multi_topk` is read as plain TopK (it only adds a training loss).
StatusOr<SaeConfig> ReadSaeConfig(const std::string& path, const std::string& hook_override = "");
StatusOr<SaeWeights> ReadSae(const std::string& path, const std::string& hook_override = "");

// Writes `dir`/cfg.json (SAELens 6.x layout: architecture, d_in, d_sae, k, dtype,
// apply_b_dec_to_input, normalize_activations, metadata.hook_name; plus hook_name at the top
// level for older readers; `scaling_factor` for expected_average_only_in) and
// `dir`/sae_weights.safetensors (float32), each file atomically; `dir` is created if missing.
// `extra_metadata` (a JSON object) is merged into cfg.json's `metadata` (e.g. the training
// recipe). InvalidArgument if the tensors do not fit the config (checked before anything is
// written); IOError if writing fails.
Status WriteSaeLens(const std::string& dir, const SaeWeights& sae,
                    const std::string& extra_metadata_json = "{}");

// One array of a .npy file (NumPy format 1.0-3.0), parsed strictly: magic, version, header dict
// with exactly `descr`, `fortran_order`, `shape`; little-endian float32/float64/float16 (`<f4`,
// `<f8`, `<f2`) converted to float32; Fortran order refused; data length = elements x size.
// `label` prefixes every message (e.g. "params.npz: W_enc.npy"). Never crashes, whatever the
// bytes.
StatusOr<SaeTensor> ParseNpy(const uint8_t* bytes, size_t size, const std::string& label);

// The members `*.npy` of a .npz (zip, stored or deflated) in memory, parsed with ParseNpy, by
// name without `.npy`. Corruption for a truncated or malformed zip. Never crashes.
struct NpzArray {
  std::string name;
  SaeTensor tensor;
  std::string dtype;  // as stored: "float16", "float32", "float64"
};
StatusOr<std::vector<NpzArray>> ParseNpz(const uint8_t* bytes, size_t size,
                                         const std::string& label);

}  // namespace knockout::formats
