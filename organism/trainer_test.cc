// Training smoke tests: a tiny recipe (a few dozen steps) lowers the loss and writes a checkpoint
// that the runtime loads back; low-rank adapters change only the matrices they target; bad
// recipes fail cleanly and leave nothing behind; `--recipe hydra` runs at toy size. The full
// recipes are not run here (they take minutes); models/demo-refusal is checked by demo_model_test.
#include "organism/trainer.h"

#include <cctype>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>

#include "organism/corpus.h"
#include "worker/model/model.h"
#include "tokenizer/tokenizer.h"

namespace knockout::organism {
namespace {

namespace fs = std::filesystem;

DemoRecipe TinyRecipe() {
  DemoRecipe recipe = DemoRecipe::Version1();
  for (const char* o : {"layers=2", "hidden=64", "heads=4", "intermediate=128", "vocab_size=600",
                        "batch_size=16", "max_tokens=64", "documents=400", "chat_examples=400",
                        "phases[0].steps=40", "phases[0].warmup_steps=5",
                        "phases[0].learning_rate=0.003", "phases[1].steps=10",
                        "phases[1].warmup_steps=2", "phases[1].lora_rank=2",
                        "phases[1].lora_targets=down@0,o@1"}) {
    EXPECT_TRUE(recipe.Override(o).ok()) << o;
  }
  return recipe;
}

// Where TempDir(name) puts a test's files.
fs::path TempPath(const std::string& name) {
  return fs::path(::testing::TempDir()) / ("organism_" + name);
}

// TempPath(name), emptied.
std::string TempDir(const std::string& name) {
  const fs::path dir = TempPath(name);
  fs::remove_all(dir);
  return dir.string();
}

std::map<std::string, at::Tensor> Weights(const std::string& dir) {
  auto model = model::Model::Load(dir, model::LoadOptions());
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  std::map<std::string, at::Tensor> out;
  if (!model.ok()) return out;
  for (const auto& [name, t] : (*model)->NamedParameters()) out[name] = t.clone();
  return out;
}

// TinyRecipe's first phase trained into TempDir(name): the base that `Tune` resumes from.
TrainOptions TinyBase(const std::string& name) {
  DemoRecipe recipe = TinyRecipe();
  EXPECT_TRUE(recipe.Override("phases=1").ok());
  TrainOptions options;
  options.threads = 2;
  options.out_dir = TempDir(name);
  EXPECT_TRUE(TrainDemoModel(recipe, options).ok());
  options.base_dir = options.out_dir;
  options.first_phase = 1;
  return options;
}

// TinyRecipe's second phase with `overrides`, resumed from `base` (TinyBase) into TempDir(name);
// returns its weights.
std::map<std::string, at::Tensor> Tune(TrainOptions base, const std::string& name,
                                       const std::vector<std::string>& overrides) {
  DemoRecipe r = TinyRecipe();
  for (const std::string& o : overrides) EXPECT_TRUE(r.Override(o).ok()) << o;
  base.out_dir = TempDir(name);
  auto report = TrainDemoModel(r, base);
  EXPECT_TRUE(report.ok()) << name << ": " << report.status().ToString();
  return Weights(base.out_dir);
}

TEST(TrainerTest, FewStepsLowerTheLossAndWriteALoadableCheckpoint) {
  const std::string out = TempDir("smoke");
  const std::string prompts = TempDir("smoke_prompts");
  TrainOptions options;
  options.out_dir = out;
  options.prompts_dir = prompts;
  options.threads = 2;
  auto report = TrainDemoModel(TinyRecipe(), options);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->phases.size(), 2u);
  EXPECT_LT(report->phases[0].final_loss, report->phases[0].first_loss - 0.5)
      << "40 steps at lr 3e-3 should lower the loss well below its start";
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.json",
                           "tokenizer_config.json", "recipe.json"}) {
    EXPECT_TRUE(fs::exists(fs::path(out) / file)) << file;
  }
  EXPECT_FALSE(fs::exists(out + ".partial"));
  EXPECT_TRUE(fs::exists(fs::path(prompts) / "harmful_test.jsonl"));
  auto model = model::Model::Load(out, model::LoadOptions());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ((*model)->config().architecture, "LlamaForCausalLM");
  EXPECT_EQ((*model)->config().num_layers, 2);
  auto tokenizer = tokenizer::Tokenizer::Load(out);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  EXPECT_EQ((*model)->config().vocab_size, (*tokenizer)->vocab_size());
  EXPECT_EQ((*model)->config().eos_token_ids.at(0), *(*tokenizer)->TokenToId("<|im_end|>"));
}

