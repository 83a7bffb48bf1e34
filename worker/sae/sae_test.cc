// The SAE runtime against float64 formulas written here from science.md ("SAE formats and
// encoders") and worker/sae/sae.h's header comment, and its identities: a latent clamped to its
// own value changes nothing; zeroing every latent leaves b_dec/s + the error term; the
// single-latent shortcut equals the full encode; topk keeps exactly k; the JumpReLU threshold;
// attn.hook_z flattening; and latent edits through a model forward with row/position masks.
// (The file readers and the command-line tools are compared with an independent Python
// reference in tests/reference/test_sae_reference.py.)
#include "worker/sae/sae.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "worker/model/generate.h"
#include "worker/model/model.h"

namespace knockout::sae {
namespace {

using formats::SaeArchitecture;
using formats::SaeNormalization;

model::ModelConfig TinyConfig() {
  const std::string json = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 53,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 64, "tie_word_embeddings": false})";
  auto config = formats::ParseModelConfig(json, "tiny");
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  return *config;
}

formats::SaeTensor FromTorch(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).contiguous();
  formats::SaeTensor out;
  out.shape = c.sizes().vec();
  out.values.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  return out;
}

at::Tensor ToTorch(const formats::SaeTensor& t) {
  return at::tensor(t.values, at::kFloat).to(at::kDouble).reshape(t.shape);
}

struct SaeSpec {
  SaeArchitecture architecture = SaeArchitecture::kStandard;
  SaeNormalization normalization = SaeNormalization::kNone;
  bool apply_b_dec = true;
  std::string hook = "blocks.1.hook_resid_post";
  int64_t d_in = 32;
  int64_t d_sae = 48;
  int64_t k = 6;
  double b_enc_mean = -0.1;
};

// Random weights whose activations are a mix of active and inactive latents for inputs of norm
// ~sqrt(d_in) (the tiny model's residual stream is of that order).
formats::SaeWeights RandomWeights(const SaeSpec& spec, uint64_t seed) {
  at::manual_seed(seed);
  formats::SaeWeights w;
  w.path = "test-" + std::string(formats::SaeArchitectureName(spec.architecture)) + ".sae";
  w.config.architecture = spec.architecture;
  w.config.normalization = spec.normalization;
  w.config.scaling_factor = spec.normalization == SaeNormalization::kExpectedAverageOnlyIn ? 0.7 : 1.0;
  w.config.apply_b_dec_to_input = spec.apply_b_dec;
  w.config.hook = spec.hook;
  w.config.d_in = spec.d_in;
  w.config.d_sae = spec.d_sae;
  w.config.k = spec.architecture == SaeArchitecture::kTopK ? spec.k : 0;
  const double std_enc = 1.0 / std::sqrt(static_cast<double>(spec.d_in));
  w.W_enc = FromTorch(at::randn({spec.d_in, spec.d_sae}) * std_enc);
  w.W_dec = FromTorch(at::randn({spec.d_sae, spec.d_in}) * 0.3);
  w.b_dec = FromTorch(at::randn({spec.d_in}) * 0.1);
  if (spec.architecture == SaeArchitecture::kGated) {
    w.b_gate = FromTorch(at::randn({spec.d_sae}) * 0.3 + spec.b_enc_mean);
    w.r_mag = FromTorch(at::randn({spec.d_sae}) * 0.3);
    w.b_mag = FromTorch(at::randn({spec.d_sae}) * 0.3);
  } else {
    w.b_enc = FromTorch(at::randn({spec.d_sae}) * 0.3 + spec.b_enc_mean);
  }
  if (spec.architecture == SaeArchitecture::kJumpRelu) {
    // Some thresholds below zero (ReLU decides), most above.
    w.threshold = FromTorch(at::rand({spec.d_sae}) * 0.8 - 0.1);
  }
  return w;
}

