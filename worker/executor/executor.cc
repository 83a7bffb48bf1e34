#include "worker/executor/executor.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>

#include "experiments/judge.h"
#include "proto/positions.h"
#include "worker/chat/chat_generation.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace knockout::executor {
namespace {

namespace km = knockout::model;
namespace kt = knockout::tokenizer;

// The shard's prompts, tokenised through the chat template and left-padded into one batch.
struct PromptBatch {
  std::vector<kt::TokenizedPrompt> tokenized;
  at::Tensor ids;   // [P, T]
  at::Tensor mask;  // [P, T]
  int64_t length = 0;
};

StatusOr<PromptBatch> Tokenize(const LoadedModel& m,
                               const google::protobuf::RepeatedPtrField<v1::ShardPrompt>& prompts,
                               int64_t pad_id) {
  PromptBatch batch;
  std::vector<std::string> instructions;
  for (const auto& p : prompts) instructions.push_back(p.instruction());
  KO_ASSIGN_OR_RETURN(batch.tokenized, chat::TokenizeInstructions(*m.tokenizer, *m.chat, instructions));
  std::vector<std::vector<int64_t>> ids;
  for (const auto& t : batch.tokenized) ids.push_back(t.ids);
  km::Batch padded = km::MakeLeftPaddedBatch(ids, pad_id, m.model->device());
  batch.ids = padded.input_ids;
  batch.mask = padded.attention_mask;
  batch.length = batch.ids.size(1);
  return batch;
}

// Bool [P, T]: the padded columns `positions` selects in every prompt (unset: all of them).
StatusOr<at::Tensor> PositionMask(const v1::Positions& positions, const PromptBatch& batch) {
  const formats::Positions selector = FromProto(positions);
  const int64_t p = static_cast<int64_t>(batch.tokenized.size());
  at::Tensor mask = at::zeros({p, batch.length}, at::kBool);
  auto a = mask.accessor<bool, 2>();
  for (int64_t i = 0; i < p; ++i) {
    auto cols = formats::ResolvePaddedPositions(selector, batch.tokenized[i].layout(), batch.length);
    if (!cols.ok()) return cols.status().WithContext("prompt " + std::to_string(i));
    for (int64_t c : *cols) a[i][c] = true;
  }
  return mask;
}

StatusOr<std::vector<int64_t>> ResolveTokens(const kt::Tokenizer& tokenizer,
                                             const google::protobuf::RepeatedPtrField<std::string>& strings,
                                             const std::string& field) {
  std::vector<int64_t> ids;
  for (const std::string& s : strings) {
    KO_ASSIGN_OR_RETURN(kt::Encoding encoding, tokenizer.Encode(s, /*add_special_tokens=*/false));
    if (encoding.ids.size() != 1) {
      return Status::InvalidArgument("metrics." + field + ": \"" + s + "\" is " +
                                     std::to_string(encoding.ids.size()) +
                                     " tokens, a metric token must be exactly one");
    }
    ids.push_back(encoding.ids[0]);
  }
  return ids;
}

StatusOr<std::map<std::string, at::Tensor>> ShardTensors(const v1::Shard& shard) {
  std::map<std::string, at::Tensor> tensors;
  for (const v1::TensorData& t : shard.tensors()) {
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    if (n != t.values_size()) {
      return Status::InvalidArgument("tensor " + t.name() + ": shape holds " + std::to_string(n) +
                                     " values, got " + std::to_string(t.values_size()));
    }
    tensors[t.name()] = at::from_blob(const_cast<float*>(t.values().data()), shape, at::kFloat).clone();
  }
  return tensors;
}

StatusOr<at::Tensor> FindTensor(const std::map<std::string, at::Tensor>& tensors,
                                const std::string& name) {
  auto it = tensors.find(name);
  if (it == tensors.end()) return Status::InvalidArgument("shard has no tensor named " + name);
  return it->second;
}

// The hook points an edit applies at: its hook, or with `every_layer` (science.md's directional
// ablation) every layer's resid_pre, attn_out and mlp_out.
StatusOr<std::vector<km::HookPoint>> EditHooks(const v1::Edit& edit, int64_t num_layers) {
  std::vector<km::HookPoint> hooks;
  if (edit.every_layer()) {
    for (int64_t l = 0; l < num_layers; ++l) {
      hooks.push_back(km::HookPoint::ResidPre(l));
      hooks.push_back(km::HookPoint::AttnOut(l));
      hooks.push_back(km::HookPoint::MlpOut(l));
    }
    return hooks;
  }
  KO_ASSIGN_OR_RETURN(km::HookPoint hook, km::HookPoint::Parse(edit.hook(), num_layers));
  hooks.push_back(hook);
  return hooks;
}

// ------------------------------------------------------------------------------------------
// Metrics at the last position

constexpr int64_t kMetricBlockRows = 32;

// log p_R - log(1 - p_R) per row, from float logits [B, V] (computed in float64).
at::Tensor RefusalScore(const at::Tensor& logits, const at::Tensor& refusal_ids) {
  at::Tensor logp = at::log_softmax(logits.to(at::kDouble), -1);
  at::Tensor log_pr = at::logsumexp(logp.index_select(1, refusal_ids), -1);
  return log_pr - at::log1p(-at::exp(log_pr));
}

at::Tensor Kl(const at::Tensor& clean_logits, const at::Tensor& logits) {
  at::Tensor p = at::softmax(clean_logits.to(at::kDouble), -1);
  at::Tensor q = at::softmax(logits.to(at::kDouble), -1);
  const double eps = 1e-6;
  return (p * (at::log(p + eps) - at::log(q + eps))).sum(-1);
}

at::Tensor LogitDiff(const at::Tensor& logits, const at::Tensor& positive, const at::Tensor& negative) {
  at::Tensor l = logits.to(at::kDouble);
  return l.index_select(1, positive).mean(-1) - l.index_select(1, negative).mean(-1);
}

// ------------------------------------------------------------------------------------------
// TRIALS shards

// What a trial needs from the clean run, for every prompt of the shard.
struct CleanRun {
  std::vector<at::Tensor> resid_pre;  // per layer [P, T, d]
  km::KVCache kv;                     // [P, ..., T, ...]
  std::map<std::string, at::Tensor> cache;  // other hooks, [P, T, ...]
  at::Tensor final_last;              // float32 [P, d]: residual after the last layer, last column
  at::Tensor scale_last;              // float32 [P, 1]
  at::Tensor logits;                  // float32 [P, V]
  at::Tensor score;                   // float64 [P]
  at::Tensor metric_direction;        // float32 [P, d]: d s / d x_final, final scale frozen
};

// One (trial, prompt) row of the stacked batch.
struct Row {
  int trial = 0;   // index into shard.trials
  int64_t prompt = 0;
  int64_t start_layer = 0;
  int64_t start_col = 0;
};

class TrialRunner {
 public:
  TrialRunner(const LoadedModel& m, const ExecutorOptions& options, const v1::Shard& shard)
      : m_(m), model_(*m.model), config_(m.model->config()), options_(options), shard_(shard) {}

