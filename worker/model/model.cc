#include "worker/model/model.h"

#include <ATen/ATen.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR only (macros, no torch API)

#include <cmath>
#include <limits>

// Fused attention (at::scaled_dot_product_attention, LibTorch >= 2.0) is chosen at build time:
// with an older LibTorch (Debian's 1.13) or -DKNOCKOUT_FUSED_ATTENTION=OFF the explicit
// softmax(q k^T) v path is the only one compiled.
#if TORCH_VERSION_MAJOR >= 2 && !defined(KNOCKOUT_NO_FUSED_ATTENTION)
#define KNOCKOUT_HAS_FUSED_ATTENTION 1
#else
#define KNOCKOUT_HAS_FUSED_ATTENTION 0
#endif

namespace knockout::model {

bool FusedAttentionCompiled() { return KNOCKOUT_HAS_FUSED_ATTENTION != 0; }

namespace {

constexpr double kPi = 3.14159265358979323846;

std::string Layer(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

// RoPE inverse frequencies (HF `_compute_default_rope_parameters`), with the linear or llama3
// scaling rule (HF `_compute_llama3_parameters`) applied.
at::Tensor RopeInverseFrequencies(const ModelConfig& c) {
  at::Tensor inv_freq =
      1.0 / at::pow(c.rope_theta, at::arange(0, c.head_dim, 2, at::kLong).to(at::kFloat) /
                                      static_cast<double>(c.head_dim));
  if (!c.rope_scaling) return inv_freq;
  const RopeScaling& s = *c.rope_scaling;
  if (s.type == RopeScaling::Type::kLinear) return inv_freq / s.factor;
  const double old_context = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  at::Tensor wavelen = 2 * kPi / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  at::Tensor smooth = (old_context / wavelen - s.low_freq_factor) /
                      (s.high_freq_factor - s.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen);
  return at::where(medium, smoothed, scaled);
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// RMSNorm as in HF Llama: computed in float32, cast back, then scaled by the weight. Returns
// the scale sqrt(mean(x^2) + eps) too (float32 [B, T, 1]), which the final norm exposes.
at::Tensor RmsNormalize(const at::Tensor& x, double eps, at::Tensor* scale_out) {
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor scale = at::sqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (scale_out) *scale_out = scale;
  return x32 / scale;
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return at::linear(x, w, b.defined() ? c10::optional<at::Tensor>(b) : c10::nullopt);
}

// A block's RMSNorm in the compute dtype. Llama: the normalised x rounded to the compute dtype,
// then times w. Gemma 2: x / scale * (1 + w) all in float32, rounded once (Gemma2RMSNorm).
at::Tensor Norm(const at::Tensor& x, const at::Tensor& w, const ModelConfig& c) {
  if (c.family == Family::kGemma2) {
    return (RmsNormalize(x, c.rms_norm_eps, nullptr) * (1.0 + w.to(at::kFloat))).to(x.scalar_type());
  }
  return RmsNormalize(x, c.rms_norm_eps, nullptr).to(x.scalar_type()) * w;
}

// softmax(q k^T / sqrt(dh) + mask) v through the fused kernel; q [B, Hkv, g*T, dh], k and v
// [B, Hkv, total, dh], mask boolean [B, 1, g*T, total] (true: the key is seen). Only called
// when FusedAttentionCompiled().
at::Tensor FusedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& mask) {
#if KNOCKOUT_HAS_FUSED_ATTENTION
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false);
#else
  (void)q, (void)k, (void)v, (void)mask;
  TORCH_CHECK(false, "fused attention is not compiled in");
#endif
}

// Gemma 2's soft cap, tanh(x / cap) * cap.
at::Tensor SoftCap(const at::Tensor& x, const std::optional<double>& cap) {
  return cap ? at::tanh(x / *cap) * *cap : x;
}

}  // namespace

std::vector<NamedWeightSlot> WeightSlots(const ModelConfig& c, ModelWeights& w) {
  const int64_t d = c.hidden_size;
  const int64_t q_out = c.num_heads * c.head_dim;
  const int64_t kv_out = c.num_kv_heads * c.head_dim;
  const int64_t ff = c.intermediate_size;
  std::vector<NamedWeightSlot> slots;
  slots.push_back({"model.embed_tokens.weight", {c.vocab_size, d}, &w.embed});
  w.layers.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = Layer(i);
    slots.push_back({p + "input_layernorm.weight", {d}, &l.input_norm});
    slots.push_back({p + "self_attn.q_proj.weight", {q_out, d}, &l.q});
    slots.push_back({p + "self_attn.k_proj.weight", {kv_out, d}, &l.k});
    slots.push_back({p + "self_attn.v_proj.weight", {kv_out, d}, &l.v});
    slots.push_back({p + "self_attn.o_proj.weight", {d, q_out}, &l.o});
    if (c.attention_bias) {
      slots.push_back({p + "self_attn.q_proj.bias", {q_out}, &l.q_bias});
      slots.push_back({p + "self_attn.k_proj.bias", {kv_out}, &l.k_bias});
      slots.push_back({p + "self_attn.v_proj.bias", {kv_out}, &l.v_bias});
    }
    if (c.o_proj_bias) slots.push_back({p + "self_attn.o_proj.bias", {d}, &l.o_bias});
    slots.push_back({p + "post_attention_layernorm.weight", {d}, &l.post_norm});
    if (c.family == Family::kGemma2) {
      slots.push_back({p + "pre_feedforward_layernorm.weight", {d}, &l.pre_ff_norm});
      slots.push_back({p + "post_feedforward_layernorm.weight", {d}, &l.post_ff_norm});
    }
    slots.push_back({p + "mlp.gate_proj.weight", {ff, d}, &l.gate});
    slots.push_back({p + "mlp.up_proj.weight", {ff, d}, &l.up});
    slots.push_back({p + "mlp.down_proj.weight", {d, ff}, &l.down});
    if (c.mlp_bias) {
      slots.push_back({p + "mlp.gate_proj.bias", {ff}, &l.gate_bias});
      slots.push_back({p + "mlp.up_proj.bias", {ff}, &l.up_bias});
      slots.push_back({p + "mlp.down_proj.bias", {d}, &l.down_bias});
    }
  }
  slots.push_back({"model.norm.weight", {d}, &w.final_norm});
  if (!c.tie_word_embeddings) slots.push_back({"lm_head.weight", {c.vocab_size, d}, &w.lm_head});
  return slots;
}

