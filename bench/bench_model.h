// The model the runtime benchmarks share: a random Llama-shaped model of the size issue 2 names
// (12 layers, d_model 768, 12 heads of 64, MLP 2048, vocab 32000; ~134M parameters, ~537 MB in
// float32), i.e. the shapes `tests/reference/hf_reference.py bench` uses by default.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "formats/config.h"
#include "worker/model/model.h"

namespace knockout::bench {

inline constexpr int64_t kBatch = 8;
inline constexpr int64_t kSeq = 128;
inline constexpr uint64_t kSeed = 0;
inline constexpr double kInitStd = 0.02;  // the reference bench uses mat_std=0.02 too

// A bench config.json text, parsed; a mistake in it ends the program (it is ours, not input).
inline formats::ModelConfig ParseBenchConfig(const char* json, const char* label) {
  auto config = formats::ParseModelConfig(json, label);
  if (!config.ok()) {
    std::fprintf(stderr, "%s: %s\n", label, config.status().ToString().c_str());
    std::exit(2);
  }
  return std::move(config).value();
}

// Same fields as the reference bench's config (BASE + LLAMA with the bench sizes).
inline formats::ModelConfig BenchConfig() {
  static const char* kJson = R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
    "num_key_value_heads": 12, "head_dim": 64, "intermediate_size": 2048,
    "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": false,
    "attention_bias": false, "mlp_bias": false, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "float32"})";
  return ParseBenchConfig(kJson, "bench config");
}

// Issue 15's real-size shape: Llama-3.2-1B's (16 layers, d_model 2048, 32 query heads and 8
// key/value heads of 64, MLP 8192, vocab 128256, tied embeddings; 1.24B parameters).
inline formats::ModelConfig Bench1BConfig() {
  static const char* kJson = R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": true,
    "attention_bias": false, "mlp_bias": false, "bos_token_id": 128000,
    "eos_token_id": 128001, "torch_dtype": "bfloat16"})";
  return ParseBenchConfig(kJson, "bench 1b config");
}

inline std::unique_ptr<model::Model> BenchModel(const model::LoadOptions& options = {}) {
  return model::Model::Random(BenchConfig(), kSeed, kInitStd, options);
}

// An integer >= `minimum` from the environment, or `fallback`.
inline int64_t EnvInt(const char* name, int64_t fallback, int64_t minimum = 1) {
  const char* value = std::getenv(name);
  if (!value || !*value) return fallback;
  char* end = nullptr;
  const long long parsed = std::strtoll(value, &end, 10);
  if (*end != '\0' || parsed < minimum) {
    std::fprintf(stderr, "%s=%s: expected an integer >= %lld\n", name, value,
                 static_cast<long long>(minimum));
    std::exit(2);
  }
  return parsed;
}

}  // namespace knockout::bench