  StatusOr<v1::ShardResult> Run();

 private:
  Status Prepare();
  Status CleanPass();
  Status ReferencePass();
  StatusOr<std::vector<km::InterventionSite>> Sites(const v1::Trial& trial,
                                                    const std::vector<int64_t>& prompts,
                                                    const at::Tensor& rows_mask);
  StatusOr<km::Intervention> MakeIntervention(const v1::Edit& edit, const km::HookPoint& hook,
                                              const std::vector<int64_t>& prompts);
  Status RunChunk(const std::vector<Row>& rows);
  at::Tensor Unembed(const at::Tensor& x32, const at::Tensor& scale) const;
  at::Tensor OwnWrite(const km::HookPoint& hook, const at::Tensor& ablated_last,
                      const at::Tensor& clean_last) const;
  // (layer, unit) of the downstream units whose readings a trial records.
  std::vector<std::pair<int, int>> DownstreamUnits(const v1::Trial& trial) const;

  const LoadedModel& m_;
  const km::Model& model_;
  const km::ModelConfig& config_;
  const ExecutorOptions& options_;
  const v1::Shard& shard_;

  PromptBatch batch_;
  PromptBatch reference_;
  std::map<std::string, at::Tensor> tensors_;
  std::map<std::string, at::Tensor> position_masks_;  // by positions text
  at::Tensor refusal_ids_, positive_ids_, negative_ids_;
  CleanRun clean_;
  std::map<std::string, at::Tensor> reference_cache_;  // hook -> [R, T_ref, ...]
  std::set<std::string> reference_hooks_;
  bool heads_downstream_ = false;  // downstream units are heads (else attn/mlp outputs)

  // Per row results, filled by RunChunk: values[key][trial][prompt].
  struct RowValues {
    std::map<std::string, double> values;
    std::vector<v1::UnitReading> downstream;
  };
  std::map<std::pair<int, int64_t>, RowValues> results_;
};

Status TrialRunner::Prepare() {
  const int64_t pad_id = chat::PadTokenId(model_, *m_.tokenizer);
  KO_ASSIGN_OR_RETURN(batch_, Tokenize(m_, shard_.prompts(), pad_id));
  if (shard_.reference_prompts_size() > 0) {
    KO_ASSIGN_OR_RETURN(reference_, Tokenize(m_, shard_.reference_prompts(), pad_id));
  }
  KO_ASSIGN_OR_RETURN(tensors_, ShardTensors(shard_));
  const v1::MetricsSpec& metrics = shard_.metrics();
  std::vector<int64_t> refusal;
  if (metrics.refusal_tokens_size() == 0) {
    return Status::InvalidArgument("metrics.refusal_tokens: empty (the refusal score needs them)");
  }
  KO_ASSIGN_OR_RETURN(refusal, ResolveTokens(*m_.tokenizer, metrics.refusal_tokens(), "refusal_tokens"));
  refusal_ids_ = at::tensor(refusal, at::kLong);
  if (metrics.positive_tokens_size() > 0 && metrics.negative_tokens_size() > 0) {
    KO_ASSIGN_OR_RETURN(auto pos, ResolveTokens(*m_.tokenizer, metrics.positive_tokens(), "positive_tokens"));
    KO_ASSIGN_OR_RETURN(auto neg, ResolveTokens(*m_.tokenizer, metrics.negative_tokens(), "negative_tokens"));
    positive_ids_ = at::tensor(pos, at::kLong);
    negative_ids_ = at::tensor(neg, at::kLong);
  }
  // Position masks of every selector the trials use.
  for (const v1::Trial& trial : shard_.trials()) {
    for (const v1::Edit& edit : trial.edits()) {
      const std::string key = PositionsName(edit.positions());
      if (!position_masks_.count(key)) {
        auto mask = PositionMask(edit.positions(), batch_);
        if (!mask.ok()) return mask.status().WithContext("trial " + std::to_string(trial.index()));
        position_masks_[key] = *mask;
      }
      const v1::Ablation::Kind kind = edit.ablation().kind();
      if (kind == v1::Ablation::MEAN || kind == v1::Ablation::RESAMPLE) {
        if (reference_.tokenized.empty()) {
          return Status::InvalidArgument("trial " + std::to_string(trial.index()) +
                                         ": mean/resample ablation needs reference prompts");
        }
        reference_hooks_.insert(edit.hook());
      }
    }
    for (const v1::Edit& edit : trial.edits()) {
      if (edit.hook().find("attn.hook_z") != std::string::npos) heads_downstream_ = true;
    }
  }
  return Status::Ok();
}

at::Tensor TrialRunner::Unembed(const at::Tensor& x32, const at::Tensor& scale) const {
  // The model's final norm and unembedding (model.cc) from float32 [B, d], evaluated in float64:
  // the direct and final-norm effects are differences of nearly equal scores, and the score
  // amplifies logit rounding by 1 / (1 - p_R) when a model refuses confidently.
  const km::ModelWeights& w = model_.weights();
  at::Tensor normalized = x32.to(at::kDouble) / scale.to(at::kDouble);
  return at::linear(normalized * w.final_norm.to(at::kDouble), w.lm_head.to(at::kDouble));
}

Status TrialRunner::CleanPass() {
  km::HookRegistry hooks(config_);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    hooks.Cache(km::HookPoint::ResidPre(l));
    if (shard_.compensation()) {
      hooks.Cache(km::HookPoint::AttnZ(l));
      hooks.Cache(km::HookPoint::AttnOut(l));
      hooks.Cache(km::HookPoint::MlpOut(l));
      hooks.Cache(km::HookPoint::MlpPost(l));
      hooks.Cache(km::HookPoint::ResidMid(l));
      hooks.Cache(km::HookPoint::ResidPost(l));
    }
  }
  km::ForwardRequest request;
  request.input_ids = batch_.ids;
  request.attention_mask = batch_.mask;
  request.kv_cache = &clean_.kv;
  request.logits = km::ForwardRequest::Logits::kLastPosition;
  request.hooks = &hooks;
  KO_ASSIGN_OR_RETURN(km::ForwardResult result, model_.Forward(request));
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    clean_.resid_pre.push_back(hooks.cache().at(km::HookPoint::ResidPre(l).Name()));
  }
  clean_.cache = hooks.cache();
  const int64_t t = batch_.length;
  clean_.final_last = result.residual.select(1, t - 1).to(at::kFloat);
  clean_.scale_last =
      at::sqrt(clean_.final_last.pow(2).mean(-1, /*keepdim=*/true) + config_.rms_norm_eps);
  clean_.logits = result.logits.squeeze(1);
  clean_.score = RefusalScore(clean_.logits, refusal_ids_);
  if (shard_.compensation()) {
    // d s / d logits_j = p_j (1[j in R] - p_R) / (p_R (1 - p_R)); through the unembedding and
    // the final norm's weight with the scale frozen, a direction in residual space.
    at::Tensor p = at::softmax(clean_.logits.to(at::kDouble), -1);
    at::Tensor pr = p.index_select(1, refusal_ids_).sum(-1, true);
    at::Tensor in_r = at::zeros({p.size(1)}, at::kDouble).index_fill_(0, refusal_ids_, 1.0);
    at::Tensor grad = p * (in_r.unsqueeze(0) - pr) / (pr * (1 - pr));
    const km::ModelWeights& w = model_.weights();
    at::Tensor through = at::matmul(grad, w.lm_head.to(at::kDouble));  // [P, d]
    clean_.metric_direction =
        (through * w.final_norm.to(at::kDouble) / clean_.scale_last.to(at::kDouble)).to(at::kFloat);
  }
  return Status::Ok();
}

