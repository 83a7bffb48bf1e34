#include "worker/train_sae_command.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <system_error>
#include <vector>

#include "common/progress.h"
#include "common/status.h"
#include "formats/prompt_set.h"
#include "formats/sae.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "worker/chat/chat_generation.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "worker/runtime_flags.h"
#include "worker/sae/evaluate.h"
#include "worker/sae/sae.h"
#include "worker/sae/train.h"

namespace knockout::worker {
namespace {

namespace fs = std::filesystem;
namespace kt = knockout::tokenizer;
using nlohmann::json;

int Fail(const Status& status) {
  std::cerr << "knockout-worker: " << status.ToString() << "\n";
  return 1;
}

// argv as one shell line (arguments quoted where a shell would split or expand them), the
// program named `knockout-worker` whatever path ran it. Where the SAE is written and how much is
// logged do not change it, so --out, --overwrite and --log-every are left out: the recipe of a
// retrained copy written elsewhere is byte-identical.
std::string CommandLine(int argc, char** argv) {
  std::string line = "knockout-worker";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--overwrite" || arg.rfind("--out=", 0) == 0 || arg.rfind("--log-every=", 0) == 0) {
      continue;
    }
    if (arg == "--out" || arg == "--log-every") {
      ++i;  // and its value
      continue;
    }
    const bool plain = !arg.empty() && arg.find_first_not_of(
                                           "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                           "0123456789-_./=:,+@") == std::string::npos;
    if (plain) {
      line += " " + arg;
    } else {
      std::string quoted = "'";
      for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
      line += " " + quoted + "'";
    }
  }
  return line;
}

// One prompt file, tokenized.
struct PromptFile {
  std::string path;
  std::vector<kt::TokenizedPrompt> prompts;
};

StatusOr<PromptFile> LoadPromptFile(const std::string& flag, const std::string& path,
                                    const kt::Tokenizer& tokenizer, const kt::ChatTemplate& chat) {
  StatusOr<std::vector<formats::Prompt>> prompts = formats::LoadPromptSet(path);
  if (!prompts.ok()) return prompts.status().WithContext(flag);
  if (prompts->empty()) return Status::InvalidArgument(flag + " " + path + ": no prompts");
  std::vector<std::string> instructions;
  for (const formats::Prompt& p : *prompts) instructions.push_back(p.instruction);
  StatusOr<std::vector<kt::TokenizedPrompt>> tokenized =
      chat::TokenizeInstructions(tokenizer, chat, instructions);
  if (!tokenized.ok()) return tokenized.status().WithContext(flag + " " + path);
  PromptFile file;
  file.path = path;
  for (size_t i = 0; i < tokenized->size(); ++i) {
    if ((*tokenized)[i].ids.size() < 2) {
      return Status::InvalidArgument(flag + " " + path + ":" + std::to_string((*prompts)[i].line) +
                                     ": the prompt has fewer than 2 tokens");
    }
    file.prompts.push_back(std::move((*tokenized)[i]));
  }
  return file;
}

json CostJson(const sae::SpliceCost& c) {
  return {{"tokens", c.tokens},         {"ce_clean", c.ce_clean}, {"ce_spliced", c.ce_spliced},
          {"ce_zero", c.ce_zero},       {"ce_recovered", c.ce_recovered}, {"kl", c.kl}};
}

json EvaluationJson(const sae::SaeEvaluation& e) {
  json out = {{"prompts", e.sequences},       {"positions", e.positions},
              {"fvu", e.fvu},                 {"l0", e.l0},
              {"dead_latents", e.dead_latents}, {"dead_fraction", e.dead_fraction},
              {"prompt", CostJson(e.prompt)}};
  if (e.response.tokens > 0) out["response"] = CostJson(e.response);
  return out;
}

std::string Fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

std::string CostText(const sae::SpliceCost& c) {
  return "CE " + Fixed(c.ce_clean, 3) + " -> " + Fixed(c.ce_spliced, 3) + " (zeroed " +
         Fixed(c.ce_zero, 3) + ", " + Fixed(100 * c.ce_recovered, 1) + "% recovered), KL " +
         Fixed(c.kl, 4);
}

std::string EvaluationLine(const std::string& name, const sae::SaeEvaluation& e) {
  std::ostringstream out;
  out << "  " << name << " (" << e.sequences << " prompts, " << e.positions << " positions): FVU "
      << Fixed(e.fvu, 4) << ", L0 " << Fixed(e.l0, 1) << ", dead " << Fixed(100 * e.dead_fraction, 1)
      << "%\n    spliced, prompt tokens: " << CostText(e.prompt);
  if (e.response.tokens > 0) {
    out << "\n    spliced, response tokens (" << e.response.tokens << "): " << CostText(e.response);
  }
  return out.str();
}

// The prompts followed by the clean model's greedy responses (`new_tokens` 0: none).
StatusOr<std::vector<sae::EvalSequence>> WithResponses(
    const model::Model& model, const kt::Tokenizer& tokenizer,
    const std::vector<kt::TokenizedPrompt>& prompts, int64_t new_tokens, int64_t batch_prompts) {
  std::vector<sae::EvalSequence> sequences;
  for (const kt::TokenizedPrompt& p : prompts) sequences.push_back({p.ids, p.size()});
  if (new_tokens == 0) return sequences;
  chat::ChatGenerationOptions generation;
  generation.max_new_tokens = new_tokens;
  generation.batch_size = batch_prompts;
  KO_ASSIGN_OR_RETURN(std::vector<std::vector<int64_t>> conversations,
                      chat::PromptsWithCompletions(model, tokenizer, prompts, generation));
  for (size_t i = 0; i < sequences.size(); ++i) sequences[i].ids = std::move(conversations[i]);
  return sequences;
}

// Writes the SAE to `out` atomically: a temporary sibling directory renamed into place (an
// existing `out` is replaced only with `overwrite`, and only once the new one is complete).
Status WriteOutput(const std::string& out, bool overwrite, const formats::SaeWeights& weights,
                   const json& metadata) {
  const fs::path target = fs::path(out).lexically_normal();
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string name = target.filename().string();
  const std::string suffix = std::to_string(::getpid());
  const fs::path temp = parent / ("." + name + ".tmp-" + suffix);
  const fs::path old = parent / ("." + name + ".old-" + suffix);
  std::error_code ec;
  fs::remove_all(temp, ec);
  Status written = formats::WriteSaeLens(temp.string(), weights, metadata.dump());
  if (!written.ok()) {
    fs::remove_all(temp, ec);
    return written.WithContext("--out " + out);
  }
  const bool replace = fs::exists(target, ec);
  if (replace) {
    if (!overwrite) {
      fs::remove_all(temp, ec);
      return Status::InvalidArgument("--out " + out + ": exists (give --overwrite to replace it)");
    }
    fs::rename(target, old, ec);
    if (ec) {
      fs::remove_all(temp, ec);
      return Status::IOError("--out " + out + ": cannot move the old directory aside: " + ec.message());
    }
  }
  fs::rename(temp, target, ec);
  if (ec) {
    const std::string reason = ec.message();
    if (replace) fs::rename(old, target, ec);
    fs::remove_all(temp, ec);
    return Status::IOError("--out " + out + ": cannot rename " + temp.string() + ": " + reason);
  }
  if (replace) fs::remove_all(old, ec);
  return Status::Ok();
}

}  // namespace

