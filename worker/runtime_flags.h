// The runtime's command-line flags shared by the LibTorch processes (knockout-worker's tools,
// knockout-organism): --device, --dtype, --threads, and how they become model::LoadOptions.
// Header-only (CLI11); ApplyRuntimeFlags sets LibTorch's process-wide thread count.
#pragma once

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <string>
#include <thread>

#include "common/status.h"
#include "worker/model/model.h"

namespace knockout::worker {

struct RuntimeFlags {
  std::string device = "cpu";
  std::string dtype = "f32";
  int threads = 0;  // 0: all cores
};

inline void AddRuntimeFlags(CLI::App* app, RuntimeFlags* flags) {
  app->add_option("--device", flags->device, "cpu or cuda[:N]");
  app->add_option("--dtype", flags->dtype, "compute dtype: f32, bf16 or f16");
  app->add_option("--threads", flags->threads, "LibTorch CPU threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
}

// Sets LibTorch's CPU threads; InvalidArgument for an unknown device or dtype.
inline StatusOr<model::LoadOptions> ApplyRuntimeFlags(const RuntimeFlags& flags) {
  const int threads = flags.threads > 0 ? flags.threads
                                        : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  model::LoadOptions options;
  KO_ASSIGN_OR_RETURN(options.device, model::ParseDevice(flags.device));
  KO_ASSIGN_OR_RETURN(options.dtype, model::ParseComputeDType(flags.dtype));
  return options;
}

}  // namespace knockout::worker