Status TrialRunner::ReferencePass() {
  if (reference_hooks_.empty()) return Status::Ok();
  km::HookRegistry hooks(config_);
  for (const std::string& name : reference_hooks_) KO_RETURN_IF_ERROR(hooks.Cache(name));
  km::ForwardRequest request;
  request.input_ids = reference_.ids;
  request.attention_mask = reference_.mask;
  request.logits = km::ForwardRequest::Logits::kNone;
  request.hooks = &hooks;
  KO_ASSIGN_OR_RETURN(km::ForwardResult unused, model_.Forward(request));
  (void)unused;
  reference_cache_ = hooks.cache();
  return Status::Ok();
}

// Reference activations aligned to the shard's columns, counted from the prompt's end:
// column c of a T-column row reads the reference prompt's column at the same distance from
// its end. Columns where the reference prompt has no token take the reference set's mean.
// Mean ablation uses the per-column mean over the reference prompts; resample, for the row of
// prompt p, the reference prompt (p * 7919 + seed) mod R.
at::Tensor AlignReference(const at::Tensor& ref, const at::Tensor& ref_mask, int64_t t,
                          const std::vector<int64_t>& sources /* -1: mean */) {
  const int64_t r = ref.size(0), tr = ref.size(1);
  std::vector<int64_t> trailing(ref.sizes().begin() + 2, ref.sizes().end());
  at::Tensor m = ref_mask.to(ref.device(), ref.scalar_type());
  std::vector<int64_t> mshape = {r, tr};
  mshape.resize(ref.dim(), 1);
  m = m.view(mshape);
  at::Tensor count = m.sum(0).clamp_min(1);
  at::Tensor col_mean = (ref * m).sum(0) / count;  // [T_ref, ...]
  at::Tensor overall = (ref * m).sum(at::IntArrayRef{0, 1}) / m.sum().clamp_min(1);
  // Right-align to t columns.
  std::vector<int64_t> shape = {t};
  shape.insert(shape.end(), trailing.begin(), trailing.end());
  at::Tensor mean_aligned = overall.unsqueeze(0).expand(shape).clone();
  const int64_t overlap = std::min(t, tr);
  // Columns where no reference prompt has a token keep the overall mean.
  at::Tensor has = (ref_mask.sum(0) > 0).narrow(0, tr - overlap, overlap);
  at::Tensor tail = col_mean.narrow(0, tr - overlap, overlap);
  std::vector<int64_t> hshape = {overlap};
  hshape.resize(tail.dim(), 1);
  mean_aligned.narrow(0, t - overlap, overlap)
      .copy_(at::where(has.to(tail.device()).view(hshape), tail,
                       mean_aligned.narrow(0, t - overlap, overlap)));
  std::vector<at::Tensor> rows;
  for (int64_t s : sources) {
    if (s < 0) {
      rows.push_back(mean_aligned);
      continue;
    }
    at::Tensor row = mean_aligned.clone();
    at::Tensor src = ref[s].narrow(0, tr - overlap, overlap);
    at::Tensor real = ref_mask[s].narrow(0, tr - overlap, overlap).to(at::kBool).to(src.device());
    row.narrow(0, t - overlap, overlap)
        .copy_(at::where(real.view(hshape), src, row.narrow(0, t - overlap, overlap)));
    rows.push_back(row);
  }
  return at::stack(rows, 0);
}

StatusOr<km::Intervention> TrialRunner::MakeIntervention(const v1::Edit& edit,
                                                         const km::HookPoint& hook,
                                                         const std::vector<int64_t>& prompts) {
  km::Intervention intervention;
  switch (edit.ablation().kind()) {
    case v1::Ablation::ZERO:
      intervention = km::Intervention::Zero();
      break;
    case v1::Ablation::MEAN:
    case v1::Ablation::RESAMPLE: {
      const bool resample = edit.ablation().kind() == v1::Ablation::RESAMPLE;
      auto it = reference_cache_.find(edit.hook());
      if (it == reference_cache_.end()) return Status::Internal(edit.hook() + ": no reference pass");
      const int64_t r = reference_.ids.size(0);
      std::vector<int64_t> sources;
      for (int64_t p : prompts) {
        sources.push_back(resample ? static_cast<int64_t>((static_cast<uint64_t>(p) * 7919u +
                                                           shard_.seed()) % r)
                                   : -1);
      }
      intervention = km::Intervention::Resample(
          AlignReference(it->second, reference_.mask, batch_.length, sources));
      break;
    }
    case v1::Ablation::DIRECTIONAL: {
      KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors_, edit.tensor()));
      intervention = km::Intervention::Directional(r);
      break;
    }
    case v1::Ablation::ADD: {
      KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors_, edit.tensor()));
      intervention = km::Intervention::Add(r, edit.ablation().coefficient());
      break;
    }
    default:
      return Status::InvalidArgument(hook.Name() + ": edit without an ablation kind");
  }
  if (edit.units_size() > 0) {
    intervention = intervention.OnUnits(std::vector<int64_t>(edit.units().begin(), edit.units().end()));
  }
  return intervention;
}

StatusOr<std::vector<km::InterventionSite>> TrialRunner::Sites(const v1::Trial& trial,
                                                               const std::vector<int64_t>& prompts,
                                                               const at::Tensor& rows_mask) {
  std::vector<km::InterventionSite> sites;
  at::Tensor index = at::tensor(prompts, at::kLong);
  for (const v1::Edit& edit : trial.edits()) {
    at::Tensor positions =
        position_masks_.at(PositionsName(edit.positions())).index_select(0, index);
    KO_ASSIGN_OR_RETURN(std::vector<km::HookPoint> hooks, EditHooks(edit, config_.num_layers));
    for (const km::HookPoint& hook : hooks) {
      km::InterventionSite site;
      site.hook = hook;
      KO_ASSIGN_OR_RETURN(site.intervention, MakeIntervention(edit, hook, prompts));
      // Rows of other trials are untouched; positions are per row.
      site.rows = rows_mask;
      site.positions = positions;
      sites.push_back(std::move(site));
    }
  }
  return sites;
}

