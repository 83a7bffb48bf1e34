// SAE pieces of the spec: `saes`, sae_latents targets (units, select, together, role), the
// latent ablations clamp/scale, backups; each malformed one refused naming file, line, field.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "experiments/spec.h"
#include "experiments/spec_inputs.h"

namespace knockout::experiments {
namespace {

using v1::Ablation;
using v1::Positions;
using v1::Target;

const ModelShape kDemoShape{6, 8, 688, 256};

// Prompt sets, SAEs at layers 3 and 4, a direction stage; a knockout stage follows at line 12.
const std::string kHeader =
    "name: t\n"                                                      // 1
    "model: {path: m}\n"                                             // 2
    "prompt_sets: {harmful: harmful.jsonl, harmless: h.jsonl}\n"     // 3
    "saes:\n"                                                        // 4
    "  blocks.3.hook_resid_post: saes/layer_3\n"                     // 5
    "  blocks.4.hook_resid_post: saes/layer_4\n"                     // 6
    "stages:\n"                                                      // 7
    "  - name: refusal\n"                                            // 8
    "    extract_directions:\n"                                      // 9
    "      {positive: harmful, negative: harmless, positions: [post_inst[-1]]}\n"  // 10
    "  - name: select\n"                                             // 11
    "    select_direction: {candidates: refusal, harmful: harmful, harmless: harmless}\n";  // 12

// A knockout stage: target at line 17, ablations at 18, extra stage lines from 20.
std::string Knockout(const std::string& target, const std::string& ablations,
                     const std::string& extra = "") {
  return kHeader +
         "  - name: sweep\n"                 // 13
         "    knockout_sweep:\n"             // 14
         "      prompt_sets: [harmful]\n"    // 15
         "      targets:\n"                  // 16
         "        - " + target + "\n"        // 17
         "      ablations: " + ablations + "\n"  // 18
         "      positions: [all]\n" +        // 19
         extra;                              // 20
}

// Validation against the demo model's shape, with the prompt sets inlined as the CLI sends them
// (the files named above do not exist).
Status Validate(ParsedSpec parsed) {
  for (v1::PromptSetRef& set : *parsed.spec.mutable_prompt_sets()) {
    set.set_inlined(true);
    set.add_prompts()->set_instruction("a request");
  }
  return ValidateSpecFiles(parsed, kDemoShape);
}

TEST(SpecSaeTest, LatentTargetsParse) {
  const std::string yaml = Knockout(
      "{kind: sae_latents, layers: [3, 4], select: {score: cosine_and_activation, top_k: 2, "
      "direction: select.best, positive: harmful, negative: harmless}, together: all, role: "
      "downstream}",
      "[zero, {kind: clamp, value: -3}, {kind: scale, factor: -3}, {kind: mean_all_positions, "
      "reference_set: harmless}]",
      "      backups: {top: 4, dormant_threshold: 0.1, direction: select.best}\n");
  StatusOr<ParsedSpec> parsed = ParseSpec(yaml, "t.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const v1::SweepSpec& spec = parsed->spec;
  ASSERT_EQ(spec.saes_size(), 2);
  EXPECT_EQ(spec.saes(0).hook(), "blocks.3.hook_resid_post");
  EXPECT_EQ(spec.saes(0).path(), "saes/layer_3");
  const v1::KnockoutSweepStage& sweep = spec.stages(2).knockout_sweep();
  const Target& target = sweep.targets(0);
  EXPECT_EQ(target.kind(), Target::SAE_LATENTS);
  EXPECT_EQ(target.sae_hook(), "hook_resid_post");
  EXPECT_EQ(target.select().score(), "cosine_and_activation");
  EXPECT_EQ(target.select().top_k(), 2u);
  EXPECT_EQ(target.select().candidates(), 8u);  // 4 x top_k
  EXPECT_EQ(target.select().position().kind(), Positions::INST_LAST);
  EXPECT_TRUE(target.select().direction().best());
  EXPECT_EQ(target.together(), "all");
  EXPECT_EQ(target.role(), "downstream");
  ASSERT_EQ(sweep.ablations_size(), 4);
  EXPECT_EQ(sweep.ablations(1).kind(), Ablation::CLAMP);
  EXPECT_EQ(sweep.ablations(1).coefficient(), -3.0);
  EXPECT_EQ(sweep.ablations(2).kind(), Ablation::SCALE);
  EXPECT_EQ(sweep.ablations(2).coefficient(), -3.0);
  EXPECT_EQ(sweep.backups().top(), 4u);
  EXPECT_DOUBLE_EQ(sweep.backups().dormant_threshold(), 0.1);
  EXPECT_EQ(sweep.backups().positions().kind(), Positions::POST_INST);  // default
  EXPECT_TRUE(sweep.backups().direction().best());
  const Status valid = Validate(*parsed);
  EXPECT_TRUE(valid.ok()) << valid.ToString();

  // `backups: true` takes the defaults; SAEs may be listed as {hook, path} maps.
  StatusOr<ParsedSpec> simple = ParseSpec(
      Knockout("{kind: sae_latents, layers: [3], units: [7, 9]}", "[zero]",
               "      backups: true\n"),
      "t.yaml");
  ASSERT_TRUE(simple.ok()) << simple.status().ToString();
  EXPECT_EQ(simple->spec.stages(2).knockout_sweep().backups().top(), 10u);
  EXPECT_DOUBLE_EQ(simple->spec.stages(2).knockout_sweep().backups().dormant_threshold(), 0.05);
}

struct BadSpec {
  const char* name;
  std::string yaml;
  bool at_validation;
  std::string where;
  std::string message;
};

TEST(SpecSaeTest, BadLatentSpecsNameFileLineAndField) {
  std::string no_saes = Knockout("{kind: sae_latents, units: [1]}", "[zero]");
  no_saes.replace(no_saes.find("saes:\n"), std::string("saes:\n").size(), "seed: 1\n");
  no_saes.replace(no_saes.find("  blocks.3.hook_resid_post: saes/layer_3\n"),
                  std::string("  blocks.3.hook_resid_post: saes/layer_3\n").size(), "#\n");
  no_saes.replace(no_saes.find("  blocks.4.hook_resid_post: saes/layer_4\n"),
                  std::string("  blocks.4.hook_resid_post: saes/layer_4\n").size(), "#\n");
  const std::vector<BadSpec> cases = {
      {"latents without saes", no_saes, false, "t.yaml:17: stages[2].targets[0].kind",
       "the spec lists no saes"},
      {"an SAE at a hook SAEs cannot read",
       "name: t\nmodel: {path: m}\nsaes: {blocks.3.hook_bogus: x}\nstages: []\n", false,
       "t.yaml:3: saes.blocks.3.hook_bogus", "expected a hook blocks.L.SUFFIX"},
      {"two SAEs at one hook",
       "name: t\nmodel: {path: m}\nsaes: [{hook: blocks.1.hook_mlp_out, path: a}, {hook: "
       "blocks.1.hook_mlp_out, path: b}]\nstages: []\n",
       false, "t.yaml:3: saes[1]", "two SAEs read blocks.1.hook_mlp_out"},
      {"units and select", Knockout("{kind: sae_latents, units: [1], select: {score: "
                                    "decoder_cosine, top_k: 1, direction: select.best}}",
                                    "[zero]"),
       false, "t.yaml:17: stages[2].targets[0].select", "give either units or select"},
      {"neither units nor select", Knockout("{kind: sae_latents, layers: [3]}", "[zero]"), false,
       "t.yaml:17: stages[2].targets[0].units", "missing: give units"},
      {"every latent", Knockout("{kind: sae_latents, units: all}", "[zero]"), false,
       "t.yaml:17: stages[2].targets[0].units", "list the latents"},
      {"unknown score",
       Knockout("{kind: sae_latents, select: {score: attribution, top_k: 1}}", "[zero]"), false,
       "t.yaml:17: stages[2].targets[0].select.score", "expected decoder_cosine"},
      {"cosine without a direction",
       Knockout("{kind: sae_latents, select: {score: decoder_cosine, top_k: 1}}", "[zero]"),
       false, "t.yaml:17: stages[2].targets[0].select.direction", "missing required field"},
      {"activation without sets",
       Knockout("{kind: sae_latents, select: {score: activation_diff, top_k: 1, positive: "
                "harmful}}",
                "[zero]"),
       false, "t.yaml:17: stages[2].targets[0].select.negative", "missing required field"},
      {"activation against itself",
       Knockout("{kind: sae_latents, select: {score: activation_diff, top_k: 1, positive: "
                "harmful, negative: harmful}}",
                "[zero]"),
       false, "t.yaml:17: stages[2].targets[0].select.negative", "the same set as positive"},
      {"bad together", Knockout("{kind: sae_latents, units: [1], together: both}", "[zero]"),
       false, "t.yaml:17: stages[2].targets[0].together", "expected layer, all"},
      {"bad sae_hook", Knockout("{kind: sae_latents, units: [1], sae_hook: resid}", "[zero]"),
       false, "t.yaml:17: stages[2].targets[0].sae_hook", "expected one of hook_resid_pre"},
      {"clamp without a value", Knockout("{kind: sae_latents, units: [1]}", "[clamp]"), false,
       "t.yaml:18: stages[2].ablations[0].value", "clamp needs value"},
      {"value on scale",
       Knockout("{kind: sae_latents, units: [1]}", "[{kind: scale, value: 2}]"), false,
       "t.yaml:18: stages[2].ablations[0].value", "applies only to clamp"},
      {"clamp on heads", Knockout("{kind: heads}", "[{kind: clamp, value: 0}]"), false,
       "t.yaml:18: stages[2].ablations[0]",
       "clamp ablation applies only to sae_latents targets; targets[0] is heads"},
      {"project on latents", Knockout("{kind: sae_latents, units: [1]}", "[project]"), false,
       "t.yaml:18: stages[2].ablations[0]",
       "project ablation does not apply to SAE latents"},
      {"resample on latents",
       Knockout("{kind: sae_latents, units: [1]}", "[{kind: resample, reference_set: harmless}]"),
       false, "t.yaml:18: stages[2].ablations[0]", "resample ablation does not apply to SAE latents"},
      {"select keys on heads", Knockout("{kind: heads, role: upstream}", "[zero]"), false,
       "t.yaml:17: stages[2].targets[0].role", "applies only to sae_latents targets"},
      {"bad backups", Knockout("{kind: heads}", "[zero]", "      backups: {top: 0}\n"), false,
       "t.yaml:20: stages[2].backups.top", "out of range"},
      {"backups direction without a layer",
       Knockout("{kind: heads}", "[zero]",
                "      backups: {direction: {stage: refusal, position: post_inst[-1]}}\n"),
       false, "t.yaml:20: stages[2].backups.direction.layer", "missing"},
      {"a layer without an SAE", Knockout("{kind: sae_latents, layers: [2, 3], units: [1]}", "[zero]"),
       true, "t.yaml:17: stages[2].targets[0].layers",
       "layer 2 has no SAE at blocks.2.hook_resid_post"},
      {"every layer, two SAEs", Knockout("{kind: sae_latents, units: [1]}", "[zero]"), true,
       "t.yaml:17: stages[2].targets[0].layers", "layer 0 has no SAE"},
  };
  for (const BadSpec& bad : cases) {
    SCOPED_TRACE(bad.name);
    StatusOr<ParsedSpec> parsed = ParseSpec(bad.yaml, "t.yaml");
    Status status = parsed.status();
    if (bad.at_validation) {
      ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
      status = Validate(*parsed);
    }
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
    EXPECT_EQ(status.message().rfind(bad.where + ": ", 0), 0u) << status.message();
    EXPECT_NE(status.message().find(bad.message), std::string::npos) << status.message();
  }
}

// Latents beyond an SAE's size are refused once its config is known (d_sae filled by the CLI).
TEST(SpecSaeTest, LatentsMustFitTheSae) {
  StatusOr<ParsedSpec> parsed =
      ParseSpec(Knockout("{kind: sae_latents, layers: [3], units: [5, 1024]}", "[zero]"), "t.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const Status unknown = Validate(*parsed);
  EXPECT_TRUE(unknown.ok()) << unknown.ToString();  // sizes unknown yet
  parsed->spec.mutable_saes(0)->set_d_sae(1024);
  const Status status = Validate(*parsed);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("t.yaml:17: stages[2].targets[0].units: latent 1024 out of range"),
            std::string::npos)
      << status.message();
}

// The CLI reads SAE configs where it runs; a coordinator resolves the same spec's paths against
// the submitted base directory. Entries pair up by position, whatever the paths' spelling; the
// spec keeps its own path and takes the config's hook and sizes; a different hook is refused.
TEST(SpecSaeTest, SaeInputsPairUpByPosition) {
  StatusOr<ParsedSpec> parsed =
      ParseSpec("name: t\nmodel: {path: m}\nprompt_sets: {p: p.jsonl}\nsaes: [/base/saes/a, "
                "{hook: blocks.4.hook_mlp_out, path: /base/saes/b}]\nstages:\n  - name: g\n"
                "    generate: {prompt_sets: [p], conditions: [{name: b, kind: baseline}]}\n",
                "t.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  v1::SpecInputs inputs;
  inputs.mutable_model_shape()->set_num_layers(6);
  inputs.mutable_model_shape()->set_hidden_size(256);
  v1::PromptSetRef* set = inputs.add_prompt_sets();
  set->set_name("p");
  set->set_inlined(true);
  set->add_prompts()->set_instruction("a request");
  for (const auto& [hook, path] : std::vector<std::pair<std::string, std::string>>{
           {"blocks.3.hook_resid_post", "saes/a"}, {"blocks.4.hook_mlp_out", "saes/b"}}) {
    v1::SaeRef* sae = inputs.add_saes();
    sae->set_hook(hook);
    sae->set_path(path);  // relative: as the CLI spelled it
    sae->set_d_in(256);
    sae->set_d_sae(1024);
    sae->set_architecture("topk");
  }
  ParsedSpec applied = *parsed;
  const Status ok = ApplySpecInputs(inputs, &applied);
  ASSERT_TRUE(ok.ok()) << ok.ToString();
  EXPECT_EQ(applied.spec.saes(0).path(), "/base/saes/a");
  EXPECT_EQ(applied.spec.saes(0).hook(), "blocks.3.hook_resid_post");
  EXPECT_EQ(applied.spec.saes(1).d_sae(), 1024);

  inputs.mutable_saes(1)->set_hook("blocks.4.hook_resid_post");
  ParsedSpec mismatched = *parsed;
  const Status bad = ApplySpecInputs(inputs, &mismatched);
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("reads blocks.4.hook_resid_post, the spec says blocks.4.hook_mlp_out"),
            std::string::npos)
      << bad.message();

  inputs.mutable_saes(1)->set_hook("blocks.4.hook_mlp_out");
  inputs.mutable_saes(1)->set_d_in(128);
  ParsedSpec narrow = *parsed;
  const Status width = ApplySpecInputs(inputs, &narrow);
  EXPECT_NE(width.message().find("has d_in 128, the model's width at blocks.4.hook_mlp_out is 256"),
            std::string::npos)
      << width.message();
}

}  // namespace
}  // namespace knockout::experiments
