// TRIALS shards (knockout sweeps, direction selection): the batched, prefix-reusing trial runner.
//
// Memory is bounded by the block size, not by the shard's prompt count: prompts are processed
// in blocks of at most ExecutorOptions::max_batch_rows. Each block gets its own clean pass
// (residual stream and keys/values of its prompts, the compensation hooks at the last column
// only), then every trial's rows over the block's prompts run in chunks; per-prompt results are
// kept (they are the shard's result) and aggregated at the end. The reference (mean) pass also
// runs in blocks and keeps only the means; resample sources are computed per block.
// SAE latent edits (Edit.sae) are interventions like any other (worker/sae, error term kept);
// backups (Shard.backups) read the latents of the SAEs after a trial's last edit: clean in the
// block's clean pass, ablated from the chunk's cached hooks, summed per (trial, prompt set) in
// dense float64 vectors, and the top latents by mean rise go into the aggregate row (README.md).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "worker/chat/chat_generation.h"
#include "proto/positions.h"
#include "worker/executor/metrics.h"
#include "worker/executor/sae_latents.h"
#include "worker/executor/shard_common.h"
#include "worker/executor/shard_kinds.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "worker/sae/sae.h"
#include "tokenizer/tokenizer.h"

namespace knockout::executor::internal {
namespace {

namespace km = knockout::model;

// A downstream unit whose direct effect a trial reads (UnitReading).
struct Downstream {
  v1::UnitReading::Kind kind;
  int layer;
  int unit;
};

// What a trial needs, worked out once per shard.
struct TrialPlan {
  int64_t start_layer = 0;
  std::vector<int64_t> prompts;  // shard prompt indices the trial runs on
  bool has_de = false;           // one edit at one hook: its own change of write is defined
  km::HookPoint own_hook;
  std::vector<Downstream> downstream;
  bool reads_heads = false;
  // Backups: the shard's SAEs (indices into TrialRunner::saes_) that read a hook strictly after
  // the trial's last edited hook, in forward order (HookPoint ordering).
  std::vector<int> backup_saes;
};

// The downstream units of a trial follow from its own unit alone (never from other trials of
// its shard): every write to the residual stream made after the knocked-out unit. For a head
// at layer l: the heads of later layers and the MLP outputs of layers >= l (the other heads of
// layer l read the same input and do not change). After an MLP-side unit (neuron, mlp_out,
// resid_post) of layer l: attention and MLP outputs of later layers. After attn_out/resid_mid
// of layer l: the MLP output of layer l, then later layers. A resid_pre edit at l: layers >= l.
// Directional ablation at every layer (or several edits at once) has no single unit: no
// readings, and no DE.
std::vector<Downstream> DownstreamUnits(const TrialPlan& plan, const km::ModelConfig& config) {
  std::vector<Downstream> units;
  if (!plan.has_de) return units;
  const km::HookPoint& hook = plan.own_hook;
  const int layer = static_cast<int>(std::max<int64_t>(hook.layer, 0));
  const int n = static_cast<int>(config.num_layers);
  if (hook.kind == km::HookKind::kAttnZ) {
    for (int l = layer; l < n; ++l) {
      if (l > layer) {
        for (int h = 0; h < config.num_heads; ++h) units.push_back({v1::UnitReading::HEAD, l, h});
      }
      units.push_back({v1::UnitReading::MLP_OUT, l, -1});
    }
    return units;
  }
  const bool after_mlp = hook.kind == km::HookKind::kMlpPost || hook.kind == km::HookKind::kMlpOut ||
                         hook.kind == km::HookKind::kResidPost;
  const bool after_attn = hook.kind == km::HookKind::kAttnOut || hook.kind == km::HookKind::kResidMid;
  for (int l = layer; l < n; ++l) {
    if (!(l == layer && (after_attn || after_mlp))) units.push_back({v1::UnitReading::ATTN_OUT, l, -1});
    if (!(l == layer && after_mlp)) units.push_back({v1::UnitReading::MLP_OUT, l, -1});
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

// One (trial, prompt) row of the stacked batch.
struct Row {
  int trial = 0;        // index into shard.trials
  int64_t prompt = 0;   // shard prompt index
  int64_t start_layer = 0;
  int64_t start_col = 0;
};

// The clean run of a block of prompts.
struct Block {
  std::vector<int64_t> prompts;        // shard prompt indices
  std::map<int64_t, int64_t> local;    // shard prompt index -> row of the block's tensors
  std::vector<at::Tensor> resid_pre;   // per layer [Pb, T, d]
  km::KVCache kv;
  std::map<std::string, at::Tensor> last;  // compensation hooks at the last column, [Pb, ...]
  at::Tensor final_last;               // float32 [Pb, d]: residual after the last layer, last column
  at::Tensor scale_last;               // float32 [Pb, 1]
  at::Tensor metric_direction;         // float32 [Pb, d]
  std::map<std::string, at::Tensor> resample;  // hook -> [Pb, T, ...] source per block prompt
  // Backups: per SAE (index into TrialRunner::saes_) read by some trial, the clean run's
  // activation at its hook and its latents' clean readings.
  struct Latents {
    at::Tensor act;   // [Pb, T, ...] the hook's clean activation (compute dtype)
    at::Tensor mean;  // float32 [Pb, d_sae]: mean over the read positions
    at::Tensor proj;  // float32 [Pb, d_sae]: write_j . m (m: the prompt's metric direction)
    at::Tensor de;    // float32 [Pb, d_sae]: f_j(last) * proj / s(last), the clean direct effect
  };
  std::map<int, Latents> latents;
};

class TrialRunner {
 public:
  TrialRunner(const LoadedModel& m, const ExecutorOptions& options, const v1::Shard& shard)
      : m_(m), model_(*m.model), config_(m.model->config()), options_(options), shard_(shard),
        head_(*m.model) {}

  StatusOr<v1::ShardResult> Run();

 private:
  Status Prepare();
  Status PlanTrials();
  Status ReferenceMeans();
  StatusOr<Block> CleanPass(const std::vector<int64_t>& prompts);
  Status ResampleSources(Block* block);
  // One chunk of rows in one forward pass.
  struct Chunk {
    explicit Chunk(const km::ModelConfig& config) : hooks(config) {}
    std::vector<Row> rows;
    std::vector<int64_t> prompts;              // shard prompt index per row
    at::Tensor local_index;                    // block row per row (model device)
    std::map<int, std::vector<int64_t>> trial_rows;
    int64_t start_layer = 0;
    int64_t new_cols = 0;                      // columns the pass recomputed
    bool reads_heads = false;
    std::set<int> backup_saes;                 // SAEs some row of the chunk reads backups of
    km::HookRegistry hooks;                    // its interventions and caches
    at::Tensor x_ablated;                      // float32 [B, d]: final residual, last column
  };
  struct ChunkMetrics {
    std::vector<double> score, clean, kl, diff, clean_diff, de, norm;
    std::vector<bool> has_de;
  };
  Status RunBlock(Block& block);
  Status RunChunk(const Block& block, const std::vector<Row>& rows);
  Status ForwardChunk(const Block& block, const std::vector<Row>& rows, Chunk* chunk);
  ChunkMetrics ComputeMetrics(const Block& block, const Chunk& chunk) const;
  // Per row, (clean, ablated) of each downstream unit of its trial's plan.
  using Readings = std::vector<std::vector<std::pair<double, double>>>;
  Readings ReadDownstream(const Block& block, const Chunk& chunk) const;
  // Backups of a chunk, per SAE: the rows reading it (chunk row indices) and their per-prompt
  // latent readings, float32 [n, d_sae]: mean activation over the read positions, clean and
  // ablated, and the direct effect at the last position, clean and ablated.
  struct SaeRows {
    std::vector<int64_t> rows;
    at::Tensor clean, ablated, de_clean, de_ablated;
  };
  struct BackupReadings {
    std::map<int, SaeRows> by_sae;
    std::vector<bool> finite;  // per chunk row
  };
  BackupReadings ReadBackups(const Block& block, const Chunk& chunk) const;
  void StoreRows(const Chunk& chunk, const ChunkMetrics& metrics, const Readings& readings,
                 const BackupReadings& backups);
  void AddBackups(const Chunk& chunk, const BackupReadings& backups, const std::vector<bool>& valid);
  void AssembleBackups(int trial, const std::string& set, int n, v1::ResultRow* row) const;

  StatusOr<std::vector<km::InterventionSite>> Sites(const Block& block, const v1::Trial& trial,
                                                    const std::vector<int64_t>& prompts,
                                                    const at::Tensor& rows_mask);
  StatusOr<km::Intervention> MakeIntervention(const Block& block, const v1::Edit& edit,
                                              const std::vector<int64_t>& prompts);
  Status CheckSaeEdit(const v1::Trial& trial, const v1::Edit& edit);
  StatusOr<km::Intervention> MakeLatentIntervention(const v1::Edit& edit) const;
  Status PrepareBackups();
  const ShardSae* FindSaeByName(const std::string& name) const {
    for (const ShardSae& s : saes_) {
      if (s.name == name) return &s;
    }
    return nullptr;
  }
  bool backups() const { return shard_.has_backups(); }
  at::Tensor OwnWrite(const km::HookPoint& hook, const at::Tensor& ablated_last,
                      const at::Tensor& clean_last) const;
  std::set<std::string> CompensationHooks() const;
  v1::ShardResult Assemble() const;
  int64_t BlockRows() const { return std::max<int64_t>(1, options_.max_batch_rows); }
  Status StopIfAsked() const { return internal::StopIfAsked(options_); }

  const LoadedModel& m_;
  const km::Model& model_;
  const km::ModelConfig& config_;
  const ExecutorOptions& options_;
  const v1::Shard& shard_;
  const MetricHead head_;  // every score's unembedding (metrics.h)

  PromptBatch batch_;
  PromptBatch reference_;
  std::map<std::string, at::Tensor> tensors_;
  std::map<std::string, at::Tensor> position_masks_;  // by selector text, [P, T] on the CPU
  at::Tensor refusal_ids_, positive_ids_, negative_ids_;
  std::vector<TrialPlan> plans_;
  std::vector<std::vector<int64_t>> start_cols_;       // [trial][prompt], -1: not run
  std::set<std::string> mean_hooks_;      // hooks of mean / resample edits
  bool any_resample_ = false;
  std::map<std::string, at::Tensor> mean_per_position_;  // hook -> [T, ...] aligned from the end
  std::map<std::string, at::Tensor> mean_all_positions_; // hook -> [...]
  std::vector<ShardSae> saes_;                           // Shard.saes, in order
  // SAE mean_all_positions edits: hook -> latent -> its mean activation over every real token
  // of the reference prompts (the keys are filled by Prepare, the values by ReferenceMeans).
  std::map<std::string, std::map<int64_t, double>> latent_means_;
  // Backups: the read positions over the shard's prompts ([P, T] bool, CPU), the SAEs some
  // trial reads, and per SAE the cosine of each latent's write with BackupsSpec.tensor
  // (float64 [d_sae], CPU; empty without a tensor).
  at::Tensor backup_read_mask_;
  std::set<int> backup_saes_;
  std::map<int, at::Tensor> backup_cosines_;

  struct RowValues {
    std::map<std::string, double> values;
    std::string error;
  };
  std::map<std::pair<int, int64_t>, RowValues> results_;
  // Sums over a (trial, prompt set)'s error-free prompts of each downstream reading (clean,
  // ablated), in the order of the trial's plan: per-prompt readings are never kept, so memory
  // grows with the stored rows only.
  std::map<std::pair<int, std::string>, std::vector<std::pair<double, double>>> reading_sums_;
  // Backups summed the same way, per (trial, prompt set) and SAE: float64 [5, d_sae] on the
  // model's device, rows: clean, ablated, rise^2, de_clean, de_ablated.
  std::map<std::pair<int, std::string>, std::map<int, at::Tensor>> backup_sums_;
};

Status TrialRunner::Prepare() {
  const int64_t pad_id = chat::PadTokenId(model_, *m_.tokenizer);
  KO_ASSIGN_OR_RETURN(batch_, Tokenize(m_, shard_.prompts(), pad_id));
  if (shard_.reference_prompts_size() > 0) {
    KO_ASSIGN_OR_RETURN(reference_, Tokenize(m_, shard_.reference_prompts(), pad_id));
  }
  KO_ASSIGN_OR_RETURN(tensors_, ShardTensors(shard_));
  const v1::MetricsSpec& metrics = shard_.metrics();
  if (metrics.refusal_tokens_size() == 0) {
    return Status::InvalidArgument("metrics.refusal_tokens: empty (the refusal score needs them)");
  }
  KO_ASSIGN_OR_RETURN(auto refusal, ResolveTokens(*m_.tokenizer, metrics.refusal_tokens(), "refusal_tokens"));
  refusal_ids_ = at::tensor(refusal, at::kLong);
  if (metrics.positive_tokens_size() > 0 && metrics.negative_tokens_size() > 0) {
    KO_ASSIGN_OR_RETURN(auto pos, ResolveTokens(*m_.tokenizer, metrics.positive_tokens(), "positive_tokens"));
    KO_ASSIGN_OR_RETURN(auto neg, ResolveTokens(*m_.tokenizer, metrics.negative_tokens(), "negative_tokens"));
    positive_ids_ = at::tensor(pos, at::kLong);
    negative_ids_ = at::tensor(neg, at::kLong);
  }
  KO_ASSIGN_OR_RETURN(saes_, LoadShardSaes(m_, shard_));
  for (const v1::Trial& trial : shard_.trials()) {
    for (const v1::Edit& edit : trial.edits()) {
      const std::string key = PositionsName(edit.positions());
      if (!position_masks_.count(key)) {
        auto mask = PositionMask(edit.positions(), batch_);
        if (!mask.ok()) return mask.status().WithContext("trial " + std::to_string(trial.index()));
        position_masks_[key] = *mask;
      }
      if (edit.sae()) {
        KO_RETURN_IF_ERROR(CheckSaeEdit(trial, edit));
        continue;
      }
      const v1::Ablation::Kind kind = edit.ablation().kind();
      if (kind == v1::Ablation::MEAN || kind == v1::Ablation::MEAN_ALL_POSITIONS ||
          kind == v1::Ablation::RESAMPLE) {
        if (reference_.tokenized.empty()) {
          return Status::InvalidArgument("trial " + std::to_string(trial.index()) +
                                         ": mean/resample ablation needs reference prompts");
        }
        mean_hooks_.insert(edit.hook());
        if (kind == v1::Ablation::RESAMPLE) any_resample_ = true;
      }
    }
  }
  KO_RETURN_IF_ERROR(PlanTrials());
  return PrepareBackups();
}

// An edit of SAE latents: an SAE of the shard at its hook, latents in range, an ablation that
// applies to latents (zero, clamp, scale, mean_all_positions with reference prompts).
Status TrialRunner::CheckSaeEdit(const v1::Trial& trial, const v1::Edit& edit) {
  const std::string what = "trial " + std::to_string(trial.index()) + ": SAE edit at " + edit.hook();
  if (edit.every_layer()) return Status::InvalidArgument(what + ": every_layer does not apply to SAE latents");
  StatusOr<km::HookPoint> hook = km::HookPoint::Parse(edit.hook(), config_.num_layers);
  if (!hook.ok()) return hook.status().WithContext(what);
  const ShardSae* s = FindSae(saes_, *hook);
  if (!s) return Status::InvalidArgument(what + ": the shard has no SAE at that hook (Shard.saes)");
  if (edit.units_size() == 0) return Status::InvalidArgument(what + ": no latents (units)");
  std::vector<int64_t> latents(edit.units().begin(), edit.units().end());
  Status in_range = s->sae->CheckLatents(latents);
  if (!in_range.ok()) return in_range.WithContext(what);
  switch (edit.ablation().kind()) {
    case v1::Ablation::ZERO:
    case v1::Ablation::CLAMP:
    case v1::Ablation::SCALE:
      return Status::Ok();
    case v1::Ablation::MEAN_ALL_POSITIONS:
      if (reference_.tokenized.empty()) {
        return Status::InvalidArgument(what + ": mean_all_positions needs reference prompts");
      }
      for (int64_t j : latents) latent_means_[s->name][j] = 0.0;
      return Status::Ok();
    default:
      return Status::InvalidArgument(what + ": ablation " +
                                     v1::Ablation::Kind_Name(edit.ablation().kind()) +
                                     " does not apply to SAE latents (zero, clamp, scale, "
                                     "mean_all_positions)");
  }
}

// Backups (BackupsSpec): the read positions, the SAEs downstream of some trial, and their
// latents' cosines with the spec's direction.
Status TrialRunner::PrepareBackups() {
  if (!backups()) return Status::Ok();
  const v1::BackupsSpec& spec = shard_.backups();
  v1::Positions read = spec.positions();
  if (read.kind() == v1::Positions::POSITIONS_UNSPECIFIED) read.set_kind(v1::Positions::POST_INST);
  auto mask = PositionMask(read, batch_);
  if (!mask.ok()) return mask.status().WithContext("backups.positions");
  backup_read_mask_ = *mask;
  for (const TrialPlan& plan : plans_) backup_saes_.insert(plan.backup_saes.begin(), plan.backup_saes.end());
  if (!spec.tensor().empty()) {
    KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors_, spec.tensor()));
    for (int s : backup_saes_) {
      auto cosines = WriteCosines(saes_[s], r);
      if (!cosines.ok()) return cosines.status().WithContext("backups.tensor " + spec.tensor());
      backup_cosines_[s] = *cosines;
    }
  }
  return Status::Ok();
}

Status TrialRunner::PlanTrials() {
  const int64_t p_count = shard_.prompts_size();
  plans_.resize(shard_.trials_size());
  start_cols_.assign(shard_.trials_size(), std::vector<int64_t>(p_count, -1));
  for (int ti = 0; ti < shard_.trials_size(); ++ti) {
    const v1::Trial& trial = shard_.trials(ti);
    TrialPlan& plan = plans_[ti];
    int64_t layer = config_.num_layers;
    for (const v1::Edit& edit : trial.edits()) {
      if (edit.every_layer()) {
        layer = 0;
        continue;
      }
      KO_ASSIGN_OR_RETURN(km::HookPoint hook, km::HookPoint::Parse(edit.hook(), config_.num_layers));
      layer = std::min<int64_t>(layer, hook.layer < 0 ? 0 : hook.layer);
      plan.own_hook = hook;
    }
    if (trial.edits_size() == 0) layer = config_.num_layers - 1;  // the clean run
    plan.start_layer = layer;
    plan.has_de = trial.edits_size() == 1 && !trial.edits(0).every_layer();
    if (backups() && trial.edits_size() > 0) {
      km::HookPoint last_edited = km::HookPoint::Embed();
      for (const v1::Edit& edit : trial.edits()) {
        KO_ASSIGN_OR_RETURN(std::vector<km::HookPoint> hooks, EditHooks(edit, config_.num_layers));
        for (const km::HookPoint& h : hooks) last_edited = std::max(last_edited, h);
      }
      for (size_t s = 0; s < saes_.size(); ++s) {
        if (last_edited < saes_[s].hook) plan.backup_saes.push_back(static_cast<int>(s));
      }
    }
    if (shard_.compensation()) {
      plan.downstream = DownstreamUnits(plan, config_);
      for (const Downstream& d : plan.downstream) plan.reads_heads |= d.kind == v1::UnitReading::HEAD;
    }
    for (int64_t p = 0; p < p_count; ++p) {
      if (!trial.prompt_set().empty() && shard_.prompts(p).set() != trial.prompt_set()) continue;
      int64_t col = batch_.length - 1;
      for (const v1::Edit& edit : trial.edits()) {
        at::Tensor cols = position_masks_.at(PositionsName(edit.positions()))[p].nonzero();
        if (cols.numel() == 0) {
          return Status::InvalidArgument("trial " + std::to_string(trial.index()) +
                                         ": positions select nothing in prompt " + std::to_string(p));
        }
        col = std::min(col, cols.min().item<int64_t>());
      }
      plan.prompts.push_back(p);
      start_cols_[ti][p] = col;
    }
  }
  return Status::Ok();
}

// Means of the mean/resample hooks over the reference prompts, in row blocks: per column
// counted from the prompt's end (aligned to the shard's width; columns no reference prompt has
// take the all-positions mean) and over all real tokens.
Status TrialRunner::ReferenceMeans() {
  if (mean_hooks_.empty() && latent_means_.empty()) return Status::Ok();
  const int64_t r = reference_.ids.size(0), tr = reference_.length, t = batch_.length;
  std::map<std::string, at::Tensor> col_sum, total;
  std::map<std::string, at::Tensor> latent_sum;  // SAE hook -> float64 [k] over its mean latents
  at::Tensor col_count = at::zeros({tr}, at::kDouble);
  double count = 0;
  for (int64_t r0 = 0; r0 < r; r0 += BlockRows()) {
    const int64_t n = std::min(BlockRows(), r - r0);
    km::HookRegistry hooks(config_);
    int64_t last_layer = 0;
    for (const std::string& name : mean_hooks_) {
      KO_RETURN_IF_ERROR(hooks.Cache(name));
      KO_ASSIGN_OR_RETURN(km::HookPoint hook, km::HookPoint::Parse(name, config_.num_layers));
      last_layer = std::max<int64_t>(last_layer, hook.layer);
    }
    for (const auto& [name, latents] : latent_means_) {
      KO_RETURN_IF_ERROR(hooks.Cache(name));
      last_layer = std::max<int64_t>(last_layer, FindSaeByName(name)->hook.layer);
    }
    km::ForwardRequest request;
    request.input_ids = reference_.ids.narrow(0, r0, n);
    request.attention_mask = reference_.mask.narrow(0, r0, n);
    request.logits = km::ForwardRequest::Logits::kNone;
    request.end_layer = last_layer + 1;
    request.hooks = &hooks;
    KO_ASSIGN_OR_RETURN(km::ForwardResult unused, model_.Forward(request));
    (void)unused;
    at::Tensor mask = reference_.mask.narrow(0, r0, n).to(at::kCPU, at::kDouble);  // [n, tr]
    col_count += mask.sum(0);
    count += mask.sum().item<double>();
    for (const auto& [name, means] : latent_means_) {
      // The latents' activations at every real token: [n, tr, k], summed over tokens.
      std::vector<int64_t> latents;
      for (const auto& entry : means) latents.push_back(entry.first);
      at::Tensor f = FindSaeByName(name)->sae->EncodeLatents(hooks.cache().at(name), latents);
      at::Tensor sum = (f.to(at::kCPU, at::kDouble) * mask.unsqueeze(2)).sum(at::IntArrayRef{0, 1});
      latent_sum[name] = latent_sum.count(name) ? latent_sum[name] + sum : sum;
    }
    for (const std::string& name : mean_hooks_) {
      at::Tensor x = hooks.cache().at(name).to(at::kCPU, at::kDouble);  // [n, tr, ...]
      std::vector<int64_t> mshape = {n, tr};
      mshape.resize(x.dim(), 1);
      at::Tensor masked = x * mask.view(mshape);
      at::Tensor cs = masked.sum(0);
      at::Tensor tot = masked.sum(at::IntArrayRef{0, 1});
      if (!col_sum.count(name)) {
        col_sum[name] = cs;
        total[name] = tot;
      } else {
        col_sum[name] += cs;
        total[name] += tot;
      }
    }
  }
  for (const std::string& name : mean_hooks_) {
    at::Tensor overall = total[name] / std::max(count, 1.0);
    std::vector<int64_t> cshape = {tr};
    cshape.resize(col_sum[name].dim(), 1);
    at::Tensor col_mean = col_sum[name] / col_count.clamp_min(1).view(cshape);
    std::vector<int64_t> shape = {t};
    shape.insert(shape.end(), overall.sizes().begin(), overall.sizes().end());
    at::Tensor aligned = overall.unsqueeze(0).expand(shape).clone();
    const int64_t overlap = std::min(t, tr);
    at::Tensor has = (col_count.narrow(0, tr - overlap, overlap) > 0);
    std::vector<int64_t> hshape = {overlap};
    hshape.resize(aligned.dim(), 1);
    aligned.narrow(0, t - overlap, overlap)
        .copy_(at::where(has.view(hshape), col_mean.narrow(0, tr - overlap, overlap),
                         aligned.narrow(0, t - overlap, overlap)));
    mean_per_position_[name] = aligned.to(at::kFloat);
    mean_all_positions_[name] = overall.to(at::kFloat);
  }
  for (auto& [name, means] : latent_means_) {
    at::Tensor mean = (latent_sum.at(name) / std::max(count, 1.0)).contiguous();
    int64_t i = 0;
    for (auto& entry : means) entry.second = mean.data_ptr<double>()[i++];
  }
  return Status::Ok();
}

std::set<std::string> TrialRunner::CompensationHooks() const {
  std::set<std::string> names;
  bool heads = false;
  for (const TrialPlan& plan : plans_) {
    heads |= plan.reads_heads;
    if (plan.has_de) names.insert(plan.own_hook.Name());
  }
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    names.insert(km::HookPoint::AttnOut(l).Name());
    names.insert(km::HookPoint::MlpOut(l).Name());
    if (heads) names.insert(km::HookPoint::AttnZ(l).Name());
  }
  return names;
}

StatusOr<Block> TrialRunner::CleanPass(const std::vector<int64_t>& prompts) {
  Block block;
  block.prompts = prompts;
  for (size_t i = 0; i < prompts.size(); ++i) block.local[prompts[i]] = static_cast<int64_t>(i);
  at::Tensor index = at::tensor(prompts, at::kLong).to(model_.device());
  km::HookRegistry hooks(config_);
  for (int64_t l = 0; l < config_.num_layers; ++l) hooks.Cache(km::HookPoint::ResidPre(l));
  std::set<std::string> compensation;
  if (shard_.compensation()) {
    compensation = CompensationHooks();
    for (const std::string& name : compensation) KO_RETURN_IF_ERROR(hooks.Cache(name));
  }
  for (int s : backup_saes_) hooks.Cache(saes_[s].hook);
  km::ForwardRequest request;
  request.input_ids = batch_.ids.index_select(0, index);
  request.attention_mask = batch_.mask.index_select(0, index);
  request.kv_cache = &block.kv;
  request.logits = km::ForwardRequest::Logits::kNone;
  request.hooks = &hooks;
  KO_ASSIGN_OR_RETURN(km::ForwardResult result, model_.Forward(request));
  const int64_t t = batch_.length;
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    block.resid_pre.push_back(hooks.cache().at(km::HookPoint::ResidPre(l).Name()));
  }
  for (const std::string& name : compensation) {
    block.last[name] = hooks.cache().at(name).select(1, t - 1).to(at::kFloat).clone();
  }
  block.final_last = result.residual.select(1, t - 1).to(at::kFloat);
  block.scale_last = FinalScale(model_, block.final_last);
  if (shard_.compensation() || !backup_saes_.empty()) {
    at::Tensor clean_logits = head_.Unembed(block.final_last, block.scale_last);
    block.metric_direction = MetricDirection(model_, clean_logits, refusal_ids_, block.scale_last);
  }
  // Backups: the clean latents of every SAE some trial reads, at the read positions (mean) and
  // at the last position (direct effect); the activation stays for the chunks' prefixes.
  const at::Tensor read = backup_saes_.empty() ? at::Tensor()
                                               : backup_read_mask_.index_select(0, index.to(at::kCPU));
  for (int s : backup_saes_) {
    const ShardSae& sae = saes_[s];
    Block::Latents& latents = block.latents[s];
    latents.act = hooks.cache().at(sae.name);
    LatentReading clean = ReadLatents(*sae.sae, latents.act, read);
    latents.mean = clean.mean;
    latents.proj = WriteProjections(sae, block.metric_direction);
    latents.de = clean.last * latents.proj / clean.last_divisor;
  }
  return block;
}

