// The spec checks only the model's tokenizer can answer, run where the CLI loads a spec
// (`knockout validate`, `run`, `submit`) before anything is stored: metric tokens that are not
// exactly one token, and position selectors that fall outside a stage's prompts once they are
// rendered through the chat template. Torch-free (tokenizer/ and formats/); the coordinator does
// not call it, since it opens no model files. Stateless; thread-safe.
#pragma once

#include "common/status.h"
#include "experiments/spec.h"

namespace knockout::experiments {

// Loads the tokenizer of the spec's model directory (tokenizer.json, tokenizer_config.json) and
// its chat template (model.chat_template, or the one the tokenizer's config names, as the
// workers pick it), then checks:
// - every metrics.refusal_tokens / positive_tokens / negative_tokens entry encodes to exactly
//   one token (without special tokens, as the workers encode it);
// - every explicit position ([i,j]) and post_inst[-k] of an extract_directions or
//   knockout_sweep stage resolves in every prompt of the stage's prompt sets (the workers fail
//   a shard on the first prompt where it does not).
// Errors name the spec file, line and field, and for positions the prompt set, the prompt and
// its length. Call after ValidateSpecFiles (prompt sets load).
Status ValidateSpecTokens(const ParsedSpec& parsed);

}  // namespace knockout::experiments