KVCache KVCache::Prefix(int64_t length) const {
  KVCache out;
  for (const at::Tensor& k : keys) out.keys.push_back(k.defined() ? k.narrow(2, 0, length) : k);
  for (const at::Tensor& v : values) {
    out.values.push_back(v.defined() ? v.narrow(2, 0, length) : v);
  }
  out.attention_mask = attention_mask.narrow(1, 0, length);
  return out;
}

KVCache KVCache::SelectRows(const at::Tensor& index) const {
  KVCache out;
  for (const at::Tensor& k : keys) out.keys.push_back(k.defined() ? k.index_select(0, index) : k);
  for (const at::Tensor& v : values) {
    out.values.push_back(v.defined() ? v.index_select(0, index) : v);
  }
  out.attention_mask = attention_mask.index_select(0, index);
  return out;
}

StatusOr<c10::ScalarType> ParseComputeDType(const std::string& name) {
  if (name == "f32" || name == "float32" || name == "float") return c10::kFloat;
  if (name == "bf16" || name == "bfloat16") return c10::kBFloat16;
  if (name == "f16" || name == "float16" || name == "half") return c10::kHalf;
  return Status::InvalidArgument("unknown dtype \"" + name + "\" (expected f32, bf16 or f16)");
}

StatusOr<c10::Device> ParseDevice(const std::string& name) {
  try {
    c10::Device device(name);
    if (device.is_cuda() && !at::hasCUDA()) {
      return Status::InvalidArgument("device \"" + name +
                                     "\": this build of LibTorch has no CUDA device available");
    }
    if (!device.is_cpu() && !device.is_cuda()) {
      return Status::InvalidArgument("device \"" + name + "\": expected cpu or cuda[:N]");
    }
    return device;
  } catch (const c10::Error&) {
    return Status::InvalidArgument("unknown device \"" + name + "\" (expected cpu or cuda[:N])");
  }
}

Model::Model(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  if (config_.tie_word_embeddings) weights_.lm_head = weights_.embed;
  inv_freq_ = RopeInverseFrequencies(config_).to(weights_.embed.device());
}