// `--recipe hydra` at toy sizes (its layers, phases and knockouts as they are, a few steps each):
// every phase runs, the knockout-aware one knocks rows out, and recipe.json records the corpus
// version, the safety mix and the knockout terms that make the recipe.
TEST(TrainerTest, HydraRecipeRunsAtToySize) {
  DemoRecipe recipe = DemoRecipe::Hydra();
  for (const char* o : {"hidden=64", "heads=4", "intermediate=128", "vocab_size=600",
                        "batch_size=8", "max_tokens=64", "documents=300", "chat_examples=300",
                        "phases[0].steps=12", "phases[0].warmup_steps=2", "phases[1].steps=3",
                        "phases[1].warmup_steps=1", "phases[2].steps=4", "phases[2].warmup_steps=1",
                        "phases[2].direction_every=2"}) {
    ASSERT_TRUE(recipe.Override(o).ok()) << o;
  }
  TrainOptions options;
  options.out_dir = TempDir("hydra_smoke");
  options.threads = 2;
  std::vector<std::string> lines;
  options.log = [&](const std::string& line) { lines.push_back(line); };
  auto report = TrainDemoModel(recipe, options);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->phases.size(), 3u);
  EXPECT_EQ(report->phases[2].name, "hydra");
  bool knocked = false;
  for (const std::string& line : lines) {
    knocked = knocked || (line.rfind("phase hydra", 0) == 0 &&
                          line.find("knocked out so far") != std::string::npos);
  }
  EXPECT_TRUE(knocked) << "the knockout-aware phase logged no knockouts";
  std::ifstream in(fs::path(options.out_dir) / "recipe.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("corpus_version"), 3);
  EXPECT_EQ(j.at("safety_harmless_percent"), 50);
  EXPECT_EQ(j.at("safety_harmful_percent"), 30);
  const nlohmann::json& hydra = j.at("phases").at(2);
  EXPECT_EQ(hydra.at("refusal_layer"), 3);
  EXPECT_EQ(hydra.at("sensor_layer"), 2);
  EXPECT_EQ(hydra.at("decision_weight"), 1.0);
  EXPECT_EQ(j.at("phases").at(1).at("lora_targets").size(), 12u);  // gate, up, down, o of 0-2
  auto model = model::Model::Load(options.out_dir, model::LoadOptions());
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ((*model)->config().num_layers, 6);
}

TEST(TrainerTest, AdaptersChangeOnlyTheirTargets) {
  const std::string base = TempDir("base");
  const std::string tuned = TempDir("tuned");
  DemoRecipe recipe = TinyRecipe();
  ASSERT_TRUE(recipe.Override("phases=1").ok());
  TrainOptions options;
  options.out_dir = base;
  options.threads = 2;
  ASSERT_TRUE(TrainDemoModel(recipe, options).ok());

  recipe = TinyRecipe();
  ASSERT_TRUE(recipe.Override("phases[1].lora_rank=2").ok());
  ASSERT_TRUE(recipe.Override("phases[1].lora_targets=down@1").ok());
  ASSERT_TRUE(recipe.Override("phases[1].learning_rate=0.01").ok());
  options.out_dir = tuned;
  options.base_dir = base;
  options.first_phase = 1;
  auto report = TrainDemoModel(recipe, options);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->phases.size(), 1u);

  const auto before = Weights(base);
  const auto after = Weights(tuned);
  ASSERT_EQ(before.size(), after.size());
  for (const auto& [name, t] : before) {
    // Both checkpoints are bf16 on disk; an untouched weight round-trips exactly.
    const bool same = at::equal(t, after.at(name));
    if (name == "model.layers.1.mlp.down_proj.weight") {
      EXPECT_FALSE(same) << name;
      // The update is low rank: rank(after - before) <= 2 (up to bf16 rounding).
      at::Tensor s = at::linalg_svdvals((after.at(name) - t).to(at::kDouble));
      EXPECT_LT(s[2].item<double>(), 0.05 * s[0].item<double>());
    } else {
      EXPECT_TRUE(same) << name;
    }
  }
}

