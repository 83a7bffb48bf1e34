// SAE training throughput (issue 13): optimiser steps per second of worker/sae's trainer, in
// training rows (tokens) per second, on random activation rows held in memory (no model: the
// step's cost alone; `train-sae` adds the forward passes that collect activations, which its
// report times separately as part of train_seconds).
//
//   sae_train_bench [--threads N] [--steps S] [--config NAME]
// Configurations: demo (d_in 256, 1024 latents: the shipped demo SAEs' shape), demo-jumprelu,
// d768-16k (d_in 768, 16,384 latents: the 12-layer d768 benchmark model's scale). One JSON line
// per configuration: rows/s, ms/step.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "worker/sae/train.h"

namespace {

using knockout::formats::SaeArchitecture;
using knockout::sae::SaeTrainer;
using knockout::sae::SaeTrainOptions;

struct Config {
  const char* name;
  SaeArchitecture architecture;
  int64_t d_in, d_sae, k, batch;
};

int Run(const Config& c, int64_t steps, int threads) {
  at::set_num_threads(threads);
  SaeTrainOptions o;
  o.architecture = c.architecture;
  o.d_sae = c.d_sae;
  o.k = c.k;
  o.batch_tokens = c.batch;
  o.steps = steps + 5;
  o.lr = 1e-3;
  o.dead_tokens = 1 << 30;  // no AuxK: its cost depends on how many latents die
  at::Generator g = at::detail::createCPUGenerator(1);
  // Rows with structure (a random rank-d_in/4 mixing plus noise), so that top-k is not flat.
  at::Tensor mix = at::randn({c.d_in / 4, c.d_in}, g);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 8; ++i) {
    batches.push_back(at::mm(at::randn({c.batch, c.d_in / 4}, g), mix) +
                      0.1 * at::randn({c.batch, c.d_in}, g));
  }
  auto trainer = SaeTrainer::Create(c.d_in, o);
  if (!trainer.ok()) {
    std::fprintf(stderr, "%s\n", trainer.status().ToString().c_str());
    return 1;
  }
  if (!(*trainer)->Initialize(at::cat(batches, 0)).ok()) return 1;
  for (int i = 0; i < 5; ++i) (*trainer)->Step(batches[i % batches.size()]);  // warm-up
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) (*trainer)->Step(batches[i % batches.size()]);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "{\"config\": \"%s\", \"architecture\": \"%s\", \"d_in\": %ld, \"d_sae\": %ld, \"k\": %ld, "
      "\"batch_rows\": %ld, \"threads\": %d, \"steps\": %ld, \"seconds\": %.3f, "
      "\"ms_per_step\": %.2f, \"rows_per_second\": %.0f}\n",
      c.name, c.architecture == SaeArchitecture::kTopK ? "topk" : "jumprelu",
      static_cast<long>(c.d_in), static_cast<long>(c.d_sae), static_cast<long>(c.k),
      static_cast<long>(c.batch), threads, static_cast<long>(steps), seconds,
      1e3 * seconds / static_cast<double>(steps),
      static_cast<double>(steps * c.batch) / seconds);
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  int64_t steps = 50;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (arg == "--steps" && i + 1 < argc) {
      steps = std::atol(argv[++i]);
    } else if (arg == "--config" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr, "usage: sae_train_bench [--threads N] [--steps S] [--config NAME]\n");
      return 2;
    }
  }
  const std::vector<Config> configs = {
      {"demo", SaeArchitecture::kTopK, 256, 1024, 32, 1024},
      {"demo-jumprelu", SaeArchitecture::kJumpRelu, 256, 1024, 0, 1024},
      {"d768-16k", SaeArchitecture::kTopK, 768, 16384, 32, 1024},
  };
  for (const Config& c : configs) {
    if (!only.empty() && only != c.name) continue;
    if (Run(c, c.d_sae > 4096 ? std::max<int64_t>(5, steps / 10) : steps, threads) != 0) return 1;
  }
  return 0;
}
