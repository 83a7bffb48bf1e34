// SpecParser's stage readers: each stage kind's fields, targets, ablations, generation
// conditions, and the checks across a stage's fields (an ablation that fits its target, one
// reference set, a direction's layer where one is needed) (spec_parser.h).
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "experiments/spec_parser.h"
#include "formats/positions.h"
#include "proto/positions.h"

namespace knockout::experiments::spec_internal {

// ------------------------------------------------------------------------------------------
// Stages. A kind's fields are written under the kind's key but named as the stage's own
// ("stages[2].targets"), which is how the error messages in spec.h read.

Status SpecParser::ReadStage(const YAML::Node& node, const std::string& path, Stage* out) {
  KO_RETURN_IF_ERROR(CheckMap(node, path,
                              {"name", "shard_trials", "shard_prompts", kStageKinds[0],
                               kStageKinds[1], kStageKinds[2], kStageKinds[3], kStageKinds[4],
                               kStageKinds[5]},
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
                "select_direction, knockout_sweep, generate, orthogonalize, attribution_screen)");
  }
  const YAML::Node body = node[std::string(kind)];
  if (kind == kStageKinds[0]) return ReadExtract(body, path, out->mutable_extract_directions());
  if (kind == kStageKinds[1]) return ReadSelect(body, path, out->mutable_select_direction());
  if (kind == kStageKinds[2]) return ReadKnockout(body, path, out->mutable_knockout_sweep());
  if (kind == kStageKinds[3]) return ReadGenerate(body, path, out->mutable_generate());
  if (kind == kStageKinds[5]) return ReadScreen(body, path, out->mutable_attribution_screen());
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
      CheckMap(node, path,
               {"prompt_sets", "targets", "ablations", "positions", "compensation", "backups"}));
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
  if (node["backups"].IsDefined()) {
    KO_RETURN_IF_ERROR(ReadBackups(node["backups"], Join(path, "backups"), out->mutable_backups()));
  }
  return Status::Ok();
}

// `backups: true` or `{top, dormant_threshold, positions, direction}` (science.md: the latents
// downstream of a knocked-out unit whose activation rises; defaults 10, 0.05, post_inst).
Status SpecParser::ReadBackups(const YAML::Node& node, const std::string& path,
                               v1::BackupsSpec* out) {
  if (spec_.saes_size() == 0) return Fail(path, "backups are SAE latents: the spec lists no saes");
  out->set_top(10);
  out->set_dormant_threshold(0.05);
  *out->mutable_positions() = ToProto(formats::Positions::PostInst());
  if (node.IsScalar()) {
    bool on = false;
    if (!YAML::convert<bool>::decode(node, on) || !on) {
      return Fail(path, "expected true or a map {top, dormant_threshold, positions, direction}");
    }
    return Status::Ok();
  }
  KO_RETURN_IF_ERROR(CheckMap(node, path, {"top", "dormant_threshold", "positions", "direction"},
                              "true or a map {top, dormant_threshold, positions, direction}"));
  KO_ASSIGN_OR_RETURN(const uint32_t top, ReadCount(node, "top", path, 10));
  out->set_top(top);
  KO_ASSIGN_OR_RETURN(const double threshold, ReadOptional(node, "dormant_threshold", path, 0.05));
  if (!(threshold >= 0.0)) return Fail(Join(path, "dormant_threshold"), "expected a number >= 0");
  out->set_dormant_threshold(threshold);
  if (node["positions"].IsDefined()) {
    KO_RETURN_IF_ERROR(
        ReadPosition(node["positions"], Join(path, "positions"), out->mutable_positions()));
  }
  if (node["direction"].IsDefined()) {
    KO_RETURN_IF_ERROR(
        ReadDirectionRef(node["direction"], Join(path, "direction"), out->mutable_direction()));
    KO_RETURN_IF_ERROR(RequireDirectionLayer(out->direction(), Join(path, "direction"),
                                             "the backups' cosine column"));
  }
  return Status::Ok();
}

