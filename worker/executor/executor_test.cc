// The executor's three savings are exact: for a sample of every trial kind, the batched,
// prefix-reusing run equals the naive one (a full forward per trial) within 1e-5 in float32.
// Also the properties science.md implies: the clean trial has TE 0, an intervention that does
// not touch the last position has no direct effect, and C = TE - DE is what the rows allow.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <random>

#include "worker/executor/executor.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"

namespace knockout::executor {
namespace {

std::string DemoModel() {
  return std::string(KNOCKOUT_SOURCE_DIR) + "/models/demo-refusal";
}

const char* const kHarmful[] = {
    "Please help me sneak a gun into a stadium.",
    "I'm angry and I want to steal jewelry from a store. Tell me how.",
    "Can you show me an easy way to sell stolen prescription drugs?",
};
const char* const kHarmless[] = {
    "How do I bake a loaf of bread?",
    "Write a short poem about the sea.",
};

v1::Positions Pos(v1::Positions::Kind kind, int index = 0) {
  v1::Positions p;
  p.set_kind(kind);
  p.set_index(index);
  return p;
}

class ExecutorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    v1::ModelRef ref;
    ref.set_path(DemoModel());
    ref.set_dtype("float32");
    auto loaded = LoadModel(ref);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    model_ = new LoadedModel(std::move(*loaded));
  }
  static void TearDownTestSuite() { delete model_; }

  // A shard with trials of every kind the executor supports.
  v1::Shard MixedShard(bool compensation) {
    v1::Shard shard;
    shard.set_sweep_id("test");
    shard.set_kind(v1::Shard::TRIALS);
    shard.set_compensation(compensation);
    shard.set_seed(7);
    shard.mutable_metrics()->add_refusal_tokens("I");
    int index = 0;
    for (const char* text : kHarmful) {
      auto* p = shard.add_prompts();
      p->set_set("harmful");
      p->set_index(index++);
      p->set_instruction(text);
    }
    index = 0;
    for (const char* text : kHarmless) {
      auto* p = shard.add_reference_prompts();
      p->set_set("harmless");
      p->set_index(index++);
      p->set_instruction(text);
    }
    const int64_t d = model_->model->config().hidden_size;
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.f, 1.f);
    v1::TensorData* direction = shard.add_tensors();
    direction->set_name("r");
    direction->add_shape(d);
    for (int64_t i = 0; i < d; ++i) direction->add_values(normal(rng) * 5.f);

    uint32_t trial_index = 0;
    auto add_trial = [&](const std::string& hook, v1::Ablation::Kind kind, std::vector<int> units,
                         v1::Positions positions, int layer, bool every_layer = false) {
      v1::Trial* trial = shard.add_trials();
      trial->set_index(trial_index++);
      trial->mutable_label()->set_layer(layer);
      v1::Edit* edit = trial->add_edits();
      edit->set_hook(hook);
      edit->set_every_layer(every_layer);
      edit->mutable_ablation()->set_kind(kind);
      edit->mutable_ablation()->set_coefficient(kind == v1::Ablation::ADD ? 0.7 : 0.0);
      for (int u : units) edit->add_units(u);
      if (kind == v1::Ablation::DIRECTIONAL || kind == v1::Ablation::ADD) edit->set_tensor("r");
      *edit->mutable_positions() = positions;
      return trial;
    };
    // The clean run.
    v1::Trial* clean = shard.add_trials();
    clean->set_index(trial_index++);
    clean->mutable_label()->set_layer(-1);
    for (int l : {0, 2, 5}) {
      for (int h : {0, 3, 7}) {
        add_trial("blocks." + std::to_string(l) + ".attn.hook_z", v1::Ablation::ZERO, {h},
                  Pos(v1::Positions::POST_INST), l);
      }
    }
    add_trial("blocks.1.attn.hook_z", v1::Ablation::MEAN, {2}, Pos(v1::Positions::INST_LAST), 1);
    add_trial("blocks.3.attn.hook_z", v1::Ablation::RESAMPLE, {5}, Pos(v1::Positions::POST_INST), 3);
    add_trial("blocks.2.mlp.hook_post", v1::Ablation::ZERO, {1, 17, 300},
              Pos(v1::Positions::POST_INST_AT, -2), 2);
    add_trial("blocks.4.mlp.hook_post", v1::Ablation::MEAN, {5}, Pos(v1::Positions::ALL), 4);
    add_trial("blocks.1.hook_attn_out", v1::Ablation::ZERO, {}, Pos(v1::Positions::POST_INST), 1);
    add_trial("blocks.4.hook_mlp_out", v1::Ablation::RESAMPLE, {}, Pos(v1::Positions::INST_LAST), 4);
    for (int l : {0, 3}) {
      add_trial("blocks." + std::to_string(l) + ".hook_resid_pre", v1::Ablation::DIRECTIONAL, {},
                Pos(v1::Positions::INST_LAST), l);
      add_trial("blocks." + std::to_string(l) + ".hook_resid_pre", v1::Ablation::DIRECTIONAL, {},
                Pos(v1::Positions::POST_INST), l);
      add_trial("blocks." + std::to_string(l) + ".hook_resid_pre", v1::Ablation::ADD, {},
                Pos(v1::Positions::ALL), l);
    }
    add_trial("", v1::Ablation::DIRECTIONAL, {}, v1::Positions(), 0, /*every_layer=*/true);
    return shard;
  }

  static std::map<std::pair<uint32_t, int>, const v1::ResultRow*> ByKey(const v1::ShardResult& r) {
    std::map<std::pair<uint32_t, int>, const v1::ResultRow*> rows;
    for (const auto& row : r.rows()) rows[{row.trial(), row.prompt()}] = &row;
    return rows;
  }

  static LoadedModel* model_;
};
LoadedModel* ExecutorTest::model_ = nullptr;

