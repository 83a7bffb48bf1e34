// The sweep engine without a model: stage expansion, the float64 diff-in-means reduction, the
// selection filters of science.md, the state machine over the store, retry after failure.
// Results are written by hand, standing in for a worker.
#include "experiments/engine.h"

#include <gtest/gtest.h>

#include "experiments/spec_inputs.h"
#include "formats/sae.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

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
    WriteConfig(4);
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

  // A 4-layer Llama config.json (3 heads of 2, MLP 16) in model/, as the spec names it.
  void WriteConfig(int layers, const std::string& extra = "") {
    fs::create_directories(dir_ / "model");
    std::ofstream(dir_ / "model" / "config.json")
        << "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 6, "
           "\"intermediate_size\": 16, \"num_attention_heads\": 3, \"num_hidden_layers\": "
        << layers << ", \"num_key_value_heads\": 3, \"vocab_size\": 10, \"rms_norm_eps\": 1e-5"
        << extra << "}\n";
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

  static inline const ModelShape kShape{4, 3, 16, 2};
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

// The id of a spec as SweepIdFor computes it, or "" on error.
std::string IdOf(const v1::SweepSpec& spec) {
  auto id = SweepIdFor(spec);
  EXPECT_TRUE(id.ok()) << id.status().ToString();
  return id.ok() ? *id : "";
}

// The id of the spec filled with its inputs as the CLI reads them now (spec_inputs.h).
std::string FilledId(ParsedSpec parsed) {
  Status filled = FillSpecInputs(&parsed);
  EXPECT_TRUE(filled.ok()) << filled.ToString();
  return filled.ok() ? IdOf(parsed.spec) : "";
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
  EXPECT_EQ(dirs.trials(2).label().layer(), -1);  // every layer, not the target's
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

// An orthogonalize stage without `output:` writes under the checkpoint root: by default the
// store's checkpoints/ directory, which only the embedded runner's workers (and a store on
// shared storage) see; a coordinator whose workers do not names another root.
TEST_F(EngineTest, OrthogonalizeWithoutAnOutputWritesUnderTheCheckpointRoot) {
  const std::string yaml = R"(name: orth
model: {path: model}
prompt_sets:
  harmful: harmful.jsonl
  harmless: harmless.jsonl
shard_prompts: 8
stages:
  - name: refusal
    extract_directions: {positive: harmful, negative: harmless, positions: ["post_inst[-1]"]}
  - name: select
    select_direction: {candidates: refusal, harmful: harmful, harmless: harmless, max_kl: 0.5}
  - name: orth
    orthogonalize: {direction: select.best, prompt_sets: [harmful]}
)";
  std::ofstream(dir_ / "orth.yaml") << yaml;
  auto parsed = LoadSpec((dir_ / "orth.yaml").string());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  for (const std::string& root : {std::string(), std::string("/shared/outputs/checkpoints")}) {
    SCOPED_TRACE("root '" + root + "'");
    // A fresh store per root: the same spec is the same sweep.
    sweeps_.reset();
    store_.reset();
    fs::remove_all(dir_ / "store");
    auto store = storage::Store::Open((dir_ / "store").string());
    ASSERT_TRUE(store.ok());
    store_ = std::move(store).value();
    sweeps_ = std::make_unique<SweepStore>(store_.get());
    SweepEngine engine(sweeps_.get(), kShape);
    engine.set_checkpoint_root(root);
    bool resumed = false;
    auto id = engine.Submit(parsed->spec, &resumed);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    auto pending = engine.Advance(*id);
    ASSERT_TRUE(pending.ok()) << pending.status().ToString();
    for (const auto& record : *pending) ASSERT_TRUE(engine.Commit(ExtractResult(record.shard()), 1).ok());
    pending = engine.Advance(*id);
    ASSERT_TRUE(pending.ok()) << pending.status().ToString();
    ASSERT_EQ(pending->size(), 1u);
    const v1::Shard& select = (*pending)[0].shard();
    v1::ShardResult result;
    result.set_sweep_id(*id);
    result.set_stage(select.stage());
    result.set_index(select.index());
    for (const v1::Trial& trial : select.trials()) {
      for (const std::string set : {"harmful", "harmless"}) {
        v1::ResultRow* row = result.add_rows();
        row->set_trial(trial.index());
        row->set_prompt_set(set);
        row->set_prompt(-1);
        (*row->mutable_values())["refusal_score"] = trial.label().role() == "ablate" ? -1.0 : 1.0;
        (*row->mutable_values())["kl"] = 0.0;
      }
    }
    ASSERT_TRUE(engine.Commit(result, 1).ok());
    pending = engine.Advance(*id);
    ASSERT_TRUE(pending.ok()) << pending.status().ToString();
    ASSERT_EQ(pending->size(), 1u);
    const std::string expected =
        (root.empty() ? (dir_ / "store").string() + "/checkpoints" : root) + "/" + *id + "/orth";
    EXPECT_EQ((*pending)[0].shard().output(), expected);
  }
}

// A neurons target with no units and no top_k is every neuron of its layers (`units: all`), not a
// ranking with nothing to rank (before, it planned a RANK shard of zero trials and failed at
// submission looking for a direction it had never been given).
TEST_F(EngineTest, NeuronsWithoutUnitsOrTopKAreEveryNeuron) {
  const std::string yaml = R"(name: all-neurons
model: {path: model}
prompt_sets:
  harmful: harmful.jsonl
  harmless: harmless.jsonl
shard_trials: 64
stages:
  - name: n
    knockout_sweep:
      prompt_sets: [harmful]
      targets: [{kind: neurons, layers: [1, 2]}, {kind: neurons, layers: [3], units: all}]
      ablations: [zero]
      positions: [post_inst]
)";
  std::ofstream(dir_ / "neurons.yaml") << yaml;
  auto parsed = LoadSpec((dir_ / "neurons.yaml").string());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  SweepEngine engine(sweeps_.get(), kShape);
  bool resumed = false;
  auto id = engine.Submit(parsed->spec, &resumed);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  std::map<int, std::set<int>> units;  // layer -> neurons
  for (const auto& record : *pending) {
    EXPECT_NE(record.shard().kind(), v1::Shard::RANK);
    for (const v1::Trial& trial : record.shard().trials()) {
      units[trial.label().layer()].insert(trial.label().unit());
    }
  }
  ASSERT_EQ(units.size(), 3u);
  for (const auto& [layer, neurons] : units) {
    EXPECT_EQ(static_cast<int64_t>(neurons.size()), kShape.intermediate_size) << "layer " << layer;
  }
}

