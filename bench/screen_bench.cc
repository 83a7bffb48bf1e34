// screen_bench: attribution screening vs exhaustive exact knockouts (issue 16), through the
// shard executor.
//
// For one unit kind — every head, --neurons N neurons (spread evenly over the layers and each
// layer's MLP), or every latent of one SAE (--sae DIR, or --sae-latents N: a random TopK SAE at
// blocks.{--sae-layer}.hook_resid_post) — over --limit prompts of --prompts, zero ablation at
// post_inst, refusal score of token --refusal-token:
//   screen      one SCREEN shard (--method atp | atp_star | integrated_gradients --steps S)
//   verify      one TRIALS shard knocking out the screen's top --top units (by |score|)
//   exhaustive  one TRIALS shard knocking out every unit (or --exhaustive-sample N of them, drawn
//               at random: its time is scaled to all units, and the top-10 comparison is then
//               over the sample: the sample's real top 10 against the screen's top --top among
//               the sampled units)
//   clean       one TRIALS shard with one clean trial: tokenisation plus one forward pass, the
//               cost of one "pass" over the prompts
// Prints (and writes --json) the wall time of each, the speed-up of screen + verify over
// exhaustive, the screen's time in exact trials (exhaustive time / units) and in passes (clean
// time), how many of the exhaustive top 10 (by |TE|) the screen's top --top holds, Spearman's
// rank correlation of screen score and TE over the exhaustively knocked-out units, and the
// process's peak RSS (getrusage).
//
//   screen_bench --model DIR --prompts FILE [--limit 16] --kind heads|neurons|latents
//       [--neurons 1000] [--sae DIR | --sae-latents 16384 --sae-layer 6] [--method atp]
//       [--steps 10] [--top 16] [--exhaustive-sample 0] [--threads 2] [--batch-rows 128]
//       [--refusal-token I] [--chat-template T] [--json OUT] [--screen-only]
//     --screen-only: time the clean pass and the screen only (its memory against --batch-rows)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/random_sae.h"
#include "experiments/screen_check.h"
#include "formats/prompt_set.h"
#include "proto/protocol.h"
#include "worker/executor/executor.h"
#include "worker/model/model.h"

namespace {

namespace ke = knockout::executor;
namespace v1 = knockout::v1;

struct Options {
  std::string model, prompts, kind, sae, method = "atp", refusal = "I", chat_template, json;
  int limit = 16, neurons = 1000, steps = 10, top = 16, threads = 2, sae_layer = 6;
  int64_t sae_latents = 0, batch_rows = 128, sample = 0;
  bool screen_only = false;
};

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "screen_bench: %s\n", message.c_str());
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Fail(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--model") o.model = next();
    else if (flag == "--prompts") o.prompts = next();
    else if (flag == "--limit") o.limit = std::stoi(next());
    else if (flag == "--kind") o.kind = next();
    else if (flag == "--neurons") o.neurons = std::stoi(next());
    else if (flag == "--sae") o.sae = next();
    else if (flag == "--sae-latents") o.sae_latents = std::stoll(next());
    else if (flag == "--sae-layer") o.sae_layer = std::stoi(next());
    else if (flag == "--method") o.method = next();
    else if (flag == "--steps") o.steps = std::stoi(next());
    else if (flag == "--top") o.top = std::stoi(next());
    else if (flag == "--exhaustive-sample") o.sample = std::stoll(next());
    else if (flag == "--threads") o.threads = std::stoi(next());
    else if (flag == "--batch-rows") o.batch_rows = std::stoll(next());
    else if (flag == "--refusal-token") o.refusal = next();
    else if (flag == "--chat-template") o.chat_template = next();
    else if (flag == "--json") o.json = next();
    else if (flag == "--screen-only") o.screen_only = true;
    else Fail("unknown flag " + flag);
  }
  if (o.model.empty() || o.prompts.empty()) Fail("--model and --prompts are required");
  if (o.kind != "heads" && o.kind != "neurons" && o.kind != "latents") {
    Fail("--kind: heads, neurons or latents");
  }
  if (o.kind == "latents" && o.sae.empty() && o.sae_latents == 0) Fail("latents need --sae or --sae-latents");
  return o;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

struct Unit {
  std::string hook;
  int layer = 0, unit = 0;
  bool sae = false;
};

v1::Trial MakeTrial(const Unit& u, uint32_t index) {
  v1::Trial trial;
  trial.set_index(index);
  v1::Edit* edit = trial.add_edits();
  edit->set_hook(u.hook);
  edit->set_sae(u.sae);
  edit->mutable_ablation()->set_kind(v1::Ablation::ZERO);
  edit->add_units(u.unit);
  edit->mutable_positions()->set_kind(v1::Positions::POST_INST);
  trial.mutable_label()->set_layer(u.layer);
  trial.mutable_label()->set_unit(u.unit);
  return trial;
}

