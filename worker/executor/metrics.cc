#include "worker/executor/metrics.h"

#include <algorithm>

#include "worker/model/model.h"

namespace knockout::executor {

namespace {
// Vocabulary rows converted to float64 at a time: bounded scratch (~64 MB at d = 4096).
int64_t VocabBlock(int64_t d_model) { return std::max<int64_t>(1024, (int64_t{1} << 23) / std::max<int64_t>(1, d_model)); }

// The final norm's effective weight, float64: w, or 1 + w for Gemma 2 (Gemma2RMSNorm), as the
// model's forward applies it (model.cc).
at::Tensor FinalNormWeight(const model::Model& model) {
  const at::Tensor w = model.weights().final_norm.to(at::kDouble);
  return model.config().family == formats::Family::kGemma2 ? w + 1.0 : w;
}
}  // namespace

at::Tensor FinalScale(const model::Model& model, const at::Tensor& x32) {
  return at::sqrt(x32.to(at::kFloat).pow(2).mean(-1, /*keepdim=*/true) + model.config().rms_norm_eps);
}

MetricHead::MetricHead(const model::Model& model) : model_(model) {
  const model::ModelWeights& w = model.weights();
  norm64_ = FinalNormWeight(model);
  if (w.lm_head.numel() * static_cast<int64_t>(sizeof(double)) <= (int64_t{256} << 20)) {
    lm_head64_ = w.lm_head.to(at::kDouble);
  }
}

int64_t MetricHead::BlockRows() const {
  const int64_t vocab = model_.weights().lm_head.size(0);
  return std::clamp<int64_t>((int64_t{64} << 20) / (vocab * static_cast<int64_t>(sizeof(double))), 8, 128);
}

at::Tensor MetricHead::Unembed(const at::Tensor& x32, const at::Tensor& scale) const {
  const model::ModelWeights& w = model_.weights();
  at::Tensor normalized = x32.to(at::kDouble) / scale.to(x32.device(), at::kDouble) * norm64_.to(x32.device());
  at::Tensor logits;
  if (lm_head64_.defined()) {
    logits = at::linear(normalized, lm_head64_);
  } else {
    const int64_t vocab = w.lm_head.size(0);
    const int64_t block = VocabBlock(w.lm_head.size(1));
    logits = at::empty({x32.size(0), vocab}, normalized.options());
    for (int64_t v0 = 0; v0 < vocab; v0 += block) {
      const int64_t n = std::min(block, vocab - v0);
      logits.narrow(1, v0, n).copy_(at::linear(normalized, w.lm_head.narrow(0, v0, n).to(at::kDouble)));
    }
  }
  if (const auto& cap = model_.config().final_logit_softcapping; cap && *cap > 0) {
    logits = at::tanh(logits / *cap) * *cap;  // Gemma 2's final soft-cap
  }
  return logits.to(at::kCPU);
}

at::Tensor RefusalScore(const at::Tensor& logits64, const at::Tensor& refusal_ids) {
  at::Tensor logp = at::log_softmax(logits64, -1);
  at::Tensor log_pr = at::logsumexp(logp.index_select(1, refusal_ids), -1);
  return log_pr - at::log1p(-at::exp(log_pr));
}

at::Tensor Kl(const at::Tensor& clean_logits64, const at::Tensor& logits64) {
  at::Tensor p = at::softmax(clean_logits64, -1);
  at::Tensor q = at::softmax(logits64, -1);
  const double eps = 1e-6;
  return (p * (at::log(p + eps) - at::log(q + eps))).sum(-1);
}

at::Tensor LogitDiff(const at::Tensor& logits64, const at::Tensor& positive, const at::Tensor& negative) {
  return logits64.index_select(1, positive).mean(-1) - logits64.index_select(1, negative).mean(-1);
}

at::Tensor MetricDirection(const model::Model& model, const at::Tensor& clean_logits64,
                           const at::Tensor& refusal_ids, const at::Tensor& scale) {
  at::Tensor p = at::softmax(clean_logits64, -1);
  at::Tensor pr = p.index_select(1, refusal_ids).sum(-1, true);
  at::Tensor in_r = at::zeros({p.size(1)}, at::kDouble).index_fill_(0, refusal_ids, 1.0);
  at::Tensor grad64 = p * (in_r.unsqueeze(0) - pr) / (pr * (1 - pr));  // d s / d z, [B, V]
  if (const auto& cap = model.config().final_logit_softcapping; cap && *cap > 0) {
    // z = c tanh(y / c): dz/dy = 1 - tanh^2 = 1 - (z / c)^2, from the capped clean logits.
    grad64 = grad64 * (1.0 - (clean_logits64 / *cap).pow(2));
  }
  at::Tensor grad = grad64.to(at::kFloat);
  const model::ModelWeights& w = model.weights();
  // grad @ W_U in float32 on the model's device (a [B, V] x [V, d] product), W_U converted in
  // vocabulary blocks: a whole float32 copy of a bf16 W_U would be 1 GB at a 128k vocabulary.
  grad = grad.to(model.device());
  const int64_t vocab = w.lm_head.size(0);
  const int64_t block = VocabBlock(w.lm_head.size(1));
  at::Tensor through;
  if (w.lm_head.scalar_type() == at::kFloat || block >= vocab) {
    through = at::matmul(grad, w.lm_head.to(at::kFloat));
  } else {
    through = at::zeros({grad.size(0), w.lm_head.size(1)}, grad.options());
    for (int64_t v0 = 0; v0 < vocab; v0 += block) {
      const int64_t n = std::min(block, vocab - v0);
      through.addmm_(grad.narrow(1, v0, n), w.lm_head.narrow(0, v0, n).to(at::kFloat));
    }
  }
  return through * FinalNormWeight(model).to(model.device(), at::kFloat) /
         scale.to(model.device(), at::kFloat);
}

}  // namespace knockout::executor
