// SCREEN shards (attribution_screen stages): every unit's knockout effect on a metric estimated
// from gradients (README.md). One trial per unit, its one edit being the knockout whose effect
// the score approximates (hook, units, ablation, positions; SAE latents with the error term
// kept). Per block of prompts:
//   - a clean pass caches the units' hooks and the metric (for atp and atp_star it is the
//     gradient pass itself: its taps are zeros), a patched pass (ablation `patch`: the shard's
//     patch direction ablated at every layer) the patched activations;
//   - each group of units (one hook and positions; a direction unit alone) gets its ablated
//     delta: delta = a_ablated - a_clean at the selected positions, 0 elsewhere (heads, neurons:
//     their slices of the hook; latents: in latent space, written back through W_dec / s);
//   - atp: one backward pass gives g = dM/da at every unit hook; score_u = sum delta_u . g;
//     atp_star: also one backward pass per layer l with the gradient through l's attention and
//     MLP outputs dropped (GradDrop, Kramar et al. 2024 sec. 3.1.2): score_u = sign(atp_u) x
//     mean over the L - 1 layers other than the unit's own of |atp_u with layer l dropped|;
//     integrated_gradients: per group, `steps` passes at a = a_clean + alpha delta (alpha at
//     the midpoints (k - 1/2) / steps), score_u = delta_u . mean_k g(alpha_k), each starting
//     at the group's layer from the clean residual (layer-prefix reuse);
//   - integrated gradients: per group, one more pass with the whole delta applied gives the
//     exact effect of ablating all its units at once, reported next to the sum of their
//     scores (the two agree as steps grow: completeness). First-order methods skip it (it
//     would cost a forward pass per hook).
// atp and atp_star thus cost one forward and one backward pass per block (atp_star: L more
// backward passes with their forwards), integrated gradients steps + 1 passes per group.
// A unit's own attention softmax is never linearised: delta at attn.hook_z is the head's output
// change computed from the real (zero, mean or patched) activations.
// Scores are summed per prompt set in float64 (PartialSums named in proto/protocol.h); a prompt
// whose metric or any score is not finite is left out and counted.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "proto/positions.h"
#include "proto/protocol.h"
#include "tokenizer/tokenizer.h"
#include "worker/chat/chat_generation.h"
#include "worker/executor/metrics.h"
#include "worker/executor/sae_latents.h"
#include "worker/executor/shard_common.h"
#include "worker/executor/shard_kinds.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "worker/sae/sae.h"

namespace knockout::executor::internal {
namespace {

namespace km = knockout::model;

// The edit a screen pass applies at a hook: optionally the activation detached (GradDrop),
// plus alpha x shift (the ablation delta, for integrated gradients and the exact group effect),
// plus a zero tensor that requires grad (its gradient is dM/da at this hook).
class ScreenEdit : public km::ActivationEdit {
 public:
  struct Slot {
    at::Tensor tap;
  };
  ScreenEdit(bool stop_gradient, at::Tensor shift, double alpha, std::shared_ptr<Slot> slot)
      : stop_gradient_(stop_gradient), shift_(std::move(shift)), alpha_(alpha), slot_(std::move(slot)) {}
  const char* Name() const override { return "screen"; }
  Status Validate(const km::ModelConfig&, const km::HookPoint&) const override { return Status::Ok(); }
  at::Tensor Apply(const at::Tensor& x, int64_t) const override {
    at::Tensor y = stop_gradient_ ? x.detach() : x;
    if (shift_.defined()) y = y + (shift_ * alpha_).to(y.scalar_type());
    if (slot_) {
      slot_->tap = at::zeros_like(y).requires_grad_(true);
      y = y + slot_->tap;
    }
    return y;
  }

 private:
  bool stop_gradient_;
  at::Tensor shift_;
  double alpha_;
  std::shared_ptr<Slot> slot_;
};

// Whether dropping the gradient through layer l's attention and MLP outputs zeroes the whole
// gradient at `hook` (a unit inside layer l's attention or MLP: GradDrop's own-layer term).
bool DroppedWith(const km::HookPoint& hook, int64_t l) {
  if (hook.layer != l) return false;
  return hook.kind == km::HookKind::kAttnZ || hook.kind == km::HookKind::kAttnOut ||
         hook.kind == km::HookKind::kMlpPost || hook.kind == km::HookKind::kMlpOut;
}

enum class UnitKind { kSlice, kWhole, kDirection, kLatent };

struct Unit {
  int trial = 0;       // index into shard.trials()
  UnitKind kind = UnitKind::kWhole;
  int64_t index = -1;  // head, neuron or latent
  int group = 0;
};

// Units sharing one hook and positions (a direction unit alone): one delta, one IG path.
struct Group {
  km::HookPoint hook;
  std::string name;       // hook name
  std::string positions;  // selector text
  UnitKind kind = UnitKind::kWhole;
  std::vector<int> units;  // indices into ScreenRunner::units_
  at::Tensor direction;    // kDirection: unit vector [d]
  const ShardSae* sae = nullptr;
};

class ScreenRunner {
 public:
  ScreenRunner(const LoadedModel& m, const ExecutorOptions& options, const v1::Shard& shard)
      : m_(m), model_(*m.model), config_(m.model->config()), options_(options), shard_(shard) {}

