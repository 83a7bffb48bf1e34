#include "worker/sae/train.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace knockout::sae {
namespace {

using formats::SaeArchitecture;

// The data-order generator is seeded apart from the initialisation's, so that changing one
// (e.g. the number of latents) does not reshuffle the other.
constexpr uint64_t kDataSeedSalt = 0x9E3779B97F4A7C15ull;

formats::SaeTensor ToSaeTensor(const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().to(at::kCPU).to(at::kFloat).contiguous();
  formats::SaeTensor out;
  out.shape = t.sizes().vec();
  out.values.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  return out;
}

}  // namespace

// --- options ---------------------------------------------------------------------------------

Status ValidateTrainOptions(const SaeTrainOptions& o, int64_t d_in) {
  auto bad = [](const std::string& what) { return Status::InvalidArgument("train-sae: " + what); };
  if (o.architecture != SaeArchitecture::kTopK && o.architecture != SaeArchitecture::kJumpRelu) {
    return bad("--arch: only topk and jumprelu SAEs can be trained");
  }
  if (d_in < 1) return bad("d_in must be >= 1");
  if (o.d_sae < 0) return bad("--latents must be >= 1");
  const int64_t d_sae = o.d_sae > 0 ? o.d_sae : 4 * d_in;
  if (o.architecture == SaeArchitecture::kTopK && (o.k < 1 || o.k > d_sae)) {
    return bad("--k " + std::to_string(o.k) + " must be in [1, --latents " +
               std::to_string(d_sae) + "]");
  }
  if (o.steps < 1) return bad("--steps must be >= 1");
  if (o.batch_tokens < 1) return bad("--batch-tokens must be >= 1");
  if (o.buffer_tokens < o.batch_tokens) {
    return bad("--buffer-tokens " + std::to_string(o.buffer_tokens) + " must be >= --batch-tokens " +
               std::to_string(o.batch_tokens));
  }
  if (!(o.lr >= 0.0) || !std::isfinite(o.lr)) return bad("--lr must be a finite number > 0");
  if (!(o.adam_beta1 >= 0 && o.adam_beta1 < 1 && o.adam_beta2 >= 0 && o.adam_beta2 < 1)) {
    return bad("Adam's betas must be in [0, 1)");
  }
  if (!(o.adam_epsilon > 0)) return bad("Adam's epsilon must be > 0");
  if (!(o.warmup_fraction >= 0 && o.warmup_fraction <= 1 && o.decay_fraction >= 0 &&
        o.decay_fraction <= 1)) {
    return bad("the warm-up and decay fractions must be in [0, 1]");
  }
  if (o.k_aux < 0) return bad("--k-aux must be >= 1");
  if (!(o.aux_coefficient >= 0) || !std::isfinite(o.aux_coefficient)) {
    return bad("--aux-coefficient must be a finite number >= 0");
  }
  if (o.dead_tokens < 1) return bad("--dead-tokens must be >= 1");
  if (!(o.l0_coefficient >= 0) || !std::isfinite(o.l0_coefficient)) {
    return bad("--l0-coefficient must be a finite number >= 0");
  }
  if (!(o.l0_warmup_fraction >= 0 && o.l0_warmup_fraction <= 1)) {
    return bad("the L0 warm-up fraction must be in [0, 1]");
  }
  if (!(o.bandwidth > 0) || !std::isfinite(o.bandwidth)) return bad("--bandwidth must be > 0");
  if (!(o.initial_threshold > 0) || !std::isfinite(o.initial_threshold)) {
    return bad("--initial-threshold must be > 0");
  }
  return Status::Ok();
}

double EffectiveLearningRate(const SaeTrainOptions& options, int64_t d_sae) {
  if (options.lr > 0) return options.lr;
  return 2e-4 / std::sqrt(static_cast<double>(d_sae) / 16384.0);
}

// --- sources ---------------------------------------------------------------------------------

TensorSource::TensorSource(at::Tensor rows, int64_t block_rows)
    : rows_(rows.to(at::kCPU).to(at::kFloat).contiguous()), block_rows_(std::max<int64_t>(1, block_rows)) {}

int64_t TensorSource::d_in() const { return rows_.size(1); }
int64_t TensorSource::RowsPerPass() const { return rows_.size(0); }

Status TensorSource::StartPass(at::Generator&) {
  next_ = 0;
  return Status::Ok();
}

