#include "worker/model/generate.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace knockout::model {

StatusOr<GenerationResult> GenerateGreedy(const Model& model,
                                          const std::vector<std::vector<int64_t>>& prompts,
                                          const GenerationOptions& options) {
  GenerationResult result;
  const int64_t b = prompts.size();
  result.tokens.resize(b);
  result.stopped_on_eos.assign(b, false);
  if (b == 0 || options.max_new_tokens <= 0) return result;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) {
      return Status::InvalidArgument("prompt " + std::to_string(i) + " is empty");
    }
  }
  const c10::Device device = model.device();
  Batch batch = MakeLeftPaddedBatch(prompts, options.pad_token_id, device);
  const int64_t prompt_length = batch.input_ids.size(1);
  if (options.hooks) {
    options.hooks->set_prompt_length(prompt_length);
    options.hooks->ClearCache();
  }

  KVCache cache;
  ForwardRequest request;
  request.logits = ForwardRequest::Logits::kLastPosition;
  request.hooks = options.hooks;
  request.input_ids = batch.input_ids;
  request.attention_mask = batch.attention_mask;
  if (options.use_kv_cache) request.kv_cache = &cache;

  std::vector<bool> finished(b, false);
  at::Tensor all_ids = batch.input_ids;
  at::Tensor all_mask = batch.attention_mask;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    KO_ASSIGN_OR_RETURN(ForwardResult out, model.Forward(request));
    at::Tensor next = out.logits.select(1, out.logits.size(1) - 1).argmax(-1).to(at::kCPU);
    auto next_a = next.accessor<int64_t, 1>();
    for (int64_t i = 0; i < b; ++i) {
      if (finished[i]) {
        next_a[i] = options.pad_token_id;
        continue;
      }
      result.tokens[i].push_back(next_a[i]);
      const auto& eos = options.eos_token_ids;
      if (std::find(eos.begin(), eos.end(), next_a[i]) != eos.end()) {
        finished[i] = true;
        result.stopped_on_eos[i] = true;
      }
    }
    if (std::all_of(finished.begin(), finished.end(), [](bool f) { return f; })) break;
    at::Tensor next_ids = next.to(device).unsqueeze(1);
    at::Tensor next_mask = at::ones({b, 1}, at::TensorOptions().dtype(at::kLong).device(device));
    if (options.use_kv_cache) {
      request.input_ids = next_ids;
      request.attention_mask = next_mask;
    } else {
      all_ids = at::cat({all_ids, next_ids}, 1);
      all_mask = at::cat({all_mask, next_mask}, 1);
      request.input_ids = all_ids;
      request.attention_mask = all_mask;
    }
  }
  if (options.hooks) options.hooks->set_prompt_length(-1);
  return result;
}

}  // namespace knockout::model