  StatusOr<v1::ShardResult> Run();

 private:
  Status Prepare();
  Status AddUnit(int trial_index);
  Status ReferenceMeans();
  Status RunBlock(int64_t p0, int64_t n);
  // A forward pass over the block with `edits` at hooks; returns the metric per prompt
  // (float64 [n], with autograd when a tap is registered).
  // `cache`: also keep the group hooks' activations (detached) there. `start_layer` > 0: begin
  // at that layer from the block's clean residual (resid_pre_; layer-prefix reuse: the layers
  // before an edit compute exactly the clean run, and no gradient is asked of them).
  StatusOr<at::Tensor> Pass(int64_t p0, int64_t n,
                            const std::vector<std::pair<km::HookPoint, std::shared_ptr<ScreenEdit>>>& edits,
                            std::map<std::string, at::Tensor>* cache = nullptr,
                            int64_t start_layer = 0);
  at::Tensor Metric(const at::Tensor& logits_last) const;
  // g at every group's hook after one backward pass (drop: the layer whose attention and MLP
  // outputs pass no gradient, -1 none). With `clean` (drop -1 only) the same pass is the clean
  // run: its activations and metric fill clean_ and clean_metric_ (the taps are zeros).
  StatusOr<std::map<std::string, at::Tensor>> Gradients(int64_t p0, int64_t n, int64_t drop,
                                                        bool clean = false);
  // Per group: scores [n, units] (float64, CPU) of `delta` against gradients at its hook.
  at::Tensor Scores(const Group& group, const at::Tensor& delta_latent_or_act,
                    const at::Tensor& grad) const;
  StatusOr<at::Tensor> Delta(const Group& group, int64_t p0, int64_t n, at::Tensor* latent_delta);
  Status StopIfAsked() const { return internal::StopIfAsked(options_); }

  const LoadedModel& m_;
  const km::Model& model_;
  const km::ModelConfig& config_;
  const ExecutorOptions& options_;
  const v1::Shard& shard_;
  const v1::ScreenRequest* request_ = nullptr;
  v1::Ablation::Kind ablation_ = v1::Ablation::ZERO;

  PromptBatch batch_, reference_;
  std::map<std::string, at::Tensor> tensors_;
  std::map<std::string, at::Tensor> masks_;  // by selector text: [P, T] bool, CPU
  at::Tensor refusal_ids_, positive_ids_, negative_ids_;
  std::vector<ShardSae> saes_;
  std::vector<Unit> units_;
  std::vector<Group> groups_;
  std::map<std::string, int> group_of_;        // "hook positions [tensor]" -> index in groups_
  std::set<std::string> hooks_;                // every group's hook
  std::map<std::string, at::Tensor> means_;    // mean_all_positions: hook -> mean activation
  std::map<std::string, at::Tensor> latent_means_;  // SAE hook -> mean latents [d_sae]
  at::Tensor patch_direction_;                 // the patched run's direction (patch)

  // Per block (cleared by RunBlock).
  std::map<std::string, at::Tensor> clean_, patched_;
  at::Tensor clean_metric_, clean_logits_;
  std::map<int64_t, at::Tensor> resid_pre_;  // integrated gradients: clean resid_pre by layer

