#include "experiments/engine.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <random>
#include <sstream>
#include <tuple>

#include "experiments/selection.h"
#include "experiments/spec_inputs.h"
#include "formats/prompt_set.h"
#include "proto/positions.h"
#include "proto/protocol.h"

namespace knockout::experiments {
namespace {

constexpr uint32_t kDefaultShardTrials = 64;
constexpr uint32_t kDefaultShardPrompts = 64;

uint64_t Fnv1a(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string DeterministicBytes(const google::protobuf::Message& message) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  coded.Trim();
  return bytes;
}

std::string Serialize(const google::protobuf::Message& message) { return DeterministicBytes(message); }

uint64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The shard tensor name of a direction: "<stage>@<layer>/<position>".
std::string TensorName(const std::string& stage, int layer, const std::string& position) {
  return stage + "@" + std::to_string(layer) + "/" + position;
}
std::string TensorName(const v1::DirectionArtifact& d) {
  return TensorName(d.stage(), d.layer(), d.position());
}

}  // namespace

const char* StageKindName(const v1::Stage& stage) {
  switch (stage.kind_case()) {
    case v1::Stage::kExtractDirections: return "extract_directions";
    case v1::Stage::kSelectDirection: return "select_direction";
    case v1::Stage::kKnockoutSweep: return "knockout_sweep";
    case v1::Stage::kGenerate: return "generate";
    case v1::Stage::kOrthogonalize: return "orthogonalize";
    case v1::Stage::kAttributionScreen: return "attribution_screen";
    default: return "unknown";
  }
}

namespace {

uint32_t ShardTrials(const v1::SweepSpec& spec, const v1::Stage& stage) {
  if (stage.shard_trials() > 0) return stage.shard_trials();
  return spec.shard_trials() > 0 ? spec.shard_trials() : kDefaultShardTrials;
}
uint32_t ShardPrompts(const v1::SweepSpec& spec, const v1::Stage& stage) {
  if (stage.shard_prompts() > 0) return stage.shard_prompts();
  return spec.shard_prompts() > 0 ? spec.shard_prompts() : kDefaultShardPrompts;
}

StatusOr<std::vector<formats::Prompt>> LoadSet(const v1::SweepSpec& spec, const std::string& name) {
  for (const v1::PromptSetRef& ref : spec.prompt_sets()) {
    if (ref.name() != name) continue;
    // A submitted spec carries its prompts (spec_inputs.h): the coordinator reads no file.
    // Only specs that were never filled in (tests, tools) are read from their files here.
    return LoadPromptSetRef(ref);
  }
  return Status::InvalidArgument("prompt set " + name + " is not defined in the spec");
}

Status AddSet(const v1::SweepSpec& spec, const std::string& name,
              google::protobuf::RepeatedPtrField<v1::ShardPrompt>* out) {
  KO_ASSIGN_OR_RETURN(std::vector<formats::Prompt> prompts, LoadSet(spec, name));
  for (size_t i = 0; i < prompts.size(); ++i) {
    v1::ShardPrompt* p = out->Add();
    p->set_set(name);
    p->set_index(static_cast<uint32_t>(i));
    p->set_instruction(prompts[i].instruction);
  }
  return Status::Ok();
}

const char* AblationName(v1::Ablation::Kind kind) {
  switch (kind) {
    case v1::Ablation::ZERO: return "zero";
    case v1::Ablation::MEAN: return "mean_per_position";
    case v1::Ablation::MEAN_ALL_POSITIONS: return "mean_all_positions";
    case v1::Ablation::RESAMPLE: return "resample";
    case v1::Ablation::PROJECT: return "project";
    case v1::Ablation::DIRECTIONAL: return "directional";
    case v1::Ablation::ADD: return "add";
    case v1::Ablation::CLAMP: return "clamp";
    case v1::Ablation::SCALE: return "scale";
    default: return "unspecified";
  }
}

std::vector<int> Layers(const google::protobuf::RepeatedField<int32_t>& listed, int64_t n) {
  std::vector<int> layers(listed.begin(), listed.end());
  if (layers.empty()) {
    for (int l = 0; l < n; ++l) layers.push_back(l);
  }
  return layers;
}

// Resolves direction references to shard tensors. With no store (planning), it only names them.
class Directions {
 public:
  Directions(const SweepStore* store, std::string sweep) : store_(store), sweep_(std::move(sweep)) {}

  // The artifact a reference names; `target_layer` stands in for an unset layer.
  StatusOr<v1::DirectionArtifact> Get(const v1::DirectionRef& ref, int target_layer) const {
    v1::DirectionArtifact direction;
    if (!store_) return direction;
    if (ref.best()) {
      KO_ASSIGN_OR_RETURN(std::string bytes, store_->GetArtifact(sweep_, SelectionArtifactName(ref.stage())));
      v1::SelectionArtifact selection;
      if (!selection.ParseFromString(bytes)) return Status::Corruption("selection/" + ref.stage());
      return selection.direction();
    }
    const int layer = ref.layer() >= 0 ? ref.layer() : target_layer;
    const std::string name = DirectionArtifactName(ref.stage(), layer, PositionsName(ref.position()));
    KO_ASSIGN_OR_RETURN(std::string bytes, store_->GetArtifact(sweep_, name));
    if (!direction.ParseFromString(bytes)) return Status::Corruption(name);
    return direction;
  }

  // The screen of an attribution_screen stage (screen/<stage>); NotFound before it finished.
  StatusOr<v1::ScreenArtifact> Screen(const std::string& stage) const {
    v1::ScreenArtifact screen;
    if (!store_) return Status::FailedPrecondition("no store to read screen/" + stage + " from");
    KO_ASSIGN_OR_RETURN(std::string bytes, store_->GetArtifact(sweep_, ScreenArtifactName(stage)));
    if (!screen.ParseFromString(bytes)) return Status::Corruption(ScreenArtifactName(stage));
    return screen;
  }

  // Adds the direction to `shard` (once) and returns its tensor name.
  StatusOr<std::string> Attach(const v1::DirectionRef& ref, int target_layer, v1::Shard* shard) const {
    std::string name = ref.best() ? ref.stage() + ".best"
                                  : TensorName(ref.stage(), ref.layer() >= 0 ? ref.layer() : target_layer,
                                               PositionsName(ref.position()));
    if (!shard) return name;
    for (const auto& t : shard->tensors()) {
      if (t.name() == name) return name;
    }
    KO_ASSIGN_OR_RETURN(v1::DirectionArtifact direction, Get(ref, target_layer));
    v1::TensorData* tensor = shard->add_tensors();
    tensor->set_name(name);
    tensor->add_shape(direction.values_size());
    *tensor->mutable_values() = direction.values();
    return name;
  }

