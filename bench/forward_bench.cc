// Forward-pass throughput of the model runtime on a random Llama-shaped model (bench_model.h),
// batch 8 x 128 tokens, float32 on the CPU, under c10::InferenceMode:
//   BM_Forward                       no hooks, logits at every position (like the reference bench)
//   BM_ForwardOneCachedHookPerLayer  the same with blocks.{l}.hook_resid_post cached for every l
//   BM_ForwardLastPositionOnly       no hooks, logits at the last position only (what sweeps use)
// Counter tokens/s = batch * seq / wall-clock seconds per forward.
//
// Environment: KNOCKOUT_BENCH_THREADS (LibTorch intra-op threads; default: hardware
// concurrency), KNOCKOUT_BENCH_ITERS (timed forward passes per benchmark, default 5; each
// benchmark runs one untimed warm-up pass first).
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/api/include/torch/version.h>

#include <string>
#include <thread>

#include "bench/bench_model.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"

namespace knockout::bench {
namespace {

using model::ForwardRequest;

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

  // Untimed warm-up, which also checks the output.
  {
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

const int64_t kIters = EnvInt("KNOCKOUT_BENCH_ITERS", 5);

BENCHMARK(BM_Forward)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(kIters);
BENCHMARK(BM_ForwardOneCachedHookPerLayer)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(kIters);
BENCHMARK(BM_ForwardLastPositionOnly)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(kIters);

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