  // Per prompt set: sums over its finite prompts.
  struct Sums {
    std::vector<double> score, score_sq;
    uint64_t prompts = 0;
    double clean = 0;
    std::map<int, std::pair<double, double>> hooks;  // group -> (effect, attributed)
  };
  std::map<std::string, Sums> sums_;
};

Status ScreenRunner::Prepare() {
  request_ = &shard_.screen();
  const std::string& method = request_->method();
  if (method != "atp" && method != "atp_star" && method != "integrated_gradients") {
    return Status::InvalidArgument("screen method " + method +
                                   " (expected atp, atp_star or integrated_gradients)");
  }
  const std::string& metric = request_->metric();
  if (metric != "refusal_score" && metric != "logit_diff" && metric != "kl") {
    return Status::InvalidArgument("screen metric " + metric +
                                   " (expected refusal_score, logit_diff or kl)");
  }
  if (metric == "kl" && method != "integrated_gradients") {
    return Status::InvalidArgument("metric kl has zero gradient at the clean run: screen it with "
                                   "integrated_gradients");
  }
  const int64_t pad_id = chat::PadTokenId(model_, *m_.tokenizer);
  KO_ASSIGN_OR_RETURN(batch_, Tokenize(m_, shard_.prompts(), pad_id));
  if (shard_.reference_prompts_size() > 0) {
    KO_ASSIGN_OR_RETURN(reference_, Tokenize(m_, shard_.reference_prompts(), pad_id));
  }
  KO_ASSIGN_OR_RETURN(tensors_, ShardTensors(shard_));
  const v1::MetricsSpec& spec = shard_.metrics();
  if (metric == "logit_diff") {
    KO_ASSIGN_OR_RETURN(auto pos, ResolveTokens(*m_.tokenizer, spec.positive_tokens(), "positive_tokens"));
    KO_ASSIGN_OR_RETURN(auto neg, ResolveTokens(*m_.tokenizer, spec.negative_tokens(), "negative_tokens"));
    if (pos.empty() || neg.empty()) {
      return Status::InvalidArgument("metric logit_diff needs positive_tokens and negative_tokens");
    }
    positive_ids_ = at::tensor(pos, at::kLong);
    negative_ids_ = at::tensor(neg, at::kLong);
  } else if (metric == "refusal_score") {
    if (spec.refusal_tokens_size() == 0) {
      return Status::InvalidArgument("metrics.refusal_tokens: empty (the refusal score needs them)");
    }
    KO_ASSIGN_OR_RETURN(auto refusal, ResolveTokens(*m_.tokenizer, spec.refusal_tokens(), "refusal_tokens"));
    refusal_ids_ = at::tensor(refusal, at::kLong);
  }
  KO_ASSIGN_OR_RETURN(saes_, LoadShardSaes(m_, shard_));
  if (!request_->patch_tensor().empty()) {
    KO_ASSIGN_OR_RETURN(patch_direction_, FindTensor(tensors_, request_->patch_tensor()));
  }
  for (int i = 0; i < shard_.trials_size(); ++i) {
    if (Status s = AddUnit(i); !s.ok()) {
      return s.WithContext("trial " + std::to_string(shard_.trials(i).index()));
    }
  }
  if (ablation_ == v1::Ablation::PATCH && !patch_direction_.defined()) {
    return Status::InvalidArgument("patch ablation without the shard's patch direction");
  }
  return Status::Ok();
}

Status ScreenRunner::AddUnit(int trial_index) {
  const v1::Trial& trial = shard_.trials(trial_index);
  if (trial.edits_size() != 1 || trial.edits(0).every_layer()) {
    return Status::InvalidArgument("a screened unit has exactly one edit at one hook");
  }
  const v1::Edit& edit = trial.edits(0);
  KO_ASSIGN_OR_RETURN(km::HookPoint hook, km::HookPoint::Parse(edit.hook(), config_.num_layers));
  const v1::Ablation::Kind kind = edit.ablation().kind();
  if (kind != v1::Ablation::ZERO && kind != v1::Ablation::MEAN_ALL_POSITIONS &&
      kind != v1::Ablation::PATCH && kind != v1::Ablation::PROJECT) {
    return Status::InvalidArgument("a screen approximates zero, mean_all_positions, patch or "
                                   "project (directions), not " +
                                   std::to_string(static_cast<int>(kind)));
  }
  if (kind != v1::Ablation::PROJECT) ablation_ = kind;
  if (kind == v1::Ablation::MEAN_ALL_POSITIONS && reference_.tokenized.empty()) {
    return Status::InvalidArgument("mean_all_positions needs reference prompts");
  }
  const std::string positions = PositionsName(edit.positions());
  if (!masks_.count(positions)) {
    KO_ASSIGN_OR_RETURN(at::Tensor mask, PositionMask(edit.positions(), batch_));
    masks_[positions] = mask;
  }
  Unit unit;
  unit.trial = trial_index;
  Group group;
  group.hook = hook;
  group.name = hook.Name();
  group.positions = positions;
  std::string key = group.name + " " + positions;
  if (edit.sae()) {
    group.sae = FindSae(saes_, hook);
    if (!group.sae) return Status::InvalidArgument("no SAE at " + group.name + " in the shard");
    if (edit.units_size() != 1) return Status::InvalidArgument("a screened latent is one latent");
    KO_RETURN_IF_ERROR(group.sae->sae->CheckLatents({edit.units(0)}));
    unit.kind = group.kind = UnitKind::kLatent;
    unit.index = edit.units(0);
  } else if (hook.kind == km::HookKind::kResidPre && kind != v1::Ablation::ZERO &&
             kind != v1::Ablation::MEAN_ALL_POSITIONS) {
    KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors_, edit.tensor()));
    if (r.numel() != config_.hidden_size) {
      return Status::InvalidArgument("direction " + edit.tensor() + " has " +
                                     std::to_string(r.numel()) + " values, the model's d_model is " +
                                     std::to_string(config_.hidden_size));
    }
    unit.kind = group.kind = UnitKind::kDirection;
    group.direction = (r / (r.norm() + 1e-8)).to(model_.device(), at::kFloat);
    key += " " + edit.tensor();
  } else if (hook.kind == km::HookKind::kAttnZ || hook.kind == km::HookKind::kMlpPost) {
    const int64_t limit =
        hook.kind == km::HookKind::kAttnZ ? config_.num_heads : config_.intermediate_size;
    if (edit.units_size() != 1 || edit.units(0) < 0 || edit.units(0) >= limit) {
      return Status::InvalidArgument("unit out of range at " + group.name);
    }
    unit.kind = group.kind = UnitKind::kSlice;
    unit.index = edit.units(0);
  } else if (hook.kind == km::HookKind::kAttnOut || hook.kind == km::HookKind::kMlpOut) {
    unit.kind = group.kind = UnitKind::kWhole;
  } else {
    return Status::InvalidArgument("hook " + group.name + " is not a screened unit's");
  }
  key += group.kind == UnitKind::kLatent ? " latent" : "";
  auto found = group_of_.find(key);
  int g = found != group_of_.end() ? found->second : -1;
  if (g < 0) {
    g = static_cast<int>(groups_.size());
    group_of_[key] = g;
    groups_.push_back(group);
    hooks_.insert(group.name);
  }
  unit.group = g;
  groups_[g].units.push_back(static_cast<int>(units_.size()));
  units_.push_back(unit);
  return Status::Ok();
}

