#include "experiments/spec.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "experiments/spec_tokens.h"
#include "proto/positions.h"

namespace knockout::experiments {
namespace {

namespace fs = std::filesystem;
using v1::Ablation;
using v1::GenerateCondition;
using v1::Positions;
using v1::Target;

const ModelShape kDemoShape{6, 8, 688, 256};

std::string DemoSpecPath() {
  return std::string(KNOCKOUT_SOURCE_DIR) + "/experiments/specs/demo-hydra.yaml";
}

// A directory of the test's own, removed when the test ends.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("spec_test_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& text) const {
    const fs::path file = path_ / name;
    fs::create_directories(file.parent_path());
    std::ofstream(file) << text;
    return file.string();
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The first two stages and prompt sets most bad specs below build on; stages added after it
// start at line 12.
const std::string kHeader =
    "name: t\n"                              // 1
    "model: {path: m}\n"                     // 2
    "prompt_sets:\n"                         // 3
    "  harmful: {path: harmful.jsonl}\n"     // 4
    "  harmless: harmless.jsonl\n"           // 5
    "stages:\n"                              // 6
    "  - name: refusal\n"                    // 7
    "    extract_directions:\n"              // 8
    "      positive: harmful\n"              // 9
    "      negative: harmless\n"             // 10
    "      positions: [post_inst[-1]]\n";    // 11

// A knockout stage at lines 12-18 with the given target (line 16) and ablations (line 17).
std::string Knockout(const std::string& target, const std::string& ablations,
                     const std::string& positions = "[post_inst]") {
  return kHeader +
         "  - name: sweep\n"                              // 12
         "    knockout_sweep:\n"                          // 13
         "      prompt_sets: [harmful]\n"                 // 14
         "      targets:\n"                               // 15
         "        - " + target + "\n"                     // 16
         "      ablations: " + ablations + "\n"           // 17
         "      positions: " + positions + "\n";          // 18
}

TEST(SpecTest, DemoSpecParsesWithDefaults) {
  StatusOr<ParsedSpec> parsed = LoadSpec(DemoSpecPath());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const v1::SweepSpec& spec = parsed->spec;
  EXPECT_EQ(spec.name(), "demo-hydra");
  EXPECT_EQ(spec.source(), DemoSpecPath());
  EXPECT_EQ(spec.seed(), 42u);
  EXPECT_EQ(spec.model().path(),
            (fs::path(KNOCKOUT_SOURCE_DIR) / "models/demo-refusal").lexically_normal().string());
  EXPECT_EQ(spec.model().dtype(), "float32");
  EXPECT_EQ(spec.model().device(), "cpu");
  ASSERT_EQ(spec.prompt_sets_size(), 6);
  EXPECT_EQ(spec.prompt_sets(0).name(), "harmful_train");
  EXPECT_EQ(spec.prompt_sets(0).limit(), 128u);
  EXPECT_EQ(spec.prompt_sets(0).path(),
            (fs::path(KNOCKOUT_SOURCE_DIR) / "experiments/prompts/demo/harmful_train.jsonl")
                .lexically_normal()
                .string());
  ASSERT_EQ(spec.metrics().refusal_tokens_size(), 1);
  EXPECT_EQ(spec.metrics().refusal_tokens(0), "I");
  EXPECT_EQ(spec.shard_trials(), 64u);
  EXPECT_EQ(parsed->lines.at("model.path"), 8);
  ASSERT_EQ(spec.saes_size(), 6);
  EXPECT_EQ(spec.saes(3).hook(), "blocks.3.hook_resid_post");

  ASSERT_EQ(spec.stages_size(), 9);
  const auto& refusal = spec.stages(0).extract_directions();
  EXPECT_TRUE(refusal.layers().empty());  // all
  EXPECT_EQ(refusal.hook(), "resid_pre");
  ASSERT_EQ(refusal.positions_size(), 5);
  EXPECT_EQ(refusal.positions(0).kind(), Positions::POST_INST_AT);
  EXPECT_EQ(refusal.positions(0).index(), -5);
  EXPECT_EQ(refusal.positions(4).index(), -1);

  const auto& select = spec.stages(2).select_direction();
  EXPECT_EQ(select.candidates(), "refusal");
  EXPECT_DOUBLE_EQ(select.max_kl(), 0.7);
  EXPECT_DOUBLE_EQ(select.max_layer_fraction(), 0.8);
  EXPECT_DOUBLE_EQ(select.min_induce(), 0.0);

  const auto& heads = spec.stages(3).knockout_sweep();
  ASSERT_EQ(heads.targets_size(), 1);
  EXPECT_EQ(heads.targets(0).kind(), Target::HEADS);
  EXPECT_TRUE(heads.targets(0).units().empty());
  EXPECT_EQ(heads.ablations(0).kind(), Ablation::ZERO);
  EXPECT_EQ(heads.positions(0).kind(), Positions::POST_INST);
  EXPECT_TRUE(heads.compensation());

  const auto& directions = spec.stages(4).knockout_sweep();
  ASSERT_EQ(directions.targets_size(), 2);
  EXPECT_EQ(DirectionRefName(directions.targets(0).direction()), "select.best");
  EXPECT_EQ(DirectionRefName(directions.targets(1).direction()), "harm@*/inst_last");
  EXPECT_EQ(directions.ablations(0).kind(), Ablation::PROJECT);  // at one layer, not every layer
  EXPECT_FALSE(directions.compensation());

  const auto& neurons = spec.stages(5).knockout_sweep();
  ASSERT_EQ(neurons.targets_size(), 1);
  EXPECT_EQ(neurons.targets(0).kind(), Target::NEURONS);
  EXPECT_EQ(neurons.targets(0).top_k(), 4u);
  EXPECT_EQ(neurons.targets(0).score(), "direction_cosine");
  EXPECT_EQ(neurons.ablations(0).kind(), Ablation::MEAN);
  EXPECT_EQ(neurons.ablations(0).reference_set(), "harmless_val");
  EXPECT_EQ(spec.metrics().text_set(), "harmless_val");

  const auto& hydra = spec.stages(6).knockout_sweep();
  ASSERT_EQ(hydra.targets_size(), 2);
  EXPECT_EQ(hydra.targets(0).kind(), Target::SAE_LATENTS);
  EXPECT_EQ(hydra.targets(0).role(), "downstream");
  EXPECT_EQ(hydra.targets(0).select().score(), "decoder_cosine");
  EXPECT_EQ(hydra.targets(1).role(), "upstream");
  EXPECT_EQ(hydra.targets(1).select().score(), "activation_diff");
  EXPECT_EQ(hydra.targets(1).select().position().kind(), Positions::INST_LAST);
  EXPECT_TRUE(hydra.compensation());
  EXPECT_EQ(hydra.backups().top(), 5u);

  const auto& generate = spec.stages(7).generate();
  EXPECT_EQ(generate.max_new_tokens(), 16u);
  ASSERT_EQ(generate.conditions_size(), 3);
  EXPECT_EQ(generate.conditions(0).kind(), GenerateCondition::BASELINE);
  EXPECT_EQ(generate.conditions(2).kind(), GenerateCondition::ADD);
  EXPECT_DOUBLE_EQ(generate.conditions(2).coefficient(), 1.0);
  EXPECT_EQ(generate.conditions(2).layer(), -1);

  const auto& orthogonalize = spec.stages(8).orthogonalize();
  EXPECT_EQ(DirectionRefName(orthogonalize.direction()), "select.best");
  EXPECT_TRUE(orthogonalize.output().empty());
  EXPECT_EQ(orthogonalize.prompt_sets_size(), 2);
}

TEST(SpecTest, DemoSpecValidatesAgainstTheDemoModel) {
  StatusOr<ParsedSpec> parsed = LoadSpec(DemoSpecPath());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const Status status = ValidateSpecFiles(*parsed, kDemoShape);
  EXPECT_TRUE(status.ok()) << status.ToString();
}

struct BadSpec {
  const char* name;
  std::string yaml;
  bool at_validation;  // the error comes from ValidateSpecFiles (against kDemoShape)
  std::string where;   // "t.yaml:LINE: FIELD"
  std::string message;
};

std::vector<BadSpec> BadSpecs() {
  return {
      {"unknown top-level key", kHeader + "bogus: 1\n", false, "t.yaml:12: bogus",
       "unknown key"},
      {"unknown key in a stage", kHeader + "      hooks: resid_pre\n", false,
       "t.yaml:12: stages[0].hooks", "unknown key"},
      {"wrong type", Knockout("{kind: heads, layers: five}", "[zero]"), false,
       "t.yaml:16: stages[1].targets[0].layers", "expected a list of integers or \"all\""},
      {"wrong scalar type", kHeader + "seed: many\n", false, "t.yaml:12: seed",
       "expected an integer"},
      {"missing required field",
       kHeader + "  - name: select\n    select_direction: {harmful: harmful, harmless: harmless}\n",
       false, "t.yaml:12: stages[1].candidates", "missing required field"},
      {"missing model path", "name: t\nmodel: {dtype: bf16}\nstages: []\n", false,
       "t.yaml:2: model.path", "missing required field"},
      {"bad position string", Knockout("{kind: heads}", "[zero]", "[post_inst, post_inst[2]]"),
       false, "t.yaml:18: stages[1].positions[1]", "position \"post_inst[2]\""},
      {"unknown prompt set",
       kHeader + "  - name: g\n    generate:\n      prompt_sets: [harmful, harmfull]\n"
                 "      conditions: [{name: b, kind: baseline}]\n",
       false, "t.yaml:14: stages[1].prompt_sets[1]", "unknown prompt set \"harmfull\""},
      {"forward stage reference",
       kHeader + "  - name: select\n    select_direction:\n      candidates: later\n"
                 "      harmful: harmful\n      harmless: harmless\n"
                 "  - name: later\n    extract_directions:\n      positive: harmful\n"
                 "      negative: harmless\n      positions: [inst_last]\n",
       false, "t.yaml:14: stages[1].candidates", "stage \"later\" does not come before this one"},
      {"reference to a stage of another kind",
       Knockout("{kind: direction, direction: refusal.best}", "[directional]"), false,
       "t.yaml:16: stages[1].targets[0].direction",
       "stage \"refusal\" has kind extract_directions (expected an earlier select_direction "
       "stage)"},
      {"direction at a position its stage did not extract",
       Knockout("{kind: direction, direction: {stage: refusal, position: inst_last}}",
                "[directional]"),
       false, "t.yaml:16: stages[1].targets[0].direction.position",
       "stage \"refusal\" extracts no direction at inst_last (it has post_inst[-1])"},
      {"layer out of range", Knockout("{kind: heads, layers: [0, 9]}", "[zero]"), true,
       "t.yaml:16: stages[1].targets[0].layers", "layer 9 out of range, model has 6 layers"},
      {"head out of range", Knockout("{kind: heads, units: [8]}", "[zero]"), true,
       "t.yaml:16: stages[1].targets[0].units", "head 8 out of range, model has 8 heads"},
      {"neuron out of range", Knockout("{kind: neurons, layers: [5], units: [688]}", "[zero]"),
       true, "t.yaml:16: stages[1].targets[0].units", "neuron 688 out of range"},
      {"direction layer out of range",
       Knockout("{kind: direction, direction: {stage: refusal, layer: 6, position: "
                "post_inst[-1]}}",
                "[directional]"),
       true, "t.yaml:16: stages[1].targets[0].direction.layer", "layer 6 out of range"},
      {"duplicate stage name",
       kHeader + "  - name: refusal\n    extract_directions:\n      positive: harmful\n"
                 "      negative: harmless\n      positions: [inst_last]\n",
       false, "t.yaml:12: stages[1].name", "duplicate stage name \"refusal\" (also stages[0])"},
      {"syntax error", kHeader + "      hook: resid_pre: x\n", false, "t.yaml:12",
       "illegal map value"},
      {"mean ablation without reference_set", Knockout("{kind: heads}", "[mean_per_position]"), false,
       "t.yaml:17: stages[1].ablations[0].reference_set",
       "mean_per_position ablation needs a reference_set"},
      // A mean that does not say what it averages over is refused (names say what was done).
      {"bare mean", Knockout("{kind: heads}", "[{kind: mean, reference_set: harmless}]"), false,
       "t.yaml:17: stages[1].ablations[0].kind", "`mean` is ambiguous: use mean_per_position"},
      {"mean ablation with an unknown reference_set",
       Knockout("{kind: heads}", "[{kind: mean_per_position, reference_set: nope}]"), false,
       "t.yaml:17: stages[1].ablations[0].reference_set", "unknown prompt set \"nope\""},
      {"two reference sets in one stage",
       Knockout("{kind: heads}",
                "[{kind: mean_per_position, reference_set: harmless}, {kind: resample, reference_set: "
                "harmful}]"),
       false, "t.yaml:17: stages[1].ablations[1].reference_set",
       "\"harmful\" differs from ablations[0]'s reference_set \"harmless\": a knockout_sweep "
       "stage takes one reference set"},
      {"generate condition with a direction without a layer",
       kHeader + "  - name: g\n    generate:\n      prompt_sets: [harmful]\n      conditions:\n"
                 "        - {name: a, kind: ablate, direction: {stage: refusal, position: "
                 "post_inst[-1]}}\n",
       false, "t.yaml:16: stages[1].conditions[0].direction.layer",
       "missing: a generate condition has no layer of its own"},
      {"orthogonalize with a direction without a layer",
       kHeader + "  - name: o\n    orthogonalize: {direction: {stage: refusal, position: "
                 "post_inst[-1]}}\n",
       false, "t.yaml:13: stages[1].direction.layer",
       "missing: an orthogonalize stage has no layer of its own"},
      {"directional ablation on heads", Knockout("{kind: heads}", "[zero, directional]"), false,
       "t.yaml:17: stages[1].ablations[1]",
       "directional ablation applies only to direction targets; targets[0] is heads"},
      {"zero ablation on a direction",
       Knockout("{kind: direction, direction: {stage: refusal, position: post_inst[-1]}}",
                "[zero]"),
       false, "t.yaml:17: stages[1].ablations[0]",
       "zero ablation does not apply to direction targets"},
      {"two kinds in one stage",
       kHeader + "  - name: two\n    generate: {prompt_sets: [harmful], conditions: []}\n"
                 "    orthogonalize: {direction: x.best}\n",
       false, "t.yaml:14: stages[1].orthogonalize", "a stage has exactly one kind"},
      {"unknown dtype", "name: t\nmodel:\n  path: m\n  dtype: f8\nstages: []\n", false,
       "t.yaml:4: model.dtype", "\"f8\" is not a known dtype"},
      {"duplicate key", "name: t\nname: u\n", false, "t.yaml:2: name", "duplicate key"},
      {"not a map at the top", "- a\n- b\n", false, "t.yaml:1",
       "expected a map of spec fields at the top level"},
  };
}

TEST(SpecTest, BadSpecsNameFileLineAndField) {
  const std::vector<BadSpec> cases = BadSpecs();
  for (const BadSpec& bad : cases) {
    SCOPED_TRACE(bad.name);
    StatusOr<ParsedSpec> parsed = ParseSpec(bad.yaml, "t.yaml");
    Status status = parsed.status();
    if (bad.at_validation) {
      ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
      status = ValidateSpecFiles(*parsed, kDemoShape);
    }
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
    EXPECT_EQ(status.message().rfind(bad.where + ": ", 0), 0u) << status.message();
    EXPECT_NE(status.message().find(bad.message), std::string::npos) << status.message();
  }
}

// The cases above differ from a valid spec by the one fault they name.
TEST(SpecTest, BadSpecBasesAreValid) {
  for (const std::string& yaml :
       {kHeader, Knockout("{kind: heads, layers: [0, 5], units: [7]}", "[zero]"),
        Knockout("{kind: direction, direction: {stage: refusal, layer: 5, position: "
                 "post_inst[-1]}}",
                 "[directional, {kind: add, coefficient: 2}]"),
        Knockout("{kind: heads}",
                 "[{kind: mean_per_position, reference_set: harmless}, {kind: resample, reference_set: "
                 "harmless}]"),
        kHeader + "  - name: g\n    generate:\n      prompt_sets: [harmful]\n      conditions:\n"
                  "        - {name: a, kind: ablate, direction: {stage: refusal, layer: 2, "
                  "position: post_inst[-1]}}\n",
        kHeader + "  - name: o\n    orthogonalize: {direction: {stage: refusal, layer: 2, "
                  "position: post_inst[-1]}}\n"}) {
    StatusOr<ParsedSpec> parsed = ParseSpec(yaml, "t.yaml");
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    const Status shape = ValidateSpecFiles(*parsed, kDemoShape);
    // Only the prompt files are missing.
    ASSERT_FALSE(shape.ok());
    EXPECT_EQ(shape.code(), StatusCode::kNotFound) << shape.ToString();
    EXPECT_EQ(shape.message().rfind("t.yaml:4: prompt_sets.harmful.path: ", 0), 0u)
        << shape.message();
  }
}

// ------------------------------------------------------------------------------------------
// ValidateSpecTokens: the checks that need the demo model's tokenizer (models/demo-refusal:
// byte-level BPE whose pre-tokenizer regex splits "'m" and every " word" apart; ChatML template
// "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n").

// A spec on the demo model with a `short` set ("Hi": the rendered text is 53 bytes, so at most 53
// tokens) and a `long` set (100 space-separated words: at least 100 tokens, one per word).
class SpecTokensTest : public ::testing::Test {
 protected:
  SpecTokensTest() : dir_("tokens") {
    dir_.Write("short.jsonl", "{\"instruction\": \"Hi\"}\n");
    std::string words;
    for (int i = 0; i < 100; ++i) words += std::string(i ? " " : "") + "word";
    dir_.Write("long.jsonl", "{\"instruction\": \"" + words + "\"}\n");
    dir_.Write("mixed.jsonl", "{\"instruction\": \"" + words + "\"}\n{\"instruction\": \"Hi\"}\n");
  }