 private:
  const SweepStore* store_;
  std::string sweep_;
};

// The hook of an sae_latents target's SAE at `layer`.
std::string SaeHook(const v1::Target& target, int layer) {
  return "blocks." + std::to_string(layer) + "." + target.sae_hook();
}

// The rank request of a ranked target at `layer` (tensor: its score direction's, attached).
v1::RankRequest MakeRankRequest(const v1::Target& target, int layer, const std::string& tensor) {
  v1::RankRequest request;
  request.set_layer(layer);
  request.set_tensor(tensor);
  if (target.kind() == v1::Target::SAE_LATENTS) {
    const v1::LatentSelection& select = target.select();
    request.set_score(select.score());
    request.set_top_k(select.top_k());
    request.set_sae_hook(SaeHook(target, layer));
    request.set_positive(select.positive());
    request.set_negative(select.negative());
    if (!select.positive().empty()) *request.mutable_position() = select.position();
    request.set_candidates(select.candidates());
  } else {
    request.set_score(target.score());
    request.set_top_k(target.top_k());
  }
  return request;
}

// Whether a ranking answers a request (same layer, score, direction, SAE, sets and position).
bool Answers(const v1::NeuronRanking& r, const v1::RankRequest& q) {
  return r.layer() == q.layer() && r.score() == q.score() && r.tensor() == q.tensor() &&
         r.top_k() == q.top_k() && r.sae_hook() == q.sae_hook();
}

// The ranking of one ranked target's layer in `rankings` (NotFound if the RANK shards did not
// produce it).
StatusOr<std::vector<int32_t>> RankedUnits(const v1::RankingArtifact& rankings,
                                           const v1::RankRequest& request) {
  for (const v1::NeuronRanking& r : rankings.rankings()) {
    if (Answers(r, request)) return std::vector<int32_t>(r.units().begin(), r.units().end());
  }
  return Status::NotFound("no ranking for layer " + std::to_string(request.layer()) + " by " +
                          request.score() +
                          (request.tensor().empty() ? "" : " against " + request.tensor()) +
                          (request.sae_hook().empty() ? "" : " of the SAE at " + request.sae_hook()));
}

// The tensor a ranked target's score needs at `layer` ("" when it has no direction).
StatusOr<std::string> RankTensor(const v1::Target& target, int layer, const Directions& directions,
                                 v1::Shard* shard) {
  if (target.kind() == v1::Target::SAE_LATENTS) {
    if (!target.select().has_direction()) return std::string();
    return directions.Attach(target.select().direction(), layer, shard);
  }
  return directions.Attach(target.score_direction(), layer, shard);
}

// Whether a target's units come from a ranking (neurons by top_k against a direction, SAE
// latents by `select`). Neurons without units and without top_k are every neuron (`units: all`).
bool IsRanked(const v1::Target& target) {
  if (!target.units().empty() || !target.from().empty()) return false;
  if (target.kind() == v1::Target::NEURONS) return target.top_k() > 0;
  return target.kind() == v1::Target::SAE_LATENTS;
}

// The unit name of a group of latents (TrialLabel.unit_name): L3F[12,856] for one layer,
// L3-5F[9 latents] over several.
std::string LatentGroupName(const std::vector<std::pair<int, int>>& latents) {
  int lo = latents.front().first, hi = lo;
  for (const auto& [layer, unit] : latents) lo = std::min(lo, layer), hi = std::max(hi, layer);
  if (lo != hi) {
    return "L" + std::to_string(lo) + "-" + std::to_string(hi) + "F[" +
           std::to_string(latents.size()) + " latents]";
  }
  std::string name = "L" + std::to_string(lo) + "F[";
  for (size_t i = 0; i < latents.size(); ++i) {
    name += (i ? "," : "") + std::to_string(latents[i].second);
  }
  return name + "]";
}
bool NeedsRanking(const v1::Stage& stage) {
  if (!stage.has_knockout_sweep()) return false;
  for (const v1::Target& target : stage.knockout_sweep().targets()) {
    if (IsRanked(target)) return true;
  }
  return false;
}

// The latents of an sae_latents target at `layer`: listed, or from the stage's ranking (null
// when only counting: 0..top_k-1).
StatusOr<std::vector<int>> TargetLatents(const v1::Target& target, int layer,
                                         const Directions& directions,
                                         const v1::RankingArtifact* rankings) {
  std::vector<int> units(target.units().begin(), target.units().end());
  if (!units.empty()) return units;
  if (!rankings) {
    for (uint32_t i = 0; i < target.select().top_k(); ++i) units.push_back(static_cast<int>(i));
    return units;
  }
  KO_ASSIGN_OR_RETURN(std::string name, RankTensor(target, layer, directions, nullptr));
  KO_ASSIGN_OR_RETURN(auto ranked, RankedUnits(*rankings, MakeRankRequest(target, layer, name)));
  return std::vector<int>(ranked.begin(), ranked.end());
}

// The trials of an sae_latents target: per layer, one trial per latent (unless `together` says
// only_*), then the layer's group (together: layer / only_layer); after every layer, the group
// over all of them (together: all / only_all). Each x the stage's ablations x positions. The
// edits keep the error term (worker/sae); a group over layers has one edit per layer.
Status LatentTrials(const v1::KnockoutSweepStage& stage, const v1::Target& target,
                    const ModelShape& shape, const Directions& directions,
                    const v1::RankingArtifact* rankings, std::vector<v1::Trial>* trials) {
  const std::string& together = target.together();
  const bool singles = together.rfind("only_", 0) != 0;
  const bool layer_groups = together == "layer" || together == "only_layer";
  const bool all_group = together == "all" || together == "only_all";
  // Emits one trial per ablation x positions for a set of (layer, latent) pairs.
  auto emit = [&](const std::vector<std::pair<int, int>>& latents, bool group) {
    std::map<int, std::vector<int>> by_layer;
    for (const auto& [layer, unit] : latents) by_layer[layer].push_back(unit);
    const std::string name = group ? LatentGroupName(latents)
                                   : "L" + std::to_string(latents[0].first) + "F" +
                                         std::to_string(latents[0].second);
    for (const v1::Ablation& ablation : stage.ablations()) {
      for (const v1::Positions& positions : stage.positions()) {
        v1::Trial trial;
        for (const auto& [layer, units] : by_layer) {
          v1::Edit* edit = trial.add_edits();
          edit->set_hook(SaeHook(target, layer));
          edit->set_sae(true);
          *edit->mutable_ablation() = ablation;
          for (int u : units) edit->add_units(u);
          *edit->mutable_positions() = positions;
        }
        v1::TrialLabel* label = trial.mutable_label();
        label->set_unit_kind(group ? "sae_latents" : "sae_latent");
        label->set_layer(by_layer.size() == 1 ? by_layer.begin()->first : -1);
        label->set_unit(group ? -1 : latents[0].second);
        label->set_ablation(AblationName(ablation.kind()));
        label->set_positions(PositionsName(positions));
        label->set_coefficient(ablation.coefficient());
        label->set_role(target.role());
        label->set_unit_name(name);
        if (group) {
          for (const auto& [layer, unit] : latents) label->add_units(unit);
        }
        trials->push_back(std::move(trial));
      }
    }
  };
  std::vector<std::pair<int, int>> all;
  for (int layer : Layers(target.layers(), shape.num_layers)) {
    KO_ASSIGN_OR_RETURN(std::vector<int> units, TargetLatents(target, layer, directions, rankings));
    std::vector<std::pair<int, int>> here;
    for (int u : units) here.emplace_back(layer, u);
    if (singles) {
      for (const auto& latent : here) emit({latent}, false);
    }
    // A group of one latent is the single trial again: emitted only when singles are not.
    if (layer_groups && (here.size() > 1 || (!singles && !here.empty()))) emit(here, true);
    all.insert(all.end(), here.begin(), here.end());
  }
  if (all_group && (all.size() > 1 || (!singles && !all.empty()))) emit(all, true);
  return Status::Ok();
}

// The hook and label kind of one unit of a (non-latent) target kind at `layer`.
std::pair<std::string, std::string> UnitHook(v1::Target::Kind kind, int layer) {
  const std::string l = "blocks." + std::to_string(layer);
  switch (kind) {
    case v1::Target::HEADS: return {l + ".attn.hook_z", UnitKindLabel(kind)};
    case v1::Target::NEURONS: return {l + ".mlp.hook_post", UnitKindLabel(kind)};
    case v1::Target::DIRECTION: return {l + ".hook_resid_pre", UnitKindLabel(kind)};
    case v1::Target::ATTN_OUT: return {l + ".hook_attn_out", UnitKindLabel(kind)};
    case v1::Target::MLP_OUT: return {l + ".hook_mlp_out", UnitKindLabel(kind)};
    default: return {"", ""};
  }
}

// One trial knocking out `unit` (-1: the whole hook) of a non-latent kind at `hook`.
v1::Trial UnitTrial(const std::string& hook, const std::string& kind, int layer, int unit,
                    const v1::Ablation& ablation, const v1::Positions& positions,
                    const std::string& tensor) {
  v1::Trial trial;
  v1::Edit* edit = trial.add_edits();
  // Directional ablation is science.md's: every layer's resid_pre, attn_out and mlp_out (the
  // target's layer only says which direction); project acts at the hook.
  if (ablation.kind() == v1::Ablation::DIRECTIONAL) {
    edit->set_every_layer(true);
  } else {
    edit->set_hook(hook);
  }
  *edit->mutable_ablation() = ablation;
  if (unit >= 0) edit->add_units(unit);
  edit->set_tensor(tensor);
  *edit->mutable_positions() = positions;
  v1::TrialLabel* label = trial.mutable_label();
  label->set_unit_kind(kind);
  label->set_layer(layer);
  label->set_unit(unit);
  label->set_ablation(AblationName(ablation.kind()));
  label->set_positions(PositionsName(positions));
  label->set_direction(tensor);
  label->set_coefficient(ablation.coefficient());
  return trial;
}

// One trial knocking out latents `units` of the SAE at `hook` (layer `layer`).
v1::Trial LatentTrial(const std::string& hook, int layer, int unit, const v1::Ablation& ablation,
                      const v1::Positions& positions, const std::string& role) {
  v1::Trial trial;
  v1::Edit* edit = trial.add_edits();
  edit->set_hook(hook);
  edit->set_sae(true);
  *edit->mutable_ablation() = ablation;
  edit->add_units(unit);
  *edit->mutable_positions() = positions;
  v1::TrialLabel* label = trial.mutable_label();
  label->set_unit_kind("sae_latent");
  label->set_layer(layer);
  label->set_unit(unit);
  label->set_ablation(AblationName(ablation.kind()));
  label->set_positions(PositionsName(positions));
  label->set_coefficient(ablation.coefficient());
  label->set_role(role);
  label->set_unit_name("L" + std::to_string(layer) + "F" + std::to_string(unit));
  return trial;
}

// The units a target chosen by a screen (`from`) knocks out: the screen's best `top_k` of its
// kind (within `layers`), then `random` drawn from the rest with the spec's seed (a Fisher-Yates
// draw on mt19937_64's raw outputs, the same on every platform).
std::vector<v1::ScreenUnit> ScreenedUnits(const v1::Target& target, const v1::ScreenArtifact& screen,
                                          uint64_t seed, size_t target_index) {
  const std::vector<v1::ScreenUnit> candidates = ScreenCandidates(target, screen);
  const size_t top = std::min<size_t>(target.top_k(), candidates.size());
  std::vector<v1::ScreenUnit> chosen(candidates.begin(), candidates.begin() + top);
  std::vector<v1::ScreenUnit> rest(candidates.begin() + top, candidates.end());
  std::mt19937_64 rng(seed ^ (0x9e3779b97f4a7c15ull * (target_index + 1)));
  const size_t draw = std::min<size_t>(target.random(), rest.size());
  for (size_t i = 0; i < draw; ++i) {
    const size_t j = i + static_cast<size_t>(rng() % (rest.size() - i));
    std::swap(rest[i], rest[j]);
    chosen.push_back(rest[i]);
  }
  return chosen;
}

// The trials of a target chosen by a screen: its units x the stage's ablations x positions,
// role "screen_top" / "screen_random" (or the target's own role).
Status ScreenedTrials(const v1::KnockoutSweepStage& stage, const v1::Target& target,
                      size_t target_index, uint64_t seed, const Directions& directions,
                      bool counting, std::vector<v1::Trial>* trials) {
  std::vector<v1::ScreenUnit> units;
  if (counting) {  // planning: top_k + random placeholders
    for (uint32_t i = 0; i < target.top_k() + target.random(); ++i) {
      v1::ScreenUnit unit;
      unit.mutable_label()->set_layer(0);
      unit.mutable_label()->set_unit(static_cast<int>(i));
      unit.set_rank(i < target.top_k() ? 1 : 0);
      units.push_back(unit);
    }
  } else {
    KO_ASSIGN_OR_RETURN(v1::ScreenArtifact screen, directions.Screen(target.from()));
    units = ScreenedUnits(target, screen, seed, target_index);
  }
  for (size_t i = 0; i < units.size(); ++i) {
    const v1::ScreenUnit& unit = units[i];
    const bool top = i < target.top_k();
    const std::string role =
        !target.role().empty() ? target.role() : (top ? "screen_top" : "screen_random");
    const int layer = unit.label().layer();
    for (const v1::Ablation& ablation : stage.ablations()) {
      for (const v1::Positions& positions : stage.positions()) {
        if (target.kind() == v1::Target::SAE_LATENTS) {
          trials->push_back(
              LatentTrial(unit.hook(), layer, unit.label().unit(), ablation, positions, role));
          continue;
        }
        const auto [hook, kind] = UnitHook(target.kind(), layer);
        v1::Trial trial = UnitTrial(hook, kind, layer, unit.label().unit(), ablation, positions, "");
        trial.mutable_label()->set_role(role);
        trials->push_back(std::move(trial));
      }
    }
  }
  return Status::Ok();
}

// The trials of a knockout_sweep stage, in a fixed order: target, layer, unit, ablation,
// positions. Directions are attached to `shard` (null when only counting); ranked neuron
// targets read their units from `rankings` (null when only counting: units 0..top_k-1).
StatusOr<std::vector<v1::Trial>> KnockoutTrials(const v1::KnockoutSweepStage& stage,
                                                const ModelShape& shape, const Directions& directions,
                                                const v1::RankingArtifact* rankings, v1::Shard* shard,
                                                uint64_t seed = 0) {
  std::vector<v1::Trial> trials;
  for (size_t t = 0; t < static_cast<size_t>(stage.targets_size()); ++t) {
    const v1::Target& target = stage.targets(static_cast<int>(t));
    if (!target.from().empty()) {
      KO_RETURN_IF_ERROR(
          ScreenedTrials(stage, target, t, seed, directions, shard == nullptr, &trials));
      continue;
    }
    if (target.kind() == v1::Target::SAE_LATENTS) {
      KO_RETURN_IF_ERROR(LatentTrials(stage, target, shape, directions, rankings, &trials));
      continue;
    }
    // Directional ablation acts at every layer whatever the target's layer; for a direction
    // that is the same at every layer (a selection's best, or one fixed layer) the target's
    // layers would only repeat one trial, so it is planned once, labelled layer -1.
    const bool one_direction = target.kind() == v1::Target::DIRECTION &&
                               (target.direction().best() || target.direction().layer() >= 0);
    bool every_layer_planned = false;
    for (int layer : Layers(target.layers(), shape.num_layers)) {
      std::vector<int> units;
      std::string hook, kind;
      const std::string l = "blocks." + std::to_string(layer);
      switch (target.kind()) {
        case v1::Target::HEADS:
          hook = l + ".attn.hook_z", kind = "head";
          units.assign(target.units().begin(), target.units().end());
          if (units.empty()) {
            for (int h = 0; h < shape.num_heads; ++h) units.push_back(h);
          }
          break;
        case v1::Target::NEURONS:
          hook = l + ".mlp.hook_post", kind = "neuron";
          units.assign(target.units().begin(), target.units().end());
          if (units.empty() && target.top_k() == 0) {  // `units: all` (or none given)
            for (int64_t n = 0; n < shape.intermediate_size; ++n) units.push_back(static_cast<int>(n));
          } else if (units.empty() && !rankings) {
            for (uint32_t i = 0; i < target.top_k(); ++i) units.push_back(static_cast<int>(i));
          } else if (units.empty()) {
            KO_ASSIGN_OR_RETURN(std::string name, RankTensor(target, layer, directions, nullptr));
            KO_ASSIGN_OR_RETURN(auto ranked,
                                RankedUnits(*rankings, MakeRankRequest(target, layer, name)));
            units.assign(ranked.begin(), ranked.end());
          }
          break;
        case v1::Target::DIRECTION: hook = l + ".hook_resid_pre", kind = "direction", units = {-1}; break;
        case v1::Target::ATTN_OUT: hook = l + ".hook_attn_out", kind = "attn_out", units = {-1}; break;
        case v1::Target::MLP_OUT: hook = l + ".hook_mlp_out", kind = "mlp_out", units = {-1}; break;
        default: return Status::InvalidArgument("target without a kind");
      }
      std::string tensor;
      if (target.kind() == v1::Target::DIRECTION) {
        KO_ASSIGN_OR_RETURN(tensor, directions.Attach(target.direction(), layer, shard));
      }
      for (int unit : units) {
        for (const v1::Ablation& ablation : stage.ablations()) {
          const bool every_layer = one_direction && ablation.kind() == v1::Ablation::DIRECTIONAL;
          if (every_layer && every_layer_planned) continue;
          for (const v1::Positions& positions : stage.positions()) {
            trials.push_back(UnitTrial(hook, kind, every_layer ? -1 : layer, unit, ablation,
                                       positions, tensor));
          }
        }
      }
      every_layer_planned = true;
    }
  }
  for (size_t i = 0; i < trials.size(); ++i) trials[i].set_index(static_cast<uint32_t>(i));
  return trials;
}

// Candidates of a selection: the direction artifacts of the candidate stage, in name order.
StatusOr<std::vector<v1::DirectionArtifact>> Candidates(const SweepStore& store,
                                                        const std::string& sweep,
                                                        const std::string& stage) {
  KO_ASSIGN_OR_RETURN(auto artifacts, store.ListArtifacts(sweep, "direction/" + stage + "/"));
  std::vector<v1::DirectionArtifact> out;
  for (const auto& [name, bytes] : artifacts) {
    v1::DirectionArtifact d;
    if (!d.ParseFromString(bytes)) return Status::Corruption("artifact " + name);
    out.push_back(std::move(d));
  }
  return out;
}

v1::TensorData* AddTensor(v1::Shard* shard, const std::string& name, const v1::DirectionArtifact& d) {
  v1::TensorData* t = shard->add_tensors();
  t->set_name(name);
  t->add_shape(d.values_size());
  *t->mutable_values() = d.values();
  return t;
}

// Selection trials per candidate (science.md): "ablate" = directional ablation at every layer
// on both validation sets (bypass on harmful, KL on harmless); "induce" = activation addition
// at the candidate's layer on the harmless set.
std::vector<v1::Trial> SelectionTrials(const v1::SelectDirectionStage& stage,
                                       const std::vector<v1::DirectionArtifact>& candidates) {
  std::vector<v1::Trial> trials;
  for (const v1::DirectionArtifact& c : candidates) {
    const std::string tensor = TensorName(c);
    for (const char* role : {"ablate", "induce"}) {
      v1::Trial trial;
      v1::Edit* edit = trial.add_edits();
      edit->set_tensor(tensor);
      if (std::string(role) == "ablate") {
        edit->set_every_layer(true);
        edit->mutable_ablation()->set_kind(v1::Ablation::DIRECTIONAL);
      } else {
        edit->set_hook("blocks." + std::to_string(c.layer()) + ".hook_resid_pre");
        edit->mutable_ablation()->set_kind(v1::Ablation::ADD);
        edit->mutable_ablation()->set_coefficient(1.0);
        trial.set_prompt_set(stage.harmless());
      }
      v1::TrialLabel* label = trial.mutable_label();
      label->set_unit_kind("candidate");
      label->set_layer(c.layer());
      label->set_unit(-1);
      label->set_ablation(std::string(role) == "ablate" ? "directional" : "add");
      label->set_positions(c.position());
      label->set_direction(tensor);
      label->set_coefficient(std::string(role) == "ablate" ? 0.0 : 1.0);
      label->set_role(role);
      trials.push_back(std::move(trial));
    }
  }
  for (size_t i = 0; i < trials.size(); ++i) trials[i].set_index(static_cast<uint32_t>(i));
  return trials;
}

// Splits `trials` into shards of at most `per_shard`, each a copy of `base` (prompts, tensors).
std::vector<v1::Shard> ShardTrialList(const v1::Shard& base, const std::vector<v1::Trial>& trials,
                                      uint32_t per_shard) {
  std::vector<v1::Shard> shards;
  for (size_t begin = 0; begin < trials.size(); begin += per_shard) {
    v1::Shard shard = base;
    const size_t end = std::min(trials.size(), begin + per_shard);
    for (size_t i = begin; i < end; ++i) *shard.add_trials() = trials[i];
    shard.set_index(static_cast<uint32_t>(shards.size()));
    shards.push_back(std::move(shard));
  }
  return shards;
}

// Splits the prompts of `base` into shards of at most `per_shard`.
std::vector<v1::Shard> ShardPromptList(const v1::Shard& base, uint32_t per_shard) {
  std::vector<v1::Shard> shards;
  for (int begin = 0; begin < base.prompts_size(); begin += per_shard) {
    v1::Shard shard = base;
    shard.clear_prompts();
    const int end = std::min(base.prompts_size(), begin + static_cast<int>(per_shard));
    for (int i = begin; i < end; ++i) *shard.add_prompts() = base.prompts(i);
    shard.set_index(static_cast<uint32_t>(shards.size()));
    shards.push_back(std::move(shard));
  }
  return shards;
}

StatusOr<std::string> ReferenceSet(const v1::KnockoutSweepStage& stage) {
  std::set<std::string> sets;
  for (const v1::Ablation& a : stage.ablations()) {
    if (!a.reference_set().empty()) sets.insert(a.reference_set());
  }
  if (sets.size() > 1) {
    return Status::Unimplemented("a knockout_sweep stage supports one reference_set; split the stage");
  }
  return sets.empty() ? std::string() : *sets.begin();
}

}  // namespace

StatusOr<std::string> SweepIdFor(const v1::SweepSpec& spec) {
  v1::SweepSpec canonical = spec;
  canonical.clear_source();
  // A filled spec holds its inputs (the prompts, the shape and config.json's digest), so the
  // hash of its canonical bytes covers them; nothing is read here.
  const std::string bytes = DeterministicBytes(canonical);
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(Fnv1a(bytes)));
  return spec.name() + "-" + std::string(hex).substr(0, 8);
}

