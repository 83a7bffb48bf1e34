// sae_sweep_bench: the cost of SAE latent knockouts against direction knockouts at the same
// hooks and positions, through the shard executor (issue 13).
//
// One TRIALS shard over the first --limit prompts of --prompts (chat-templated by the model's
// tokenizer), with --units trials per layer of --layers, each at blocks.L.hook_resid_post and
// --positions (all or post_inst):
//   --mode direction        project out a random unit direction (Ablation PROJECT)
//   --mode latent           zero one SAE latent (latents 0..units-1), error term kept
//   --mode latent_backups   the same, with backups read from an SAE at every layer of the model
// SAEs: --sae-root DIR (DIR/layer_L, SAELens layout: the demo model's shipped ones), or random
// ones written to a temp dir: --sae-latents N --sae-arch topk|jumprelu [--k K].
// trials/s = trials / seconds of ShardExecutor::Run (clean pass included), best of --repeat.
//
//   sae_sweep_bench --model DIR --prompts FILE --mode direction|latent|latent_backups
//       [--limit 16] [--layers 1,2,3] [--units 8] [--positions all|post_inst]
//       [--sae-root DIR | --sae-latents 16384 --sae-arch topk|jumprelu --k 32]
//       [--threads 2] [--repeat 3] [--json OUT]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/progress.h"
#include "formats/prompt_set.h"
#include "formats/sae.h"
#include "bench/random_sae.h"
#include "worker/executor/executor.h"
#include "worker/model/model.h"

namespace {

namespace fs = std::filesystem;
namespace ke = knockout::executor;
namespace kf = knockout::formats;
namespace v1 = knockout::v1;

struct Options {
  std::string model, prompts, mode, sae_root, sae_arch = "topk", json;
  std::string positions = "all";
  int limit = 16, units = 8, threads = 2, repeat = 3, sae_latents = 0, k = 32;
  std::vector<int> layers = {1, 2, 3};
};

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "sae_sweep_bench: %s\n", message.c_str());
  std::exit(2);
}