// Resample sources of the block's prompts: prompt p reads reference prompt
// (p * 7919 + seed) mod R, the next one if that is the prompt itself (same set and index);
// aligned from the end, columns the source lacks taking the per-position mean.
Status TrialRunner::ResampleSources(Block* block) {
  if (!any_resample_) return Status::Ok();
  const int64_t r = reference_.ids.size(0), tr = reference_.length, t = batch_.length;
  std::vector<int64_t> sources;
  for (int64_t p : block->prompts) {
    const v1::ShardPrompt& prompt = shard_.prompts(p);
    int64_t s = static_cast<int64_t>((static_cast<uint64_t>(p) * 7919u + shard_.seed()) % r);
    for (int64_t tries = 0; tries < r; ++tries) {
      const v1::ShardPrompt& ref = shard_.reference_prompts(s);
      if (!(ref.set() == prompt.set() && ref.index() == prompt.index())) break;
      s = (s + 1) % r;
      if (tries + 1 == r) {
        return Status::InvalidArgument("resample: the reference set holds only the prompt itself (" +
                                       prompt.set() + "[" + std::to_string(prompt.index()) + "])");
      }
    }
    sources.push_back(s);
  }
  std::vector<int64_t> distinct = sources;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  std::map<int64_t, int64_t> row_of;
  for (size_t i = 0; i < distinct.size(); ++i) row_of[distinct[i]] = static_cast<int64_t>(i);
  at::Tensor index = at::tensor(distinct, at::kLong).to(model_.device());
  km::HookRegistry hooks(config_);
  for (const std::string& name : mean_hooks_) KO_RETURN_IF_ERROR(hooks.Cache(name));
  km::ForwardRequest request;
  request.input_ids = reference_.ids.index_select(0, index);
  request.attention_mask = reference_.mask.index_select(0, index);
  request.logits = km::ForwardRequest::Logits::kNone;
  request.hooks = &hooks;
  KO_ASSIGN_OR_RETURN(km::ForwardResult unused, model_.Forward(request));
  (void)unused;
  const int64_t overlap = std::min(t, tr);
  at::Tensor ref_mask = reference_.mask.index_select(0, index).to(at::kCPU).to(at::kBool);
  for (const std::string& name : mean_hooks_) {
    at::Tensor acts = hooks.cache().at(name).to(at::kCPU, at::kFloat);  // [S, tr, ...]
    const at::Tensor& mean = mean_per_position_.at(name);                // [t, ...]
    std::vector<at::Tensor> rows;
    std::vector<int64_t> hshape = {overlap};
    hshape.resize(mean.dim(), 1);
    for (int64_t s : sources) {
      const int64_t i = row_of[s];
      at::Tensor row = mean.clone();
      at::Tensor src = acts[i].narrow(0, tr - overlap, overlap);
      at::Tensor real = ref_mask[i].narrow(0, tr - overlap, overlap);
      row.narrow(0, t - overlap, overlap)
          .copy_(at::where(real.view(hshape), src, row.narrow(0, t - overlap, overlap)));
      rows.push_back(row);
    }
    block->resample[name] = at::stack(rows, 0);
  }
  return Status::Ok();
}

