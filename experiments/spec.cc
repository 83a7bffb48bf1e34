#include "experiments/spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string_view>
#include <utility>
#include <vector>

#include "formats/positions.h"
#include "formats/prompt_set.h"
#include "proto/positions.h"

namespace knockout::experiments {
namespace {

namespace fs = std::filesystem;
using v1::Ablation;
using v1::DirectionRef;
using v1::GenerateCondition;
using v1::Positions;
using v1::Stage;
using v1::Target;

template <typename Enum>
using NameTable = std::vector<std::pair<std::string_view, Enum>>;

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
// The spec language writes post_inst[-k] bare, also inside flow lists and maps
// ("[post_inst[-2], post_inst[-1]]", as science.md and the demo spec do), where YAML would read
// the '[' as the start of a nested list. Quoting each such token before parsing keeps that
// notation; lines do not move, so error lines still match the file. Quoted strings and comments
// are left alone (block scalars are not recognised; a chat template holding the bare token
// would gain quotes).

bool StartsToken(const std::string& text, size_t i) {
  return i == 0 || std::string_view(" \t\n[{,").find(text[i - 1]) != std::string_view::npos;
}

// Length of a bare post_inst[N] token at `i` (0 if none): "post_inst[", an optional sign,
// digits, "]", then the end of a YAML token.
size_t PostInstTokenLength(const std::string& text, size_t i) {
  constexpr std::string_view kPrefix = "post_inst[";
  if (!StartsToken(text, i) || text.compare(i, kPrefix.size(), kPrefix) != 0) return 0;
  size_t j = i + kPrefix.size();
  if (j < text.size() && (text[j] == '-' || text[j] == '+')) ++j;
  const size_t digits = j;
  while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
  if (j == digits || j >= text.size() || text[j] != ']') return 0;
  ++j;
  if (j < text.size() && std::string_view(" \t\r\n,]}#").find(text[j]) == std::string_view::npos) {
    return 0;
  }
  return j - i;
}

std::string QuotePostInstTokens(const std::string& text) {
  std::string out;
  out.reserve(text.size() + 64);
  char quote = 0;  // the open quote character, if inside a quoted scalar
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quote == '"' && c == '\\' && i + 1 < text.size()) {
      out += c;
      out += text[++i];
      continue;
    }
    if (quote != 0) {
      if (c == quote) quote = 0;  // '' inside single quotes reopens at once: same result
      out += c;
      continue;
    }
    if (c == '#' && (i == 0 || std::isspace(static_cast<unsigned char>(text[i - 1])))) {
      const size_t end = std::min(text.find('\n', i), text.size());
      out.append(text, i, end - i);
      i = end - 1;
      continue;
    }
    if ((c == '"' || c == '\'') && StartsToken(text, i)) quote = c;
    if (const size_t n = PostInstTokenLength(text, i); n > 0) {
      out += '"' + text.substr(i, n) + '"';
      i += n - 1;
      continue;
    }
    out += c;
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Name tables of the enums a spec spells out.

const NameTable<Target::Kind>& TargetKinds() {
  static const auto* table = new NameTable<Target::Kind>{{"direction", Target::DIRECTION},
                                                         {"heads", Target::HEADS},
                                                         {"neurons", Target::NEURONS},
                                                         {"attn_out", Target::ATTN_OUT},
                                                         {"mlp_out", Target::MLP_OUT}};
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
                                    {"add", Ablation::ADD}};
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

constexpr std::array<std::string_view, 5> kStageKinds = {
    "extract_directions", "select_direction", "knockout_sweep", "generate", "orthogonalize"};

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
    case Stage::KIND_NOT_SET:
      break;
  }
  return "unspecified";
}

