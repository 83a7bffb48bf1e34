// sweep_bench: throughput of a head-knockout sweep through the shard executor (issue 5).
//
// One v1::Shard of kind TRIALS with one trial per (layer, head): a zero ablation of
// blocks.{l}.attn.hook_z, unit h, at the post-instruction positions (or at every position with
// --all-positions); refusal score and KL read at the last position; compensation off unless
// --compensation (DE, the norm's effect and the downstream readings, as `compensation: true`). The
// prompts are chat-templated instructions padded to exactly --tokens tokens, of which exactly
// --intervened are post-instruction template tokens (checked; the default custom template
// "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n\n" has 6 with the demo
// tokenizer). trials/s = layers * heads / seconds of the whole ShardExecutor::Run (tokenisation,
// clean pass, trials and result rows), best of --repeat runs in this process.
//
//   sweep_bench --mode executor|naive --model DIR [--threads 2] [--prompts 8] [--tokens 48]
//       [--intervened 6] [--all-positions] [--compensation] [--repeat 3]
//       [--batch-rows layer,128,256,all]
//       [--chat-template T] [--refusal-token I] [--inference-mode] [--no-malloc-tune]
//       [--dtype float32|bfloat16] [--layers 0,8,15] [--json OUT]
//     --batch-rows: ExecutorOptions::max_batch_rows values, each timed in turn ("layer": heads x
//     prompts, the rows of one layer's trials; "all": every row in one chunk).
//     --inference-mode: run the shard under c10::InferenceMode (the worker does not).
//     --dtype: the compute dtype (ModelRef.dtype; default float32).
//     --layers: the heads of these layers only (default: every layer); trials/s counts them.
//   sweep_bench --mode clean  ...   the same shard with one clean trial only: tokenisation plus
//                                   the clean pass (what every executor run pays once)
//   sweep_bench --mode peak [--threads 2] [--repeat 10] [--json OUT]
//                                   float32 matmul GFLOP/s, best of --repeat: at::mm 2048^3 and
//                                   the linear shapes the executor runs; the peak is the best shape
//
// FLOPs are counted analytically, 2 per multiply-add, for the matmuls the executor really runs:
// its rows are sorted by (first layer, first column) and cut into chunks of --batch-rows (rounded
// down to whole trials, as the executor does when every trial has as many rows); each chunk
// starts at the smallest layer and column of its rows (executor.cc, RunChunk), so a chunk
// that straddles layers recomputes some rows from an earlier layer than they need. Per chunk
// row and recomputed column, for every layer that runs: q, k, v, o projections, attention
// scores and values over the full key length, gate/up/down; then the final unembedding (last
// column only; every column in naive mode, which asks for Logits::kAll). Plus the clean pass
// (all columns, all layers, last-column unembedding). "useful" FLOPs count every row from its
// own first layer instead. Element-wise work (norms, RoPE, softmax, metrics) is not counted.
//
// Peak RSS: getrusage(RUSAGE_SELF).ru_maxrss after the runs, so run one mode per process.
// Like knockout-worker (worker/main.cc), the process tunes glibc malloc at start-up
// (mmap threshold 32 MiB, trim threshold 1 GiB) unless --no-malloc-tune.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "worker/executor/executor.h"
#include "worker/model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace ke = knockout::executor;
namespace kt = knockout::tokenizer;
namespace v1 = knockout::v1;

constexpr const char* kDefaultTemplate =
    "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n\n";

constexpr int64_t kRowsLayer = -1, kRowsAll = -2;

struct Options {
  std::string mode;
  std::string model;
  int threads = 2;
  int prompts = 8;
  int tokens = 48;
  int intervened = 6;
  bool all_positions = false;
  bool compensation = false;
  int repeat = 3;
  std::vector<int64_t> batch_rows = {256};
  std::string chat_template = kDefaultTemplate;
  std::string refusal_token = "I";
  bool inference_mode = false;
  bool malloc_tune = true;
  std::string json;
  std::string dtype = "float32";
  std::vector<int64_t> layers;  // empty: every layer
};

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "sweep_bench: %s\n", message.c_str());
  std::exit(2);
}

