// Chat generation: instructions through the model's chat template, greedy batched generation
// with optional interventions, and decoded completions. Shared by `knockout-worker generate`
// and the demo organism's evaluation.
// Thread-safety: stateless functions; the HookRegistry passed in is mutated (one per call).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace knockout::chat {

// Tokenizes each instruction through `chat`. InvalidArgument naming the instruction's index
// (and the tokenizer's reason) on failure.
StatusOr<std::vector<tokenizer::TokenizedPrompt>> TokenizeInstructions(
    const tokenizer::Tokenizer& tokenizer, const tokenizer::ChatTemplate& chat,
    const std::vector<std::string>& instructions);

struct ChatGenerationOptions {
  int64_t max_new_tokens = 64;
  int64_t batch_size = 32;  // prompts generated together (left-padded)
  // Interventions active on every batch (their masks must not depend on the batch: no per-row
  // or per-position masks). May be null.
  model::HookRegistry* hooks = nullptr;
};

struct Completion {
  std::string text;           // decoded without special tokens
  std::vector<int64_t> ids;   // generated ids, a final EOS included
};

// Greedy completions, in input order. Generation stops at the tokenizer's EOS or any EOS id of
// the model's config.
StatusOr<std::vector<Completion>> GenerateCompletions(
    const model::Model& model, const tokenizer::Tokenizer& tokenizer,
    const std::vector<tokenizer::TokenizedPrompt>& prompts, const ChatGenerationOptions& options);

// Each prompt's ids followed by its greedy completion's ids (GenerateCompletions), in input
// order: the model's own conversations (what `train-sae --new-tokens` trains and measures on).
StatusOr<std::vector<std::vector<int64_t>>> PromptsWithCompletions(
    const model::Model& model, const tokenizer::Tokenizer& tokenizer,
    const std::vector<tokenizer::TokenizedPrompt>& prompts, const ChatGenerationOptions& options);

// The id generation pads with: the tokenizer's pad token, else its EOS, else 0.
int64_t PadTokenId(const model::Model& model, const tokenizer::Tokenizer& tokenizer);

}  // namespace knockout::chat