// The change of a unit's write into the residual stream at the last position.
at::Tensor TrialRunner::OwnWrite(const km::HookPoint& hook, const at::Tensor& ablated_last,
                                 const at::Tensor& clean_last) const {
  at::Tensor diff = (ablated_last.to(at::kFloat) - clean_last.to(at::kFloat));
  const km::LayerWeights& w = model_.weights().layers[hook.layer];
  switch (hook.kind) {
    case km::HookKind::kAttnZ:
      return at::linear(diff.flatten(1), w.o.to(at::kFloat));
    case km::HookKind::kMlpPost:
      return at::linear(diff, w.down.to(at::kFloat));
    default:
      return diff;  // resid_pre/mid/post, attn_out, mlp_out write (or are) the stream itself
  }
}

// Downstream units of the swept kind: heads of later layers for head knockouts; otherwise the
// attention and MLP outputs (unit 0 and 1) that run after the knocked-out unit.
std::vector<std::pair<int, int>> TrialRunner::DownstreamUnits(const v1::Trial& trial) const {
  std::vector<std::pair<int, int>> units;
  const int layer = trial.label().layer();
  if (heads_downstream_) {
    for (int l = layer + 1; l < config_.num_layers; ++l) {
      for (int h = 0; h < config_.num_heads; ++h) units.emplace_back(l, h);
    }
    return units;
  }
  const std::string hook = trial.edits_size() == 1 ? trial.edits(0).hook() : "";
  const bool after_attn = hook.find("hook_attn_out") != std::string::npos ||
                          hook.find("attn.hook_z") != std::string::npos ||
                          hook.find("hook_resid_mid") != std::string::npos;
  const bool after_mlp = hook.find("hook_mlp_out") != std::string::npos ||
                         hook.find("mlp.hook_post") != std::string::npos ||
                         hook.find("hook_resid_post") != std::string::npos;
  for (int l = std::max(layer, 0); l < config_.num_layers; ++l) {
    if (!(l == layer && (after_attn || after_mlp))) units.emplace_back(l, 0);
    if (!(l == layer && after_mlp)) units.emplace_back(l, 1);
  }
  return units;
}

// If `prompts` is one list of distinct prompts repeated (p0 p1 .. pk p0 p1 .. pk ...), that list;
// otherwise empty.
std::vector<int64_t> PromptCycle(const std::vector<int64_t>& prompts) {
  size_t k = 1;
  while (k < prompts.size() && prompts[k] != prompts[0]) ++k;
  if (prompts.empty() || prompts.size() % k != 0) return {};
  std::vector<int64_t> cycle(prompts.begin(), prompts.begin() + k);
  if (std::set<int64_t>(cycle.begin(), cycle.end()).size() != k) return {};
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i] != cycle[i % k]) return {};
  }
  return cycle;
}

