// The sweep engine without a model: stage expansion, the float64 diff-in-means reduction, the
// selection filters of science.md, the state machine over the store, retry after failure.
// Results are written by hand, standing in for a worker.
#include "experiments/engine.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace knockout::experiments {
namespace {

namespace fs = std::filesystem;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // One directory per test: ctest runs the tests of this binary in parallel processes.
    dir_ = fs::path(::testing::TempDir()) /
           (std::string("engine_test_") + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    WritePrompts("harmful.jsonl", 5);
    WritePrompts("harmless.jsonl", 3);
    auto store = storage::Store::Open((dir_ / "store").string());
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    sweeps_ = std::make_unique<SweepStore>(store_.get());
  }
  void TearDown() override {
    sweeps_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }

  void WritePrompts(const std::string& name, int n) {
    std::ofstream out(dir_ / name);
    for (int i = 0; i < n; ++i) out << "{\"instruction\": \"" << name << " request " << i << "\"}\n";
  }

  // 4 layers; candidates at post_inst[-1] of every layer; selection with KL bound 0.5.
  ParsedSpec Spec(int shard_prompts = 4) {
    const std::string yaml = R"(name: unit
model: {path: model}
prompt_sets:
  harmful: harmful.jsonl
  harmless: harmless.jsonl
shard_prompts: )" + std::to_string(shard_prompts) + R"(
stages:
  - name: refusal
    extract_directions: {positive: harmful, negative: harmless, positions: ["post_inst[-1]"]}
  - name: select
    select_direction: {candidates: refusal, harmful: harmful, harmless: harmless, max_kl: 0.5}
  - name: dirs
    knockout_sweep:
      prompt_sets: [harmful]
      targets: [{kind: direction, direction: select.best, layers: [0]}]
      ablations: [project, directional]
      positions: [inst_last, post_inst]
  - name: heads
    knockout_sweep:
      prompt_sets: [harmful]
      targets: [{kind: heads, layers: [1, 2]}]
      ablations: [zero]
      positions: [post_inst]
)";
    std::ofstream(dir_ / "spec.yaml") << yaml;
    auto parsed = LoadSpec((dir_ / "spec.yaml").string());
    EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
    return *parsed;
  }

  static constexpr ModelShape kShape{4, 3, 16, 2};
  fs::path dir_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<SweepStore> sweeps_;
};

// Partial sums as a worker would report them: prompt i of set s contributes value(s, i, layer).
v1::ShardResult ExtractResult(const v1::Shard& shard) {
  v1::ShardResult result;
  result.set_sweep_id(shard.sweep_id());
  result.set_stage(shard.stage());
  result.set_index(shard.index());
  std::map<std::string, std::vector<int>> by_set;
  for (const auto& p : shard.prompts()) by_set[p.set()].push_back(p.index());
  for (int layer = 0; layer < 4; ++layer) {
    for (const auto& [set, indices] : by_set) {
      v1::PartialSum* sum = result.add_sums();
      sum->set_layer(layer);
      sum->set_position("post_inst[-1]");
      sum->set_set(set);
      sum->set_count(indices.size());
      double a = 0, b = 0;
      for (int i : indices) {
        a += (set == "harmful" ? 1.0 : -1.0) * (layer + 1) + 0.1 * i;
        b += 1e8 + i;  // large offsets that a float32 reduction would lose
      }
      sum->add_sum(a);
      sum->add_sum(b);
    }
  }
  return result;
}

// The id of a spec as SweepIdFor computes it (the files read now), or "" on error.
std::string IdOf(const v1::SweepSpec& spec) {
  auto id = SweepIdFor(spec);
  EXPECT_TRUE(id.ok()) << id.status().ToString();
  return id.ok() ? *id : "";
}

TEST_F(EngineTest, SameSpecSameIdAndShards) {
  ParsedSpec spec = Spec();
  EXPECT_EQ(IdOf(spec.spec), IdOf(Spec().spec));
  EXPECT_EQ(IdOf(spec.spec).rfind("unit-", 0), 0u);
  v1::SweepSpec other = spec.spec;
  other.set_seed(7);
  EXPECT_NE(IdOf(spec.spec), IdOf(other));
  SweepEngine engine(sweeps_.get(), kShape);
  auto a = engine.Expand(spec.spec, "s", 0);
  auto b = engine.Expand(spec.spec, "s", 0);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString();
  ASSERT_EQ(a->size(), 2u);  // 8 prompts, 4 per shard
  for (size_t i = 0; i < a->size(); ++i) EXPECT_EQ((*a)[i].SerializeAsString(), (*b)[i].SerializeAsString());
  auto plan = PlanSweep(spec.spec, kShape);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ((*plan)[0].shards, 2u);
  EXPECT_EQ((*plan)[1].trials, 8u);      // 4 candidates x (ablate, induce)
  EXPECT_EQ((*plan)[2].trials, 4u);      // the direction at layer 0 x (project, directional) x 2 positions
  EXPECT_EQ((*plan)[3].trials, 6u);      // 3 heads x 2 layers
}