std::shared_ptr<const Sae> MakeSae(const formats::SaeWeights& weights,
                                   const model::ModelConfig& config = TinyConfig()) {
  auto sae = Sae::FromWeights(weights, config, c10::Device(c10::kCPU), at::kFloat);
  EXPECT_TRUE(sae.ok()) << sae.status().ToString();
  return sae.ok() ? *sae : nullptr;
}

// --- the float64 reference, from the formulas ------------------------------------------------

at::Tensor RefScale(const formats::SaeWeights& w, const at::Tensor& x64) {
  switch (w.config.normalization) {
    case SaeNormalization::kNone: return at::ones_like(x64.narrow(-1, 0, 1));
    case SaeNormalization::kExpectedAverageOnlyIn:
      return at::full_like(x64.narrow(-1, 0, 1), w.config.scaling_factor);
    case SaeNormalization::kConstantNormRescale:
      return std::sqrt(static_cast<double>(w.config.d_in)) / x64.norm(2, {-1}, true);
  }
  return at::Tensor();
}

// f in float64 for x64 [N, d_in].
at::Tensor RefEncode(const formats::SaeWeights& w, const at::Tensor& x64) {
  at::Tensor xc = x64 * RefScale(w, x64);
  if (w.config.apply_b_dec_to_input) xc = xc - ToTorch(w.b_dec);
  const at::Tensor W_enc = ToTorch(w.W_enc);
  if (w.config.architecture == SaeArchitecture::kGated) {
    at::Tensor gate = xc.matmul(W_enc) + ToTorch(w.b_gate);
    at::Tensor mag = xc.matmul(W_enc * ToTorch(w.r_mag).exp()) + ToTorch(w.b_mag);
    return (gate > 0).to(at::kDouble) * mag.relu();
  }
  at::Tensor pre = xc.matmul(W_enc) + ToTorch(w.b_enc);
  switch (w.config.architecture) {
    case SaeArchitecture::kStandard: return pre.relu();
    case SaeArchitecture::kJumpRelu:
      return pre.relu() * (pre > ToTorch(w.threshold)).to(at::kDouble);
    case SaeArchitecture::kTopK: {
      auto top = pre.topk(w.config.k, -1);
      return at::zeros_like(pre).scatter(-1, std::get<1>(top), std::get<0>(top).relu());
    }
    default: return at::Tensor();
  }
}

at::Tensor RefReconstruct(const formats::SaeWeights& w, const at::Tensor& x64) {
  return (RefEncode(w, x64).matmul(ToTorch(w.W_dec)) + ToTorch(w.b_dec)) / RefScale(w, x64);
}

at::Tensor Bools(const std::vector<int64_t>& values) {
  return at::tensor(values, at::kLong).to(at::kBool);
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Inputs of norm ~sqrt(d_in), like the residual stream.
at::Tensor Inputs(int64_t n, int64_t d_in, uint64_t seed) {
  at::manual_seed(seed);
  return at::randn({n, d_in});
}

struct Case {
  const char* name;
  SaeSpec spec;
};

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (SaeArchitecture arch : {SaeArchitecture::kStandard, SaeArchitecture::kJumpRelu,
                               SaeArchitecture::kTopK, SaeArchitecture::kGated}) {
    for (SaeNormalization norm :
         {SaeNormalization::kNone, SaeNormalization::kExpectedAverageOnlyIn,
          SaeNormalization::kConstantNormRescale}) {
      SaeSpec spec;
      spec.architecture = arch;
      spec.normalization = norm;
      spec.apply_b_dec = norm != SaeNormalization::kExpectedAverageOnlyIn;
      cases.push_back({formats::SaeArchitectureName(arch), spec});
    }
  }
  return cases;
}

std::string CaseName(const SaeSpec& spec) {
  return std::string(formats::SaeArchitectureName(spec.architecture)) + "/" +
         formats::SaeNormalizationName(spec.normalization);
}

// --- encode / decode -------------------------------------------------------------------------

