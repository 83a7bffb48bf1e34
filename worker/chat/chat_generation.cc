#include "worker/chat/chat_generation.h"

#include <algorithm>

#include "worker/model/generate.h"

namespace knockout::chat {

StatusOr<std::vector<tokenizer::TokenizedPrompt>> TokenizeInstructions(
    const tokenizer::Tokenizer& tokenizer, const tokenizer::ChatTemplate& chat,
    const std::vector<std::string>& instructions) {
  std::vector<tokenizer::TokenizedPrompt> prompts;
  prompts.reserve(instructions.size());
  for (size_t i = 0; i < instructions.size(); ++i) {
    auto prompt = tokenizer::TokenizeChat(tokenizer, chat, instructions[i]);
    if (!prompt.ok()) {
      return Status::InvalidArgument("instruction " + std::to_string(i) + ": " +
                                     prompt.status().message());
    }
    prompts.push_back(std::move(*prompt));
  }
  return prompts;
}

int64_t PadTokenId(const model::Model& model, const tokenizer::Tokenizer& tokenizer) {
  const tokenizer::SpecialTokens& special = tokenizer.special_tokens();
  if (special.pad_id) return *special.pad_id;
  if (model.config().pad_token_id) return *model.config().pad_token_id;
  if (special.eos_id) return *special.eos_id;
  return 0;
}

StatusOr<std::vector<Completion>> GenerateCompletions(
    const model::Model& model, const tokenizer::Tokenizer& tokenizer,
    const std::vector<tokenizer::TokenizedPrompt>& prompts, const ChatGenerationOptions& options) {
  if (options.batch_size < 1) return Status::InvalidArgument("batch_size must be >= 1");
  model::GenerationOptions generation;
  generation.max_new_tokens = options.max_new_tokens;
  generation.eos_token_ids = model.config().eos_token_ids;
  if (const auto eos = tokenizer.special_tokens().eos_id) generation.eos_token_ids.push_back(*eos);
  generation.pad_token_id = PadTokenId(model, tokenizer);
  generation.hooks = options.hooks;

  std::vector<Completion> completions;
  completions.reserve(prompts.size());
  for (size_t begin = 0; begin < prompts.size(); begin += options.batch_size) {
    const size_t end = std::min(prompts.size(), begin + static_cast<size_t>(options.batch_size));
    std::vector<std::vector<int64_t>> batch;
    for (size_t i = begin; i < end; ++i) batch.push_back(prompts[i].ids);
    KO_ASSIGN_OR_RETURN(model::GenerationResult result,
                        model::GenerateGreedy(model, batch, generation));
    for (std::vector<int64_t>& tokens : result.tokens) {
      // A model's embedding matrix may have rows the tokenizer has no token for (padded
      // vocabularies: Qwen2's 151,936 rows for ~151,650 tokens); Hugging Face's decode skips such
      // ids, and so does the text here (the ids stay in the completion).
      std::vector<int64_t> known;
      known.reserve(tokens.size());
      for (int64_t id : tokens) {
        if (tokenizer.IdToToken(id).has_value()) known.push_back(id);
      }
      KO_ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(known, /*skip_special_tokens=*/true));
      completions.push_back({std::move(text), std::move(tokens)});
    }
  }
  return completions;
}

StatusOr<std::vector<std::vector<int64_t>>> PromptsWithCompletions(
    const model::Model& model, const tokenizer::Tokenizer& tokenizer,
    const std::vector<tokenizer::TokenizedPrompt>& prompts, const ChatGenerationOptions& options) {
  KO_ASSIGN_OR_RETURN(std::vector<Completion> completions,
                      GenerateCompletions(model, tokenizer, prompts, options));
  std::vector<std::vector<int64_t>> sequences;
  sequences.reserve(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    sequences.push_back(prompts[i].ids);
    sequences.back().insert(sequences.back().end(), completions[i].ids.begin(),
                            completions[i].ids.end());
  }
  return sequences;
}

}  // namespace knockout::chat