// Directional ablation acts at every layer: a direction that is the same at every layer (a
// selection's best, or one fixed layer) is one trial per position, not one copy per target
// layer (labelled layer -1: ExtractionSelectionAndKnockoutOverTheStore); a per-layer direction
// keeps one trial per layer (each its own direction).
TEST_F(EngineTest, DirectionalAblationOfOneDirectionIsPlannedOnce) {
  const std::string yaml = R"(name: every-layer
model: {path: model}
prompt_sets:
  harmful: harmful.jsonl
  harmless: harmless.jsonl
stages:
  - name: refusal
    extract_directions: {positive: harmful, negative: harmless, positions: ["post_inst[-1]"]}
  - name: d
    knockout_sweep:
      prompt_sets: [harmful]
      targets:
        - {kind: direction, direction: {stage: refusal, position: "post_inst[-1]", layer: 2}, layers: [0, 1, 2]}
        - {kind: direction, direction: {stage: refusal, position: "post_inst[-1]"}, layers: [0, 1, 2]}
      ablations: [project, directional]
      positions: [inst_last, all]
)";
  std::ofstream(dir_ / "every.yaml") << yaml;
  auto parsed = LoadSpec((dir_ / "every.yaml").string());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  auto plan = PlanSweep(parsed->spec, kShape);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  // fixed layer: 3 layers x project x 2 positions + directional x 2 positions = 8;
  // per-layer: 3 layers x (project, directional) x 2 positions = 12.
  EXPECT_EQ((*plan)[1].trials, 20u);  // 24 before: the fixed direction once per target layer
}