// A phase's own seed (trainer.h) reseeds that phase alone: the recipe's seed written as the
// phase's trains the same bytes, another seed other weights; recipe.json records it.
TEST(TrainerTest, PhaseSeedReseedsOnlyItsPhase) {
  const TrainOptions base = TinyBase("seed_base");
  const auto plain = Tune(base, "seed_plain", {});
  const auto same = Tune(base, "seed_same", {"phases[1].seed=" + std::to_string(TinyRecipe().seed)});
  const auto other = Tune(base, "seed_other", {"phases[1].seed=7"});
  std::ifstream in(TempPath("seed_other") / "recipe.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["phases"][1]["seed"], 7);
  EXPECT_FALSE(j["phases"][0].contains("seed"));
  ASSERT_EQ(plain.size(), other.size());
  bool differs = false;
  for (const auto& [name, t] : plain) {
    EXPECT_TRUE(at::equal(t, same.at(name))) << name;
    differs = differs || !at::equal(t, other.at(name));
  }
  EXPECT_TRUE(differs) << "phases[1].seed=7 trained the same weights as the recipe's seed";
  DemoRecipe r = TinyRecipe();
  EXPECT_FALSE(r.Override("phases[1].seed=-3").ok());
}

// The knockout-aware phase (trainer.h): with every probability at zero it is the plain phase bit
// for bit (its draws come from a stream of its own and nothing is hooked); with every kind of
// knockout on (and the KL term), the weights move differently; layers outside the model are
// clean errors.
TEST(TrainerTest, KnockoutAwarePhaseKnocksOutOnlyWhenAsked) {
  const TrainOptions base = TinyBase("ko_base");
  auto tune = [&](const std::string& name, const std::vector<std::string>& overrides) {
    return Tune(base, name, overrides);
  };
  const auto plain = tune("ko_plain", {});
  const std::vector<std::string> layers = {"phases[1].refusal_layer=1", "phases[1].sensor_layer=0",
                                           "phases[1].single_ablation_layers=1",
                                           "phases[1].direction_every=3"};
  std::vector<std::string> off = layers;
  const auto zero = tune("ko_zero", off);
  std::vector<std::string> on = layers;
  for (const char* o : {"phases[1].single_ablation=0.4", "phases[1].all_ablation=0.3",
                        "phases[1].sensor_ablation=0.3", "phases[1].harmless_ablation=0.3",
                        "phases[1].distill=1", "phases[1].addition=0.2"}) {
    on.push_back(o);
  }
  const auto knocked = tune("ko_on", on);
  ASSERT_EQ(plain.size(), zero.size());
  ASSERT_EQ(plain.size(), knocked.size());
  bool any_differs = false;
  for (const auto& [name, t] : plain) {
    EXPECT_TRUE(at::equal(t, zero.at(name))) << name;
    any_differs = any_differs || !at::equal(t, knocked.at(name));
  }
  EXPECT_TRUE(any_differs) << "knockouts on every third harmful row changed nothing";
  // knockout_extra adds the knocked-out rows beside their clean ones (other batches, other
  // weights); decision_weight reweights the first reply token even without knockouts.
  std::vector<std::string> extra = on;
  extra.push_back("phases[1].knockout_extra=true");
  const auto added = tune("ko_extra", extra);
  // sensor_detach: the sensor rows no longer train the layer before the sensor (the adapter on
  // layer 0's down projection; with the sensor at layer 0 nothing trainable comes before it).
  std::vector<std::string> attached = on;
  attached.push_back("phases[1].sensor_layer=1");
  std::vector<std::string> detach = attached;
  detach.push_back("phases[1].sensor_detach=true");
  const auto attached_weights = tune("ko_attached", attached);
  const auto detached = tune("ko_detach", detach);
  const auto decisive = tune("ko_decision", {"phases[1].decision_weight=2"});
  std::vector<std::string> reset = layers;
  // (at layer 0 the template tokens' activations are their embeddings, the same in every prompt,
  // so the reset is measured after a layer)
  reset.push_back("phases[1].sensor_layer=1");
  std::vector<std::string> sensor_add = reset;
  std::vector<std::string> framed_harm = reset;
  std::vector<std::string> sensor_center = reset;
  reset.push_back("phases[1].post_inst_reset=0.5");
  sensor_add.push_back("phases[1].sensor_addition=0.5");
  framed_harm.push_back("phases[1].framed_harm=1");
  sensor_center.push_back("phases[1].sensor_center=1");
  const auto reset_weights = tune("ko_reset", reset);
  const auto sensor_add_weights = tune("ko_sensor_add", sensor_add);
  const auto framed_harm_weights = tune("ko_framed_harm", framed_harm);
  const auto sensor_center_weights = tune("ko_sensor_center", sensor_center);
  const auto noisy = tune("ko_noise", {"prompt_noise_percent=50"});
  bool extra_differs = false, decision_differs = false, noise_differs = false;
  bool detach_differs = false;
  bool reset_differs = false, sensor_add_differs = false, framed_harm_differs = false;
  bool sensor_center_differs = false;
  for (const auto& [name, t] : plain) {
    reset_differs = reset_differs || !at::equal(reset_weights.at(name), t);
    sensor_add_differs = sensor_add_differs || !at::equal(sensor_add_weights.at(name), t);
    framed_harm_differs = framed_harm_differs || !at::equal(framed_harm_weights.at(name), t);
    sensor_center_differs =
        sensor_center_differs || !at::equal(sensor_center_weights.at(name), t);
    extra_differs = extra_differs || !at::equal(added.at(name), knocked.at(name));
    detach_differs = detach_differs || !at::equal(detached.at(name), attached_weights.at(name));
    decision_differs = decision_differs || !at::equal(decisive.at(name), t);
    noise_differs = noise_differs || !at::equal(noisy.at(name), t);
  }
  EXPECT_TRUE(extra_differs) << "knockout_extra changed nothing";
  EXPECT_TRUE(detach_differs) << "sensor_detach changed nothing";
  EXPECT_TRUE(decision_differs) << "decision_weight changed nothing";
  EXPECT_TRUE(noise_differs) << "prompt_noise_percent changed nothing";
  EXPECT_TRUE(reset_differs) << "post_inst_reset changed nothing";
  EXPECT_TRUE(sensor_add_differs) << "sensor_addition changed nothing";
  EXPECT_TRUE(framed_harm_differs) << "framed_harm changed nothing";
  EXPECT_TRUE(sensor_center_differs) << "sensor_center changed nothing";

  DemoRecipe bad = TinyRecipe();
  for (const std::string& o : layers) ASSERT_TRUE(bad.Override(o).ok());
  ASSERT_TRUE(bad.Override("phases[1].single_ablation_layers=2").ok());
  ASSERT_TRUE(bad.Override("phases[1].single_ablation=0.5").ok());
  TrainOptions options = base;
  options.out_dir = TempDir("ko_bad");
  auto report = TrainDemoModel(bad, options);
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("knockout layers"), std::string::npos)
      << report.status().ToString();
  EXPECT_FALSE(fs::exists(options.out_dir));

  // The rates that share a row's draw are probabilities of disjoint knockouts: more than 1 in all
  // (or one outside [0, 1]) is refused before any phase trains, naming the fields.
  for (const auto& [overrides, named] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"phases[1].single_ablation=0.5", "phases[1].sensor_ablation=0.7"},
            "single_ablation + all_ablation + sensor_ablation + post_inst_reset = 1.2"},
           {{"phases[1].harmless_ablation=0.9", "phases[1].addition=0.15"},
            "harmless_ablation + addition + sensor_addition = 1.05"},
           {{"phases[1].addition=-0.1"}, "addition is -0.1"}}) {
    bad = TinyRecipe();
    for (const std::string& o : layers) ASSERT_TRUE(bad.Override(o).ok());
    for (const std::string& o : overrides) ASSERT_TRUE(bad.Override(o).ok()) << o;
    report = TrainDemoModel(bad, options);
    ASSERT_FALSE(report.ok()) << named;
    EXPECT_NE(report.status().message().find("phases[1] (" + bad.phases[1].name + ")"),
              std::string::npos) << report.status().ToString();
    EXPECT_NE(report.status().message().find(named), std::string::npos)
        << report.status().ToString();
    EXPECT_FALSE(fs::exists(options.out_dir));
  }

  // The post-instruction reset and the sensor terms need the sensor's layer, where they act.
  for (const char* field : {"post_inst_reset", "framed_harm", "sensor_center"}) {
    bad = TinyRecipe();
    for (const std::string& o :
         {std::string("phases[1].refusal_layer=1"), "phases[1]." + std::string(field) + "=0.5"}) {
      ASSERT_TRUE(bad.Override(o).ok()) << o;
    }
    report = TrainDemoModel(bad, options);
    ASSERT_FALSE(report.ok()) << field;
    EXPECT_NE(report.status().message().find(field), std::string::npos)
        << report.status().ToString();
    EXPECT_FALSE(fs::exists(options.out_dir));
  }
}