StatusOr<std::unique_ptr<Model>> Model::FromWeights(ModelConfig config, ModelWeights weights) {
  for (const NamedWeightSlot& slot : WeightSlots(config, weights)) {
    if (!slot.tensor->defined()) return Status::InvalidArgument("missing weight " + slot.name);
    if (slot.tensor->sizes().vec() != slot.shape) {
      return Status::InvalidArgument("weight " + slot.name + " has the wrong shape");
    }
  }
  return std::unique_ptr<Model>(new Model(std::move(config), std::move(weights)));
}

std::unique_ptr<Model> Model::Random(ModelConfig config, uint64_t seed, double init_std,
                                     const LoadOptions& options) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  ModelWeights weights;
  for (const NamedWeightSlot& slot : WeightSlots(config, weights)) {
    const bool is_norm = slot.name.find("norm.weight") != std::string::npos;
    // Gemma 2 scales by (1 + w): a unit norm is w = 0.
    at::Tensor t = is_norm ? at::full(slot.shape, config.family == Family::kGemma2 ? 0.0 : 1.0,
                                      at::kFloat)
                           : at::normal(0.0, init_std, slot.shape, generator);
    *slot.tensor = t.to(options.device, options.dtype);
  }
  return std::unique_ptr<Model>(new Model(std::move(config), std::move(weights)));
}

c10::Device Model::device() const { return weights_.embed.device(); }
c10::ScalarType Model::dtype() const { return weights_.embed.scalar_type(); }

std::vector<std::pair<std::string, at::Tensor>> Model::NamedParameters() const {
  ModelWeights& w = const_cast<ModelWeights&>(weights_);  // slots only point into it
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const NamedWeightSlot& slot : WeightSlots(config_, w)) {
    out.emplace_back(slot.name, *slot.tensor);
  }
  return out;
}

int64_t Model::WeightBytes() const {
  int64_t bytes = 0;
  for (const auto& [name, t] : NamedParameters()) bytes += t.numel() * t.element_size();
  return bytes;
}

Status Model::CheckRequest(const ForwardRequest& r) const {
  const int64_t n = config_.num_layers;
  if (r.start_layer < 0 || r.start_layer >= n) {
    return Status::InvalidArgument("start_layer " + std::to_string(r.start_layer) +
                                   " out of range, model has " + std::to_string(n) + " layers");
  }
  if (r.end_layer != -1 && (r.end_layer <= r.start_layer || r.end_layer > n)) {
    return Status::InvalidArgument("end_layer " + std::to_string(r.end_layer) +
                                   " must be in (start_layer, num_layers]");
  }
  int64_t b = 0, t = 0;
  if (r.start_layer == 0) {
    if (!r.input_ids.defined() || r.input_ids.dim() != 2 ||
        r.input_ids.scalar_type() != at::kLong) {
      return Status::InvalidArgument("input_ids must be an int64 tensor [batch, tokens]");
    }
    b = r.input_ids.size(0);
    t = r.input_ids.size(1);
    if (r.input_ids.numel() > 0) {
      const int64_t lo = r.input_ids.min().item<int64_t>();
      const int64_t hi = r.input_ids.max().item<int64_t>();
      if (lo < 0 || hi >= config_.vocab_size) {
        return Status::InvalidArgument("token id " + std::to_string(lo < 0 ? lo : hi) +
                                       " outside the vocabulary [0, " +
                                       std::to_string(config_.vocab_size) + ")");
      }
    }
  } else {
    const at::Tensor& x = r.start_residual;
    if (!x.defined() || x.dim() != 3 || x.size(2) != config_.hidden_size) {
      return Status::InvalidArgument("start_residual must be [batch, tokens, " +
                                     std::to_string(config_.hidden_size) + "]");
    }
    b = x.size(0);
    t = x.size(1);
  }
  if (t == 0) return Status::InvalidArgument("a forward pass needs at least one token");
  if (r.attention_mask.defined() &&
      (r.attention_mask.dim() != 2 || r.attention_mask.size(0) != b ||
       r.attention_mask.size(1) != t)) {
    return Status::InvalidArgument("attention_mask must be [batch, tokens] like the input");
  }
  if (r.kv_cache && r.kv_cache->length() > 0) {
    const int64_t rows = r.kv_cache->attention_mask.size(0);
    if (r.kv_cache->shared_prefix ? b % rows != 0 : rows != b) {
      return Status::InvalidArgument("the KV cache holds " + std::to_string(rows) +
                                     " rows, the request " + std::to_string(b) +
                                     (r.kv_cache->shared_prefix ? " (not a multiple)" : ""));
    }
  }
  return Status::Ok();
}