StatusOr<at::Tensor> TensorSource::NextBlock() {
  if (next_ >= rows_.size(0)) return at::Tensor();
  const int64_t n = std::min(block_rows_, rows_.size(0) - next_);
  at::Tensor block = rows_.narrow(0, next_, n);
  next_ += n;
  return block;
}

StatusOr<at::Tensor> HookActivations(const model::Model& model, const model::HookPoint& hook,
                                     const std::vector<std::vector<int64_t>>& sequences,
                                     int64_t pad_id) {
  KO_ASSIGN_OR_RETURN(const int64_t width, SaeHookWidth(model.config(), hook));
  if (sequences.empty()) return at::zeros({0, width}, at::kFloat);
  model::Batch batch = model::MakeLeftPaddedBatch(sequences, pad_id, model.device());
  model::HookRegistry registry(model.config());
  registry.Cache(hook);
  model::ForwardRequest request;
  request.input_ids = batch.input_ids;
  request.attention_mask = batch.attention_mask;
  request.end_layer = hook.layer + 1;
  request.logits = model::ForwardRequest::Logits::kNone;
  request.hooks = &registry;
  KO_ASSIGN_OR_RETURN(model::ForwardResult result, model.Forward(request));
  (void)result;
  KO_ASSIGN_OR_RETURN(at::Tensor cached, registry.Cached(hook.Name()));
  return SaePositionRows(cached, sequences, width);
}

at::Tensor SaePositionRows(const at::Tensor& cached,
                           const std::vector<std::vector<int64_t>>& sequences, int64_t width) {
  const int64_t b = cached.size(0);
  const int64_t t = cached.size(1);
  at::Tensor rows = cached.reshape({b * t, width}).to(at::kCPU).to(at::kFloat);
  at::Tensor index = SaePositionMask(sequences).reshape({b * t}).nonzero().squeeze(1);
  return rows.index_select(0, index).contiguous();
}

at::Tensor SaePositionMask(const std::vector<std::vector<int64_t>>& sequences) {
  int64_t t = 0;
  for (const auto& sequence : sequences) t = std::max<int64_t>(t, sequence.size());
  at::Tensor mask = at::zeros({static_cast<int64_t>(sequences.size()), t}, at::kBool);
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int64_t len = static_cast<int64_t>(sequences[i].size());
    if (len > 1) mask[static_cast<int64_t>(i)].narrow(0, t - len + 1, len - 1).fill_(true);
  }
  return mask;
}

PromptActivationSource::PromptActivationSource(const model::Model& model,
                                               const model::HookPoint& hook)
    : model_(model), hook_(hook) {}

StatusOr<std::unique_ptr<PromptActivationSource>> PromptActivationSource::Create(
    const model::Model& model, const model::HookPoint& hook,
    std::vector<std::vector<int64_t>> sequences, int64_t pad_id, int64_t batch_prompts) {
  KO_ASSIGN_OR_RETURN(const int64_t width, SaeHookWidth(model.config(), hook));
  if (sequences.empty()) return Status::InvalidArgument("train-sae: no training prompts");
  if (batch_prompts < 1) return Status::InvalidArgument("train-sae: batch prompts must be >= 1");
  int64_t rows = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (sequences[i].size() < 2) {
      return Status::InvalidArgument("train-sae: prompt " + std::to_string(i) +
                                     " has fewer than 2 tokens (its first position is skipped)");
    }
    rows += static_cast<int64_t>(sequences[i].size()) - 1;
  }
  std::unique_ptr<PromptActivationSource> source(new PromptActivationSource(model, hook));
  source->sequences_ = std::move(sequences);
  source->pad_id_ = pad_id;
  source->batch_prompts_ = batch_prompts;
  source->d_in_ = width;
  source->rows_ = rows;
  return source;
}

Status PromptActivationSource::StartPass(at::Generator& generator) {
  const int64_t n = static_cast<int64_t>(sequences_.size());
  at::Tensor order = at::randperm(n, generator, at::TensorOptions().dtype(at::kLong));
  order_.assign(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + n);
  next_ = 0;
  return Status::Ok();
}