std::string DirectionArtifactName(const std::string& stage, int layer, const std::string& position) {
  char l[16];
  std::snprintf(l, sizeof(l), "L%03d", layer);
  return "direction/" + stage + "/" + l + "/" + position;
}
std::string SelectionArtifactName(const std::string& stage) { return "selection/" + stage; }
std::string OrthogonalizeArtifactName(const std::string& stage) { return "orthogonalize/" + stage; }
std::string RankingArtifactName(const std::string& stage) { return "ranking/" + stage; }
std::string ScreenArtifactName(const std::string& stage) { return "screen/" + stage; }

const char* UnitKindLabel(v1::Target::Kind kind) {
  switch (kind) {
    case v1::Target::HEADS: return "head";
    case v1::Target::NEURONS: return "neuron";
    case v1::Target::DIRECTION: return "direction";
    case v1::Target::ATTN_OUT: return "attn_out";
    case v1::Target::MLP_OUT: return "mlp_out";
    case v1::Target::SAE_LATENTS: return "sae_latent";
    default: return "";
  }
}

std::vector<v1::ScreenUnit> ScreenCandidates(const v1::Target& target,
                                             const v1::ScreenArtifact& screen) {
  const std::string kind = UnitKindLabel(target.kind());
  std::set<int> layers(target.layers().begin(), target.layers().end());
  std::vector<v1::ScreenUnit> candidates;
  std::set<std::pair<int, int>> seen;  // a unit screened at several positions counts once
  for (const v1::ScreenUnit& unit : screen.units()) {  // in rank order
    if (unit.label().unit_kind() != kind) continue;
    if (!layers.empty() && !layers.count(unit.label().layer())) continue;
    if (!seen.insert({unit.label().layer(), unit.label().unit()}).second) continue;
    candidates.push_back(unit);
  }
  return candidates;
}

