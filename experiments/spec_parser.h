// The spec parser's internals, shared by the files that implement it: spec_names.cc (field
// paths, the enums' name tables), spec_parser.cc (generic YAML readers, the top-level sections,
// positions and direction references) and spec_stages.cc (the stage readers and their checks);
// spec.cc drives it. Private to experiments/: everyone else includes spec.h.
// Thread-safety: a SpecParser fills one ParsedSpec on one thread; the rest is stateless.
#pragma once

#include <yaml-cpp/yaml.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/status.h"
#include "experiments/spec.h"

namespace knockout::experiments::spec_internal {

using v1::Ablation;
using v1::DirectionRef;
using v1::GenerateCondition;
using v1::Positions;
using v1::Stage;
using v1::Target;

template <typename Enum>
using NameTable = std::vector<std::pair<std::string_view, Enum>>;

// ------------------------------------------------------------------------------------------
// Field paths ("stages[2].targets[0].layers") and names (spec_names.cc).

std::string Join(const std::string& path, std::string_view key);
std::string At(const std::string& path, size_t index);
// The enclosing path: strips one trailing "[i]" or ".key"; "" has no parent.
std::string ParentPath(const std::string& path);
std::string Quoted(std::string_view text);
// Sweep names may carry a version ("demo-1.2"); stage and prompt set names may not (dots).
bool IsName(const std::string& text, bool allow_dot);

// ------------------------------------------------------------------------------------------
// Name tables of the enums a spec spells out (spec_names.cc).

const NameTable<Target::Kind>& TargetKinds();
const NameTable<Ablation::Kind>& AblationKinds();
const NameTable<GenerateCondition::Kind>& ConditionKinds();
// Spellings accepted for model.dtype, mapped to the canonical name the runtime reads.
const NameTable<std::string_view>& Dtypes();

template <typename Enum>
std::string_view NameOf(const NameTable<Enum>& table, Enum value) {
  for (const auto& [name, v] : table) {
    if (v == value) return name;
  }
  return "unspecified";
}

template <typename Enum>
std::string Choices(const NameTable<Enum>& table) {
  std::string out;
  for (const auto& entry : table) out += (out.empty() ? "" : ", ") + std::string(entry.first);
  return out;
}

inline constexpr std::array<std::string_view, 6> kStageKinds = {
    "extract_directions", "select_direction", "knockout_sweep", "generate", "orthogonalize",
    "attribution_screen"};

std::string_view StageKindName(Stage::KindCase kind);
// The hook points an SAE may read (worker/sae): "blocks.L.SUFFIX" with these suffixes.
inline constexpr std::array<std::string_view, 6> kSaeHookSuffixes = {
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
    "attn.hook_z"};
// Splits "blocks.L.SUFFIX" into L and SUFFIX; false if it is not such a name.
bool SplitSaeHook(const std::string& hook, int* layer, std::string* suffix);
bool IsValidDevice(const std::string& device);

// ------------------------------------------------------------------------------------------
// The parser: walks the YAML tree along the schema, filling the proto and recording lines.
// Each Read* returns the first error, naming the field path and its line.

class SpecParser {
 public:
  explicit SpecParser(ParsedSpec* parsed) : parsed_(parsed), spec_(parsed->spec) {}

  Status Parse(const YAML::Node& root);

 private:
  // --- errors, lines and generic readers
  Status Fail(const std::string& path, const std::string& message) const {
    return Status::InvalidArgument(parsed_->Where(path) + ": " + message);
  }
  void Record(const std::string& path, const YAML::Node& node) {
    if (node.IsDefined() && !node.Mark().is_null()) parsed_->lines[path] = node.Mark().line + 1;
  }
  Status CheckMap(const YAML::Node& node, const std::string& path,
                  std::initializer_list<std::string_view> keys, const char* what = "a map");
  Status ForEach(const YAML::Node& node, const std::string& path, bool non_empty,
                 const std::function<Status(const YAML::Node&, const std::string&)>& read);
  template <typename T>
  Status ReadScalar(const YAML::Node& map, std::string_view key, const std::string& path,
                    bool required, T* out);
  Status ReadString(const YAML::Node& map, std::string_view key, const std::string& path,
                    bool required, std::string* out) {
    return ReadScalar(map, key, path, required, out);
  }
  // An optional integer in [min, max]; absent: *out (the default) is left as it is.
  Status ReadInt(const YAML::Node& map, std::string_view key, const std::string& path, int64_t min,
                 int64_t max, int64_t* out);
  template <typename T>
  StatusOr<T> ReadOptional(const YAML::Node& map, std::string_view key, const std::string& path,
                           T default_value) {
    KO_RETURN_IF_ERROR(ReadScalar(map, key, path, false, &default_value));
    return default_value;
  }
  StatusOr<uint32_t> ReadCount(const YAML::Node& map, std::string_view key, const std::string& path,
                               uint32_t default_value);
  template <typename Enum>
  Status ReadEnum(const YAML::Node& node, const std::string& path, const NameTable<Enum>& table,
                  const char* what, Enum* out);
  Status ReadStrings(const YAML::Node& map, std::string_view key, const std::string& path,
                     google::protobuf::RepeatedPtrField<std::string>* out);