StatusOr<at::Tensor> PromptActivationSource::NextBlock() {
  if (next_ >= order_.size()) return at::Tensor();
  std::vector<std::vector<int64_t>> batch;
  while (next_ < order_.size() && static_cast<int64_t>(batch.size()) < batch_prompts_) {
    batch.push_back(sequences_[order_[next_++]]);
  }
  return HookActivations(model_, hook_, batch, pad_id_);
}

// --- the buffer ------------------------------------------------------------------------------

StatusOr<std::unique_ptr<ActivationBuffer>> ActivationBuffer::Create(ActivationSource* source,
                                                                     int64_t capacity,
                                                                     at::Generator* generator) {
  if (capacity < 1) return Status::InvalidArgument("train-sae: buffer tokens must be >= 1");
  std::unique_ptr<ActivationBuffer> buffer(new ActivationBuffer());
  buffer->source_ = source;
  buffer->generator_ = generator;
  buffer->capacity_ = capacity;
  KO_RETURN_IF_ERROR(buffer->NextPass());
  // Read until the pass ends or the buffer is full: a pass that ends first is kept whole.
  std::vector<at::Tensor> blocks;
  int64_t held = 0;
  bool pass_over = false;
  while (held < capacity) {
    KO_ASSIGN_OR_RETURN(at::Tensor block, source->NextBlock());
    if (!block.defined()) {
      pass_over = true;
      break;
    }
    if (block.dim() != 2 || block.size(1) != source->d_in()) {
      return Status::Internal("train-sae: an activation block is not [n, d_in]");
    }
    held += block.size(0);
    blocks.push_back(std::move(block));
  }
  if (held == 0) return Status::FailedPrecondition("train-sae: the data yields no activation rows");
  buffer->rows_ = at::cat(blocks, 0).to(at::kFloat).contiguous();
  if (!pass_over && source->RowsPerPass() >= 0 && source->RowsPerPass() == held) {
    pass_over = true;  // the block that filled the buffer was the pass's last
  }
  buffer->everything_ = pass_over;
  if (buffer->everything_) {
    buffer->order_ = at::randperm(held, *generator, at::TensorOptions().dtype(at::kLong));
  } else {
    buffer->rows_ = buffer->rows_.index_select(
        0, at::randperm(held, *generator, at::TensorOptions().dtype(at::kLong)));
    buffer->serve_end_ = held / 2;
  }
  return buffer;
}

Status ActivationBuffer::NextPass() {
  ++epochs_;
  return source_->StartPass(*generator_);
}

Status ActivationBuffer::Fill() {
  std::vector<at::Tensor> blocks = {rows_};
  int64_t held = rows_.size(0);
  bool fresh_pass = false;  // a pass begun here that has yielded nothing yet
  while (held < capacity_) {
    KO_ASSIGN_OR_RETURN(at::Tensor block, source_->NextBlock());
    if (!block.defined()) {
      if (fresh_pass) {
        return Status::FailedPrecondition("train-sae: a pass over the data yielded no rows");
      }
      KO_RETURN_IF_ERROR(NextPass());
      fresh_pass = true;
      continue;
    }
    fresh_pass = false;
    held += block.size(0);
    blocks.push_back(std::move(block));
  }
  at::Tensor all = at::cat(blocks, 0).to(at::kFloat);
  rows_ = all.index_select(0, at::randperm(held, *generator_, at::TensorOptions().dtype(at::kLong)));
  serve_end_ = held / 2;
  cursor_ = 0;
  return Status::Ok();
}

StatusOr<at::Tensor> ActivationBuffer::Next(int64_t rows) {
  std::vector<at::Tensor> pieces;
  int64_t need = rows;
  while (need > 0) {
    if (everything_) {
      const int64_t held = rows_.size(0);
      if (cursor_ == held) {
        order_ = at::randperm(held, *generator_, at::TensorOptions().dtype(at::kLong));
        cursor_ = 0;
        ++epochs_;
      }
      const int64_t n = std::min(need, held - cursor_);
      pieces.push_back(rows_.index_select(0, order_.narrow(0, cursor_, n)));
      cursor_ += n;
      need -= n;
    } else {
      if (cursor_ >= serve_end_) {
        rows_ = rows_.narrow(0, serve_end_, rows_.size(0) - serve_end_);
        KO_RETURN_IF_ERROR(Fill());
      }
      const int64_t n = std::min(need, serve_end_ - cursor_);
      pieces.push_back(rows_.narrow(0, cursor_, n));
      cursor_ += n;
      need -= n;
    }
  }
  return pieces.size() == 1 ? pieces[0].contiguous() : at::cat(pieces, 0);
}