namespace {

// Whether a knockout_sweep stage uses SAEs (latent targets or backups): its shards then carry
// the spec's SAEs (workers load and cache them).
bool UsesSaes(const v1::KnockoutSweepStage& stage) {
  if (stage.has_backups()) return true;
  return std::any_of(stage.targets().begin(), stage.targets().end(), [](const v1::Target& t) {
    return t.kind() == v1::Target::SAE_LATENTS;
  });
}

// The RANK shard of a knockout_sweep stage (index 0): one request per ranked target and layer,
// with the score directions attached.
StatusOr<std::vector<v1::Shard>> RankShards(const v1::SweepSpec& spec,
                                            const v1::KnockoutSweepStage& stage, v1::Shard base,
                                            const Directions& directions, int64_t num_layers) {
  base.set_kind(v1::Shard::RANK);
  base.set_index(0);
  if (UsesSaes(stage)) *base.mutable_saes() = spec.saes();
  std::set<std::string> sets;  // prompt sets the activation scores read
  for (const v1::Target& target : stage.targets()) {
    if (!IsRanked(target)) continue;
    for (int layer : Layers(target.layers(), num_layers)) {
      KO_ASSIGN_OR_RETURN(std::string tensor, RankTensor(target, layer, directions, &base));
      const v1::RankRequest request = MakeRankRequest(target, layer, tensor);
      const bool seen = std::any_of(
          base.rank_requests().begin(), base.rank_requests().end(), [&](const v1::RankRequest& q) {
            return DeterministicBytes(q) == DeterministicBytes(request);
          });
      if (seen) continue;
      *base.add_rank_requests() = request;
      for (const std::string& set : {request.positive(), request.negative()}) {
        if (!set.empty() && sets.insert(set).second) {
          KO_RETURN_IF_ERROR(AddSet(spec, set, base.mutable_prompts()));
        }
      }
    }
  }
  return std::vector<v1::Shard>{base};
}


// The trial shards of a knockout_sweep stage; with `rankings` (a ranked stage) they come after
// its RANK shard, from index 1.
StatusOr<std::vector<v1::Shard>> KnockoutShards(const v1::SweepSpec& spec, uint32_t index,
                                                v1::Shard base, const Directions& directions,
                                                const v1::RankingArtifact* rankings,
                                                const ModelShape& shape) {
  const v1::Stage& stage = spec.stages(index);
  const auto& s = stage.knockout_sweep();
  base.set_kind(v1::Shard::TRIALS);
  base.set_compensation(s.compensation());
  if (UsesSaes(s)) *base.mutable_saes() = spec.saes();
  if (s.has_backups()) {
    *base.mutable_backups() = s.backups();
    if (s.backups().has_direction()) {
      KO_ASSIGN_OR_RETURN(std::string tensor,
                          directions.Attach(s.backups().direction(), -1, &base));
      base.mutable_backups()->set_tensor(tensor);
    }
  }
  for (const std::string& set : s.prompt_sets()) {
    KO_RETURN_IF_ERROR(AddSet(spec, set, base.mutable_prompts()));
  }
  KO_ASSIGN_OR_RETURN(std::string reference, ReferenceSet(s));
  if (!reference.empty()) KO_RETURN_IF_ERROR(AddSet(spec, reference, base.mutable_reference_prompts()));
  KO_ASSIGN_OR_RETURN(auto trials,
                      KnockoutTrials(s, shape, directions, rankings, &base, spec.seed()));
  // Every shard holds all the stage's prompts, so a trial's aggregate is computed in one place.
  std::vector<v1::Shard> shards = ShardTrialList(base, trials, ShardTrials(spec, stage));
  if (rankings) {
    for (v1::Shard& shard : shards) shard.set_index(shard.index() + 1);
  }
  return shards;
}

// The d_sae of the SAE at `hook` among the spec's (0 if none: validation refuses that).
int64_t SaeWidth(const v1::SweepSpec& spec, const std::string& hook) {
  for (const v1::SaeRef& sae : spec.saes()) {
    if (sae.hook() == hook) return sae.d_sae();
  }
  return 0;
}

// The units of an attribution_screen stage as trials, one per unit x positions, each with the
// edit whose effect the screen estimates (the same edit a knockout_sweep would run): per unit
// spec, layer, unit. Direction units are projected out (`project`; with `patch`, their
// component is replaced by the patched run's). Directions are attached to `shard` (null when
// only counting).
StatusOr<std::vector<v1::Trial>> ScreenTrials(const v1::SweepSpec& spec,
                                              const v1::AttributionScreenStage& stage,
                                              const ModelShape& shape, const Directions& directions,
                                              v1::Shard* shard) {
  std::vector<v1::Trial> trials;
  for (const v1::Target& target : stage.units()) {
    for (int layer : Layers(target.layers(), shape.num_layers)) {
      std::vector<int> units(target.units().begin(), target.units().end());
      int64_t all = 1;
      if (target.kind() == v1::Target::HEADS) all = shape.num_heads;
      if (target.kind() == v1::Target::NEURONS) all = shape.intermediate_size;
      if (target.kind() == v1::Target::SAE_LATENTS) all = SaeWidth(spec, SaeHook(target, layer));
      const bool whole = target.kind() == v1::Target::ATTN_OUT ||
                         target.kind() == v1::Target::MLP_OUT ||
                         target.kind() == v1::Target::DIRECTION;
      if (whole) units = {-1};
      if (units.empty()) {
        for (int64_t u = 0; u < all; ++u) units.push_back(static_cast<int>(u));
      }
      std::string tensor;
      v1::Ablation ablation = stage.ablation();
      if (target.kind() == v1::Target::DIRECTION) {
        KO_ASSIGN_OR_RETURN(tensor, directions.Attach(target.direction(), layer, shard));
        if (ablation.kind() != v1::Ablation::PATCH) {
          ablation.Clear();
          ablation.set_kind(v1::Ablation::PROJECT);
        }
      }
      for (int unit : units) {
        for (const v1::Positions& positions : stage.positions()) {
          if (target.kind() == v1::Target::SAE_LATENTS) {
            trials.push_back(
                LatentTrial(SaeHook(target, layer), layer, unit, ablation, positions, ""));
            continue;
          }
          const auto [hook, kind] = UnitHook(target.kind(), layer);
          trials.push_back(UnitTrial(hook, kind, layer, unit, ablation, positions, tensor));
        }
      }
    }
  }
  for (size_t i = 0; i < trials.size(); ++i) trials[i].set_index(static_cast<uint32_t>(i));
  return trials;
}

// The shards of an attribution_screen stage: every unit in each shard, the prompts split
// (scores are sums over prompts, reduced in float64 by the finaliser).
StatusOr<std::vector<v1::Shard>> ScreenShards(const v1::SweepSpec& spec, const v1::Stage& stage,
                                              v1::Shard base, const Directions& directions,
                                              const ModelShape& shape) {
  const auto& s = stage.attribution_screen();
  base.set_kind(v1::Shard::SCREEN);
  v1::ScreenRequest* request = base.mutable_screen();
  request->set_method(s.method());
  request->set_steps(s.steps());
  request->set_metric(s.metric());
  if (s.ablation().kind() == v1::Ablation::PATCH) {
    KO_ASSIGN_OR_RETURN(std::string tensor, directions.Attach(s.patch(), -1, &base));
    request->set_patch_tensor(tensor);
  }
  const bool latents = std::any_of(s.units().begin(), s.units().end(), [](const v1::Target& t) {
    return t.kind() == v1::Target::SAE_LATENTS;
  });
  if (latents) *base.mutable_saes() = spec.saes();
  for (const std::string& set : s.prompt_sets()) {
    KO_RETURN_IF_ERROR(AddSet(spec, set, base.mutable_prompts()));
  }
  if (!s.ablation().reference_set().empty()) {
    KO_RETURN_IF_ERROR(AddSet(spec, s.ablation().reference_set(), base.mutable_reference_prompts()));
  }
  KO_ASSIGN_OR_RETURN(auto trials, ScreenTrials(spec, s, shape, directions, &base));
  for (v1::Trial& trial : trials) *base.add_trials() = std::move(trial);
  return ShardPromptList(base, ShardPrompts(spec, stage));
}

// The finaliser of an attribution_screen: the shards' float64 sums reduced per unit (over all
// prompts: the artifact and its ranking; per prompt set: the result rows).
Status FinalizeScreen(const v1::Stage& stage, const std::vector<v1::ShardRecord>& shards,
                      const std::vector<v1::PartialSum>& sums, std::string* artifact,
                      std::vector<v1::ResultRow>* rows) {
  const auto& s = stage.attribution_screen();
  if (shards.empty()) return Status::FailedPrecondition("stage " + stage.name() + " has no shards");
  const v1::Shard& first = shards.front().shard();
  const int n = first.trials_size();
  struct Acc {
    std::vector<double> sum, sum_sq;
    uint64_t count = 0;
    double clean = 0;
  };
  std::map<std::string, Acc> by_set;
  std::map<std::pair<std::string, std::string>, std::array<double, 3>> hooks;  // effect, attributed, n
  for (const v1::PartialSum& p : sums) {
    if (p.position() == kScreenScoreSum || p.position() == kScreenScoreSqSum) {
      if (p.sum_size() != n) {
        return Status::Corruption("stage " + stage.name() + ": screen sums of " +
                                  std::to_string(p.sum_size()) + " units, expected " +
                                  std::to_string(n));
      }
      Acc& acc = by_set[p.set()];
      std::vector<double>& target = p.position() == kScreenScoreSum ? acc.sum : acc.sum_sq;
      if (target.empty()) target.assign(n, 0.0);
      for (int i = 0; i < n; ++i) target[i] += p.sum(i);
      if (p.position() == kScreenScoreSum) acc.count += p.count();
    } else if (p.position() == kScreenCleanSum && p.sum_size() == 1) {
      by_set[p.set()].clean += p.sum(0);
    } else if (p.position().rfind(kScreenHookSumPrefix, 0) == 0 && p.sum_size() == 2) {
      const std::string rest = p.position().substr(sizeof(kScreenHookSumPrefix) - 1);
      const size_t space = rest.find(' ');
      auto& h = hooks[{rest.substr(0, space), space == std::string::npos ? "" : rest.substr(space + 1)}];
      h[0] += p.sum(0), h[1] += p.sum(1), h[2] += static_cast<double>(p.count());
    }
  }
  v1::ScreenArtifact screen;
  screen.set_stage(stage.name());
  screen.set_method(s.method());
  screen.set_metric(s.metric());
  screen.set_ablation(AblationName(s.ablation().kind()));
  screen.set_rank(s.rank());
  std::vector<double> total(n, 0.0), total_sq(n, 0.0);
  uint64_t count = 0;
  double clean = 0;
  for (const auto& [set, acc] : by_set) {
    if (acc.sum.empty() || acc.count == 0) continue;
    count += acc.count;
    clean += acc.clean;
    for (int i = 0; i < n; ++i) {
      total[i] += acc.sum[i];
      total_sq[i] += acc.sum_sq.empty() ? 0.0 : acc.sum_sq[i];
      const double mean = acc.sum[i] / acc.count;
      const double var = (acc.sum_sq.empty() ? 0.0 : acc.sum_sq[i] / acc.count) - mean * mean;
      v1::ResultRow row;
      row.set_trial(first.trials(i).index());
      row.set_prompt_set(set);
      row.set_prompt(-1);
      (*row.mutable_values())["score"] = mean;
      (*row.mutable_values())["spread"] = std::sqrt(std::max(0.0, var));
      (*row.mutable_values())["prompts"] = static_cast<double>(acc.count);
      (*row.mutable_values())["clean_metric"] = acc.clean / acc.count;
      rows->push_back(std::move(row));
    }
  }
  if (count == 0) {
    return Status::FailedPrecondition("stage " + stage.name() +
                                      ": no prompt had a finite metric and scores");
  }
  screen.set_prompts(count);
  screen.set_clean_metric(clean / count);
  uint64_t planned = 0;
  for (const auto& record : shards) planned += record.shard().prompts_size();
  screen.set_excluded_prompts(planned > count ? planned - count : 0);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  auto key = [&](int i) {
    const double mean = total[i] / count;
    if (s.rank() == "negative") return -mean;
    if (s.rank() == "positive") return mean;
    return std::fabs(mean);
  };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) > key(b); });
  std::map<uint32_t, uint32_t> rank_of;
  for (int r = 0; r < n; ++r) {
    const int i = order[r];
    const v1::Trial& trial = first.trials(i);
    v1::ScreenUnit* unit = screen.add_units();
    unit->set_trial(trial.index());
    *unit->mutable_label() = trial.label();
    unit->set_hook(trial.edits_size() > 0 ? trial.edits(0).hook() : "");
    const double mean = total[i] / count;
    unit->set_score(mean);
    unit->set_spread(std::sqrt(std::max(0.0, total_sq[i] / count - mean * mean)));
    unit->set_prompts(count);
    unit->set_rank(static_cast<uint32_t>(r + 1));
    rank_of[trial.index()] = static_cast<uint32_t>(r + 1);
  }
  for (v1::ResultRow& row : *rows) (*row.mutable_values())["rank"] = rank_of[row.trial()];
  for (const auto& [key_pair, h] : hooks) {
    v1::ScreenHookEffect* effect = screen.add_hooks();
    effect->set_hook(key_pair.first);
    effect->set_positions(key_pair.second);
    effect->set_effect(h[2] > 0 ? h[0] / h[2] : 0.0);
    effect->set_attributed(h[2] > 0 ? h[1] / h[2] : 0.0);
  }
  *artifact = Serialize(screen);
  return Status::Ok();
}

}  // namespace