TEST(SaeTest, EncodeAndReconstructMatchFloat64Formulas) {
  uint64_t seed = 1;
  for (const Case& c : AllCases()) {
    formats::SaeWeights w = RandomWeights(c.spec, seed++);
    auto sae = MakeSae(w);
    ASSERT_TRUE(sae);
    at::Tensor x = Inputs(64, c.spec.d_in, seed++);
    at::Tensor f = sae->Encode(x);
    ASSERT_EQ(f.scalar_type(), at::kFloat);
    at::Tensor ref = RefEncode(w, x.to(at::kDouble));
    EXPECT_LE(MaxDiff(f, ref), 1e-5) << CaseName(c.spec);
    // The comparison must compare something: some latents on, most off.
    const double active = (ref > 0).to(at::kDouble).mean().item<double>();
    EXPECT_GT(active, 0.02) << CaseName(c.spec);
    EXPECT_LT(active, 0.9) << CaseName(c.spec);
    EXPECT_LE(MaxDiff(sae->Reconstruct(x), RefReconstruct(w, x.to(at::kDouble))), 1e-5)
        << CaseName(c.spec);
    if (c.spec.normalization != SaeNormalization::kConstantNormRescale) {
      EXPECT_LE(MaxDiff(sae->Decode(f), sae->Reconstruct(x)), 1e-6) << CaseName(c.spec);
    }
    // FVU over the batch, float64: sum |x - x_hat|^2 / sum |x - mean_N x|^2.
    at::Tensor x64 = x.to(at::kDouble);
    const double fvu = ((x64 - RefReconstruct(w, x64)).pow(2).sum() /
                        (x64 - x64.mean(0, true)).pow(2).sum()).item<double>();
    EXPECT_NEAR(Fvu(*sae, x), fvu, 1e-6 * std::max(1.0, fvu)) << CaseName(c.spec);
    // Per vector: the mean over its own components.
    at::Tensor vfvu = (x64 - RefReconstruct(w, x64)).pow(2).sum(-1) /
                      (x64 - x64.mean(-1, true)).pow(2).sum(-1);
    EXPECT_LE(MaxDiff(VectorFvu(*sae, x), vfvu), 1e-6 * vfvu.abs().max().item<double>() + 1e-9);
  }
}

TEST(SaeTest, PreActivationsAreTheLinearPart) {
  for (SaeArchitecture arch : {SaeArchitecture::kStandard, SaeArchitecture::kGated}) {
    SaeSpec spec;
    spec.architecture = arch;
    formats::SaeWeights w = RandomWeights(spec, 11);
    auto sae = MakeSae(w);
    at::Tensor x = Inputs(8, spec.d_in, 12);
    at::Tensor xc = x.to(at::kDouble) - ToTorch(w.b_dec);
    at::Tensor ref = xc.matmul(ToTorch(w.W_enc)) +
                     ToTorch(arch == SaeArchitecture::kGated ? w.b_gate : w.b_enc);
    EXPECT_LE(MaxDiff(sae->PreActivations(x), ref), 1e-5);
  }
}

TEST(SaeTest, TopKKeepsExactlyTheKLargest) {
  SaeSpec spec;
  spec.architecture = SaeArchitecture::kTopK;
  spec.k = 5;
  spec.b_enc_mean = 8.0;  // every pre-activation positive: ReLU keeps all k
  formats::SaeWeights w = RandomWeights(spec, 21);
  auto sae = MakeSae(w);
  at::Tensor x = Inputs(100, spec.d_in, 22);
  at::Tensor f = sae->Encode(x);
  at::Tensor pre = sae->PreActivations(x);
  ASSERT_GT(pre.min().item<double>(), 0.0);
  EXPECT_TRUE((f != 0).sum(-1).eq(5).all().item<bool>());
  // Every kept latent's pre-activation is at least every dropped one's, and f = pre there.
  at::Tensor kept_min = at::where(f != 0, pre, at::full_like(pre, 1e30)).amin(-1);
  at::Tensor dropped_max = at::where(f == 0, pre, at::full_like(pre, -1e30)).amax(-1);
  EXPECT_TRUE((kept_min >= dropped_max).all().item<bool>());
  EXPECT_LE(MaxDiff(at::where(f != 0, pre, at::zeros_like(pre)), f), 0.0);

  // Negative pre-activations among the top k are ReLU'd to zero: fewer than k survive.
  spec.b_enc_mean = -2.0;
  auto negative = MakeSae(RandomWeights(spec, 23));
  at::Tensor g = negative->Encode(x);
  EXPECT_TRUE(((g != 0).sum(-1) <= 5).all().item<bool>());
  EXPECT_TRUE((g >= 0).all().item<bool>());
  EXPECT_TRUE(((g != 0).sum(-1) < 5).any().item<bool>());
}