struct TrainSaeCommand::Flags {
  std::string command_line;
  std::string model;
  std::string hook;
  std::vector<std::string> prompts;
  std::vector<std::string> eval_prompts;
  std::string out;
  std::string arch = "topk";
  std::string chat_template;
  sae::SaeTrainOptions options;
  int64_t holdout_every = 10;
  int64_t new_tokens = 0;
  int64_t batch_prompts = 32;
  int64_t log_every = 100;
  bool overwrite = false;
  RuntimeFlags runtime;
};

TrainSaeCommand::TrainSaeCommand(CLI::App* app, int argc, char** argv)
    : flags_(std::make_unique<Flags>()) {
  Flags& f = *flags_;
  f.command_line = CommandLine(argc, argv);
  f.runtime.threads = 1;  // bit-exact reproduction (train.h): a fixed thread count
  command_ = app->add_subcommand(
      "train-sae", "train a TopK or JumpReLU SAE on a model's activations at one hook");
  CLI::App* c = command_;
  c->add_option("--model", f.model, "checkpoint directory with tokenizer files")->required();
  c->add_option("--hook", f.hook, "hook, e.g. blocks.3.hook_resid_post")->required();
  c->add_option("--prompts", f.prompts, "training prompt sets (.jsonl/.json/.csv), chat-templated")
      ->required();
  c->add_option("--out", f.out, "output directory (SAELens: cfg.json + sae_weights.safetensors)")
      ->required();
  c->add_option("--arch", f.arch, "topk (default) or jumprelu")
      ->check(CLI::IsMember({"topk", "jumprelu"}));
  c->add_option("--latents", f.options.d_sae, "SAE width (default 4 x d_in)")
      ->check(CLI::PositiveNumber);
  c->add_option("--k", f.options.k, "topk: active latents per token (default 32)")
      ->check(CLI::PositiveNumber);
  c->add_option("--steps", f.options.steps, "optimiser steps (default 2000)")
      ->check(CLI::PositiveNumber);
  c->add_option("--seed", f.options.seed, "initialisation and data-order seed (default 0)");
  c->add_option("--lr", f.options.lr,
                "Adam learning rate (default 2e-4 / sqrt(latents / 16384))")
      ->check(CLI::PositiveNumber);
  c->add_option("--batch-tokens", f.options.batch_tokens, "rows per step (default 1024)")
      ->check(CLI::PositiveNumber);
  c->add_option("--buffer-tokens", f.options.buffer_tokens,
                "most activation rows held in memory (default 262144)")
      ->check(CLI::PositiveNumber);
  c->add_option("--eval-prompts", f.eval_prompts,
                "prompt sets to report FVU, L0, dead latents and spliced CE/KL on, each apart");
  c->add_option("--holdout-every", f.holdout_every,
                "hold out every N-th training prompt (index % N == N - 1 over the --prompts "
                "files in order) for the held-out report; 0: none (default 10)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--new-tokens", f.new_tokens,
                "each prompt (training, held-out, eval) is followed by the clean model's greedy "
                "response of up to N tokens, trained and measured on like the prompt; 0: "
                "prompts only (default)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--dead-tokens", f.options.dead_tokens,
                "topk AuxK: a latent inactive for this many rows is dead (default 200000)")
      ->check(CLI::PositiveNumber);
  c->add_option("--k-aux", f.options.k_aux, "topk AuxK: latents (default d_in / 2)")
      ->check(CLI::PositiveNumber);
  c->add_option("--aux-coefficient", f.options.aux_coefficient,
                "topk AuxK: loss weight (default 1/32)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--l0-coefficient", f.options.l0_coefficient,
                "jumprelu: L0 penalty per unit of FVU (default 0.002)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--bandwidth", f.options.bandwidth,
                "jumprelu: the STE's rectangle width, in units of the data's per-dimension "
                "standard deviation (default 0.05)")
      ->check(CLI::PositiveNumber);
  c->add_option("--initial-threshold", f.options.initial_threshold,
                "jumprelu: initial threshold, same units (default 0.1)")
      ->check(CLI::PositiveNumber);
  c->add_option("--batch-prompts", f.batch_prompts,
                "prompts per forward pass when collecting activations (default 32)")
      ->check(CLI::PositiveNumber);
  c->add_option("--template", f.chat_template,
                "custom chat template with {instruction} (default: the tokenizer's)");
  c->add_option("--log-every", f.log_every, "progress line every N steps (default 100)")
      ->check(CLI::PositiveNumber);
  c->add_flag("--overwrite", f.overwrite, "replace an existing --out directory");
  c->add_option("--device", f.runtime.device, "cpu or cuda[:N]");
  c->add_option("--dtype", f.runtime.dtype, "the model's compute dtype: f32, bf16 or f16");
  c->add_option("--threads", f.runtime.threads,
                "LibTorch CPU threads (default 1: results are bit-identical for a given thread "
                "count)")
      ->check(CLI::PositiveNumber);
}