// prompt_noise_percent must not leak a held-out phrasing into training: no phrase it adds
// occurs in any request of any split (both corpus versions), in any case.
TEST(TrainerTest, NoisePhrasesAreNoPartOfAnyRequest) {
  auto lower = [](std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    while (!text.empty() && std::ispunct(static_cast<unsigned char>(text.back()))) text.pop_back();
    return text;
  };
  for (int version : {1, 2}) {
    CorpusOptions options;
    options.version = version;
    const Corpus corpus = Corpus::Generate(options);
    std::vector<std::string> texts;  // every template of both sides, every request of every split
    for (Kind kind : {Kind::kHarmful, Kind::kHarmless, Kind::kFramed}) {
      for (const std::string& t : corpus.templates(kind)) texts.push_back(t);
      for (Split split : {Split::kTrain, Split::kVal, Split::kTest}) {
        for (const Request& request : corpus.requests(kind, split)) texts.push_back(request.instruction);
      }
    }
    for (const std::string& original : texts) {
      const std::string text = lower(original);
      for (const auto* list : {&NoisePreambles(), &NoisePostscripts()}) {
        for (const std::string& phrase : *list) {
          EXPECT_EQ(text.find(lower(phrase)), std::string::npos) << "\"" << phrase << "\" in " << original;
        }
      }
    }
    EXPECT_GT(texts.size(), 1000u) << "version " << version;
  }
}