  // `metrics` and `stages` follow the header at lines 9 and 10.
  StatusOr<ParsedSpec> Load(const std::string& metrics, const std::string& stages) {
    const std::string yaml =
        "name: t\n"                                                            // 1
        "model: {path: " + std::string(KNOCKOUT_SOURCE_DIR) + "/models/demo-refusal}\n"  // 2
        "prompt_sets:\n"                                                       // 3
        "  short: short.jsonl\n"                                               // 4
        "  long: long.jsonl\n"                                                 // 5
        "  mixed: mixed.jsonl\n"                                               // 6
        "metrics:\n"                                                           // 7
        "  text_set: short\n"                                                  // 8
        + metrics + "\n" +                                                     // 9
        "stages:\n" + stages;                                                  // 10, 11...
    return LoadSpec(dir_.Write("t.yaml", yaml));
  }

  std::string Where(int line, const std::string& field) const {
    return (dir_.path() / "t.yaml").string() + ":" + std::to_string(line) + ": " + field + ": ";
  }

  static std::string Extract(const std::string& positive, const std::string& negative,
                             const std::string& positions) {
    return "  - name: e\n"                                      // 11
           "    extract_directions:\n"                          // 12
           "      positive: " + positive + "\n"                 // 13
           "      negative: " + negative + "\n"                 // 14
           "      positions: " + positions + "\n";              // 15
  }
  static std::string Sweep(const std::string& set, const std::string& positions) {
    return "  - name: k\n"                                      // 11
           "    knockout_sweep:\n"                              // 12
           "      prompt_sets: [" + set + "]\n"                 // 13
           "      targets: [{kind: heads, layers: [0]}]\n"      // 14
           "      ablations: [zero]\n"                          // 15
           "      positions: " + positions + "\n";              // 16
  }

