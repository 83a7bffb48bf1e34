// MetricDirection against its equation (metrics.h), computed here in float64 from the model's
// own weights: d s / d x_final with the final norm's scale frozen,
//   grad_logits s = p (1[R] - p_R) / (p_R (1 - p_R)),  m = (grad_logits s @ W_U) * w_norm / scale,
// on a bf16 model whose vocabulary is larger than one conversion block (the path that converts
// W_U block by block) and on a float32 one (one product).
#include "worker/executor/metrics.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "formats/config.h"
#include "worker/model/model.h"

namespace knockout::executor {
namespace {

std::unique_ptr<model::Model> TinyModel(int64_t vocab, c10::ScalarType dtype) {
  const std::string json = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": )" +
                           std::to_string(vocab) + R"(, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": true})";
  auto config = formats::ParseModelConfig(json, "metrics_test config");
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  model::LoadOptions options;
  options.dtype = dtype;
  auto m = model::Model::Random(*config, 7, 0.5, options);
  // A non-trivial final norm weight, so that the product with it is checked too.
  m->weights().final_norm = (at::rand({64}) + 0.5).to(dtype);
  return m;
}

void CheckAgainstEquation(const model::Model& m) {
  const int64_t vocab = m.config().vocab_size;
  at::manual_seed(3);
  const at::Tensor logits = at::randn({3, vocab}, at::kDouble) * 2;
  const at::Tensor refusal = at::tensor({int64_t{5}, int64_t{vocab - 2}}, at::kLong);
  const at::Tensor scale = at::rand({3, 1}) + 0.5;
  const at::Tensor ours = MetricDirection(m, logits, refusal, scale);

  const at::Tensor p = at::softmax(logits, -1);
  const at::Tensor pr = p.index_select(1, refusal).sum(-1, true);
  at::Tensor in_r = at::zeros({vocab}, at::kDouble);
  in_r.index_fill_(0, refusal, 1.0);
  const at::Tensor grad = p * (in_r - pr) / (pr * (1 - pr));
  const at::Tensor expected = at::matmul(grad, m.weights().lm_head.to(at::kDouble)) *
                              m.weights().final_norm.to(at::kDouble) / scale.to(at::kDouble);
  ASSERT_EQ(ours.sizes(), expected.sizes());
  const double err = (ours.to(at::kDouble) - expected).abs().max().item<double>();
  const double size = expected.abs().max().item<double>();
  EXPECT_LE(err, 1e-5 * size + 1e-6) << "vocab " << vocab << ", max |m| " << size;
}

TEST(MetricDirectionTest, Bf16VocabularyLargerThanOneBlockMatchesTheEquation) {
  // VocabBlock(64) converts 131,072 rows at a time: 140,000 takes two blocks.
  CheckAgainstEquation(*TinyModel(140000, at::kBFloat16));
}

TEST(MetricDirectionTest, Float32MatchesTheEquation) {
  CheckAgainstEquation(*TinyModel(1000, at::kFloat));
}

// Gemma 2: the metric head must give the logits of the model's own forward pass, whose final
// norm scales by (1 + w) and whose logits are soft-capped (c tanh(z / c)); and MetricDirection
// must be the gradient of the refusal score through both (checked with autograd in float64,
// written here from the equations: not through the code under test).
std::unique_ptr<model::Model> TinyGemma2() {
  const std::string json = R"({"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
    "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "intermediate_size": 128, "vocab_size": 300, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 16,
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 3.0, "sliding_window": 4096,
    "tie_word_embeddings": true})";
  auto config = formats::ParseModelConfig(json, "metrics_test gemma2 config");
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  auto m = model::Model::Random(*config, 11, 1.0, model::LoadOptions{});
  m->weights().final_norm = at::rand({64}) - 0.5;  // 1 + w differs from w by far
  return m;
}

TEST(MetricHeadTest, Gemma2LogitsAreTheModelsOwn) {
  auto m = TinyGemma2();
  ASSERT_TRUE(m->config().final_logit_softcapping.has_value());
  model::ForwardRequest request;
  request.input_ids = at::tensor(std::vector<int64_t>{2, 17, 45, 99, 7, 250}, at::kLong).view({2, 3});
  auto forward = m->Forward(request);
  ASSERT_TRUE(forward.ok()) << forward.status().ToString();
  const at::Tensor x = forward->residual.select(1, 2);  // last position [B, d]
  const at::Tensor logits = forward->logits.select(1, 2).to(at::kDouble);
  MetricHead head(*m);
  const at::Tensor ours = head.Unembed(x, FinalScale(*m, x));
  const double err = (ours - logits).abs().max().item<double>();
  EXPECT_LE(err, 1e-4) << "metric head vs the model's forward";
  // The cap is active here: some logits sit at its bound (without it they would exceed it).
  EXPECT_LE(ours.abs().max().item<double>(), 3.0 + 1e-9);
  EXPECT_GT(ours.abs().max().item<double>(), 2.9);
}

TEST(MetricDirectionTest, Gemma2IsTheGradientThroughTheSoftCapAndOnePlusW) {
  auto m = TinyGemma2();
  const double cap = *m->config().final_logit_softcapping;
  at::manual_seed(5);
  const at::Tensor x = at::randn({3, 64}, at::kDouble) * 4;
  const at::Tensor scale = at::rand({3, 1}, at::kDouble) + 0.5;
  const at::Tensor refusal = at::tensor({int64_t{5}, int64_t{200}}, at::kLong);
  // Reference: s(x) = log p_R - log(1 - p_R) of z = c tanh(((x / scale) (1 + w)) W_U^T / c),
  // differentiated by autograd with the scale frozen.
  at::Tensor xg = x.clone().set_requires_grad(true);
  const at::Tensor w = m->weights().final_norm.to(at::kDouble);
  const at::Tensor z =
      at::tanh(at::linear(xg / scale * (1.0 + w), m->weights().lm_head.to(at::kDouble)) / cap) * cap;
  const at::Tensor logp = at::log_softmax(z, -1);
  const at::Tensor log_pr = at::logsumexp(logp.index_select(1, refusal), -1);
  (log_pr - at::log1p(-at::exp(log_pr))).sum().backward();
  const at::Tensor expected = xg.grad();
  const at::Tensor ours = MetricDirection(*m, z.detach(), refusal, scale.to(at::kFloat));
  const double err = (ours.to(at::kDouble) - expected).abs().max().item<double>();
  EXPECT_LE(err, 1e-4 * expected.abs().max().item<double>() + 1e-6);
}

}  // namespace
}  // namespace knockout::executor