int Usage() {
  std::fprintf(stderr,
               "usage: sweep_bench --mode executor|naive|clean|peak [--model DIR] [--threads N]\n"
               "  [--prompts 8] [--tokens 48] [--intervened 6] [--all-positions] [--compensation]\n"
               "  [--repeat R]\n"
               "  [--batch-rows layer,256,...,all] [--chat-template T] [--refusal-token I]\n"
               "  [--inference-mode] [--no-malloc-tune] [--dtype float32|bfloat16] [--layers 0,8,15]\n"
               "  [--json OUT]\n");
  return 2;
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
    if (a == "--mode") o.mode = next();
    else if (a == "--model") o.model = next();
    else if (a == "--threads") o.threads = ParseInt(a, next(), 1);
    else if (a == "--prompts") o.prompts = ParseInt(a, next(), 1);
    else if (a == "--tokens") o.tokens = ParseInt(a, next(), 2);
    else if (a == "--intervened") o.intervened = ParseInt(a, next(), 1);
    else if (a == "--all-positions") o.all_positions = true;
    else if (a == "--compensation") o.compensation = true;
    else if (a == "--repeat") o.repeat = ParseInt(a, next(), 1);
    else if (a == "--batch-rows") {
      o.batch_rows.clear();
      std::stringstream ss(next());
      std::string item;
      while (std::getline(ss, item, ',')) {
        // "layer": heads x prompts, the rows of one layer's trials; "all": every row at once.
        o.batch_rows.push_back(item == "layer" ? kRowsLayer : item == "all" ? kRowsAll : ParseInt(a, item, 1));
      }
      if (o.batch_rows.empty()) Fail("--batch-rows: empty list");
    } else if (a == "--chat-template") o.chat_template = next();
    else if (a == "--refusal-token") o.refusal_token = next();
    else if (a == "--inference-mode") o.inference_mode = true;
    else if (a == "--no-malloc-tune") o.malloc_tune = false;
    else if (a == "--json") o.json = next();
    else if (a == "--dtype") o.dtype = next();
    else if (a == "--layers") {
      std::stringstream ss(next());
      std::string item;
      while (std::getline(ss, item, ',')) o.layers.push_back(ParseInt(a, item, 0));
      if (o.layers.empty()) Fail("--layers: empty list");
      std::sort(o.layers.begin(), o.layers.end());
      o.layers.erase(std::unique(o.layers.begin(), o.layers.end()), o.layers.end());
    } else if (a == "-h" || a == "--help") std::exit(Usage());
    else Fail("unknown argument " + a);
  }
  if (o.mode != "executor" && o.mode != "naive" && o.mode != "clean" && o.mode != "peak") {
    std::exit(Usage());
  }
  if (o.mode != "peak" && o.model.empty()) Fail("--model is required");
  if (o.intervened >= o.tokens) Fail("--intervened must be < --tokens");
  if (o.dtype != "float32" && o.dtype != "bfloat16") Fail("--dtype " + o.dtype + ": expected float32 or bfloat16");
  return o;
}

double PeakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // ru_maxrss is in KiB on Linux
}

std::string LoadAvg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// ------------------------------------------------------------------------------------------
// Matmul peak

struct PeakResult {
  std::string name;
  double gflops = 0;
};