Status TrialRunner::RunChunk(const std::vector<Row>& rows) {
  const int64_t b = static_cast<int64_t>(rows.size());
  const int64_t t = batch_.length;
  int64_t start_layer = config_.num_layers, start_col = t;
  std::vector<int64_t> prompts;
  for (const Row& r : rows) {
    start_layer = std::min(start_layer, r.start_layer);
    start_col = std::min(start_col, r.start_col);
    prompts.push_back(r.prompt);
  }
  if (!options_.reuse_prefixes) start_layer = 0, start_col = 0;
  at::Tensor index = at::tensor(prompts, at::kLong);
  at::Tensor device_index = index.to(model_.device());

  km::HookRegistry hooks(config_);
  // Trials of this chunk, with their rows.
  std::map<int, std::vector<int64_t>> trial_rows;
  for (int64_t i = 0; i < b; ++i) trial_rows[rows[i].trial].push_back(i);
  for (const auto& [trial, members] : trial_rows) {
    at::Tensor rows_mask = at::zeros({b}, at::kBool);
    for (int64_t i : members) rows_mask[i] = true;
    KO_ASSIGN_OR_RETURN(auto sites, Sites(shard_.trials(trial), prompts, rows_mask));
    for (auto& site : sites) KO_RETURN_IF_ERROR(hooks.Intervene(std::move(site)));
  }
  const bool compensation = shard_.compensation();
  if (compensation) {
    for (int64_t l = start_layer; l < config_.num_layers; ++l) {
      hooks.Cache(km::HookPoint::AttnZ(l));
      hooks.Cache(km::HookPoint::AttnOut(l));
      hooks.Cache(km::HookPoint::MlpOut(l));
      hooks.Cache(km::HookPoint::MlpPost(l));
      hooks.Cache(km::HookPoint::ResidPre(l));
      hooks.Cache(km::HookPoint::ResidMid(l));
      hooks.Cache(km::HookPoint::ResidPost(l));
    }
  }

  km::ForwardRequest request;
  km::KVCache kv;
  const int64_t new_cols = t - start_col;
  if (start_col > 0) {
    // Trials over the same prompts repeat one prompt list: the rows then share the prompts'
    // clean keys/values instead of each holding a copy (KVCache::shared_prefix).
    std::vector<int64_t> cycle = PromptCycle(prompts);
    if (!cycle.empty()) {
      kv = clean_.kv.SelectRows(at::tensor(cycle, at::kLong).to(model_.device())).Prefix(start_col);
      kv.shared_prefix = true;
    } else {
      kv = clean_.kv.SelectRows(device_index).Prefix(start_col);
    }
  }
  request.kv_cache = &kv;
  request.attention_mask = batch_.mask.index_select(0, device_index).narrow(1, start_col, new_cols);
  if (start_layer == 0) {
    request.input_ids = batch_.ids.index_select(0, device_index).narrow(1, start_col, new_cols);
  } else {
    request.start_layer = start_layer;
    request.start_residual =
        clean_.resid_pre[start_layer].index_select(0, device_index).narrow(1, start_col, new_cols);
  }
  request.logits = options_.reuse_prefixes ? km::ForwardRequest::Logits::kLastPosition
                                           : km::ForwardRequest::Logits::kAll;
  request.hooks = &hooks;
  KO_ASSIGN_OR_RETURN(km::ForwardResult result, model_.Forward(request));

  at::Tensor logits = result.logits.select(1, result.logits.size(1) - 1).to(at::kCPU);  // [B, V]
  at::Tensor clean_logits = clean_.logits.index_select(0, device_index).to(at::kCPU);
  // In blocks of rows: float64 copies of [B, vocab] logits would be large allocations that
  // glibc maps and unmaps on every chunk (page faults dominated large batches).
  std::vector<at::Tensor> score_blocks, kl_blocks;
  for (int64_t r0 = 0; r0 < b; r0 += kMetricBlockRows) {
    const int64_t n = std::min<int64_t>(kMetricBlockRows, b - r0);
    score_blocks.push_back(RefusalScore(logits.narrow(0, r0, n), refusal_ids_));
    kl_blocks.push_back(Kl(clean_logits.narrow(0, r0, n), logits.narrow(0, r0, n)));
  }
  at::Tensor score = at::cat(score_blocks);
  at::Tensor kl = at::cat(kl_blocks);
  at::Tensor clean_score = clean_.score.index_select(0, index.to(clean_.score.device())).to(at::kCPU);
  at::Tensor diff, clean_diff;
  if (positive_ids_.defined()) {
    diff = LogitDiff(logits, positive_ids_, negative_ids_);
    clean_diff = LogitDiff(clean_logits, positive_ids_, negative_ids_);
  }

  // Compensation: the unit's direct effect, the final norm's effect, downstream readings.
  at::Tensor de, norm_effect;
  std::vector<std::vector<v1::UnitReading>> readings(b);
  if (compensation) {
    at::Tensor x_abl = result.residual.select(1, new_cols - 1).to(at::kFloat);
    at::Tensor scale_abl = at::sqrt(x_abl.pow(2).mean(-1, true) + config_.rms_norm_eps);
    at::Tensor x_clean = clean_.final_last.index_select(0, device_index);
    at::Tensor scale_clean = clean_.scale_last.index_select(0, device_index);
    // Both sides through the same unembedding, so that float32 rounding cancels.
    norm_effect = RefusalScore(Unembed(x_abl, scale_abl).to(at::kCPU), refusal_ids_) -
                  RefusalScore(Unembed(x_abl, scale_clean).to(at::kCPU), refusal_ids_);
    // Own write of each row's unit (trials with one edit at one hook).
    at::Tensor delta = at::zeros_like(x_clean);
    at::Tensor has_de = at::zeros({b}, at::kBool);
    for (const auto& [trial, members] : trial_rows) {
      const v1::Trial& tr = shard_.trials(trial);
      if (tr.edits_size() != 1 || tr.edits(0).every_layer()) continue;
      KO_ASSIGN_OR_RETURN(km::HookPoint hook, km::HookPoint::Parse(tr.edits(0).hook(), config_.num_layers));
      const std::string name = hook.Name();
      at::Tensor member_index = at::tensor(members, at::kLong).to(model_.device());
      at::Tensor abl = hooks.cache().at(name).index_select(0, member_index).select(1, new_cols - 1);
      at::Tensor cln = clean_.cache.at(name)
                           .index_select(0, device_index.index_select(0, member_index))
                           .select(1, t - 1);
      delta.index_copy_(0, member_index, OwnWrite(hook, abl, cln));
      for (int64_t i : members) has_de[i] = true;
    }
    at::Tensor de_logits = Unembed(x_clean + delta, scale_clean).to(at::kCPU);
    // Against the clean run through the same float64 unembedding: delta = 0 gives DE = 0 exactly.
    at::Tensor clean_base = RefusalScore(Unembed(x_clean, scale_clean).to(at::kCPU), refusal_ids_);
    de = at::where(has_de, RefusalScore(de_logits, refusal_ids_) - clean_base,
                   at::full({b}, std::numeric_limits<double>::quiet_NaN(), at::kDouble));

    // Downstream readings: out_v . m, with m = metric_direction of the row's prompt; [B, L, U]
    // with U = heads, or 2 (attention, MLP output).
    at::Tensor m = clean_.metric_direction.index_select(0, device_index);  // [B, d]
    std::vector<at::Tensor> clean_layers, ablated_layers;
    for (int l = 0; l < config_.num_layers; ++l) {
      auto read = [&](const std::string& name, bool from_trial) {
        at::Tensor x = from_trial ? hooks.cache().at(name).select(1, new_cols - 1)
                                  : clean_.cache.at(name).index_select(0, device_index).select(1, t - 1);
        return x.to(at::kFloat);
      };
      const bool ran = l >= start_layer;
      if (heads_downstream_) {
        const int64_t h = config_.num_heads, dh = config_.head_dim;
        at::Tensor u = at::matmul(m, model_.weights().layers[l].o.to(at::kFloat)).view({b, h, dh});
        const std::string name = km::HookPoint::AttnZ(l).Name();
        clean_layers.push_back((read(name, false) * u).sum(-1));
        ablated_layers.push_back(ran ? (read(name, true) * u).sum(-1) : clean_layers.back());
      } else {
        std::vector<at::Tensor> c, a;
        for (const std::string& name : {km::HookPoint::AttnOut(l).Name(), km::HookPoint::MlpOut(l).Name()}) {
          c.push_back((read(name, false) * m).sum(-1));
          a.push_back(ran ? (read(name, true) * m).sum(-1) : c.back());
        }
        clean_layers.push_back(at::stack(c, 1));
        ablated_layers.push_back(at::stack(a, 1));
      }
    }
    at::Tensor clean_read = at::stack(clean_layers, 1).to(at::kCPU, at::kDouble).contiguous();
    at::Tensor ablated_read = at::stack(ablated_layers, 1).to(at::kCPU, at::kDouble).contiguous();
    auto cr = clean_read.accessor<double, 3>();
    auto ar = ablated_read.accessor<double, 3>();
    for (int64_t i = 0; i < b; ++i) {
      for (const auto& [l, unit] : DownstreamUnits(shard_.trials(rows[i].trial))) {
        v1::UnitReading reading;
        reading.set_layer(l);
        reading.set_unit(unit);
        reading.set_clean(cr[i][l][unit]);
        reading.set_ablated(ar[i][l][unit]);
        readings[i].push_back(reading);
      }
    }
  }

  auto column = [](const at::Tensor& x) {
    at::Tensor c = x.to(at::kCPU, at::kDouble).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  const std::vector<double> score_v = column(score), clean_v = column(clean_score), kl_v = column(kl);
  std::vector<double> diff_v, clean_diff_v, de_v, norm_v;
  if (diff.defined()) diff_v = column(diff), clean_diff_v = column(clean_diff);
  if (compensation) de_v = column(de), norm_v = column(norm_effect);
  for (int64_t i = 0; i < b; ++i) {
    RowValues& out = results_[{rows[i].trial, rows[i].prompt}];
    out.values["refusal_score"] = score_v[i];
    out.values["clean_refusal_score"] = clean_v[i];
    out.values["te"] = score_v[i] - clean_v[i];
    out.values["kl"] = kl_v[i];
    if (!diff_v.empty()) {
      out.values["logit_diff"] = diff_v[i];
      out.values["clean_logit_diff"] = clean_diff_v[i];
    }
    if (compensation) {
      if (std::isfinite(de_v[i])) out.values["de"] = de_v[i];
      out.values["norm_effect"] = norm_v[i];
      out.downstream = std::move(readings[i]);
    }
  }
  return Status::Ok();
}

StatusOr<v1::ShardResult> TrialRunner::Run() {
  KO_RETURN_IF_ERROR(Prepare());
  KO_RETURN_IF_ERROR(CleanPass());
  KO_RETURN_IF_ERROR(ReferencePass());

  // Rows: every (trial, prompt of the trial's set), with where the trial first intervenes.
  std::vector<Row> rows;
  for (int ti = 0; ti < shard_.trials_size(); ++ti) {
    const v1::Trial& trial = shard_.trials(ti);
    int64_t layer = config_.num_layers;
    for (const v1::Edit& edit : trial.edits()) {
      if (edit.every_layer()) {
        layer = 0;
        continue;
      }
      KO_ASSIGN_OR_RETURN(km::HookPoint hook, km::HookPoint::Parse(edit.hook(), config_.num_layers));
      layer = std::min<int64_t>(layer, hook.layer < 0 ? 0 : hook.layer);
    }
    if (trial.edits_size() == 0) layer = config_.num_layers - 1;  // the clean run
    for (int64_t p = 0; p < shard_.prompts_size(); ++p) {
      if (!trial.prompt_set().empty() && shard_.prompts(p).set() != trial.prompt_set()) continue;
      int64_t col = batch_.length - 1;
      for (const v1::Edit& edit : trial.edits()) {
        at::Tensor mask = position_masks_.at(PositionsName(edit.positions()))[p];
        at::Tensor cols = mask.nonzero();
        if (cols.numel() == 0) {
          return Status::InvalidArgument("trial " + std::to_string(trial.index()) +
                                         ": positions select nothing in prompt " + std::to_string(p));
        }
        col = std::min(col, cols.min().item<int64_t>());
      }
      rows.push_back({ti, p, layer, col});
    }
  }
  if (options_.reuse_prefixes) {
    std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
      return a.start_layer != b.start_layer ? a.start_layer < b.start_layer : a.start_col < b.start_col;
    });
    // Chunks hold whole trials when every trial has as many rows, so that a chunk's rows repeat
    // one prompt list (shared prefix keys/values).
    std::map<int, size_t> per_trial;
    for (const Row& r : rows) ++per_trial[r.trial];
    size_t chunk = static_cast<size_t>(options_.max_batch_rows);
    const size_t q = per_trial.empty() ? 1 : per_trial.begin()->second;
    if (std::all_of(per_trial.begin(), per_trial.end(), [&](const auto& e) { return e.second == q; })) {
      chunk = std::max(q, chunk / q * q);
    }
    for (size_t begin = 0; begin < rows.size(); begin += chunk) {
      const size_t end = std::min(rows.size(), begin + chunk);
      KO_RETURN_IF_ERROR(RunChunk(std::vector<Row>(rows.begin() + begin, rows.begin() + end)));
    }
  } else {
    // The naive reference: one trial at a time, a full forward over its prompts.
    size_t begin = 0;
    while (begin < rows.size()) {
      size_t end = begin;
      while (end < rows.size() && rows[end].trial == rows[begin].trial) ++end;
      KO_RETURN_IF_ERROR(RunChunk(std::vector<Row>(rows.begin() + begin, rows.begin() + end)));
      begin = end;
    }
  }

  // Per-prompt rows, then per (trial, set) aggregates (means; readings averaged).
  v1::ShardResult out;
  struct Aggregate {
    std::map<std::string, double> sums;
    std::map<std::string, int> counts;
    std::vector<v1::UnitReading> downstream;
    int n = 0;
  };
  std::map<std::pair<int, std::string>, Aggregate> aggregates;
  for (const auto& [key, values] : results_) {
    const auto& [ti, p] = key;
    const v1::Trial& trial = shard_.trials(ti);
    const v1::ShardPrompt& prompt = shard_.prompts(p);
    v1::ResultRow* row = out.add_rows();
    row->set_trial(trial.index());
    row->set_prompt_set(prompt.set());
    row->set_prompt(static_cast<int32_t>(prompt.index()));
    for (const auto& [k, v] : values.values) (*row->mutable_values())[k] = v;
    Aggregate& a = aggregates[{ti, prompt.set()}];
    for (const auto& [k, v] : values.values) {
      a.sums[k] += v;
      a.counts[k] += 1;
    }
    if (a.downstream.empty()) {
      a.downstream = values.downstream;
      for (auto& r : a.downstream) r.set_clean(0), r.set_ablated(0);
    }
    for (size_t i = 0; i < values.downstream.size(); ++i) {
      a.downstream[i].set_clean(a.downstream[i].clean() + values.downstream[i].clean());
      a.downstream[i].set_ablated(a.downstream[i].ablated() + values.downstream[i].ablated());
    }
    ++a.n;
  }
  for (auto& [key, a] : aggregates) {
    v1::ResultRow* row = out.add_rows();
    row->set_trial(shard_.trials(key.first).index());
    row->set_prompt_set(key.second);
    row->set_prompt(-1);
    for (const auto& [k, v] : a.sums) (*row->mutable_values())[k] = v / a.counts[k];
    (*row->mutable_values())["prompts"] = a.n;
    for (auto& r : a.downstream) {
      r.set_clean(r.clean() / a.n);
      r.set_ablated(r.ablated() / a.n);
      *row->add_downstream() = r;
    }
  }
  out.set_trials_run(shard_.trials_size());
  return out;
}

