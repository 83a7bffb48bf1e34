// Temporary: formats/sae.cc is written elsewhere; until it lands, a minimal SAELens/sparsify
// reader (no Gemma Scope, little checking) so that the runtime can be exercised end to end.
#include "formats/sae.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <sstream>

#include "formats/safetensors.h"

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
namespace {
SaeTensor Read(const SafetensorsFile& file, const std::string& name) {
  SaeTensor out;
  const int i = file.header().Find(name);
  if (i < 0) return out;
  const TensorInfo& info = file.header().tensors[i];
  out.shape = info.shape;
  out.values.resize(info.num_elements());
  const uint8_t* data = file.TensorData(info);
  for (size_t j = 0; j < out.values.size(); ++j) {
    if (info.dtype == DType::kF32) {
      std::memcpy(&out.values[j], data + 4 * j, 4);
    } else {  // bf16
      uint16_t h;
      std::memcpy(&h, data + 2 * j, 2);
      uint32_t bits = static_cast<uint32_t>(h) << 16;
      std::memcpy(&out.values[j], &bits, 4);
    }
  }
  return out;
}
}  // namespace

StatusOr<SaeWeights> ReadSae(const std::string& path, const std::string& hook_override) {
  std::ifstream in(path + "/cfg.json");
  if (!in) return Status::NotFound(path + ": no cfg.json (stub reader)");
  std::stringstream text;
  text << in.rdbuf();
  auto cfg = nlohmann::json::parse(text.str());
  SaeWeights w;
  w.path = path;
  SaeConfig& c = w.config;
  const bool sparsify = cfg.contains("num_latents");
  KO_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path + (sparsify ? "/sae.safetensors" : "/sae_weights.safetensors")));
  if (sparsify) {
    c.source = SaeSource::kSparsify;
    c.architecture = SaeArchitecture::kTopK;
    c.k = cfg["k"];
    c.d_in = cfg["d_in"];
    c.d_sae = cfg["num_latents"];
    c.apply_b_dec_to_input = true;
    SaeTensor enc = Read(*file, "encoder.weight");
    w.W_enc.shape = {c.d_in, c.d_sae};
    w.W_enc.values.resize(enc.values.size());
    for (int64_t i = 0; i < c.d_sae; ++i)
      for (int64_t j = 0; j < c.d_in; ++j) w.W_enc.values[j * c.d_sae + i] = enc.values[i * c.d_in + j];
    w.b_enc = Read(*file, "encoder.bias");
  } else {
    const std::string arch = cfg["architecture"];
    c.architecture = arch == "jumprelu" ? SaeArchitecture::kJumpRelu
                     : arch == "topk"   ? SaeArchitecture::kTopK
                     : arch == "gated"  ? SaeArchitecture::kGated
                                        : SaeArchitecture::kStandard;
    c.d_in = cfg["d_in"];
    c.d_sae = cfg["d_sae"];
    c.k = cfg.value("k", 0);
    c.dtype = cfg.value("dtype", "float32");
    c.apply_b_dec_to_input = cfg.value("apply_b_dec_to_input", false);
    const std::string norm = cfg.value("normalize_activations", "none");
    c.normalization = norm == "expected_average_only_in" ? SaeNormalization::kExpectedAverageOnlyIn
                      : norm == "constant_norm_rescale"  ? SaeNormalization::kConstantNormRescale
                                                         : SaeNormalization::kNone;
    c.scaling_factor = cfg.value("scaling_factor", 1.0);
    if (cfg.contains("hook_name")) c.hook = cfg["hook_name"];
    if (cfg.contains("hook_point")) c.hook = cfg["hook_point"];
    if (cfg.contains("metadata")) c.hook = cfg["metadata"]["hook_name"];
    w.W_enc = Read(*file, "W_enc");
    w.b_enc = Read(*file, "b_enc");
    w.threshold = Read(*file, "threshold");
    w.b_gate = Read(*file, "b_gate");
    w.r_mag = Read(*file, "r_mag");
    w.b_mag = Read(*file, "b_mag");
  }
  w.W_dec = Read(*file, "W_dec");
  w.b_dec = Read(*file, "b_dec");
  if (!hook_override.empty()) c.hook = hook_override;
  return w;
}

}  // namespace knockout::formats