  // --- spec pieces
  Status ReadModel(const YAML::Node& node, const std::string& path);
  Status ReadPromptSets(const YAML::Node& node, const std::string& path);
  Status ReadPromptSet(const std::string& name, const YAML::Node& node, const std::string& path);
  Status ReadMetrics(const YAML::Node& node, const std::string& path);
  Status ReadSetName(const YAML::Node& map, std::string_view key, const std::string& path,
                     bool required, std::string* out);
  Status ReadSetNames(const YAML::Node& map, std::string_view key, const std::string& path,
                      bool non_empty, google::protobuf::RepeatedPtrField<std::string>* out);
  Status ReadIndices(const YAML::Node& map, std::string_view key, const std::string& path,
                     const char* unit, google::protobuf::RepeatedField<int32_t>* out);
  Status ReadPosition(const YAML::Node& node, const std::string& path, Positions* out);
  Status ReadPositionList(const YAML::Node& map, const std::string& path,
                          google::protobuf::RepeatedPtrField<Positions>* out);
  StatusOr<const Stage*> EarlierStage(const std::string& name, const std::string& path,
                                      Stage::KindCase kind) const;
  Status ReadDirectionRef(const YAML::Node& node, const std::string& path, DirectionRef* out);
  Status ReadDirectionMap(const YAML::Node& node, const std::string& path, DirectionRef* out);

  // --- stages
  Status ReadStage(const YAML::Node& node, const std::string& path, Stage* out);
  Status ReadStageKind(const YAML::Node& node, const std::string& path, Stage* out);
  Status ReadExtract(const YAML::Node& node, const std::string& path,
                     v1::ExtractDirectionsStage* out);
  Status ReadSelect(const YAML::Node& node, const std::string& path, v1::SelectDirectionStage* out);
  Status ReadKnockout(const YAML::Node& node, const std::string& path, v1::KnockoutSweepStage* out);
  Status ReadTarget(const YAML::Node& node, const std::string& path, Target* out);
  Status ReadNeuronSelection(const YAML::Node& node, const std::string& path, Target* out);
  // A knockout target whose units an earlier attribution_screen chose (`from`, top_k, random).
  Status ReadScreenedTarget(const YAML::Node& node, const std::string& path, Target* out);
  Status ReadScreen(const YAML::Node& node, const std::string& path,
                    v1::AttributionScreenStage* out);
  Status ReadScreenUnit(const YAML::Node& node, const std::string& path, Target* out);
  Status ReadLatentTarget(const YAML::Node& node, const std::string& path, Target* out);
  Status ReadLatentSelection(const YAML::Node& node, const std::string& path,
                             v1::LatentSelection* out);
  Status ReadBackups(const YAML::Node& node, const std::string& path, v1::BackupsSpec* out);
  Status ReadSaes(const YAML::Node& node, const std::string& path);
  Status ReadSae(const YAML::Node& node, const std::string& path, v1::SaeRef* out);
  Status ReadAblation(const YAML::Node& node, const std::string& path, Ablation* out);
  Status CheckAblationFits(const v1::KnockoutSweepStage& sweep, const std::string& path) const;
  Status CheckOneReferenceSet(const v1::KnockoutSweepStage& sweep, const std::string& path) const;
  Status RequireDirectionLayer(const DirectionRef& ref, const std::string& path,
                               const char* user) const;
  Status ReadGenerate(const YAML::Node& node, const std::string& path, v1::GenerateStage* out);
  Status ReadCondition(const YAML::Node& node, const std::string& path,
                       const v1::GenerateStage& generate, GenerateCondition* out);
  Status ReadOrthogonalize(const YAML::Node& node, const std::string& path,
                           v1::OrthogonalizeStage* out);

  ParsedSpec* parsed_;
  v1::SweepSpec& spec_;
  std::vector<std::string> all_stage_names_;  // every stage in the file, to explain forward refs
};

// ------------------------------------------------------------------------------------------
// The templated readers, here so that every file of the parser can instantiate them.

template <typename T>
const char* Expected() {
  if constexpr (std::is_same_v<T, std::string>) return "expected a string";
  if constexpr (std::is_same_v<T, bool>) return "expected true or false";
  if constexpr (std::is_same_v<T, double>) return "expected a number";
  return "expected an integer";
}

template <typename T>
Status SpecParser::ReadScalar(const YAML::Node& map, std::string_view key, const std::string& path,
                              bool required, T* out) {
  const std::string field = Join(path, key);
  const YAML::Node node = map[std::string(key)];
  if (!node.IsDefined()) return required ? Fail(field, "missing required field") : Status::Ok();
  T value{};
  if (!node.IsScalar() || !YAML::convert<T>::decode(node, value)) {
    return Fail(field, Expected<T>());
  }
  if constexpr (std::is_same_v<T, double>) {
    if (!std::isfinite(value)) return Fail(field, "expected a finite number");
  }
  *out = value;
  return Status::Ok();
}

template <typename Enum>
Status SpecParser::ReadEnum(const YAML::Node& node, const std::string& path,
                            const NameTable<Enum>& table, const char* what, Enum* out) {
  if (node.IsScalar()) {
    for (const auto& [name, value] : table) {
      if (node.Scalar() == name) {
        *out = value;
        return Status::Ok();
      }
    }
  }
  const std::string got = node.IsScalar() ? Quoted(node.Scalar()) + " is not a known " + what
                                          : std::string("expected a ") + what;
  return Fail(path, got + " (expected one of: " + Choices(table) + ")");
}

}  // namespace knockout::experiments::spec_internal