StatusOr<km::Intervention> TrialRunner::MakeIntervention(const Block& block, const v1::Edit& edit,
                                                         const std::vector<int64_t>& prompts) {
  if (edit.sae()) return MakeLatentIntervention(edit);
  km::Intervention intervention;
  switch (edit.ablation().kind()) {
    case v1::Ablation::ZERO:
      intervention = km::Intervention::Zero();
      break;
    case v1::Ablation::MEAN: {
      // Per position: one [T, ...] mean shared by every row (expanded, not copied).
      const at::Tensor& mean = mean_per_position_.at(edit.hook());
      std::vector<int64_t> shape = {static_cast<int64_t>(prompts.size())};
      shape.insert(shape.end(), mean.sizes().begin(), mean.sizes().end());
      intervention = km::Intervention::Resample(mean.unsqueeze(0).expand(shape));
      break;
    }
    case v1::Ablation::MEAN_ALL_POSITIONS:
      intervention = km::Intervention::Mean(mean_all_positions_.at(edit.hook()));
      break;
    case v1::Ablation::RESAMPLE: {
      std::vector<int64_t> local;
      for (int64_t p : prompts) local.push_back(block.local.at(p));
      intervention = km::Intervention::Resample(
          block.resample.at(edit.hook()).index_select(0, at::tensor(local, at::kLong)));
      break;
    }
    case v1::Ablation::DIRECTIONAL:
    case v1::Ablation::PROJECT: {
      KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors_, edit.tensor()));
      intervention = km::Intervention::Directional(r);
      break;
    }
    case v1::Ablation::ADD: {
      KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors_, edit.tensor()));
      intervention = km::Intervention::Add(r, edit.ablation().coefficient());
      break;
    }
    case v1::Ablation::CLAMP:
    case v1::Ablation::SCALE:
      return Status::InvalidArgument(edit.hook() + ": clamp and scale apply to SAE latents only");
    default:
      return Status::InvalidArgument(edit.hook() + ": edit without an ablation kind");
  }
  if (edit.units_size() > 0) {
    intervention = intervention.OnUnits(std::vector<int64_t>(edit.units().begin(), edit.units().end()));
  }
  return intervention;
}