TEST(SaeTest, JumpReluRespectsTheThreshold) {
  SaeSpec spec;
  spec.architecture = SaeArchitecture::kJumpRelu;
  spec.apply_b_dec = false;  // as Gemma Scope
  formats::SaeWeights w = RandomWeights(spec, 31);
  auto sae = MakeSae(w);
  at::Tensor x = Inputs(200, spec.d_in, 32);
  at::Tensor f = sae->Encode(x);
  at::Tensor pre = sae->PreActivations(x);
  at::Tensor threshold = ToTorch(w.threshold).to(at::kFloat);
  at::Tensor on = (pre > threshold) & (pre > 0);
  EXPECT_TRUE((f != 0).eq(on).all().item<bool>());
  EXPECT_LE(MaxDiff(at::where(on, pre, at::zeros_like(pre)), f), 0.0);
  // Both sides occur: latents with pre in (0, threshold] that a plain ReLU would have kept.
  EXPECT_TRUE(((pre > 0) & (pre <= threshold)).any().item<bool>());
  EXPECT_TRUE(on.any().item<bool>());
}

TEST(SaeTest, SingleLatentShortcutEqualsFullEncode) {
  uint64_t seed = 41;
  for (const Case& c : AllCases()) {
    auto sae = MakeSae(RandomWeights(c.spec, seed++));
    at::Tensor x = Inputs(3 * 7, c.spec.d_in, seed++).reshape({3, 7, c.spec.d_in});
    at::Tensor full = sae->Encode(x);
    for (std::vector<int64_t> latents : {std::vector<int64_t>{0}, {5, 17, 47}, {30}}) {
      at::Tensor index = at::tensor(latents, at::kLong);
      at::Tensor some = sae->EncodeLatents(x, latents);
      ASSERT_EQ(some.sizes().vec(), (std::vector<int64_t>{3, 7, (int64_t)latents.size()}));
      EXPECT_LE(MaxDiff(some, full.index_select(-1, index)), 1e-6) << CaseName(c.spec);
    }
    at::Tensor rows = sae->DecoderRows({3, 9});
    EXPECT_LE(MaxDiff(rows, sae->W_dec().index_select(0, at::tensor({3, 9}, at::kLong))), 0.0);
  }
}

