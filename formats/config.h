// ModelConfig: the architecture of a Hugging Face checkpoint, parsed from its config.json and
// validated before any weight is read. Torch-free. Immutable value; safe to share across threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace knockout::formats {

// Architecture families the runtime implements. Each maps to one `architectures` entry of
// config.json; anything else is rejected rather than guessed.
enum class Family {
  kLlama,    // LlamaForCausalLM: Llama 2/3, SmolLM, TinyLlama
  kMistral,  // MistralForCausalLM: Llama with an optional sliding attention window
  kQwen2,    // Qwen2ForCausalLM: Llama with q/k/v biases
  // Gemma2ForCausalLM: embeddings scaled by sqrt(hidden_size), (1 + w) RMSNorms in float32, four
  // norms per layer (the attention and MLP outputs are normalised before they join the residual
  // stream), query_pre_attn_scalar, attention and final logit soft-capping, sliding-window
  // attention on even layers, GeGLU (tanh GELU), tied embeddings.
  kGemma2,
};
const char* FamilyName(Family family);

// rope_scaling, the subset of Hugging Face's rope types that we implement exactly.
struct RopeScaling {
  enum class Type { kLinear, kLlama3 };
  Type type = Type::kLinear;
  double factor = 1.0;
  // llama3 only (HF `_compute_llama3_parameters`).
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // the `architectures[0]` string, e.g. "LlamaForCausalLM"
  Family family = Family::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // explicit `head_dim`, else hidden_size / num_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o for Llama's attention_bias) projections
  bool o_proj_bias = false;
  bool mlp_bias = false;
  std::optional<int64_t> sliding_window;  // key j visible from query i iff i - j < window
  // Which layers use the window (sliding_window set): empty = every layer (Mistral); Gemma 2:
  // the even ones, or config.json's `layer_types` ("sliding_attention" / "full_attention").
  std::vector<bool> sliding_layers;
  enum class Activation { kSilu, kGeluTanh };  // silu / gelu_pytorch_tanh (HF hidden_act)
  Activation activation = Activation::kSilu;
  // Gemma 2: attention scores scaled by query_pre_attn_scalar^-0.5 (else head_dim^-0.5), and
  // soft-capped as tanh(s / c) * c before the mask; logits capped the same way.
  std::optional<double> query_pre_attn_scalar;
  std::optional<double> attn_logit_softcapping;
  std::optional<double> final_logit_softcapping;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype;  // as declared ("float32", "bfloat16", ...), informational

  // Number of query heads sharing one key/value head.
  int64_t group_size() const { return num_heads / num_kv_heads; }
  // Whether layer `layer` attends through the sliding window.
  bool Slides(int64_t layer) const {
    return sliding_window.has_value() &&
           (sliding_layers.empty() || sliding_layers.at(static_cast<size_t>(layer)));
  }
};

// Parses config.json text. `label` (the file path) prefixes errors. Errors: InvalidArgument for
// invalid JSON, a missing or mistyped required field ("config.json: field hidden_size: missing"),
// inconsistent sizes (num_heads not divisible by num_key_value_heads, hidden_size not divisible
// by num_attention_heads without head_dim, odd head_dim); Unimplemented for an unknown
// `architectures` entry, an activation the family does not use (silu; gelu_pytorch_tanh for
// Gemma 2), or an unsupported rope_scaling type (naming the value and the supported ones).
StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& label);

// Reads and parses DIR/config.json (NotFound if it is missing).
StatusOr<ModelConfig> LoadModelConfig(const std::string& checkpoint_dir);

// Serialises a config back to Hugging Face's config.json layout (used when writing checkpoints).
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace knockout::formats
