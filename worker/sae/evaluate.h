// How good an SAE is on a model's activations over a prompt set (science.md "SAE quality"):
// the fraction of variance unexplained, mean L0, the latents never active, and the cost of
// splicing the SAE into the forward pass (the hook's activation replaced by its reconstruction)
// in next-token cross-entropy and in KL(clean || spliced). What `train-sae` reports and the
// shipped SAEs' card is checked against.
//
// Positions: the SAE reads and is spliced in at every real position of a chat-templated prompt
// but its first (see train.h's PromptActivationSource). Over those positions P:
//   FVU = sum_P |x - x_hat|^2 / sum_P |x - mean_P x|^2            (float64)
//   L0  = mean_P #{i : f_i > 0};  dead = latents with f_i = 0 at every position of P
//   KL  = mean_P KL(p_clean || p_spliced) of the next-token distributions
//   CE  = mean over the positions of P that have a next prompt token (all but the last) of
//         -log p(next token); clean, spliced, and with the activation zeroed at P
//         ("ce_zero", the reference of `ce_recovered` = (CE_zero - CE_spliced) /
//         (CE_zero - CE_clean)).
// All in nats.
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

struct SaeEvaluation {
  int64_t prompts = 0;
  int64_t positions = 0;            // |P|
  double fvu = 0.0;
  double l0 = 0.0;
  int64_t dead_latents = 0;         // never active over P
  double dead_fraction = 0.0;
  at::Tensor ever_active;           // bool [d_sae], for unions over several sets
  int64_t predicted_tokens = 0;     // positions in the CE means
  double ce_clean = 0.0;
  double ce_spliced = 0.0;
  double ce_zero = 0.0;
  double ce_recovered = 0.0;
  double kl = 0.0;
};

// The intervention that replaces the activation at sae->hook() by the SAE's reconstruction
// decode(encode(x)) (no error term: what "splicing in" measures). Register it with a position
// mask to leave some positions clean.
model::Intervention MakeSpliceIntervention(std::shared_ptr<const Sae> sae);

struct EvaluateOptions {
  int64_t batch_prompts = 32;  // prompts per forward pass
  bool splice = true;          // also the CE/KL cost (three forward passes per batch, not one)
};

// Measures `sae` on `sequences` (token ids of chat-templated prompts) run through `model`.
// InvalidArgument if there are no sequences, a sequence has fewer than 2 tokens, or the SAE's
// hook/width does not fit the model; Internal for a LibTorch error.
StatusOr<SaeEvaluation> EvaluateSae(const model::Model& model, std::shared_ptr<const Sae> sae,
                                    const std::vector<std::vector<int64_t>>& sequences,
                                    int64_t pad_id, const EvaluateOptions& options = {});

}  // namespace knockout::sae
