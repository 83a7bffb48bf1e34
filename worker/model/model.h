// The transformer runtime: a decoder-only model (Llama family, Mistral, Qwen2, Gemma 2) loaded from a
// Hugging Face checkpoint, with a forward pass that exposes every hook point of hooks.h, starts
// at any layer from a given residual stream (layer-prefix reuse), continues from a KV cache
// (sequence-prefix reuse and generation), and unembeds only the positions asked for.
//
// Thread-safety: a loaded Model is immutable through its const methods; concurrent Forward calls
// are safe as long as each has its own HookRegistry and KVCache. weights() gives mutable access
// for training and weight edits, which must not overlap with forward passes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "formats/config.h"
#include "worker/model/hooks.h"

namespace knockout::model {

// Weights in Hugging Face layout: linear weights are [out_features, in_features]. Optional
// tensors (biases) are undefined when the architecture has none.
struct LayerWeights {
  at::Tensor input_norm;       // model.layers.{i}.input_layernorm.weight          [d]
  at::Tensor q, k, v, o;       // model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
  at::Tensor q_bias, k_bias, v_bias, o_bias;
  // model.layers.{i}.post_attention_layernorm.weight [d]: the norm before the MLP in Llama and
  // Qwen2; in Gemma 2 the norm of the attention output.
  at::Tensor post_norm;
  at::Tensor gate, up, down;   // model.layers.{i}.mlp.{gate,up,down}_proj.weight
  at::Tensor gate_bias, up_bias, down_bias;
  // Gemma 2 only: model.layers.{i}.{pre,post}_feedforward_layernorm.weight [d].
  at::Tensor pre_ff_norm, post_ff_norm;
};

struct ModelWeights {
  at::Tensor embed;       // model.embed_tokens.weight [vocab, d]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;  // model.norm.weight [d]
  at::Tensor lm_head;     // lm_head.weight [vocab, d]; the same tensor as embed when tied
};

// Every weight with its Hugging Face name and the shape config.json implies, in file order.
// Used by the loader (what to read and check), the writer, and training (parameters).
struct NamedWeightSlot {
  std::string name;
  std::vector<int64_t> shape;
  at::Tensor* tensor;  // where the weight lives inside a ModelWeights
};
std::vector<NamedWeightSlot> WeightSlots(const ModelConfig& config, ModelWeights& weights);

// Past keys and values of a batch, per layer: [B, n_kv_heads, T_past, d_head], keys after RoPE.
struct KVCache {
  std::vector<at::Tensor> keys;
  std::vector<at::Tensor> values;
  at::Tensor attention_mask;  // [B, T_past], 1 for real tokens, 0 for padding

  // Shared-prefix mode (many trials over the same prompts): the cache holds P rows and batch row
  // b reads cache row b % P (the batch is reps x P, prompt-minor). The prefix keys/values are
  // then never copied per row; the pass does not append to such a cache.
  bool shared_prefix = false;

