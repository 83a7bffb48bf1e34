// Each hook point and intervention does what its formula says (science.md), and prefix reuse
// (layer and sequence) reproduces the full pass.
#include "worker/model/hooks.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "tests/testing/reference.h"
#include "worker/model/model.h"

namespace knockout::model {
namespace {

using knockout::testing::ReadTensors;
using knockout::testing::ReferenceDir;

at::Tensor RowMask(std::vector<int64_t> rows) { return at::tensor(rows).to(at::kBool); }

// Every hook test on a Llama checkpoint and on Gemma 2 (whose attention and MLP outputs are
// normalised before they join the residual stream, and whose even layers slide).
class HooksTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = ReferenceDir(GetParam());
    auto model = Model::Load(dir, LoadOptions());
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    model_ = std::move(model).value();
    auto ref = ReadTensors(dir + "/reference.safetensors");
    ids_ = ref["input_ids"];
    mask_ = ref["attention_mask"];
  }

  const ModelConfig& config() const { return model_->config(); }

  ForwardResult Run(HookRegistry* hooks, at::Tensor ids = {}, at::Tensor mask = {}) {
    ForwardRequest request;
    request.input_ids = ids.defined() ? ids : ids_;
    request.attention_mask = mask.defined() ? mask : mask_;
    request.hooks = hooks;
    auto out = model_->Forward(request);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out.ok() ? *out : ForwardResult();
  }

  std::unique_ptr<Model> model_;
  at::Tensor ids_, mask_;
};

TEST(HookPointTest, NamesRoundTrip) {
  for (const HookPoint& hook : AllHookPoints(3)) {
    auto parsed = HookPoint::Parse(hook.Name(), 3);
    ASSERT_TRUE(parsed.ok()) << hook.Name();
    EXPECT_TRUE(*parsed == hook);
  }
  EXPECT_EQ(AllHookPoints(3).size(), 1u + 3 * 7 + 2);
  EXPECT_EQ(HookPoint::AttnZ(2).Name(), "blocks.2.attn.hook_z");
  auto bad = HookPoint::Parse("blocks.9.hook_resid_pre", 6);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "blocks.9.hook_resid_pre: layer 9 out of range, model has 6 layers");
  EXPECT_FALSE(HookPoint::Parse("blocks.1.hook_nothing", 6).ok());
  EXPECT_FALSE(HookPoint::Parse("blocks.x.hook_resid_pre", 6).ok());
}

TEST_P(HooksTest, CacheHasEveryHookWithConsistentValues) {
  HookRegistry hooks(config());
  hooks.CacheAll();
  ForwardResult clean = Run(&hooks);
  const auto& cache = hooks.cache();
  EXPECT_EQ(cache.size(), AllHookPoints(config().num_layers).size());
  const int64_t b = ids_.size(0), t = ids_.size(1);
  EXPECT_EQ(cache.at("blocks.1.attn.hook_z").sizes(),
            (at::IntArrayRef{b, t, config().num_heads, config().head_dim}));
  EXPECT_EQ(cache.at("blocks.1.mlp.hook_post").sizes(),
            (at::IntArrayRef{b, t, config().intermediate_size}));
  for (int64_t l = 0; l < config().num_layers; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    EXPECT_TRUE(at::allclose(cache.at(p + "hook_resid_mid"),
                             cache.at(p + "hook_resid_pre") + cache.at(p + "hook_attn_out")));
    EXPECT_TRUE(at::allclose(cache.at(p + "hook_resid_post"),
                             cache.at(p + "hook_resid_mid") + cache.at(p + "hook_mlp_out")));
    if (l + 1 < config().num_layers) {
      EXPECT_TRUE(at::equal(cache.at(p + "hook_resid_post"),
                            cache.at("blocks." + std::to_string(l + 1) + ".hook_resid_pre")));
    }
  }
  // ln_final: normalized * scale == final residual.
  at::Tensor final_resid =
      cache.at("blocks." + std::to_string(config().num_layers - 1) + ".hook_resid_post");
  EXPECT_TRUE(at::allclose(cache.at("ln_final.hook_normalized") * cache.at("ln_final.hook_scale"),
                           final_resid, 1e-5, 1e-5));
  // Caching alone changes nothing.
  EXPECT_TRUE(at::equal(clean.logits, Run(nullptr).logits));
}