StatusOr<std::vector<v1::Shard>> SweepEngine::Expand(const v1::SweepSpec& spec,
                                                     const std::string& sweep,
                                                     uint32_t index) const {
  const v1::Stage& stage = spec.stages(index);
  v1::Shard base;
  base.set_sweep_id(sweep);
  base.set_stage(index);
  base.set_stage_name(stage.name());
  *base.mutable_model() = spec.model();
  *base.mutable_metrics() = spec.metrics();
  base.set_seed(spec.seed());
  Directions directions(store_, sweep);
  switch (stage.kind_case()) {
    case v1::Stage::kExtractDirections: {
      const auto& s = stage.extract_directions();
      base.set_kind(v1::Shard::EXTRACT);
      KO_RETURN_IF_ERROR(AddSet(spec, s.positive(), base.mutable_prompts()));
      KO_RETURN_IF_ERROR(AddSet(spec, s.negative(), base.mutable_prompts()));
      *base.mutable_layers() = s.layers();
      *base.mutable_positions() = s.positions();
      base.set_hook(s.hook().empty() ? "resid_pre" : s.hook());
      return ShardPromptList(base, ShardPrompts(spec, stage));
    }
    case v1::Stage::kSelectDirection: {
      const auto& s = stage.select_direction();
      base.set_kind(v1::Shard::TRIALS);
      KO_RETURN_IF_ERROR(AddSet(spec, s.harmful(), base.mutable_prompts()));
      KO_RETURN_IF_ERROR(AddSet(spec, s.harmless(), base.mutable_prompts()));
      KO_ASSIGN_OR_RETURN(auto candidates, Candidates(*store_, sweep, s.candidates()));
      if (candidates.empty()) {
        return Status::FailedPrecondition("stage " + stage.name() + ": stage " + s.candidates() +
                                          " produced no candidate directions");
      }
      for (const auto& c : candidates) {
        AddTensor(&base, TensorName(c), c);
      }
      return ShardTrialList(base, SelectionTrials(s, candidates), ShardTrials(spec, stage));
    }
    case v1::Stage::kKnockoutSweep: {
      if (!NeedsRanking(stage)) return KnockoutShards(spec, index, base, directions, nullptr, shape_);
      // Neurons ranked against a direction: first the stage's RANK shard (workers hold the
      // weights), then, once its rankings are committed (Advance), the trial shards after it.
      v1::RankingArtifact rankings;
      auto bytes = store_ ? store_->GetArtifact(sweep, RankingArtifactName(stage.name()))
                          : StatusOr<std::string>(Status::NotFound("no store"));
      if (bytes.ok()) {
        if (!rankings.ParseFromString(*bytes)) {
          return Status::Corruption(RankingArtifactName(stage.name()));
        }
        return KnockoutShards(spec, index, base, directions, &rankings, shape_);
      }
      if (bytes.status().code() != StatusCode::kNotFound) return bytes.status();
      return RankShards(spec, stage.knockout_sweep(), base, directions, shape_.num_layers);
    }
    case v1::Stage::kAttributionScreen:
      return ScreenShards(spec, stage, base, directions, shape_);
    case v1::Stage::kGenerate: {
      const auto& s = stage.generate();
      base.set_kind(v1::Shard::GENERATE);
      base.set_max_new_tokens(s.max_new_tokens());
      for (const std::string& set : s.prompt_sets()) {
        KO_RETURN_IF_ERROR(AddSet(spec, set, base.mutable_prompts()));
      }
      uint32_t trial_index = 0;
      for (const v1::GenerateCondition& c : s.conditions()) {
        v1::Trial* trial = base.add_trials();
        trial->set_index(trial_index++);
        trial->mutable_label()->set_unit_kind("condition");
        trial->mutable_label()->set_role(c.name());
        if (c.kind() == v1::GenerateCondition::BASELINE) continue;
        KO_ASSIGN_OR_RETURN(v1::DirectionArtifact d, directions.Get(c.direction(), -1));
        KO_ASSIGN_OR_RETURN(std::string tensor, directions.Attach(c.direction(), d.layer(), &base));
        v1::Edit* edit = trial->add_edits();
        edit->set_tensor(tensor);
        trial->mutable_label()->set_direction(tensor);
        if (c.kind() == v1::GenerateCondition::ABLATE) {
          edit->set_every_layer(true);
          edit->mutable_ablation()->set_kind(v1::Ablation::DIRECTIONAL);
          trial->mutable_label()->set_ablation("directional");
        } else {
          const int layer = c.layer() >= 0 ? c.layer() : d.layer();
          edit->set_hook("blocks." + std::to_string(layer) + ".hook_resid_pre");
          edit->mutable_ablation()->set_kind(v1::Ablation::ADD);
          edit->mutable_ablation()->set_coefficient(c.coefficient());
          trial->mutable_label()->set_ablation("add");
          trial->mutable_label()->set_layer(layer);
          trial->mutable_label()->set_coefficient(c.coefficient());
        }
      }
      std::vector<v1::Shard> shards = ShardPromptList(base, ShardPrompts(spec, stage));
      // Capability cost: the cross-entropy on the text set under each condition, once (shard 0).
      if (!spec.metrics().text_set().empty() && !shards.empty()) {
        KO_RETURN_IF_ERROR(AddSet(spec, spec.metrics().text_set(), shards[0].mutable_reference_prompts()));
      }
      return shards;
    }
    case v1::Stage::kOrthogonalize: {
      const auto& s = stage.orthogonalize();
      base.set_kind(v1::Shard::ORTHOGONALIZE);
      base.set_max_new_tokens(s.max_new_tokens());
      for (const std::string& set : s.prompt_sets()) {
        KO_RETURN_IF_ERROR(AddSet(spec, set, base.mutable_prompts()));
      }
      KO_ASSIGN_OR_RETURN(std::string tensor, directions.Attach(s.direction(), -1, &base));
      const std::string root = !checkpoint_root_.empty() ? checkpoint_root_
                                                         : store_->store()->path() + "/checkpoints";
      base.set_output(!s.output().empty() ? s.output() : root + "/" + sweep + "/" + stage.name());
      v1::Trial* trial = base.add_trials();
      trial->mutable_label()->set_unit_kind("condition");
      trial->mutable_label()->set_role("orthogonalized");
      trial->mutable_label()->set_direction(tensor);
      base.set_index(0);
      return std::vector<v1::Shard>{base};
    }
    default:
      return Status::InvalidArgument("stage " + stage.name() + " has no kind");
  }
}