  ScratchDir dir_;
};

TEST_F(SpecTokensTest, ValidSpecsPass) {
  for (const std::string& stages :
       {Extract("long", "mixed", "[\"[3,-1]\", post_inst[-1], inst_last]"),
        // "Hi" renders to at least 5 tokens: three special tokens, "user", "Hi".
        Sweep("mixed", "[[0, -1], post_inst, all, \"[4, -5]\"]")}) {
    StatusOr<ParsedSpec> parsed = Load("  refusal_tokens: [\"I\"]", stages);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    const Status status = ValidateSpecTokens(*parsed);
    EXPECT_TRUE(status.ok()) << status.ToString();
  }
}

TEST_F(SpecTokensTest, MetricTokensMustBeOneToken) {
  StatusOr<ParsedSpec> parsed =
      Load("  refusal_tokens: [\"I\", \"I'm\"]", Sweep("short", "[post_inst]"));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  Status status = ValidateSpecTokens(*parsed);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(
      status.message().rfind(Where(9, "metrics.refusal_tokens[1]") + "\"I'm\" is 2 tokens", 0),
      0u)
      << status.message();
  EXPECT_NE(status.message().find("a metric token must be exactly one"), std::string::npos);

  parsed = Load("  positive_tokens: [\"Sure\"]\n  negative_tokens: [\" sorry!\"]",
                Sweep("short", "[post_inst]"));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  status = ValidateSpecTokens(*parsed);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("metrics.negative_tokens[0]: \" sorry!\" is 2 tokens"),
            std::string::npos)
      << status.message();
}

TEST_F(SpecTokensTest, ExplicitPositionsOutsideThePromptsAreRefused) {
  struct Case {
    std::string stages;
    std::string field;  // with its line
    int line;
    std::string message;
  };
  const std::vector<Case> cases = {
      // Past the end of a prompt of at most 53 tokens.
      {Sweep("short", "[post_inst, \"[53]\"]"), "stages[0].positions[1]", 16,
       "prompt set \"short\" prompt 0: position \"[53]\": index 53 outside a prompt of "},
      {Sweep("short", "[[0, -54]]"), "stages[0].positions[0]", 16, "index -54 outside"},
      // Inside the 100-word prompt, outside "Hi": the workers would fail on that prompt.
      {Extract("long", "mixed", "[inst_last, \"[60]\"]"), "stages[0].positions[1]", 15,
       "prompt set \"mixed\" prompt 1: position \"[60]\""},
      // ChatML's suffix is far shorter than 60 tokens.
      {Sweep("long", "[post_inst[-60]]"), "stages[0].positions[0]", 16,
       "position \"post_inst[-60]\": the prompt has only "},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.stages);
    StatusOr<ParsedSpec> parsed = Load("", c.stages);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    const Status status = ValidateSpecTokens(*parsed);
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message().rfind(Where(c.line, c.field), 0), 0u) << status.message();
    EXPECT_NE(status.message().find(c.message), std::string::npos) << status.message();
  }
  StatusOr<ParsedSpec> parsed = Load("", Sweep("mixed", "[\"[60]\"]"));
  ASSERT_TRUE(parsed.ok());
  EXPECT_NE(ValidateSpecTokens(*parsed).message().find("(1 of 2 prompts of the set"),
            std::string::npos);
}