// ------------------------------------------------------------------------------------------
// EXTRACT shards: float64 partial sums of the activation at each (layer, position selector)

StatusOr<v1::ShardResult> RunExtract(const LoadedModel& m, const v1::Shard& shard) {
  const km::Model& model = *m.model;
  const int64_t n_layers = model.config().num_layers;
  KO_ASSIGN_OR_RETURN(PromptBatch batch, Tokenize(m, shard.prompts(), chat::PadTokenId(model, *m.tokenizer)));
  const std::string hook_kind = shard.hook().empty() ? "resid_pre" : shard.hook();
  std::vector<int64_t> layers(shard.layers().begin(), shard.layers().end());
  if (layers.empty()) {
    layers.resize(n_layers);
    std::iota(layers.begin(), layers.end(), 0);
  }
  km::HookRegistry hooks(model.config());
  std::vector<std::string> names;
  for (int64_t l : layers) {
    const std::string name = "blocks." + std::to_string(l) + ".hook_" + hook_kind;
    KO_RETURN_IF_ERROR(hooks.Cache(name));
    names.push_back(name);
  }
  km::ForwardRequest request;
  request.input_ids = batch.ids;
  request.attention_mask = batch.mask;
  request.logits = km::ForwardRequest::Logits::kNone;
  request.hooks = &hooks;
  int64_t last = 0;
  for (int64_t l : layers) last = std::max(last, l);
  request.end_layer = last + 1;
  KO_ASSIGN_OR_RETURN(km::ForwardResult unused, model.Forward(request));
  (void)unused;

  v1::ShardResult out;
  for (const v1::Positions& positions : shard.positions()) {
    KO_ASSIGN_OR_RETURN(at::Tensor mask, PositionMask(positions, batch));
    at::Tensor weights = mask.to(at::kDouble);
    weights = weights / weights.sum(1, true).clamp_min(1);  // mean over a selector's positions
    const std::string position = PositionsName(positions);
    for (size_t li = 0; li < layers.size(); ++li) {
      at::Tensor act = hooks.cache().at(names[li]).to(at::kCPU, at::kDouble);  // [P, T, d]
      at::Tensor per_prompt = (act * weights.unsqueeze(-1)).sum(1);             // [P, d]
      std::map<std::string, std::vector<int64_t>> by_set;
      for (int p = 0; p < shard.prompts_size(); ++p) by_set[shard.prompts(p).set()].push_back(p);
      for (const auto& [set, members] : by_set) {
        at::Tensor sum = per_prompt.index_select(0, at::tensor(members, at::kLong)).sum(0).contiguous();
        v1::PartialSum* ps = out.add_sums();
        ps->set_layer(static_cast<int32_t>(layers[li]));
        ps->set_position(position);
        ps->set_set(set);
        ps->set_count(members.size());
        const double* data = sum.data_ptr<double>();
        ps->mutable_sum()->Add(data, data + sum.numel());
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// GENERATE and ORTHOGONALIZE shards

StatusOr<std::vector<v1::CompletionRecord>> Generate(const km::Model& model, const LoadedModel& m,
                                                     const v1::Shard& shard, km::HookRegistry* hooks,
                                                     const std::string& condition,
                                                     int64_t batch_size) {
  std::vector<std::string> instructions;
  for (const auto& p : shard.prompts()) instructions.push_back(p.instruction());
  KO_ASSIGN_OR_RETURN(auto tokenized, chat::TokenizeInstructions(*m.tokenizer, *m.chat, instructions));
  chat::ChatGenerationOptions options;
  options.max_new_tokens = shard.max_new_tokens() > 0 ? shard.max_new_tokens() : 64;
  options.batch_size = batch_size;
  options.hooks = hooks;
  KO_ASSIGN_OR_RETURN(auto completions, chat::GenerateCompletions(model, *m.tokenizer, tokenized, options));
  std::vector<v1::CompletionRecord> records;
  for (size_t i = 0; i < completions.size(); ++i) {
    v1::CompletionRecord r;
    r.set_set(shard.prompts(i).set());
    r.set_prompt(shard.prompts(i).index());
    r.set_condition(condition);
    r.set_instruction(shard.prompts(i).instruction());
    r.set_text(completions[i].text);
    r.set_refused(experiments::IsRefusal(completions[i].text));
    records.push_back(std::move(r));
  }
  return records;
}

// Mean next-token cross-entropy (nats) of the reference prompts read as plain text (no chat
// template, the tokenizer's BOS policy), under the registry's interventions at every position.
StatusOr<std::pair<double, int64_t>> CrossEntropy(const km::Model& model, const LoadedModel& m,
                                                  const v1::Shard& shard, km::HookRegistry* hooks,
                                                  int64_t batch_size) {
  std::vector<std::vector<int64_t>> texts;
  for (const auto& p : shard.reference_prompts()) {
    KO_ASSIGN_OR_RETURN(kt::Encoding encoding, m.tokenizer->Encode(p.instruction(), true));
    if (encoding.ids.size() >= 2) texts.push_back(encoding.ids);
  }
  double total = 0;
  int64_t tokens = 0;
  const int64_t pad_id = chat::PadTokenId(model, *m.tokenizer);
  for (size_t begin = 0; begin < texts.size(); begin += batch_size) {
    const size_t end = std::min(texts.size(), begin + static_cast<size_t>(batch_size));
    std::vector<std::vector<int64_t>> part(texts.begin() + begin, texts.begin() + end);
    km::Batch batch = km::MakeLeftPaddedBatch(part, pad_id, model.device());
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.hooks = hooks;
    KO_ASSIGN_OR_RETURN(km::ForwardResult result, model.Forward(request));
    at::Tensor logp = at::log_softmax(result.logits.to(at::kDouble), -1);
    const int64_t t = batch.input_ids.size(1);
    at::Tensor targets = batch.input_ids.narrow(1, 1, t - 1).unsqueeze(-1);
    at::Tensor nll = -logp.narrow(1, 0, t - 1).gather(-1, targets).squeeze(-1);
    // A pair counts where both the predicting and the predicted column are real tokens.
    at::Tensor real = (batch.attention_mask.narrow(1, 0, t - 1) * batch.attention_mask.narrow(1, 1, t - 1))
                          .to(at::kDouble);
    total += (nll * real).sum().item<double>();
    tokens += real.sum().item<double>();
  }
  return std::make_pair(tokens > 0 ? total / tokens : std::nan(""), tokens);
}

StatusOr<v1::ShardResult> RunGenerate(const LoadedModel& m, const v1::Shard& shard,
                                      int64_t batch_size) {
  const km::Model& model = *m.model;
  KO_ASSIGN_OR_RETURN(auto tensors, ShardTensors(shard));
  v1::ShardResult out;
  for (const v1::Trial& trial : shard.trials()) {
    km::HookRegistry hooks(model.config());
    for (const v1::Edit& edit : trial.edits()) {
      KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors, edit.tensor()));
      KO_ASSIGN_OR_RETURN(std::vector<km::HookPoint> points, EditHooks(edit, model.config().num_layers));
      km::Intervention intervention;
      if (edit.ablation().kind() == v1::Ablation::DIRECTIONAL) {
        intervention = km::Intervention::Directional(r);
      } else if (edit.ablation().kind() == v1::Ablation::ADD) {
        intervention = km::Intervention::Add(r, edit.ablation().coefficient());
      } else {
        return Status::InvalidArgument("generate condition " + trial.label().role() +
                                       ": only directional ablation and addition are supported");
      }
      for (const km::HookPoint& point : points) {
        km::InterventionSite site;
        site.hook = point;
        site.intervention = intervention;
        KO_RETURN_IF_ERROR(hooks.Intervene(std::move(site)));
      }
    }
    KO_ASSIGN_OR_RETURN(auto records, Generate(model, m, shard, &hooks, trial.label().role(), batch_size));
    for (auto& r : records) *out.add_completions() = std::move(r);
    if (shard.reference_prompts_size() > 0 && !shard.metrics().text_set().empty()) {
      KO_ASSIGN_OR_RETURN(auto ce, CrossEntropy(model, m, shard, &hooks, batch_size));
      v1::ResultRow* row = out.add_rows();
      row->set_trial(trial.index());
      row->set_prompt_set(shard.metrics().text_set());
      row->set_prompt(-1);
      (*row->mutable_values())["cross_entropy"] = ce.first;
      (*row->mutable_values())["tokens"] = static_cast<double>(ce.second);
    }
  }
  out.set_trials_run(shard.trials_size());
  return out;
}

// W <- W - r_hat r_hat^T W for the embedding (rows are residual vectors) and every matrix that
// writes to the residual stream (o_proj, down_proj); biases untouched, as in the reference.
StatusOr<v1::ShardResult> RunOrthogonalize(const LoadedModel& m, const v1::Shard& shard,
                                           int64_t batch_size) {
  namespace fs = std::filesystem;
  if (shard.tensors_size() != 1) return Status::InvalidArgument("orthogonalize needs one direction");
  KO_ASSIGN_OR_RETURN(auto tensors, ShardTensors(shard));
  at::Tensor r = tensors.begin()->second.to(at::kDouble);
  at::Tensor r_hat = r / (r.norm() + 1e-8);
  const km::Model& model = *m.model;
  km::ModelWeights edited = model.weights();
  auto project_out = [&](const at::Tensor& w_out_in) {  // [d, in]: the output axis is 0
    at::Tensor w = w_out_in.to(at::kDouble);
    return (w - at::outer(r_hat, at::matmul(r_hat, w))).to(w_out_in.scalar_type());
  };
  const bool tied = model.config().tie_word_embeddings;
  edited.embed = project_out(model.weights().embed.t()).t().contiguous();
  if (tied) edited.lm_head = edited.embed;
  for (size_t l = 0; l < edited.layers.size(); ++l) {
    edited.layers[l].o = project_out(model.weights().layers[l].o);
    edited.layers[l].down = project_out(model.weights().layers[l].down);
  }
  KO_ASSIGN_OR_RETURN(auto edited_model, km::Model::FromWeights(model.config(), std::move(edited)));

  // Written to a staging directory and renamed: a crash leaves no half-written checkpoint.
  const fs::path output(shard.output());
  const fs::path staging = output.string() + ".staging";
  std::error_code ec;
  fs::remove_all(staging, ec);
  fs::create_directories(staging, ec);
  if (ec) return Status::IOError(staging.string() + ": " + ec.message());
  KO_RETURN_IF_ERROR(edited_model->Save(staging.string(), at::kFloat));
  for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path source = fs::path(m.path) / file;
    if (fs::exists(source)) fs::copy_file(source, staging / file, fs::copy_options::overwrite_existing, ec);
    if (ec) return Status::IOError((staging / file).string() + ": " + ec.message());
  }
  if (fs::exists(output)) {
    if (!fs::exists(output / ".knockout-orthogonalized")) {
      return Status::FailedPrecondition(output.string() +
                                        ": exists and was not written by knockout; not replacing it");
    }
    fs::remove_all(output, ec);
  }
  {
    std::FILE* marker = std::fopen((staging / ".knockout-orthogonalized").c_str(), "w");
    if (marker) std::fclose(marker);
  }
  fs::rename(staging, output, ec);
  if (ec) return Status::IOError(output.string() + ": " + ec.message());

  // Load the checkpoint back through the runtime and evaluate it by generation.
  v1::ModelRef ref;
  ref.set_path(output.string());
  ref.set_dtype(model.dtype() == at::kFloat ? "float32" : model.dtype() == at::kBFloat16 ? "bfloat16" : "float16");
  ref.set_device(model.device().str());
  KO_ASSIGN_OR_RETURN(LoadedModel reloaded, LoadModel(ref));
  v1::ShardResult out;
  KO_ASSIGN_OR_RETURN(auto records, Generate(*reloaded.model, reloaded, shard, nullptr, "orthogonalized", batch_size));
  for (auto& rec : records) *out.add_completions() = std::move(rec);
  out.set_trials_run(1);
  return out;
}

}  // namespace

