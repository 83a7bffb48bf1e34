// Field paths and the names a spec spells out: the enums' name tables, stage kinds, devices
// (spec_parser.h). Stateless.
#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

#include "experiments/spec_parser.h"

namespace knockout::experiments::spec_internal {

// ------------------------------------------------------------------------------------------
// Field paths: "stages[2].targets[0].layers".

std::string Join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string At(const std::string& path, size_t index) {
  return path + "[" + std::to_string(index) + "]";
}

// The enclosing path: strips one trailing "[i]" or ".key"; "" has no parent.
std::string ParentPath(const std::string& path) {
  if (!path.empty() && path.back() == ']') {
    const size_t open = path.rfind('[');
    return open == std::string::npos ? std::string() : path.substr(0, open);
  }
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? std::string() : path.substr(0, dot);
}

std::string Quoted(std::string_view text) { return "\"" + std::string(text) + "\""; }

// Sweep names may carry a version ("demo-1.2"); stage and prompt set names appear inside field
// paths and direction refs ("select.best"), so they may not contain dots.
bool IsName(const std::string& text, bool allow_dot) {
  if (text.empty()) return false;
  return std::all_of(text.begin(), text.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
           (allow_dot && c == '.');
  });
}

// ------------------------------------------------------------------------------------------
// Name tables of the enums a spec spells out.

const NameTable<Target::Kind>& TargetKinds() {
  static const auto* table = new NameTable<Target::Kind>{{"direction", Target::DIRECTION},
                                                         {"heads", Target::HEADS},
                                                         {"neurons", Target::NEURONS},
                                                         {"attn_out", Target::ATTN_OUT},
                                                         {"mlp_out", Target::MLP_OUT},
                                                         {"sae_latents", Target::SAE_LATENTS}};
  return *table;
}

const NameTable<Ablation::Kind>& AblationKinds() {
  // Names say what is done (proto/knockout/v1/sweep.proto, Ablation.Kind): `directional` is
  // science.md's ablation at every layer, `project` the same projection at the target's one
  // hook point; the two means say what they average over.
  static const auto* table =
      new NameTable<Ablation::Kind>{{"zero", Ablation::ZERO},
                                    {"mean_per_position", Ablation::MEAN},
                                    {"mean_all_positions", Ablation::MEAN_ALL_POSITIONS},
                                    {"resample", Ablation::RESAMPLE},
                                    {"project", Ablation::PROJECT},
                                    {"directional", Ablation::DIRECTIONAL},
                                    {"add", Ablation::ADD},
                                    {"clamp", Ablation::CLAMP},
                                    {"scale", Ablation::SCALE},
                                    {"patch", Ablation::PATCH}};
  return *table;
}

const NameTable<GenerateCondition::Kind>& ConditionKinds() {
  static const auto* table =
      new NameTable<GenerateCondition::Kind>{{"baseline", GenerateCondition::BASELINE},
                                             {"ablate", GenerateCondition::ABLATE},
                                             {"add", GenerateCondition::ADD}};
  return *table;
}

// Spellings accepted for model.dtype, mapped to the canonical name the runtime reads.
const NameTable<std::string_view>& Dtypes() {
  static const auto* table = new NameTable<std::string_view>{
      {"float32", "float32"}, {"f32", "float32"},     {"bfloat16", "bfloat16"},
      {"bf16", "bfloat16"},   {"float16", "float16"}, {"f16", "float16"}};
  return *table;
}



std::string_view StageKindName(Stage::KindCase kind) {
  switch (kind) {
    case Stage::kExtractDirections:
      return kStageKinds[0];
    case Stage::kSelectDirection:
      return kStageKinds[1];
    case Stage::kKnockoutSweep:
      return kStageKinds[2];
    case Stage::kGenerate:
      return kStageKinds[3];
    case Stage::kOrthogonalize:
      return kStageKinds[4];
    case Stage::kAttributionScreen:
      return kStageKinds[5];
    case Stage::KIND_NOT_SET:
      break;
  }
  return "unspecified";
}

bool SplitSaeHook(const std::string& hook, int* layer, std::string* suffix) {
  const std::string_view prefix = "blocks.";
  if (hook.compare(0, prefix.size(), prefix) != 0) return false;
  size_t i = prefix.size();
  const size_t digits = i;
  int64_t value = 0;
  while (i < hook.size() && std::isdigit(static_cast<unsigned char>(hook[i])) && i - digits < 6) {
    value = value * 10 + (hook[i] - '0');
    ++i;
  }
  if (i == digits || i >= hook.size() || hook[i] != '.') return false;
  const std::string rest = hook.substr(i + 1);
  if (std::find(kSaeHookSuffixes.begin(), kSaeHookSuffixes.end(), rest) == kSaeHookSuffixes.end()) {
    return false;
  }
  *layer = static_cast<int>(value);
  *suffix = rest;
  return true;
}

bool IsValidDevice(const std::string& device) {
  if (device == "cpu" || device == "cuda") return true;
  const std::string_view prefix = "cuda:";
  return device.size() > prefix.size() && device.compare(0, prefix.size(), prefix) == 0 &&
         std::all_of(device.begin() + prefix.size(), device.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

}  // namespace knockout::experiments::spec_internal
