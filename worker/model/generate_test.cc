#include "worker/model/generate.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "tests/testing/reference.h"

namespace knockout::model {
namespace {

using knockout::testing::ReadTensors;
using knockout::testing::ReferenceDir;

// The real (unpadded) prompts of a reference batch.
std::vector<std::vector<int64_t>> Prompts(const std::map<std::string, at::Tensor>& ref) {
  std::vector<std::vector<int64_t>> prompts;
  const at::Tensor& ids = ref.at("input_ids");
  const at::Tensor& mask = ref.at("attention_mask");
  for (int64_t b = 0; b < ids.size(0); ++b) {
    std::vector<int64_t> p;
    for (int64_t t = 0; t < ids.size(1); ++t) {
      if (mask[b][t].item<int64_t>()) p.push_back(ids[b][t].item<int64_t>());
    }
    prompts.push_back(p);
  }
  return prompts;
}

std::vector<std::vector<int64_t>> Rows(const at::Tensor& t) {
  std::vector<std::vector<int64_t>> rows;
  for (int64_t b = 0; b < t.size(0); ++b) {
    rows.emplace_back(t[b].data_ptr<int64_t>(), t[b].data_ptr<int64_t>() + t.size(1));
  }
  return rows;
}

class GenerateTest : public ::testing::TestWithParam<std::string> {};

// Batched KV-cache generation equals the reference's one-by-one, no-cache argmax loop, and our
// own no-cache loop, and one-by-one generation.
TEST_P(GenerateTest, KvCacheBatchedEqualsReferenceAndNoCache) {
  const std::string dir = ReferenceDir(GetParam());
  LoadOptions on_device;  // KNOCKOUT_TEST_DEVICE (scripts/gpu-check.sh), cpu unless set
  on_device.device = knockout::testing::TestDevice();
  auto model = Model::Load(dir, on_device);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto ref = ReadTensors(dir + "/reference.safetensors");
  auto prompts = Prompts(ref);
  GenerationOptions options;
  options.max_new_tokens = 8;
  auto cached = GenerateGreedy(**model, prompts, options);
  ASSERT_TRUE(cached.ok()) << cached.status().ToString();
  EXPECT_EQ(cached->tokens, Rows(ref.at("greedy_ids")));

  options.use_kv_cache = false;
  auto uncached = GenerateGreedy(**model, prompts, options);
  ASSERT_TRUE(uncached.ok());
  EXPECT_EQ(uncached->tokens, cached->tokens);

  options.use_kv_cache = true;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto single = GenerateGreedy(**model, {prompts[i]}, options);
    ASSERT_TRUE(single.ok());
    EXPECT_EQ(single->tokens[0], cached->tokens[i]) << "prompt " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GenerateTest,
                         ::testing::Values("llama_gqa-f32", "llama3_rope-f32", "qwen2-f32",
                                           "mistral-f32", "gemma2-f32"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& c : name) c = (c == '-') ? '_' : c;
                           return name;
                         });

TEST(GenerateStopTest, StopsOnEosPerRow) {
  const std::string dir = ReferenceDir("llama_gqa-f32");
  auto model = Model::Load(dir, LoadOptions());
  ASSERT_TRUE(model.ok());
  auto ref = ReadTensors(dir + "/reference.safetensors");
  auto prompts = Prompts(ref);
  auto greedy = Rows(ref.at("greedy_ids"));
  GenerationOptions options;
  options.max_new_tokens = 8;
  options.eos_token_ids = {greedy[0][2]};  // row 0 emits it as its third token
  auto out = GenerateGreedy(**model, prompts, options);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->stopped_on_eos[0]);
  EXPECT_EQ(out->tokens[0], std::vector<int64_t>(greedy[0].begin(), greedy[0].begin() + 3));
  for (size_t i = 1; i < prompts.size(); ++i) {
    // Other rows continue until they emit the same token or run out of budget.
    const auto& g = greedy[i];
    auto stop = std::find(g.begin(), g.end(), options.eos_token_ids[0]);
    size_t expected = stop == g.end() ? g.size() : (stop - g.begin()) + 1;
    EXPECT_EQ(out->tokens[i], std::vector<int64_t>(g.begin(), g.begin() + expected));
  }
}

