#include "worker/sae/evaluate.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

#include "worker/sae/train.h"

namespace knockout::sae {
namespace {

class SpliceEdit : public model::ActivationEdit {
 public:
  explicit SpliceEdit(std::shared_ptr<const Sae> sae) : sae_(std::move(sae)) {}
  const char* Name() const override { return "sae_reconstruction"; }
  Status Validate(const model::ModelConfig& config, const model::HookPoint& hook) const override {
    if (!(hook == sae_->hook())) {
      return Status::InvalidArgument(hook.Name() + ": " + sae_->Label() + " reads " +
                                     sae_->hook().Name());
    }
    return Status::Ok();
  }
  at::Tensor Apply(const at::Tensor& x, int64_t offset) const override {
    return sae_->Reconstruct(x).reshape(x.sizes()).to(x.scalar_type());
  }

 private:
  std::shared_ptr<const Sae> sae_;
};

struct CostSums {
  double ce_clean = 0.0, ce_spliced = 0.0, ce_zero = 0.0, kl = 0.0;
  int64_t ce_tokens = 0, kl_tokens = 0;
};

// Sums over the positions of several batches (float64).
struct Accumulator {
  double squared_error = 0.0;
  at::Tensor sum_x, sum_x2;  // [d_in] float64
  double active = 0.0;
  at::Tensor ever_active;    // bool [d_sae]
  int64_t positions = 0;
  CostSums prompt, response;
};

// The masks of one left-padded batch [B, T] (bool, CPU).
struct BatchMasks {
  at::Tensor splice;            // every real column but the first
  at::Tensor prompt;            // P: prompt columns but the first
  at::Tensor prompt_predicts;   // columns of P whose next column is a prompt column
  at::Tensor response_predicts; // R: columns whose next column is a response column
};

BatchMasks MakeMasks(const std::vector<EvalSequence>& batch, int64_t t) {
  const int64_t b = static_cast<int64_t>(batch.size());
  BatchMasks m;
  m.splice = at::zeros({b, t}, at::kBool);
  m.prompt = at::zeros({b, t}, at::kBool);
  m.prompt_predicts = at::zeros({b, t}, at::kBool);
  m.response_predicts = at::zeros({b, t}, at::kBool);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t len = static_cast<int64_t>(batch[i].ids.size());
    const int64_t start = t - len;                        // first real column
    const int64_t prompt_end = start + batch[i].prompt_length;  // first response column
    m.splice[i].narrow(0, start + 1, len - 1).fill_(true);
    m.prompt[i].narrow(0, start + 1, prompt_end - start - 1).fill_(true);
    if (prompt_end - start - 2 > 0) {
      m.prompt_predicts[i].narrow(0, start + 1, prompt_end - start - 2).fill_(true);
    }
    if (t - prompt_end > 0) m.response_predicts[i].narrow(0, prompt_end - 1, t - prompt_end).fill_(true);
  }
  return m;
}

StatusOr<at::Tensor> LogProbabilities(const model::Model& model, const model::Batch& batch,
                                      const model::HookPoint& hook,
                                      const model::Intervention* intervention,
                                      const at::Tensor& positions,
                                      model::HookRegistry* registry) {
  model::ForwardRequest request;
  request.input_ids = batch.input_ids;
  request.attention_mask = batch.attention_mask;
  request.logits = model::ForwardRequest::Logits::kAll;
  request.hooks = registry;
  if (intervention != nullptr) {
    model::InterventionSite site;
    site.hook = hook;
    site.intervention = *intervention;
    site.positions = positions.to(model.device());
    KO_RETURN_IF_ERROR(registry->Intervene(std::move(site)));
  }
  KO_ASSIGN_OR_RETURN(model::ForwardResult result, model.Forward(request));
  return at::log_softmax(result.logits.to(at::kCPU).to(at::kDouble), -1);  // [B, T, V]
}

// CE of the next token at the columns of `predicts` and KL(clean || spliced) at `kl_at`.
void AddCosts(const at::Tensor& ids, const at::Tensor& clean, const at::Tensor& spliced,
              const at::Tensor& zero, const at::Tensor& predicts, const at::Tensor& kl_at,
              CostSums* sums) {
  const int64_t t = ids.size(1);
  at::Tensor kl = (clean.exp() * (clean - spliced)).sum(-1);  // [B, T]
  sums->kl += kl.masked_select(kl_at).sum().item<double>();
  sums->kl_tokens += kl_at.sum().item<int64_t>();
  if (t < 2) return;
  at::Tensor where = predicts.narrow(1, 0, t - 1);
  at::Tensor targets = ids.narrow(1, 1, t - 1).unsqueeze(-1);
  auto ce = [&](const at::Tensor& logp) {
    at::Tensor picked = logp.narrow(1, 0, t - 1).gather(-1, targets).squeeze(-1);
    return -picked.masked_select(where).sum().item<double>();
  };
  sums->ce_clean += ce(clean);
  sums->ce_spliced += ce(spliced);
  sums->ce_zero += ce(zero);
  sums->ce_tokens += where.sum().item<int64_t>();
}

Status AccumulateBatch(const model::Model& model, const std::shared_ptr<const Sae>& sae,
                       const std::vector<EvalSequence>& sequences, int64_t pad_id,
                       const EvaluateOptions& options, Accumulator* acc) {
  const model::HookPoint& hook = sae->hook();
  std::vector<std::vector<int64_t>> ids;
  for (const EvalSequence& s : sequences) ids.push_back(s.ids);
  model::Batch batch = model::MakeLeftPaddedBatch(ids, pad_id, model.device());
  const BatchMasks masks = MakeMasks(sequences, batch.input_ids.size(1));
  model::HookRegistry clean_registry(model.config());
  clean_registry.Cache(hook);
  at::Tensor clean_logp;
  if (options.splice) {
    KO_ASSIGN_OR_RETURN(clean_logp, LogProbabilities(model, batch, hook, nullptr, masks.splice,
                                                     &clean_registry));
  } else {
    model::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.end_layer = hook.layer + 1;
    request.logits = model::ForwardRequest::Logits::kNone;
    request.hooks = &clean_registry;
    KO_ASSIGN_OR_RETURN(model::ForwardResult ignored, model.Forward(request));
    (void)ignored;
  }
  KO_ASSIGN_OR_RETURN(at::Tensor cached, clean_registry.Cached(hook.Name()));
  const int64_t b = cached.size(0);
  const int64_t t = cached.size(1);
  at::Tensor index = masks.splice.reshape({b * t}).nonzero().squeeze(1);
  at::Tensor x = cached.reshape({b * t, sae->d_in()}).index_select(0, index.to(cached.device()));
  at::Tensor f = sae->Encode(x).to(at::kCPU);
  at::Tensor x_hat = sae->Reconstruct(x).to(at::kCPU);
  at::Tensor xd = x.to(at::kCPU).to(at::kDouble);
  acc->squared_error += (x_hat.to(at::kDouble) - xd).pow(2).sum().item<double>();
  acc->sum_x.add_(xd.sum(0));
  acc->sum_x2.add_(xd.pow(2).sum(0));
  at::Tensor active = f > 0;
  acc->active += active.sum().item<double>();
  acc->ever_active.logical_or_(active.any(0));
  acc->positions += x.size(0);
  if (!options.splice) return Status::Ok();

  model::HookRegistry splice_registry(model.config());
  const model::Intervention splice = MakeSpliceIntervention(sae);
  KO_ASSIGN_OR_RETURN(at::Tensor spliced_logp, LogProbabilities(model, batch, hook, &splice,
                                                                masks.splice, &splice_registry));
  model::HookRegistry zero_registry(model.config());
  const model::Intervention zero = model::Intervention::Zero();
  KO_ASSIGN_OR_RETURN(at::Tensor zero_logp, LogProbabilities(model, batch, hook, &zero,
                                                             masks.splice, &zero_registry));
  at::Tensor cpu_ids = batch.input_ids.to(at::kCPU);
  AddCosts(cpu_ids, clean_logp, spliced_logp, zero_logp, masks.prompt_predicts, masks.prompt,
           &acc->prompt);
  AddCosts(cpu_ids, clean_logp, spliced_logp, zero_logp, masks.response_predicts,
           masks.response_predicts, &acc->response);
  return Status::Ok();
}

SpliceCost Means(const CostSums& sums) {
  SpliceCost cost;
  cost.tokens = sums.ce_tokens;
  if (sums.ce_tokens > 0) {
    const double n = static_cast<double>(sums.ce_tokens);
    cost.ce_clean = sums.ce_clean / n;
    cost.ce_spliced = sums.ce_spliced / n;
    cost.ce_zero = sums.ce_zero / n;
    const double gap = cost.ce_zero - cost.ce_clean;
    cost.ce_recovered = gap != 0 ? (cost.ce_zero - cost.ce_spliced) / gap : 1.0;
  }
  if (sums.kl_tokens > 0) cost.kl = sums.kl / static_cast<double>(sums.kl_tokens);
  return cost;
}

}  // namespace