// The same spec over edited inputs is another sweep: the id hashes the filled spec, which holds
// the prompts and config.json's digest (before, an edited prompt file or config.json silently
// resumed the old sweep with other inputs). SweepIdFor itself reads no file.
TEST_F(EngineTest, TheIdHashesThePromptsLoadedAndTheModelConfig) {
  const ParsedSpec spec = Spec();
  ParsedSpec filled = spec;
  ASSERT_TRUE(FillSpecInputs(&filled).ok());
  SweepEngine engine(sweeps_.get(), kShape);
  bool resumed = true;
  auto first = engine.Submit(filled.spec, &resumed);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_FALSE(resumed);
  // Untouched inputs: the same id, and submitting again resumes.
  EXPECT_EQ(FilledId(spec), *first);
  auto again = engine.Submit(filled.spec, &resumed);
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
  const std::string edited = FilledId(spec);
  EXPECT_NE(edited, *first);
  EXPECT_EQ(edited.rfind("unit-", 0), 0u) << edited;
  // The filled spec already submitted holds the old prompts: its id does not move.
  EXPECT_EQ(IdOf(filled.spec), *first);
  // Restored: the first sweep again.
  WritePrompts("harmless.jsonl", 3);
  EXPECT_EQ(FilledId(spec), *first);

  // Only the prompts a sweep loads count: a prompt past `limit` may change.
  ParsedSpec limited = spec;
  for (auto& set : *limited.spec.mutable_prompt_sets()) {
    if (set.name() == "harmful") set.set_limit(4);
  }
  const std::string limited_id = FilledId(limited);
  WritePrompts("harmful.jsonl", 6);  // prompts 0-4 as before, and a sixth
  EXPECT_EQ(FilledId(limited), limited_id);
  EXPECT_NE(FilledId(spec), *first);  // without the limit, the sixth prompt counts
  WritePrompts("harmful.jsonl", 5);

  // The model's config.json: its bytes count, even where the shape stays the same.
  WriteConfig(4, ", \"rope_theta\": 500000.0");
  EXPECT_NE(FilledId(spec), *first);
  WriteConfig(5);
  EXPECT_NE(FilledId(spec), *first);
  WriteConfig(4);
  EXPECT_EQ(FilledId(spec), *first);

  // A prompt set that cannot be read is an error naming the spec line of its path.
  fs::remove(dir_ / "harmless.jsonl");
  ParsedSpec missing = spec;
  Status status = FillSpecInputs(&missing);
  EXPECT_EQ(status.code(), StatusCode::kNotFound) << status.ToString();
  EXPECT_NE(status.message().find("prompt_sets.harmless.path"), std::string::npos)
      << status.ToString();
}

// A filled spec carries what the engine needs: its shards are expanded with the model's files
// and the prompt files gone (the coordinator's machine has neither).
TEST_F(EngineTest, AFilledSpecNeedsNoFiles) {
  ParsedSpec spec = Spec();
  ASSERT_TRUE(FillSpecInputs(&spec).ok());
  auto shape = SpecModelShape(spec.spec);
  ASSERT_TRUE(shape.ok()) << shape.status().ToString();
  EXPECT_EQ(shape->num_layers, 4);   // WriteConfig's
  EXPECT_EQ(shape->num_heads, 3);
  EXPECT_EQ(spec.spec.model().shape().config_digest().size(), 16u);
  const std::string id = IdOf(spec.spec);
  fs::remove_all(dir_ / "model");
  fs::remove(dir_ / "harmful.jsonl");
  fs::remove(dir_ / "harmless.jsonl");
  EXPECT_EQ(IdOf(spec.spec), id);
  SweepEngine engine(sweeps_.get(), *shape);
  auto shards = engine.Expand(spec.spec, id, 0);
  ASSERT_TRUE(shards.ok()) << shards.status().ToString();
  ASSERT_EQ(shards->size(), 2u);  // 5 + 3 prompts, 4 per shard
  EXPECT_EQ((*shards)[0].prompts(0).instruction(), "harmful.jsonl request 0");
  EXPECT_EQ((*shards)[1].prompts(3).instruction(), "harmless.jsonl request 2");
  // Without a shape the engine has nothing to expand with.
  v1::SweepSpec bare = spec.spec;
  bare.mutable_model()->clear_shape();
  EXPECT_EQ(SpecModelShape(bare).status().code(), StatusCode::kInvalidArgument);
}