Status ScreenRunner::ReferenceMeans() {
  if (ablation_ != v1::Ablation::MEAN_ALL_POSITIONS) return Status::Ok();
  const int64_t r = reference_.ids.size(0);
  const int64_t block = std::max<int64_t>(1, options_.max_batch_rows);
  std::map<std::string, at::Tensor> sums;
  double count = 0;
  at::NoGradGuard no_grad;
  for (int64_t r0 = 0; r0 < r; r0 += block) {
    const int64_t n = std::min(block, r - r0);
    km::HookRegistry hooks(config_);
    for (const std::string& name : hooks_) KO_RETURN_IF_ERROR(hooks.Cache(name));
    km::ForwardRequest request;
    request.input_ids = reference_.ids.narrow(0, r0, n);
    request.attention_mask = reference_.mask.narrow(0, r0, n);
    request.logits = km::ForwardRequest::Logits::kNone;
    request.hooks = &hooks;
    KO_ASSIGN_OR_RETURN(km::ForwardResult unused, model_.Forward(request));
    (void)unused;
    at::Tensor mask = reference_.mask.narrow(0, r0, n).to(model_.device(), at::kDouble);
    count += mask.sum().item<double>();
    std::set<std::string> done;
    for (const Group& group : groups_) {
      // One mean per hook: of the activation, or of the SAE's latents there.
      const std::string key = group.name + (group.sae ? "#sae" : "");
      if (!done.insert(key).second) continue;
      const at::Tensor& x = hooks.cache().at(group.name);
      at::Tensor value = (group.sae ? group.sae->sae->Encode(x) : x).to(at::kDouble);
      std::vector<int64_t> shape = {n, value.size(1)};
      shape.resize(value.dim(), 1);
      at::Tensor sum = (value * mask.view(shape)).sum(at::IntArrayRef{0, 1});
      sums[key] = sums.count(key) ? sums[key] + sum : sum;
    }
  }
  for (const auto& [key, sum] : sums) {
    at::Tensor mean = (sum / std::max(count, 1.0)).to(at::kFloat);
    if (key.size() > 4 && key.compare(key.size() - 4, 4, "#sae") == 0) {
      latent_means_[key.substr(0, key.size() - 4)] = mean;
    } else {
      means_[key] = mean;
    }
  }
  return Status::Ok();
}

