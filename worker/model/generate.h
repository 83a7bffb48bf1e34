// Greedy generation with a KV cache, batched over left-padded prompts, with the interventions of
// a HookRegistry active on the prompt and (per site) on the generated tokens.
// Thread-safety: as Model::Forward — one HookRegistry per concurrent call.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "worker/model/model.h"

namespace knockout::model {

struct GenerationOptions {
  int64_t max_new_tokens = 32;
  std::vector<int64_t> eos_token_ids;  // a row stops after emitting any of these
  int64_t pad_token_id = 0;
  bool use_kv_cache = true;  // false: recompute the whole sequence each step (a reference)
  HookRegistry* hooks = nullptr;
};

struct GenerationResult {
  // Generated tokens per prompt, in input order; a final EOS token is included.
  std::vector<std::vector<int64_t>> tokens;
  std::vector<bool> stopped_on_eos;
};

// Generates greedily (argmax) for every prompt. InvalidArgument for an empty prompt or a prompt
// with ids outside the vocabulary; errors of Model::Forward otherwise.
StatusOr<GenerationResult> GenerateGreedy(const Model& model,
                                          const std::vector<std::vector<int64_t>>& prompts,
                                          const GenerationOptions& options);

}  // namespace knockout::model