TrainSaeCommand::~TrainSaeCommand() = default;

bool TrainSaeCommand::Selected() const { return command_->parsed(); }

int TrainSaeCommand::Run() const {
  const Flags& f = *flags_;
  sae::SaeTrainOptions options = f.options;
  options.architecture =
      f.arch == "jumprelu" ? formats::SaeArchitecture::kJumpRelu : formats::SaeArchitecture::kTopK;
  std::error_code ec;
  if (fs::exists(f.out, ec) && !f.overwrite) {
    return Fail(Status::InvalidArgument("--out " + f.out +
                                        ": exists (give --overwrite to replace it)"));
  }
  StatusOr<model::LoadOptions> load = ApplyRuntimeFlags(f.runtime);
  if (!load.ok()) return Fail(load.status());

  // The prompts are tokenized as the sweeps' are (worker/executor): the tokenizer's chat
  // template, or the custom one given.
  auto tokenizer = kt::Tokenizer::Load(f.model);
  if (!tokenizer.ok()) return Fail(tokenizer.status().WithContext("--model"));
  StatusOr<kt::ChatTemplate> chat = f.chat_template.empty()
                                        ? kt::ChatTemplate::Detect(**tokenizer)
                                        : kt::ChatTemplate::Custom(f.chat_template);
  if (!chat.ok()) {
    return Fail(chat.status().WithContext(f.chat_template.empty() ? "--model " + f.model +
                                                                        ": chat template"
                                                                  : "--template"));
  }
  std::vector<PromptFile> train_files, eval_files;
  for (const std::string& path : f.prompts) {
    auto file = LoadPromptFile("--prompts", path, **tokenizer, *chat);
    if (!file.ok()) return Fail(file.status());
    train_files.push_back(std::move(*file));
  }
  for (const std::string& path : f.eval_prompts) {
    auto file = LoadPromptFile("--eval-prompts", path, **tokenizer, *chat);
    if (!file.ok()) return Fail(file.status());
    eval_files.push_back(std::move(*file));
  }
  auto model = model::Model::Load(f.model, *load);
  if (!model.ok()) return Fail(model.status().WithContext("--model"));
  const model::ModelConfig& config = (*model)->config();
  auto hook = model::HookPoint::Parse(f.hook, config.num_layers);
  if (!hook.ok()) return Fail(hook.status().WithContext("--hook"));
  auto width = sae::SaeHookWidth(config, *hook);
  if (!width.ok()) return Fail(width.status().WithContext("--hook"));
  Status valid = sae::ValidateTrainOptions(options, *width);
  if (!valid.ok()) return Fail(valid);
  const int64_t pad_id = chat::PadTokenId(**model, **tokenizer);

  // Every holdout_every-th prompt of the --prompts files, in order, is held out.
  std::vector<kt::TokenizedPrompt> train_prompts;
  std::vector<kt::TokenizedPrompt> held_out;
  int64_t index = 0;
  for (const PromptFile& file : train_files) {
    for (const kt::TokenizedPrompt& prompt : file.prompts) {
      const bool hold = f.holdout_every > 0 && index % f.holdout_every == f.holdout_every - 1;
      if (hold) {
        held_out.push_back(prompt);
      } else {
        train_prompts.push_back(prompt);
      }
      ++index;
    }
  }
  if (train_prompts.empty()) {
    return Fail(Status::InvalidArgument("--prompts: no prompt left to train on"));
  }
  std::vector<std::vector<int64_t>> train;
  {
    auto sequences = WithResponses(**model, **tokenizer, train_prompts, f.new_tokens,
                                   f.batch_prompts);
    if (!sequences.ok()) return Fail(sequences.status().WithContext("--prompts"));
    for (sae::EvalSequence& s : *sequences) train.push_back(std::move(s.ids));
  }

  auto source = sae::PromptActivationSource::Create(**model, *hook, train, pad_id, f.batch_prompts);
  if (!source.ok()) return Fail(source.status());
  const int64_t d_sae = options.d_sae > 0 ? options.d_sae : 4 * *width;
  std::cerr << "train-sae: " << f.arch << " SAE, " << d_sae << " latents"
            << (f.arch == "topk" ? ", k " + std::to_string(options.k) : std::string()) << ", at "
            << hook->Name() << " of " << f.model << ": " << train.size() << " prompts ("
            << (*source)->RowsPerPass() << " positions), " << held_out.size()
            << " held out; " << options.steps << " steps of " << options.batch_tokens
            << " rows, seed " << options.seed << ", " << at::get_num_threads() << " thread(s)\n";
  const auto start = std::chrono::steady_clock::now();
  auto result = sae::TrainSae(
      **source, options, hook->Name(),
      [&](const sae::TrainProgress& p) {
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::cerr << "  step " << ProgressText(p.stats.step, options.steps, elapsed) << "  loss "
                  << Fixed(p.stats.loss, 5) << "  fvu " << Fixed(p.stats.fvu, 5) << "  l0 "
                  << Fixed(p.stats.l0, 1) << "  dead " << p.stats.dead << "  lr " << p.stats.lr
                  << "  epochs " << p.epochs << "\n";
      },
      f.log_every);
  if (!result.ok()) return Fail(result.status());
  const double train_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  auto runtime = sae::Sae::FromWeights(result->weights, config, (*model)->device(),
                                       (*model)->dtype());
  if (!runtime.ok()) return Fail(runtime.status().WithContext("train-sae: the trained SAE"));
  json metrics = json::object();
  std::vector<std::string> summary;
  at::Tensor ever_active = at::zeros({d_sae}, at::kBool);
  sae::EvaluateOptions evaluate;
  evaluate.batch_prompts = f.batch_prompts;
  if (!held_out.empty()) {
    auto sequences = WithResponses(**model, **tokenizer, held_out, f.new_tokens,
                                   f.batch_prompts);
    if (!sequences.ok()) return Fail(sequences.status().WithContext("held-out prompts"));
    auto e = sae::EvaluateSae(**model, *runtime, *sequences, pad_id, evaluate);
    if (!e.ok()) return Fail(e.status().WithContext("held-out prompts"));
    metrics["held_out"] = EvaluationJson(*e);
    summary.push_back(EvaluationLine("held out", *e));
    ever_active.logical_or_(e->ever_active);
  }
  json eval_metrics = json::object();
  for (const PromptFile& file : eval_files) {
    auto sequences = WithResponses(**model, **tokenizer, file.prompts, f.new_tokens,
                                   f.batch_prompts);
    if (!sequences.ok()) return Fail(sequences.status().WithContext("--eval-prompts " + file.path));
    auto e = sae::EvaluateSae(**model, *runtime, *sequences, pad_id, evaluate);
    if (!e.ok()) return Fail(e.status().WithContext("--eval-prompts " + file.path));
    eval_metrics[file.path] = EvaluationJson(*e);
    summary.push_back(EvaluationLine(file.path, *e));
    ever_active.logical_or_(e->ever_active);
  }
  if (!eval_files.empty()) metrics["eval"] = eval_metrics;
  if (!held_out.empty() || !eval_files.empty()) {
    const int64_t dead = d_sae - ever_active.sum().item<int64_t>();
    metrics["dead_latents_all"] = dead;
    metrics["dead_fraction_all"] = static_cast<double>(dead) / static_cast<double>(d_sae);
  }

  const sae::TrainStepStats& tail = result->final_mean;
  json recipe = {
      {"tool", "knockout-worker train-sae"},
      {"command", f.command_line},
      {"model", f.model},
      {"hook", hook->Name()},
      {"prompts", f.prompts},
      {"eval_prompts", f.eval_prompts},
      {"chat_template", f.chat_template.empty() ? std::string((*chat).FamilyName()) : f.chat_template},
      {"positions", f.new_tokens > 0
                        ? "every position but the first of each chat-templated prompt followed "
                          "by the model's greedy answer (at most new_tokens tokens, EOS included)"
                        : "every position of each chat-templated prompt but its first"},
      {"held_out", "the prompts whose index over the prompts files, in order, is "
                   "holdout_every - 1 modulo holdout_every"},
      {"holdout_every", f.holdout_every},
      {"new_tokens", f.new_tokens},
      {"batch_prompts", f.batch_prompts},
      {"train_prompts", train.size()},
      {"held_out_prompts", held_out.size()},
      {"train_positions", (*source)->RowsPerPass()},
      {"architecture", f.arch},
      {"d_sae", d_sae},
      {"k", f.arch == "topk" ? options.k : 0},
      {"steps", options.steps},
      {"batch_tokens", options.batch_tokens},
      {"buffer_tokens", options.buffer_tokens},
      {"lr", result->lr},
      {"adam", {{"beta1", options.adam_beta1}, {"beta2", options.adam_beta2},
                {"epsilon", options.adam_epsilon}}},
      {"schedule", {{"warmup_fraction", options.warmup_fraction},
                    {"decay_fraction", options.decay_fraction}}},
      {"seed", options.seed},
      {"threads", at::get_num_threads()},
      {"compute_dtype", f.runtime.dtype},
      {"data_scale", result->scale},
      {"rows_seen", result->rows_seen},
      {"epochs", result->epochs},
      {"final_train", {{"fvu", tail.fvu}, {"l0", tail.l0}, {"dead", tail.dead},
                       {"aux_loss", tail.aux_loss}, {"loss", tail.loss}}},
      {"metrics", metrics},
  };
  if (f.arch == "topk") {
    recipe["auxk"] = {{"k_aux", options.k_aux > 0 ? options.k_aux : *width / 2},
                      {"coefficient", options.aux_coefficient},
                      {"dead_tokens", options.dead_tokens}};
  } else {
    recipe["jumprelu"] = {{"l0_coefficient", options.l0_coefficient},
                          {"l0_warmup_fraction", options.l0_warmup_fraction},
                          {"bandwidth", options.bandwidth},
                          {"initial_threshold", options.initial_threshold}};
  }
  Status written = WriteOutput(f.out, f.overwrite, result->weights, json{{"training", recipe}});
  if (!written.ok()) return Fail(written);

  std::cerr << "train-sae: " << result->rows_seen << " rows (" << result->epochs
            << " epochs) in " << Fixed(train_seconds, 1) << " s, "
            << Fixed(static_cast<double>(result->rows_seen) / train_seconds, 0)
            << " rows/s; last 5% of steps: FVU " << Fixed(tail.fvu, 4) << ", L0 "
            << Fixed(tail.l0, 1) << ", dead " << tail.dead << "\n";
  for (const std::string& line : summary) std::cerr << line << "\n";
  std::cerr << "  wrote " << f.out << " (cfg.json + sae_weights.safetensors)\n";
  json report = recipe;
  report["out"] = f.out;
  report["train_seconds"] = train_seconds;
  report["rows_per_second"] = static_cast<double>(result->rows_seen) / train_seconds;
  std::cout << report.dump() << "\n";
  return 0;
}

}  // namespace knockout::worker