// The latents' edit with the error term kept (worker/sae): checked by CheckSaeEdit.
StatusOr<km::Intervention> TrialRunner::MakeLatentIntervention(const v1::Edit& edit) const {
  KO_ASSIGN_OR_RETURN(km::HookPoint hook, km::HookPoint::Parse(edit.hook(), config_.num_layers));
  const ShardSae* s = FindSae(saes_, hook);
  if (!s) return Status::InvalidArgument(edit.hook() + ": no SAE at this hook");
  sae::LatentEdit latent;
  latent.latents.assign(edit.units().begin(), edit.units().end());
  switch (edit.ablation().kind()) {
    case v1::Ablation::ZERO:
      latent.op = sae::LatentEdit::Op::kZero;
      break;
    case v1::Ablation::CLAMP:
      latent.op = sae::LatentEdit::Op::kClamp;
      latent.value = edit.ablation().coefficient();
      break;
    case v1::Ablation::SCALE:
      latent.op = sae::LatentEdit::Op::kScale;
      latent.value = edit.ablation().coefficient();
      break;
    case v1::Ablation::MEAN_ALL_POSITIONS: {
      latent.op = sae::LatentEdit::Op::kMean;
      const std::map<int64_t, double>& means = latent_means_.at(s->name);
      for (int64_t j : latent.latents) latent.values.push_back(means.at(j));
      break;
    }
    default:
      return Status::InvalidArgument(edit.hook() + ": ablation " +
                                     v1::Ablation::Kind_Name(edit.ablation().kind()) +
                                     " does not apply to SAE latents");
  }
  return sae::MakeLatentIntervention(s->sae, std::move(latent));
}

