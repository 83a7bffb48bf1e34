// knockout-worker's SAE tools (worker/sae):
//   knockout-worker sae inspect PATH [--hook NAME] [--json]
//   knockout-worker sae encode --model DIR --sae PATH [--hook NAME] --ids 1,2,3 [--ids ...]
//                              [--json] [--top-k K | --dense] [--device D] [--dtype T]
// and the flags `forward` gains: --sae PATH [--hook NAME] --sae-clamp LATENT=VALUE [...], which
// clamp those latents at every position with the error term kept. Failures are Status values;
// the commands print them as one line `knockout-worker: <message>` and exit 1.
//
// Thread-safety: command-line entry points, run once per process.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"

namespace knockout::worker {

// `forward`'s SAE flags.
struct SaeForwardFlags {
  std::string sae;                  // --sae PATH
  std::string hook;                 // --hook NAME (default: the file's hook)
  std::vector<std::string> clamps;  // --sae-clamp LATENT=VALUE (repeatable)
};
void AddSaeForwardFlags(CLI::App* forward, SaeForwardFlags* flags);

// The hook registry that applies `flags` to `model`'s forward pass: null when no --sae and no
// --sae-clamp was given. InvalidArgument for --sae without --sae-clamp or the reverse, a clamp
// that is not LATENT=VALUE, a latent out of range or given twice; Sae::Load's errors.
StatusOr<std::unique_ptr<model::HookRegistry>> SaeForwardHooks(const SaeForwardFlags& flags,
                                                               const model::Model& model);

// The `sae` subcommand and its `inspect` and `encode` subcommands, added to `app`.
class SaeCommands {
 public:
  explicit SaeCommands(CLI::App* app);
  ~SaeCommands();
  SaeCommands(const SaeCommands&) = delete;
  SaeCommands& operator=(const SaeCommands&) = delete;

  // Whether the command line chose `sae ...` (after parsing).
  bool Selected() const;
  // Runs the chosen subcommand; the process's exit code (0, or 1 after one error line).
  int Run() const;

 private:
  struct Flags;
  std::unique_ptr<Flags> flags_;
  CLI::App* sae_ = nullptr;
  CLI::App* inspect_ = nullptr;
  CLI::App* encode_ = nullptr;
};

}  // namespace knockout::worker