StatusOr<ForwardResult> Model::Forward(const ForwardRequest& request) const {
  try {
    KO_RETURN_IF_ERROR(CheckRequest(request));
    return ForwardImpl(request);
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("forward pass failed in LibTorch: ") +
                            e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Status::Internal(std::string("forward pass failed: ") + e.what());
  }
}

ForwardResult Model::ForwardImpl(const ForwardRequest& r) const {
  const ModelConfig& c = config_;
  HookRegistry* hooks = r.hooks;
  const c10::ScalarType compute_dtype = dtype();
  const c10::Device dev = device();
  KVCache* cache = r.kv_cache;
  const int64_t past = cache ? cache->length() : 0;
  auto hook = [&](const HookPoint& point, at::Tensor x) {
    return hooks ? hooks->Run(point, std::move(x), past) : x;
  };

  // Residual stream entering the first layer that runs.
  at::Tensor resid;
  const bool gemma2 = c.family == Family::kGemma2;
  if (r.start_layer == 0) {
    at::Tensor embedded = at::embedding(weights_.embed, r.input_ids.to(dev));
    // Gemma 2 multiplies by sqrt(hidden_size) as a tensor of the activation dtype (rounded).
    if (gemma2) {
      embedded = embedded * at::scalar_tensor(std::sqrt(static_cast<double>(c.hidden_size)),
                                              embedded.options());
    }
    resid = hook(HookPoint::Embed(), embedded);
  } else {
    resid = r.start_residual.to(dev, compute_dtype);
  }
  const int64_t b = resid.size(0);
  const int64_t t = resid.size(1);

  // Attention mask over all columns (past + new) and position ids of the new columns:
  // positions count real tokens only, so left padding does not shift them (HF generate).
  at::Tensor new_mask = r.attention_mask.defined()
                            ? r.attention_mask.to(dev, at::kLong)
                            : at::ones({b, t}, at::TensorOptions().dtype(at::kLong).device(dev));
  const bool shared = past > 0 && cache->shared_prefix;
  const int64_t prefix_rows = shared ? cache->attention_mask.size(0) : b;
  const int64_t reps = b / prefix_rows;
  at::Tensor past_mask;
  if (past > 0) {
    past_mask = cache->attention_mask.to(dev, at::kLong);
    if (shared) past_mask = past_mask.repeat({reps, 1});
  }
  at::Tensor full_mask = past > 0 ? at::cat({past_mask, new_mask}, 1) : new_mask;
  const int64_t total = past + t;
  at::Tensor positions =
      (full_mask.cumsum(1) - 1).clamp_min(0).narrow(1, past, t);  // [B, T]

  // RoPE tables for the new columns: cat(freqs, freqs), cos/sin in float32, then compute dtype.
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq_;  // [B, T, dh/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos().to(compute_dtype).unsqueeze(1);  // [B, 1, T, dh]
  at::Tensor sin = emb.sin().to(compute_dtype).unsqueeze(1);

  // Additive attention mask [B, 1, T, total]: causal, no padding keys, optional sliding window.
  // A query with no visible key (a padding column) may see itself, keeping softmax finite.
  auto long_options = at::TensorOptions().dtype(at::kLong).device(dev);
  at::Tensor query_col = at::arange(past, total, long_options).unsqueeze(1);  // [T, 1]
  at::Tensor key_col = at::arange(0, total, long_options).unsqueeze(0);       // [1, total]
  at::Tensor visible = (key_col <= query_col).unsqueeze(0) & (full_mask.unsqueeze(1) != 0);
  const int64_t end = r.end_layer == -1 ? c.num_layers : r.end_layer;
  const int64_t h = c.num_heads, hkv = c.num_kv_heads, dh = c.head_dim, g = c.group_size();
  const double softmax_scale =
      1.0 / std::sqrt(c.query_pre_attn_scalar.value_or(static_cast<double>(dh)));
  // The fused kernel computes softmax(q k^T / sqrt(dh) + mask) v: no soft-cap (Gemma 2), no
  // other scale, no attention dropout (training), and keys held per row (not the shared-prefix
  // fold below). Everything else takes it when it is compiled in.
  const bool fused = FusedAttentionCompiled() && !c.attn_logit_softcapping &&
                     softmax_scale == 1.0 / std::sqrt(static_cast<double>(dh)) &&
                     r.attention_dropout == 0 && !shared;
  // Which keys each query sees, [B, 1, T, total]; the explicit path adds it as 0 / -inf, the
  // fused one takes it as a boolean mask with the query rows of a key/value group stacked
  // ([B, 1, g*T, total], as q_grouped below).
  auto attention_mask = [&](at::Tensor seen) {
    seen = (seen | (key_col == query_col).unsqueeze(0)).unsqueeze(1);
    if (fused) return seen.expand({b, g, t, total}).reshape({b, 1, g * t, total});
    return at::zeros({b, 1, t, total}, at::TensorOptions().dtype(at::kFloat).device(dev))
        .masked_fill_(seen.logical_not(), -std::numeric_limits<float>::infinity());
  };
  // Layers without the window (all but Mistral's; Gemma 2's odd ones) and layers with it.
  at::Tensor additive = attention_mask(visible);
  at::Tensor additive_sliding;
  if (c.sliding_window) {
    additive_sliding =
        attention_mask(visible & (query_col - key_col < *c.sliding_window).unsqueeze(0));
  }
  if (cache) {
    cache->keys.resize(c.num_layers);
    cache->values.resize(c.num_layers);
  }
  for (int64_t l = r.start_layer; l < end; ++l) {
    const LayerWeights& w = weights_.layers[l];
    resid = hook(HookPoint::ResidPre(l), resid);

    // Attention.
    at::Tensor x = Norm(resid, w.input_norm, c);
    at::Tensor q = Linear(x, w.q, w.q_bias).view({b, t, h, dh}).transpose(1, 2);
    at::Tensor k = Linear(x, w.k, w.k_bias).view({b, t, hkv, dh}).transpose(1, 2);
    at::Tensor v = Linear(x, w.v, w.v_bias).view({b, t, hkv, dh}).transpose(1, 2);
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
    if (cache && !shared) {
      if (past > 0 && cache->keys[l].defined()) {
        k = at::cat({cache->keys[l], k}, 2);
        v = at::cat({cache->values[l], v}, 2);
      }
      cache->keys[l] = k;
      cache->values[l] = v;
    }
    // Grouped-query attention without copying keys/values: the g query heads that share a
    // key/value head (HF repeat_kv: query head i uses kv head i / g) are stacked along rows.
    at::Tensor q_grouped = q.reshape({b, hkv, g * t, dh});
    at::Tensor z;
    if (fused) {
      z = FusedAttention(q_grouped, k, v, c.Slides(l) ? additive_sliding : additive)
              .view({b, h, t, dh})
              .transpose(1, 2);  // [B, T, H, dh]
    } else {
      at::Tensor scores;
      if (shared) {
        // Rows of the same prompt share its prefix keys: fold the repetitions into the matmul's
        // row dimension ([P, hkv, reps*g*t, dh] x [P, hkv, dh, past]) instead of copying keys.
        at::Tensor q_folded = q_grouped.view({reps, prefix_rows, hkv, g * t, dh})
                                  .permute({1, 2, 0, 3, 4})
                                  .reshape({prefix_rows, hkv, reps * g * t, dh});
        at::Tensor past_scores = at::matmul(q_folded, cache->keys[l].transpose(2, 3))
                                     .view({prefix_rows, hkv, reps, g * t, past})
                                     .permute({2, 0, 1, 3, 4})
                                     .reshape({b, hkv, g * t, past});
        scores = at::cat({past_scores, at::matmul(q_grouped, k.transpose(2, 3))}, -1)
                     .view({b, h, t, total});
      } else {
        scores = at::matmul(q_grouped, k.transpose(2, 3)).view({b, h, t, total});
      }
      at::Tensor probs =
          at::softmax(SoftCap(scores.to(at::kFloat) * softmax_scale, c.attn_logit_softcapping) +
                          (c.Slides(l) ? additive_sliding : additive),
                      -1)
              .to(compute_dtype);
      if (r.attention_dropout > 0) probs = at::dropout(probs, r.attention_dropout, /*train=*/true);
      if (shared) {
        at::Tensor grouped = probs.view({b, hkv, g * t, total});
        at::Tensor past_probs = grouped.narrow(-1, 0, past)
                                    .reshape({reps, prefix_rows, hkv, g * t, past})
                                    .permute({1, 2, 0, 3, 4})
                                    .reshape({prefix_rows, hkv, reps * g * t, past});
        at::Tensor from_past = at::matmul(past_probs, cache->values[l])
                                   .view({prefix_rows, hkv, reps, g * t, dh})
                                   .permute({2, 0, 1, 3, 4})
                                   .reshape({b, hkv, g * t, dh});
        z = (from_past + at::matmul(grouped.narrow(-1, past, t), v)).view({b, h, t, dh}).transpose(1, 2);
      } else {
        z = at::matmul(probs.view({b, hkv, g * t, total}), v)
                .view({b, h, t, dh})
                .transpose(1, 2);  // [B, T, H, dh]
      }
    }
    z = hook(HookPoint::AttnZ(l), z);
    at::Tensor attn_out = Linear(z.reshape({b, t, h * dh}), w.o, w.o_bias);
    // Gemma 2 normalises the attention output before it joins the residual stream; hook_attn_out
    // is what joins it (after that norm), as for every other family.
    if (gemma2) attn_out = Norm(attn_out, w.post_norm, c);
    attn_out = hook(HookPoint::AttnOut(l), attn_out);
    if (r.residual_dropout > 0) attn_out = at::dropout(attn_out, r.residual_dropout, true);
    resid = hook(HookPoint::ResidMid(l), resid + attn_out);

    // Gated MLP: down(act(gate(x)) * up(x)), act = SiLU (SwiGLU) or tanh GELU (Gemma 2's GeGLU).
    x = Norm(resid, gemma2 ? w.pre_ff_norm : w.post_norm, c);
    at::Tensor gate = Linear(x, w.gate, w.gate_bias);
    gate = c.activation == ModelConfig::Activation::kGeluTanh ? at::gelu(gate, "tanh")
                                                              : at::silu(gate);
    at::Tensor post = hook(HookPoint::MlpPost(l), gate * Linear(x, w.up, w.up_bias));
    at::Tensor mlp_out = Linear(post, w.down, w.down_bias);
    if (gemma2) mlp_out = Norm(mlp_out, w.post_ff_norm, c);
    mlp_out = hook(HookPoint::MlpOut(l), mlp_out);
    if (r.residual_dropout > 0) mlp_out = at::dropout(mlp_out, r.residual_dropout, true);
    resid = hook(HookPoint::ResidPost(l), resid + mlp_out);
  }
  if (cache && !shared) cache->attention_mask = full_mask;

  ForwardResult result;
  result.residual = resid;
  if (end < c.num_layers || r.logits == ForwardRequest::Logits::kNone) return result;

  // Final norm and unembedding, only where logits are read.
  at::Tensor final_resid = resid;
  int64_t offset = past;
  if (r.logits == ForwardRequest::Logits::kLastPosition) {
    final_resid = resid.narrow(1, t - 1, 1);
    offset = past + t - 1;
  }
  auto final_hook = [&](const HookPoint& point, at::Tensor x) {
    return hooks ? hooks->Run(point, std::move(x), offset) : x;
  };
  at::Tensor x32 = final_resid.to(at::kFloat);
  at::Tensor scale = final_hook(HookPoint::FinalScale(),
                                at::sqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + c.rms_norm_eps));
  at::Tensor normalized = final_hook(HookPoint::FinalNormalized(), (x32 / scale).to(compute_dtype));
  at::Tensor weighted =
      gemma2 ? (normalized.to(at::kFloat) * (1.0 + weights_.final_norm.to(at::kFloat)))
                   .to(compute_dtype)
             : normalized * weights_.final_norm;
  result.logits =
      SoftCap(at::linear(weighted, weights_.lm_head).to(at::kFloat), c.final_logit_softcapping);
  return result;
}

Batch MakeLeftPaddedBatch(const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id,
                          c10::Device device) {
  int64_t longest = 0;
  for (const auto& s : sequences) longest = std::max<int64_t>(longest, s.size());
  const int64_t b = sequences.size();
  at::Tensor ids = at::full({b, longest}, pad_id, at::kLong);
  at::Tensor mask = at::zeros({b, longest}, at::kLong);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto mask_a = mask.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t pad = longest - static_cast<int64_t>(sequences[i].size());
    for (size_t j = 0; j < sequences[i].size(); ++j) {
      ids_a[i][pad + j] = sequences[i][j];
      mask_a[i][pad + j] = 1;
    }
  }
  return {ids.to(device), mask.to(device)};
}

}  // namespace knockout::model