StatusOr<std::vector<std::pair<std::string, std::string>>> SweepEngine::Finalize(
    const v1::SweepRecord& sweep, uint32_t index, std::vector<v1::ResultRow>* rows) const {
  const v1::Stage& stage = sweep.spec().stages(index);
  std::vector<std::pair<std::string, std::string>> artifacts;
  if (stage.has_attribution_screen()) {
    KO_ASSIGN_OR_RETURN(auto sums, store_->PartialSums(sweep.id(), index));
    KO_ASSIGN_OR_RETURN(auto shards, store_->ListShards(sweep.id(), index));
    std::string screen;
    KO_RETURN_IF_ERROR(FinalizeScreen(stage, shards, sums, &screen, rows));
    artifacts.emplace_back(ScreenArtifactName(stage.name()), std::move(screen));
  } else if (stage.has_extract_directions()) {
    const auto& s = stage.extract_directions();
    KO_ASSIGN_OR_RETURN(auto sums, store_->PartialSums(sweep.id(), index));
    // (layer, position) -> set -> (sum, count), reduced in float64.
    std::map<std::pair<int, std::string>, std::map<std::string, std::pair<std::vector<double>, uint64_t>>> acc;
    for (const v1::PartialSum& ps : sums) {
      auto& [sum, count] = acc[{ps.layer(), ps.position()}][ps.set()];
      if (sum.empty()) sum.assign(ps.sum_size(), 0.0);
      if (static_cast<int>(sum.size()) != ps.sum_size()) {
        return Status::Corruption("partial sums of different sizes at layer " + std::to_string(ps.layer()));
      }
      for (int i = 0; i < ps.sum_size(); ++i) sum[i] += ps.sum(i);
      count += ps.count();
    }
    for (const auto& [key, by_set] : acc) {
      auto pos = by_set.find(s.positive());
      auto neg = by_set.find(s.negative());
      if (pos == by_set.end() || neg == by_set.end() || pos->second.second == 0 || neg->second.second == 0) {
        return Status::FailedPrecondition("stage " + stage.name() + ": no prompts of one set at layer " +
                                          std::to_string(key.first));
      }
      v1::DirectionArtifact d;
      d.set_stage(stage.name());
      d.set_layer(key.first);
      d.set_position(key.second);
      d.set_hook(s.hook().empty() ? "resid_pre" : s.hook());
      d.set_positive_count(pos->second.second);
      d.set_negative_count(neg->second.second);
      double norm = 0;
      for (size_t i = 0; i < pos->second.first.size(); ++i) {
        const double v = pos->second.first[i] / pos->second.second - neg->second.first[i] / neg->second.second;
        d.add_values(static_cast<float>(v));
        norm += v * v;
      }
      d.set_norm(std::sqrt(norm));
      artifacts.emplace_back(DirectionArtifactName(stage.name(), key.first, key.second), Serialize(d));
    }
  } else if (stage.has_select_direction()) {
    const auto& s = stage.select_direction();
    KO_ASSIGN_OR_RETURN(auto candidates, Candidates(*store_, sweep.id(), s.candidates()));
    KO_ASSIGN_OR_RETURN(auto shards, store_->ListShards(sweep.id(), index));
    std::map<uint32_t, v1::TrialLabel> labels;
    for (const auto& record : shards) {
      for (const auto& trial : record.shard().trials()) labels[trial.index()] = trial.label();
    }
    KO_ASSIGN_OR_RETURN(auto rows, store_->Rows(sweep.id(), index, /*aggregates_only=*/true));
    std::map<std::string, v1::CandidateScore> scores;  // by direction tensor name
    const double nan = std::nan("");
    for (const auto& c : candidates) {
      v1::CandidateScore score;
      score.set_layer(c.layer());
      score.set_position(c.position());
      score.set_bypass(nan), score.set_induce(nan), score.set_kl(nan);
      scores[TensorName(c)] = score;
    }
    for (const v1::ResultRow& row : rows) {
      const v1::TrialLabel& label = labels[row.trial()];
      auto it = scores.find(label.direction());
      if (it == scores.end()) continue;
      auto value = [&](const char* key) {
        auto v = row.values().find(key);
        return v == row.values().end() ? nan : v->second;
      };
      if (label.role() == "ablate" && row.prompt_set() == s.harmful()) it->second.set_bypass(value("refusal_score"));
      if (label.role() == "ablate" && row.prompt_set() == s.harmless()) it->second.set_kl(value("kl"));
      if (label.role() == "induce" && row.prompt_set() == s.harmless()) it->second.set_induce(value("refusal_score"));
    }
    SelectionFilters filters;
    filters.num_layers = static_cast<int>(shape_.num_layers);
    if (s.max_layer_fraction() > 0) filters.max_layer_fraction = s.max_layer_fraction();
    filters.max_kl = s.max_kl();
    filters.min_induce = s.min_induce();
    std::vector<SelectionCandidate> inputs;
    for (const auto& c : candidates) {
      const v1::CandidateScore& score = scores[TensorName(c)];
      SelectionCandidate input;
      input.layer = score.layer();
      input.position = score.position();
      input.bypass = score.bypass(), input.induce = score.induce(), input.kl = score.kl();
      input.norm = c.norm();
      inputs.push_back(std::move(input));
    }
    const SelectionResult chosen = SelectDirection(inputs, filters);
    v1::SelectionArtifact selection;
    selection.set_stage(stage.name());
    selection.set_chosen(chosen.chosen);
    for (size_t i = 0; i < candidates.size(); ++i) {
      v1::CandidateScore score = scores[TensorName(candidates[i])];
      score.set_passed(chosen.rejected[i].empty());
      score.set_rejected(chosen.rejected[i]);
      *selection.add_candidates() = score;
    }
    if (chosen.chosen < 0) {
      return Status::FailedPrecondition(
          "stage " + stage.name() + ": no candidate direction passes the filters (" +
          filters.Describe() + "); see `knockout results " + sweep.id() + " --stage " +
          stage.name() + "`");
    }
    *selection.mutable_direction() = candidates[chosen.chosen];
    artifacts.emplace_back(SelectionArtifactName(stage.name()), Serialize(selection));
  } else if (stage.has_orthogonalize()) {
    KO_ASSIGN_OR_RETURN(auto shards, store_->ListShards(sweep.id(), index));
    v1::OrthogonalizeArtifact o;
    if (!shards.empty()) {
      o.set_output(shards[0].shard().output());
      if (shards[0].shard().tensors_size() > 0) o.set_direction(shards[0].shard().tensors(0).name());
    }
    artifacts.emplace_back(OrthogonalizeArtifactName(stage.name()), Serialize(o));
  }
  return artifacts;
}