// --- the trainer -----------------------------------------------------------------------------

StatusOr<std::unique_ptr<SaeTrainer>> SaeTrainer::Create(int64_t d_in,
                                                         const SaeTrainOptions& options) {
  KO_RETURN_IF_ERROR(ValidateTrainOptions(options, d_in));
  std::unique_ptr<SaeTrainer> trainer(new SaeTrainer());
  trainer->options_ = options;
  trainer->d_in_ = d_in;
  trainer->d_sae_ = options.d_sae > 0 ? options.d_sae : 4 * d_in;
  trainer->k_aux_ = options.k_aux > 0 ? options.k_aux : std::max<int64_t>(1, d_in / 2);
  trainer->k_aux_ = std::min(trainer->k_aux_, trainer->d_sae_);
  trainer->lr_ = EffectiveLearningRate(options, trainer->d_sae_);
  return trainer;
}

Status SaeTrainer::Initialize(const at::Tensor& sample_in) {
  if (sample_in.dim() != 2 || sample_in.size(1) != d_in_ || sample_in.size(0) < 1) {
    return Status::InvalidArgument("train-sae: the initialisation sample is not [n, d_in]");
  }
  at::Tensor sample = sample_in.to(at::kDouble);
  at::Tensor mean = sample.mean(0);
  const double variance = (sample - mean).pow(2).sum().item<double>() /
                          (static_cast<double>(sample.size(0)) * static_cast<double>(d_in_));
  if (!(variance > 0) || !std::isfinite(variance)) {
    return Status::InvalidArgument(
        "train-sae: the activations have no variance (or are not finite): nothing to learn");
  }
  scale_ = std::sqrt(variance);
  at::Generator generator = at::detail::createCPUGenerator(options_.seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  // Unit-norm random decoder rows; the encoder starts as their transpose (Gao et al.).
  at::Tensor W_dec = at::randn({d_sae_, d_in_}, generator, f32);
  W_dec_ = W_dec / W_dec.norm(2, {1}, /*keepdim=*/true);
  W_enc_ = W_dec_.clone();  // rows: one encoder vector per latent
  b_enc_ = at::zeros({d_sae_}, f32);
  b_dec_ = (mean / scale_).to(at::kFloat);
  grad_W_enc_ = at::zeros_like(W_enc_);
  grad_b_enc_ = at::zeros_like(b_enc_);
  grad_W_dec_ = at::zeros_like(W_dec_);
  grad_b_dec_ = at::zeros_like(b_dec_);
  std::vector<at::Tensor*> params = {&W_enc_, &b_enc_, &W_dec_, &b_dec_};
  if (options_.architecture == SaeArchitecture::kJumpRelu) {
    log_threshold_ = at::full({d_sae_}, std::log(options_.initial_threshold), f32);
    grad_log_threshold_ = at::zeros_like(log_threshold_);
    params.push_back(&log_threshold_);
  }
  m_.clear();
  v_.clear();
  for (at::Tensor* p : params) {
    m_.push_back(at::zeros_like(*p));
    v_.push_back(at::zeros_like(*p));
  }
  tokens_since_active_ = at::zeros({d_sae_}, at::kLong);
  step_ = 0;
  initialized_ = true;
  return Status::Ok();
}

double SaeTrainer::LearningRate(int64_t step) const {
  const int64_t steps = options_.steps;
  const int64_t warmup = std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(options_.warmup_fraction * static_cast<double>(steps))));
  const int64_t decay =
      static_cast<int64_t>(std::llround(options_.decay_fraction * static_cast<double>(steps)));
  double factor = std::min(1.0, static_cast<double>(step) / static_cast<double>(warmup));
  if (decay > 0 && step > steps - decay) {
    factor *= static_cast<double>(steps - step + 1) / static_cast<double>(decay + 1);
  }
  return lr_ * factor;
}

