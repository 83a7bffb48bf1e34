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
      return Status::InvalidArgument(hook.Name() + ": the SAE " + sae_->path() + " reads " +
                                     sae_->hook().Name());
    }
    return Status::Ok();
  }
  at::Tensor Apply(const at::Tensor& x, int64_t offset) const override {
    return sae_->Decode(sae_->Encode(x)).reshape(x.sizes()).to(x.scalar_type());
  }

 private:
  std::shared_ptr<const Sae> sae_;
};

// Sums over the positions of several batches (float64).
struct Accumulator {
  double squared_error = 0.0;
  at::Tensor sum_x, sum_x2;  // [d_in] float64
  double active = 0.0;
  at::Tensor ever_active;    // bool [d_sae]
  int64_t positions = 0;
  double ce_clean = 0.0, ce_spliced = 0.0, ce_zero = 0.0, kl = 0.0;
  int64_t predicted = 0;
};

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

Status AccumulateBatch(const model::Model& model, const std::shared_ptr<const Sae>& sae,
                       const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id,
                       const EvaluateOptions& options, Accumulator* acc) {
  const model::HookPoint& hook = sae->hook();
  model::Batch batch = model::MakeLeftPaddedBatch(sequences, pad_id, model.device());
  at::Tensor positions = SaePositionMask(sequences);  // [B, T] bool, CPU
  model::HookRegistry clean_registry(model.config());
  clean_registry.Cache(hook);
  at::Tensor clean_logp;
  if (options.splice) {
    KO_ASSIGN_OR_RETURN(clean_logp,
                        LogProbabilities(model, batch, hook, nullptr, positions, &clean_registry));
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
  at::Tensor x = SaePositionRows(cached, sequences, sae->d_in());  // [n, d_in] float32
  at::Tensor f = sae->Encode(x.to(model.device())).to(at::kCPU);
  at::Tensor x_hat = sae->Decode(f.to(model.device())).to(at::kCPU);
  at::Tensor xd = x.to(at::kDouble);
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
                                                                positions, &splice_registry));
  model::HookRegistry zero_registry(model.config());
  const model::Intervention zero = model::Intervention::Zero();
  KO_ASSIGN_OR_RETURN(at::Tensor zero_logp, LogProbabilities(model, batch, hook, &zero,
                                                             positions, &zero_registry));
  // KL(clean || spliced) at every position of P.
  at::Tensor kl = (clean_logp.exp() * (clean_logp - spliced_logp)).sum(-1);  // [B, T]
  acc->kl += kl.masked_select(positions).sum().item<double>();
  // CE at the positions of P followed by a prompt token: column c predicts column c + 1.
  const int64_t t = positions.size(1);
  if (t >= 2) {
    at::Tensor predicts = positions.narrow(1, 0, t - 1);  // [B, T-1]: all of P but the last
    at::Tensor targets = batch.input_ids.to(at::kCPU).narrow(1, 1, t - 1).unsqueeze(-1);
    auto ce = [&](const at::Tensor& logp) {
      at::Tensor picked = logp.narrow(1, 0, t - 1).gather(-1, targets).squeeze(-1);
      return -picked.masked_select(predicts).sum().item<double>();
    };
    acc->ce_clean += ce(clean_logp);
    acc->ce_spliced += ce(spliced_logp);
    acc->ce_zero += ce(zero_logp);
    acc->predicted += predicts.sum().item<int64_t>();
  }
  return Status::Ok();
}

}  // namespace

model::Intervention MakeSpliceIntervention(std::shared_ptr<const Sae> sae) {
  return model::Intervention::Custom(std::make_shared<SpliceEdit>(std::move(sae)));
}

StatusOr<SaeEvaluation> EvaluateSae(const model::Model& model, std::shared_ptr<const Sae> sae,
                                    const std::vector<std::vector<int64_t>>& sequences,
                                    int64_t pad_id, const EvaluateOptions& options) {
  if (!sae) return Status::InvalidArgument("sae evaluation: no SAE");
  if (sequences.empty()) return Status::InvalidArgument("sae evaluation: no prompts");
  if (options.batch_prompts < 1) {
    return Status::InvalidArgument("sae evaluation: batch prompts must be >= 1");
  }
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (sequences[i].size() < 2) {
      return Status::InvalidArgument("sae evaluation: prompt " + std::to_string(i) +
                                     " has fewer than 2 tokens");
    }
  }
  KO_ASSIGN_OR_RETURN(const int64_t width, SaeHookWidth(model.config(), sae->hook()));
  if (width != sae->d_in()) {
    return Status::InvalidArgument(sae->path() + ": d_in " + std::to_string(sae->d_in()) +
                                   " but " + sae->hook().Name() + " has width " +
                                   std::to_string(width));
  }
  try {
    Accumulator acc;
    acc.sum_x = at::zeros({width}, at::kDouble);
    acc.sum_x2 = at::zeros({width}, at::kDouble);
    acc.ever_active = at::zeros({sae->d_sae()}, at::kBool);
    for (size_t begin = 0; begin < sequences.size();
         begin += static_cast<size_t>(options.batch_prompts)) {
      const size_t end = std::min(sequences.size(), begin + static_cast<size_t>(options.batch_prompts));
      std::vector<std::vector<int64_t>> batch(sequences.begin() + begin, sequences.begin() + end);
      KO_RETURN_IF_ERROR(AccumulateBatch(model, sae, batch, pad_id, options, &acc));
    }
    SaeEvaluation out;
    out.prompts = static_cast<int64_t>(sequences.size());
    out.positions = acc.positions;
    const double n = static_cast<double>(acc.positions);
    // sum |x - mean x|^2 = sum x^2 - |sum x|^2 / n, per dimension, in float64.
    const double total_variance =
        (acc.sum_x2 - acc.sum_x.pow(2) / n).sum().item<double>();
    out.fvu = total_variance > 0 ? acc.squared_error / total_variance : 0.0;
    out.l0 = acc.active / n;
    out.ever_active = acc.ever_active;
    out.dead_latents = sae->d_sae() - acc.ever_active.sum().item<int64_t>();
    out.dead_fraction = static_cast<double>(out.dead_latents) / static_cast<double>(sae->d_sae());
    if (options.splice) {
      out.kl = acc.kl / n;
      out.predicted_tokens = acc.predicted;
      const double p = static_cast<double>(std::max<int64_t>(1, acc.predicted));
      out.ce_clean = acc.ce_clean / p;
      out.ce_spliced = acc.ce_spliced / p;
      out.ce_zero = acc.ce_zero / p;
      const double gap = out.ce_zero - out.ce_clean;
      out.ce_recovered = gap != 0 ? (out.ce_zero - out.ce_spliced) / gap : 1.0;
    }
    return out;
  } catch (const c10::Error& e) {
    return Status::Internal(sae->path() + ": evaluation: LibTorch: " + e.what_without_backtrace());
  }
}

}  // namespace knockout::sae
