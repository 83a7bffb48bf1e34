#include "formats/config.h"

#include <gtest/gtest.h>

#include <functional>

#include <nlohmann/json.hpp>

namespace knockout::formats {
namespace {

using nlohmann::json;

json LlamaConfig() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"vocab_size", 100},
          {"hidden_size", 64},
          {"intermediate_size", 96},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-5},
          {"eos_token_id", {7, 8}}};
}

TEST(ConfigTest, ParsesLlamaWithDefaults) {
  auto c = ParseModelConfig(LlamaConfig().dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->family, Family::kLlama);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->group_size(), 2);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->rope_scaling.has_value());
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{7, 8}));
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
}

TEST(ConfigTest, Qwen2HasQkvBiasButNoOutputBias) {
  json j = LlamaConfig();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["sliding_window"] = 4;  // ignored while use_sliding_window is false, as in HF
  auto c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->attention_bias);
  EXPECT_FALSE(c->o_proj_bias);
  EXPECT_FALSE(c->sliding_window.has_value());
}

TEST(ConfigTest, Llama3RopeScaling) {
  json j = LlamaConfig();
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  auto c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c->rope_scaling->original_max_position_embeddings, 8192);
}

struct BadConfigCase {
  std::string name;
  std::function<void(json&)> edit;
  std::string expected;  // substring of the error
};

class BadConfigTest : public ::testing::TestWithParam<BadConfigCase> {};

TEST_P(BadConfigTest, ClearErrorNamingTheField) {
  json j = LlamaConfig();
  GetParam().edit(j);
  auto c = ParseModelConfig(j.dump(), "dir/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("dir/config.json"), std::string::npos)
      << c.status().ToString();
  EXPECT_NE(c.status().message().find(GetParam().expected), std::string::npos)
      << c.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(
    Fields, BadConfigTest,
    ::testing::Values(
        BadConfigCase{"missing_hidden", [](json& j) { j.erase("hidden_size"); },
                      "field hidden_size: missing"},
        BadConfigCase{"negative_layers", [](json& j) { j["num_hidden_layers"] = -1; },
                      "field num_hidden_layers: expected a positive integer"},
        BadConfigCase{"string_vocab", [](json& j) { j["vocab_size"] = "many"; },
                      "field vocab_size"},
        BadConfigCase{"unknown_arch", [](json& j) { j["architectures"] = {"GPTNeoXForCausalLM"}; },
                      "unsupported architecture \"GPTNeoXForCausalLM\""},
        BadConfigCase{"no_arch", [](json& j) { j.erase("architectures"); },
                      "field architectures: missing"},
        BadConfigCase{"kv_heads", [](json& j) { j["num_key_value_heads"] = 3; },
                      "field num_key_value_heads"},
        BadConfigCase{"gelu", [](json& j) { j["hidden_act"] = "gelu"; }, "field hidden_act"},
        BadConfigCase{"yarn",
                      [](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}}; },
                      "field rope_scaling.rope_type: unsupported rope scaling \"yarn\""},
        BadConfigCase{"llama3_missing",
                      [](json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8}}; },
                      "field rope_scaling.low_freq_factor: missing"},
        BadConfigCase{"eos", [](json& j) { j["eos_token_id"] = "x"; }, "field eos_token_id"},
        BadConfigCase{"odd_head_dim", [](json& j) { j["head_dim"] = 15; }, "field head_dim"}),
    [](const ::testing::TestParamInfo<BadConfigCase>& info) { return info.param.name; });

// gemma-2-2b-it's config.json, shortened to what the parser reads.
json Gemma2Config() {
  return {{"architectures", {"Gemma2ForCausalLM"}},
          {"model_type", "gemma2"},
          {"vocab_size", 256000},
          {"hidden_size", 2304},
          {"intermediate_size", 9216},
          {"num_hidden_layers", 26},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 4},
          {"head_dim", 256},
          {"hidden_act", "gelu_pytorch_tanh"},
          {"hidden_activation", "gelu_pytorch_tanh"},
          {"query_pre_attn_scalar", 256},
          {"sliding_window", 4096},
          {"attn_logit_softcapping", 50.0},
          {"final_logit_softcapping", 30.0},
          {"rms_norm_eps", 1e-6},
          {"bos_token_id", 2},
          {"eos_token_id", {1, 107}},
          {"pad_token_id", 0}};
}