TEST(SaeTest, AttnZIsFlattenedHeadMajor) {
  const model::ModelConfig config = TinyConfig();  // 4 heads of d_head 8
  SaeSpec spec;
  spec.architecture = SaeArchitecture::kJumpRelu;
  spec.hook = "blocks.0.attn.hook_z";
  formats::SaeWeights w = RandomWeights(spec, 51);
  auto sae = MakeSae(w, config);
  ASSERT_TRUE(sae);
  at::Tensor z = Inputs(2 * 5, 32, 52).reshape({2, 5, 4, 8});
  at::Tensor flat = z.reshape({2, 5, 32});
  EXPECT_LE(MaxDiff(sae->Encode(z), sae->Encode(flat)), 0.0);
  EXPECT_LE(MaxDiff(sae->Encode(z), RefEncode(w, flat.to(at::kDouble).reshape({10, 32}))
                                         .reshape({2, 5, 48})),
            1e-5);
  // An edit returns the hook's own shape.
  auto edit = MakeLatentIntervention(sae, {LatentEdit::Op::kClamp, {3}, 2.0, {}});
  ASSERT_TRUE(edit.ok()) << edit.status().ToString();
  EXPECT_TRUE(edit->Validate(config, model::HookPoint::AttnZ(0)).ok());
  at::Tensor edited = edit->Apply(z, 0);
  EXPECT_EQ(edited.sizes().vec(), z.sizes().vec());
  at::Tensor f3 = RefEncode(w, flat.to(at::kDouble).reshape({10, 32})).select(-1, 3);
  at::Tensor expected = flat.to(at::kDouble).reshape({10, 32}) +
                        (2.0 - f3).unsqueeze(-1) * ToTorch(w.W_dec)[3].unsqueeze(0);
  EXPECT_LE(MaxDiff(edited.reshape({10, 32}), expected), 1e-5);
}

// --- the identities of latent edits ----------------------------------------------------------

TEST(SaeTest, ClampingALatentToItsOwnValueChangesNothing) {
  uint64_t seed = 61;
  for (const Case& c : AllCases()) {
    auto sae = MakeSae(RandomWeights(c.spec, seed++));
    at::Tensor x = Inputs(1, c.spec.d_in, seed++).reshape({1, 1, c.spec.d_in});
    const at::Tensor f = sae->Encode(x).flatten();
    const int64_t latent = f.argmax().item<int64_t>();  // an active latent
    ASSERT_GT(f[latent].item<double>(), 0.0) << CaseName(c.spec);
    // Its value as the edit computes it (the shortcut): then f' - f is exactly 0, bitwise.
    const double own = sae->EncodeLatents(x, {latent}).item<double>();
    auto edit = MakeLatentIntervention(sae, {LatentEdit::Op::kClamp, {latent}, own, {}});
    ASSERT_TRUE(edit.ok()) << edit.status().ToString();
    EXPECT_TRUE(at::equal(edit->Apply(x, 0), x)) << CaseName(c.spec);
    // Its value from the full encode: equal to within the two paths' rounding (1e-6 relative
    // to the latent's value).
    const double value = f[latent].item<double>();
    auto full = MakeLatentIntervention(sae, {LatentEdit::Op::kClamp, {latent}, value, {}});
    EXPECT_LE(MaxDiff(full->Apply(x, 0), x), 1e-6 * std::max(1.0, value)) << CaseName(c.spec);
    // Scaling every latent by 1 (all positions, bf16 too): bitwise.
    at::Tensor many = Inputs(12, c.spec.d_in, seed++).reshape({2, 6, c.spec.d_in});
    std::vector<int64_t> all(c.spec.d_sae);
    for (int64_t i = 0; i < c.spec.d_sae; ++i) all[i] = i;
    auto scale = MakeLatentIntervention(sae, {LatentEdit::Op::kScale, all, 1.0, {}});
    ASSERT_TRUE(scale.ok());
    EXPECT_TRUE(at::equal(scale->Apply(many, 0), many)) << CaseName(c.spec);
    at::Tensor half = many.to(at::kBFloat16);
    at::Tensor out = scale->Apply(half, 0);
    EXPECT_EQ(out.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(out, half)) << CaseName(c.spec);
  }
}