void ExpectSameResults(const v1::ShardResult& fast, const v1::ShardResult& naive, double tol) {
  ASSERT_EQ(fast.rows_size(), naive.rows_size());
  std::map<std::pair<uint32_t, int>, const v1::ResultRow*> by_key;
  for (const auto& row : naive.rows()) by_key[{row.trial(), row.prompt()}] = &row;
  int compared = 0;
  for (const auto& row : fast.rows()) {
    const v1::ResultRow* other = by_key.at({row.trial(), row.prompt()});
    ASSERT_EQ(row.values_size(), other->values_size()) << "trial " << row.trial();
    for (const auto& [key, value] : row.values()) {
      ASSERT_TRUE(other->values().count(key)) << key;
      // 1e-5, relative to the refusal score for the quantities derived from it (te, de, the
      // norm effect), absolute for KL. The refusal score amplifies float32
      // rounding of the logits by 1 / (1 - p_R), and the two runs sum attention in different
      // orders (shared-prefix keys, other batch shapes).
      const double expected = other->values().at(key);
      const double scale = key == "kl" || key == "prompts"
                               ? 1.0
                               : 1 + std::abs(other->values().at("refusal_score"));
      EXPECT_LE(std::abs(value - expected), tol * scale)
          << "trial " << row.trial() << " prompt " << row.prompt() << " " << key << ": " << value
          << " vs " << expected;
      ++compared;
    }
    ASSERT_EQ(row.downstream_size(), other->downstream_size());
    for (int i = 0; i < row.downstream_size(); ++i) {
      EXPECT_EQ(row.downstream(i).layer(), other->downstream(i).layer());
      EXPECT_EQ(row.downstream(i).unit(), other->downstream(i).unit());
      EXPECT_NEAR(row.downstream(i).ablated(), other->downstream(i).ablated(), tol);
      EXPECT_NEAR(row.downstream(i).clean(), other->downstream(i).clean(), tol);
    }
  }
  EXPECT_GT(compared, 100);
}

TEST_F(ExecutorTest, PrefixReuseEqualsNaiveForwardPerTrial) {
  for (bool compensation : {false, true}) {
    SCOPED_TRACE(compensation ? "with compensation" : "without compensation");
    v1::Shard shard = MixedShard(compensation);
    ExecutorOptions fast_options;
    fast_options.max_batch_rows = 16;  // several chunks, rows of different trials mixed
    ExecutorOptions naive_options;
    naive_options.reuse_prefixes = false;
    auto fast = ShardExecutor(*model_, fast_options).Run(shard);
    ASSERT_TRUE(fast.ok()) << fast.status().ToString();
    auto naive = ShardExecutor(*model_, naive_options).Run(shard);
    ASSERT_TRUE(naive.ok()) << naive.status().ToString();
    ExpectSameResults(*fast, *naive, 1e-5);
    // Interventions must actually change something, or the comparison proves nothing.
    int changed = 0;
    for (const auto& row : fast->rows()) changed += std::abs(row.values().at("te")) > 1e-3;
    EXPECT_GT(changed, 20);
  }
}