Status SpecParser::ReadTarget(const YAML::Node& node, const std::string& path, Target* out) {
  KO_RETURN_IF_ERROR(CheckMap(node, path,
                              {"kind", "layers", "units", "direction", "top_k", "score",
                               "score_direction", "sae_hook", "select", "together", "role",
                               "from", "random"},
                              "a target: a map {kind, layers, ...}"));
  if (node["from"].IsDefined()) return ReadScreenedTarget(node, path, out);
  if (node["random"].IsDefined()) {
    return Fail(Join(path, "random"), "applies only to targets chosen by a screen (from: STAGE)");
  }
  if (!node["kind"].IsDefined()) return Fail(Join(path, "kind"), "missing required field");
  Target::Kind kind = Target::TARGET_UNSPECIFIED;
  KO_RETURN_IF_ERROR(
      ReadEnum(node["kind"], Join(path, "kind"), TargetKinds(), "target kind", &kind));
  out->set_kind(kind);
  KO_RETURN_IF_ERROR(ReadIndices(node, "layers", path, "layer", out->mutable_layers()));
  if (kind == Target::SAE_LATENTS) return ReadLatentTarget(node, path, out);
  for (std::string_view key : {"sae_hook", "select", "together", "role"}) {
    if (node[std::string(key)].IsDefined()) {
      return Fail(Join(path, key), "applies only to sae_latents targets");
    }
  }
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

// `{kind, from: SCREEN, top_k: K, random: N, layers, role}`: the screen's best K units of the
// kind (by its ranking, within `layers` when given) and N more drawn from the rest.
Status SpecParser::ReadScreenedTarget(const YAML::Node& node, const std::string& path,
                                      Target* out) {
  for (std::string_view key :
       {"units", "direction", "score", "score_direction", "select", "together", "sae_hook"}) {
    if (node[std::string(key)].IsDefined()) {
      return Fail(Join(path, key), "does not apply to a target chosen by a screen (from: STAGE)");
    }
  }
  Target::Kind kind = Target::TARGET_UNSPECIFIED;
  if (!node["kind"].IsDefined()) return Fail(Join(path, "kind"), "missing required field");
  KO_RETURN_IF_ERROR(ReadEnum(node["kind"], Join(path, "kind"), TargetKinds(), "target kind", &kind));
  out->set_kind(kind);
  KO_RETURN_IF_ERROR(ReadIndices(node, "layers", path, "layer", out->mutable_layers()));
  KO_RETURN_IF_ERROR(ReadString(node, "from", path, true, out->mutable_from()));
  KO_ASSIGN_OR_RETURN(const Stage* screen, EarlierStage(out->from(), Join(path, "from"),
                                                        Stage::kAttributionScreen));
  if (kind == Target::DIRECTION) {
    return Fail(Join(path, "kind"), "direction units are not chosen from a screen (list them)");
  }
  const auto& units = screen->attribution_screen().units();
  const bool screened = std::any_of(units.begin(), units.end(),
                                    [&](const Target& unit) { return unit.kind() == kind; });
  if (!screened) {
    return Fail(Join(path, "kind"), "stage " + Quoted(out->from()) + " screened no " +
                                        std::string(NameOf(TargetKinds(), kind)));
  }
  if (!node["top_k"].IsDefined()) return Fail(Join(path, "top_k"), "missing required field");
  KO_ASSIGN_OR_RETURN(const uint32_t top_k, ReadCount(node, "top_k", path, 1));
  out->set_top_k(top_k);
  int64_t random = 0;
  KO_RETURN_IF_ERROR(ReadInt(node, "random", path, 0, 1 << 20, &random));
  out->set_random(static_cast<uint32_t>(random));
  return ReadString(node, "role", path, false, out->mutable_role());
}

// attribution_screen (sweep.proto, AttributionScreenStage): prompt_sets, units, method, steps,
// ablation, positions, metric, patch, rank.
Status SpecParser::ReadScreen(const YAML::Node& node, const std::string& path,
                              v1::AttributionScreenStage* out) {
  if (!node.IsMap()) return Fail(Join(path, kStageKinds[5]), "expected a map");
  KO_RETURN_IF_ERROR(CheckMap(node, path,
                              {"prompt_sets", "units", "method", "steps", "ablation", "positions",
                               "metric", "patch", "rank"}));
  KO_RETURN_IF_ERROR(ReadSetNames(node, "prompt_sets", path, true, out->mutable_prompt_sets()));
  if (!node["units"].IsDefined()) return Fail(Join(path, "units"), "missing required field");
  KO_RETURN_IF_ERROR(ForEach(node["units"], Join(path, "units"), true,
                             [&](const YAML::Node& item, const std::string& at) {
                               return ReadScreenUnit(item, at, out->add_units());
                             }));
  out->set_method("atp");
  KO_RETURN_IF_ERROR(ReadString(node, "method", path, false, out->mutable_method()));
  const std::string& method = out->method();
  if (method != "atp" && method != "atp_star" && method != "integrated_gradients") {
    return Fail(Join(path, "method"),
                Quoted(method) + ": expected atp, atp_star or integrated_gradients");
  }
  // Read whatever the method (a spec may switch methods without deleting it); only
  // integrated_gradients uses it.
  int64_t steps = 10;
  KO_RETURN_IF_ERROR(ReadInt(node, "steps", path, 1, 4096, &steps));
  out->set_steps(static_cast<uint32_t>(steps));
  out->set_metric("refusal_score");
  KO_RETURN_IF_ERROR(ReadString(node, "metric", path, false, out->mutable_metric()));
  const std::string& metric = out->metric();
  if (metric != "refusal_score" && metric != "logit_diff" && metric != "kl") {
    return Fail(Join(path, "metric"), Quoted(metric) +
                                          ": expected refusal_score, logit_diff or kl (a "
                                          "metric with a gradient at the last position)");
  }
  if (metric == "kl" && method != "integrated_gradients") {
    return Fail(Join(path, "metric"),
                "kl has zero gradient at the clean run (it is minimal there), so a first-order "
                "screen scores every unit 0: use method integrated_gradients");
  }
  if (metric == "refusal_score" && spec_.metrics().refusal_tokens_size() == 0) {
    return Fail(Join(path, "metric"),
                "the screen has no metric to differentiate: refusal_score needs "
                "metrics.refusal_tokens");
  }
  if (metric == "logit_diff" &&
      (spec_.metrics().positive_tokens_size() == 0 || spec_.metrics().negative_tokens_size() == 0)) {
    return Fail(Join(path, "metric"),
                "logit_diff needs metrics.positive_tokens and metrics.negative_tokens");
  }
  if (node["ablation"].IsDefined()) {
    KO_RETURN_IF_ERROR(ReadAblation(node["ablation"], Join(path, "ablation"), out->mutable_ablation()));
  } else {
    out->mutable_ablation()->set_kind(Ablation::ZERO);
  }
  const Ablation::Kind ablation = out->ablation().kind();
  if (ablation != Ablation::ZERO && ablation != Ablation::MEAN_ALL_POSITIONS &&
      ablation != Ablation::PATCH) {
    return Fail(Join(path, "ablation"),
                std::string(NameOf(AblationKinds(), ablation)) +
                    ": a screen approximates zero, mean_all_positions (with a reference_set) or "
                    "patch (the patched run's value)");
  }
  const bool patched = ablation == Ablation::PATCH;
  if (patched != node["patch"].IsDefined()) {
    return Fail(Join(path, "patch"),
                patched ? "missing: the patch ablation needs `patch: {direction: DIRECTION}` (the "
                          "patched run: that direction ablated at every layer)"
                        : "applies only to ablation patch");
  }
  if (patched) {
    const YAML::Node patch = node["patch"];
    const std::string at = Join(path, "patch");
    KO_RETURN_IF_ERROR(CheckMap(patch, at, {"direction"}, "a map {direction: DIRECTION}"));
    if (!patch["direction"].IsDefined()) return Fail(Join(at, "direction"), "missing required field");
    KO_RETURN_IF_ERROR(
        ReadDirectionRef(patch["direction"], Join(at, "direction"), out->mutable_patch()));
    KO_RETURN_IF_ERROR(
        RequireDirectionLayer(out->patch(), Join(at, "direction"), "the patched run"));
  }
  KO_RETURN_IF_ERROR(ReadPositionList(node, path, out->mutable_positions()));
  out->set_rank("magnitude");
  KO_RETURN_IF_ERROR(ReadString(node, "rank", path, false, out->mutable_rank()));
  if (out->rank() != "magnitude" && out->rank() != "negative" && out->rank() != "positive") {
    return Fail(Join(path, "rank"), Quoted(out->rank()) +
                                        ": expected magnitude (|score|, the default), negative "
                                        "(most negative first) or positive");
  }
  return Status::Ok();
}

// A screen's unit: {kind: heads|neurons|attn_out|mlp_out|direction|sae_latents, layers, units,
// direction (direction), sae_hook (sae_latents)}. Every unit has a gradient path to the metric
// (each writes into the residual stream before the last position is read).
Status SpecParser::ReadScreenUnit(const YAML::Node& node, const std::string& path, Target* out) {
  KO_RETURN_IF_ERROR(CheckMap(node, path, {"kind", "layers", "units", "direction", "sae_hook"},
                              "a unit: a map {kind, layers, units, direction, sae_hook}"));
  if (!node["kind"].IsDefined()) return Fail(Join(path, "kind"), "missing required field");
  Target::Kind kind = Target::TARGET_UNSPECIFIED;
  KO_RETURN_IF_ERROR(ReadEnum(node["kind"], Join(path, "kind"), TargetKinds(), "unit kind", &kind));
  out->set_kind(kind);
  KO_RETURN_IF_ERROR(ReadIndices(node, "layers", path, "layer", out->mutable_layers()));
  if (node["units"].IsDefined() && kind != Target::HEADS && kind != Target::NEURONS &&
      kind != Target::SAE_LATENTS) {
    return Fail(Join(path, "units"), "applies only to heads, neurons and sae_latents");
  }
  KO_RETURN_IF_ERROR(ReadIndices(node, "units", path, "unit", out->mutable_units()));
  if ((kind == Target::DIRECTION) != node["direction"].IsDefined()) {
    return Fail(Join(path, "direction"), kind == Target::DIRECTION
                                             ? "missing required field (direction units)"
                                             : "applies only to direction units");
  }
  if (kind == Target::DIRECTION) {
    KO_RETURN_IF_ERROR(
        ReadDirectionRef(node["direction"], Join(path, "direction"), out->mutable_direction()));
  }
  if (node["sae_hook"].IsDefined() && kind != Target::SAE_LATENTS) {
    return Fail(Join(path, "sae_hook"), "applies only to sae_latents units");
  }
  if (kind == Target::SAE_LATENTS) {
    if (spec_.saes_size() == 0) {
      return Fail(Join(path, "kind"), "sae_latents units need SAEs: the spec lists no saes");
    }
    out->set_sae_hook("hook_resid_post");
    KO_RETURN_IF_ERROR(ReadString(node, "sae_hook", path, false, out->mutable_sae_hook()));
    if (std::find(kSaeHookSuffixes.begin(), kSaeHookSuffixes.end(), out->sae_hook()) ==
        kSaeHookSuffixes.end()) {
      return Fail(Join(path, "sae_hook"), Quoted(out->sae_hook()) + ": not a hook an SAE reads");
    }
  }
  return Status::Ok();
}

// SAE latents of each layer's SAE at blocks.L.{sae_hook}: `units` (latent indices) or `select`
// (top_k per layer by decoder cosine with a direction, by activation difference between two
// prompt sets, or both); `together` adds group trials; `role` labels the rows.
Status SpecParser::ReadLatentTarget(const YAML::Node& node, const std::string& path, Target* out) {
  for (std::string_view key : {"direction", "top_k", "score", "score_direction"}) {
    if (node[std::string(key)].IsDefined()) {
      return Fail(Join(path, key), "does not apply to sae_latents targets (use units or select)");
    }
  }
  if (spec_.saes_size() == 0) {
    return Fail(Join(path, "kind"), "sae_latents targets need SAEs: the spec lists no saes");
  }
  out->set_sae_hook("hook_resid_post");
  KO_RETURN_IF_ERROR(ReadString(node, "sae_hook", path, false, out->mutable_sae_hook()));
  if (std::find(kSaeHookSuffixes.begin(), kSaeHookSuffixes.end(), out->sae_hook()) ==
      kSaeHookSuffixes.end()) {
    std::string suffixes;
    for (std::string_view s : kSaeHookSuffixes) suffixes += (suffixes.empty() ? "" : ", ") + std::string(s);
    return Fail(Join(path, "sae_hook"), Quoted(out->sae_hook()) + ": expected one of " + suffixes);
  }
  const bool by_units = node["units"].IsDefined(), by_select = node["select"].IsDefined();
  if (by_units == by_select) {
    return Fail(Join(path, by_units ? "select" : "units"),
                by_units ? "give either units or select, not both"
                         : "missing: give units (latent indices) or select");
  }
  if (by_units) {
    if (node["units"].IsScalar() && node["units"].Scalar() == "all") {
      return Fail(Join(path, "units"), "list the latents (every latent of an SAE is too many trials)");
    }
    KO_RETURN_IF_ERROR(ReadIndices(node, "units", path, "latent", out->mutable_units()));
  } else {
    KO_RETURN_IF_ERROR(ReadLatentSelection(node["select"], Join(path, "select"), out->mutable_select()));
  }
  KO_RETURN_IF_ERROR(ReadString(node, "together", path, false, out->mutable_together()));
  static const std::array<std::string_view, 5> kTogether = {"", "layer", "all", "only_layer", "only_all"};
  if (std::find(kTogether.begin(), kTogether.end(), out->together()) == kTogether.end()) {
    return Fail(Join(path, "together"),
                Quoted(out->together()) + ": expected layer, all, only_layer or only_all");
  }
  return ReadString(node, "role", path, false, out->mutable_role());
}

Status SpecParser::ReadLatentSelection(const YAML::Node& node, const std::string& path,
                                       v1::LatentSelection* out) {
  KO_RETURN_IF_ERROR(CheckMap(node, path,
                              {"score", "top_k", "direction", "positive", "negative", "position",
                               "candidates"},
                              "a map {score, top_k, direction, positive, negative, position}"));
  KO_RETURN_IF_ERROR(ReadString(node, "score", path, true, out->mutable_score()));
  const std::string& score = out->score();
  const bool cosine = score == "decoder_cosine" || score == "cosine_and_activation";
  const bool activation = score == "activation_diff" || score == "cosine_and_activation";
  if (!cosine && !activation) {
    return Fail(Join(path, "score"), Quoted(score) +
                                         ": expected decoder_cosine, activation_diff or "
                                         "cosine_and_activation");
  }
  if (!node["top_k"].IsDefined()) return Fail(Join(path, "top_k"), "missing required field");
  KO_ASSIGN_OR_RETURN(const uint32_t top_k, ReadCount(node, "top_k", path, 1));
  out->set_top_k(top_k);
  if (cosine) {
    if (!node["direction"].IsDefined()) {
      return Fail(Join(path, "direction"), "missing required field (" + score + " needs it)");
    }
    KO_RETURN_IF_ERROR(
        ReadDirectionRef(node["direction"], Join(path, "direction"), out->mutable_direction()));
  } else if (node["direction"].IsDefined()) {
    return Fail(Join(path, "direction"), "applies only to decoder_cosine and cosine_and_activation");
  }
  for (std::string_view key : {"positive", "negative", "position"}) {
    if (!activation && node[std::string(key)].IsDefined()) {
      return Fail(Join(path, key), "applies only to activation_diff and cosine_and_activation");
    }
  }
  if (activation) {
    KO_RETURN_IF_ERROR(ReadSetName(node, "positive", path, true, out->mutable_positive()));
    KO_RETURN_IF_ERROR(ReadSetName(node, "negative", path, true, out->mutable_negative()));
    if (out->positive() == out->negative()) {
      return Fail(Join(path, "negative"), "the same set as positive");
    }
    *out->mutable_position() = ToProto(formats::Positions::InstLast());
    if (node["position"].IsDefined()) {
      KO_RETURN_IF_ERROR(ReadPosition(node["position"], Join(path, "position"), out->mutable_position()));
    }
  }
  if (node["candidates"].IsDefined() && score != "cosine_and_activation") {
    return Fail(Join(path, "candidates"), "applies only to cosine_and_activation");
  }
  KO_ASSIGN_OR_RETURN(const uint32_t candidates,
                      ReadCount(node, "candidates", path, score == "cosine_and_activation" ? 4 * top_k : 0));
  if (score == "cosine_and_activation" && candidates < top_k) {
    return Fail(Join(path, "candidates"), "fewer candidates than top_k");
  }
  out->set_candidates(candidates);
  return Status::Ok();
}

// `zero` or `{kind: mean_per_position, reference_set: S}`; coefficient only for add, reference_set only for
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
    KO_RETURN_IF_ERROR(
        CheckMap(node, path, {"kind", "coefficient", "reference_set", "value", "factor"},
                 "an ablation: a name or a map {kind, coefficient, reference_set, value, factor}"));
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
  // SAE latents: clamp to `value`, scale by `factor` (error term kept).
  for (auto [key, owner] : {std::pair<const char*, Ablation::Kind>{"value", Ablation::CLAMP},
                            std::pair<const char*, Ablation::Kind>{"factor", Ablation::SCALE}}) {
    const bool given = node.IsMap() && node[key].IsDefined();
    if (given && kind != owner) {
      return Fail(Join(path, key), std::string("applies only to ") +
                                       std::string(NameOf(AblationKinds(), owner)));
    }
    if (kind == owner) {
      if (!given) {
        return Fail(Join(path, key), std::string(NameOf(AblationKinds(), owner)) +
                                         " needs " + key + " (e.g. {kind: " +
                                         std::string(NameOf(AblationKinds(), owner)) + ", " + key +
                                         ": " + (owner == Ablation::CLAMP ? "0" : "-3") + "})");
      }
      KO_ASSIGN_OR_RETURN(const double v, ReadOptional(node, key, path, 0.0));
      if (!std::isfinite(v)) return Fail(Join(path, key), "expected a finite number");
      out->set_coefficient(v);
    }
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
    const bool latent_only = kind == Ablation::CLAMP || kind == Ablation::SCALE;
    const bool latent_fits = latent_only || kind == Ablation::ZERO ||
                             kind == Ablation::MEAN_ALL_POSITIONS;
    const std::string name(NameOf(AblationKinds(), kind));
    if (kind == Ablation::PATCH) {
      return Fail(At(Join(path, "ablations"), a),
                  "patch applies only to attribution_screen stages (a knockout stage patches "
                  "with resample, mean or a directional ablation)");
    }
    for (int t = 0; t < sweep.targets_size(); ++t) {
      const Target::Kind target = sweep.targets(t).kind();
      const std::string at = At(Join(path, "ablations"), a);
      const std::string target_name =
          "targets[" + std::to_string(t) + "] is " + std::string(NameOf(TargetKinds(), target));
      if (target == Target::SAE_LATENTS) {
        if (latent_fits) continue;
        return Fail(at, name + " ablation does not apply to SAE latents (" + target_name +
                            "; use zero, clamp, scale or mean_all_positions)");
      }
      if (latent_only) {
        return Fail(at, name + " ablation applies only to sae_latents targets; " + target_name);
      }
      if (along_direction == (target == Target::DIRECTION)) continue;
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

}  // namespace knockout::experiments::spec_internal
