// Inputs for sweeps that exercise the coordinator alone (coordinator_bench, the chaos test's
// scale phase): a config-only Llama (the coordinator opens no weights), a prompt file, and a
// knockout spec of one-trial head shards, 10 per head (2 ablations x 5 positions):
// layers * heads * 10 shards. Test and benchmark support; no production code includes it.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace knockout::coordinator {

// Writes DIR/model/config.json and DIR/prompts.jsonl; returns the spec's YAML (paths relative to
// DIR, the base_dir to submit it with).
inline std::string WriteSyntheticHeadSweep(const std::filesystem::path& dir,
                                           const std::string& name, int layers, int heads) {
  std::filesystem::create_directories(dir / "model");
  std::ofstream(dir / "model" / "config.json")
      << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
      << "\"hidden_size\": " << heads * 32 << ", \"intermediate_size\": 2816, "
      << "\"num_attention_heads\": " << heads << ", \"num_hidden_layers\": " << layers
      << ", \"num_key_value_heads\": " << heads
      << ", \"vocab_size\": 32000, \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 2048, "
      << "\"rope_theta\": 10000.0, \"tie_word_embeddings\": false}";
  std::ofstream(dir / "prompts.jsonl")
      << "{\"instruction\": \"a\"}\n{\"instruction\": \"b\"}\n{\"instruction\": \"c\"}\n";
  std::ostringstream spec;
  spec << "name: " << name << "\nmodel: {path: model}\n"
       << "prompt_sets:\n  p: {path: prompts.jsonl}\n"
       << "metrics: {refusal_tokens: [\"I\"]}\nshard_trials: 1\n"
       << "stages:\n  - name: heads\n    knockout_sweep:\n      prompt_sets: [p]\n"
       << "      targets: [{kind: heads}]\n"
       << "      ablations: [zero, {kind: mean_per_position, reference_set: p}]\n"
       << "      positions: [post_inst, inst_last, all, \"post_inst[-1]\", \"post_inst[-2]\"]\n";
  return spec.str();
}

}  // namespace knockout::coordinator