void SaeTrainer::AdamUpdate(at::Tensor& param, const at::Tensor& grad, at::Tensor& m,
                            at::Tensor& v, double lr) {
  const double b1 = options_.adam_beta1, b2 = options_.adam_beta2;
  m.mul_(b1).add_(grad, 1.0 - b1);
  v.mul_(b2).addcmul_(grad, grad, 1.0 - b2);
  const double correction1 = 1.0 - std::pow(b1, static_cast<double>(step_));
  const double correction2 = 1.0 - std::pow(b2, static_cast<double>(step_));
  at::Tensor denominator = (v.sqrt() / std::sqrt(correction2)).add_(options_.adam_epsilon);
  param.addcdiv_(m, denominator, -lr / correction1);
}

at::Tensor SaeTrainer::TopKGradients(const at::Tensor& x, TrainStepStats* stats) {
  const int64_t n = x.size(0);
  const int64_t k = options_.k;
  at::Tensor dead = tokens_since_active_ >= options_.dead_tokens;  // before this step
  at::Tensor centred = x - b_dec_;
  at::Tensor pre = at::addmm(b_enc_, centred, W_enc_.t());  // [n, d_sae]
  auto [values, indices] = at::topk(pre, k, /*dim=*/1);
  // f is sparse: k entries per row. The decoder side and the encoder's gradient use the
  // (row, latent) pairs only; the one dense product is the encoder's.
  at::Tensor acts = at::relu(values).reshape({n * k});
  at::Tensor rows = at::arange(n, at::kLong).repeat_interleave(k);
  at::Tensor latents = indices.reshape({n * k});
  at::Tensor f = at::sparse_coo_tensor(at::stack({rows, latents}), acts, {n, d_sae_});
  at::Tensor x_hat = at::mm(f, W_dec_).add_(b_dec_);
  at::Tensor error = x_hat - x;
  const double total_variance = (x - x.mean(0)).pow(2).sum().item<double>();
  const double tv = std::max(total_variance, 1e-30);
  stats->fvu = error.pow(2).sum().item<double>() / tv;
  at::Tensor positive = acts > 0;
  stats->l0 = positive.sum().item<double>() / static_cast<double>(n);
  stats->dead = dead.sum().item<int64_t>();

  at::Tensor g = error * (2.0 / tv);  // d loss / d x_hat
  grad_b_dec_.copy_(g.sum(0));
  grad_W_dec_.copy_(at::mm(f.t(), g));
  // d loss / d f at the kept entries, <g_row, W_dec[latent]> (one dense product is faster
  // than gathering n * k decoder rows).
  at::Tensor df = at::mm(g, W_dec_.t()).gather(1, indices);
  at::Tensor dpre = df.reshape({n * k}) * positive;
  at::Tensor dpre_t = at::sparse_coo_tensor(at::stack({latents, rows}), dpre, {d_sae_, n});
  grad_W_enc_.copy_(at::mm(dpre_t, centred));
  grad_b_enc_.zero_().index_add_(0, latents, dpre);

  // AuxK (Gao et al.): the dead latents' top k_aux pre-activations reconstruct the residual
  // x - x_hat (a constant target: no gradient flows into the main reconstruction).
  stats->aux_loss = 0.0;
  if (stats->dead > 0 && options_.aux_coefficient > 0) {
    at::Tensor dead_index = dead.nonzero().squeeze(1);
    const int64_t n_dead = dead_index.size(0);
    const int64_t k_aux = std::min(k_aux_, n_dead);
    const double weight = options_.aux_coefficient *
                          std::min(1.0, static_cast<double>(n_dead) / static_cast<double>(k_aux_));
    at::Tensor pre_dead = pre.index_select(1, dead_index);  // [n, n_dead]
    auto [aux_values, aux_indices] = at::topk(pre_dead, k_aux, 1);
    at::Tensor aux_f = at::zeros_like(pre_dead).scatter_(1, aux_indices, at::relu(aux_values));
    at::Tensor W_dead = W_dec_.index_select(0, dead_index);  // [n_dead, d_in]
    at::Tensor aux_diff = at::mm(aux_f, W_dead) + error;     // e_hat - (x - x_hat)
    stats->aux_loss = weight * aux_diff.pow(2).sum().item<double>() / tv;
    at::Tensor h = aux_diff * (2.0 * weight / tv);
    grad_W_dec_.index_add_(0, dead_index, at::mm(aux_f.t(), h));
    at::Tensor aux_df = at::mm(h, W_dead.t()).gather(1, aux_indices);
    at::Tensor aux_dpre =
        at::zeros_like(pre_dead).scatter_(1, aux_indices, aux_df * (aux_values > 0));
    grad_W_enc_.index_add_(0, dead_index, at::mm(aux_dpre.t(), centred));
    grad_b_enc_.index_add_(0, dead_index, aux_dpre.sum(0));
  }
  stats->loss = stats->fvu + stats->aux_loss;

  // b_dec also enters through the encoder: pre = (x - b_dec) W_enc^T + b_enc.
  grad_b_dec_.sub_(at::mv(W_enc_.t(), grad_b_enc_));
  return at::zeros({d_sae_}, at::kBool).index_fill_(0, latents.masked_select(positive), true);
}