LoadedModel::LoadedModel() = default;
LoadedModel::~LoadedModel() = default;
LoadedModel::LoadedModel(LoadedModel&&) noexcept = default;
LoadedModel& LoadedModel::operator=(LoadedModel&&) noexcept = default;

StatusOr<LoadedModel> LoadModel(const v1::ModelRef& ref) {
  LoadedModel loaded;
  loaded.path = ref.path();
  km::LoadOptions options;
  KO_ASSIGN_OR_RETURN(options.dtype, km::ParseComputeDType(ref.dtype().empty() ? "float32" : ref.dtype()));
  KO_ASSIGN_OR_RETURN(options.device, km::ParseDevice(ref.device().empty() ? "cpu" : ref.device()));
  KO_ASSIGN_OR_RETURN(loaded.model, km::Model::Load(ref.path(), options));
  KO_ASSIGN_OR_RETURN(loaded.tokenizer, kt::Tokenizer::Load(ref.path()));
  StatusOr<kt::ChatTemplate> chat = ref.chat_template().empty()
                                        ? kt::ChatTemplate::Detect(*loaded.tokenizer)
                                        : kt::ChatTemplate::Custom(ref.chat_template());
  if (!chat.ok()) return chat.status().WithContext(ref.path() + ": chat template");
  loaded.chat = std::make_unique<kt::ChatTemplate>(std::move(*chat));
  return loaded;
}