at::Tensor ScreenRunner::Metric(const at::Tensor& logits_last) const {
  at::Tensor logits = logits_last.to(at::kDouble);
  const std::string& metric = request_->metric();
  if (metric == "refusal_score") return RefusalScore(logits, refusal_ids_.to(logits.device()));
  if (metric == "logit_diff") {
    return LogitDiff(logits, positive_ids_.to(logits.device()), negative_ids_.to(logits.device()));
  }
  return Kl(clean_logits_.to(logits.device()), logits);
}

StatusOr<at::Tensor> ScreenRunner::Pass(
    int64_t p0, int64_t n,
    const std::vector<std::pair<km::HookPoint, std::shared_ptr<ScreenEdit>>>& edits,
    std::map<std::string, at::Tensor>* cache, int64_t start_layer) {
  km::HookRegistry hooks(config_);
  if (cache) {
    for (const std::string& name : hooks_) KO_RETURN_IF_ERROR(hooks.Cache(name));
  }
  for (const auto& [hook, edit] : edits) {
    km::InterventionSite site;
    site.hook = hook;
    site.intervention = km::Intervention::Custom(edit);
    KO_RETURN_IF_ERROR(hooks.Intervene(std::move(site)));
  }
  km::ForwardRequest request;
  request.input_ids = batch_.ids.narrow(0, p0, n);
  request.attention_mask = batch_.mask.narrow(0, p0, n);
  request.logits = km::ForwardRequest::Logits::kLastPosition;
  request.hooks = &hooks;
  if (start_layer > 0) {
    request.start_layer = start_layer;
    request.start_residual = resid_pre_.at(start_layer);
  }
  KO_ASSIGN_OR_RETURN(km::ForwardResult out, model_.Forward(request));
  if (cache) {
    for (const auto& [name, value] : hooks.cache()) (*cache)[name] = value.detach();
  }
  return Metric(out.logits.select(1, out.logits.size(1) - 1));
}

StatusOr<std::map<std::string, at::Tensor>> ScreenRunner::Gradients(int64_t p0, int64_t n,
                                                                     int64_t drop, bool clean) {
  std::vector<std::pair<km::HookPoint, std::shared_ptr<ScreenEdit>>> edits;
  std::map<std::string, std::shared_ptr<ScreenEdit::Slot>> slots;
  std::set<std::string> seen;
  for (const Group& group : groups_) {
    if (!seen.insert(group.name).second) continue;
    auto slot = std::make_shared<ScreenEdit::Slot>();
    slots[group.name] = slot;
    edits.emplace_back(group.hook, std::make_shared<ScreenEdit>(false, at::Tensor(), 0.0, slot));
  }
  if (drop >= 0) {
    for (const km::HookPoint hook : {km::HookPoint::AttnOut(drop), km::HookPoint::MlpOut(drop)}) {
      edits.emplace_back(hook, std::make_shared<ScreenEdit>(true, at::Tensor(), 0.0, nullptr));
    }
  }
  KO_ASSIGN_OR_RETURN(at::Tensor metric, Pass(p0, n, edits, clean ? &clean_ : nullptr));
  if (clean) clean_metric_ = metric.detach().to(at::kCPU);
  metric.sum().backward();
  std::map<std::string, at::Tensor> grads;
  for (const auto& [name, slot] : slots) {
    at::Tensor g = slot->tap.grad();
    grads[name] = g.defined() ? g.detach() : at::zeros_like(slot->tap);
  }
  return grads;
}

