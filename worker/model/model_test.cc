// The runtime against the independent Python reference (tests/reference/hf_reference.py):
// logits on left-padded batches, every architecture variant, f32/bf16/f16 storage, shards.
#include "worker/model/model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "tests/testing/reference.h"

namespace knockout::model {
namespace {

using knockout::testing::ReadTensors;
using knockout::testing::ReferenceDir;
using knockout::testing::TestDevice;

// The reference tests' load options: float32 on KNOCKOUT_TEST_DEVICE (cpu unless set).
LoadOptions OnTestDevice(c10::ScalarType dtype = at::kFloat) {
  LoadOptions options;
  options.device = TestDevice();
  options.dtype = dtype;
  return options;
}

struct Reference {
  at::Tensor input_ids, attention_mask, logits, greedy_ids;
};

Reference LoadReference(const std::string& dir) {
  auto t = ReadTensors(dir + "/reference.safetensors");
  return {t["input_ids"], t["attention_mask"], t["logits"], t["greedy_ids"]};
}

// Max |ours - reference| over the real (non-padding) positions.
double MaxRealDiff(const at::Tensor& ours, const Reference& ref) {
  at::Tensor real = ref.attention_mask.to(at::kBool).unsqueeze(-1).expand_as(ref.logits);
  return (ours.to(at::kCPU, at::kFloat) - ref.logits).abs().masked_select(real).max().item<double>();
}

at::Tensor FullLogits(const Model& model, const Reference& ref) {
  ForwardRequest request;
  request.input_ids = ref.input_ids;
  request.attention_mask = ref.attention_mask;
  auto out = model.Forward(request);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? out->logits.to(at::kCPU) : at::Tensor();
}

class ReferenceLogitsTest : public ::testing::TestWithParam<std::string> {};

// f32 compute on every variant and storage dtype: the contract is max |diff| <= 1e-4. These
// tests run on whichever attention path the build compiled (FusedAttentionCompiled); the line
// below tells scripts/gpu-check.sh which one that was.
TEST_P(ReferenceLogitsTest, MatchesReferenceInFloat32) {
  static const bool reported =
      std::printf("fused attention: %s\n", FusedAttentionCompiled() ? "yes" : "no") > 0;
  (void)reported;
  const std::string dir = ReferenceDir(GetParam());
  auto model = Model::Load(dir, OnTestDevice());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  Reference ref = LoadReference(dir);
  at::Tensor logits = FullLogits(**model, ref);
  ASSERT_TRUE(logits.defined());
  EXPECT_LE(MaxRealDiff(logits, ref), 1e-4) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(
    Variants, ReferenceLogitsTest,
    ::testing::Values("llama_gqa-f32", "llama_gqa-bf16", "llama_tied-f32", "llama_tied-bf16",
                      "llama3_rope-f32", "llama3_rope-bf16", "qwen2-f32", "qwen2-bf16",
                      "mistral-f32", "mistral-bf16", "llama_headdim-f32", "llama_headdim-bf16",
                      "gemma2-f32", "gemma2-bf16", "llama_gqa-f32-sharded", "qwen2-f16-sharded"),
    [](const ::testing::TestParamInfo<std::string>& info) {
      std::string name = info.param;
      for (char& c : name) c = (c == '-') ? '_' : c;
      return name;
    });

// bf16 compute: every activation is rounded to 8 bits of mantissa, so logits (std ~1.6, max
// ~6.6 here) move by about a tenth. Documented tolerance: max |diff| <= 0.25 and mean |diff|
// <= 0.05 at real positions; measured 0.12-0.14 max (docs/benchmarks.md).
TEST(ReferenceLogitsTest, Bfloat16ComputeWithinDocumentedTolerance) {
  for (const char* name :
       {"llama_gqa-bf16", "qwen2-bf16", "llama3_rope-bf16", "mistral-bf16", "gemma2-bf16"}) {
    auto model = Model::Load(ReferenceDir(name), OnTestDevice(at::kBFloat16));
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    Reference ref = LoadReference(ReferenceDir(name));
    at::Tensor logits = FullLogits(**model, ref);
    at::Tensor real = ref.attention_mask.to(at::kBool).unsqueeze(-1).expand_as(ref.logits);
    at::Tensor diff = (logits - ref.logits).abs().masked_select(real);
    EXPECT_LE(diff.max().item<double>(), 0.25) << name;
    EXPECT_LE(diff.mean().item<double>(), 0.05) << name;
  }
}

// More left padding must not change any real position (masks, position ids and, for Gemma 2,
// the sliding window, which counts columns).
TEST(ReferenceLogitsTest, ExtraLeftPaddingChangesNothing) {
  for (const char* name : {"llama3_rope-f32", "gemma2-f32"}) {
    const std::string dir = ReferenceDir(name);
    auto model = Model::Load(dir, OnTestDevice());
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    Reference ref = LoadReference(dir);
    const int64_t extra = 6;
    Reference padded = ref;
    padded.input_ids = at::cat({at::full({3, extra}, 0, at::kLong), ref.input_ids}, 1);
    padded.attention_mask = at::cat({at::zeros({3, extra}, at::kLong), ref.attention_mask}, 1);
    at::Tensor logits = FullLogits(**model, padded).narrow(1, extra, ref.input_ids.size(1));
    EXPECT_LE(MaxRealDiff(logits, ref), 1e-4) << name;
  }
}

TEST(ModelTest, LastPositionLogitsEqualFullLogits) {
  const std::string dir = ReferenceDir("qwen2-f32");
  auto model = Model::Load(dir, LoadOptions());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  Reference ref = LoadReference(dir);
  ForwardRequest request;
  request.input_ids = ref.input_ids;
  request.attention_mask = ref.attention_mask;
  request.logits = ForwardRequest::Logits::kLastPosition;
  auto last = (*model)->Forward(request);
  ASSERT_TRUE(last.ok());
  ASSERT_EQ(last->logits.size(1), 1);
  EXPECT_TRUE(at::allclose(last->logits.squeeze(1), FullLogits(**model, ref).select(1, -1), 0,
                           1e-5));
}

TEST(ModelTest, SaveThenLoadRoundTrips) {
  const std::string dir = ReferenceDir("llama_tied-f32");
  auto model = Model::Load(dir, LoadOptions());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const std::string out = ::testing::TempDir() + "/saved_tied";
  ASSERT_TRUE((*model)->Save(out, at::kFloat).ok());
  auto again = Model::Load(out, LoadOptions());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  Reference ref = LoadReference(dir);
  EXPECT_TRUE(at::equal(FullLogits(**model, ref), FullLogits(**again, ref)));
}

TEST(ModelTest, RejectsBadRequests) {
  auto model = Model::Load(ReferenceDir("llama_gqa-f32"), LoadOptions());
  ASSERT_TRUE(model.ok());
  ForwardRequest request;
  request.input_ids = at::tensor(std::vector<int64_t>{1, 2, 500}).unsqueeze(0);
  auto out = (*model)->Forward(request);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("token id 500 outside the vocabulary"), std::string::npos);
  request.input_ids = at::tensor(std::vector<int64_t>{1, 2}).unsqueeze(0);
  request.start_layer = 7;
  out = (*model)->Forward(request);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("start_layer 7 out of range"), std::string::npos);
}

TEST(ModelTest, ParsesDevicesAndDtypes) {
  EXPECT_TRUE(ParseDevice("cpu").ok());
  EXPECT_FALSE(ParseDevice("tpu").ok());
  if (!at::hasCUDA()) {
    EXPECT_FALSE(ParseDevice("cuda:0").ok());
  }
  EXPECT_EQ(*ParseComputeDType("bf16"), at::kBFloat16);
  EXPECT_FALSE(ParseComputeDType("int8").ok());
}

}  // namespace
}  // namespace knockout::model