TEST_F(EngineTest, ExtractionSelectionAndKnockoutOverTheStore) {
  ParsedSpec spec = Spec();
  SweepEngine engine(sweeps_.get(), kShape);
  bool resumed = true;
  auto id = engine.Submit(spec.spec, &resumed);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_FALSE(resumed);

  auto pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  ASSERT_EQ(pending->size(), 2u);
  for (const auto& record : *pending) ASSERT_TRUE(engine.Commit(ExtractResult(record.shard()), 1).ok());

  // Finalising the extraction: mean(harmful) - mean(harmless) in float64.
  pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  for (int layer = 0; layer < 4; ++layer) {
    auto bytes = sweeps_->GetArtifact(*id, DirectionArtifactName("refusal", layer, "post_inst[-1]"));
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    v1::DirectionArtifact d;
    ASSERT_TRUE(d.ParseFromString(*bytes));
    const double pos = (layer + 1) + 0.1 * 2.0, neg = -(layer + 1) + 0.1 * 1.0;  // mean index 2, 1
    EXPECT_NEAR(d.values(0), pos - neg, 1e-5);
    EXPECT_NEAR(d.values(1), 2.0 - 1.0, 1e-6);  // 1e8 offsets cancel exactly in float64
    EXPECT_EQ(d.positive_count(), 5u);
    EXPECT_EQ(d.negative_count(), 3u);
  }

  // Selection trials: per candidate, "ablate" on both sets and "induce" on harmless.
  ASSERT_EQ(pending->size(), 1u);
  const v1::Shard& select = (*pending)[0].shard();
  ASSERT_EQ(select.trials_size(), 8);
  v1::ShardResult result;
  result.set_sweep_id(*id);
  result.set_stage(select.stage());
  result.set_index(select.index());
  // Layer 0: lowest bypass but KL 3 (breaks the model); layer 1: passes; layer 2: passes with a
  // worse bypass; layer 3 >= floor(0.8 * 4): dropped whatever its scores.
  const double bypass[] = {-9, -4, -2, -10}, kl[] = {3.0, 0.2, 0.1, 0.0}, induce[] = {1, 2, 3, 4};
  for (const v1::Trial& trial : select.trials()) {
    const int l = trial.label().layer();
    auto add = [&](const std::string& set, double score, double k) {
      v1::ResultRow* row = result.add_rows();
      row->set_trial(trial.index());
      row->set_prompt_set(set);
      row->set_prompt(-1);
      (*row->mutable_values())["refusal_score"] = score;
      (*row->mutable_values())["kl"] = k;
    };
    if (trial.label().role() == "ablate") {
      add("harmful", bypass[l], 0);
      add("harmless", 0, kl[l]);
    } else {
      add("harmless", induce[l], 0);
    }
  }
  ASSERT_TRUE(engine.Commit(result, 1).ok());
  pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  auto bytes = sweeps_->GetArtifact(*id, SelectionArtifactName("select"));
  ASSERT_TRUE(bytes.ok());
  v1::SelectionArtifact selection;
  ASSERT_TRUE(selection.ParseFromString(*bytes));
  ASSERT_EQ(selection.candidates_size(), 4);
  EXPECT_EQ(selection.direction().layer(), 1);
  EXPECT_FALSE(selection.candidates(0).passed());
  EXPECT_NE(selection.candidates(0).rejected().find("kl"), std::string::npos);
  EXPECT_FALSE(selection.candidates(3).passed());
  EXPECT_NE(selection.candidates(3).rejected().find("layer"), std::string::npos);

  // The knockout stage carries the selected direction as a tensor of its shards.
  ASSERT_EQ(pending->size(), 1u);
  const v1::Shard& dirs = (*pending)[0].shard();
  EXPECT_EQ(dirs.trials_size(), 4);
  // project acts at the target's hook; directional is science.md's ablation at every layer.
  EXPECT_EQ(dirs.trials(0).label().ablation(), "project");
  EXPECT_FALSE(dirs.trials(0).edits(0).every_layer());
  EXPECT_EQ(dirs.trials(2).label().ablation(), "directional");
  EXPECT_TRUE(dirs.trials(2).edits(0).every_layer());
  EXPECT_TRUE(dirs.trials(2).edits(0).hook().empty());
  ASSERT_EQ(dirs.tensors_size(), 1);
  EXPECT_EQ(dirs.tensors(0).name(), "select.best");
  EXPECT_EQ(dirs.tensors(0).values(0), selection.direction().values(0));
  EXPECT_EQ(dirs.trials(0).edits(0).hook(), "blocks.0.hook_resid_pre");

  // Submitting again finds the same sweep.
  auto again = engine.Submit(spec.spec, &resumed);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *id);
  EXPECT_TRUE(resumed);
}

