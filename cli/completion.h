// `knockout completion bash|zsh`: a shell completion script written from the CLI's own command
// tree (subcommands, their flags), so that it never falls behind the commands. Bash completes
// the subcommand, then its flags after "-", and file names elsewhere (specs, stores, outputs);
// zsh loads the same function through bashcompinit. Thread-safety: stateless.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "common/status.h"

namespace knockout::cli {

// The script for `shell` ("bash" or "zsh") completing `program` (the command's name).
// InvalidArgument naming the shells for any other.
StatusOr<std::string> CompletionScript(CLI::App& app, const std::string& program,
                                       const std::string& shell);

}  // namespace knockout::cli