// Neurons ranked against a direction are ranked by a worker: the stage expands to one RANK
// shard (the directions attached), and its trial shards join the stage with the committed
// rankings' units (before, the engine called a ranker that read the checkpoint's weights on the
// coordinator's machine).
TEST_F(EngineTest, RankedNeuronsComeFromTheRankShard) {
  const std::string yaml = R"(name: ranked
model: {path: model}
prompt_sets:
  harmful: harmful.jsonl
  harmless: harmless.jsonl
shard_prompts: 64
shard_trials: 3
stages:
  - name: refusal
    extract_directions: {positive: harmful, negative: harmless, positions: ["post_inst[-1]"]}
  - name: neurons
    knockout_sweep:
      prompt_sets: [harmful]
      targets:
        - {kind: neurons, layers: [1, 2], top_k: 2, score: direction_cosine, score_direction: {stage: refusal, position: "post_inst[-1]"}}
      ablations: [zero]
      positions: [post_inst]
)";
  std::ofstream(dir_ / "ranked.yaml") << yaml;
  auto parsed = LoadSpec((dir_ / "ranked.yaml").string());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_TRUE(FillSpecInputs(&*parsed).ok());
  auto plan = PlanSweep(parsed->spec, kShape);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ((*plan)[1].trials, 4u);  // 2 layers x top 2
  EXPECT_EQ((*plan)[1].shards, 3u);  // the RANK shard + 2 of 3 trials

  SweepEngine engine(sweeps_.get(), kShape);
  auto id = engine.Submit(parsed->spec, nullptr);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok());
  ASSERT_EQ(pending->size(), 1u);
  ASSERT_TRUE(engine.Commit(ExtractResult((*pending)[0].shard()), 1).ok());
  pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  ASSERT_EQ(pending->size(), 1u);
  const v1::Shard& rank = (*pending)[0].shard();
  EXPECT_EQ(rank.kind(), v1::Shard::RANK);
  EXPECT_EQ(rank.index(), 0u);
  EXPECT_EQ(rank.trials_size(), 0);
  ASSERT_EQ(rank.rank_requests_size(), 2);
  ASSERT_EQ(rank.tensors_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const v1::RankRequest& request = rank.rank_requests(i);
    EXPECT_EQ(request.layer(), i + 1);
    EXPECT_EQ(request.score(), "direction_cosine");
    EXPECT_EQ(request.top_k(), 2u);
    EXPECT_EQ(request.tensor(), rank.tensors(i).name());
    EXPECT_EQ(request.tensor(), "refusal@" + std::to_string(i + 1) + "/post_inst[-1]");
  }
  auto stage = sweeps_->GetStage(*id, 1);
  ASSERT_TRUE(stage.ok());
  EXPECT_EQ(stage->shards_total(), 1u);

  // The worker's answer: layer 1 -> neurons {3, 7}, layer 2 -> {0, 15}.
  v1::ShardResult result;
  result.set_sweep_id(*id);
  result.set_stage(1);
  result.set_index(0);
  const std::vector<std::vector<int>> units = {{3, 7}, {0, 15}};
  for (int i = 0; i < 2; ++i) {
    v1::NeuronRanking* r = result.add_rankings();
    r->set_layer(i + 1);
    r->set_score("direction_cosine");
    r->set_tensor(rank.rank_requests(i).tensor());
    r->set_top_k(2);
    for (int u : units[i]) r->add_units(u), r->add_scores(0.5);
  }
  ASSERT_TRUE(engine.Commit(result, 1).ok());
  pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  ASSERT_EQ(pending->size(), 2u);
  EXPECT_EQ((*pending)[0].shard().index(), 1u);
  EXPECT_EQ((*pending)[1].shard().index(), 2u);
  std::vector<std::pair<int, int>> trials;
  for (const auto& record : *pending) {
    EXPECT_EQ(record.shard().kind(), v1::Shard::TRIALS);
    for (const v1::Trial& t : record.shard().trials()) {
      trials.emplace_back(t.label().layer(), t.label().unit());
      EXPECT_EQ(t.edits(0).hook(), "blocks." + std::to_string(t.label().layer()) + ".mlp.hook_post");
    }
  }
  const std::vector<std::pair<int, int>> want = {{1, 3}, {1, 7}, {2, 0}, {2, 15}};
  EXPECT_EQ(trials, want);
  stage = sweeps_->GetStage(*id, 1);
  ASSERT_TRUE(stage.ok());
  EXPECT_EQ(stage->shards_total(), 3u);
  EXPECT_EQ(stage->trials_total(), 4u);
  EXPECT_TRUE(sweeps_->GetArtifact(*id, RankingArtifactName("neurons")).ok());

  // Advancing again changes nothing; committing the trial shards finishes the sweep.
  auto same = engine.Advance(*id);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->size(), 2u);
  for (const auto& record : *pending) {
    v1::ShardResult done;
    done.set_sweep_id(*id);
    done.set_stage(1);
    done.set_index(record.shard().index());
    ASSERT_TRUE(engine.Commit(done, 1).ok());
  }
  auto finished = engine.Advance(*id);
  ASSERT_TRUE(finished.ok()) << finished.status().ToString();
  EXPECT_TRUE(finished->empty());
  EXPECT_EQ(sweeps_->GetSweep(*id)->state(), v1::DONE);
}

