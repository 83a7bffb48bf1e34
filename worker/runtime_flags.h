// The runtime's command-line flags shared by the LibTorch processes (knockout-worker's tools,
// knockout-organism): --device, --dtype, --threads, and how they become model::LoadOptions; and
// the token id lists of --ids.
// Header-only (CLI11); ApplyRuntimeFlags sets LibTorch's process-wide thread count.
#pragma once

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

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

// "1,2,3" (an --ids value) as token ids; InvalidArgument naming the item that is not an integer.
inline StatusOr<std::vector<int64_t>> ParseIdList(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) {
      return Status::InvalidArgument("--ids \"" + text + "\": \"" + item +
                                     "\" is not an integer token id");
    }
    ids.push_back(value);
  }
  if (ids.empty()) return Status::InvalidArgument("--ids: empty token list");
  return ids;
}

}  // namespace knockout::worker