TEST(SaeTest, ZeroingEveryLatentLeavesDecoderBiasPlusError) {
  uint64_t seed = 71;
  for (const Case& c : AllCases()) {
    formats::SaeWeights w = RandomWeights(c.spec, seed++);
    auto sae = MakeSae(w);
    std::vector<int64_t> all(c.spec.d_sae);
    for (int64_t i = 0; i < c.spec.d_sae; ++i) all[i] = i;
    auto edit = MakeLatentIntervention(sae, {LatentEdit::Op::kZero, all, 0.0, {}});
    ASSERT_TRUE(edit.ok()) << edit.status().ToString();
    at::Tensor x = Inputs(10, c.spec.d_in, seed++).reshape({2, 5, c.spec.d_in});
    at::Tensor x64 = x.to(at::kDouble).reshape({10, c.spec.d_in});
    // decode(0) + (x - decode(f)) = b_dec / s + x - x_hat.
    at::Tensor expected = ToTorch(w.b_dec) / RefScale(w, x64) + x64 - RefReconstruct(w, x64);
    EXPECT_LE(MaxDiff(edit->Apply(x, 0).reshape({10, c.spec.d_in}), expected), 1e-5)
        << CaseName(c.spec);
  }
}

TEST(SaeTest, EditsFollowTheirFormulas) {
  SaeSpec spec;
  spec.architecture = SaeArchitecture::kStandard;
  spec.normalization = SaeNormalization::kConstantNormRescale;
  formats::SaeWeights w = RandomWeights(spec, 81);
  auto sae = MakeSae(w);
  at::Tensor x = Inputs(6, spec.d_in, 82).reshape({1, 6, spec.d_in});
  at::Tensor x64 = x.to(at::kDouble).reshape({6, spec.d_in});
  at::Tensor f = RefEncode(w, x64);
  at::Tensor s = RefScale(w, x64);
  at::Tensor W_dec = ToTorch(w.W_dec);
  const std::vector<int64_t> latents = {2, 7, 40};
  at::Tensor index = at::tensor(latents, at::kLong);
  auto check = [&](LatentEdit edit, const at::Tensor& target) {
    auto made = MakeLatentIntervention(sae, edit);
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    at::Tensor expected =
        x64 + (target - f.index_select(-1, index)).matmul(W_dec.index_select(0, index)) / s;
    EXPECT_LE(MaxDiff(made->Apply(x, 0).reshape({6, spec.d_in}), expected), 1e-5)
        << LatentOpName(edit.op);
    EXPECT_TRUE(std::string(made->KindName()).find(LatentOpName(edit.op)) != std::string::npos);
  };
  at::Tensor fl = f.index_select(-1, index);
  check({LatentEdit::Op::kZero, latents, 0.0, {}}, at::zeros_like(fl));
  check({LatentEdit::Op::kClamp, latents, -3.0, {}}, at::full_like(fl, -3.0));
  check({LatentEdit::Op::kScale, latents, -3.0, {}}, fl * -3.0);
  check({LatentEdit::Op::kMean, latents, 0.0, {0.5, 1.5, -2.0}},
        at::tensor({0.5, 1.5, -2.0}, at::kDouble).expand_as(fl));
  check({LatentEdit::Op::kClamp, latents, 0.0, {4.0, 0.0, 1.0}},
        at::tensor({4.0, 0.0, 1.0}, at::kDouble).expand_as(fl));
}

// --- errors ----------------------------------------------------------------------------------