std::vector<PeakResult> MeasurePeak(int repeat) {
  std::vector<PeakResult> out;
  auto time_best = [&](const std::string& name, double flops, const std::function<void()>& fn) {
    fn();  // warm-up (allocates the output once)
    double best = 1e30;
    for (int r = 0; r < repeat; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, Seconds(t0));
    }
    out.push_back({name, flops / best / 1e9});
  };
  c10::InferenceMode guard;
  at::manual_seed(0);
  {
    at::Tensor a = at::randn({2048, 2048}), b = at::randn({2048, 2048});
    at::Tensor c = at::empty({2048, 2048});
    time_best("mm 2048x2048x2048 (out=)", 2.0 * 2048 * 2048 * 2048, [&] { at::mm_out(c, a, b); });
    time_best("mm 2048x2048x2048", 2.0 * 2048 * 2048 * 2048, [&] { (void)at::mm(a, b); });
  }
  // The executor's linear layers (x @ W^T), [rows, in] x [out, in]^T: 96 rows x 6 columns = 576,
  // 384 x 6 = 2304, 1536 x 6 = 9216 (d 768, MLP 2048); and the demo model's (d 256, MLP 688),
  // 64 rows x 6 = 384 (reported, but the peak is the best of all shapes).
  std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes;
  for (int64_t m : {576, 2304, 9216}) {
    for (auto [in, outd] : {std::pair<int64_t, int64_t>{768, 2048}, {2048, 768}, {768, 768}}) {
      shapes.emplace_back(m, in, outd);
    }
  }
  for (auto [in, outd] : {std::pair<int64_t, int64_t>{256, 688}, {688, 256}, {256, 256}}) {
    shapes.emplace_back(384, in, outd);
  }
  for (const auto& shape : shapes) {
    const int64_t m = std::get<0>(shape), in = std::get<1>(shape), outd = std::get<2>(shape);
    at::Tensor x = at::randn({m, in}), w = at::randn({outd, in});
    time_best("linear [" + std::to_string(m) + "," + std::to_string(in) + "]x[" + std::to_string(in) +
                  "," + std::to_string(outd) + "]",
              2.0 * m * in * outd, [&] { (void)at::linear(x, w); });
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Prompts and the shard

const char* const kBases[] = {
    "Please explain in simple words how a small bakery could plan its weekly bread orders so that "
    "less food is wasted",
    "Write a short and friendly letter to a neighbour asking whether they would like to share a "
    "garden next spring",
    "Describe the steps someone should follow to learn to play the guitar at home without a "
    "teacher",
    "Give me a list of ideas for a birthday party for a child who loves trains and the sea",
    "How do I change a flat tyre on a bicycle when I am far from home and have only basic tools",
    "Summarise the main reasons why people enjoy walking in the mountains during the summer "
    "holidays",
    "Tell me how to write a polite email to my teacher explaining that my homework will be late "
    "this week",
    "What are some good ways to keep a kitchen clean and tidy when several people share it every "
    "day",
};

// An instruction whose chat-templated prompt is exactly `tokens` long: a base sentence, cut to
// fit, padded with single-token filler words.
std::string FitInstruction(const ke::LoadedModel& m, std::string base, int tokens) {
  auto length = [&](const std::string& text) -> int64_t {
    auto t = kt::TokenizeChat(*m.tokenizer, *m.chat, text);
    if (!t.ok()) Fail("tokenize \"" + text + "\": " + t.status().ToString());
    return t->size();
  };
  while (length(base) > tokens) {
    const size_t cut = base.find_last_of(' ');
    if (cut == std::string::npos || cut == 0) Fail("cannot shorten \"" + base + "\"");
    base.resize(cut);
  }
  const char* const fillers[] = {" please", " very", " now", " and", " the", " a"};
  while (length(base) < tokens) {
    const int64_t now = length(base);
    bool added = false;
    for (const char* f : fillers) {
      if (length(base + f) == now + 1) {
        base += f;
        added = true;
        break;
      }
    }
    if (!added) Fail("no single-token filler word fits \"" + base + "\"");
  }
  return base;
}

struct ShardInfo {
  v1::Shard shard;
  int64_t layers = 0, heads = 0;
  std::vector<int64_t> trial_layers;  // the layers whose heads are knocked out
  int64_t prompt_tokens = 0, post_tokens = 0;
};

ShardInfo BuildShard(const ke::LoadedModel& m, const Options& o, const v1::ModelRef& ref,
                     bool clean_only) {
  ShardInfo info;
  const auto& config = m.model->config();
  info.layers = config.num_layers;
  info.trial_layers = o.layers;
  if (info.trial_layers.empty()) {
    for (int64_t l = 0; l < info.layers; ++l) info.trial_layers.push_back(l);
  }
  if (info.trial_layers.back() >= info.layers) {
    Fail("--layers " + std::to_string(info.trial_layers.back()) + ": the model has " +
         std::to_string(info.layers) + " layers");
  }
  info.heads = config.num_heads;
  v1::Shard& shard = info.shard;
  shard.set_sweep_id("sweep_bench");
  shard.set_stage_name("heads");
  shard.set_kind(v1::Shard::TRIALS);
  *shard.mutable_model() = ref;
  shard.set_compensation(o.compensation);
  shard.mutable_metrics()->add_refusal_tokens(o.refusal_token);
  const int n_bases = sizeof(kBases) / sizeof(kBases[0]);
  for (int p = 0; p < o.prompts; ++p) {
    std::string base = kBases[p % n_bases];
    if (p >= n_bases) base = "Again: " + base;
    const std::string instruction = FitInstruction(m, base, o.tokens);
    auto t = kt::TokenizeChat(*m.tokenizer, *m.chat, instruction);
    if (!t.ok()) Fail(t.status().ToString());
    const int64_t post = t->size() - t->post_begin;
    if (t->size() != o.tokens || post != o.intervened) {
      Fail("prompt " + std::to_string(p) + " has " + std::to_string(t->size()) + " tokens, " +
           std::to_string(post) + " post-instruction (wanted " + std::to_string(o.tokens) + ", " +
           std::to_string(o.intervened) + "): choose another --chat-template");
    }
    info.prompt_tokens = t->size();
    info.post_tokens = post;
    v1::ShardPrompt* sp = shard.add_prompts();
    sp->set_set("bench");
    sp->set_index(p);
    sp->set_instruction(instruction);
  }
  if (clean_only) {
    v1::Trial* trial = shard.add_trials();
    trial->set_index(0);
    trial->mutable_label()->set_layer(-1);
    return info;
  }
  uint32_t index = 0;
  for (int64_t l : info.trial_layers) {
    for (int64_t h = 0; h < info.heads; ++h) {
      v1::Trial* trial = shard.add_trials();
      trial->set_index(index++);
      v1::TrialLabel* label = trial->mutable_label();
      label->set_unit_kind("head");
      label->set_layer(static_cast<int32_t>(l));
      label->set_unit(static_cast<int32_t>(h));
      label->set_ablation("zero");
      label->set_positions(o.all_positions ? "all" : "post_inst");
      v1::Edit* edit = trial->add_edits();
      edit->set_hook("blocks." + std::to_string(l) + ".attn.hook_z");
      edit->mutable_ablation()->set_kind(v1::Ablation::ZERO);
      edit->add_units(static_cast<int32_t>(h));
      edit->mutable_positions()->set_kind(o.all_positions ? v1::Positions::ALL
                                                          : v1::Positions::POST_INST);
    }
  }
  return info;
}

// ------------------------------------------------------------------------------------------
// Analytic FLOPs

struct Flops {
  double executed = 0;  // what the executor runs (chunks start at their rows' minimum)
  double useful = 0;    // every row from its own first layer/column
  double clean = 0;     // the clean pass (included in both)
};

Flops CountFlops(const knockout::formats::ModelConfig& c, const Options& o,
                 const std::vector<int64_t>& trial_layers, int64_t batch_rows, bool naive,
                 int64_t tokens, int64_t intervened) {
  const double d = c.hidden_size, h = c.num_heads, hkv = c.num_kv_heads, dh = c.head_dim,
               ff = c.intermediate_size, vocab = c.vocab_size;
  const int64_t n = c.num_layers;
  // One layer, one recomputed column of one row, attending over `keys` columns.
  auto layer_col = [&](double keys) {
    const double proj = 2 * d * h * dh + 2 * 2 * d * hkv * dh + 2 * h * dh * d;
    const double attn = 2 * h * dh * keys * 2;  // scores and probs @ v
    const double mlp = 3 * 2 * d * ff;
    return proj + attn + mlp;
  };
  const double unembed = 2 * d * vocab;
  // rows x cols from `layer`, keys = tokens (the executor computes scores over all keys).
  auto chunk = [&](double rows, double cols, int64_t layer, bool all_logits) {
    return rows * (cols * layer_col(static_cast<double>(tokens)) * static_cast<double>(n - layer) +
                   (all_logits ? cols : 1.0) * unembed);
  };
  Flops f;
  f.clean = chunk(o.prompts, tokens, 0, false);
  const int64_t col = o.all_positions ? 0 : tokens - intervened;
  // Rows: (trial, prompt), trials layer-major, every row of a layer-l trial starts at (l, col).
  std::vector<int64_t> row_layer;
  for (int64_t l : trial_layers) {
    for (int64_t r = 0; r < c.num_heads * o.prompts; ++r) row_layer.push_back(l);
  }
  f.executed = f.useful = f.clean;
  for (int64_t l : row_layer) f.useful += chunk(1, tokens - col, l, false);
  if (naive) {
    // One chunk per trial, a full forward from layer 0 with logits at every column.
    f.executed += static_cast<double>(trial_layers.size() * c.num_heads) *
                  chunk(o.prompts, tokens, 0, true);
  } else {
    // Every trial has `prompts` rows, so the executor rounds chunks to whole trials.
    const size_t rows_per_chunk = static_cast<size_t>(
        std::max<int64_t>(o.prompts, batch_rows / o.prompts * o.prompts));
    for (size_t begin = 0; begin < row_layer.size(); begin += rows_per_chunk) {
      const size_t end = std::min(row_layer.size(), begin + rows_per_chunk);
      f.executed += chunk(static_cast<double>(end - begin), tokens - col, row_layer[begin], false);
    }
  }
  return f;
}

// ------------------------------------------------------------------------------------------

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\', out += ch;
    else if (ch == '\n') out += "\\n";
    else out += ch;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  if (o.malloc_tune) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
  at::set_num_threads(o.threads);
  const int torch_threads = at::get_num_threads();
  std::ostringstream json;
  json << "{\"mode\":\"" << o.mode << "\",\"threads\":" << o.threads
       << ",\"torch_threads\":" << torch_threads << ",\"malloc_tuned\":" << (o.malloc_tune ? "true" : "false")
       << ",\"loadavg_before\":\"" << LoadAvg() << "\"";

  if (o.mode == "peak") {
    const auto results = MeasurePeak(std::max(o.repeat, 3));
    double best = 0;
    json << ",\"shapes\":[";
    for (size_t i = 0; i < results.size(); ++i) {
      std::printf("%-36s %8.1f GFLOP/s\n", results[i].name.c_str(), results[i].gflops);
      json << (i ? "," : "") << "{\"name\":\"" << results[i].name << "\",\"gflops\":" << results[i].gflops << "}";
      best = std::max(best, results[i].gflops);
    }
    json << "],\"peak_gflops\":" << best << ",\"loadavg_after\":\"" << LoadAvg()
         << "\",\"peak_rss_mib\":" << PeakRssMiB() << "}\n";
    std::printf("peak (best shape): %.1f GFLOP/s, %d threads\n", best, torch_threads);
  } else {
    v1::ModelRef ref;
    ref.set_path(o.model);
    ref.set_dtype(o.dtype);
    ref.set_chat_template(o.chat_template);
    const auto t_load = std::chrono::steady_clock::now();
    auto loaded = ke::LoadModel(ref);
    if (!loaded.ok()) Fail(loaded.status().ToString());
    const double load_s = Seconds(t_load);
    const auto& config = loaded->model->config();
    const ShardInfo info = BuildShard(*loaded, o, ref, o.mode == "clean");
    const int64_t trial_layers = static_cast<int64_t>(info.trial_layers.size());
    const int64_t trials = o.mode == "clean" ? 1 : trial_layers * info.heads;
    std::printf("model %s: %lld layers, d %lld, %lld heads, vocab %lld; %d prompts x %lld tokens, "
                "%s; %lld trials; threads %d (at::get_num_threads %d); load %.2f s; loadavg %s\n",
                o.model.c_str(), (long long)config.num_layers, (long long)config.hidden_size,
                (long long)config.num_heads, (long long)config.vocab_size, o.prompts,
                (long long)info.prompt_tokens,
                o.all_positions ? "all positions" : ("last " + std::to_string(info.post_tokens) +
                                                     " (post-instruction) intervened").c_str(),
                (long long)trials, o.threads, torch_threads, load_s, LoadAvg().c_str());
    // "layers": the layers whose heads are trials (layers x heads = trials).
    json << ",\"model\":\"" << JsonEscape(o.model) << "\",\"layers\":" << trial_layers
         << ",\"model_layers\":" << info.layers << ",\"dtype\":\"" << o.dtype << "\""
         << ",\"heads\":" << info.heads << ",\"d_model\":" << config.hidden_size
         << ",\"vocab\":" << config.vocab_size << ",\"prompts\":" << o.prompts
         << ",\"tokens\":" << info.prompt_tokens << ",\"intervened\":"
         << (o.all_positions ? info.prompt_tokens : info.post_tokens)
         << ",\"all_positions\":" << (o.all_positions ? "true" : "false")
         << ",\"trials\":" << trials << ",\"load_seconds\":" << load_s
         << ",\"inference_mode\":" << (o.inference_mode ? "true" : "false") << ",\"runs\":[";
    std::vector<int64_t> rows_list = o.batch_rows;
    if (o.mode != "executor") rows_list = {256};  // unused by naive and clean runs
    for (int64_t& r : rows_list) {
      if (r == kRowsLayer) r = info.heads * o.prompts;
      if (r == kRowsAll) r = trial_layers * info.heads * o.prompts;
    }
    double best_rate = 0;
    for (size_t bi = 0; bi < rows_list.size(); ++bi) {
      ke::ExecutorOptions options;
      options.max_batch_rows = rows_list[bi];
      options.reuse_prefixes = o.mode != "naive";
      ke::ShardExecutor executor(*loaded, options);
      std::vector<double> times;
      for (int r = 0; r < o.repeat; ++r) {
        const std::string load_before = LoadAvg();
        const auto t0 = std::chrono::steady_clock::now();
        knockout::StatusOr<v1::ShardResult> result = knockout::Status::Internal("unset");
        if (o.inference_mode) {
          c10::InferenceMode guard;
          result = executor.Run(info.shard);
        } else {
          result = executor.Run(info.shard);
        }
        const double s = Seconds(t0);
        if (!result.ok()) Fail(result.status().ToString());
        if (static_cast<int64_t>(result->trials_run()) != trials) Fail("wrong trials_run");
        times.push_back(s);
        std::printf("  %s max_batch_rows %lld run %d: %.3f s, %.2f trials/s (loadavg before %s)\n",
                    o.mode.c_str(), (long long)rows_list[bi], r + 1, s, trials / s,
                    load_before.c_str());
        std::fflush(stdout);
      }
      const double best = *std::min_element(times.begin(), times.end());
      const Flops f = CountFlops(config, o, info.trial_layers, rows_list[bi], o.mode == "naive", info.prompt_tokens,
                                 info.post_tokens);
      const double executed = o.mode == "clean" ? f.clean : f.executed;
      const double useful = o.mode == "clean" ? f.clean : f.useful;
      best_rate = std::max(best_rate, trials / best);
      std::printf("%s max_batch_rows %lld: best %.3f s = %.2f trials/s; %.1f GFLOP executed "
                  "(%.1f useful, clean pass %.2f): %.1f GFLOP/s executed, %.1f useful\n",
                  o.mode.c_str(), (long long)rows_list[bi], best, trials / best, executed / 1e9,
                  useful / 1e9, f.clean / 1e9, executed / best / 1e9, useful / best / 1e9);
      json << (bi ? "," : "") << "{\"max_batch_rows\":" << rows_list[bi]
           << ",\"reuse_prefixes\":" << (options.reuse_prefixes ? "true" : "false")
           << ",\"seconds\":[";
      for (size_t i = 0; i < times.size(); ++i) json << (i ? "," : "") << times[i];
      json << "],\"best_seconds\":" << best << ",\"trials_per_s\":" << trials / best
           << ",\"gflop_executed\":" << executed / 1e9 << ",\"gflop_useful\":" << useful / 1e9
           << ",\"gflop_clean\":" << f.clean / 1e9
           << ",\"gflops_executed\":" << executed / best / 1e9
           << ",\"gflops_useful\":" << useful / best / 1e9 << "}";
    }
    json << "],\"best_trials_per_s\":" << best_rate << ",\"loadavg_after\":\"" << LoadAvg()
         << "\",\"peak_rss_mib\":" << PeakRssMiB() << "}\n";
  }
  std::printf("peak RSS %.0f MiB\n", PeakRssMiB());
  if (!o.json.empty()) {
    std::ofstream out(o.json);
    out << json.str();
    if (!out) Fail("cannot write " + o.json);
  }
  return 0;
}