// SAE latents chosen per layer by a RANK shard (cosine filtered by activation), knocked out one
// at a time and per layer together, with backups read from every SAE of the spec.
TEST_F(EngineTest, SaeLatentTargetsAreRankedThenExpanded) {
  for (int layer : {1, 2}) {
    formats::SaeWeights sae;
    sae.config.architecture = formats::SaeArchitecture::kTopK;
    sae.config.k = 2;
    sae.config.d_in = 6;
    sae.config.d_sae = 8;
    sae.config.hook = "blocks." + std::to_string(layer) + ".hook_resid_post";
    sae.W_enc = {{6, 8}, std::vector<float>(48, 0.1f)};
    sae.W_dec = {{8, 6}, std::vector<float>(48, 0.1f)};
    sae.b_enc = {{8}, std::vector<float>(8, 0.0f)};
    sae.b_dec = {{6}, std::vector<float>(6, 0.0f)};
    const Status written = formats::WriteSaeLens((dir_ / ("sae" + std::to_string(layer))).string(), sae);
    ASSERT_TRUE(written.ok()) << written.ToString();
  }
  const std::string yaml = R"(name: latents
model: {path: model}
prompt_sets:
  harmful: harmful.jsonl
  harmless: harmless.jsonl
saes: [sae1, sae2]
shard_trials: 64
stages:
  - name: refusal
    extract_directions: {positive: harmful, negative: harmless, positions: ["post_inst[-1]"]}
  - name: latents
    knockout_sweep:
      prompt_sets: [harmful]
      targets:
        - kind: sae_latents
          layers: [1, 2]
          select: {score: cosine_and_activation, top_k: 2, direction: {stage: refusal, position: "post_inst[-1]"}, positive: harmful, negative: harmless}
          together: layer
          role: downstream
      ablations: [zero, {kind: scale, factor: -3}]
      positions: [all]
      backups: {top: 3, direction: {stage: refusal, layer: 2, position: "post_inst[-1]"}}
)";
  std::ofstream(dir_ / "latents.yaml") << yaml;
  auto parsed = LoadSpec((dir_ / "latents.yaml").string());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const Status filled = FillSpecInputs(&*parsed);
  ASSERT_TRUE(filled.ok()) << filled.ToString();
  ASSERT_EQ(parsed->spec.saes_size(), 2);
  EXPECT_EQ(parsed->spec.saes(1).hook(), "blocks.2.hook_resid_post");  // from the file
  EXPECT_EQ(parsed->spec.saes(1).d_sae(), 8);
  EXPECT_EQ(parsed->spec.saes(1).architecture(), "topk");
  auto plan = PlanSweep(parsed->spec, kShape);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ((*plan)[1].trials, 12u);  // 2 layers x (2 latents + 1 group) x 2 ablations

  SweepEngine engine(sweeps_.get(), kShape);
  auto id = engine.Submit(parsed->spec, nullptr);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok());
  ASSERT_TRUE(engine.Commit(ExtractResult((*pending)[0].shard()), 1).ok());
  pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  ASSERT_EQ(pending->size(), 1u);
  const v1::Shard& rank = (*pending)[0].shard();
  EXPECT_EQ(rank.kind(), v1::Shard::RANK);
  EXPECT_EQ(rank.saes_size(), 2);
  EXPECT_EQ(rank.prompts_size(), 8);  // both sets of the activation difference
  ASSERT_EQ(rank.rank_requests_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const v1::RankRequest& request = rank.rank_requests(i);
    EXPECT_EQ(request.layer(), i + 1);
    EXPECT_EQ(request.score(), "cosine_and_activation");
    EXPECT_EQ(request.sae_hook(), "blocks." + std::to_string(i + 1) + ".hook_resid_post");
    EXPECT_EQ(request.positive(), "harmful");
    EXPECT_EQ(request.negative(), "harmless");
    EXPECT_EQ(request.position().kind(), v1::Positions::INST_LAST);
    EXPECT_EQ(request.candidates(), 8u);
    EXPECT_EQ(request.tensor(), "refusal@" + std::to_string(i + 1) + "/post_inst[-1]");
  }

  v1::ShardResult result;
  result.set_sweep_id(*id);
  result.set_stage(1);
  result.set_index(0);
  const std::vector<std::vector<int>> units = {{3, 7}, {0, 5}};
  for (int i = 0; i < 2; ++i) {
    v1::NeuronRanking* r = result.add_rankings();
    r->set_layer(i + 1);
    r->set_score("cosine_and_activation");
    r->set_tensor(rank.rank_requests(i).tensor());
    r->set_top_k(2);
    r->set_sae_hook(rank.rank_requests(i).sae_hook());
    for (int u : units[i]) r->add_units(u), r->add_scores(0.5);
  }
  ASSERT_TRUE(engine.Commit(result, 1).ok());
  pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  ASSERT_EQ(pending->size(), 1u);
  const v1::Shard& trials = (*pending)[0].shard();
  EXPECT_EQ(trials.kind(), v1::Shard::TRIALS);
  EXPECT_EQ(trials.saes_size(), 2);
  EXPECT_EQ(trials.backups().top(), 3u);
  EXPECT_EQ(trials.backups().tensor(), "refusal@2/post_inst[-1]");
  std::vector<std::string> names;
  for (const v1::Trial& t : trials.trials()) {
    names.push_back(t.label().unit_name() + "/" + t.label().ablation());
    EXPECT_EQ(t.label().role(), "downstream");
    ASSERT_EQ(t.edits_size(), 1);
    EXPECT_TRUE(t.edits(0).sae());
    EXPECT_EQ(t.edits(0).hook(), "blocks." + std::to_string(t.label().layer()) + ".hook_resid_post");
    if (t.label().ablation() == "scale") EXPECT_EQ(t.edits(0).ablation().coefficient(), -3.0);
  }
  const std::vector<std::string> want = {
      "L1F3/zero",      "L1F3/scale",      "L1F7/zero", "L1F7/scale",
      "L1F[3,7]/zero",  "L1F[3,7]/scale",  "L2F0/zero", "L2F0/scale",
      "L2F5/zero",      "L2F5/scale",      "L2F[0,5]/zero", "L2F[0,5]/scale"};
  EXPECT_EQ(names, want);
  EXPECT_EQ(trials.trials(4).edits(0).units_size(), 2);
  EXPECT_EQ(trials.trials(4).label().unit_kind(), "sae_latents");
}