// The group's ablation delta in the hook's activation shape [n, T, ...] (zero outside the
// selected positions and the group's units); for latents also in latent space [n, T, d_sae].
StatusOr<at::Tensor> ScreenRunner::Delta(const Group& group, int64_t p0, int64_t n,
                                         at::Tensor* latent_delta) {
  const at::Tensor& x = clean_.at(group.name);
  at::Tensor mask = masks_.at(group.positions).narrow(0, p0, n).to(x.device(), at::kFloat);
  std::vector<int64_t> mshape = {n, x.size(1)};
  if (group.kind == UnitKind::kLatent) {
    const sae::Sae& sae = *group.sae->sae;
    at::Tensor f = sae.Encode(x);  // [n, T, S] float32
    at::Tensor ablated;
    if (ablation_ == v1::Ablation::PATCH) {
      ablated = sae.Encode(patched_.at(group.name));
    } else if (ablation_ == v1::Ablation::MEAN_ALL_POSITIONS) {
      ablated = latent_means_.at(group.name).to(f.device()).expand_as(f);
    } else {
      ablated = at::zeros_like(f);
    }
    at::Tensor keep = at::zeros({sae.d_sae()}, f.options());
    for (int u : group.units) keep[units_[u].index] = 1.0;
    at::Tensor df = (ablated - f) * mask.unsqueeze(2) * keep;
    *latent_delta = df;
    at::Tensor scale = sae.Scale(x);  // [n, T, 1]
    at::Tensor dx = at::matmul(df, sae.W_dec().to(f.device(), at::kFloat)) / scale;
    return dx.view(x.sizes()).to(x.scalar_type());
  }
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor ablated;
  if (group.kind == UnitKind::kDirection) {
    const at::Tensor& r = group.direction;
    at::Tensor target = ablation_ == v1::Ablation::PATCH ? patched_.at(group.name).to(at::kFloat)
                                                         : at::zeros_like(x32);
    // Only the component along r changes: to the patched run's (patch) or to 0 (project).
    at::Tensor coeff = at::matmul(target - x32, r);  // [n, T]
    return (coeff.unsqueeze(2) * r * mask.unsqueeze(2)).to(x.scalar_type());
  }
  if (ablation_ == v1::Ablation::PATCH) {
    ablated = patched_.at(group.name).to(at::kFloat);
  } else if (ablation_ == v1::Ablation::MEAN_ALL_POSITIONS) {
    ablated = means_.at(group.name).to(x32.device()).expand_as(x32);
  } else {
    ablated = at::zeros_like(x32);
  }
  mshape.resize(x.dim(), 1);
  at::Tensor delta = (ablated - x32) * mask.view(mshape);
  if (group.kind == UnitKind::kSlice) {
    at::Tensor keep = at::zeros({x.size(2)}, delta.options());
    for (int u : group.units) keep[units_[u].index] = 1.0;
    std::vector<int64_t> kshape = {1, 1, x.size(2)};
    kshape.resize(x.dim(), 1);
    delta = delta * keep.view(kshape);
  }
  return delta.to(x.scalar_type());
}

at::Tensor ScreenRunner::Scores(const Group& group, const at::Tensor& delta,
                                const at::Tensor& grad) const {
  std::vector<int64_t> index;
  for (int u : group.units) index.push_back(units_[u].index);
  switch (group.kind) {
    case UnitKind::kLatent: {
      // dM/df_j = W_dec[j] . g / s (the error term held): g in latent space, [n, T, k], in
      // float32 (a float64 copy of a 65k-latent W_dec would be 1.2 GB), summed in float64.
      const sae::Sae& sae = *group.sae->sae;
      at::Tensor x = clean_.at(group.name);
      at::Tensor flat = sae.Flatten(grad).to(at::kFloat);
      at::Tensor w_dec = sae.W_dec().to(flat.device(), at::kFloat);
      // Every latent in index order: W_dec itself, no gathered copy.
      bool every = static_cast<int64_t>(index.size()) == sae.d_sae();
      for (size_t i = 0; every && i < index.size(); ++i) every = index[i] == static_cast<int64_t>(i);
      at::Tensor chosen = at::tensor(index, at::kLong).to(flat.device());
      at::Tensor rows = every ? w_dec : w_dec.index_select(0, chosen);
      at::Tensor gf = at::matmul(flat, rows.t()) / sae.Scale(x).to(at::kFloat);  // [n, T, k]
      at::Tensor df = every ? delta : delta.index_select(2, chosen);
      return (df.to(at::kFloat) * gf).to(at::kDouble).sum(1).to(at::kCPU);
    }
    case UnitKind::kSlice: {
      at::Tensor prod = delta.to(at::kDouble) * grad.to(at::kDouble);  // [n, T, units, (d_head)]
      if (prod.dim() == 4) prod = prod.sum(3);
      at::Tensor per = prod.sum(1);  // [n, units]
      return per.index_select(1, at::tensor(index, at::kLong).to(per.device())).to(at::kCPU);
    }
    default:
      return (delta.to(at::kDouble) * grad.to(at::kDouble))
          .sum(at::IntArrayRef{1, 2})
          .unsqueeze(1)
          .to(at::kCPU);
  }
}

