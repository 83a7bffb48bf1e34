// load_rss_bench: peak resident memory while loading a checkpoint, relative to the weights' size.
//
//   load_rss_bench write DIR [--size 134m|1b] [--storage f32|bf16]
//                                          writes a random bench model (bench_model.h: the 134M
//                                          default, or Llama-3.2-1B's shape) to DIR (config.json
//                                          + model.safetensors, float32 unless --storage)
//   load_rss_bench load DIR [--dtype f32] [--device cpu|cuda[:N]] [--forward T]
//                                          loads DIR with Model::Load in this fresh process and
//                                          prints one JSON line; with --forward, also the
//                                          tokens/s of one T-token forward pass (batch 1, logits
//                                          at the last position, after one untimed pass) and
//                                          the high-water mark after it
//       [--head-sweep P [--sweep-layers 0,8,15] [--sweep-tokens 64] [--sweep-post 6]
//        [--batch-rows 128]]
//                                          also a head sweep the way the shard executor runs one
//                                          (worker/executor/README.md), on the model API alone
//                                          (this tool builds without protobuf): P random prompts
//                                          of T tokens in blocks of --batch-rows; per block one
//                                          clean pass caching resid_pre and keys/values, then
//                                          every head of the listed layers (default: all)
//                                          zero-ablated at the last --sweep-post columns, rows
//                                          of several heads stacked up to --batch-rows, each
//                                          starting at its layer from the cached residual and
//                                          attending to the shared clean prefix, KL to the
//                                          clean last-position distribution read per row:
//                                          head_sweep_trials_per_s (trials = layers x heads,
//                                          each over all P prompts), peak_rss_after_sweep
//
// The loader copies each tensor out of a read-only mmap and then madvise(MADV_DONTNEED)s the
// mapped pages, so the peak should be about one copy of the weights (plus the largest tensor
// still mapped). The high-water mark VmHWM cannot be reset, so it is read before the load as
// well: peak_increase = VmHWM after - VmRSS before, an upper bound of the load's own peak
// (exact when the load sets a new high-water mark, i.e. hwm_after > hwm_before). ratio =
// peak_increase / weight_bytes; issue 2's target is < 1.3.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <sstream>
#include <vector>

#include "bench/bench_model.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"

namespace {

// A "VmRSS:   1234 kB" style field of /proc/self/status, in bytes (-1 if absent).
int64_t ProcStatusBytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') {
      return std::stoll(line.substr(n + 1)) * 1024;
    }
  }
  return -1;
}

int Usage() {
  std::fprintf(stderr,
               "usage: load_rss_bench write DIR [--size 134m|1b] [--storage f32|bf16] | "
               "load_rss_bench load DIR [--dtype f32] [--device cpu|cuda[:N]] [--forward T]\n"
               "  [--head-sweep P [--sweep-layers 0,8,15] [--sweep-tokens 64] [--sweep-post 6]\n"
               "   [--batch-rows 128]]\n");
  return 2;
}

struct HeadSweep {
  int64_t prompts = 0;  // 0: no sweep
  int64_t tokens = 64;
  int64_t post = 6;
  int64_t batch_rows = 128;
  std::vector<int64_t> layers;  // empty: every layer
};

