// Temporary: formats/sae.cc is written elsewhere; until it lands, ReadSae reports Unimplemented.
#include "formats/sae.h"

namespace knockout::formats {

const char* SaeArchitectureName(SaeArchitecture architecture) {
  switch (architecture) {
    case SaeArchitecture::kStandard: return "standard";
    case SaeArchitecture::kJumpRelu: return "jumprelu";
    case SaeArchitecture::kTopK: return "topk";
    case SaeArchitecture::kGated: return "gated";
  }
  return "unknown";
}
const char* SaeSourceName(SaeSource source) {
  switch (source) {
    case SaeSource::kSaeLens: return "saelens";
    case SaeSource::kGemmaScope: return "gemma_scope";
    case SaeSource::kSparsify: return "sparsify";
  }
  return "unknown";
}
const char* SaeNormalizationName(SaeNormalization normalization) {
  switch (normalization) {
    case SaeNormalization::kNone: return "none";
    case SaeNormalization::kExpectedAverageOnlyIn: return "expected_average_only_in";
    case SaeNormalization::kConstantNormRescale: return "constant_norm_rescale";
  }
  return "unknown";
}
StatusOr<SaeWeights> ReadSae(const std::string& path, const std::string&) {
  return Status::Unimplemented(path + ": SAE files cannot be read yet (formats/sae.cc)");
}

}  // namespace knockout::formats