StatusOr<std::vector<km::InterventionSite>> TrialRunner::Sites(const Block& block,
                                                               const v1::Trial& trial,
                                                               const std::vector<int64_t>& prompts,
                                                               const at::Tensor& rows_mask) {
  std::vector<km::InterventionSite> sites;
  at::Tensor index = at::tensor(prompts, at::kLong);
  for (const v1::Edit& edit : trial.edits()) {
    at::Tensor positions = position_masks_.at(PositionsName(edit.positions())).index_select(0, index);
    KO_ASSIGN_OR_RETURN(std::vector<km::HookPoint> hooks, EditHooks(edit, config_.num_layers));
    KO_ASSIGN_OR_RETURN(km::Intervention intervention, MakeIntervention(block, edit, prompts));
    for (const km::HookPoint& hook : hooks) {
      km::InterventionSite site;
      site.hook = hook;
      site.intervention = intervention;
      site.rows = rows_mask;  // rows of other trials are untouched; positions are per row
      site.positions = positions;
      sites.push_back(std::move(site));
    }
  }
  return sites;
}

// The change of a unit's write into the residual stream at the last position.
at::Tensor TrialRunner::OwnWrite(const km::HookPoint& hook, const at::Tensor& ablated_last,
                                 const at::Tensor& clean_last) const {
  at::Tensor diff = ablated_last.to(at::kFloat) - clean_last.to(at::kFloat);
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

Status TrialRunner::RunBlock(Block& block) {
  std::vector<Row> rows;
  for (int ti = 0; ti < shard_.trials_size(); ++ti) {
    for (int64_t p : block.prompts) {
      if (start_cols_[ti][p] < 0) continue;
      rows.push_back({ti, p, plans_[ti].start_layer, start_cols_[ti][p]});
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
    size_t chunk = static_cast<size_t>(BlockRows());
    const size_t q = per_trial.empty() ? 1 : per_trial.begin()->second;
    if (std::all_of(per_trial.begin(), per_trial.end(), [&](const auto& e) { return e.second == q; })) {
      chunk = std::max(q, chunk / q * q);
    }
    for (size_t begin = 0; begin < rows.size(); begin += chunk) {
      KO_RETURN_IF_ERROR(StopIfAsked());
      const size_t end = std::min(rows.size(), begin + chunk);
      KO_RETURN_IF_ERROR(RunChunk(block, std::vector<Row>(rows.begin() + begin, rows.begin() + end)));
    }
    return Status::Ok();
  }
  // The naive reference: one trial at a time, a full forward over its prompts.
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.trial < b.trial; });
  size_t begin = 0;
  while (begin < rows.size()) {
    size_t end = begin;
    while (end < rows.size() && rows[end].trial == rows[begin].trial) ++end;
    KO_RETURN_IF_ERROR(StopIfAsked());
    KO_RETURN_IF_ERROR(RunChunk(block, std::vector<Row>(rows.begin() + begin, rows.begin() + end)));
    begin = end;
  }
  return Status::Ok();
}

Status TrialRunner::RunChunk(const Block& block, const std::vector<Row>& rows) {
  Chunk chunk(config_);
  KO_RETURN_IF_ERROR(ForwardChunk(block, rows, &chunk));
  ChunkMetrics metrics = ComputeMetrics(block, chunk);
  Readings readings;
  if (shard_.compensation()) readings = ReadDownstream(block, chunk);
  BackupReadings backups = ReadBackups(block, chunk);
  StoreRows(chunk, metrics, readings, backups);
  return Status::Ok();
}