// The head sweep of --head-sweep; returns the number of trials run and the KL sum (a value the
// caller prints, so that nothing is optimised away and the device is waited for).
knockout::StatusOr<std::pair<int64_t, double>> RunHeadSweep(const knockout::model::Model& model,
                                                            const HeadSweep& sweep) {
  namespace km = knockout::model;
  const auto& c = model.config();
  const at::Device dev = model.device();
  const int64_t t = sweep.tokens, post = sweep.post, h = c.num_heads;
  at::Tensor ids = at::randint(1, c.vocab_size, {sweep.prompts, t}, at::kLong).to(dev);
  double kl_sum = 0;
  for (int64_t begin = 0; begin < sweep.prompts; begin += sweep.batch_rows) {
    const int64_t pb = std::min(sweep.batch_rows, sweep.prompts - begin);
    km::HookRegistry clean_hooks(c);
    for (int64_t l : sweep.layers) clean_hooks.Cache(km::HookPoint::ResidPre(l));
    km::KVCache kv;
    km::ForwardRequest clean;
    clean.input_ids = ids.narrow(0, begin, pb);
    clean.kv_cache = &kv;
    clean.hooks = &clean_hooks;
    clean.logits = km::ForwardRequest::Logits::kLastPosition;
    KO_ASSIGN_OR_RETURN(km::ForwardResult clean_out, model.Forward(clean));
    const at::Tensor clean_logp = at::log_softmax(clean_out.logits.select(1, 0), -1);  // [pb, V]
    const at::Tensor clean_p = clean_logp.exp();
    const int64_t heads_per_chunk = std::max<int64_t>(1, sweep.batch_rows / pb);
    for (int64_t l : sweep.layers) {
      const at::Tensor resid =
          clean_hooks.cache().at(km::HookPoint::ResidPre(l).Name()).narrow(1, t - post, post);
      for (int64_t h0 = 0; h0 < h; h0 += heads_per_chunk) {
        const int64_t hc = std::min(heads_per_chunk, h - h0);
        const int64_t b = hc * pb;
        km::HookRegistry hooks(c);
        for (int64_t i = 0; i < hc; ++i) {
          km::InterventionSite site;
          site.hook = km::HookPoint::AttnZ(l);
          site.intervention = km::Intervention::Zero().OnUnits({h0 + i});
          site.rows = at::zeros({b}, at::kBool);
          site.rows.narrow(0, i * pb, pb).fill_(true);
          KO_RETURN_IF_ERROR(hooks.Intervene(std::move(site)));
        }
        km::KVCache prefix = kv.Prefix(t - post);
        prefix.shared_prefix = true;  // batch row r reads prompt r % pb's clean keys
        km::ForwardRequest request;
        if (l == 0) {  // layer 0 starts from the tokens (the embedding is not cached)
          request.input_ids = clean.input_ids.narrow(1, t - post, post).repeat({hc, 1});
        } else {
          request.start_layer = l;
          request.start_residual = resid.repeat({hc, 1, 1});
        }
        request.attention_mask = at::ones({b, post}, at::TensorOptions().dtype(at::kLong).device(dev));
        request.kv_cache = &prefix;
        request.hooks = &hooks;
        request.logits = km::ForwardRequest::Logits::kLastPosition;
        KO_ASSIGN_OR_RETURN(km::ForwardResult out, model.Forward(request));
        // Rows are head-major ([hc, pb]): the clean distribution broadcasts over the heads.
        const at::Tensor logp = at::log_softmax(out.logits.select(1, 0), -1).view({hc, pb, -1});
        kl_sum += (clean_p * (clean_logp - logp)).sum().item<double>();
      }
    }
  }
  return std::make_pair(static_cast<int64_t>(sweep.layers.size()) * h, kl_sum);
}

}  // namespace

