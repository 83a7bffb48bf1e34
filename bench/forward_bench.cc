// Forward-pass throughput of the model runtime on a random Llama-shaped model (bench_model.h),
// batch 8 x 128 tokens, float32 on the CPU, under c10::InferenceMode:
//   BM_Forward                       no hooks, logits at every position (like the reference bench)
//   BM_ForwardOneCachedHookPerLayer  the same with blocks.{l}.hook_resid_post cached for every l
//   BM_ForwardLastPositionOnly       no hooks, logits at the last position only (what sweeps use)
//   BM_HookOverheadPaired            each iteration runs one BM_Forward pass and one
//                                    BM_ForwardOneCachedHookPerLayer pass (alternating which goes
//                                    first) and times each: counter hook_overhead_pct compares
//                                    them under the same machine and allocator conditions, which
//                                    on a noisy machine is more precise than comparing two
//                                    benchmarks that ran a minute apart
// Counter tokens/s = batch * seq / wall-clock seconds per forward.
//
// Environment: KNOCKOUT_BENCH_THREADS (LibTorch intra-op threads; default: hardware
// concurrency), KNOCKOUT_BENCH_ITERS (timed forward passes per benchmark, default 5; each
// benchmark runs untimed warm-up passes first), KNOCKOUT_BENCH_WARMUP (those warm-up passes,
// default 1; a pair for BM_HookOverheadPaired), KNOCKOUT_BENCH_PAIRS (timed iterations of
// BM_HookOverheadPaired, default 3, i.e. 6 forward passes).
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/api/include/torch/version.h>

#include <chrono>
#include <string>
#include <thread>

#include "bench/bench_model.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"

namespace knockout::bench {
namespace {

using model::ForwardRequest;

const int64_t kWarmup = EnvInt("KNOCKOUT_BENCH_WARMUP", 1, /*minimum=*/0);

const model::Model& SharedModel() {
  static const std::unique_ptr<model::Model> kModel = BenchModel();
  return *kModel;
}

const at::Tensor& SharedInputIds() {
  static const at::Tensor kIds = [] {
    at::Generator generator = at::detail::createCPUGenerator(1);
    return at::randint(1, BenchConfig().vocab_size, {kBatch, kSeq}, generator, at::kLong);
  }();
  return kIds;
}

void RunForward(benchmark::State& state, ForwardRequest::Logits logits, bool cache_resid_post) {
  c10::InferenceMode guard;
  const model::Model& m = SharedModel();
  model::HookRegistry hooks(m.config());
  if (cache_resid_post) {
    for (int64_t l = 0; l < m.config().num_layers; ++l) {
      hooks.Cache(model::HookPoint::ResidPost(l));
    }
  }
  ForwardRequest request;
  request.input_ids = SharedInputIds();
  request.logits = logits;
  request.hooks = cache_resid_post ? &hooks : nullptr;

  // Untimed warm-up passes, which also check the output.
  for (int64_t pass = 0; pass < kWarmup; ++pass) {
    auto result = m.Forward(request);
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      return;
    }
    const int64_t positions = logits == ForwardRequest::Logits::kAll ? kSeq : 1;
    if (result->logits.size(0) != kBatch || result->logits.size(1) != positions ||
        result->logits.size(2) != m.config().vocab_size) {
      state.SkipWithError("unexpected logits shape");
      return;
    }
    if (cache_resid_post &&
        static_cast<int64_t>(hooks.cache().size()) != m.config().num_layers) {
      state.SkipWithError("the hook registry did not cache one activation per layer");
      return;
    }
  }

  for (auto _ : state) {
    auto result = m.Forward(request);
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(result->logits.data_ptr());
    benchmark::ClobberMemory();
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kBatch * kSeq),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = at::get_num_threads();
  state.SetLabel("B=" + std::to_string(kBatch) + " T=" + std::to_string(kSeq));
}

void BM_Forward(benchmark::State& state) {
  RunForward(state, ForwardRequest::Logits::kAll, /*cache_resid_post=*/false);
}
void BM_ForwardOneCachedHookPerLayer(benchmark::State& state) {
  RunForward(state, ForwardRequest::Logits::kAll, /*cache_resid_post=*/true);
}
void BM_ForwardLastPositionOnly(benchmark::State& state) {
  RunForward(state, ForwardRequest::Logits::kLastPosition, /*cache_resid_post=*/false);
}

void BM_HookOverheadPaired(benchmark::State& state) {
  c10::InferenceMode guard;
  const model::Model& m = SharedModel();
  model::HookRegistry hooks(m.config());
  for (int64_t l = 0; l < m.config().num_layers; ++l) hooks.Cache(model::HookPoint::ResidPost(l));
  ForwardRequest plain;
  plain.input_ids = SharedInputIds();
  plain.logits = ForwardRequest::Logits::kAll;
  ForwardRequest hooked = plain;
  hooked.hooks = &hooks;

  double plain_s = 0, hooked_s = 0;
  auto timed = [&](const ForwardRequest& request, double* seconds) {
    const auto start = std::chrono::steady_clock::now();
    auto result = m.Forward(request);
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      return false;
    }
    benchmark::DoNotOptimize(result->logits.data_ptr());
    *seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return true;
  };
  // Untimed warm-up pairs: the first hooked pass also grows the heap by the cached activations.
  double unused = 0;
  for (int64_t pass = 0; pass < kWarmup; ++pass) {
    if (!timed(hooked, &unused) || !timed(plain, &unused)) return;
  }
  int64_t iteration = 0;
  for (auto _ : state) {
    const bool hooked_first = iteration++ % 2 == 1;
    const bool ok = hooked_first ? timed(hooked, &hooked_s) && timed(plain, &plain_s)
                                 : timed(plain, &plain_s) && timed(hooked, &hooked_s);
    if (!ok) break;
  }
  if (plain_s <= 0 || hooked_s <= 0) return;
  const double tokens = static_cast<double>(kBatch * kSeq) * static_cast<double>(iteration);
  state.counters["hook_overhead_pct"] = 100.0 * (hooked_s / plain_s - 1.0);
  state.counters["plain_tokens/s"] = tokens / plain_s;
  state.counters["hooked_tokens/s"] = tokens / hooked_s;
  state.counters["threads"] = at::get_num_threads();
}

const int64_t kIters = EnvInt("KNOCKOUT_BENCH_ITERS", 5);
const int64_t kPairs = EnvInt("KNOCKOUT_BENCH_PAIRS", 3);

BENCHMARK(BM_Forward)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(kIters);
BENCHMARK(BM_ForwardOneCachedHookPerLayer)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(kIters);
BENCHMARK(BM_ForwardLastPositionOnly)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(kIters);
BENCHMARK(BM_HookOverheadPaired)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(kPairs);

}  // namespace
}  // namespace knockout::bench

int main(int argc, char** argv) {
  const unsigned hw = std::thread::hardware_concurrency();
  const int64_t threads = knockout::bench::EnvInt("KNOCKOUT_BENCH_THREADS", hw > 0 ? hw : 1);
  at::set_num_threads(static_cast<int>(threads));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