std::pair<v1::ShardResult, double> RunShard(const ke::ShardExecutor& executor, const v1::Shard& shard) {
  const auto start = std::chrono::steady_clock::now();
  auto result = executor.Run(shard);
  const double seconds = Seconds(start);
  if (!result.ok()) Fail(result.status().ToString());
  return {std::move(*result), seconds};
}

// TE per trial index from a TRIALS result's aggregate rows.
std::map<uint32_t, double> TotalEffects(const v1::ShardResult& result) {
  std::map<uint32_t, double> te;
  for (const v1::ResultRow& row : result.rows()) {
    auto it = row.values().find("te");
    if (row.prompt() == -1 && it != row.values().end()) te[row.trial()] = it->second;
  }
  return te;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  at::set_num_threads(o.threads);
  v1::ModelRef ref;
  ref.set_path(o.model);
  ref.set_dtype("float32");
  ref.set_device("cpu");
  ref.set_chat_template(o.chat_template);
  auto loaded = ke::LoadModel(ref);
  if (!loaded.ok()) Fail(loaded.status().ToString());
  const auto& config = loaded->model->config();
  auto prompts = knockout::formats::LoadPromptSet(o.prompts, {});
  if (!prompts.ok()) Fail(prompts.status().ToString());

  std::vector<Unit> units;
  std::string sae_dir = o.sae, temp;
  if (o.kind == "heads") {
    for (int l = 0; l < config.num_layers; ++l) {
      for (int h = 0; h < config.num_heads; ++h) {
        units.push_back({"blocks." + std::to_string(l) + ".attn.hook_z", l, h, false});
      }
    }
  } else if (o.kind == "neurons") {
    const int per_layer = std::max<int>(1, o.neurons / static_cast<int>(config.num_layers));
    for (int l = 0; l < config.num_layers; ++l) {
      for (int i = 0; i < per_layer; ++i) {
        const int n = static_cast<int>(int64_t{i} * config.intermediate_size / per_layer);
        units.push_back({"blocks." + std::to_string(l) + ".mlp.hook_post", l, n, false});
      }
    }
  } else {
    const std::string hook = "blocks." + std::to_string(o.sae_layer) + ".hook_resid_post";
    if (sae_dir.empty()) {
      temp = (std::filesystem::temp_directory_path() / ("screen-bench-sae-" + std::to_string(::getpid()))).string();
      sae_dir = temp;
      knockout::bench::WriteRandomSae(sae_dir, hook, config.hidden_size, o.sae_latents, "topk", 32, 7);
    }
    const int64_t d_sae = o.sae_latents > 0 ? o.sae_latents : 1024;
    for (int64_t j = 0; j < d_sae; ++j) units.push_back({hook, o.sae_layer, static_cast<int>(j), true});
  }

  v1::Shard base;
  base.set_sweep_id("screen-bench");
  *base.mutable_model() = ref;
  base.mutable_metrics()->add_refusal_tokens(o.refusal);
  for (int i = 0; i < std::min<int>(o.limit, static_cast<int>(prompts->size())); ++i) {
    v1::ShardPrompt* p = base.add_prompts();
    p->set_set("bench");
    p->set_index(static_cast<uint32_t>(i));
    p->set_instruction((*prompts)[i].instruction);
  }
  if (o.kind == "latents") {
    v1::SaeRef* sae = base.add_saes();
    sae->set_hook("blocks." + std::to_string(o.sae_layer) + ".hook_resid_post");
    sae->set_path(std::filesystem::absolute(sae_dir).string());
  }
  ke::ExecutorOptions options;
  options.max_batch_rows = o.batch_rows;
  ke::ShardExecutor executor(*loaded, options);

  // clean: one pass.
  v1::Shard clean = base;
  clean.set_kind(v1::Shard::TRIALS);
  clean.add_trials()->set_index(0);
  RunShard(executor, clean);  // warm-up (allocator, SAE cache)
  const double t_clean = RunShard(executor, clean).second;

  // screen
  v1::Shard screen = base;
  screen.set_kind(v1::Shard::SCREEN);
  screen.mutable_screen()->set_method(o.method);
  screen.mutable_screen()->set_steps(static_cast<uint32_t>(o.steps));
  screen.mutable_screen()->set_metric("refusal_score");
  for (size_t i = 0; i < units.size(); ++i) *screen.add_trials() = MakeTrial(units[i], static_cast<uint32_t>(i));
  auto [screened, t_screen] = RunShard(executor, screen);
  std::vector<double> score(units.size(), 0.0);
  for (const v1::PartialSum& sum : screened.sums()) {
    if (sum.position() != knockout::kScreenScoreSum || sum.count() == 0) continue;
    for (int i = 0; i < sum.sum_size(); ++i) score[i] += sum.sum(i) / static_cast<double>(sum.count());
  }
  std::vector<size_t> order(units.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return std::fabs(score[a]) > std::fabs(score[b]); });
  const size_t top = std::min<size_t>(static_cast<size_t>(o.top), units.size());
  if (o.screen_only) {  // the screen's time and memory alone (e.g. against --batch-rows)
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    std::printf("%s %s: %zu units, %d prompts, batch rows %lld: clean pass %.3f s, screen %.3f s, "
                "peak RSS %.0f MB\n",
                o.kind.c_str(), o.method.c_str(), units.size(), base.prompts_size(),
                static_cast<long long>(o.batch_rows), t_clean, t_screen, usage.ru_maxrss / 1024.0);
    if (!temp.empty()) std::filesystem::remove_all(temp);
    return 0;
  }

  // verify: the screen's top units.
  v1::Shard verify = base;
  verify.set_kind(v1::Shard::TRIALS);
  for (size_t r = 0; r < top; ++r) *verify.add_trials() = MakeTrial(units[order[r]], static_cast<uint32_t>(order[r]));
  const double t_verify = RunShard(executor, verify).second;

  // exhaustive (or a sample, scaled).
  std::vector<size_t> chosen(units.size());
  std::iota(chosen.begin(), chosen.end(), 0);
  if (o.sample > 0 && static_cast<size_t>(o.sample) < units.size()) {
    std::mt19937_64 rng(11);
    std::shuffle(chosen.begin(), chosen.end(), rng);
    chosen.resize(static_cast<size_t>(o.sample));
    std::sort(chosen.begin(), chosen.end());
  }
  v1::Shard exhaustive = base;
  exhaustive.set_kind(v1::Shard::TRIALS);
  for (size_t i : chosen) *exhaustive.add_trials() = MakeTrial(units[i], static_cast<uint32_t>(i));
  auto [exact, t_exact_run] = RunShard(executor, exhaustive);
  const double t_exhaustive = t_exact_run * static_cast<double>(units.size()) / chosen.size();
  const auto te = TotalEffects(exact);

  // The exhaustive top 10 by |TE| (over the knocked-out units) and the screen's top `top`.
  std::vector<size_t> by_te(chosen);
  std::stable_sort(by_te.begin(), by_te.end(), [&](size_t a, size_t b) {
    return std::fabs(te.at(static_cast<uint32_t>(a))) > std::fabs(te.at(static_cast<uint32_t>(b)));
  });
  // The screen's top `top` among the knocked-out units (all of them, or the sample's).
  std::vector<bool> knocked(units.size(), false), in_top(units.size(), false);
  for (size_t i : chosen) knocked[i] = true;
  for (size_t r = 0, taken = 0; r < order.size() && taken < top; ++r) {
    if (!knocked[order[r]]) continue;
    in_top[order[r]] = true;
    ++taken;
  }
  int found = 0;
  const size_t ten = std::min<size_t>(10, by_te.size());
  for (size_t r = 0; r < ten; ++r) found += in_top[by_te[r]] ? 1 : 0;
  std::vector<double> a, b;
  for (size_t i : chosen) a.push_back(score[i]), b.push_back(te.at(static_cast<uint32_t>(i)));
  const double rho = knockout::experiments::Spearman(a, b);
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  const double rss_mb = usage.ru_maxrss / 1024.0;
  const double per_trial = t_exhaustive / units.size();
  std::printf("%s %s: %zu units, %d prompts, %lld threads\n", o.kind.c_str(), o.method.c_str(),
              units.size(), base.prompts_size(), static_cast<long long>(o.threads));
  std::printf("  clean pass %.3f s | screen %.3f s (= %.1f exact trials, %.1f passes) | verify top %zu %.3f s\n",
              t_clean, t_screen, t_screen / per_trial, t_screen / t_clean, top, t_verify);
  std::printf("  exhaustive %.3f s%s | speed-up %.1fx | exhaustive top %zu found in the screen's top %zu: %d | "
              "Spearman %.4f over %zu | peak RSS %.0f MB\n",
              t_exhaustive, chosen.size() < units.size() ? " (scaled from a sample)" : "",
              t_exhaustive / (t_screen + t_verify), ten, top, found, rho, chosen.size(), rss_mb);
  if (!o.json.empty()) {
    std::ofstream out(o.json);
    out << "{\"kind\": \"" << o.kind << "\", \"method\": \"" << o.method << "\", \"units\": " << units.size()
        << ", \"prompts\": " << base.prompts_size() << ", \"threads\": " << o.threads
        << ", \"clean_s\": " << t_clean << ", \"screen_s\": " << t_screen << ", \"verify_s\": " << t_verify
        << ", \"exhaustive_s\": " << t_exhaustive << ", \"exhaustive_sampled\": " << chosen.size()
        << ", \"speedup\": " << t_exhaustive / (t_screen + t_verify)
        << ", \"screen_in_trials\": " << t_screen / per_trial << ", \"screen_in_passes\": " << t_screen / t_clean
        << ", \"top10_found\": " << found << ", \"spearman\": " << rho << ", \"peak_rss_mb\": " << rss_mb
        << "}\n";
  }
  if (!temp.empty()) std::filesystem::remove_all(temp);
  return 0;
}