StatusOr<v1::ShardResult> ShardExecutor::Run(const v1::Shard& shard) const {
  const auto start = std::chrono::steady_clock::now();
  StatusOr<v1::ShardResult> result = Status::Internal("unreachable");
  try {
    switch (shard.kind()) {
      case v1::Shard::EXTRACT:
        result = RunExtract(model_, shard);
        break;
      case v1::Shard::TRIALS: {
        TrialRunner runner(model_, options_, shard);
        result = runner.Run();
        break;
      }
      case v1::Shard::GENERATE:
        result = RunGenerate(model_, shard, options_.generation_batch);
        break;
      case v1::Shard::ORTHOGONALIZE:
        result = RunOrthogonalize(model_, shard, options_.generation_batch);
        break;
      default:
        return Status::InvalidArgument("shard " + std::to_string(shard.index()) + ": no kind");
    }
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("shard failed in LibTorch: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Status::Internal(std::string("shard failed: ") + e.what());
  }
  if (!result.ok()) {
    return result.status().WithContext("shard " + shard.stage_name() + "/" +
                                       std::to_string(shard.index()));
  }
  result->set_sweep_id(shard.sweep_id());
  result->set_stage(shard.stage());
  result->set_index(shard.index());
  result->set_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return result;
}

}  // namespace knockout::executor
