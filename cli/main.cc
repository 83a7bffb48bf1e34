// knockout: the command researchers use. Runs sweeps locally (embedded engine + executor over a
// local store), validates specs, and queries stores: status, results, compensation, directions.
#include <CLI/CLI.hpp>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "cli/local_runner.h"
#include "cli/queries.h"
#include "experiments/checkpoint_info.h"
#include "experiments/engine.h"
#include "experiments/spec.h"
#include "experiments/sweep_store.h"
#include "storage/store.h"

namespace {

namespace kc = knockout::cli;
namespace ke = knockout::experiments;
using knockout::Status;
using knockout::StatusOr;

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

std::string DefaultStore() {
  const char* env = std::getenv("KNOCKOUT_STORE");
  return env && *env ? env : "knockout-store";
}

int Fail(const Status& status) {
  std::cerr << "knockout: " << status.ToString() << "\n";
  return 1;
}

// Queries never create a store, and read beside a running `knockout run` (read-only, no lock).
StatusOr<std::unique_ptr<knockout::storage::Store>> OpenExisting(const std::string& dir) {
  auto store = knockout::storage::Store::OpenReadOnly(dir);
  if (store.status().code() == knockout::StatusCode::kNotFound) {
    return Status::NotFound("no store at " + dir +
                            " (run `knockout run SPEC` first, or pass --store DIR)");
  }
  return store;
}

int Validate(const std::string& path) {
  auto parsed = ke::LoadSpec(path);
  if (!parsed.ok()) return Fail(parsed.status());
  auto shape = ke::ReadModelShape(parsed->spec.model().path());
  if (!shape.ok()) return Fail(shape.status().WithContext(parsed->Where("model.path")));
  if (Status s = ke::ValidateSpecFiles(*parsed, *shape); !s.ok()) return Fail(s);
  auto plan = ke::PlanSweep(parsed->spec, *shape);
  if (!plan.ok()) return Fail(plan.status());
  std::cout << path << ": ok — sweep " << parsed->spec.name() << " (id "
            << ke::SweepIdFor(parsed->spec) << "), model " << parsed->spec.model().path() << " ("
            << shape->num_layers << " layers, " << shape->num_heads << " heads)\n";
  std::cout << std::left << std::setw(4) << "#" << std::setw(18) << "stage" << std::setw(20)
            << "kind" << std::right << std::setw(8) << "shards" << std::setw(9) << "trials"
            << std::setw(9) << "prompts" << "\n";
  uint64_t shards = 0, trials = 0;
  for (size_t i = 0; i < plan->size(); ++i) {
    const ke::StagePlan& p = (*plan)[i];
    std::cout << std::left << std::setw(4) << i << std::setw(18) << p.name << std::setw(20) << p.kind
              << std::right << std::setw(8) << p.shards << std::setw(9) << p.trials << std::setw(9)
              << p.prompts << "\n";
    shards += p.shards;
    trials += p.trials;
  }
  std::cout << plan->size() << " stages, " << shards << " shards, " << trials << " trials\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"knockout: ablation sweeps inside transformer language models"};
  app.require_subcommand(1);
  std::string store_dir = DefaultStore();
  auto add_store = [&](CLI::App* cmd) {
    cmd->add_option("--store", store_dir, "store directory (default: $KNOCKOUT_STORE or ./knockout-store)");
  };

  std::string spec_path;
  auto* validate = app.add_subcommand("validate", "check a spec and its files; print stage and shard counts");
  validate->add_option("SPEC", spec_path, "sweep spec (YAML)")->required();

  kc::LocalRunOptions run_options;
  bool no_summary = false;
  auto* run = app.add_subcommand("run", "run (or resume) a sweep locally");
  run->add_option("SPEC", spec_path, "sweep spec (YAML)")->required();
  add_store(run);
  run->add_option("--threads", run_options.threads, "LibTorch CPU threads (default: all cores)");
  run->add_option("--batch-rows", run_options.max_batch_rows, "trial rows per forward pass")
      ->check(CLI::PositiveNumber);
  run->add_flag("--no-summary", no_summary, "do not print the summary tables");

  std::string sweep;
  auto* status = app.add_subcommand("status", "list sweeps with their stages and progress");
  status->add_option("SWEEP", sweep, "sweep id or name");
  add_store(status);

  kc::ResultsQuery query;
  std::string format = "table";
  auto* results = app.add_subcommand("results", "result tables of a sweep");
  results->add_option("SWEEP", query.sweep, "sweep id or name")->required();
  results->add_option("--stage", query.stage, "one stage (default: all)");
  results->add_option("--where", query.where, "FIELD=VALUE filter (repeatable)");
  results->add_option("--format", format, "table, csv or jsonl");
  results->add_flag("--per-prompt", query.per_prompt, "per-prompt rows instead of aggregates");
  add_store(results);

  std::string stage;
  int top = 5;
  auto* compensation = app.add_subcommand("compensation", "TE, DE, compensation and backup units");
  compensation->add_option("SWEEP", sweep, "sweep id or name")->required();
  compensation->add_option("--stage", stage, "a knockout_sweep stage (default: all with readings)");
  compensation->add_option("--top", top, "backup units shown per row")->check(CLI::NonNegativeNumber);
  compensation->add_option("--format", format, "table, csv or jsonl");
  add_store(compensation);

  std::string export_path;
  auto* directions = app.add_subcommand(
      "directions", "per-layer cosines of the extracted directions; --export writes them all");
  directions->add_option("SWEEP", sweep, "sweep id or name")->required();
  directions->add_option("--export", export_path, "output .safetensors file");
  directions->add_option("--format", format, "table, csv or jsonl");
  add_store(directions);

  CLI11_PARSE(app, argc, argv);

  if (validate->parsed()) return Validate(spec_path);
  if (run->parsed()) {
    auto parsed = ke::LoadSpec(spec_path);
    if (!parsed.ok()) return Fail(parsed.status());
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    run_options.store_dir = store_dir;
    run_options.summary = !no_summary;
    run_options.stop = &g_stop;
    Status s = kc::RunLocal(*parsed, run_options, std::cout);
    if (!s.ok()) {
      Fail(s);
      return g_stop.load() ? 130 : 1;
    }
    return 0;
  }
  auto store = OpenExisting(store_dir);
  if (!store.ok()) return Fail(store.status());
  ke::SweepStore sweeps(store->get());
  auto output_format = kc::ParseOutputFormat(format);
  if (!output_format.ok()) return Fail(output_format.status());
  Status s;
  if (status->parsed()) {
    s = kc::PrintStatus(sweeps, sweep, std::cout);
  } else if (results->parsed()) {
    query.format = *output_format;
    s = kc::PrintResults(sweeps, query, std::cout);
  } else if (compensation->parsed()) {
    s = kc::PrintCompensation(sweeps, sweep, stage, top, std::cout, *output_format);
  } else if (directions->parsed() && !export_path.empty()) {
    s = kc::ExportDirections(sweeps, sweep, export_path);
    if (s.ok()) std::cout << "wrote " << export_path << "\n";
  } else if (directions->parsed()) {
    s = kc::PrintDirectionCosines(sweeps, sweep, std::cout, *output_format);
  }
  return s.ok() ? 0 : Fail(s);
}
