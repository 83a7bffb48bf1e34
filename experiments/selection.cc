#include "experiments/selection.h"

#include <cmath>
#include <sstream>

namespace knockout::experiments {
namespace {

std::string Num(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace

int SelectionFilters::MaxLayer() const {
  return static_cast<int>(std::floor(max_layer_fraction * num_layers));
}

std::string SelectionFilters::Describe() const {
  return "layer < " + std::to_string(MaxLayer()) + ", kl <= " + Num(max_kl) + ", induce >= " +
         Num(min_induce) + ", |r| > " + Num(min_norm);
}

SelectionResult SelectDirection(const std::vector<SelectionCandidate>& candidates,
                                const SelectionFilters& filters) {
  SelectionResult result;
  const int max_layer = filters.MaxLayer();
  for (size_t i = 0; i < candidates.size(); ++i) {
    const SelectionCandidate& c = candidates[i];
    std::string why;
    if (std::isnan(c.bypass) || std::isnan(c.induce) || std::isnan(c.kl) ||
        (c.norm && std::isnan(*c.norm))) {
      why = "NaN score";
    } else if (c.norm && *c.norm <= filters.min_norm) {
      why = "norm <= " + Num(filters.min_norm);
    } else if (c.layer >= max_layer) {
      why = "layer >= " + std::to_string(max_layer);
    } else if (c.kl > filters.max_kl) {
      why = "kl > " + Num(filters.max_kl);
    } else if (c.induce < filters.min_induce) {
      why = "induce < " + Num(filters.min_induce);
    }
    if (why.empty() &&
        (result.chosen < 0 || c.bypass < candidates[result.chosen].bypass)) {
      result.chosen = static_cast<int>(i);
    }
    result.rejected.push_back(std::move(why));
  }
  return result;
}

}  // namespace knockout::experiments