TEST(SaeTest, BadWeightsAndEditsAreClearErrors) {
  const model::ModelConfig config = TinyConfig();
  auto load = [&](formats::SaeWeights w) {
    return Sae::FromWeights(w, config, c10::Device(c10::kCPU), at::kFloat).status();
  };
  auto expect = [](const Status& status, const std::string& fragment) {
    EXPECT_FALSE(status.ok());
    EXPECT_NE(status.message().find(fragment), std::string::npos) << status.ToString();
    EXPECT_NE(status.message().find("test-"), std::string::npos) << status.ToString();
  };
  SaeSpec spec;
  formats::SaeWeights good = RandomWeights(spec, 91);
  ASSERT_TRUE(load(good).ok());

  formats::SaeWeights w = good;
  w.config.hook = "";
  expect(load(w), "no hook");
  w.config.hook = "blocks.1.mlp.hook_post";
  expect(load(w), "not one this runtime encodes");
  w.config.hook = "blocks.7.hook_resid_post";
  expect(load(w), "out of range");
  w.config.hook = "blocks.1.hook_nonsense";
  expect(load(w), "hook_nonsense");
  w = good;
  w.config.hook = "blocks.1.attn.hook_z";  // width 4 x 8 = 32: fine
  EXPECT_TRUE(load(w).ok());

  SaeSpec wide = spec;
  wide.d_in = 40;
  expect(load(RandomWeights(wide, 92)), "d_in 40 differs from the width 32");
  w = good;
  w.b_enc.shape = {47};
  w.b_enc.values.resize(47);
  expect(load(w), "b_enc: shape [47], expected [48]");
  w = good;
  w.config.architecture = SaeArchitecture::kJumpRelu;
  expect(load(w), "threshold: missing");
  w = good;
  w.config.architecture = SaeArchitecture::kTopK;
  w.config.k = 0;
  expect(load(w), "k 0");

  auto sae = MakeSae(good, config);
  expect(sae->CheckLatents({0, 48}), "latent 48 out of range [0, 48)");
  expect(MakeLatentIntervention(sae, {LatentEdit::Op::kZero, {-1}, 0.0, {}}).status(),
         "latent -1");
  expect(MakeLatentIntervention(sae, {LatentEdit::Op::kZero, {}, 0.0, {}}).status(),
         "no latents");
  expect(MakeLatentIntervention(sae, {LatentEdit::Op::kZero, {3, 3}, 0.0, {}}).status(),
         "given twice");
  expect(MakeLatentIntervention(sae, {LatentEdit::Op::kMean, {1, 2}, 0.0, {1.0}}).status(),
         "1 values for 2 latents");
  auto edit = MakeLatentIntervention(sae, {LatentEdit::Op::kZero, {1}, 0.0, {}});
  ASSERT_TRUE(edit.ok());
  expect(edit->Validate(config, model::HookPoint::ResidPost(0)), "cannot edit");
  // Through the registry, as a caller would meet it.
  model::HookRegistry hooks(config);
  Status refused = hooks.Intervene({model::HookPoint::ResidPre(1), *edit});
  expect(refused, "cannot edit blocks.1.hook_resid_pre");
}

// --- through a model forward -----------------------------------------------------------------