// The chunk's interventions and caches, then one forward pass from the chunk's first
// intervened layer and column (layer and sequence prefix reuse).
Status TrialRunner::ForwardChunk(const Block& block, const std::vector<Row>& rows, Chunk* chunk) {
  chunk->rows = rows;
  const int64_t b = static_cast<int64_t>(rows.size());
  const int64_t t = batch_.length;
  int64_t start_col = t;
  chunk->start_layer = config_.num_layers;
  std::vector<int64_t> local;
  for (const Row& r : rows) {
    chunk->start_layer = std::min(chunk->start_layer, r.start_layer);
    start_col = std::min(start_col, r.start_col);
    chunk->prompts.push_back(r.prompt);
    local.push_back(block.local.at(r.prompt));
  }
  if (!options_.reuse_prefixes) chunk->start_layer = 0, start_col = 0;
  const at::Tensor prompt_index = at::tensor(chunk->prompts, at::kLong).to(model_.device());
  chunk->local_index = at::tensor(local, at::kLong).to(model_.device());
  chunk->new_cols = t - start_col;

  km::HookRegistry& hooks = chunk->hooks;
  for (int64_t i = 0; i < b; ++i) chunk->trial_rows[rows[i].trial].push_back(i);
  for (const auto& [trial, members] : chunk->trial_rows) {
    at::Tensor rows_mask = at::zeros({b}, at::kBool);
    for (int64_t i : members) rows_mask[i] = true;
    KO_ASSIGN_OR_RETURN(auto sites, Sites(block, shard_.trials(trial), chunk->prompts, rows_mask));
    for (auto& site : sites) KO_RETURN_IF_ERROR(hooks.Intervene(std::move(site)));
  }
  if (shard_.compensation()) {
    for (const auto& [trial, members] : chunk->trial_rows) {
      chunk->reads_heads |= plans_[trial].reads_heads;
      if (plans_[trial].has_de) hooks.Cache(plans_[trial].own_hook);
    }
    for (int64_t l = chunk->start_layer; l < config_.num_layers; ++l) {
      hooks.Cache(km::HookPoint::AttnOut(l));
      hooks.Cache(km::HookPoint::MlpOut(l));
      if (chunk->reads_heads) hooks.Cache(km::HookPoint::AttnZ(l));
    }
  }
  for (const auto& [trial, members] : chunk->trial_rows) {
    chunk->backup_saes.insert(plans_[trial].backup_saes.begin(), plans_[trial].backup_saes.end());
  }
  for (int s : chunk->backup_saes) {
    if (saes_[s].hook.layer >= chunk->start_layer) hooks.Cache(saes_[s].hook);
  }

  km::ForwardRequest request;
  km::KVCache kv;
  if (start_col > 0) {
    // Trials over the same prompts repeat one prompt list: the rows then share the prompts'
    // clean keys/values instead of each holding a copy (KVCache::shared_prefix).
    std::vector<int64_t> cycle = PromptCycle(local);
    if (!cycle.empty()) {
      kv = block.kv.SelectRows(at::tensor(cycle, at::kLong).to(model_.device())).Prefix(start_col);
      kv.shared_prefix = true;
    } else {
      kv = block.kv.SelectRows(chunk->local_index).Prefix(start_col);
    }
  }
  request.kv_cache = &kv;
  request.attention_mask = batch_.mask.index_select(0, prompt_index).narrow(1, start_col, chunk->new_cols);
  if (chunk->start_layer == 0) {
    request.input_ids = batch_.ids.index_select(0, prompt_index).narrow(1, start_col, chunk->new_cols);
  } else {
    request.start_layer = chunk->start_layer;
    request.start_residual = block.resid_pre[chunk->start_layer]
                                 .index_select(0, chunk->local_index)
                                 .narrow(1, start_col, chunk->new_cols);
  }
  // Every score is read from the final residual through MetricHead::Unembed (metrics.h).
  request.logits = km::ForwardRequest::Logits::kNone;
  request.hooks = &hooks;
  KO_ASSIGN_OR_RETURN(km::ForwardResult result, model_.Forward(request));
  chunk->x_ablated = result.residual.select(1, chunk->new_cols - 1).to(at::kFloat);
  return Status::Ok();
}

// Refusal score, KL, logit difference, and with compensation DE and the final norm's effect,
// all through MetricHead::Unembed in blocks of rows (float64 [rows, vocab] logits stay small).
TrialRunner::ChunkMetrics TrialRunner::ComputeMetrics(const Block& block, const Chunk& chunk) const {
  const int64_t b = static_cast<int64_t>(chunk.rows.size());
  const bool compensation = shard_.compensation();
  const at::Tensor scale_abl = FinalScale(model_, chunk.x_ablated);
  const at::Tensor x_clean = block.final_last.index_select(0, chunk.local_index);
  const at::Tensor scale_clean = block.scale_last.index_select(0, chunk.local_index);

  // The unit's own change of write at the last position (trials with one edit at one hook).
  ChunkMetrics out;
  at::Tensor delta = at::zeros_like(x_clean);
  out.has_de.assign(b, false);
  if (compensation) {
    for (const auto& [trial, members] : chunk.trial_rows) {
      const TrialPlan& plan = plans_[trial];
      if (!plan.has_de) continue;
      const std::string name = plan.own_hook.Name();
      at::Tensor member_index = at::tensor(members, at::kLong).to(model_.device());
      at::Tensor abl = chunk.hooks.cache().at(name).index_select(0, member_index).select(1, chunk.new_cols - 1);
      at::Tensor cln = block.last.at(name).index_select(0, chunk.local_index.index_select(0, member_index));
      delta.index_copy_(0, member_index, OwnWrite(plan.own_hook, abl, cln));
      for (int64_t i : members) out.has_de[i] = true;
    }
  }
  std::vector<at::Tensor> score, clean, kl, diff, clean_diff, de, norm;
  for (int64_t r0 = 0; r0 < b; r0 += head_.BlockRows()) {
    const int64_t n = std::min<int64_t>(head_.BlockRows(), b - r0);
    at::Tensor xa = chunk.x_ablated.narrow(0, r0, n), sa = scale_abl.narrow(0, r0, n);
    at::Tensor xc = x_clean.narrow(0, r0, n), sc = scale_clean.narrow(0, r0, n);
    at::Tensor logits = head_.Unembed(xa, sa);
    at::Tensor clean_logits = head_.Unembed(xc, sc);
    at::Tensor clean_score = RefusalScore(clean_logits, refusal_ids_);
    score.push_back(RefusalScore(logits, refusal_ids_));
    clean.push_back(clean_score);
    kl.push_back(Kl(clean_logits, logits));
    if (positive_ids_.defined()) {
      diff.push_back(LogitDiff(logits, positive_ids_, negative_ids_));
      clean_diff.push_back(LogitDiff(clean_logits, positive_ids_, negative_ids_));
    }
    if (compensation) {
      // TE, DE and the norm's effect: differences of scores from the one unembedding path.
      norm.push_back(score.back() - RefusalScore(head_.Unembed(xa, sc), refusal_ids_));
      at::Tensor de_score = RefusalScore(head_.Unembed(xc + delta.narrow(0, r0, n), sc), refusal_ids_);
      de.push_back(de_score - clean_score);
    }
  }
  auto column = [](const std::vector<at::Tensor>& parts) {
    if (parts.empty()) return std::vector<double>();
    at::Tensor c = at::cat(parts).to(at::kCPU, at::kDouble).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  out.score = column(score), out.clean = column(clean), out.kl = column(kl);
  out.diff = column(diff), out.clean_diff = column(clean_diff);
  out.de = column(de), out.norm = column(norm);
  return out;
}

// Each row's downstream units (its trial's plan): a unit's write at the last position . m (m:
// the row's prompt's metric direction), clean and ablated; layers before the chunk's start ran
// clean.
TrialRunner::Readings TrialRunner::ReadDownstream(const Block& block, const Chunk& chunk) const {
  const int64_t b = static_cast<int64_t>(chunk.rows.size());
  const at::Tensor m = block.metric_direction.index_select(0, chunk.local_index);  // [B, d]
  auto read = [&](const std::string& name, int64_t layer, bool ablated) {
    if (ablated && layer >= chunk.start_layer) {
      return chunk.hooks.cache().at(name).select(1, chunk.new_cols - 1).to(at::kFloat);
    }
    return block.last.at(name).index_select(0, chunk.local_index);
  };
  auto stacked = [](const std::vector<at::Tensor>& v) {
    return at::stack(v, 1).to(at::kCPU, at::kDouble).contiguous();
  };
  std::vector<at::Tensor> attn_c, attn_a, mlp_c, mlp_a, head_c, head_a;
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const std::string attn = km::HookPoint::AttnOut(l).Name(), mlp = km::HookPoint::MlpOut(l).Name();
    attn_c.push_back((read(attn, l, false) * m).sum(-1));
    attn_a.push_back((read(attn, l, true) * m).sum(-1));
    mlp_c.push_back((read(mlp, l, false) * m).sum(-1));
    mlp_a.push_back((read(mlp, l, true) * m).sum(-1));
    if (chunk.reads_heads) {
      const int64_t h = config_.num_heads, dh = config_.head_dim;
      at::Tensor u = at::matmul(m, model_.weights().layers[l].o.to(at::kFloat)).view({b, h, dh});
      const std::string z = km::HookPoint::AttnZ(l).Name();
      head_c.push_back((read(z, l, false) * u).sum(-1));
      head_a.push_back((read(z, l, true) * u).sum(-1));
    }
  }
  at::Tensor ac = stacked(attn_c), aa = stacked(attn_a), mc = stacked(mlp_c), ma = stacked(mlp_a);
  at::Tensor hc = chunk.reads_heads ? stacked(head_c) : at::zeros({b, 1, 1}, at::kDouble);
  at::Tensor ha = chunk.reads_heads ? stacked(head_a) : at::zeros({b, 1, 1}, at::kDouble);
  auto acc = ac.accessor<double, 2>(), aac = aa.accessor<double, 2>();
  auto mcc = mc.accessor<double, 2>(), mac = ma.accessor<double, 2>();
  auto hcc = hc.accessor<double, 3>(), hac = ha.accessor<double, 3>();
  Readings readings(b);
  for (int64_t i = 0; i < b; ++i) {
    const std::vector<Downstream>& units = plans_[chunk.rows[i].trial].downstream;
    readings[i].reserve(units.size());
    for (const Downstream& d : units) {
      if (d.kind == v1::UnitReading::HEAD) {
        readings[i].emplace_back(hcc[i][d.layer][d.unit], hac[i][d.layer][d.unit]);
      } else if (d.kind == v1::UnitReading::ATTN_OUT) {
        readings[i].emplace_back(acc[i][d.layer], aac[i][d.layer]);
      } else {
        readings[i].emplace_back(mcc[i][d.layer], mac[i][d.layer]);
      }
    }
  }
  return readings;
}

