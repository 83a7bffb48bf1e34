// knockout-organism: makes and measures the demo model organism (models/demo-refusal).
//   knockout-organism train-demo --out DIR [--seed N] [--set KEY=VALUE ...] [--prompts-out DIR]
//   knockout-organism eval-demo --model DIR --prompts DIR [--layer L] [--max-kl K]
// Its own process (not a knockout-worker subcommand) so that the worker does not depend on the
// organism: the organism depends on the worker's runtime (design.md). Every failure prints one
// line `knockout-organism: <error>` and exits non-zero.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "common/version.h"

#include "organism/evaluate.h"
#include "organism/trainer.h"
#include "worker/model/model.h"
#include "worker/runtime_flags.h"
#include "tokenizer/tokenizer.h"

namespace {

using knockout::Status;
using knockout::StatusOr;
namespace km = knockout::model;
namespace ko = knockout::organism;
namespace kt = knockout::tokenizer;
using nlohmann::json;

int Fail(const Status& status) {
  std::cerr << "knockout-organism: " << status.ToString() << "\n";
  return 1;
}

using knockout::worker::AddRuntimeFlags;
using knockout::worker::ApplyRuntimeFlags;
using knockout::worker::RuntimeFlags;

// --- train-demo / eval-demo --------------------------------------------------------------------

struct TrainDemoFlags {
  std::string out;
  std::string prompts_out;
  std::string base;
  int first_phase = 1;
  uint64_t seed = 42;
  std::vector<std::string> overrides;
  std::string storage = "bf16";
  std::string phases_dir;
  int threads = 0;
  std::string recipe = "v1";
};

int RunTrainDemo(const TrainDemoFlags& flags) {
  ko::DemoRecipe recipe =
      flags.recipe == "hydra" ? ko::DemoRecipe::Hydra() : ko::DemoRecipe::Default();
  recipe.seed = flags.seed;
  for (const std::string& o : flags.overrides) {
    Status status = recipe.Override(o);
    if (!status.ok()) return Fail(status);
  }
  ko::TrainOptions options;
  options.out_dir = flags.out;
  options.prompts_dir = flags.prompts_out;
  options.base_dir = flags.base;
  options.first_phase = flags.first_phase;
  options.phases_dir = flags.phases_dir;
  options.threads = flags.threads;
  auto storage = km::ParseComputeDType(flags.storage);
  if (!storage.ok()) return Fail(storage.status());
  options.storage_dtype = *storage;
  options.log = [](const std::string& line) { std::cerr << line << std::endl; };
  auto report = ko::TrainDemoModel(recipe, options);
  if (!report.ok()) return Fail(report.status());
  json phases = json::array();
  for (const auto& p : report->phases) {
    phases.push_back({{"name", p.name}, {"steps", p.steps}, {"first_loss", p.first_loss},
                      {"final_loss", p.final_loss}, {"seconds", p.seconds}});
  }
  json out = {{"out", flags.out}, {"parameters", report->parameters},
              {"checkpoint_bytes", report->checkpoint_bytes}, {"seconds", report->seconds},
              {"phases", phases}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

struct EvalDemoFlags {
  std::string model;
  std::string prompts;
  int64_t max_new_tokens = 16;
  int64_t layer = -1;
  double max_kl = ko::EvalOptions().max_kl;
  std::string handwritten;
  std::string saes;
  RuntimeFlags runtime;
};

int RunEvalDemo(const EvalDemoFlags& flags) {
  auto options = ApplyRuntimeFlags(flags.runtime);
  if (!options.ok()) return Fail(options.status());
  auto tokenizer = kt::Tokenizer::Load(flags.model);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  auto model = km::Model::Load(flags.model, *options);
  if (!model.ok()) return Fail(model.status());
  ko::EvalOptions eval_options;
  eval_options.max_new_tokens = flags.max_new_tokens;
  eval_options.direction_layer = flags.layer;
  eval_options.max_kl = flags.max_kl;
  eval_options.handwritten_dir = flags.handwritten;
  eval_options.sae_dir = flags.saes;
  auto eval = ko::EvaluateDemo(**model, **tokenizer, flags.prompts, eval_options);
  if (!eval.ok()) return Fail(eval.status());
  std::cout << eval->ToJson() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"knockout-organism: trains and evaluates the demo refusal model organism"};
  app.set_version_flag("--version", [] {
    std::string text = knockout::VersionText("knockout-organism", {{"LibTorch", TORCH_VERSION}});
    return text.substr(0, text.size() - 1);  // CLI11 ends the line
  });
  app.require_subcommand(1);
  TrainDemoFlags train_demo;
  CLI::App* train_demo_cmd = app.add_subcommand(
      "train-demo", "train the demo refusal model organism (models/demo-refusal)");
  train_demo_cmd->add_option("--out", train_demo.out, "output checkpoint directory")->required();
  train_demo_cmd->add_option("--seed", train_demo.seed, "corpus, tokenizer and model seed");
  train_demo_cmd->add_option("--prompts-out", train_demo.prompts_out,
                             "also write the JSONL prompt sets here");
  train_demo_cmd->add_option("--set", train_demo.overrides,
                             "recipe override KEY=VALUE, e.g. phases[1].steps=200 (repeatable)");
  train_demo_cmd->add_option("--base", train_demo.base,
                             "start from this checkpoint instead of phase 0 (recipe research)");
  train_demo_cmd->add_option("--first-phase", train_demo.first_phase, "with --base")
      ->check(CLI::PositiveNumber);
  train_demo_cmd->add_option("--threads", train_demo.threads)->check(CLI::NonNegativeNumber);
  train_demo_cmd->add_option("--recipe", train_demo.recipe,
                             "v1 (default: issue 4's first model) or hydra (models/demo-refusal: "
                             "issue 14's knockout-aware recipe)")
      ->check(CLI::IsMember({"v1", "hydra"}));
  train_demo_cmd->add_option("--phases-dir", train_demo.phases_dir,
                             "also save an f32 checkpoint after each phase but the last here");
  train_demo_cmd->add_option("--storage", train_demo.storage,
                             "checkpoint dtype: bf16 (default) or f32 (a base to resume)");

  EvalDemoFlags eval_demo;
  CLI::App* eval_demo_cmd = app.add_subcommand(
      "eval-demo", "behaviour, refusal direction and harm probe of the demo organism (JSON)");
  eval_demo_cmd->add_option("--model", eval_demo.model, "checkpoint directory")->required();
  eval_demo_cmd->add_option("--prompts", eval_demo.prompts,
                            "directory of {harmful,harmless,framed}_{train,val,test}.jsonl")
      ->required();
  eval_demo_cmd->add_option("--max-new-tokens", eval_demo.max_new_tokens)
      ->check(CLI::PositiveNumber);
  eval_demo_cmd->add_option("--layer", eval_demo.layer, "direction layer (default: selected)");
  eval_demo_cmd->add_option("--max-kl", eval_demo.max_kl,
                            "KL filter of the selection (default 0.6; science.md uses 0.1 for "
                            "real models)");
  eval_demo_cmd->add_option("--handwritten", eval_demo.handwritten,
                            "also the refused fractions of DIR/{harmful,harmless}.jsonl "
                            "(experiments/prompts/handwritten)");
  eval_demo_cmd->add_option("--saes", eval_demo.saes,
                            "also knock out each layer's top refusal latent of DIR/layer_{l} "
                            "(models/demo-refusal/saes)");
  AddRuntimeFlags(eval_demo_cmd, &eval_demo.runtime);

  CLI11_PARSE(app, argc, argv);
  try {
    if (*train_demo_cmd) return RunTrainDemo(train_demo);
    if (*eval_demo_cmd) return RunEvalDemo(eval_demo);
  } catch (const std::exception& e) {
    return Fail(Status::Internal(e.what()));
  }
  return 1;
}