StatusOr<std::string> SweepEngine::Submit(const v1::SweepSpec& spec, bool* resumed,
                                          uint32_t priority) {
  KO_ASSIGN_OR_RETURN(const std::string id, SweepIdFor(spec));
  return Submit(spec, id, resumed, priority);
}

StatusOr<std::string> SweepEngine::Submit(const v1::SweepSpec& spec, const std::string& id,
                                          bool* resumed, uint32_t priority) {
  auto existing = store_->GetSweep(id);
  if (existing.ok()) {
    if (resumed) *resumed = true;
    bool changed = existing->priority() != priority;
    existing->set_priority(priority);
    if (existing->state() == v1::FAILED || existing->state() == v1::CANCELLED) {
      // Submitting again retries: failed shards are still pending, a failed finaliser reruns.
      existing->set_state(v1::RUNNING);
      existing->clear_error();
      changed = true;
    }
    if (changed) KO_RETURN_IF_ERROR(store_->UpdateSweep(*existing));
    return id;
  }
  if (existing.status().code() != StatusCode::kNotFound) return existing.status();
  v1::SweepRecord record;
  record.set_id(id);
  record.set_name(spec.name());
  *record.mutable_spec() = spec;
  record.set_created_unix_ms(NowMs());
  record.set_state(v1::RUNNING);
  record.set_priority(priority);
  KO_RETURN_IF_ERROR(store_->CreateSweep(record));
  if (resumed) *resumed = false;
  return id;
}