// Zeroing head h at attn.hook_z equals zeroing that head's slice of o_proj's input columns.
TEST_P(HooksTest, HeadZeroEqualsZeroingOutputProjectionColumns) {
  const int64_t layer = 1, head = 2, dh = config().head_dim;
  HookRegistry hooks(config());
  ASSERT_TRUE(
      hooks.Intervene({HookPoint::AttnZ(layer), Intervention::Zero().OnUnits({head})}).ok());
  at::Tensor ablated = Run(&hooks).logits;

  at::Tensor& o = model_->weights().layers[layer].o;
  at::Tensor saved = o.clone();
  o.narrow(1, head * dh, dh).zero_();
  at::Tensor edited = Run(nullptr).logits;
  o.copy_(saved);
  EXPECT_TRUE(at::allclose(ablated, edited, 1e-5, 1e-5));
  EXPECT_FALSE(at::allclose(ablated, Run(nullptr).logits, 1e-3, 1e-3));
}

// Per-head mean: head h's z becomes the given mean, the other heads keep their values.
TEST_P(HooksTest, HeadMeanAndNeuronMean) {
  HookRegistry clean_hooks(config());
  clean_hooks.CacheAll();
  Run(&clean_hooks);
  at::Tensor z = clean_hooks.cache().at("blocks.0.attn.hook_z");
  at::Tensor mean = z.mean(at::IntArrayRef{0, 1});  // [H, dh]

  HookRegistry hooks(config());
  hooks.Cache(HookPoint::AttnZ(0));
  hooks.Cache(HookPoint::MlpPost(1));
  ASSERT_TRUE(hooks.Intervene({HookPoint::AttnZ(0), Intervention::Mean(mean).OnUnits({1})}).ok());
  at::Tensor neuron_mean = at::arange(config().intermediate_size, at::kFloat);
  ASSERT_TRUE(
      hooks.Intervene({HookPoint::MlpPost(1), Intervention::Mean(neuron_mean).OnUnits({3, 7})})
          .ok());
  Run(&hooks);
  at::Tensor z2 = hooks.cache().at("blocks.0.attn.hook_z");
  EXPECT_TRUE(at::allclose(z2.select(2, 1), mean[1].expand_as(z2.select(2, 1))));
  EXPECT_TRUE(at::equal(z2.select(2, 0), z.select(2, 0)));
  at::Tensor post = hooks.cache().at("blocks.1.mlp.hook_post");
  EXPECT_TRUE((post.select(2, 3) == 3).all().item<bool>());
  EXPECT_TRUE((post.select(2, 7) == 7).all().item<bool>());
}

// Directional ablation leaves no component along r; addition adds c * r.
TEST_P(HooksTest, DirectionalAblationAndAddition) {
  at::Tensor r = at::randn({config().hidden_size}, at::kFloat) * 3;
  at::Tensor r_hat = r / r.norm();
  HookRegistry clean(config());
  clean.Cache(HookPoint::ResidPre(1));
  Run(&clean);

  HookRegistry hooks(config());
  hooks.Cache(HookPoint::ResidPre(1));
  hooks.Cache(HookPoint::AttnOut(1));
  ASSERT_TRUE(hooks.Intervene({HookPoint::ResidPre(1), Intervention::Directional(r)}).ok());
  ASSERT_TRUE(hooks.Intervene({HookPoint::AttnOut(1), Intervention::Directional(r)}).ok());
  Run(&hooks);
  at::Tensor projected = at::matmul(hooks.cache().at("blocks.1.hook_resid_pre"), r_hat);
  EXPECT_LT(projected.abs().max().item<double>(), 1e-5);
  EXPECT_LT(at::matmul(hooks.cache().at("blocks.1.hook_attn_out"), r_hat).abs().max().item<double>(),
            1e-5);
  // The component orthogonal to r is unchanged.
  at::Tensor before = clean.cache().at("blocks.1.hook_resid_pre");
  at::Tensor orth = before - at::matmul(before, r_hat).unsqueeze(-1) * r_hat;
  EXPECT_TRUE(at::allclose(hooks.cache().at("blocks.1.hook_resid_pre"), orth, 1e-5, 1e-5));

  HookRegistry add(config());
  add.Cache(HookPoint::ResidPre(1));
  ASSERT_TRUE(add.Intervene({HookPoint::ResidPre(1), Intervention::Add(r, -1.5)}).ok());
  Run(&add);
  EXPECT_TRUE(at::allclose(add.cache().at("blocks.1.hook_resid_pre"), before - 1.5 * r, 1e-5,
                           1e-5));
}