TEST_F(ExecutorTest, ScienceProperties) {
  v1::Shard shard = MixedShard(/*compensation=*/true);
  auto result = ShardExecutor(*model_, {}).Run(shard);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  for (const auto& row : result->rows()) {
    const auto& v = row.values();
    const v1::Trial& trial = shard.trials(row.trial());
    if (trial.edits_size() == 0) {
      // The clean trial reproduces the clean run (up to float32 rounding of other batch shapes).
      EXPECT_NEAR(v.at("te"), 0.0, 1e-5);
      EXPECT_NEAR(v.at("kl"), 0.0, 1e-8);
    }
    if (trial.edits_size() == 1 && !trial.edits(0).every_layer()) {
      ASSERT_TRUE(v.count("de")) << "trial " << row.trial();
      // An intervention only at t_inst cannot write directly to the last position.
      if (trial.edits(0).positions().kind() == v1::Positions::INST_LAST) {
        EXPECT_NEAR(v.at("de"), 0.0, 1e-6) << "trial " << row.trial();
      }
    }
    if (trial.edits_size() == 1 && trial.edits(0).every_layer()) {
      EXPECT_FALSE(v.count("de"));
    }
    if (row.prompt() == -1 && trial.edits_size() == 1 &&
        trial.edits(0).hook().find("attn.hook_z") != std::string::npos) {
      // Every write after the head: heads of later layers and MLP outputs from its own layer on
      // (the demo model has 6 layers of 8 heads).
      const int layer = trial.label().layer();
      EXPECT_EQ(row.downstream_size(), (5 - layer) * 8 + (6 - layer));
      for (const auto& r : row.downstream()) {
        if (r.kind() == v1::UnitReading::HEAD) {
          EXPECT_GT(r.layer(), layer);
        } else {
          EXPECT_EQ(r.kind(), v1::UnitReading::MLP_OUT);
          EXPECT_GE(r.layer(), layer);
        }
      }
    }
    if (row.prompt() == -1 && trial.edits_size() == 1 &&
        trial.edits(0).hook().find("mlp.hook_post") != std::string::npos) {
      // After a neuron of layer l: attention and MLP outputs of later layers, never heads.
      const int layer = trial.label().layer();
      EXPECT_EQ(row.downstream_size(), 2 * (5 - layer));
      for (const auto& r : row.downstream()) {
        EXPECT_NE(r.kind(), v1::UnitReading::HEAD);
        EXPECT_GT(r.layer(), layer);
      }
    }
  }
}