TEST(GenerateStopTest, RejectsEmptyPrompt) {
  auto model = Model::Load(ReferenceDir("llama_gqa-f32"), LoadOptions());
  ASSERT_TRUE(model.ok());
  auto out = GenerateGreedy(**model, {{1, 2}, {}}, GenerationOptions());
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("prompt 1 is empty"), std::string::npos);
}

// Interventions stay active on generated tokens: with a KV cache (one new column per step) the
// tokens equal those of the no-cache loop, which re-applies the intervention to every column.
TEST(GenerateInterventionTest, InterventionsApplyToGeneratedTokens) {
  const std::string dir = ReferenceDir("llama_gqa-f32");
  auto model = Model::Load(dir, LoadOptions());
  ASSERT_TRUE(model.ok());
  auto ref = ReadTensors(dir + "/reference.safetensors");
  auto prompts = Prompts(ref);
  const ModelConfig& config = (*model)->config();
  at::Tensor direction = (*model)->weights().embed[5].clone();  // pushes towards token 5's row

  for (bool on_generated : {true, false}) {
    std::vector<std::vector<int64_t>> results[2];
    for (int use_cache = 0; use_cache < 2; ++use_cache) {
      HookRegistry hooks(config);
      for (int64_t l = 0; l < config.num_layers; ++l) {
        InterventionSite site{HookPoint::ResidPre(l), Intervention::Directional(direction)};
        site.on_generated = on_generated;
        ASSERT_TRUE(hooks.Intervene(site).ok());
      }
      GenerationOptions options;
      options.max_new_tokens = 8;
      options.use_kv_cache = use_cache == 1;
      options.hooks = &hooks;
      auto out = GenerateGreedy(**model, prompts, options);
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      results[use_cache] = out->tokens;
    }
    EXPECT_EQ(results[0], results[1]) << "on_generated=" << on_generated;
  }
}

// A large push along token 5's unembedding row at ln_final.hook_normalized forces token 5
// wherever it applies: on every generated token with on_generated, else only on the first one
// (read at the last prompt position).
TEST(GenerateInterventionTest, OnGeneratedControlsGeneratedColumns) {
  auto model = Model::Load(ReferenceDir("llama_gqa-f32"), LoadOptions());
  ASSERT_TRUE(model.ok());
  const ModelConfig& config = (*model)->config();
  at::Tensor direction = (*model)->weights().lm_head[5].clone();
  const std::vector<std::vector<int64_t>> prompts = {{3, 4, 9, 10}, {11, 12}};
  for (bool use_cache : {true, false}) {
    for (bool on_generated : {true, false}) {
      HookRegistry hooks(config);
      InterventionSite site{HookPoint::FinalNormalized(), Intervention::Add(direction, 100.0)};
      site.on_generated = on_generated;
      ASSERT_TRUE(hooks.Intervene(site).ok());
      GenerationOptions options;
      options.max_new_tokens = 6;
      options.use_kv_cache = use_cache;
      options.hooks = &hooks;
      auto out = GenerateGreedy(**model, prompts, options);
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      for (const auto& tokens : out->tokens) {
        ASSERT_EQ(tokens.size(), 6u);
        EXPECT_EQ(tokens[0], 5);
        const auto fives = std::count(tokens.begin(), tokens.end(), 5);
        if (on_generated) {
          EXPECT_EQ(fives, 6) << "use_cache=" << use_cache;
        } else {
          EXPECT_LT(fives, 6) << "use_cache=" << use_cache;
        }
      }
    }
  }
}

}  // namespace
}  // namespace knockout::model