TEST(ConfigTest, ParsesGemma2) {
  auto c = ParseModelConfig(Gemma2Config().dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->family, Family::kGemma2);
  EXPECT_EQ(c->head_dim, 256);
  EXPECT_EQ(c->activation, ModelConfig::Activation::kGeluTanh);
  EXPECT_TRUE(c->tie_word_embeddings);  // Gemma2Config's default
  EXPECT_FALSE(c->attention_bias);
  EXPECT_DOUBLE_EQ(*c->query_pre_attn_scalar, 256.0);
  EXPECT_DOUBLE_EQ(*c->attn_logit_softcapping, 50.0);
  EXPECT_DOUBLE_EQ(*c->final_logit_softcapping, 30.0);
  ASSERT_EQ(c->sliding_window, std::optional<int64_t>(4096));
  for (int64_t l = 0; l < 26; ++l) EXPECT_EQ(c->Slides(l), l % 2 == 0) << l;

  // Newer configs list the layer types; a null cap means none; defaults fill what is missing.
  json j = Gemma2Config();
  j["num_hidden_layers"] = 3;
  j["layer_types"] = {"full_attention", "sliding_attention", "sliding_attention"};
  j["final_logit_softcapping"] = nullptr;
  j.erase("query_pre_attn_scalar");
  j.erase("attn_logit_softcapping");
  auto d = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_FALSE(d->Slides(0));
  EXPECT_TRUE(d->Slides(1) && d->Slides(2));
  EXPECT_FALSE(d->final_logit_softcapping.has_value());
  EXPECT_DOUBLE_EQ(*d->attn_logit_softcapping, 50.0);
  EXPECT_DOUBLE_EQ(*d->query_pre_attn_scalar, 256.0);

  auto again = ParseModelConfig(ModelConfigToJson(*d), "b");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->sliding_layers, d->sliding_layers);
  EXPECT_FALSE(again->final_logit_softcapping.has_value());
  EXPECT_EQ(again->activation, ModelConfig::Activation::kGeluTanh);
  EXPECT_TRUE(again->tie_word_embeddings);
}

TEST(ConfigTest, RejectsBadGemma2Fields) {
  struct Case {
    std::function<void(json&)> edit;
    std::string message;
  };
  for (const Case& k : std::vector<Case>{
           {[](json& j) { j["hidden_activation"] = "silu"; },
            "field hidden_activation: unsupported activation \"silu\" (supported: "
            "gelu_pytorch_tanh)"},
           {[](json& j) { j["layer_types"] = {"full_attention"}; },
            "field layer_types: expected one entry per layer (26)"},
           {[](json& j) {
              j["num_hidden_layers"] = 2;
              j["layer_types"] = {"full_attention", "chunked_attention"};
            },
            "field layer_types: entry 1: expected"},
           {[](json& j) { j["attn_logit_softcapping"] = -1; }, "field attn_logit_softcapping"},
           {[](json& j) { j["attention_bias"] = true; }, "field attention_bias"}}) {
    json j = Gemma2Config();
    k.edit(j);
    auto c = ParseModelConfig(j.dump(), "g/config.json");
    ASSERT_FALSE(c.ok()) << k.message;
    EXPECT_NE(c.status().message().find(k.message), std::string::npos) << c.status().message();
    EXPECT_EQ(c.status().message().rfind("g/config.json", 0), 0u) << c.status().message();
  }
}

TEST(ConfigTest, InvalidJson) {
  auto c = ParseModelConfig("{\"vocab_size\": ", "x/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), "x/config.json: not valid JSON");
}

TEST(ConfigTest, MissingFileIsNotFound) {
  auto c = LoadModelConfig("/nonexistent/checkpoint");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("/nonexistent/checkpoint/config.json"), std::string::npos);
}

TEST(ConfigTest, RoundTripsThroughJson) {
  json j = LlamaConfig();
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 64}};
  auto c = ParseModelConfig(j.dump(), "a");
  ASSERT_TRUE(c.ok());
  auto again = ParseModelConfig(ModelConfigToJson(*c), "b");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->head_dim, c->head_dim);
  EXPECT_EQ(again->eos_token_ids, c->eos_token_ids);
  EXPECT_EQ(again->rope_scaling->original_max_position_embeddings, 64);
}

}  // namespace
}  // namespace knockout::formats
