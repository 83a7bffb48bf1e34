// knockout-worker's SAE trainer (worker/sae/train.h, worker/sae/evaluate.h):
//   knockout-worker train-sae --model DIR --hook NAME --prompts FILE... --out DIR
//       [--arch topk|jumprelu] [--latents N] [--k K] [--steps S] [--seed S] [--lr X]
//       [--batch-tokens N] [--eval-prompts FILE...] [--holdout-every N] [--overwrite] ...
// trains an SAE on the model's activations at the hook over the chat-templated prompts and
// writes it in SAELens layout (cfg.json + sae_weights.safetensors, float32) with the recipe (the
// command line less --out/--overwrite/--log-every, every option, the seed) and the measured
// quality in cfg.json's `metadata.training`: the same command gives byte-identical files at the
// same thread count (--threads, default 1), wherever they are written. The directory appears whole or not at
// all (written under a temporary name, then renamed). Progress and a human summary go to
// stderr, one JSON object (the report) to stdout. Every failure prints one line
// `knockout-worker: <message naming the flag or file>` and exits 1.
//
// Thread-safety: a command-line entry point, run once per process.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

namespace knockout::worker {

class TrainSaeCommand {
 public:
  // Adds `train-sae` to `app`; argc/argv are recorded as the recipe's command line.
  TrainSaeCommand(CLI::App* app, int argc, char** argv);
  ~TrainSaeCommand();
  TrainSaeCommand(const TrainSaeCommand&) = delete;
  TrainSaeCommand& operator=(const TrainSaeCommand&) = delete;

  // Whether the command line chose `train-sae` (after parsing).
  bool Selected() const;
  // Runs it; the process's exit code.
  int Run() const;

 private:
  struct Flags;
  std::unique_ptr<Flags> flags_;
  CLI::App* command_ = nullptr;
};

}  // namespace knockout::worker