StatusOr<std::vector<v1::ShardRecord>> SweepEngine::Advance(const std::string& id,
                                                            bool want_shards) {
  for (;;) {
    KO_ASSIGN_OR_RETURN(v1::SweepRecord sweep, store_->GetSweep(id));
    if (sweep.state() == v1::DONE) return std::vector<v1::ShardRecord>{};
    if (sweep.state() == v1::FAILED) {
      return Status::FailedPrecondition("sweep " + id + " failed: " + sweep.error());
    }
    if (sweep.state() == v1::CANCELLED) {
      // A cancelled sweep neither finalises nor expands until it is submitted again.
      return Status::FailedPrecondition("sweep " + id + " is cancelled; submit it again to resume");
    }
    const uint32_t expanded = sweep.stages_expanded();
    if (expanded > 0) {
      const uint32_t current = expanded - 1;
      KO_ASSIGN_OR_RETURN(v1::StageRecord stage, store_->GetStage(id, current));
      if (stage.state() != v1::DONE) {
        if (!want_shards) {
          KO_ASSIGN_OR_RETURN(bool any, store_->HasPending(id, current));
          if (any) return std::vector<v1::ShardRecord>{};
        } else {
          KO_ASSIGN_OR_RETURN(auto pending, store_->PendingShards(id, current));
          if (!pending.empty()) return pending;
        }
        if (NeedsRanking(sweep.spec().stages(current))) {
          // The RANK shard is done: its trial shards join the stage (once).
          auto ranked = store_->GetArtifact(id, RankingArtifactName(stage.name()));
          if (!ranked.ok() && ranked.status().code() != StatusCode::kNotFound) return ranked.status();
          if (!ranked.ok()) {
            if (Status extended = ExtendRankedStage(sweep, stage); !extended.ok()) {
              KO_RETURN_IF_ERROR(Fail(id, extended.message()));
              return extended;
            }
            continue;
          }
        }
        std::vector<v1::ResultRow> rows;
        auto artifacts = Finalize(sweep, current, &rows);
        if (!artifacts.ok()) {
          KO_RETURN_IF_ERROR(Fail(id, artifacts.status().message()));
          return artifacts.status();
        }
        stage.set_state(v1::DONE);
        if (expanded == static_cast<uint32_t>(sweep.spec().stages_size())) sweep.set_state(v1::DONE);
        KO_RETURN_IF_ERROR(store_->FinishStage(sweep, stage, *artifacts, rows));
        continue;
      }
    }
    if (expanded == static_cast<uint32_t>(sweep.spec().stages_size())) {
      sweep.set_state(v1::DONE);
      KO_RETURN_IF_ERROR(store_->UpdateSweep(sweep));
      continue;
    }
    auto shards = Expand(sweep.spec(), id, expanded);
    if (!shards.ok()) {
      KO_RETURN_IF_ERROR(Fail(id, shards.status().message()));
      return shards.status();
    }
    v1::StageRecord stage;
    stage.set_index(expanded);
    stage.set_name(sweep.spec().stages(expanded).name());
    stage.set_kind(StageKindName(sweep.spec().stages(expanded)));
    stage.set_state(v1::PENDING);
    stage.set_shards_total(static_cast<uint32_t>(shards->size()));
    uint64_t trials = 0;
    for (const auto& s : *shards) trials += s.trials_size();
    stage.set_trials_total(trials);
    sweep.set_stages_expanded(expanded + 1);
    KO_RETURN_IF_ERROR(store_->ExpandStage(sweep, stage, *shards));
  }
}

Status SweepEngine::ExtendRankedStage(const v1::SweepRecord& sweep, v1::StageRecord stage) const {
  const uint32_t index = stage.index();
  KO_ASSIGN_OR_RETURN(auto rankings, store_->Rankings(sweep.id(), index));
  v1::RankingArtifact artifact;
  for (v1::NeuronRanking& r : rankings) *artifact.add_rankings() = std::move(r);
  // The trial shards, as Expand makes them once the artifact exists.
  const v1::SweepSpec& spec = sweep.spec();
  v1::Shard base;
  base.set_sweep_id(sweep.id());
  base.set_stage(index);
  base.set_stage_name(stage.name());
  *base.mutable_model() = spec.model();
  *base.mutable_metrics() = spec.metrics();
  base.set_seed(spec.seed());
  Directions directions(store_, sweep.id());
  auto shards = KnockoutShards(spec, index, base, directions, &artifact, shape_);
  if (!shards.ok()) return shards.status().WithContext("stage " + stage.name());
  uint64_t trials = 0;
  for (const auto& s : *shards) trials += s.trials_size();
  stage.set_shards_total(stage.shards_total() + static_cast<uint32_t>(shards->size()));
  stage.set_trials_total(stage.trials_total() + trials);
  return store_->ExtendStage(sweep, stage, *shards,
                             {{RankingArtifactName(stage.name()), Serialize(artifact)}});
}

Status SweepEngine::Commit(const v1::ShardResult& result, uint32_t attempt) {
  return store_->CommitShard(result, attempt);
}

Status SweepEngine::Fail(const std::string& id, const std::string& error) {
  KO_ASSIGN_OR_RETURN(v1::SweepRecord sweep, store_->GetSweep(id));
  sweep.set_state(v1::FAILED);
  sweep.set_error(error);
  return store_->UpdateSweep(sweep);
}

StatusOr<std::vector<StagePlan>> PlanSweep(const v1::SweepSpec& spec, const ModelShape& shape) {
  std::vector<StagePlan> plans;
  std::map<std::string, uint64_t> candidates;  // extract stage -> layers x positions
  auto count = [&](const std::string& set) -> StatusOr<uint64_t> {
    KO_ASSIGN_OR_RETURN(auto prompts, LoadSet(spec, set));
    return static_cast<uint64_t>(prompts.size());
  };
  auto ceil_div = [](uint64_t a, uint64_t b) { return b == 0 ? 0 : (a + b - 1) / b; };
  Directions names(nullptr, "");
  for (const v1::Stage& stage : spec.stages()) {
    StagePlan plan;
    plan.name = stage.name();
    plan.kind = StageKindName(stage);
    const uint64_t per_trials = ShardTrials(spec, stage), per_prompts = ShardPrompts(spec, stage);
    if (stage.has_extract_directions()) {
      const auto& s = stage.extract_directions();
      KO_ASSIGN_OR_RETURN(uint64_t a, count(s.positive()));
      KO_ASSIGN_OR_RETURN(uint64_t b, count(s.negative()));
      plan.prompts = a + b;
      plan.shards = ceil_div(plan.prompts, per_prompts);
      candidates[stage.name()] =
          Layers(s.layers(), shape.num_layers).size() * static_cast<uint64_t>(s.positions_size());
    } else if (stage.has_select_direction()) {
      const auto& s = stage.select_direction();
      KO_ASSIGN_OR_RETURN(uint64_t a, count(s.harmful()));
      KO_ASSIGN_OR_RETURN(uint64_t b, count(s.harmless()));
      plan.prompts = a + b;
      plan.trials = 2 * candidates[s.candidates()];
      plan.shards = ceil_div(plan.trials, per_trials);
    } else if (stage.has_knockout_sweep()) {
      const auto& s = stage.knockout_sweep();
      for (const std::string& set : s.prompt_sets()) {
        KO_ASSIGN_OR_RETURN(uint64_t n, count(set));
        plan.prompts += n;
      }
      KO_ASSIGN_OR_RETURN(auto trials, KnockoutTrials(s, shape, names, nullptr, nullptr));
      plan.trials = trials.size();
      plan.shards = ceil_div(plan.trials, per_trials) + (NeedsRanking(stage) ? 1 : 0);
    } else if (stage.has_attribution_screen()) {
      const auto& s = stage.attribution_screen();
      for (const std::string& set : s.prompt_sets()) {
        KO_ASSIGN_OR_RETURN(uint64_t n, count(set));
        plan.prompts += n;
      }
      KO_ASSIGN_OR_RETURN(auto trials, ScreenTrials(spec, s, shape, names, nullptr));
      plan.trials = trials.size();
      plan.shards = ceil_div(plan.prompts, per_prompts);
    } else if (stage.has_generate()) {
      for (const std::string& set : stage.generate().prompt_sets()) {
        KO_ASSIGN_OR_RETURN(uint64_t n, count(set));
        plan.prompts += n;
      }
      plan.trials = stage.generate().conditions_size();
      plan.shards = ceil_div(plan.prompts, per_prompts);
    } else if (stage.has_orthogonalize()) {
      for (const std::string& set : stage.orthogonalize().prompt_sets()) {
        KO_ASSIGN_OR_RETURN(uint64_t n, count(set));
        plan.prompts += n;
      }
      plan.trials = 1;
      plan.shards = 1;
    }
    plans.push_back(plan);
  }
  return plans;
}

}  // namespace knockout::experiments
