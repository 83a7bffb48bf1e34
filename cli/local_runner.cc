#include "cli/local_runner.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>
#include <iomanip>
#include <thread>

#include "cli/queries.h"
#include "experiments/engine.h"
#include "experiments/sweep_store.h"
#include "storage/store.h"
#include "worker/executor/executor.h"
#include "worker/model/checkpoint_files.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"

namespace knockout::cli {

namespace {

float ToFloat(model::DType dtype, const uint8_t* p) {
  uint32_t bits = 0;
  float value = 0;
  switch (dtype) {
    case model::DType::kF32:
      std::memcpy(&value, p, 4);
      return value;
    case model::DType::kBF16:
      bits = static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16;
      std::memcpy(&value, &bits, 4);
      return value;
    case model::DType::kF16: {
      const uint16_t h = static_cast<uint16_t>(p[0] | (p[1] << 8));
      const uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
      if (exponent == 0) {
        value = std::ldexp(static_cast<float>(mantissa), -24);
      } else if (exponent == 31) {
        value = mantissa ? std::nanf("") : INFINITY;
      } else {
        value = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
      }
      return sign ? -value : value;
    }
    default:
      return std::nanf("");
  }
}

}  // namespace

experiments::NeuronRanker MakeNeuronRanker(const std::string& model_dir) {
  return [model_dir](int layer, const std::string& score, const std::vector<float>& direction,
                     uint32_t k) -> StatusOr<std::vector<int32_t>> {
    if (score != "direction_cosine") {
      return Status::InvalidArgument("neuron score " + score + ": only direction_cosine is implemented");
    }
    const std::string name = "model.layers." + std::to_string(layer) + ".mlp.down_proj.weight";
    KO_ASSIGN_OR_RETURN(auto files, model::CheckpointWeightFiles(model_dir));
    for (const std::string& path : files) {
      KO_ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open(path));
      const int index = file->header().Find(name);
      if (index < 0) continue;
      const model::TensorInfo& info = file->header().tensors[index];
      if (info.shape.size() != 2 || info.shape[0] != static_cast<int64_t>(direction.size())) {
        return Status::InvalidArgument(path + ": " + name + " does not match the direction's size");
      }
      const int64_t d = info.shape[0], n = info.shape[1];
      const size_t width = model::DTypeSize(info.dtype);
      const uint8_t* data = file->TensorData(info);
      // |cos(W_down[:, j], r)| for every neuron j: the neuron's write direction vs r.
      std::vector<double> dot(n, 0.0), norm(n, 0.0);
      double r_norm = 0;
      for (int64_t i = 0; i < d; ++i) {
        r_norm += static_cast<double>(direction[i]) * direction[i];
        for (int64_t j = 0; j < n; ++j) {
          const double w = ToFloat(info.dtype, data + (i * n + j) * width);
          dot[j] += w * direction[i];
          norm[j] += w * w;
        }
      }
      std::vector<int32_t> order(n);
      for (int64_t j = 0; j < n; ++j) order[j] = static_cast<int32_t>(j);
      auto cosine = [&](int32_t j) { return std::abs(dot[j]) / (std::sqrt(norm[j] * r_norm) + 1e-30); };
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return cosine(a) > cosine(b); });
      order.resize(std::min<size_t>(order.size(), k));
      std::sort(order.begin(), order.end());
      return order;
    }
    return Status::NotFound(model_dir + ": no tensor " + name);
  };
}

StatusOr<experiments::ModelShape> ReadModelShape(const std::string& model_dir) {
  KO_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(model_dir));
  experiments::ModelShape shape;
  shape.num_layers = config.num_layers;
  shape.num_heads = config.num_heads;
  shape.intermediate_size = config.intermediate_size;
  shape.hidden_size = config.hidden_size;
  return shape;
}