  int64_t length() const { return attention_mask.defined() ? attention_mask.size(1) : 0; }
  // The first `length` columns (for sequence-prefix reuse: clean keys/values of earlier tokens).
  KVCache Prefix(int64_t length) const;
  // Rows `index` (int64 [B']) of the batch, e.g. to repeat one clean prompt for many trials.
  KVCache SelectRows(const at::Tensor& index) const;
};

struct ForwardRequest {
  // [B, T] int64 token ids of the new columns. Ignored when start_layer > 0.
  at::Tensor input_ids;
  // [B, T] 1 for real tokens, 0 for left padding, for the new columns only (the KV cache keeps
  // the earlier ones). Undefined: all ones.
  at::Tensor attention_mask;
  // Layer-prefix reuse: begin at this layer with `start_residual` [B, T, d_model] as
  // blocks.{start_layer}.hook_resid_pre (that hook still runs, so interventions there apply).
  int64_t start_layer = 0;
  at::Tensor start_residual;
  // Stop after this many layers (exclusive end); -1: all layers, then the final norm and logits.
  int64_t end_layer = -1;
  // Past keys/values (sequence-prefix reuse, generation). Appended to in place for the layers
  // that run; layers below start_layer are left as they are.
  KVCache* kv_cache = nullptr;
  enum class Logits { kAll, kLastPosition, kNone };
  Logits logits = Logits::kAll;
  HookRegistry* hooks = nullptr;
  // Training only (the demo organism's trainer): dropout probabilities for the attention weights
  // and for each block's attention and MLP outputs before they join the residual stream. Zero
  // (the default) is inference: no randomness.
  double attention_dropout = 0.0;
  double residual_dropout = 0.0;
};

struct ForwardResult {
  at::Tensor logits;    // float32 [B, T, vocab] or [B, 1, vocab]; undefined for kNone/end_layer
  at::Tensor residual;  // the residual stream after the last layer that ran [B, T, d_model]
};

struct LoadOptions {
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;  // compute dtype: float32, bfloat16 or float16
};

// Whether this build runs attention through LibTorch's fused at::scaled_dot_product_attention
// (LibTorch >= 2.0 and -DKNOCKOUT_FUSED_ATTENTION=ON, the default). Even then, Gemma 2 (soft-cap,
// query_pre_attn_scalar), attention dropout (training) and rows sharing one prompt's keys
// (KVCache::shared_prefix) take the explicit softmax(q k^T) v path; both give the same numbers
// within the numerics tests' tolerances (model_test runs on whichever path was compiled).
bool FusedAttentionCompiled();

// Parses "f32"/"float32", "bf16"/"bfloat16", "f16"/"float16".
StatusOr<c10::ScalarType> ParseComputeDType(const std::string& name);
// Parses "cpu", "cuda", "cuda:N"; InvalidArgument if CUDA is requested but not available.
StatusOr<c10::Device> ParseDevice(const std::string& name);

class Model {
 public:
  // Loads DIR (config.json + model.safetensors or a sharded index). Errors name the file and the
  // tensor or field: NotFound (missing config, weights file, shard or tensor), Corruption
  // (malformed safetensors), InvalidArgument (shape contradicting config.json, unexpected
  // tensor, non-float dtype), Unimplemented (architecture).
  static StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, const LoadOptions& options);

  // Builds a model from weights already in memory; InvalidArgument if a shape disagrees.
  static StatusOr<std::unique_ptr<Model>> FromWeights(ModelConfig config, ModelWeights weights);

  // Random weights (normal, std `init_std`; norms 1) for tests, benchmarks and demos.
  static std::unique_ptr<Model> Random(ModelConfig config, uint64_t seed, double init_std,
                                       const LoadOptions& options);

  // Writes DIR/config.json and DIR/model.safetensors in `storage_dtype`, each file atomically.
  Status Save(const std::string& dir, c10::ScalarType storage_dtype) const;

  // Runs the forward pass. InvalidArgument for malformed requests (shapes, ids outside the
  // vocabulary, a start layer out of range); Internal for an unexpected LibTorch error.
  StatusOr<ForwardResult> Forward(const ForwardRequest& request) const;

  const ModelConfig& config() const { return config_; }
  c10::Device device() const;
  c10::ScalarType dtype() const;
  ModelWeights& weights() { return weights_; }
  const ModelWeights& weights() const { return weights_; }
  // (HF name, tensor) for every distinct weight (a tied lm_head is listed once, as embed).
  std::vector<std::pair<std::string, at::Tensor>> NamedParameters() const;
  // Bytes of all distinct weights in the compute dtype.
  int64_t WeightBytes() const;

 private:
  Model(ModelConfig config, ModelWeights weights);
  ForwardResult ForwardImpl(const ForwardRequest& request) const;
  Status CheckRequest(const ForwardRequest& request) const;

  ModelConfig config_;
  ModelWeights weights_;
  at::Tensor inv_freq_;  // RoPE inverse frequencies [d_head / 2], float32, scaling applied
};

// Left-pads token sequences into a batch: ids [B, T] (pad id in the padding) and mask [B, T].
struct Batch {
  at::Tensor input_ids;
  at::Tensor attention_mask;
};
Batch MakeLeftPaddedBatch(const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id,
                          c10::Device device);

}  // namespace knockout::model