bool IsValidDevice(const std::string& device) {
  if (device == "cpu" || device == "cuda") return true;
  const std::string_view prefix = "cuda:";
  return device.size() > prefix.size() && device.compare(0, prefix.size(), prefix) == 0 &&
         std::all_of(device.begin() + prefix.size(), device.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

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

Status SpecParser::CheckMap(const YAML::Node& node, const std::string& path,
                            std::initializer_list<std::string_view> keys, const char* what) {
  if (!node.IsMap()) return Fail(path, std::string("expected ") + what);
  std::vector<std::string> seen;
  for (const auto& entry : node) {
    const YAML::Node& key = entry.first;
    if (!key.IsScalar()) return Fail(path, "map keys must be plain names");
    const std::string& name = key.Scalar();
    const std::string field = Join(path, name);
    Record(field, key);
    if (std::find(keys.begin(), keys.end(), name) == keys.end()) {
      std::string allowed;
      for (std::string_view k : keys) allowed += (allowed.empty() ? "" : ", ") + std::string(k);
      return Fail(field, "unknown key (expected one of: " + allowed + ")");
    }
    if (std::find(seen.begin(), seen.end(), name) != seen.end()) {
      return Fail(field, "duplicate key");
    }
    seen.push_back(name);
  }
  return Status::Ok();
}

Status SpecParser::ForEach(
    const YAML::Node& node, const std::string& path, bool non_empty,
    const std::function<Status(const YAML::Node&, const std::string&)>& read) {
  if (!node.IsSequence()) return Fail(path, "expected a list");
  if (non_empty && node.size() == 0) return Fail(path, "expected a non-empty list");
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string item = At(path, i);
    Record(item, node[i]);
    KO_RETURN_IF_ERROR(read(node[i], item));
  }
  return Status::Ok();
}

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

Status SpecParser::ReadInt(const YAML::Node& map, std::string_view key, const std::string& path,
                           int64_t min, int64_t max, int64_t* out) {
  if (!map[std::string(key)].IsDefined()) return Status::Ok();  // keeps the default
  int64_t value = 0;
  KO_RETURN_IF_ERROR(ReadScalar(map, key, path, true, &value));
  if (value < min || value > max) {
    return Fail(Join(path, key), std::to_string(value) + " is out of range [" +
                                     std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  *out = value;
  return Status::Ok();
}

// An optional positive count; absent: `default_value`.
StatusOr<uint32_t> SpecParser::ReadCount(const YAML::Node& map, std::string_view key,
                                         const std::string& path, uint32_t default_value) {
  int64_t value = default_value;
  KO_RETURN_IF_ERROR(ReadInt(map, key, path, 1, std::numeric_limits<int32_t>::max(), &value));
  return static_cast<uint32_t>(value);
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

Status SpecParser::ReadStrings(const YAML::Node& map, std::string_view key, const std::string& path,
                               google::protobuf::RepeatedPtrField<std::string>* out) {
  const YAML::Node node = map[std::string(key)];
  if (!node.IsDefined()) return Status::Ok();
  out->Clear();
  return ForEach(node, Join(path, key), true, [&](const YAML::Node& item, const std::string& at) {
    if (!item.IsScalar() || item.Scalar().empty()) return Fail(at, "expected a non-empty string");
    out->Add(std::string(item.Scalar()));
    return Status::Ok();
  });
}

// ------------------------------------------------------------------------------------------
// Top level, model, prompt sets, metrics

Status SpecParser::Parse(const YAML::Node& root) {
  Record("", root);
  KO_RETURN_IF_ERROR(CheckMap(root, "",
                              {"name", "seed", "model", "prompt_sets", "metrics", "shard_trials",
                               "shard_prompts", "stages"},
                              "a map of spec fields at the top level"));
  KO_RETURN_IF_ERROR(ReadString(root, "name", "", true, spec_.mutable_name()));
  if (!IsName(spec_.name(), true)) return Fail("name", "expected letters, digits, '_', '-', '.'");
  int64_t seed = 42;
  KO_RETURN_IF_ERROR(ReadInt(root, "seed", "", 0, std::numeric_limits<int64_t>::max(), &seed));
  spec_.set_seed(static_cast<uint64_t>(seed));
  if (!root["model"].IsDefined()) return Fail("model", "missing required field");
  KO_RETURN_IF_ERROR(ReadModel(root["model"], "model"));
  if (root["prompt_sets"].IsDefined()) {
    KO_RETURN_IF_ERROR(ReadPromptSets(root["prompt_sets"], "prompt_sets"));
  }
  KO_RETURN_IF_ERROR(ReadMetrics(root["metrics"], "metrics"));
  KO_ASSIGN_OR_RETURN(const uint32_t shard_trials, ReadCount(root, "shard_trials", "", 64));
  KO_ASSIGN_OR_RETURN(const uint32_t shard_prompts, ReadCount(root, "shard_prompts", "", 64));
  spec_.set_shard_trials(shard_trials);
  spec_.set_shard_prompts(shard_prompts);

  const YAML::Node stages = root["stages"];
  if (!stages.IsDefined()) return Fail("stages", "missing required field");
  if (stages.IsSequence()) {
    for (const auto& stage : stages) {
      if (stage.IsMap() && stage["name"].IsScalar())
        all_stage_names_.push_back(stage["name"].Scalar());
    }
  }
  return ForEach(stages, "stages", true, [&](const YAML::Node& node, const std::string& at) {
    return ReadStage(node, at, spec_.add_stages());
  });
}

Status SpecParser::ReadModel(const YAML::Node& node, const std::string& path) {
  KO_RETURN_IF_ERROR(CheckMap(node, path, {"path", "dtype", "device", "chat_template"}));
  v1::ModelRef& model = *spec_.mutable_model();
  KO_RETURN_IF_ERROR(ReadString(node, "path", path, true, model.mutable_path()));
  if (model.path().empty()) return Fail(Join(path, "path"), "expected a non-empty path");
  if (node["dtype"].IsDefined()) {
    std::string_view dtype;
    KO_RETURN_IF_ERROR(ReadEnum(node["dtype"], Join(path, "dtype"), Dtypes(), "dtype", &dtype));
    model.set_dtype(std::string(dtype));
  } else {
    model.set_dtype("float32");
  }
  model.set_device("cpu");
  KO_RETURN_IF_ERROR(ReadString(node, "device", path, false, model.mutable_device()));
  if (!IsValidDevice(model.device())) {
    return Fail(Join(path, "device"), Quoted(model.device()) + ": expected cpu, cuda or cuda:N");
  }
  KO_RETURN_IF_ERROR(ReadString(node, "chat_template", path, false, model.mutable_chat_template()));
  if (node["chat_template"].IsDefined() &&
      model.chat_template().find("{instruction}") == std::string::npos) {
    return Fail(Join(path, "chat_template"), "the template has no {instruction} slot");
  }
  return Status::Ok();
}

Status SpecParser::ReadPromptSets(const YAML::Node& node, const std::string& path) {
  if (!node.IsMap()) return Fail(path, "expected a map from prompt set names to files");
  for (const auto& entry : node) {
    if (!entry.first.IsScalar()) return Fail(path, "map keys must be plain names");
    const std::string name = entry.first.Scalar();
    const std::string at = Join(path, name);
    Record(at, entry.first);
    if (!IsName(name, false)) return Fail(at, "expected a name of letters, digits, '_', '-'");
    for (const auto& earlier : spec_.prompt_sets()) {
      if (earlier.name() == name) return Fail(at, "duplicate key");
    }
    KO_RETURN_IF_ERROR(ReadPromptSet(name, entry.second, at));
  }
  return Status::Ok();
}

// `NAME: {path, limit, field, csv_column}` or the shorthand `NAME: path`.
Status SpecParser::ReadPromptSet(const std::string& name, const YAML::Node& node,
                                 const std::string& path) {
  v1::PromptSetRef& set = *spec_.add_prompt_sets();
  set.set_name(name);
  if (node.IsScalar()) {
    Record(Join(path, "path"), node);
    set.set_path(node.Scalar());
  } else {
    KO_RETURN_IF_ERROR(CheckMap(node, path, {"path", "limit", "field", "csv_column"},
                                "a file path or a map {path, limit, field, csv_column}"));
    KO_RETURN_IF_ERROR(ReadString(node, "path", path, true, set.mutable_path()));
    int64_t limit = 0;
    KO_RETURN_IF_ERROR(
        ReadInt(node, "limit", path, 0, std::numeric_limits<int32_t>::max(), &limit));
    set.set_limit(static_cast<uint32_t>(limit));
    KO_RETURN_IF_ERROR(ReadString(node, "field", path, false, set.mutable_field()));
    KO_RETURN_IF_ERROR(ReadString(node, "csv_column", path, false, set.mutable_csv_column()));
  }
  if (set.path().empty()) return Fail(Join(path, "path"), "expected a non-empty path");
  return Status::Ok();
}

Status SpecParser::ReadMetrics(const YAML::Node& node, const std::string& path) {
  v1::MetricsSpec& metrics = *spec_.mutable_metrics();
  metrics.add_refusal_tokens("I");  // the opening of most refusals ("I'm sorry", "I cannot")
  if (!node.IsDefined()) return Status::Ok();
  KO_RETURN_IF_ERROR(
      CheckMap(node, path, {"refusal_tokens", "positive_tokens", "negative_tokens", "text_set"}));
  KO_RETURN_IF_ERROR(ReadStrings(node, "refusal_tokens", path, metrics.mutable_refusal_tokens()));
  KO_RETURN_IF_ERROR(ReadStrings(node, "positive_tokens", path, metrics.mutable_positive_tokens()));
  KO_RETURN_IF_ERROR(ReadStrings(node, "negative_tokens", path, metrics.mutable_negative_tokens()));
  // A logit difference needs both sides.
  if (metrics.positive_tokens().empty() != metrics.negative_tokens().empty()) {
    const char* missing = metrics.positive_tokens().empty() ? "positive_tokens" : "negative_tokens";
    return Fail(Join(path, missing), "missing: positive_tokens and negative_tokens go together");
  }
  return ReadSetName(node, "text_set", path, false, metrics.mutable_text_set());
}

Status SpecParser::ReadSetName(const YAML::Node& map, std::string_view key, const std::string& path,
                               bool required, std::string* out) {
  KO_RETURN_IF_ERROR(ReadString(map, key, path, required, out));
  if (!map[std::string(key)].IsDefined()) return Status::Ok();
  for (const auto& set : spec_.prompt_sets()) {
    if (set.name() == *out) return Status::Ok();
  }
  return Fail(Join(path, key), "unknown prompt set " + Quoted(*out) + " (not in prompt_sets)");
}

Status SpecParser::ReadSetNames(const YAML::Node& map, std::string_view key,
                                const std::string& path, bool non_empty,
                                google::protobuf::RepeatedPtrField<std::string>* out) {
  const std::string field = Join(path, key);
  const YAML::Node node = map[std::string(key)];
  if (!node.IsDefined()) return non_empty ? Fail(field, "missing required field") : Status::Ok();
  return ForEach(node, field, non_empty, [&](const YAML::Node& item, const std::string& at) {
    if (!item.IsScalar()) return Fail(at, "expected a prompt set name");
    for (const auto& set : spec_.prompt_sets()) {
      if (set.name() == item.Scalar()) {
        out->Add(std::string(item.Scalar()));
        return Status::Ok();
      }
    }
    return Fail(at, "unknown prompt set " + Quoted(item.Scalar()) + " (not in prompt_sets)");
  });
}

// ------------------------------------------------------------------------------------------
// Layers, units, positions, direction refs

// `"all"` (an empty list in the proto) or a list of distinct non-negative integers.
Status SpecParser::ReadIndices(const YAML::Node& map, std::string_view key, const std::string& path,
                               const char* unit, google::protobuf::RepeatedField<int32_t>* out) {
  const std::string field = Join(path, key);
  const YAML::Node node = map[std::string(key)];
  if (!node.IsDefined() || (node.IsScalar() && node.Scalar() == "all")) return Status::Ok();
  const std::string expected = "expected a list of integers or \"all\"";
  if (!node.IsSequence()) return Fail(field, expected);
  if (node.size() == 0)
    return Fail(field, "empty list (write \"all\" for every " + std::string(unit) + ")");
  for (size_t i = 0; i < node.size(); ++i) {
    Record(At(field, i), node[i]);
    int64_t value = 0;
    if (!node[i].IsScalar() || !YAML::convert<int64_t>::decode(node[i], value)) {
      return Fail(field, expected);
    }
    if (value < 0 || value > std::numeric_limits<int32_t>::max()) {
      return Fail(At(field, i), std::string(unit) + " " + std::to_string(value) + " out of range");
    }
    if (std::find(out->begin(), out->end(), value) != out->end()) {
      return Fail(At(field, i), std::string(unit) + " " + std::to_string(value) + " listed twice");
    }
    out->Add(static_cast<int32_t>(value));
  }
  return Status::Ok();
}

// A position selector: its text, or a YAML list of indices (`[3, -1]` written bare).
Status SpecParser::ReadPosition(const YAML::Node& node, const std::string& path, Positions* out) {
  if (node.IsSequence()) {
    std::string text = "[";
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar()) return Fail(path, "expected a list of integer positions");
      text += (i == 0 ? "" : ",") + node[i].Scalar();
    }
    StatusOr<formats::Positions> positions = formats::ParsePositions(text + "]");
    if (!positions.ok()) return Fail(path, positions.status().message());
    *out = ToProto(*positions);
    return Status::Ok();
  }
  if (!node.IsScalar()) return Fail(path, "expected a position (e.g. inst_last, post_inst[-1])");
  StatusOr<formats::Positions> positions = formats::ParsePositions(node.Scalar());
  if (!positions.ok()) return Fail(path, positions.status().message());
  *out = ToProto(*positions);
  return Status::Ok();
}

Status SpecParser::ReadPositionList(const YAML::Node& map, const std::string& path,
                                    google::protobuf::RepeatedPtrField<Positions>* out) {
  const std::string field = Join(path, "positions");
  const YAML::Node node = map["positions"];
  if (!node.IsDefined()) return Fail(field, "missing required field");
  return ForEach(node, field, true, [&](const YAML::Node& item, const std::string& at) {
    Positions positions;
    KO_RETURN_IF_ERROR(ReadPosition(item, at, &positions));
    for (const auto& earlier : *out) {
      if (PositionsName(earlier) == PositionsName(positions)) {
        return Fail(at, "position " + PositionsName(positions) + " listed twice");
      }
    }
    *out->Add() = positions;
    return Status::Ok();
  });
}

// The stage named `name` among those parsed so far, if it has `kind`; the error says whether it
// comes later, has another kind or does not exist.
StatusOr<const Stage*> SpecParser::EarlierStage(const std::string& name, const std::string& path,
                                                Stage::KindCase kind) const {
  const std::string want = "an earlier " + std::string(StageKindName(kind)) + " stage";
  // The last stage is the one being parsed: it cannot refer to itself.
  for (int i = 0; i + 1 < spec_.stages_size(); ++i) {
    const Stage& stage = spec_.stages(i);
    if (stage.name() != name) continue;
    if (stage.kind_case() == kind) return &stage;
    return Fail(path, "stage " + Quoted(name) + " has kind " +
                          std::string(StageKindName(stage.kind_case())) + " (expected " + want +
                          ")");
  }
  if (std::find(all_stage_names_.begin(), all_stage_names_.end(), name) != all_stage_names_.end()) {
    return Fail(path,
                "stage " + Quoted(name) + " does not come before this one (expected " + want + ")");
  }
  return Fail(path, "no stage named " + Quoted(name) + " (expected " + want + ")");
}

// `STAGE.best` or `{stage: STAGE, layer: L, position: POS}`.
Status SpecParser::ReadDirectionRef(const YAML::Node& node, const std::string& path,
                                    DirectionRef* out) {
  constexpr std::string_view kBest = ".best";
  const char* expected = "expected \"STAGE.best\" or a map {stage, layer, position}";
  if (node.IsMap()) return ReadDirectionMap(node, path, out);
  if (!node.IsScalar()) return Fail(path, expected);
  const std::string& text = node.Scalar();
  if (text.size() <= kBest.size() ||
      text.compare(text.size() - kBest.size(), kBest.size(), kBest) != 0) {
    return Fail(path, Quoted(text) + ": " + expected);
  }
  const std::string stage = text.substr(0, text.size() - kBest.size());
  KO_RETURN_IF_ERROR(EarlierStage(stage, path, Stage::kSelectDirection).status());
  out->set_stage(stage);
  out->set_best(true);
  out->set_layer(-1);
  return Status::Ok();
}

Status SpecParser::ReadDirectionMap(const YAML::Node& node, const std::string& path,
                                    DirectionRef* out) {
  KO_RETURN_IF_ERROR(CheckMap(node, path, {"stage", "layer", "position"}));
  KO_RETURN_IF_ERROR(ReadString(node, "stage", path, true, out->mutable_stage()));
  KO_ASSIGN_OR_RETURN(const Stage* stage,
                      EarlierStage(out->stage(), Join(path, "stage"), Stage::kExtractDirections));
  int64_t layer = -1;
  KO_RETURN_IF_ERROR(ReadInt(node, "layer", path, -1, std::numeric_limits<int32_t>::max(), &layer));
  const auto& layers = stage->extract_directions().layers();
  if (layer >= 0 && !layers.empty() &&
      std::find(layers.begin(), layers.end(), layer) == layers.end()) {
    return Fail(Join(path, "layer"), "stage " + Quoted(out->stage()) +
                                         " extracts no direction at layer " +
                                         std::to_string(layer));
  }
  out->set_layer(static_cast<int32_t>(layer));
  if (!node["position"].IsDefined()) return Fail(Join(path, "position"), "missing required field");
  KO_RETURN_IF_ERROR(
      ReadPosition(node["position"], Join(path, "position"), out->mutable_position()));
  std::string extracted;
  for (const auto& positions : stage->extract_directions().positions()) {
    if (PositionsName(positions) == PositionsName(out->position())) return Status::Ok();
    extracted += (extracted.empty() ? "" : ", ") + PositionsName(positions);
  }
  return Fail(Join(path, "position"),
              "stage " + Quoted(out->stage()) + " extracts no direction at " +
                  PositionsName(out->position()) + " (it has " + extracted + ")");
}

// ------------------------------------------------------------------------------------------
// Stages. A kind's fields are written under the kind's key but named as the stage's own
// ("stages[2].targets"), which is how the error messages in spec.h read.

Status SpecParser::ReadStage(const YAML::Node& node, const std::string& path, Stage* out) {
  KO_RETURN_IF_ERROR(CheckMap(node, path,
                              {"name", "shard_trials", "shard_prompts", kStageKinds[0],
                               kStageKinds[1], kStageKinds[2], kStageKinds[3], kStageKinds[4]},
                              "a stage: a map {name, <kind>: {...}}"));
  KO_RETURN_IF_ERROR(ReadString(node, "name", path, true, out->mutable_name()));
  const std::string name_path = Join(path, "name");
  if (!IsName(out->name(), false)) return Fail(name_path, "expected letters, digits, '_', '-'");
  for (int i = 0; i + 1 < spec_.stages_size(); ++i) {
    if (spec_.stages(i).name() == out->name()) {
      return Fail(name_path, "duplicate stage name " + Quoted(out->name()) + " (also stages[" +
                                 std::to_string(i) + "])");
    }
  }
  int64_t trials = 0, prompts = 0;  // 0: the sweep's
  KO_RETURN_IF_ERROR(
      ReadInt(node, "shard_trials", path, 1, std::numeric_limits<int32_t>::max(), &trials));
  KO_RETURN_IF_ERROR(
      ReadInt(node, "shard_prompts", path, 1, std::numeric_limits<int32_t>::max(), &prompts));
  out->set_shard_trials(static_cast<uint32_t>(trials));
  out->set_shard_prompts(static_cast<uint32_t>(prompts));
  return ReadStageKind(node, path, out);
}

Status SpecParser::ReadStageKind(const YAML::Node& node, const std::string& path, Stage* out) {
  std::string_view kind;
  for (std::string_view candidate : kStageKinds) {
    if (!node[std::string(candidate)].IsDefined()) continue;
    if (!kind.empty()) {
      return Fail(Join(path, candidate),
                  "a stage has exactly one kind; this one is already " + std::string(kind));
    }
    kind = candidate;
  }
  if (kind.empty()) {
    return Fail(path,
                "the stage has no kind (expected one of: extract_directions, "
                "select_direction, knockout_sweep, generate, orthogonalize)");
  }
  const YAML::Node body = node[std::string(kind)];
  if (kind == kStageKinds[0]) return ReadExtract(body, path, out->mutable_extract_directions());
  if (kind == kStageKinds[1]) return ReadSelect(body, path, out->mutable_select_direction());
  if (kind == kStageKinds[2]) return ReadKnockout(body, path, out->mutable_knockout_sweep());
  if (kind == kStageKinds[3]) return ReadGenerate(body, path, out->mutable_generate());
  return ReadOrthogonalize(body, path, out->mutable_orthogonalize());
}

Status SpecParser::ReadExtract(const YAML::Node& node, const std::string& path,
                               v1::ExtractDirectionsStage* out) {
  if (!node.IsMap()) return Fail(Join(path, kStageKinds[0]), "expected a map");
  KO_RETURN_IF_ERROR(CheckMap(node, path, {"positive", "negative", "layers", "positions", "hook"}));
  KO_RETURN_IF_ERROR(ReadSetName(node, "positive", path, true, out->mutable_positive()));
  KO_RETURN_IF_ERROR(ReadSetName(node, "negative", path, true, out->mutable_negative()));
  KO_RETURN_IF_ERROR(ReadIndices(node, "layers", path, "layer", out->mutable_layers()));
  KO_RETURN_IF_ERROR(ReadPositionList(node, path, out->mutable_positions()));
  out->set_hook("resid_pre");
  KO_RETURN_IF_ERROR(ReadString(node, "hook", path, false, out->mutable_hook()));
  if (out->hook() != "resid_pre" && out->hook() != "resid_mid" && out->hook() != "resid_post") {
    return Fail(Join(path, "hook"),
                Quoted(out->hook()) + ": expected resid_pre, resid_mid or resid_post");
  }
  return Status::Ok();
}

Status SpecParser::ReadSelect(const YAML::Node& node, const std::string& path,
                              v1::SelectDirectionStage* out) {
  if (!node.IsMap()) return Fail(Join(path, kStageKinds[1]), "expected a map");
  KO_RETURN_IF_ERROR(CheckMap(
      node, path,
      {"candidates", "harmful", "harmless", "max_kl", "max_layer_fraction", "min_induce"}));
  KO_RETURN_IF_ERROR(ReadString(node, "candidates", path, true, out->mutable_candidates()));
  KO_RETURN_IF_ERROR(
      EarlierStage(out->candidates(), Join(path, "candidates"), Stage::kExtractDirections)
          .status());
  KO_RETURN_IF_ERROR(ReadSetName(node, "harmful", path, true, out->mutable_harmful()));
  KO_RETURN_IF_ERROR(ReadSetName(node, "harmless", path, true, out->mutable_harmless()));
  // Defaults from Arditi et al. (science.md).
  KO_ASSIGN_OR_RETURN(const double max_kl, ReadOptional(node, "max_kl", path, 0.1));
  KO_ASSIGN_OR_RETURN(const double fraction, ReadOptional(node, "max_layer_fraction", path, 0.8));
  KO_ASSIGN_OR_RETURN(const double min_induce, ReadOptional(node, "min_induce", path, 0.0));
  if (max_kl <= 0) return Fail(Join(path, "max_kl"), "expected a positive number");
  if (fraction <= 0 || fraction > 1) {
    return Fail(Join(path, "max_layer_fraction"), "expected a number in (0, 1]");
  }
  out->set_max_kl(max_kl);
  out->set_max_layer_fraction(fraction);
  out->set_min_induce(min_induce);
  return Status::Ok();
}

Status SpecParser::ReadKnockout(const YAML::Node& node, const std::string& path,
                                v1::KnockoutSweepStage* out) {
  if (!node.IsMap()) return Fail(Join(path, kStageKinds[2]), "expected a map");
  KO_RETURN_IF_ERROR(
      CheckMap(node, path, {"prompt_sets", "targets", "ablations", "positions", "compensation"}));
  KO_RETURN_IF_ERROR(ReadSetNames(node, "prompt_sets", path, true, out->mutable_prompt_sets()));
  for (std::string_view key : {"targets", "ablations"}) {
    if (!node[std::string(key)].IsDefined()) return Fail(Join(path, key), "missing required field");
  }
  KO_RETURN_IF_ERROR(ForEach(node["targets"], Join(path, "targets"), true,
                             [&](const YAML::Node& item, const std::string& at) {
                               return ReadTarget(item, at, out->add_targets());
                             }));
  KO_RETURN_IF_ERROR(ForEach(node["ablations"], Join(path, "ablations"), true,
                             [&](const YAML::Node& item, const std::string& at) {
                               return ReadAblation(item, at, out->add_ablations());
                             }));
  KO_RETURN_IF_ERROR(CheckAblationFits(*out, path));
  KO_RETURN_IF_ERROR(CheckOneReferenceSet(*out, path));
  KO_RETURN_IF_ERROR(ReadPositionList(node, path, out->mutable_positions()));
  KO_ASSIGN_OR_RETURN(const bool compensation, ReadOptional(node, "compensation", path, false));
  out->set_compensation(compensation);
  return Status::Ok();
}

Status SpecParser::ReadTarget(const YAML::Node& node, const std::string& path, Target* out) {
  KO_RETURN_IF_ERROR(CheckMap(
      node, path, {"kind", "layers", "units", "direction", "top_k", "score", "score_direction"},
      "a target: a map {kind, layers, ...}"));
  if (!node["kind"].IsDefined()) return Fail(Join(path, "kind"), "missing required field");
  Target::Kind kind = Target::TARGET_UNSPECIFIED;
  KO_RETURN_IF_ERROR(
      ReadEnum(node["kind"], Join(path, "kind"), TargetKinds(), "target kind", &kind));
  out->set_kind(kind);
  KO_RETURN_IF_ERROR(ReadIndices(node, "layers", path, "layer", out->mutable_layers()));
  if (kind == Target::DIRECTION) {
    if (!node["direction"].IsDefined()) {
      return Fail(Join(path, "direction"), "missing required field (direction targets)");
    }
    KO_RETURN_IF_ERROR(
        ReadDirectionRef(node["direction"], Join(path, "direction"), out->mutable_direction()));
  } else if (node["direction"].IsDefined()) {
    return Fail(Join(path, "direction"), "applies only to direction targets");
  }
  if (node["units"].IsDefined() && kind != Target::HEADS && kind != Target::NEURONS) {
    return Fail(Join(path, "units"), "applies only to heads and neurons targets");
  }
  if (kind == Target::HEADS) {
    KO_RETURN_IF_ERROR(ReadIndices(node, "units", path, "head", out->mutable_units()));
  }
  for (std::string_view key : {"top_k", "score", "score_direction"}) {
    if (node[std::string(key)].IsDefined() && kind != Target::NEURONS) {
      return Fail(Join(path, key), "applies only to neurons targets");
    }
  }
  return kind == Target::NEURONS ? ReadNeuronSelection(node, path, out) : Status::Ok();
}

// Neurons: `units` (a list or "all"), or the top_k per layer by `score` against a direction.
Status SpecParser::ReadNeuronSelection(const YAML::Node& node, const std::string& path,
                                       Target* out) {
  const bool by_score =
      node["top_k"].IsDefined() || node["score"].IsDefined() || node["score_direction"].IsDefined();
  if (!by_score) return ReadIndices(node, "units", path, "neuron", out->mutable_units());
  if (node["units"].IsDefined()) {
    return Fail(Join(path, "units"), "give either units or top_k with score_direction, not both");
  }
  if (!node["top_k"].IsDefined()) return Fail(Join(path, "top_k"), "missing required field");
  KO_ASSIGN_OR_RETURN(const uint32_t top_k, ReadCount(node, "top_k", path, 1));
  out->set_top_k(top_k);
  out->set_score("direction_cosine");
  KO_RETURN_IF_ERROR(ReadString(node, "score", path, false, out->mutable_score()));
  if (out->score() != "direction_cosine") {
    return Fail(Join(path, "score"), Quoted(out->score()) + ": expected direction_cosine");
  }
  if (!node["score_direction"].IsDefined()) {
    return Fail(Join(path, "score_direction"), "missing required field (top_k needs it)");
  }
  return ReadDirectionRef(node["score_direction"], Join(path, "score_direction"),
                          out->mutable_score_direction());
}

// `zero` or `{kind: mean, reference_set: S}`; coefficient only for add, reference_set only for
// mean and resample.
Status SpecParser::ReadAblation(const YAML::Node& node, const std::string& path, Ablation* out) {
  Ablation::Kind kind = Ablation::ABLATION_UNSPECIFIED;
  const YAML::Node kind_node = node.IsMap() ? node["kind"] : node;
  if (kind_node.IsScalar() && kind_node.Scalar() == "mean") {
    return Fail(node.IsMap() ? Join(path, "kind") : path,
                "`mean` is ambiguous: use mean_per_position (the reference set's mean at the same "
                "position counted from the prompt's end) or mean_all_positions (one mean over all "
                "its tokens)");
  }
  if (node.IsScalar()) {
    KO_RETURN_IF_ERROR(ReadEnum(node, path, AblationKinds(), "ablation", &kind));
  } else {
    KO_RETURN_IF_ERROR(CheckMap(node, path, {"kind", "coefficient", "reference_set"},
                                "an ablation: a name or a map {kind, coefficient, reference_set}"));
    if (!node["kind"].IsDefined()) return Fail(Join(path, "kind"), "missing required field");
    KO_RETURN_IF_ERROR(
        ReadEnum(node["kind"], Join(path, "kind"), AblationKinds(), "ablation", &kind));
  }
  out->set_kind(kind);
  const bool needs_reference = kind == Ablation::MEAN || kind == Ablation::MEAN_ALL_POSITIONS ||
                               kind == Ablation::RESAMPLE;
  const std::string_view name = NameOf(AblationKinds(), kind);
  if (node.IsMap() && node["reference_set"].IsDefined() && !needs_reference) {
    return Fail(Join(path, "reference_set"), "applies only to mean and resample ablations");
  }
  if (node.IsMap() && node["coefficient"].IsDefined() && kind != Ablation::ADD) {
    return Fail(Join(path, "coefficient"), "applies only to add");
  }
  if (needs_reference) {
    if (!node.IsMap() || !node["reference_set"].IsDefined()) {
      return Fail(Join(path, "reference_set"),
                  std::string(name) + " ablation needs a reference_set (a prompt set)");
    }
    KO_RETURN_IF_ERROR(
        ReadSetName(node, "reference_set", path, true, out->mutable_reference_set()));
  }
  if (kind == Ablation::ADD) {
    double coefficient = 1.0;
    if (node.IsMap()) {
      KO_ASSIGN_OR_RETURN(coefficient, ReadOptional(node, "coefficient", path, 1.0));
    }
    out->set_coefficient(coefficient);
  }
  return Status::Ok();
}

// Directional ablation and addition act along a direction; zero, mean and resample replace
// whole activations. A sweep applies every ablation to every target, so each pair must fit.
Status SpecParser::CheckAblationFits(const v1::KnockoutSweepStage& sweep,
                                     const std::string& path) const {
  for (int a = 0; a < sweep.ablations_size(); ++a) {
    const Ablation::Kind kind = sweep.ablations(a).kind();
    const bool along_direction =
        kind == Ablation::DIRECTIONAL || kind == Ablation::PROJECT || kind == Ablation::ADD;
    const std::string name(NameOf(AblationKinds(), kind));
    for (int t = 0; t < sweep.targets_size(); ++t) {
      const Target::Kind target = sweep.targets(t).kind();
      if (along_direction == (target == Target::DIRECTION)) continue;
      const std::string at = At(Join(path, "ablations"), a);
      const std::string target_name =
          "targets[" + std::to_string(t) + "] is " + std::string(NameOf(TargetKinds(), target));
      return Fail(at, along_direction
                          ? name + " ablation applies only to direction targets; " + target_name
                          : name + " ablation does not apply to direction targets (" + target_name +
                                "; use project, directional or add)");
    }
  }
  return Status::Ok();
}

// A stage's shards carry one set of reference prompts (the engine sends one reference_set with
// every shard), so mean and resample ablations of one stage must name the same set.
Status SpecParser::CheckOneReferenceSet(const v1::KnockoutSweepStage& sweep,
                                        const std::string& path) const {
  int first = -1;
  for (int a = 0; a < sweep.ablations_size(); ++a) {
    const std::string& set = sweep.ablations(a).reference_set();
    if (set.empty()) continue;
    if (first < 0) {
      first = a;
      continue;
    }
    const std::string& earlier = sweep.ablations(first).reference_set();
    if (set != earlier) {
      return Fail(Join(At(Join(path, "ablations"), a), "reference_set"),
                  Quoted(set) + " differs from ablations[" + std::to_string(first) +
                      "]'s reference_set " + Quoted(earlier) +
                      ": a knockout_sweep stage takes one reference set (split the stage)");
    }
  }
  return Status::Ok();
}

// A direction map ref without `layer` means "the layer of the target that uses it"; generate
// conditions and orthogonalize stages have no layer of their own to stand in for it.
Status SpecParser::RequireDirectionLayer(const DirectionRef& ref, const std::string& path,
                                         const char* user) const {
  if (ref.best() || ref.layer() >= 0) return Status::Ok();
  return Fail(Join(path, "layer"), std::string("missing: ") + user +
                                       " has no layer of its own to stand in for it; give "
                                       "the direction's layer (or use STAGE.best)");
}

Status SpecParser::ReadGenerate(const YAML::Node& node, const std::string& path,
                                v1::GenerateStage* out) {
  if (!node.IsMap()) return Fail(Join(path, kStageKinds[3]), "expected a map");
  KO_RETURN_IF_ERROR(CheckMap(node, path, {"prompt_sets", "max_new_tokens", "conditions"}));
  KO_RETURN_IF_ERROR(ReadSetNames(node, "prompt_sets", path, true, out->mutable_prompt_sets()));
  KO_ASSIGN_OR_RETURN(const uint32_t max_new_tokens, ReadCount(node, "max_new_tokens", path, 64));
  out->set_max_new_tokens(max_new_tokens);
  if (!node["conditions"].IsDefined())
    return Fail(Join(path, "conditions"), "missing required field");
  return ForEach(node["conditions"], Join(path, "conditions"), true,
                 [&](const YAML::Node& item, const std::string& at) {
                   GenerateCondition condition;
                   KO_RETURN_IF_ERROR(ReadCondition(item, at, *out, &condition));
                   *out->add_conditions() = std::move(condition);
                   return Status::Ok();
                 });
}

Status SpecParser::ReadCondition(const YAML::Node& node, const std::string& path,
                                 const v1::GenerateStage& generate, GenerateCondition* out) {
  KO_RETURN_IF_ERROR(CheckMap(node, path, {"name", "kind", "direction", "coefficient", "layer"},
                              "a condition: a map {name, kind, ...}"));
  KO_RETURN_IF_ERROR(ReadString(node, "name", path, true, out->mutable_name()));
  if (!IsName(out->name(), false))
    return Fail(Join(path, "name"), "expected letters, digits, '_', '-'");
  for (const auto& earlier : generate.conditions()) {
    if (earlier.name() == out->name()) {
      return Fail(Join(path, "name"), "duplicate condition name " + Quoted(out->name()));
    }
  }
  if (!node["kind"].IsDefined()) return Fail(Join(path, "kind"), "missing required field");
  GenerateCondition::Kind kind = GenerateCondition::KIND_UNSPECIFIED;
  KO_RETURN_IF_ERROR(
      ReadEnum(node["kind"], Join(path, "kind"), ConditionKinds(), "condition kind", &kind));
  out->set_kind(kind);
  if (kind == GenerateCondition::BASELINE && node["direction"].IsDefined()) {
    return Fail(Join(path, "direction"), "a baseline condition takes no direction");
  }
  for (std::string_view key : {"coefficient", "layer"}) {
    if (kind != GenerateCondition::ADD && node[std::string(key)].IsDefined()) {
      return Fail(Join(path, key), "applies only to add conditions");
    }
  }
  if (kind == GenerateCondition::BASELINE) return Status::Ok();
  if (!node["direction"].IsDefined())
    return Fail(Join(path, "direction"), "missing required field");
  KO_RETURN_IF_ERROR(
      ReadDirectionRef(node["direction"], Join(path, "direction"), out->mutable_direction()));
  KO_RETURN_IF_ERROR(
      RequireDirectionLayer(out->direction(), Join(path, "direction"), "a generate condition"));
  if (kind != GenerateCondition::ADD) return Status::Ok();
  KO_ASSIGN_OR_RETURN(const double coefficient, ReadOptional(node, "coefficient", path, 1.0));
  out->set_coefficient(coefficient);
  int64_t layer = -1;  // the direction's own layer
  KO_RETURN_IF_ERROR(ReadInt(node, "layer", path, -1, std::numeric_limits<int32_t>::max(), &layer));
  out->set_layer(static_cast<int32_t>(layer));
  return Status::Ok();
}

Status SpecParser::ReadOrthogonalize(const YAML::Node& node, const std::string& path,
                                     v1::OrthogonalizeStage* out) {
  if (!node.IsMap()) return Fail(Join(path, kStageKinds[4]), "expected a map");
  KO_RETURN_IF_ERROR(
      CheckMap(node, path, {"direction", "output", "prompt_sets", "max_new_tokens"}));
  if (!node["direction"].IsDefined())
    return Fail(Join(path, "direction"), "missing required field");
  KO_RETURN_IF_ERROR(
      ReadDirectionRef(node["direction"], Join(path, "direction"), out->mutable_direction()));
  KO_RETURN_IF_ERROR(
      RequireDirectionLayer(out->direction(), Join(path, "direction"), "an orthogonalize stage"));
  KO_RETURN_IF_ERROR(ReadString(node, "output", path, false, out->mutable_output()));
  KO_RETURN_IF_ERROR(ReadSetNames(node, "prompt_sets", path, false, out->mutable_prompt_sets()));
  KO_ASSIGN_OR_RETURN(const uint32_t max_new_tokens, ReadCount(node, "max_new_tokens", path, 64));
  out->set_max_new_tokens(max_new_tokens);
  return Status::Ok();
}

// ------------------------------------------------------------------------------------------
// Loading and validation helpers

std::string MarkPrefix(const std::string& label, const YAML::Mark& mark) {
  if (mark.is_null()) return label + ": ";
  return label + ":" + std::to_string(mark.line + 1) + ": ";
}

// A relative path in the spec names a file next to the spec, wherever the tool runs from.
std::string ResolveAgainst(const fs::path& dir, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  return (dir / path).lexically_normal().string();
}


Status CheckIndexRange(const ParsedSpec& parsed, const std::string& field,
                       const google::protobuf::RepeatedField<int32_t>& indices, int64_t limit,
                       const char* unit, const char* what) {
  for (int32_t index : indices) {
    if (index < 0 || index >= limit) {
      return Status::InvalidArgument(parsed.Where(field) + ": " + unit + " " +
                                     std::to_string(index) + " out of range, model has " +
                                     std::to_string(limit) + " " + what);
    }
  }
  return Status::Ok();
}

Status CheckLayers(const ParsedSpec& parsed, const std::string& field,
                   const google::protobuf::RepeatedField<int32_t>& layers,
                   const ModelShape& shape) {
  return CheckIndexRange(parsed, field, layers, shape.num_layers, "layer", "layers");
}

// A single layer (-1: chosen later, always in range).
Status CheckLayer(const ParsedSpec& parsed, const std::string& field, int32_t layer,
                  const ModelShape& shape) {
  if (layer < 0) return Status::Ok();
  google::protobuf::RepeatedField<int32_t> one;
  one.Add(layer);
  return CheckLayers(parsed, field, one, shape);
}

Status CheckTarget(const ParsedSpec& parsed, const std::string& path, const Target& target,
                   const ModelShape& shape) {
  KO_RETURN_IF_ERROR(CheckLayers(parsed, Join(path, "layers"), target.layers(), shape));
  if (target.kind() == Target::HEADS) {
    KO_RETURN_IF_ERROR(CheckIndexRange(parsed, Join(path, "units"), target.units(), shape.num_heads,
                                       "head", "heads per layer"));
  }
  if (target.kind() == Target::NEURONS) {
    KO_RETURN_IF_ERROR(CheckIndexRange(parsed, Join(path, "units"), target.units(),
                                       shape.intermediate_size, "neuron", "MLP neurons per layer"));
    if (target.top_k() > shape.intermediate_size) {
      return Status::InvalidArgument(
          parsed.Where(Join(path, "top_k")) + ": top_k " + std::to_string(target.top_k()) +
          " exceeds the model's " + std::to_string(shape.intermediate_size) + " neurons per layer");
    }
  }
  KO_RETURN_IF_ERROR(
      CheckLayer(parsed, Join(path, "direction.layer"), target.direction().layer(), shape));
  return CheckLayer(parsed, Join(path, "score_direction.layer"), target.score_direction().layer(),
                    shape);
}

Status CheckStageShape(const ParsedSpec& parsed, const std::string& path, const Stage& stage,
                       const ModelShape& shape) {
  switch (stage.kind_case()) {
    case Stage::kExtractDirections:
      return CheckLayers(parsed, Join(path, "layers"), stage.extract_directions().layers(), shape);
    case Stage::kKnockoutSweep:
      for (int t = 0; t < stage.knockout_sweep().targets_size(); ++t) {
        KO_RETURN_IF_ERROR(CheckTarget(parsed, At(Join(path, "targets"), t),
                                       stage.knockout_sweep().targets(t), shape));
      }
      return Status::Ok();
    case Stage::kGenerate:
      for (int c = 0; c < stage.generate().conditions_size(); ++c) {
        const std::string at = At(Join(path, "conditions"), c);
        const GenerateCondition& condition = stage.generate().conditions(c);
        KO_RETURN_IF_ERROR(
            CheckLayer(parsed, Join(at, "direction.layer"), condition.direction().layer(), shape));
        KO_RETURN_IF_ERROR(CheckLayer(parsed, Join(at, "layer"), condition.layer(), shape));
      }
      return Status::Ok();
    case Stage::kOrthogonalize:
      return CheckLayer(parsed, Join(path, "direction.layer"),
                        stage.orthogonalize().direction().layer(), shape);
    default:
      return Status::Ok();
  }
}

Status CheckPromptSet(const ParsedSpec& parsed, const v1::PromptSetRef& set) {
  formats::PromptSetOptions options;
  if (!set.field().empty()) options.field = set.field();
  if (!set.csv_column().empty()) options.csv_column = set.csv_column();
  const std::string where = parsed.Where(Join(Join("prompt_sets", set.name()), "path"));
  if (set.inlined()) {  // read by the CLI (spec_inputs.h): no file here
    if (set.prompts_size() > 0) return Status::Ok();
    return Status::InvalidArgument(where + ": prompt set " + Quoted(set.name()) + " is empty");
  }
  StatusOr<std::vector<formats::Prompt>> prompts = formats::LoadPromptSet(set.path(), options);
  if (!prompts.ok()) return prompts.status().WithContext(where);
  if (prompts->empty()) {
    return Status::InvalidArgument(where + ": prompt set " + Quoted(set.name()) + " is empty");
  }
  return Status::Ok();
}

}  // namespace

// ------------------------------------------------------------------------------------------

std::string ParsedSpec::Where(const std::string& field) const {
  for (std::string path = field;; path = ParentPath(path)) {
    const auto it = lines.find(path);
    if (it != lines.end()) {
      return label + ":" + std::to_string(it->second) + (field.empty() ? "" : ": " + field);
    }
    if (path.empty()) break;
  }
  return field.empty() ? label : label + ": " + field;
}

StatusOr<ParsedSpec> ParseSpec(const std::string& yaml_text, const std::string& label) {
  if (Status utf8 = formats::CheckUtf8(yaml_text); !utf8.ok()) return utf8.WithContext(label);
  ParsedSpec parsed;
  parsed.label = label;
  try {
    const std::vector<YAML::Node> documents = YAML::LoadAll(QuotePostInstTokens(yaml_text));
    if (documents.empty()) return Status::InvalidArgument(label + ": empty spec");
    if (documents.size() > 1) {
      return Status::InvalidArgument(MarkPrefix(label, documents[1].Mark()) +
                                     "a spec file holds one YAML document");
    }
    KO_RETURN_IF_ERROR(SpecParser(&parsed).Parse(documents[0]));
  } catch (const YAML::Exception& e) {
    // Syntax errors, and anything else yaml-cpp throws: errors are values past this point.
    return Status::InvalidArgument(MarkPrefix(label, e.mark) + e.msg);
  } catch (const std::exception& e) {
    return Status::Internal(label + ": " + e.what());
  }
  return parsed;
}

StatusOr<ParsedSpec> LoadSpec(const std::string& path) {
  std::error_code error;
  if (!fs::is_regular_file(path, error)) {
    return Status::NotFound(path + ": no such spec file");
  }
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  if (!file.good() && !file.eof()) return Status::IOError(path + ": could not read the spec file");
  KO_ASSIGN_OR_RETURN(ParsedSpec parsed, ParseSpec(text.str(), path));
  ResolveSpecPaths(fs::path(path).parent_path().string(), &parsed.spec);
  parsed.spec.set_source(path);
  return parsed;
}

void ResolveSpecPaths(const std::string& base_dir, v1::SweepSpec* spec) {
  const fs::path dir(base_dir);
  spec->mutable_model()->set_path(ResolveAgainst(dir, spec->model().path()));
  for (auto& set : *spec->mutable_prompt_sets()) set.set_path(ResolveAgainst(dir, set.path()));
  for (auto& stage : *spec->mutable_stages()) {
    if (!stage.has_orthogonalize() || stage.orthogonalize().output().empty()) continue;
    auto* orthogonalize = stage.mutable_orthogonalize();
    orthogonalize->set_output(ResolveAgainst(dir, orthogonalize->output()));
  }
}

Status ValidateSpecFiles(const ParsedSpec& parsed, const ModelShape& shape) {
  const v1::SweepSpec& spec = parsed.spec;
  for (int i = 0; i < spec.stages_size(); ++i) {
    KO_RETURN_IF_ERROR(CheckStageShape(parsed, At("stages", i), spec.stages(i), shape));
  }
  for (const auto& set : spec.prompt_sets()) KO_RETURN_IF_ERROR(CheckPromptSet(parsed, set));
  return Status::Ok();
}

std::string DirectionRefName(const DirectionRef& ref) {
  if (ref.best()) return ref.stage() + ".best";
  const std::string layer = ref.layer() < 0 ? "*" : std::to_string(ref.layer());
  return ref.stage() + "@" + layer + "/" + PositionsName(ref.position());
}

}  // namespace knockout::experiments
