// Internal to worker/executor: what every shard kind shares — the shard's prompts tokenised
// through the chat template into one left-padded batch, position masks, the metric tokens, the
// shard's tensors and the hook points an edit applies at. Not a public interface (it includes
// ATen); only the executor's own .cc files include it.
// Thread-safety: free functions over values; no shared state.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "knockout/v1/sweep.pb.h"
#include "worker/executor/executor.h"
#include "worker/model/hooks.h"
#include "tokenizer/chat_template.h"

namespace knockout::executor::internal {

// The shard's prompts, tokenised through the chat template and left-padded into one batch.
struct PromptBatch {
  std::vector<tokenizer::TokenizedPrompt> tokenized;
  at::Tensor ids;   // [P, T] on the model's device
  at::Tensor mask;  // [P, T]
  int64_t length = 0;
};

StatusOr<PromptBatch> Tokenize(const LoadedModel& m,
                               const google::protobuf::RepeatedPtrField<v1::ShardPrompt>& prompts,
                               int64_t pad_id);

// Bool [P, T] on the CPU: the padded columns `positions` selects in every prompt (unset: all).
// InvalidArgument naming the prompt if a selector does not fit it.
StatusOr<at::Tensor> PositionMask(const v1::Positions& positions, const PromptBatch& batch);

// Token ids of metric token strings; InvalidArgument unless each is exactly one token.
StatusOr<std::vector<int64_t>> ResolveTokens(const tokenizer::Tokenizer& tokenizer,
                                             const google::protobuf::RepeatedPtrField<std::string>& strings,
                                             const std::string& field);

// The shard's tensors (directions) by name, float32 on the CPU.
StatusOr<std::map<std::string, at::Tensor>> ShardTensors(const v1::Shard& shard);
StatusOr<at::Tensor> FindTensor(const std::map<std::string, at::Tensor>& tensors,
                                const std::string& name);

// The hook points an edit applies at: its hook, or with `every_layer` (science.md's directional
// ablation) every layer's resid_pre, attn_out and mlp_out.
StatusOr<std::vector<model::HookPoint>> EditHooks(const v1::Edit& edit, int64_t num_layers);

// Cancelled when ExecutorOptions::should_stop asks (a shard deadline, a dropped lease, the
// worker stopping); the shard kinds check it between chunks and blocks.
inline Status StopIfAsked(const ExecutorOptions& options) {
  if (options.should_stop && options.should_stop()) {
    return Status::Cancelled("shard stopped before it finished (deadline, dropped lease or shutdown)");
  }
  return Status::Ok();
}

}  // namespace knockout::executor::internal