// Different rows carry different interventions: each row equals its own single-row run.
TEST_P(HooksTest, PerRowMasksGiveEachRowItsOwnIntervention) {
  at::Tensor ids = ids_.narrow(0, 1, 1).repeat({3, 1});  // the 11-token prompt, three times
  at::Tensor mask = mask_.narrow(0, 1, 1).repeat({3, 1});
  HookRegistry hooks(config());
  ASSERT_TRUE(hooks
                  .Intervene({HookPoint::AttnZ(0), Intervention::Zero().OnUnits({0}),
                              RowMask({0, 1, 0})})
                  .ok());
  ASSERT_TRUE(hooks
                  .Intervene({HookPoint::MlpOut(1), Intervention::Zero(),
                              RowMask({0, 0, 1})})
                  .ok());
  at::Tensor batched = Run(&hooks, ids, mask).logits;

  at::Tensor one_ids = ids.narrow(0, 0, 1), one_mask = mask.narrow(0, 0, 1);
  HookRegistry head(config());
  ASSERT_TRUE(head.Intervene({HookPoint::AttnZ(0), Intervention::Zero().OnUnits({0})}).ok());
  HookRegistry mlp(config());
  ASSERT_TRUE(mlp.Intervene({HookPoint::MlpOut(1), Intervention::Zero()}).ok());
  EXPECT_TRUE(at::allclose(batched[0], Run(nullptr, one_ids, one_mask).logits[0], 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(batched[1], Run(&head, one_ids, one_mask).logits[0], 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(batched[2], Run(&mlp, one_ids, one_mask).logits[0], 1e-5, 1e-5));
}

// A position mask: columns before the first intervened column are untouched (causality); from
// it on, the logits change.
TEST_P(HooksTest, PositionMaskRespectsCausality) {
  const int64_t t = ids_.size(1), first = 8;
  at::Tensor positions = at::arange(t) >= first;
  HookRegistry hooks(config());
  ASSERT_TRUE(
      hooks.Intervene({HookPoint::ResidMid(0), Intervention::Zero(), {}, positions}).ok());
  at::Tensor ablated = Run(&hooks).logits;
  at::Tensor clean = Run(nullptr).logits;
  EXPECT_TRUE(at::equal(ablated.narrow(1, 0, first), clean.narrow(1, 0, first)));
  EXPECT_FALSE(at::allclose(ablated.narrow(1, first, t - first), clean.narrow(1, first, t - first)));
}

// Resample: row b's activation is replaced by row b of the source.
TEST_P(HooksTest, ResampleFromOtherPrompts) {
  HookRegistry source(config());
  source.Cache(HookPoint::MlpOut(0));
  at::Tensor other_ids = ids_.flip({0});
  at::Tensor other_mask = mask_.flip({0});
  Run(&source, other_ids, other_mask);
  at::Tensor donor = source.cache().at("blocks.0.hook_mlp_out");

  HookRegistry hooks(config());
  hooks.Cache(HookPoint::MlpOut(0));
  ASSERT_TRUE(hooks.Intervene({HookPoint::MlpOut(0), Intervention::Resample(donor)}).ok());
  Run(&hooks);
  EXPECT_TRUE(at::equal(hooks.cache().at("blocks.0.hook_mlp_out"), donor));
}

TEST_P(HooksTest, RejectsMisshapenInterventions) {
  HookRegistry hooks(config());
  Status s = hooks.Intervene({HookPoint::ResidPre(0), Intervention::Directional(at::ones({7}))});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("blocks.0.hook_resid_pre"), std::string::npos) << s.message();
  s = hooks.Intervene({HookPoint::AttnZ(0), Intervention::Zero().OnUnits({4})});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("unit 4 out of range"), std::string::npos) << s.message();
  s = hooks.Intervene({HookPoint::AttnZ(0), Intervention::Mean(at::zeros({64}))});
  EXPECT_FALSE(s.ok());
  s = hooks.Intervene({HookPoint::ResidPre(5), Intervention::Zero()});
  EXPECT_FALSE(s.ok());
}