// The same spec over edited inputs is another sweep: before, the id hashed the spec's text only,
// so an edited prompt file or config.json silently resumed the old sweep with other inputs.
TEST_F(EngineTest, TheIdHashesThePromptsLoadedAndTheModelConfig) {
  const ParsedSpec spec = Spec();
  SweepEngine engine(sweeps_.get(), kShape);
  bool resumed = true;
  auto first = engine.Submit(spec.spec, &resumed);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_FALSE(resumed);
  // Untouched inputs: the same id, and submitting again resumes.
  EXPECT_EQ(IdOf(spec.spec), *first);
  auto again = engine.Submit(spec.spec, &resumed);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *first);
  EXPECT_TRUE(resumed);

  // One prompt edited (same count, same file name, same spec text): a new sweep.
  {
    std::ofstream out(dir_ / "harmless.jsonl");
    out << "{\"instruction\": \"harmless.jsonl request 0\"}\n"
           "{\"instruction\": \"an edited request\"}\n"
           "{\"instruction\": \"harmless.jsonl request 2\"}\n";
  }
  const std::string edited = IdOf(spec.spec);
  EXPECT_NE(edited, *first);
  EXPECT_EQ(edited.rfind("unit-", 0), 0u) << edited;
  auto submitted = engine.Submit(spec.spec, &resumed);
  ASSERT_TRUE(submitted.ok());
  EXPECT_EQ(*submitted, edited);
  EXPECT_FALSE(resumed);
  // Restored: the first sweep again.
  WritePrompts("harmless.jsonl", 3);
  EXPECT_EQ(IdOf(spec.spec), *first);

  // Only the prompts a sweep loads count: a prompt past `limit` may change.
  v1::SweepSpec limited = spec.spec;
  for (auto& set : *limited.mutable_prompt_sets()) {
    if (set.name() == "harmful") set.set_limit(4);
  }
  const std::string limited_id = IdOf(limited);
  WritePrompts("harmful.jsonl", 6);  // prompts 0-4 as before, and a sixth
  EXPECT_EQ(IdOf(limited), limited_id);
  EXPECT_NE(IdOf(spec.spec), *first);  // without the limit, the sixth prompt counts
  WritePrompts("harmful.jsonl", 5);

  // The model's config.json: its bytes count, and so does its appearance.
  fs::create_directories(dir_ / "model");
  std::ofstream(dir_ / "model" / "config.json") << "{\"num_hidden_layers\": 4}\n";
  const std::string with_config = IdOf(spec.spec);
  EXPECT_NE(with_config, *first);
  std::ofstream(dir_ / "model" / "config.json") << "{\"num_hidden_layers\": 5}\n";
  EXPECT_NE(IdOf(spec.spec), with_config);

  // A prompt set that cannot be read is an error naming it, not an id.
  fs::remove(dir_ / "harmless.jsonl");
  auto missing = SweepIdFor(spec.spec);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("prompt set harmless"), std::string::npos)
      << missing.status().ToString();
}

TEST_F(EngineTest, NoCandidatePassingFailsTheSweepAndResubmittingRetries) {
  ParsedSpec spec = Spec(/*shard_prompts=*/64);
  SweepEngine engine(sweeps_.get(), kShape);
  auto id = engine.Submit(spec.spec, nullptr);
  ASSERT_TRUE(id.ok());
  auto pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok());
  ASSERT_TRUE(engine.Commit(ExtractResult((*pending)[0].shard()), 1).ok());
  pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok());
  v1::ShardResult empty;  // no rows: every score is NaN
  empty.set_sweep_id(*id);
  empty.set_stage(1);
  ASSERT_TRUE(engine.Commit(empty, 1).ok());
  auto failed = engine.Advance(*id);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("no candidate direction passes"), std::string::npos)
      << failed.status().ToString();
  auto record = sweeps_->GetSweep(*id);
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->state(), v1::FAILED);
  ASSERT_TRUE(engine.Submit(spec.spec, nullptr).ok());
  EXPECT_EQ(sweeps_->GetSweep(*id)->state(), v1::RUNNING);
}

// Scores of one candidate (layer l at post_inst[-1]) as the selection trials report them; NaN
// is written as a NaN value, `missing` leaves the harmless "ablate" row (KL) out altogether.
struct CandidateScores {
  double bypass, kl, induce;
  bool missing_kl = false;
};

