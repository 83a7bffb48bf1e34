// Direction selection (science.md "Selection", Arditi et al.): which candidate refusal direction
// a sweep keeps. The one implementation of the rule, used by the engine's select_direction
// finaliser and by the demo organism's evaluation (organism/evaluate.cc). No proto, no LibTorch:
// candidates and filter settings in, the chosen index and each candidate's verdict out.
// Stateless functions; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace knockout::experiments {

// One candidate direction r(i, l) with its validation scores (science.md):
//   bypass: mean refusal score on harmful prompts under directional ablation of r;
//   induce: mean refusal score on harmless prompts under activation addition +r at layer l;
//   kl:     mean KL(P_clean || P_ablated) at the last position on harmless prompts.
struct SelectionCandidate {
  int layer = 0;
  std::string position;        // for messages only
  double bypass = 0, induce = 0, kl = 0;
  std::optional<double> norm;  // |r|, when known: checked against min_norm
};

struct SelectionFilters {
  int num_layers = 0;               // the model's
  double max_layer_fraction = 0.8;  // drop l >= floor(fraction * num_layers)
  double max_kl = 0.1;              // drop kl > max_kl
  double min_induce = 0.0;          // drop induce < min_induce
  // Drop |r| <= min_norm (candidates with a norm): a zero difference (e.g. the same template
  // token's embedding for every prompt) is no direction, and ablating it is a no-op.
  double min_norm = 1e-6;
  // floor(max_layer_fraction * num_layers): the first layer dropped.
  int MaxLayer() const;
  // "layer < 4, kl <= 0.5, induce >= 0, |r| > 1e-06": the filters in words, for messages.
  std::string Describe() const;
};

struct SelectionResult {
  int chosen = -1;                    // index into the candidates; -1: none passed
  std::vector<std::string> rejected;  // per candidate: why it was dropped; "" if it passed
};

// Applies the filters in this order (the first that fails names the reason): any of bypass,
// induce, kl NaN ("NaN score"), |r| <= min_norm ("norm <= ..."), layer >= MaxLayer()
// ("layer >= L"), kl > max_kl ("kl > K"), induce < min_induce ("induce < I"). Among the
// candidates that pass, the lowest bypass wins; ties go to the earliest candidate.
SelectionResult SelectDirection(const std::vector<SelectionCandidate>& candidates,
                                const SelectionFilters& filters);

}  // namespace knockout::experiments