TEST(SpecTest, NoExceptionEscapes) {
  const std::string deep(100000, '[');
  for (const std::string& yaml :
       {std::string(), std::string("---\n"), std::string("["), std::string("name: *x\n"),
        std::string("\t- a\n"), std::string("name: t\n---\nname: u\n"),
        std::string("name: t\nmodel: {path: m}\nstages: &s [*s]\n"),
        std::string("name: t\nmodel: {path: m}\nstages: [{name: a, generate: &g {conditions: "
                    "[*g]}}]\n"),
        std::string("name: t\nmodel: {path: m}\nstages:\n  - {name: s, extract_directions: "
                    "{positive: [], negative: {}, positions: [[1, [2]]]}}\n"),
        std::string("name: \xff\n"), deep}) {
    StatusOr<ParsedSpec> parsed = Status::Internal("not run");
    EXPECT_NO_THROW(parsed = ParseSpec(yaml, "t.yaml")) << yaml.substr(0, 80);
    EXPECT_FALSE(parsed.ok()) << yaml.substr(0, 80);
    EXPECT_EQ(parsed.status().message().rfind("t.yaml", 0), 0u) << parsed.status().message();
  }
}

TEST(SpecTest, BarePositionTokensReadAsQuotedOnes) {
  const std::string stage =
      "stages:\n  - name: e\n    extract_directions:\n      positive: p\n      negative: p\n"
      "      positions: ";
  const std::string head = "name: t\nmodel: {path: m}\nprompt_sets: {p: p.jsonl}\n";
  for (const std::string& positions :
       {std::string("[post_inst[-2], \"post_inst[-1]\", [3, -1]]  # post_inst[-9]"),
        std::string("\n        - post_inst[-2]\n        - 'post_inst[-1]'\n        - \"[3,-1]\"")}) {
    StatusOr<ParsedSpec> parsed = ParseSpec(head + stage + positions + "\n", "t.yaml");
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    const auto& read = parsed->spec.stages(0).extract_directions().positions();
    ASSERT_EQ(read.size(), 3);
    EXPECT_EQ(PositionsName(read[0]), "post_inst[-2]");
    EXPECT_EQ(PositionsName(read[1]), "post_inst[-1]");
    EXPECT_EQ(PositionsName(read[2]), "[3,-1]");
  }
  // Quoted text is left as written.
  StatusOr<ParsedSpec> parsed = ParseSpec(
      "name: t\nmodel: {path: m, chat_template: \"{instruction} post_inst[-1]\"}\nstages: "
      "[{name: e, extract_directions: {positive: p, negative: p, positions: [all]}}]\n"
      "prompt_sets: {p: p.jsonl}\n",
      "t.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->spec.model().chat_template(), "{instruction} post_inst[-1]");
}

TEST(SpecTest, DirectionRefNames) {
  v1::DirectionRef ref;
  ref.set_stage("select");
  ref.set_best(true);
  EXPECT_EQ(DirectionRefName(ref), "select.best");
  ref.set_best(false);
  ref.set_stage("extract");
  ref.set_layer(3);
  ref.mutable_position()->set_kind(Positions::POST_INST_AT);
  ref.mutable_position()->set_index(-1);
  EXPECT_EQ(DirectionRefName(ref), "extract@3/post_inst[-1]");
  ref.set_layer(-1);
  EXPECT_EQ(DirectionRefName(ref), "extract@*/post_inst[-1]");
}

TEST(SpecTest, WhereFallsBackToTheNearestRecordedAncestor) {
  ParsedSpec parsed;
  parsed.label = "s.yaml";
  parsed.lines = {{"", 1}, {"stages", 6}, {"stages[2]", 14}, {"stages[2].targets[0]", 17}};
  EXPECT_EQ(parsed.Where("stages[2].targets[0]"), "s.yaml:17: stages[2].targets[0]");
  EXPECT_EQ(parsed.Where("stages[2].targets[0].units[3]"),
            "s.yaml:17: stages[2].targets[0].units[3]");
  EXPECT_EQ(parsed.Where("stages[2].targets[1].layers"), "s.yaml:14: stages[2].targets[1].layers");
  EXPECT_EQ(parsed.Where("stages[5]"), "s.yaml:6: stages[5]");
  EXPECT_EQ(parsed.Where("model.path"), "s.yaml:1: model.path");
  EXPECT_EQ(parsed.Where(""), "s.yaml:1");
  parsed.lines.clear();
  EXPECT_EQ(parsed.Where("model"), "s.yaml: model");
}

TEST(SpecTest, LoadSpecResolvesPathsAgainstTheSpecFile) {
  ScratchDir dir("load");
  dir.Write("prompts/harmful.jsonl", "{\"instruction\": \"a\"}\n{\"instruction\": \"b\"}\n");
  dir.Write("prompts/harmless.csv", "goal,other\nc,x\n");
  dir.Write("prompts/texts.json", "[{\"text\": \"d\"}]\n");
  const std::string path = dir.Write(
      "specs/s.yaml",
      "name: s\nmodel: {path: ../model}\n"
      "prompt_sets:\n"
      "  harmful: {path: ../prompts/harmful.jsonl, limit: 1000}\n"
      "  harmless: ../prompts/harmless.csv\n"
      "  texts: {path: " + (dir.path() / "prompts/texts.json").string() + ", field: text}\n"
      "stages:\n"
      "  - name: e\n    extract_directions: {positive: harmful, negative: harmless, "
      "positions: [all], layers: [5]}\n"
      "  - name: o\n    orthogonalize: {direction: {stage: e, layer: 5, position: all}, "
      "output: out/ckpt}\n");
  StatusOr<ParsedSpec> parsed = LoadSpec(path);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->spec.source(), path);
  EXPECT_EQ(parsed->label, path);
  EXPECT_EQ(parsed->spec.model().path(), (dir.path() / "model").string());
  EXPECT_EQ(parsed->spec.prompt_sets(0).path(), (dir.path() / "prompts/harmful.jsonl").string());
  EXPECT_EQ(parsed->spec.prompt_sets(1).path(), (dir.path() / "prompts/harmless.csv").string());
  EXPECT_EQ(parsed->spec.stages(1).orthogonalize().output(),
            (dir.path() / "specs/out/ckpt").string());
  EXPECT_EQ(parsed->spec.stages(1).orthogonalize().max_new_tokens(), 64u);
  // The JSON set's instructions are under `text`; a limit beyond the set's size is fine.
  const Status valid = ValidateSpecFiles(*parsed, kDemoShape);
  EXPECT_TRUE(valid.ok()) << valid.ToString();
  EXPECT_FALSE(ValidateSpecFiles(*parsed, ModelShape{5, 8, 688, 256}).ok());

  StatusOr<ParsedSpec> missing = LoadSpec((dir.path() / "specs/nope.yaml").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.yaml"), std::string::npos);
}

TEST(SpecTest, PromptSetsThatDoNotLoadNameTheSpecLine) {
  ScratchDir dir("prompts");
  dir.Write("good.jsonl", "{\"instruction\": \"a\"}\n");
  dir.Write("bad.jsonl", "{\"instruction\": \"a\"}\n{\"text\": \"b\"}\n");
  const std::string path = dir.Write(
      "s.yaml",
      "name: s\nmodel: {path: m}\n"
      "prompt_sets:\n"
      "  good: {path: good.jsonl, limit: 1}\n"  // 4
      "  bad:\n"                                // 5
      "    path: bad.jsonl\n"                   // 6
      "  gone: gone.jsonl\n"                    // 7
      "stages:\n"
      "  - {name: e, extract_directions: {positive: good, negative: good, positions: [all]}}\n");
  StatusOr<ParsedSpec> parsed = LoadSpec(path);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  Status status = ValidateSpecFiles(*parsed, kDemoShape);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message().rfind(path + ":6: prompt_sets.bad.path: ", 0), 0u)
      << status.message();
  EXPECT_NE(status.message().find("bad.jsonl:2: field instruction: missing"), std::string::npos)
      << status.message();

  dir.Write("bad.jsonl", "{\"instruction\": \"b\"}\n");
  status = ValidateSpecFiles(*parsed, kDemoShape);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_EQ(status.message().rfind(path + ":7: prompt_sets.gone.path: ", 0), 0u)
      << status.message();

  dir.Write("gone.jsonl", "\n");
  status = ValidateSpecFiles(*parsed, kDemoShape);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message().rfind(path + ":7: prompt_sets.gone.path: ", 0), 0u)
      << status.message();
  EXPECT_NE(status.message().find("no prompts"), std::string::npos) << status.message();
}

}  // namespace
}  // namespace knockout::experiments