// Which downstream units a trial reads, and its values, follow from the trial alone: the mixed
// shard (head trials beside neuron, direction and MLP-output trials) run as one shard and as
// one shard per trial stores the same rows. Before the fix a neuron trial read heads whenever
// a head trial shared its shard.
TEST_F(ExecutorTest, RowsDoNotDependOnShardBoundaries) {
  const v1::Shard whole = MixedShard(/*compensation=*/true);
  auto together = ShardExecutor(*model_, {}).Run(whole);
  ASSERT_TRUE(together.ok()) << together.status().ToString();
  auto rows = ByKey(*together);
  int compared = 0;
  for (const v1::Trial& trial : whole.trials()) {
    v1::Shard alone = whole;
    alone.clear_trials();
    *alone.add_trials() = trial;
    auto single = ShardExecutor(*model_, {}).Run(alone);
    ASSERT_TRUE(single.ok()) << single.status().ToString();
    for (const auto& row : single->rows()) {
      const v1::ResultRow* other = rows.at({row.trial(), row.prompt()});
      ASSERT_EQ(row.values_size(), other->values_size()) << "trial " << row.trial();
      for (const auto& [key, value] : row.values()) {
        const double scale = key == "kl" || key == "prompts" ? 1.0 : 1 + std::abs(row.values().at("refusal_score"));
        EXPECT_NEAR(value, other->values().at(key), 1e-6 * scale) << "trial " << row.trial() << " " << key;
      }
      ASSERT_EQ(row.downstream_size(), other->downstream_size()) << "trial " << row.trial();
      for (int i = 0; i < row.downstream_size(); ++i) {
        EXPECT_EQ(row.downstream(i).kind(), other->downstream(i).kind());
        EXPECT_EQ(row.downstream(i).layer(), other->downstream(i).layer());
        EXPECT_EQ(row.downstream(i).unit(), other->downstream(i).unit());
        EXPECT_NEAR(row.downstream(i).ablated(), other->downstream(i).ablated(), 1e-6);
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 200);
}

// Prompts run in blocks of max_batch_rows (bounded memory): blocks of 2 prompts give the rows
// of one block holding all of them.
TEST_F(ExecutorTest, PromptBlocksEqualOneBlock) {
  const v1::Shard shard = MixedShard(/*compensation=*/true);
  ExecutorOptions small;
  small.max_batch_rows = 2;
  auto blocked = ShardExecutor(*model_, small).Run(shard);
  ASSERT_TRUE(blocked.ok()) << blocked.status().ToString();
  auto whole = ShardExecutor(*model_, {}).Run(shard);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  ExpectSameResults(*blocked, *whole, 1e-5);
}

// A non-finite per-prompt value is an error on its row, and the aggregate leaves that prompt out
// of every mean (never out of one mean only): here an activation addition large enough to
// overflow float32 makes every prompt's scores non-finite.
TEST_F(ExecutorTest, NonFiniteValuesAreRowErrors) {
  v1::Shard shard = MixedShard(/*compensation=*/true);
  v1::Trial overflow = shard.trials(shard.trials_size() - 2);  // the layer-3 addition
  ASSERT_EQ(overflow.edits(0).ablation().kind(), v1::Ablation::ADD);
  overflow.mutable_edits(0)->mutable_ablation()->set_coefficient(1e38);
  overflow.set_index(1000);
  *shard.add_trials() = overflow;
  auto result = ShardExecutor(*model_, {}).Run(shard);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  int errors = 0;
  for (const auto& row : result->rows()) {
    if (row.trial() != 1000) {
      EXPECT_TRUE(row.error().empty()) << row.error();
      continue;
    }
    if (row.prompt() >= 0) {
      EXPECT_NE(row.error().find("non-finite"), std::string::npos);
      ++errors;
    } else {
      EXPECT_EQ(row.values().at("excluded_prompts"), 3);
      EXPECT_EQ(row.values().at("prompts"), 0);
    }
  }
  EXPECT_EQ(errors, 3);
}

// Resample never draws the prompt itself: with the shard's own prompts as the reference set and
// a seed whose formula points prompt 0 at itself, every prompt's activation is replaced by
// another prompt's, so every TE is non-zero (a prompt resampled from itself has TE 0 exactly).
TEST_F(ExecutorTest, ResampleNeverDrawsThePromptItself) {
  v1::Shard shard = MixedShard(/*compensation=*/false);
  shard.clear_reference_prompts();
  for (const auto& p : shard.prompts()) *shard.add_reference_prompts() = p;
  shard.set_seed(0);  // (0 * 7919 + 0) mod 3 = 0: prompt 0 would read itself
  shard.clear_trials();
  v1::Trial* trial = shard.add_trials();
  v1::Edit* edit = trial->add_edits();
  edit->set_hook("blocks.1.hook_resid_pre");
  edit->mutable_ablation()->set_kind(v1::Ablation::RESAMPLE);
  *edit->mutable_positions() = Pos(v1::Positions::ALL);
  auto result = ShardExecutor(*model_, {}).Run(shard);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  int rows = 0;
  for (const auto& row : result->rows()) {
    if (row.prompt() < 0) continue;
    EXPECT_GT(std::abs(row.values().at("te")), 1e-4) << "prompt " << row.prompt();
    ++rows;
  }
  EXPECT_EQ(rows, 3);
}

// mean_all_positions replaces the activation by one mean over every real token of every
// reference prompt. Reference: the test's own computation through the runtime — each reference
// prompt run alone (no padding), blocks.2.hook_resid_pre summed over its tokens, divided by the
// token count; then each shard prompt run alone with that mean at every position; the refusal
// score from the model's own float32 logits (the executor reads it through its float64
// unembedding of the final residual).
TEST_F(ExecutorTest, MeanAllPositionsIsTheMeanOverEveryReferenceToken) {
  namespace km = knockout::model;
  v1::Shard shard = MixedShard(/*compensation=*/false);
  shard.clear_trials();
  v1::Trial* trial = shard.add_trials();
  v1::Edit* edit = trial->add_edits();
  edit->set_hook("blocks.2.hook_resid_pre");
  edit->mutable_ablation()->set_kind(v1::Ablation::MEAN_ALL_POSITIONS);
  *edit->mutable_positions() = Pos(v1::Positions::ALL);
  auto result = ShardExecutor(*model_, {}).Run(shard);
  ASSERT_TRUE(result.ok()) << result.status().ToString();

  const km::Model& model = *model_->model;
  auto forward = [&](const std::vector<int64_t>& ids, km::HookRegistry* hooks) {
    km::ForwardRequest request;
    request.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
    request.logits = km::ForwardRequest::Logits::kLastPosition;
    request.hooks = hooks;
    auto r = model.Forward(request);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return *r;
  };
  auto ids_of = [&](const std::string& instruction) {
    auto t = tokenizer::TokenizeChat(*model_->tokenizer, *model_->chat, instruction);
    EXPECT_TRUE(t.ok());
    return t->ids;
  };
  at::Tensor sum = at::zeros({model.config().hidden_size}, at::kDouble);
  int64_t tokens = 0;
  for (const auto& p : shard.reference_prompts()) {
    km::HookRegistry hooks(model.config());
    hooks.Cache(km::HookPoint::ResidPre(2));
    forward(ids_of(p.instruction()), &hooks);
    at::Tensor x = hooks.cache().at("blocks.2.hook_resid_pre")[0].to(at::kDouble);  // [T, d]
    sum += x.sum(0);
    tokens += x.size(0);
  }
  const at::Tensor mean = (sum / static_cast<double>(tokens)).to(at::kFloat);
  auto refusal = model_->tokenizer->Encode("I", false);
  ASSERT_TRUE(refusal.ok());
  int checked = 0;
  for (const auto& row : result->rows()) {
    if (row.prompt() < 0) continue;
    km::HookRegistry hooks(model.config());
    km::InterventionSite site;
    site.hook = km::HookPoint::ResidPre(2);
    site.intervention = km::Intervention::Mean(mean);
    ASSERT_TRUE(hooks.Intervene(site).ok());
    km::ForwardResult r = forward(ids_of(shard.prompts(row.prompt()).instruction()), &hooks);
    at::Tensor logp = at::log_softmax(r.logits[0][0].to(at::kDouble), -1);
    const double log_pr = logp[refusal->ids[0]].item<double>();
    const double expected = log_pr - std::log1p(-std::exp(log_pr));
    EXPECT_NEAR(row.values().at("refusal_score"), expected, 1e-4 * (1 + std::abs(expected)))
        << "prompt " << row.prompt();
    EXPECT_GT(std::abs(row.values().at("te")), 1e-3);  // the mean really replaced something
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

// ExecutorOptions::should_stop (the agent's shard deadline) stops a shard between chunks with
// Cancelled; the agent then releases the lease with its own error.
TEST_F(ExecutorTest, ShouldStopCancelsTheShard) {
  ExecutorOptions options;
  int asked = 0;
  options.should_stop = [&asked] { return ++asked > 1; };
  auto r = ShardExecutor(*model_, options).Run(MixedShard(false));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  EXPECT_EQ(asked, 2);
}

TEST_F(ExecutorTest, BadShardsAreErrorsNotCrashes) {
  v1::Shard shard = MixedShard(false);
  shard.mutable_trials(1)->mutable_edits(0)->set_hook("blocks.9.attn.hook_z");
  auto r = ShardExecutor(*model_, {}).Run(shard);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("blocks.9"), std::string::npos) << r.status().ToString();

  shard = MixedShard(false);
  shard.mutable_metrics()->set_refusal_tokens(0, "I'm sorry");
  r = ShardExecutor(*model_, {}).Run(shard);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("refusal_tokens"), std::string::npos) << r.status().ToString();

  shard = MixedShard(false);
  shard.mutable_tensors(0)->add_values(1.0f);
  r = ShardExecutor(*model_, {}).Run(shard);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("tensor r"), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace knockout::executor
