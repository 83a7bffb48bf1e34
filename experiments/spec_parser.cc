// SpecParser's generic readers (maps, scalars, counts, enums, lists), the spec's top-level
// sections (name, model, prompt sets, metrics) and its positions and direction references
// (spec_parser.h). The stages are read in spec_stages.cc.
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "experiments/spec_parser.h"
#include "formats/positions.h"
#include "proto/positions.h"

namespace knockout::experiments::spec_internal {

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
                              {"name", "seed", "model", "prompt_sets", "saes", "metrics",
                               "shard_trials", "shard_prompts", "stages"},
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
  if (root["saes"].IsDefined()) KO_RETURN_IF_ERROR(ReadSaes(root["saes"], "saes"));
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

// `saes: {HOOK: PATH, ...}`, or a list of `{hook, path}` maps or bare paths (the hook then
// comes from the file: experiments/spec_inputs fills it in).
Status SpecParser::ReadSaes(const YAML::Node& node, const std::string& path) {
  if (node.IsMap()) {
    for (const auto& entry : node) {
      if (!entry.first.IsScalar()) return Fail(path, "map keys must be hook names");
      const std::string at = Join(path, entry.first.Scalar());
      Record(at, entry.first);
      v1::SaeRef* sae = spec_.add_saes();
      sae->set_hook(entry.first.Scalar());
      if (!entry.second.IsScalar() || entry.second.Scalar().empty()) {
        return Fail(at, "expected the SAE's path (a SAELens/sparsify directory or params.npz)");
      }
      sae->set_path(entry.second.Scalar());
      KO_RETURN_IF_ERROR(ReadSae(YAML::Node(), at, sae));
    }
    return Status::Ok();
  }
  return ForEach(node, path, true, [&](const YAML::Node& item, const std::string& at) {
    v1::SaeRef* sae = spec_.add_saes();
    if (item.IsScalar()) {
      sae->set_path(item.Scalar());
    } else {
      KO_RETURN_IF_ERROR(CheckMap(item, at, {"hook", "path"}, "an SAE: a path or {hook, path}"));
      KO_RETURN_IF_ERROR(ReadString(item, "path", at, true, sae->mutable_path()));
      KO_RETURN_IF_ERROR(ReadString(item, "hook", at, false, sae->mutable_hook()));
    }
    if (sae->path().empty()) return Fail(at, "expected a non-empty path");
    return ReadSae(item, at, sae);
  });
}

// Checks one SAE entry's hook (when given) and that no two entries read the same hook.
Status SpecParser::ReadSae(const YAML::Node& /*node*/, const std::string& path, v1::SaeRef* out) {
  if (out->hook().empty()) return Status::Ok();
  int layer = 0;
  std::string suffix;
  if (!SplitSaeHook(out->hook(), &layer, &suffix)) {
    std::string suffixes;
    for (std::string_view s : kSaeHookSuffixes) suffixes += (suffixes.empty() ? "" : ", ") + std::string(s);
    return Fail(path, Quoted(out->hook()) + ": expected a hook blocks.L.SUFFIX with SUFFIX one of " +
                          suffixes);
  }
  for (const v1::SaeRef& other : spec_.saes()) {
    if (&other != out && other.hook() == out->hook()) {
      return Fail(path, "two SAEs read " + out->hook());
    }
  }
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

}  // namespace knockout::experiments::spec_internal