Status ScreenRunner::RunBlock(int64_t p0, int64_t n) {
  clean_.clear();
  patched_.clear();
  const std::string& method = request_->method();
  const bool first_order = method != "integrated_gradients";
  // First order: the gradient pass is the clean run (one forward and one backward in all).
  std::map<std::string, at::Tensor> grads;
  if (first_order) {
    KO_ASSIGN_OR_RETURN(grads, Gradients(p0, n, -1, /*clean=*/true));
  }
  {
    at::NoGradGuard no_grad;
    km::ForwardRequest request;
    request.input_ids = batch_.ids.narrow(0, p0, n);
    request.attention_mask = batch_.mask.narrow(0, p0, n);
    if (!first_order) {
      km::HookRegistry hooks(config_);
      for (const std::string& name : hooks_) KO_RETURN_IF_ERROR(hooks.Cache(name));
      resid_pre_.clear();
      for (const Group& group : groups_) {
        if (group.hook.layer > 0) hooks.Cache(km::HookPoint::ResidPre(group.hook.layer));
      }
      request.logits = km::ForwardRequest::Logits::kLastPosition;
      request.hooks = &hooks;
      KO_ASSIGN_OR_RETURN(km::ForwardResult out, model_.Forward(request));
      clean_logits_ = out.logits.select(1, out.logits.size(1) - 1).to(at::kDouble);
      clean_ = hooks.cache();
      clean_metric_ = Metric(clean_logits_).to(at::kCPU);
      for (const Group& group : groups_) {
        const int64_t l = group.hook.layer;
        if (l > 0) resid_pre_[l] = hooks.cache().at(km::HookPoint::ResidPre(l).Name());
      }
    }
    if (ablation_ == v1::Ablation::PATCH) {
      km::HookRegistry patch(config_);
      for (const std::string& name : hooks_) KO_RETURN_IF_ERROR(patch.Cache(name));
      v1::Edit every;
      every.set_every_layer(true);
      KO_ASSIGN_OR_RETURN(auto points, EditHooks(every, config_.num_layers));
      for (const km::HookPoint& point : points) {
        km::InterventionSite site;
        site.hook = point;
        site.intervention = km::Intervention::Directional(patch_direction_.to(model_.device()));
        KO_RETURN_IF_ERROR(patch.Intervene(std::move(site)));
      }
      request.hooks = &patch;
      request.logits = km::ForwardRequest::Logits::kNone;
      request.end_layer = -1;
      KO_ASSIGN_OR_RETURN(km::ForwardResult unused, model_.Forward(request));
      (void)unused;
      patched_ = patch.cache();
    }
  }
  // Deltas per group (activation shape; latents also in latent space).
  std::vector<at::Tensor> deltas(groups_.size()), latent(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    at::NoGradGuard no_grad;
    KO_ASSIGN_OR_RETURN(deltas[gi], Delta(groups_[gi], p0, n, &latent[gi]));
  }
  auto unit_delta = [&](size_t gi) {
    return groups_[gi].kind == UnitKind::kLatent ? latent[gi] : deltas[gi];
  };
  std::vector<at::Tensor> scores(groups_.size());  // [n, units] float64 CPU
  // Integrated gradients: also the exact effect of each group's whole delta (completeness).
  std::vector<at::Tensor> effects(groups_.size());
  if (!first_order) {
    const int steps = std::max<int>(1, static_cast<int>(request_->steps()));
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      const Group& group = groups_[gi];
      at::Tensor total;
      for (int k = 0; k < steps; ++k) {
        KO_RETURN_IF_ERROR(StopIfAsked());
        const double alpha = (k + 0.5) / steps;
        auto slot = std::make_shared<ScreenEdit::Slot>();
        KO_ASSIGN_OR_RETURN(
            at::Tensor metric,
            Pass(p0, n, {{group.hook, std::make_shared<ScreenEdit>(false, deltas[gi], alpha, slot)}},
                 nullptr, std::max<int64_t>(0, group.hook.layer)));
        metric.sum().backward();
        at::Tensor g = slot->tap.grad().detach();
        total = total.defined() ? total + g.to(at::kFloat) : g.to(at::kFloat);
      }
      scores[gi] = Scores(group, unit_delta(gi), total / steps);
      at::NoGradGuard no_grad;
      KO_ASSIGN_OR_RETURN(
          at::Tensor metric,
          Pass(p0, n, {{group.hook, std::make_shared<ScreenEdit>(false, deltas[gi], 1.0, nullptr)}},
               nullptr, std::max<int64_t>(0, group.hook.layer)));
      effects[gi] = (metric.to(at::kCPU) - clean_metric_).to(at::kDouble);
    }
  } else {
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      scores[gi] = Scores(groups_[gi], unit_delta(gi), grads.at(groups_[gi].name));
    }
    if (method == "atp_star" && config_.num_layers > 1) {
      // GradDrop: |score| with each other layer's residual writes passing no gradient, averaged.
      std::vector<at::Tensor> dropped(groups_.size());
      for (int64_t l = 0; l < config_.num_layers; ++l) {
        KO_RETURN_IF_ERROR(StopIfAsked());
        KO_ASSIGN_OR_RETURN(auto g_l, Gradients(p0, n, l));
        for (size_t gi = 0; gi < groups_.size(); ++gi) {
          if (DroppedWith(groups_[gi].hook, l)) continue;  // its own write was dropped
          at::Tensor s = Scores(groups_[gi], unit_delta(gi), g_l.at(groups_[gi].name)).abs();
          dropped[gi] = dropped[gi].defined() ? dropped[gi] + s : s;
        }
      }
      for (size_t gi = 0; gi < groups_.size(); ++gi) {
        if (!dropped[gi].defined()) continue;
        const bool own = groups_[gi].hook.layer >= 0 &&
                         DroppedWith(groups_[gi].hook, groups_[gi].hook.layer);
        const double terms = static_cast<double>(config_.num_layers - (own ? 1 : 0));
        scores[gi] = at::sign(scores[gi]) * dropped[gi] / terms;
      }
    }
  }
  // Per prompt: finite check, then the sums of its set.
  for (int64_t i = 0; i < n; ++i) {
    const v1::ShardPrompt& prompt = shard_.prompts(static_cast<int>(p0 + i));
    const double clean = clean_metric_[i].item<double>();
    bool finite = std::isfinite(clean);
    for (size_t gi = 0; gi < groups_.size() && finite; ++gi) {
      finite = at::isfinite(scores[gi][i]).all().item<bool>() &&
               (!effects[gi].defined() || std::isfinite(effects[gi][i].item<double>()));
    }
    if (!finite) continue;
    Sums& sums = sums_[prompt.set()];
    if (sums.score.empty()) {
      sums.score.assign(units_.size(), 0.0);
      sums.score_sq.assign(units_.size(), 0.0);
    }
    sums.prompts += 1;
    sums.clean += clean;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      at::Tensor row = scores[gi][i].contiguous();
      const double* v = row.data_ptr<double>();
      double attributed = 0;
      for (size_t k = 0; k < groups_[gi].units.size(); ++k) {
        const Unit& unit = units_[groups_[gi].units[k]];
        sums.score[unit.trial] += v[k];
        sums.score_sq[unit.trial] += v[k] * v[k];
        attributed += v[k];
      }
      if (!effects[gi].defined()) continue;
      auto& hook = sums.hooks[static_cast<int>(gi)];
      hook.first += effects[gi][i].item<double>();
      hook.second += attributed;
    }
  }
  return Status::Ok();
}