// Each row's backups (its trial's downstream SAEs): every latent's mean activation over the
// read positions and its direct effect at the last position, in the clean run (the block's)
// and the ablated one. The ablated activation is the chunk's recomputed columns after the
// clean prefix it did not recompute (causal attention: those columns are the clean ones).
TrialRunner::BackupReadings TrialRunner::ReadBackups(const Block& block, const Chunk& chunk) const {
  BackupReadings out;
  const int64_t b = static_cast<int64_t>(chunk.rows.size());
  out.finite.assign(b, true);
  const int64_t prefix = batch_.length - chunk.new_cols;
  for (int s : chunk.backup_saes) {
    std::vector<int64_t> members, prompts;
    for (int64_t i = 0; i < b; ++i) {
      const std::vector<int>& own = plans_[chunk.rows[i].trial].backup_saes;
      if (std::find(own.begin(), own.end(), s) == own.end()) continue;
      members.push_back(i);
      prompts.push_back(chunk.rows[i].prompt);
    }
    if (members.empty()) continue;
    const ShardSae& sae = saes_[s];
    const Block::Latents& clean = block.latents.at(s);
    const at::Tensor member_index = at::tensor(members, at::kLong).to(model_.device());
    const at::Tensor local = chunk.local_index.index_select(0, member_index);
    at::Tensor act = clean.act.index_select(0, local);
    if (sae.hook.layer >= chunk.start_layer) {
      at::Tensor recomputed = chunk.hooks.cache().at(sae.name).index_select(0, member_index);
      act = prefix > 0 ? at::cat({act.narrow(1, 0, prefix), recomputed}, 1) : recomputed;
    }
    const at::Tensor read = backup_read_mask_.index_select(0, at::tensor(prompts, at::kLong));
    const LatentReading ablated = ReadLatents(*sae.sae, act, read);
    const at::Tensor proj = clean.proj.index_select(0, local);
    SaeRows& rows = out.by_sae[s];
    rows.rows = members;
    rows.clean = clean.mean.index_select(0, local);
    rows.ablated = ablated.mean;
    rows.de_clean = clean.de.index_select(0, local);
    rows.de_ablated = ablated.last * proj / ablated.last_divisor;
    const at::Tensor finite = (at::isfinite(rows.clean).all(1) & at::isfinite(rows.ablated).all(1) &
                               at::isfinite(rows.de_clean).all(1) & at::isfinite(rows.de_ablated).all(1))
                                  .to(at::kCPU)
                                  .contiguous();
    const bool* ok = finite.data_ptr<bool>();
    for (size_t k = 0; k < members.size(); ++k) out.finite[members[k]] = out.finite[members[k]] && ok[k];
  }
  return out;
}

// Adds the backups of the chunk's error-free rows to their (trial, prompt set)'s sums.
void TrialRunner::AddBackups(const Chunk& chunk, const BackupReadings& backups,
                             const std::vector<bool>& valid) {
  for (const auto& [s, rows] : backups.by_sae) {
    std::map<std::pair<int, std::string>, std::vector<int64_t>> groups;  // -> positions in rows
    for (size_t k = 0; k < rows.rows.size(); ++k) {
      const Row& row = chunk.rows[rows.rows[k]];
      if (valid[rows.rows[k]]) groups[{row.trial, shard_.prompts(row.prompt).set()}].push_back(k);
    }
    for (const auto& [key, positions] : groups) {
      const at::Tensor index = at::tensor(positions, at::kLong).to(rows.clean.device());
      auto pick = [&](const at::Tensor& t) { return t.index_select(0, index).to(at::kDouble); };
      const at::Tensor clean = pick(rows.clean), ablated = pick(rows.ablated);
      const at::Tensor rise = ablated - clean;
      const at::Tensor sums = at::stack({clean.sum(0), ablated.sum(0), (rise * rise).sum(0),
                                         pick(rows.de_clean).sum(0), pick(rows.de_ablated).sum(0)});
      at::Tensor& total = backup_sums_[key][s];
      total = total.defined() ? total + sums : sums;
    }
  }
}