int ParseInt(const std::string& flag, const std::string& value, int minimum) {
  char* end = nullptr;
  const long parsed = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || parsed < minimum) {
    Fail(flag + " " + value + ": expected an integer >= " + std::to_string(minimum));
  }
  return static_cast<int>(parsed);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Fail(a + ": missing value");
      return argv[++i];
    };
    if (a == "--model") o.model = next();
    else if (a == "--prompts") o.prompts = next();
    else if (a == "--mode") o.mode = next();
    else if (a == "--limit") o.limit = ParseInt(a, next(), 1);
    else if (a == "--units") o.units = ParseInt(a, next(), 1);
    else if (a == "--positions") o.positions = next();
    else if (a == "--sae-root") o.sae_root = next();
    else if (a == "--sae-latents") o.sae_latents = ParseInt(a, next(), 1);
    else if (a == "--sae-arch") o.sae_arch = next();
    else if (a == "--k") o.k = ParseInt(a, next(), 1);
    else if (a == "--threads") o.threads = ParseInt(a, next(), 1);
    else if (a == "--repeat") o.repeat = ParseInt(a, next(), 1);
    else if (a == "--json") o.json = next();
    else if (a == "--layers") {
      o.layers.clear();
      std::stringstream ss(next());
      for (std::string item; std::getline(ss, item, ',');) o.layers.push_back(ParseInt(a, item, 0));
    } else Fail("unknown argument " + a);
  }
  if (o.model.empty() || o.prompts.empty()) Fail("--model and --prompts are required");
  if (o.mode != "direction" && o.mode != "latent" && o.mode != "latent_backups") {
    Fail("--mode: direction, latent or latent_backups");
  }
  if (o.positions != "all" && o.positions != "post_inst") Fail("--positions: all or post_inst");
  if (o.mode != "direction" && o.sae_root.empty() && o.sae_latents == 0) {
    Fail("latent modes need --sae-root or --sae-latents");
  }
  if (o.sae_arch != "topk" && o.sae_arch != "jumprelu") Fail("--sae-arch: topk or jumprelu");
  return o;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  at::set_num_threads(o.threads);

  v1::ModelRef ref;
  ref.set_path(o.model);
  ref.set_dtype("float32");
  auto loaded = ke::LoadModel(ref);
  if (!loaded.ok()) Fail(loaded.status().ToString());
  const auto& config = loaded->model->config();
  for (int l : o.layers) {
    if (l < 0 || l >= config.num_layers) Fail("--layers: layer " + std::to_string(l) + " out of range");
  }
  auto prompts = kf::LoadPromptSet(o.prompts, {});
  if (!prompts.ok()) Fail(prompts.status().ToString());

  v1::Shard shard;
  shard.set_sweep_id("bench");
  shard.set_kind(v1::Shard::TRIALS);
  *shard.mutable_model() = ref;
  shard.mutable_metrics()->add_refusal_tokens("I");
  for (int i = 0; i < std::min<int>(o.limit, prompts->size()); ++i) {
    v1::ShardPrompt* p = shard.add_prompts();
    p->set_set("bench");
    p->set_index(static_cast<uint32_t>(i));
    p->set_instruction((*prompts)[i].instruction);
  }

  // SAEs: every listed layer (latent), every layer of the model (latent_backups).
  std::string sae_dir = o.sae_root;
  fs::path temp;
  if (o.mode != "direction") {
    std::vector<int> sae_layers = o.layers;
    if (o.mode == "latent_backups") {
      sae_layers.clear();
      for (int l = 0; l < config.num_layers; ++l) sae_layers.push_back(l);
    }
    if (sae_dir.empty()) {
      temp = fs::temp_directory_path() / ("sae_sweep_bench_" + std::to_string(::getpid()));
      sae_dir = temp.string();
    }
    for (int l : sae_layers) {
      const std::string hook = "blocks." + std::to_string(l) + ".hook_resid_post";
      const std::string dir = sae_dir + "/layer_" + std::to_string(l);
      if (!temp.empty()) knockout::bench::WriteRandomSae(dir, hook, config.hidden_size, o.sae_latents, o.sae_arch, o.k,
                                                       1000 + l);
      v1::SaeRef* sae = shard.add_saes();
      sae->set_hook(hook);
      sae->set_path(dir);
    }
    if (o.mode == "latent_backups") {
      shard.mutable_backups()->set_top(10);
      shard.mutable_backups()->set_dormant_threshold(0.05);
      shard.mutable_backups()->mutable_positions()->set_kind(v1::Positions::POST_INST);
    }
  } else {
    at::manual_seed(7);
    at::Tensor r = at::randn({config.hidden_size});
    r = r / r.norm();
    v1::TensorData* tensor = shard.add_tensors();
    tensor->set_name("r");
    tensor->add_shape(config.hidden_size);
    for (int64_t i = 0; i < config.hidden_size; ++i) tensor->add_values(r[i].item<float>());
  }
  uint32_t index = 0;
  for (int l : o.layers) {
    for (int u = 0; u < o.units; ++u) {
      v1::Trial* trial = shard.add_trials();
      trial->set_index(index++);
      v1::Edit* edit = trial->add_edits();
      edit->set_hook("blocks." + std::to_string(l) + ".hook_resid_post");
      edit->mutable_positions()->set_kind(o.positions == "all" ? v1::Positions::ALL
                                                               : v1::Positions::POST_INST);
      if (o.mode == "direction") {
        edit->mutable_ablation()->set_kind(v1::Ablation::PROJECT);
        edit->set_tensor("r");
      } else {
        edit->mutable_ablation()->set_kind(v1::Ablation::ZERO);
        edit->set_sae(true);
        edit->add_units(u);
      }
    }
  }

  ke::ExecutorOptions options;
  ke::ShardExecutor executor(*loaded, options);
  double best = 1e30;
  const auto started = std::chrono::steady_clock::now();
  for (int r = 0; r < o.repeat + 1; ++r) {  // the first run loads and caches the SAEs: untimed
    const auto t0 = std::chrono::steady_clock::now();
    auto result = executor.Run(shard);
    if (!result.ok()) Fail(result.status().ToString());
    if (r > 0) best = std::min(best, Seconds(t0));
    std::fprintf(stderr, "  run %s (%.3f s%s)\n",
                 knockout::ProgressText(r + 1, o.repeat + 1, Seconds(started)).c_str(), Seconds(t0),
                 r == 0 ? ", untimed: loads the SAEs" : "");
  }
  if (!temp.empty()) fs::remove_all(temp);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double trials = static_cast<double>(shard.trials_size());
  std::printf("%s: %d trials x %d prompts, %s positions, %s: %.3f s, %.2f trials/s, peak RSS %.0f MiB\n",
              o.mode.c_str(), shard.trials_size(), shard.prompts_size(), o.positions.c_str(),
              o.mode == "direction" ? "project" : (o.sae_root.empty() ? ("random " + o.sae_arch + " SAE d_sae " + std::to_string(o.sae_latents)).c_str() : o.sae_root.c_str()),
              best, trials / best, usage.ru_maxrss / 1024.0);
  if (!o.json.empty()) {
    std::ofstream(o.json) << "{\"mode\":\"" << o.mode << "\",\"trials\":" << shard.trials_size()
                          << ",\"prompts\":" << shard.prompts_size() << ",\"positions\":\""
                          << o.positions << "\",\"seconds\":" << best
                          << ",\"trials_per_s\":" << trials / best
                          << ",\"sae_latents\":" << o.sae_latents << ",\"sae_arch\":\""
                          << o.sae_arch << "\",\"threads\":" << o.threads
                          << ",\"peak_rss_mib\":" << usage.ru_maxrss / 1024.0 << "}\n";
  }
  return 0;
}