Status RunLocal(const experiments::ParsedSpec& parsed, const LocalRunOptions& options,
                std::ostream& out) {
  const v1::SweepSpec& spec = parsed.spec;
  KO_ASSIGN_OR_RETURN(experiments::ModelShape shape, ReadModelShape(spec.model().path()));
  KO_RETURN_IF_ERROR(experiments::ValidateSpecFiles(parsed, shape));
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);

  KO_ASSIGN_OR_RETURN(auto store, storage::Store::Open(options.store_dir));
  experiments::SweepStore sweeps(store.get());
  experiments::SweepEngine engine(&sweeps, shape, MakeNeuronRanker(spec.model().path()));
  bool resumed = false;
  KO_ASSIGN_OR_RETURN(std::string id, engine.Submit(spec, &resumed));
  out << "sweep " << id << (resumed ? " (resumed)" : "") << " in " << options.store_dir << "\n"
      << std::flush;

  std::unique_ptr<executor::LoadedModel> model;
  std::unique_ptr<executor::ShardExecutor> shard_executor;
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    KO_ASSIGN_OR_RETURN(auto pending, engine.Advance(id));
    if (pending.empty()) break;
    if (!model) {
      KO_ASSIGN_OR_RETURN(executor::LoadedModel loaded, executor::LoadModel(spec.model()));
      model = std::make_unique<executor::LoadedModel>(std::move(loaded));
      executor::ExecutorOptions executor_options;
      executor_options.max_batch_rows = options.max_batch_rows;
      shard_executor = std::make_unique<executor::ShardExecutor>(*model, executor_options);
    }
    const v1::Shard& first = pending.front().shard();
    KO_ASSIGN_OR_RETURN(v1::StageRecord stage, sweeps.GetStage(id, first.stage()));
    for (const v1::ShardRecord& record : pending) {
      if (options.stop && options.stop->load()) {
        return Status::FailedPrecondition("interrupted; run the same command again to resume sweep " + id);
      }
      auto result = shard_executor->Run(record.shard());
      if (!result.ok()) {
        const Status failed = result.status().WithContext("sweep " + id);
        KO_RETURN_IF_ERROR(sweeps.FailShard(id, first.stage(), record.shard().index(),
                                            record.attempt() + 1, failed.message()));
        KO_RETURN_IF_ERROR(engine.Fail(id, failed.message()));
        return failed;
      }
      KO_RETURN_IF_ERROR(engine.Commit(*result, record.attempt() + 1));
      KO_ASSIGN_OR_RETURN(stage, sweeps.GetStage(id, first.stage()));
      out << "  [" << stage.index() + 1 << "/" << spec.stages_size() << " " << stage.name() << "] shard "
          << stage.shards_done() << "/" << stage.shards_total() << ": "
          << record.shard().trials_size() << " trials, " << record.shard().prompts_size()
          << " prompts, " << std::fixed << std::setprecision(2) << result->seconds() << " s\n"
          << std::flush;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out << "sweep " << id << " done (" << std::fixed << std::setprecision(1) << seconds
      << " s this run)\n";
  if (!options.summary) return Status::Ok();

  // The summary: selections, refusal rates and the top of the compensation table.
  for (const v1::Stage& stage : spec.stages()) {
    if (stage.has_select_direction() || stage.has_generate() || stage.has_orthogonalize()) {
      out << "\n== " << stage.name() << " ==\n";
      ResultsQuery query;
      query.sweep = id;
      query.stage = stage.name();
      if (stage.has_select_direction()) query.where = {"passed=true"};
      Status s = PrintResults(sweeps, query, out);
      if (!s.ok()) out << "(" << s.ToString() << ")\n";
    }
  }
  {
    std::ostringstream cosines;
    if (PrintDirectionCosines(sweeps, id, cosines).ok()) {
      out << "\n== harmfulness vs refusal directions ==\n" << cosines.str();
    }
  }
  for (const v1::Stage& stage : spec.stages()) {
    if (stage.has_knockout_sweep() && stage.knockout_sweep().compensation()) {
      out << "\n== compensation: " << stage.name() << " (top 10 by |TE|) ==\n";
      std::ostringstream table;
      Status s = PrintCompensation(sweeps, id, stage.name(), 3, table);
      if (!s.ok()) {
        out << "(" << s.ToString() << ")\n";
        continue;
      }
      std::istringstream lines(table.str());
      std::string line;
      for (int n = 0; n < 12 && std::getline(lines, line); ++n) out << line << "\n";
    }
  }
  return Status::Ok();
}

}  // namespace knockout::cli