StatusOr<v1::ShardResult> ScreenRunner::Run() {
  KO_RETURN_IF_ERROR(Prepare());
  KO_RETURN_IF_ERROR(ReferenceMeans());
  const int64_t p = batch_.ids.size(0);
  const int64_t block = std::max<int64_t>(1, options_.max_batch_rows);
  for (int64_t p0 = 0; p0 < p; p0 += block) {
    KO_RETURN_IF_ERROR(StopIfAsked());
    KO_RETURN_IF_ERROR(RunBlock(p0, std::min(block, p - p0)));
  }
  v1::ShardResult result;
  for (const auto& [set, sums] : sums_) {
    auto add = [&](const char* name, const std::vector<double>& values, uint64_t count) {
      v1::PartialSum* sum = result.add_sums();
      sum->set_layer(-1);
      sum->set_position(name);
      sum->set_set(set);
      sum->set_count(count);
      for (double v : values) sum->add_sum(v);
    };
    add(kScreenScoreSum, sums.score, sums.prompts);
    add(kScreenScoreSqSum, sums.score_sq, sums.prompts);
    add(kScreenCleanSum, {sums.clean}, sums.prompts);
    for (const auto& [gi, hook] : sums.hooks) {
      const Group& group = groups_[gi];
      std::string name = std::string(kScreenHookSumPrefix) + group.name + " " + group.positions;
      if (group.kind == UnitKind::kDirection) {
        name = std::string(kScreenHookSumPrefix) + group.name + "/" +
               shard_.trials(units_[group.units[0]].trial).edits(0).tensor() + " " + group.positions;
      }
      add(name.c_str(), {hook.first, hook.second}, sums.prompts);
    }
  }
  result.set_trials_run(static_cast<uint64_t>(shard_.trials_size()));
  return result;
}

}  // namespace

StatusOr<v1::ShardResult> RunScreen(const LoadedModel& m, const ExecutorOptions& options,
                                    const v1::Shard& shard) {
  ScreenRunner runner(m, options, shard);
  return runner.Run();
}

}  // namespace knockout::executor::internal