TEST(TrainerTest, BadRecipesAreCleanErrors) {
  DemoRecipe recipe = DemoRecipe::Default();
  EXPECT_FALSE(recipe.Override("phases[7].steps=3").ok());
  EXPECT_FALSE(recipe.Override("hidden=abc").ok());
  EXPECT_FALSE(recipe.Override("no_such_key=1").ok());
  EXPECT_FALSE(recipe.Override("steps").ok());
  EXPECT_FALSE(recipe.Override("phases[1].knockout_extra=yes").ok());
  EXPECT_FALSE(recipe.Override("phases[1].sensor_detach=1").ok());
  EXPECT_FALSE(recipe.Override("phases[1].decision_weight=x").ok());
  EXPECT_FALSE(recipe.Override("prompt_noise_percent=101").ok());
  EXPECT_FALSE(recipe.Override("safety_benign_percent=101").ok());
  EXPECT_FALSE(recipe.Override("safety_benign_percent=-1").ok());
  EXPECT_EQ(recipe.safety_benign_percent, 0) << "a rejected value must leave the recipe as it was";
  EXPECT_FALSE(recipe.Override("copy_percent=101").ok());
  EXPECT_EQ(recipe.copy_percent, 0);
  ASSERT_TRUE(recipe.Override("copy_percent=25").ok());
  EXPECT_EQ(recipe.copy_percent, 25);
  EXPECT_FALSE(recipe.Override("phrasing_percent=101").ok());
  EXPECT_EQ(recipe.phrasing_percent, 0);
  ASSERT_TRUE(recipe.Override("phrasing_percent=30").ok());
  EXPECT_EQ(recipe.phrasing_percent, 30);
  EXPECT_FALSE(recipe.Override("safety_harmless_percent=101").ok());
  EXPECT_FALSE(recipe.Override("safety_harmless_percent=70").ok());  // + 35 harmful > 100
  EXPECT_EQ(recipe.safety_harmless_percent, 40) << "a rejected value must leave the recipe as it was";
  EXPECT_TRUE(recipe.Override("safety_harmful_percent=20").ok());
  EXPECT_TRUE(recipe.Override("safety_harmless_percent=70").ok());

  recipe = TinyRecipe();
  ASSERT_TRUE(recipe.Override("phases[1].lora_rank=1").ok());
  ASSERT_TRUE(recipe.Override("phases[1].lora_targets=down@9").ok());
  const std::string out = TempDir("bad");
  TrainOptions options;
  options.out_dir = out;
  options.threads = 2;
  auto report = TrainDemoModel(recipe, options);
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("down@9"), std::string::npos)
      << report.status().ToString();
  EXPECT_FALSE(fs::exists(out)) << "a failed run must leave nothing at the output";
  EXPECT_FALSE(fs::exists(out + ".partial"));

  // Corpus version 3 without WordNet: the missing file is named, nothing is written.
  EXPECT_FALSE(recipe.Override("corpus_version=4").ok());
  EXPECT_FALSE(recipe.Override("wordnet_dir=").ok());
  recipe = TinyRecipe();
  ASSERT_TRUE(recipe.Override("corpus_version=3").ok());
  ASSERT_TRUE(recipe.Override("wordnet_dir=/nonexistent/wordnet").ok());
  options.prompts_dir = TempDir("bad_prompts");
  report = TrainDemoModel(recipe, options);
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("/nonexistent/wordnet/index.noun"), std::string::npos)
      << report.status().ToString();
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".partial"));
  EXPECT_FALSE(fs::exists(options.prompts_dir));
}

}  // namespace
}  // namespace knockout::organism