model::Intervention MakeSpliceIntervention(std::shared_ptr<const Sae> sae) {
  return model::Intervention::Custom(std::make_shared<SpliceEdit>(std::move(sae)));
}

StatusOr<SaeEvaluation> EvaluateSae(const model::Model& model, std::shared_ptr<const Sae> sae,
                                    const std::vector<EvalSequence>& sequences, int64_t pad_id,
                                    const EvaluateOptions& options) {
  if (!sae) return Status::InvalidArgument("sae evaluation: no SAE");
  if (sequences.empty()) return Status::InvalidArgument("sae evaluation: no prompts");
  if (options.batch_prompts < 1) {
    return Status::InvalidArgument("sae evaluation: batch prompts must be >= 1");
  }
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int64_t len = static_cast<int64_t>(sequences[i].ids.size());
    if (sequences[i].prompt_length < 2 || sequences[i].prompt_length > len) {
      return Status::InvalidArgument("sae evaluation: prompt " + std::to_string(i) + " has " +
                                     std::to_string(sequences[i].prompt_length) +
                                     " tokens of " + std::to_string(len) +
                                     " (at least 2, its first position is skipped)");
    }
  }
  KO_ASSIGN_OR_RETURN(const int64_t width, SaeHookWidth(model.config(), sae->hook()));
  if (width != sae->d_in()) {
    return Status::InvalidArgument(sae->Label() + ": d_in " + std::to_string(sae->d_in()) +
                                   " but " + sae->hook().Name() + " has width " +
                                   std::to_string(width));
  }
  try {
    Accumulator acc;
    acc.sum_x = at::zeros({width}, at::kDouble);
    acc.sum_x2 = at::zeros({width}, at::kDouble);
    acc.ever_active = at::zeros({sae->d_sae()}, at::kBool);
    const size_t step = static_cast<size_t>(options.batch_prompts);
    for (size_t begin = 0; begin < sequences.size(); begin += step) {
      const size_t end = std::min(sequences.size(), begin + step);
      std::vector<EvalSequence> batch(sequences.begin() + begin, sequences.begin() + end);
      KO_RETURN_IF_ERROR(AccumulateBatch(model, sae, batch, pad_id, options, &acc));
    }
    SaeEvaluation out;
    out.sequences = static_cast<int64_t>(sequences.size());
    out.positions = acc.positions;
    const double n = static_cast<double>(acc.positions);
    // sum |x - mean x|^2 = sum x^2 - |sum x|^2 / n, per dimension, in float64.
    const double total_variance = (acc.sum_x2 - acc.sum_x.pow(2) / n).sum().item<double>();
    out.fvu = total_variance > 0 ? acc.squared_error / total_variance : 0.0;
    out.l0 = acc.active / n;
    out.ever_active = acc.ever_active;
    out.dead_latents = sae->d_sae() - acc.ever_active.sum().item<int64_t>();
    out.dead_fraction = static_cast<double>(out.dead_latents) / static_cast<double>(sae->d_sae());
    out.spliced = options.splice;
    if (options.splice) {
      out.prompt = Means(acc.prompt);
      out.response = Means(acc.response);
    }
    return out;
  } catch (const c10::Error& e) {
    return Status::Internal(sae->Label() + ": evaluation: LibTorch: " + e.what_without_backtrace());
  }
}

StatusOr<SaeEvaluation> EvaluateSae(const model::Model& model, std::shared_ptr<const Sae> sae,
                                    const std::vector<std::vector<int64_t>>& prompts,
                                    int64_t pad_id, const EvaluateOptions& options) {
  std::vector<EvalSequence> sequences;
  sequences.reserve(prompts.size());
  for (const std::vector<int64_t>& ids : prompts) {
    sequences.push_back({ids, static_cast<int64_t>(ids.size())});
  }
  return EvaluateSae(model, std::move(sae), sequences, pad_id, options);
}

}  // namespace knockout::sae
