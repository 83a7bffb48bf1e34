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

}  // namespace
}  // namespace knockout::executor