// Layer-prefix reuse: starting at layer L from the cached clean resid_pre equals the full pass,
// also with an intervention at or after L.
TEST_P(HooksTest, LayerPrefixReuseEqualsFullPass) {
  HookRegistry clean(config());
  for (int64_t l = 0; l < config().num_layers; ++l) clean.Cache(HookPoint::ResidPre(l));
  at::Tensor full = Run(&clean).logits;
  for (int64_t l = 1; l < config().num_layers; ++l) {
    ForwardRequest request;
    request.start_layer = l;
    request.start_residual = clean.cache().at("blocks." + std::to_string(l) + ".hook_resid_pre");
    request.attention_mask = mask_;
    auto out = model_->Forward(request);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_TRUE(at::allclose(out->logits, full, 0, 1e-5)) << "layer " << l;

    HookRegistry a(config()), b(config());
    for (HookRegistry* h : {&a, &b}) {
      ASSERT_TRUE(h->Intervene({HookPoint::AttnZ(l), Intervention::Zero().OnUnits({1})}).ok());
    }
    request.hooks = &a;
    auto prefixed = model_->Forward(request);
    ASSERT_TRUE(prefixed.ok());
    EXPECT_TRUE(at::allclose(prefixed->logits, Run(&b).logits, 0, 1e-5)) << "layer " << l;
  }
}

// Sequence-prefix reuse: columns [0, p) from a clean KV cache plus a pass over [p, T) equals
// the full pass at the later columns, with or without an intervention from p on.
TEST_P(HooksTest, SequencePrefixReuseEqualsFullPass) {
  const int64_t t = ids_.size(1), p = 6;
  KVCache clean_cache;
  ForwardRequest clean;
  clean.input_ids = ids_;
  clean.attention_mask = mask_;
  clean.kv_cache = &clean_cache;
  at::Tensor full = model_->Forward(clean)->logits;

  for (bool intervene : {false, true}) {
    HookRegistry a(config()), b(config());
    if (intervene) {
      at::Tensor positions = at::arange(t) >= p;
      for (HookRegistry* h : {&a, &b}) {
        ASSERT_TRUE(h->Intervene({HookPoint::MlpPost(0), Intervention::Zero(), {}, positions}).ok());
      }
    }
    KVCache prefix = clean_cache.Prefix(p);
    ForwardRequest rest;
    rest.input_ids = ids_.narrow(1, p, t - p);
    rest.attention_mask = mask_.narrow(1, p, t - p);
    rest.kv_cache = &prefix;
    rest.hooks = &a;
    auto out = model_->Forward(rest);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    at::Tensor expected = intervene ? Run(&b).logits : full;
    EXPECT_TRUE(at::allclose(out->logits, expected.narrow(1, p, t - p), 0, 1e-5))
        << "intervene=" << intervene;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, HooksTest, ::testing::Values("llama_gqa-f32", "gemma2-f32"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& c : name) c = (c == '-') ? '_' : c;
                           return name;
                         });

}  // namespace
}  // namespace knockout::model