int main(int argc, char** argv) {
  using knockout::model::LoadOptions;
  using knockout::model::Model;
  if (argc < 3) return Usage();
  const std::string mode = argv[1];
  const std::string dir = argv[2];
  if (mode == "write") {
    std::string size = "134m", storage_name = "f32";
    for (int i = 3; i < argc; ++i) {
      if (std::strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
        size = argv[++i];
      } else if (std::strcmp(argv[i], "--storage") == 0 && i + 1 < argc) {
        storage_name = argv[++i];
      } else {
        return Usage();
      }
    }
    if (size != "134m" && size != "1b") return Usage();
    auto storage = knockout::model::ParseComputeDType(storage_name);
    if (!storage.ok()) {
      std::fprintf(stderr, "%s\n", storage.status().ToString().c_str());
      return 2;
    }
    LoadOptions in_memory;
    in_memory.dtype = *storage;  // one copy in the storage dtype, not a float32 one first
    auto model = size == "1b" ? Model::Random(knockout::bench::Bench1BConfig(),
                                              knockout::bench::kSeed, knockout::bench::kInitStd,
                                              in_memory)
                              : knockout::bench::BenchModel(in_memory);
    knockout::Status status = model->Save(dir, *storage);
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", status.ToString().c_str());
      return 1;
    }
    std::printf("{\"wrote\":\"%s\",\"weight_bytes\":%lld}\n", dir.c_str(),
                static_cast<long long>(model->WeightBytes()));
    return 0;
  }
  if (mode != "load") return Usage();
  LoadOptions options;
  std::string dtype_name = "f32";
  int64_t forward_tokens = 0;
  HeadSweep sweep;
  auto positive = [](const char* text, int64_t minimum) {
    char* end = nullptr;
    const long long v = std::strtoll(text, &end, 10);
    return (*text != '\0' && *end == '\0' && v >= minimum) ? static_cast<int64_t>(v) : int64_t{-1};
  };
  for (int i = 3; i < argc; ++i) {
    if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      dtype_name = argv[++i];
    } else if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      auto device = knockout::model::ParseDevice(argv[++i]);
      if (!device.ok()) {
        std::fprintf(stderr, "%s\n", device.status().ToString().c_str());
        return 2;
      }
      options.device = *device;
    } else if (std::strcmp(argv[i], "--forward") == 0 && i + 1 < argc) {
      forward_tokens = std::atoll(argv[++i]);
      if (forward_tokens < 1) return Usage();
    } else if (std::strcmp(argv[i], "--head-sweep") == 0 && i + 1 < argc) {
      if ((sweep.prompts = positive(argv[++i], 1)) < 0) return Usage();
    } else if (std::strcmp(argv[i], "--sweep-tokens") == 0 && i + 1 < argc) {
      if ((sweep.tokens = positive(argv[++i], 2)) < 0) return Usage();
    } else if (std::strcmp(argv[i], "--sweep-post") == 0 && i + 1 < argc) {
      if ((sweep.post = positive(argv[++i], 1)) < 0) return Usage();
    } else if (std::strcmp(argv[i], "--batch-rows") == 0 && i + 1 < argc) {
      if ((sweep.batch_rows = positive(argv[++i], 1)) < 0) return Usage();
    } else if (std::strcmp(argv[i], "--sweep-layers") == 0 && i + 1 < argc) {
      std::stringstream list(argv[++i]);
      std::string item;
      while (std::getline(list, item, ',')) {
        const int64_t l = positive(item.c_str(), 0);
        if (l < 0) return Usage();
        sweep.layers.push_back(l);
      }
    } else {
      return Usage();
    }
  }
  auto dtype = knockout::model::ParseComputeDType(dtype_name);
  if (!dtype.ok()) {
    std::fprintf(stderr, "%s\n", dtype.status().ToString().c_str());
    return 2;
  }
  options.dtype = *dtype;

  const int64_t rss_before = ProcStatusBytes("VmRSS");
  const int64_t hwm_before = ProcStatusBytes("VmHWM");
  const auto start = std::chrono::steady_clock::now();
  auto model = Model::Load(dir, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t hwm_after = ProcStatusBytes("VmHWM");
  const int64_t rss_after = ProcStatusBytes("VmRSS");
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  const int64_t weight_bytes = (*model)->WeightBytes();
  const int64_t peak_increase = hwm_after - rss_before;
  double tokens_per_s = 0.0;
  int64_t hwm_forward = 0;
  if (forward_tokens > 0) {
    c10::InferenceMode inference;
    knockout::model::ForwardRequest request;
    request.input_ids =
        at::randint(1, (*model)->config().vocab_size, {1, forward_tokens}, at::kLong);
    request.logits = knockout::model::ForwardRequest::Logits::kLastPosition;
    for (int pass = 0; pass < 2; ++pass) {  // the first pass is untimed
      const auto t0 = std::chrono::steady_clock::now();
      auto out = (*model)->Forward(request);
      if (!out.ok()) {
        std::fprintf(stderr, "%s\n", out.status().ToString().c_str());
        return 1;
      }
      (void)out->logits.sum().item<float>();  // waits for the device
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tokens_per_s = static_cast<double>(forward_tokens) / s;
    }
    hwm_forward = ProcStatusBytes("VmHWM");
  }
  double sweep_seconds = 0, sweep_kl = 0;
  int64_t sweep_trials = 0, hwm_sweep = 0;
  if (sweep.prompts > 0) {
    const int64_t n = (*model)->config().num_layers;
    if (sweep.layers.empty()) {
      for (int64_t l = 0; l < n; ++l) sweep.layers.push_back(l);
    }
    for (int64_t l : sweep.layers) {
      if (l >= n) {
        std::fprintf(stderr, "--sweep-layers %lld: the model has %lld layers\n", (long long)l, (long long)n);
        return 2;
      }
    }
    if (sweep.post >= sweep.tokens) {
      std::fprintf(stderr, "--sweep-post must be < --sweep-tokens\n");
      return 2;
    }
    c10::InferenceMode inference;
    const auto t0 = std::chrono::steady_clock::now();
    auto swept = RunHeadSweep(**model, sweep);
    if (!swept.ok()) {
      std::fprintf(stderr, "%s\n", swept.status().ToString().c_str());
      return 1;
    }
    sweep_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sweep_trials = swept->first;
    sweep_kl = swept->second;
    hwm_sweep = ProcStatusBytes("VmHWM");
  }
  std::printf(
      "{\"dir\":\"%s\",\"dtype\":\"%s\",\"weight_bytes\":%lld,\"rss_before\":%lld,"
      "\"hwm_before\":%lld,\"peak_rss\":%lld,\"rss_after\":%lld,\"peak_increase\":%lld,"
      "\"ratio\":%.4f,\"new_high_water_mark\":%s,\"load_seconds\":%.3f,"
      "\"forward_tokens\":%lld,\"forward_tokens_per_s\":%.2f,\"peak_rss_after_forward\":%lld,"
      "\"head_sweep_prompts\":%lld,\"head_sweep_tokens\":%lld,\"head_sweep_trials\":%lld,"
      "\"head_sweep_seconds\":%.3f,\"head_sweep_trials_per_s\":%.4f,\"head_sweep_kl_sum\":%.6g,"
      "\"peak_rss_after_sweep\":%lld}\n",
      dir.c_str(), dtype_name.c_str(), static_cast<long long>(weight_bytes),
      static_cast<long long>(rss_before), static_cast<long long>(hwm_before),
      static_cast<long long>(hwm_after), static_cast<long long>(rss_after),
      static_cast<long long>(peak_increase),
      static_cast<double>(peak_increase) / static_cast<double>(weight_bytes),
      hwm_after > hwm_before ? "true" : "false", seconds, static_cast<long long>(forward_tokens),
      tokens_per_s, static_cast<long long>(hwm_forward), static_cast<long long>(sweep.prompts),
      static_cast<long long>(sweep.tokens), static_cast<long long>(sweep_trials), sweep_seconds,
      sweep_seconds > 0 ? static_cast<double>(sweep_trials) / sweep_seconds : 0.0, sweep_kl,
      static_cast<long long>(hwm_sweep));
  return 0;
}