TEST(SaeTest, LatentEditThroughTheForwardPassWithRowAndPositionMasks) {
  const model::ModelConfig config = TinyConfig();
  auto model = model::Model::Random(config, 5, 0.2, model::LoadOptions());
  SaeSpec spec;
  spec.architecture = SaeArchitecture::kJumpRelu;
  spec.normalization = SaeNormalization::kConstantNormRescale;
  formats::SaeWeights w = RandomWeights(spec, 101);
  auto sae = MakeSae(w, config);
  ASSERT_TRUE(sae);
  const model::HookPoint hook = sae->hook();  // blocks.1.hook_resid_post

  at::manual_seed(102);
  at::Tensor ids = at::randint(3, 53, {2, 7}, at::kLong);
  auto run = [&](model::HookRegistry* hooks) {
    model::ForwardRequest request;
    request.input_ids = ids;
    request.hooks = hooks;
    auto out = model->Forward(request);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out->logits;
  };
  model::HookRegistry clean_hooks(config);
  clean_hooks.Cache(hook);
  at::Tensor clean = run(&clean_hooks);
  at::Tensor x_clean = *clean_hooks.Cached(hook.Name());

  auto edit = MakeLatentIntervention(sae, {LatentEdit::Op::kClamp, {4, 11}, 6.0, {}});
  ASSERT_TRUE(edit.ok()) << edit.status().ToString();
  model::HookRegistry hooks(config);
  hooks.Cache(hook);
  model::InterventionSite site{hook, *edit};
  site.rows = Bools({1, 0});
  site.positions = Bools({0, 0, 1, 0, 1, 1, 0});
  ASSERT_TRUE(hooks.Intervene(site).ok());
  at::Tensor edited = run(&hooks);
  at::Tensor x_edited = *hooks.Cached(hook.Name());

  // The hook's own input is the clean activation (nothing upstream is edited), so the cached
  // value is x + (6 - f) W_dec / s at the masked cells of row 0 and x elsewhere.
  at::Tensor x64 = x_clean[0].to(at::kDouble);
  at::Tensor f = RefEncode(w, x64).index_select(-1, at::tensor({4, 11}, at::kLong));
  at::Tensor delta = (6.0 - f).matmul(ToTorch(w.W_dec).index_select(0, at::tensor({4, 11}, at::kLong))) /
                     RefScale(w, x64);
  at::Tensor mask = site.positions.unsqueeze(-1).to(at::kDouble);
  EXPECT_LE(MaxDiff(x_edited[0], x64 + mask * delta), 1e-5);
  EXPECT_GT(MaxDiff(x_edited[0], x_clean[0]), 0.1);  // the edit did something
  EXPECT_TRUE(at::equal(x_edited[1], x_clean[1]));
  // Row 1 untouched; row 0 unchanged before the first edited position (causal), changed after.
  EXPECT_TRUE(at::equal(edited[1], clean[1]));
  EXPECT_TRUE(at::equal(edited[0].narrow(0, 0, 2), clean[0].narrow(0, 0, 2)));
  EXPECT_GT(MaxDiff(edited[0].narrow(0, 2, 5), clean[0].narrow(0, 2, 5)), 1e-3);

  // The same edit with no masks equals a registry of the plain formula at every position: the
  // logits of a run that adds delta everywhere by an Add-free route, i.e. the cached value.
  model::HookRegistry everywhere(config);
  everywhere.Cache(hook);
  ASSERT_TRUE(everywhere.Intervene({hook, *edit}).ok());
  run(&everywhere);
  at::Tensor x_all = *everywhere.Cached(hook.Name());
  for (int64_t b = 0; b < 2; ++b) {
    at::Tensor xb = x_clean[b].to(at::kDouble);
    at::Tensor fb = RefEncode(w, xb).index_select(-1, at::tensor({4, 11}, at::kLong));
    at::Tensor db = (6.0 - fb).matmul(ToTorch(w.W_dec).index_select(0, at::tensor({4, 11}, at::kLong))) /
                    RefScale(w, xb);
    EXPECT_LE(MaxDiff(x_all[b], xb + db), 1e-5);
  }
}

// Active on generated tokens: greedy generation with a KV cache (the edit sees one new column per
// step) equals generation recomputing the whole sequence, and the edit changes what is generated.
TEST(SaeTest, LatentEditIsActiveOnGeneratedTokens) {
  const model::ModelConfig config = TinyConfig();
  auto model = model::Model::Random(config, 7, 0.3, model::LoadOptions());
  SaeSpec spec;
  spec.architecture = SaeArchitecture::kGated;
  spec.hook = "blocks.0.hook_resid_post";
  auto sae = MakeSae(RandomWeights(spec, 111), config);
  ASSERT_TRUE(sae);
  auto edit = MakeLatentIntervention(sae, {LatentEdit::Op::kClamp, {1, 2, 3, 4, 5}, 40.0, {}});
  ASSERT_TRUE(edit.ok()) << edit.status().ToString();
  const std::vector<std::vector<int64_t>> prompts = {{5, 9, 13, 2, 40}, {7, 30}};
  auto generate = [&](bool kv, bool edited) {
    model::HookRegistry hooks(config);
    if (edited) {
      EXPECT_TRUE(hooks.Intervene({sae->hook(), *edit}).ok());
    }
    model::GenerationOptions options;
    options.max_new_tokens = 8;
    options.use_kv_cache = kv;
    options.hooks = &hooks;
    auto out = model::GenerateGreedy(*model, prompts, options);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out->tokens;
  };
  const auto with_cache = generate(true, true);
  EXPECT_EQ(with_cache, generate(false, true));
  EXPECT_NE(with_cache, generate(true, false));
}

}  // namespace
}  // namespace knockout::sae
