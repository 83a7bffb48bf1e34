// How good an SAE is on a model's activations over a prompt set (science.md "SAE quality"):
// the fraction of variance unexplained, mean L0, the latents never active, and the cost of
// splicing the SAE into the forward pass (the hook's activation replaced by its reconstruction)
// in next-token cross-entropy and in KL(clean || spliced). What `train-sae` reports and the
// shipped SAEs' card is checked against.
//
// A sequence is a chat-templated prompt, optionally followed by the model's own (greedy)
// response. Over its positions but the first, S (prompt and response; see train.h's
// PromptActivationSource on the first), the SAE is read and spliced in:
//   FVU = sum_S |x - x_hat|^2 / sum_S |x - mean_S x|^2            (float64)
//   L0  = mean_S #{i : f_i > 0};  dead = latents with f_i = 0 at every position of S
// and the splice's cost is measured over two sets of positions:
//   prompt:   KL(p_clean || p_spliced) of the next-token distributions over the prompt's
//             positions but the first, P; CE over the positions of P followed by a prompt token
//   response: CE of the response tokens and KL at the positions that predict them (the
//             prompt's last position and every response position but the last)
// CE is measured clean, spliced, and with the activation zeroed at S ("zero", the reference of
// `recovered` = (CE_zero - CE_spliced) / (CE_zero - CE_clean)). All in nats. A chat model
// trained on assistant tokens only (models/demo-refusal) predicts user tokens near uniformly:
// its prompt CE says little; the response metrics say what the splice does to its answers.
//
// Thread-safety: stateless functions over immutable inputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "common/status.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "worker/sae/sae.h"

namespace knockout::sae {

// Next-token cross-entropy and KL over a set of positions.
struct SpliceCost {
  int64_t tokens = 0;  // positions in the means
  double ce_clean = 0.0;
  double ce_spliced = 0.0;
  double ce_zero = 0.0;
  double ce_recovered = 0.0;
  double kl = 0.0;  // KL(clean || spliced)
};

struct SaeEvaluation {
  int64_t sequences = 0;
  int64_t positions = 0;            // |S|
  double fvu = 0.0;
  double l0 = 0.0;
  int64_t dead_latents = 0;         // never active over S
  double dead_fraction = 0.0;
  at::Tensor ever_active;           // bool [d_sae], for unions over several sets
  bool spliced = false;             // whether the costs below were measured
  SpliceCost prompt;                // CE over P's next prompt tokens; KL over P
  SpliceCost response;              // over R (tokens 0 without responses)
};

// A chat-templated prompt, and the model's response after it (may be empty).
struct EvalSequence {
  std::vector<int64_t> ids;    // prompt then response
  int64_t prompt_length = 0;   // ids[0, prompt_length) is the prompt
};

// The intervention that replaces the activation at sae->hook() by the SAE's reconstruction
// decode(encode(x)) (no error term: what "splicing in" measures). Register it with a position
// mask to leave some positions clean.
model::Intervention MakeSpliceIntervention(std::shared_ptr<const Sae> sae);

struct EvaluateOptions {
  int64_t batch_prompts = 32;  // prompts per forward pass
  bool splice = true;          // also the CE/KL cost (three forward passes per batch, not one)
};

// Measures `sae` on `sequences` run through `model`. InvalidArgument if there are no
// sequences, a prompt has fewer than 2 tokens or prompt_length is outside [2, ids.size()], or
// the SAE's hook/width does not fit the model; Internal for a LibTorch error.
StatusOr<SaeEvaluation> EvaluateSae(const model::Model& model, std::shared_ptr<const Sae> sae,
                                    const std::vector<EvalSequence>& sequences, int64_t pad_id,
                                    const EvaluateOptions& options = {});
// The same for prompts without responses.
StatusOr<SaeEvaluation> EvaluateSae(const model::Model& model, std::shared_ptr<const Sae> sae,
                                    const std::vector<std::vector<int64_t>>& prompts,
                                    int64_t pad_id, const EvaluateOptions& options = {});

}  // namespace knockout::sae