at::Tensor SaeTrainer::JumpReluGradients(const at::Tensor& x, TrainStepStats* stats) {
  const int64_t n = x.size(0);
  const int64_t steps = options_.steps;
  const int64_t l0_warmup = std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(options_.l0_warmup_fraction * static_cast<double>(steps))));
  const double l0_coefficient =
      options_.l0_coefficient *
      std::min(1.0, static_cast<double>(step_) / static_cast<double>(l0_warmup));
  at::Tensor dead = tokens_since_active_ >= options_.dead_tokens;
  stats->dead = dead.sum().item<int64_t>();

  at::Tensor centred = x - b_dec_;
  at::Tensor pre = at::addmm(b_enc_, centred, W_enc_.t());  // [n, d_sae]
  at::Tensor threshold = log_threshold_.exp();
  at::Tensor active = pre > threshold;
  at::Tensor gate = active.to(at::kFloat);
  at::Tensor f = pre * gate;
  at::Tensor x_hat = at::addmm(b_dec_, f, W_dec_);
  at::Tensor error = x_hat - x;
  const double total_variance = (x - x.mean(0)).pow(2).sum().item<double>();
  const double tv = std::max(total_variance, 1e-30);
  stats->fvu = error.pow(2).sum().item<double>() / tv;
  stats->l0 = gate.sum().item<double>() / static_cast<double>(n);
  stats->aux_loss = 0.0;
  stats->loss = stats->fvu + l0_coefficient * stats->l0;

  at::Tensor g = error * (2.0 / tv);
  grad_b_dec_.copy_(g.sum(0));
  at::mm_out(grad_W_dec_, f.t(), g);
  at::Tensor df = at::mm(g, W_dec_.t());  // [n, d_sae]
  at::Tensor dpre = df * gate;
  // Straight-through estimators (Rajamanoharan et al. 2024), rectangle kernel
  // K(u) = 1[|u| < 1/2] of width eps:
  //   d/dtheta JumpReLU(pre)      := -(theta / eps) K((pre - theta) / eps)
  //   d/dtheta H(pre - theta)     := -(1 / eps)     K((pre - theta) / eps)
  // (no pseudo-gradient to pre), and d/dlog_theta = theta d/dtheta.
  const double eps = options_.bandwidth;
  at::Tensor window = ((pre - threshold).abs() < eps / 2).to(at::kFloat);  // [n, d_sae]
  at::Tensor through_f = -(df * window).sum(0) * threshold / eps;
  at::Tensor through_l0 = -window.sum(0) * (l0_coefficient / (eps * static_cast<double>(n)));
  grad_log_threshold_.copy_((through_f + through_l0) * threshold);

  at::mm_out(grad_W_enc_, dpre.t(), centred);
  grad_b_enc_.copy_(dpre.sum(0));
  grad_b_dec_.sub_(at::mv(W_enc_.t(), grad_b_enc_));
  return active.any(0);
}

TrainStepStats SaeTrainer::Step(const at::Tensor& batch) {
  TrainStepStats stats;
  ++step_;
  stats.step = step_;
  stats.lr = LearningRate(step_);
  at::Tensor x = (batch.to(at::kFloat) / scale_).contiguous();
  const bool topk = options_.architecture == SaeArchitecture::kTopK;
  at::Tensor fired = topk ? TopKGradients(x, &stats) : JumpReluGradients(x, &stats);
  tokens_since_active_.add_(x.size(0)).masked_fill_(fired, 0);

  // Unit-norm decoder rows: remove each row's gradient component along the row itself.
  grad_W_dec_.sub_((grad_W_dec_ * W_dec_).sum(1, /*keepdim=*/true) * W_dec_);
  AdamUpdate(W_enc_, grad_W_enc_, m_[0], v_[0], stats.lr);
  AdamUpdate(b_enc_, grad_b_enc_, m_[1], v_[1], stats.lr);
  AdamUpdate(W_dec_, grad_W_dec_, m_[2], v_[2], stats.lr);
  AdamUpdate(b_dec_, grad_b_dec_, m_[3], v_[3], stats.lr);
  if (!topk) AdamUpdate(log_threshold_, grad_log_threshold_, m_[4], v_[4], stats.lr);
  W_dec_.div_(W_dec_.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12));
  return stats;
}