// A RANK shard that answers without one of its rankings fails the sweep with the reason.
TEST_F(EngineTest, AMissingRankingFailsTheSweep) {
  const std::string yaml = R"(name: ranked
model: {path: model}
prompt_sets:
  harmful: harmful.jsonl
  harmless: harmless.jsonl
shard_prompts: 64
stages:
  - name: refusal
    extract_directions: {positive: harmful, negative: harmless, positions: ["post_inst[-1]"]}
  - name: neurons
    knockout_sweep:
      prompt_sets: [harmful]
      targets:
        - {kind: neurons, layers: [1], top_k: 2, score: direction_cosine, score_direction: {stage: refusal, position: "post_inst[-1]"}}
      ablations: [zero]
      positions: [post_inst]
)";
  std::ofstream(dir_ / "ranked.yaml") << yaml;
  auto parsed = LoadSpec((dir_ / "ranked.yaml").string());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  SweepEngine engine(sweeps_.get(), kShape);
  auto id = engine.Submit(parsed->spec, nullptr);
  ASSERT_TRUE(id.ok());
  auto pending = engine.Advance(*id);
  ASSERT_TRUE(engine.Commit(ExtractResult((*pending)[0].shard()), 1).ok());
  pending = engine.Advance(*id);
  ASSERT_TRUE(pending.ok());
  v1::ShardResult empty;
  empty.set_sweep_id(*id);
  empty.set_stage(1);
  empty.set_index(0);
  ASSERT_TRUE(engine.Commit(empty, 1).ok());
  auto failed = engine.Advance(*id);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("no ranking for layer 1"), std::string::npos)
      << failed.status().ToString();
  EXPECT_EQ(sweeps_->GetSweep(*id)->state(), v1::FAILED);
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