// Per-row values; a row with a non-finite value carries an error naming it (Assemble leaves
// such a prompt out of every mean).
void TrialRunner::StoreRows(const Chunk& chunk, const ChunkMetrics& metrics,
                            const Readings& readings, const BackupReadings& backups) {
  std::vector<bool> valid(chunk.rows.size(), false);
  const bool compensation = shard_.compensation();
  for (size_t i = 0; i < chunk.rows.size(); ++i) {
    RowValues& out = results_[{chunk.rows[i].trial, chunk.rows[i].prompt}];
    out.values["refusal_score"] = metrics.score[i];
    out.values["clean_refusal_score"] = metrics.clean[i];
    out.values["te"] = metrics.score[i] - metrics.clean[i];
    out.values["kl"] = metrics.kl[i];
    if (!metrics.diff.empty()) {
      out.values["logit_diff"] = metrics.diff[i];
      out.values["clean_logit_diff"] = metrics.clean_diff[i];
    }
    if (compensation) {
      if (metrics.has_de[i]) out.values["de"] = metrics.de[i];
      out.values["norm_effect"] = metrics.norm[i];
    }
    std::string bad;
    for (const auto& [key, value] : out.values) {
      if (!std::isfinite(value)) bad += (bad.empty() ? "" : ", ") + key;
    }
    const std::vector<std::pair<double, double>>* row_readings = compensation ? &readings[i] : nullptr;
    if (row_readings) {
      for (const auto& [clean, ablated] : *row_readings) {
        if (!std::isfinite(clean) || !std::isfinite(ablated)) {
          bad += std::string(bad.empty() ? "" : ", ") + "downstream readings";
          break;
        }
      }
    }
    if (!backups.finite.empty() && !backups.finite[i]) bad += std::string(bad.empty() ? "" : ", ") + "backups";
    if (!bad.empty()) {
      out.error = "non-finite " + bad;
      continue;
    }
    valid[i] = true;
    if (row_readings && !row_readings->empty()) {
      auto& sums = reading_sums_[{chunk.rows[i].trial, shard_.prompts(chunk.rows[i].prompt).set()}];
      if (sums.empty()) sums.assign(row_readings->size(), {0.0, 0.0});
      for (size_t u = 0; u < sums.size(); ++u) {
        sums[u].first += (*row_readings)[u].first;
        sums[u].second += (*row_readings)[u].second;
      }
    }
  }
  AddBackups(chunk, backups, valid);
}

// The aggregate's backups: the `top` latents over every downstream SAE of the trial by mean
// rise (mean ablated - mean clean activation over the error-free prompts), the highest first;
// ties: the lower hook (forward order), then the lower latent.
void TrialRunner::AssembleBackups(int trial, const std::string& set, int n, v1::ResultRow* row) const {
  const auto sums = backup_sums_.find({trial, set});
  if (sums == backup_sums_.end() || n <= 0) return;
  const v1::BackupsSpec& spec = shard_.backups();
  const int64_t top = spec.top() > 0 ? spec.top() : 10;
  const double dormant = spec.dormant_threshold() > 0 ? spec.dormant_threshold() : 0.05;
  struct Candidate {
    double rise;
    int sae;
    int64_t latent;
  };
  std::vector<Candidate> candidates;
  std::map<int, at::Tensor> means;  // SAE -> float64 [5, d_sae] on the CPU: the sums / n
  for (const auto& [s, total] : sums->second) {
    const at::Tensor mean = (total.to(at::kCPU) / static_cast<double>(n)).contiguous();
    means[s] = mean;
    const at::Tensor rise = mean[1] - mean[0];
    // Stable: equal rises keep the lower latent first.
    const at::Tensor order = std::get<1>(at::sort(rise, /*stable=*/true, /*dim=*/0, /*descending=*/true));
    const int64_t k = std::min<int64_t>(top, order.numel());
    const at::Tensor best = order.narrow(0, 0, k).contiguous();
    const double* r = rise.contiguous().data_ptr<double>();
    for (int64_t i = 0; i < k; ++i) {
      const int64_t j = best.data_ptr<int64_t>()[i];
      candidates.push_back({r[j], s, j});
    }
  }
  std::sort(candidates.begin(), candidates.end(), [&](const Candidate& a, const Candidate& b) {
    if (a.rise != b.rise) return a.rise > b.rise;
    if (!(saes_[a.sae].hook == saes_[b.sae].hook)) return saes_[a.sae].hook < saes_[b.sae].hook;
    return a.latent < b.latent;
  });
  candidates.resize(std::min<size_t>(candidates.size(), static_cast<size_t>(top)));
  for (const Candidate& c : candidates) {
    const at::Tensor& mean = means.at(c.sae);
    auto value = [&](int64_t what) { return mean[what][c.latent].item<double>(); };
    const double clean = value(0), ablated = value(1);
    v1::UnitReading* r = row->add_backups();
    r->set_kind(v1::UnitReading::SAE_LATENT);
    r->set_layer(static_cast<int32_t>(saes_[c.sae].hook.layer));
    r->set_unit(static_cast<int32_t>(c.latent));
    r->set_hook(saes_[c.sae].name);
    r->set_clean(clean);
    r->set_ablated(ablated);
    // Population standard deviation of the per-prompt rise: E[rise^2] - E[rise]^2.
    r->set_spread(std::sqrt(std::max(0.0, value(2) - c.rise * c.rise)));
    r->set_dormant(clean < dormant);
    const auto cosines = backup_cosines_.find(c.sae);
    if (cosines != backup_cosines_.end()) r->set_cosine(cosines->second[c.latent].item<double>());
    r->set_de_clean(value(3));
    r->set_de_ablated(value(4));
  }
}

// Per-prompt rows, then per (trial, prompt set) aggregates. A prompt whose row has an error
// (a non-finite value) is left out of every mean of its aggregate, so that TE, DE and C are
// always means over the same prompts; the aggregate counts it in `excluded_prompts`.
v1::ShardResult TrialRunner::Assemble() const {
  v1::ShardResult out;
  struct Aggregate {
    std::map<std::string, double> sums;
    int n = 0;
    int excluded = 0;
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
    row->set_error(values.error);
    Aggregate& a = aggregates[{ti, prompt.set()}];
    if (!values.error.empty()) {
      ++a.excluded;
      continue;
    }
    for (const auto& [k, v] : values.values) a.sums[k] += v;
    ++a.n;
  }
  for (auto& [key, a] : aggregates) {
    v1::ResultRow* row = out.add_rows();
    row->set_trial(shard_.trials(key.first).index());
    row->set_prompt_set(key.second);
    row->set_prompt(-1);
    const double n = std::max(a.n, 1);
    for (const auto& [k, v] : a.sums) (*row->mutable_values())[k] = a.n > 0 ? v / n : std::nan("");
    (*row->mutable_values())["prompts"] = a.n;
    if (a.excluded > 0) (*row->mutable_values())["excluded_prompts"] = a.excluded;
    AssembleBackups(key.first, key.second, a.n, row);
    const auto sums = reading_sums_.find(key);
    if (sums == reading_sums_.end()) continue;
    const std::vector<Downstream>& units = plans_[key.first].downstream;
    for (size_t u = 0; u < units.size(); ++u) {
      v1::UnitReading* r = row->add_downstream();
      r->set_kind(units[u].kind);
      r->set_layer(units[u].layer);
      r->set_unit(units[u].unit);
      r->set_clean(sums->second[u].first / n);
      r->set_ablated(sums->second[u].second / n);
    }
  }
  return out;
}

StatusOr<v1::ShardResult> TrialRunner::Run() {
  KO_RETURN_IF_ERROR(Prepare());
  KO_RETURN_IF_ERROR(ReferenceMeans());
  // Blocks of the prompts some trial runs on.
  std::vector<int64_t> used;
  for (int64_t p = 0; p < shard_.prompts_size(); ++p) {
    for (size_t ti = 0; ti < plans_.size(); ++ti) {
      if (start_cols_[ti][p] >= 0) {
        used.push_back(p);
        break;
      }
    }
  }
  for (size_t begin = 0; begin < used.size(); begin += static_cast<size_t>(BlockRows())) {
    const size_t end = std::min(used.size(), begin + static_cast<size_t>(BlockRows()));
    KO_RETURN_IF_ERROR(StopIfAsked());
    KO_ASSIGN_OR_RETURN(Block block, CleanPass(std::vector<int64_t>(used.begin() + begin, used.begin() + end)));
    KO_RETURN_IF_ERROR(ResampleSources(&block));
    KO_RETURN_IF_ERROR(RunBlock(block));
  }
  v1::ShardResult out = Assemble();
  out.set_trials_run(shard_.trials_size());
  return out;
}

}  // namespace

StatusOr<v1::ShardResult> RunTrials(const LoadedModel& m, const ExecutorOptions& options,
                                    const v1::Shard& shard) {
  TrialRunner runner(m, options, shard);
  return runner.Run();
}

}  // namespace knockout::executor::internal