formats::SaeWeights SaeTrainer::Weights(const std::string& hook) const {
  formats::SaeWeights w;
  formats::SaeConfig& c = w.config;
  c.source = formats::SaeSource::kSaeLens;
  c.architecture = options_.architecture;
  c.hook = hook;
  c.d_in = d_in_;
  c.d_sae = d_sae_;
  c.k = options_.architecture == SaeArchitecture::kTopK ? options_.k : 0;
  c.apply_b_dec_to_input = true;
  c.normalization = formats::SaeNormalization::kNone;
  c.dtype = "float32";
  // Back to the data's units: the latents of x are scale * the latents of x / scale.
  w.W_enc = ToSaeTensor(W_enc_.t());
  w.W_dec = ToSaeTensor(W_dec_);
  w.b_enc = ToSaeTensor(b_enc_ * scale_);
  w.b_dec = ToSaeTensor(b_dec_ * scale_);
  if (options_.architecture == SaeArchitecture::kJumpRelu) {
    w.threshold = ToSaeTensor(log_threshold_.exp() * scale_);
  }
  return w;
}

// --- the loop --------------------------------------------------------------------------------

StatusOr<TrainResult> TrainSae(ActivationSource& source, const SaeTrainOptions& options,
                               const std::string& hook, const TrainProgressCallback& progress,
                               int64_t progress_every) {
  try {
    const int64_t d_in = source.d_in();
    KO_ASSIGN_OR_RETURN(std::unique_ptr<SaeTrainer> trainer, SaeTrainer::Create(d_in, options));
    at::Generator data_generator = at::detail::createCPUGenerator(options.seed ^ kDataSeedSalt);
    KO_ASSIGN_OR_RETURN(
        std::unique_ptr<ActivationBuffer> buffer,
        ActivationBuffer::Create(&source, options.buffer_tokens, &data_generator));
    KO_RETURN_IF_ERROR(trainer->Initialize(buffer->held()));

    TrainResult result;
    result.initial_weights = trainer->Weights(hook);
    result.scale = trainer->scale();
    result.lr = EffectiveLearningRate(options, trainer->d_sae());
    result.held_everything = buffer->holds_everything();
    const int64_t tail = std::max<int64_t>(1, options.steps / 20);
    TrainStepStats sum;
    for (int64_t step = 1; step <= options.steps; ++step) {
      KO_ASSIGN_OR_RETURN(at::Tensor batch, buffer->Next(options.batch_tokens));
      TrainStepStats stats = trainer->Step(batch);
      result.rows_seen += batch.size(0);
      if (!std::isfinite(stats.loss)) {
        return Status::FailedPrecondition("train-sae: the loss diverged (" +
                                          std::to_string(stats.loss) + ") at step " +
                                          std::to_string(step) + "; lower --lr");
      }
      if (step > options.steps - tail) {
        sum.loss += stats.loss;
        sum.fvu += stats.fvu;
        sum.l0 += stats.l0;
        sum.aux_loss += stats.aux_loss;
        sum.dead += stats.dead;
      }
      result.last = stats;
      if (progress && (step % std::max<int64_t>(1, progress_every) == 0 || step == options.steps)) {
        progress({stats, buffer->epochs_started()});
      }
    }
    const double t = static_cast<double>(tail);
    result.final_mean = {options.steps, result.last.lr, sum.loss / t, sum.fvu / t,
                         sum.l0 / t, sum.aux_loss / t, static_cast<int64_t>(std::llround(static_cast<double>(sum.dead) / t))};
    result.steps = options.steps;
    result.epochs = buffer->epochs_started();
    result.weights = trainer->Weights(hook);
    return result;
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("train-sae: LibTorch: ") + e.what_without_backtrace());
  }
}

}  // namespace knockout::sae