// Runs extraction and selection over the store with `scores[l]` for the candidate of layer l
// and returns the selection artifact (its status if the selection stage fails).
StatusOr<v1::SelectionArtifact> RunSelection(SweepEngine& engine, SweepStore& sweeps,
                                             v1::SweepSpec spec,
                                             const std::vector<CandidateScores>& scores) {
  KO_ASSIGN_OR_RETURN(std::string id, engine.Submit(spec, nullptr));
  KO_ASSIGN_OR_RETURN(auto pending, engine.Advance(id));
  for (const auto& record : pending) KO_RETURN_IF_ERROR(engine.Commit(ExtractResult(record.shard()), 1));
  KO_ASSIGN_OR_RETURN(pending, engine.Advance(id));
  if (pending.size() != 1) return Status::Internal("expected one selection shard");
  const v1::Shard& select = pending[0].shard();
  v1::ShardResult result;
  result.set_sweep_id(id);
  result.set_stage(select.stage());
  result.set_index(select.index());
  for (const v1::Trial& trial : select.trials()) {
    const CandidateScores& c = scores.at(trial.label().layer());
    auto add = [&](const std::string& set, double score, double kl) {
      v1::ResultRow* row = result.add_rows();
      row->set_trial(trial.index());
      row->set_prompt_set(set);
      row->set_prompt(-1);
      (*row->mutable_values())["refusal_score"] = score;
      (*row->mutable_values())["kl"] = kl;
    };
    if (trial.label().role() == "ablate") {
      add("harmful", c.bypass, 0);
      if (!c.missing_kl) add("harmless", 0, c.kl);
    } else {
      add("harmless", c.induce, 0);
    }
  }
  KO_RETURN_IF_ERROR(engine.Commit(result, 1));
  auto advanced = engine.Advance(id);
  KO_ASSIGN_OR_RETURN(std::string bytes, sweeps.GetArtifact(id, SelectionArtifactName("select")));
  v1::SelectionArtifact selection;
  if (!selection.ParseFromString(bytes)) return Status::Internal("selection artifact");
  if (!advanced.ok() && selection.chosen() >= 0) return advanced.status();
  return selection;
}

// science.md's filters, each with a candidate that fails only that filter and would otherwise
// win (the lowest bypass): NaN in any score, layer >= floor(0.8 * 4) = 3, kl > max_kl (0.5 in
// the spec), induce < 0. Boundary values pass (kl == max_kl, induce == 0). Expected values are
// science.md's rules, not the engine's output.
TEST_F(EngineTest, SelectionDropsEveryCandidateThatFailsAFilter) {
  const double nan = std::nan("");
  SweepEngine engine(sweeps_.get(), kShape);
  struct Case {
    std::vector<CandidateScores> scores;  // layers 0..3
    int chosen_layer;
    std::vector<std::string> rejected;  // per layer: a substring of the reason, "" = passed
  };
  const std::vector<Case> cases = {
      // NaN induce, induce < 0, a pass, and the best bypass at layer 3 (too deep).
      {{{-9, 0.0, nan}, {-8, 0.0, -0.01}, {-1, 0.2, 2.0}, {-10, 0.0, 1.0}},
       2,
       {"NaN", "induce < 0", "", "layer >= 3"}},
      // kl > max_kl; the boundary kl == max_kl with induce == 0 passes; NaN bypass; a pass.
      {{{-9, 0.51, 1.0}, {-3, 0.5, 0.0}, {nan, 0.0, 1.0}, {-10, 0.0, 1.0}},
       1,
       {"kl > 0.5", "", "NaN", "layer >= 3"}},
      // NaN kl (and a KL row missing altogether) against a worse candidate that passes.
      {{{-9, nan, 1.0}, {-8, 0.1, 1.0, /*missing_kl=*/true}, {-2, 0.1, 1.0}, {-10, 0.0, 1.0}},
       2,
       {"NaN", "NaN", "", "layer >= 3"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    v1::SweepSpec spec = Spec(/*shard_prompts=*/64).spec;
    spec.set_seed(100 + i);  // a sweep of its own per case
    auto selection = RunSelection(engine, *sweeps_, spec, cases[i].scores);
    ASSERT_TRUE(selection.ok()) << selection.status().ToString();
    ASSERT_EQ(selection->candidates_size(), 4);
    ASSERT_GE(selection->chosen(), 0);
    EXPECT_EQ(selection->direction().layer(), cases[i].chosen_layer);
    EXPECT_EQ(selection->candidates(selection->chosen()).layer(), cases[i].chosen_layer);
    for (int l = 0; l < 4; ++l) {
      const v1::CandidateScore& c = selection->candidates(l);
      ASSERT_EQ(c.layer(), l);
      const std::string& want = cases[i].rejected[l];
      EXPECT_EQ(c.passed(), want.empty()) << "layer " << l << ": " << c.rejected();
      if (!want.empty()) {
        EXPECT_NE(c.rejected().find(want), std::string::npos)
            << "layer " << l << ": rejected \"" << c.rejected() << "\", want \"" << want << "\"";
      }
    }
  }
}

}  // namespace
}  // namespace knockout::experiments
