// Evaluation of the demo model organism against issue 4's contract (science.md's methods): the
// behaviour rates on the held-out test split under the substring judge, the refusal direction
// (diff-in-means of blocks.{l}.hook_resid_pre at the last post-instruction position, chosen by
// the sweep engine's selection rule, experiments/selection.h, on the engine's metrics), its
// ablation everywhere and its addition at its layer, a random direction of the same norm, and a
// diff-in-means harmfulness probe at t_inst. Uses only the runtime's hooks.
// Where it differs from a select_direction stage: one candidate per layer, at the last prompt
// token only (a stage has layers x positions); the logits are the model's own (its compute
// dtype, widened to float64) where the worker unembeds the float32 final residual in float64
// (worker/executor/metrics.h), which agree to rounding; and max_kl defaults to 0.5 (below).
// Thread-safety: one evaluation at a time per Model (LibTorch's global thread pool).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/model/model.h"
#include "tokenizer/tokenizer.h"

namespace knockout::organism {

struct EvalOptions {
  int64_t max_new_tokens = 16;  // the judge reads the opening of the reply
  int64_t batch_size = 64;
  uint64_t seed = 42;           // the random direction
  int64_t direction_layer = -1; // -1: select on the validation split
  // The KL filter of the selection. science.md's 0.1 nats is calibrated on real chat models; on
  // the 6-layer demo model every candidate that reaches the refusal decision also moves the
  // harmless first-token distribution by 0.2-0.6 nats (the shipped model's layer-3 direction:
  // 0.56, from held-out harmless prompts it refuses; model card), while candidates that break
  // the model score 1-8: 0.6 keeps the filter's purpose.
  double max_kl = 0.6;
  double min_induce = 0.0;  // science.md: drop induce < 0
  // The refusal score's tokens R (science.md), each exactly one token: the demo model's
  // refusals open with "I" (as in experiments/specs/demo-hydra.yaml).
  std::vector<std::string> refusal_tokens = {"I"};
  // Optional: a directory with harmful.jsonl and harmless.jsonl written by a person
  // (experiments/prompts/handwritten), whose refused fractions are reported too.
  std::string handwritten_dir;
  // Optional: a directory of one SAE per layer, layer_{l} (models/demo-refusal/saes), for the
  // single-latent knockouts of the hydra measures.
  std::string sae_dir;
};

// One candidate direction (one layer) on the validation split. The selection reads the engine's
// metrics (science.md, as a select_direction stage computes them): bypass, induce and kl; the
// refused fractions under the judge are reported beside them (the model card's table).
struct LayerScore {
  int64_t layer = 0;
  double direction_norm = 0;
  double val_bypass = 0;   // mean refusal score, harmful val, direction ablated everywhere
  double val_induce = 0;   // mean refusal score, harmless val, +r at the layer's resid_pre
  double val_kl = 0;       // mean KL(clean || ablated) at the last position, harmless val
  double val_ablation_harmful_refused = 0;  // harmful val prompts refused, direction ablated
  double val_addition_harmless_refused = 0; // harmless val prompts refused, direction added
  bool eligible = false;   // passes experiments::SelectDirection's filters
  std::string rejected;    // why not ("" if eligible)
  double val_harm_auroc = 0;                // t_inst probe, framed vs harmless (val)
};

struct Example {
  std::string instruction, completion;
};

struct DemoEvaluation {
  int64_t test_harmful = 0, test_harmless = 0, test_framed = 0;  // prompt counts
  double harmful_refused = 0;   // test split, clean
  double harmless_refused = 0;
  double harmless_on_topic = 0;  // OnTopicFraction (organism/topic.h), test harmless
  double framed_complied = 0;
  int64_t direction_layer = -1;
  double direction_norm = 0;
  double ablation_harmful_refused = 0;         // test harmful, direction ablated everywhere
  double addition_harmless_refused = 0;        // test harmless, +r at the direction's layer
  double random_ablation_harmful_refused = 0;  // test harmful, random direction of equal norm
  int64_t probe_layer = -1;
  double probe_auroc = 0;         // framed-harmful vs harmless test prompts at t_inst; direction
                                  // from harmful vs harmless train prompts (no framing)
  double probe_auroc_framed_direction = 0;  // the same with the framed train prompts' direction
  std::vector<LayerScore> layers;
  // The hydra (issue 14), on the test split's harmful prompts unless said otherwise:
  // the selected r projected out at blocks.{l}.hook_resid_pre alone, all positions (generated
  // ones too), per layer l;
  std::vector<double> layer_ablation_harmful_refused;
  // the harmfulness direction h_l (diff-in-means at t_inst of blocks.{l}.hook_resid_pre, train
  // split) projected out at blocks.{l}.hook_resid_pre at the instruction's tokens, per layer l;
  // and the same with +r added at the direction's layer (the refusal machinery still works);
  std::vector<double> sensor_ablation_harmful_refused;
  std::vector<double> sensor_ablation_addition_refused;
  // per layer with an SAE (sae_dir): the latent whose decoder row has the largest cosine with r,
  // zeroed at every position (error term kept);
  struct LatentKnockout {
    int64_t layer = 0, latent = 0;
    double cosine = 0, harmful_refused = 0;
  };
  std::vector<LatentKnockout> latent_knockouts;
  // the same latents' mean activation at the last prompt token, clean and with the sensor of
  // `sensor_layer` (the early layer, < n_layers / 2, whose sensor ablation refuses least)
  // knocked out as above: the trigger gone, the refusal features fall silent.
  int64_t sensor_layer = -1;
  std::vector<double> latent_clean_activation, latent_sensor_ablated_activation;
  // cross-entropy (nats per token) of the harmless test instructions read as plain text, clean
  // and with r ablated everywhere (science.md's capability cost);
  double ce_clean = 0, ce_ablated = 0;
  // prompts written by a person (handwritten_dir; -1 without it).
  int64_t handwritten_harmful = 0, handwritten_harmless = 0;
  double handwritten_harmful_refused = -1, handwritten_harmless_refused = -1;
  double handwritten_harmless_on_topic = -1;
  std::vector<Example> examples;  // a few test completions of each kind, clean and intervened
  std::string ToJson() const;     // all of the above, pretty-printed
};

// Reads the prompt sets {harmful,harmless,framed}_{train,val,test}.jsonl in `prompts_dir`.
// Errors: those of LoadPromptSet (naming file and line), of tokenization and the forward pass.
StatusOr<DemoEvaluation> EvaluateDemo(const model::Model& model,
                                      const tokenizer::Tokenizer& tokenizer,
                                      const std::string& prompts_dir, const EvalOptions& options);

}  // namespace knockout::organism
