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
#include "experiments/checkpoint_info.h"
#include "experiments/engine.h"
#include "experiments/sweep_store.h"
#include "storage/store.h"
#include "worker/executor/executor.h"
#include "worker/model/checkpoint_files.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"

namespace knockout::cli {

Status RunLocal(const experiments::ParsedSpec& parsed, const LocalRunOptions& options,
                std::ostream& out) {
  const v1::SweepSpec& spec = parsed.spec;
  KO_ASSIGN_OR_RETURN(experiments::ModelShape shape, experiments::ReadModelShape(spec.model().path()));
  KO_RETURN_IF_ERROR(experiments::ValidateSpecFiles(parsed, shape));
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);

  KO_ASSIGN_OR_RETURN(auto store, storage::Store::Open(options.store_dir));
  experiments::SweepStore sweeps(store.get());
  experiments::SweepEngine engine(&sweeps, shape, experiments::MakeNeuronRanker(spec.model().path()));
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
