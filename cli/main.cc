// knockout: the command researchers use. Validates specs; runs sweeps on one machine (`run`: an
// embedded coordinator on loopback plus local knockout-worker processes); submits, watches and
// cancels sweeps on a coordinator (`--coordinator ADDR`); and queries results from a local store
// (`--store DIR`) or a coordinator: status, results, compensation, directions. Torch-free.
#include <CLI/CLI.hpp>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <thread>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cli/completion.h"
#include "cli/local_runner.h"
#include "cli/queries.h"
#include "cli/remote.h"
#include "cli/report.h"
#include "cli/table.h"
#include "common/version.h"
#include "experiments/engine.h"
#include "experiments/spec.h"
#include "experiments/spec_inputs.h"
#include "experiments/spec_tokens.h"
#include "experiments/sweep_store.h"
#include "rpc/channel.h"
#include "storage/store.h"

namespace {

namespace kc = knockout::cli;
namespace ke = knockout::experiments;
using knockout::Status;
using knockout::StatusOr;

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

std::string FromEnvironment(const char* name, const char* fallback) {
  const char* env = std::getenv(name);
  return env && *env ? env : fallback;
}

// Where the data comes from: a local store directory, or a coordinator (--coordinator or
// $KNOCKOUT_COORDINATOR) with its TLS and token settings.
struct Source {
  std::string store_dir = FromEnvironment("KNOCKOUT_STORE", "knockout-store");
  knockout::rpc::ChannelOptions channel;
  bool remote() const { return !channel.address.empty(); }
};

void AddStoreFlag(CLI::App* cmd, Source* source) {
  cmd->add_option("--store", source->store_dir,
                  "store directory (default: $KNOCKOUT_STORE or ./knockout-store)");
}

void AddCoordinatorFlags(CLI::App* cmd, Source* source, bool required) {
  auto* option = cmd->add_option("--coordinator", source->channel.address,
                                 "coordinator address HOST:PORT (default: $KNOCKOUT_COORDINATOR)");
  if (required) option->required(source->channel.address.empty());
  cmd->add_option("--token-file", source->channel.token_file,
                  "bearer token file (default: $KNOCKOUT_TOKEN_FILE)");
  cmd->add_option("--tls-ca", source->channel.tls_ca, "PEM CA of the coordinator's certificate");
  cmd->add_option("--tls-cert", source->channel.tls_cert, "PEM client certificate (mutual TLS)");
  cmd->add_option("--tls-key", source->channel.tls_key, "PEM client key (mutual TLS)");
  cmd->add_option("--tls-server-name", source->channel.tls_server_name,
                  "name to check the coordinator's certificate against");
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

int Validate(const std::string& path, kc::OutputFormat format) {
  auto parsed = ke::LoadSpec(path);
  if (!parsed.ok()) return Fail(parsed.status());
  // What a submission carries: the model's shape and the prompts, read here (spec_inputs.h).
  if (Status s = ke::FillSpecInputs(&*parsed); !s.ok()) return Fail(s);
  auto shape = ke::SpecModelShape(parsed->spec);
  if (!shape.ok()) return Fail(shape.status());
  if (Status s = ke::ValidateSpecFiles(*parsed, *shape); !s.ok()) return Fail(s);
  if (Status s = ke::ValidateSpecTokens(*parsed); !s.ok()) return Fail(s);
  auto plan = ke::PlanSweep(parsed->spec, *shape);
  if (!plan.ok()) return Fail(plan.status());
  auto id = ke::SweepIdFor(parsed->spec);
  if (!id.ok()) return Fail(id.status());
  // The plan as a table: aligned for people, or csv / jsonl (one row per stage) for scripts.
  kc::Table table;
  table.name = "plan";
  table.columns = {"#", "stage", "kind", "shards", "trials", "prompts"};
  uint64_t shards = 0, trials = 0;
  for (size_t i = 0; i < plan->size(); ++i) {
    const ke::StagePlan& p = (*plan)[i];
    table.rows.push_back({kc::Cell::Integer(static_cast<int64_t>(i)), kc::Cell::Text(p.name),
                          kc::Cell::Text(p.kind), kc::Cell::Integer(static_cast<int64_t>(p.shards)),
                          kc::Cell::Integer(static_cast<int64_t>(p.trials)),
                          kc::Cell::Integer(static_cast<int64_t>(p.prompts))});
    shards += p.shards;
    trials += p.trials;
  }
  if (format != kc::OutputFormat::kTable) {
    kc::RenderTables({table}, format, std::cout);
    return 0;
  }
  std::cout << path << ": ok — sweep " << parsed->spec.name() << " (id "
            << *id << "), model " << parsed->spec.model().path() << " ("
            << shape->num_layers << " layers, " << shape->num_heads << " heads)\n";
  kc::RenderAligned(table, std::cout, "");
  std::cout << plan->size() << " stages, " << shards << " shards, " << trials << " trials\n";
  return 0;
}

// `status SWEEP --watch` (and `submit --watch`): a coordinator's WatchSweep stream, drawn in
// place on a terminal; on a local store, the status table re-read every second. Exit status:
// 0 when the sweep is done, 1 when it failed or was cancelled, 130 on Ctrl-C.
int Watch(const knockout::rpc::CoordinatorClient* client, const Source& source,
          const std::string& sweep) {
  if (sweep.empty()) return Fail(Status::InvalidArgument("--watch follows one sweep: name it"));
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  if (client) {
    kc::WatchOptions options;
    options.live = isatty(STDOUT_FILENO);
    options.stop = &g_stop;
    knockout::v1::SweepProgress final;
    Status s = kc::WatchProgress(*client, sweep, options, std::cout, &final);
    if (!s.ok()) {
      Fail(s);
      return g_stop.load() ? 130 : 1;
    }
    return final.sweep().state() == knockout::v1::DONE ? 0 : 1;
  }
  // A local store is written by `knockout run` in another process: re-open it read-only (a
  // snapshot each time) until the sweep ends.
  while (!g_stop.load()) {
    auto store = OpenExisting(source.store_dir);
    if (!store.ok()) return Fail(store.status());
    ke::SweepStore sweeps(store->get());
    auto id = sweeps.ResolveSweep(sweep);
    if (!id.ok()) return Fail(id.status());
    auto record = sweeps.GetSweep(*id);
    if (!record.ok()) return Fail(record.status());
    std::ostringstream table;
    if (Status s = kc::PrintStatus(sweeps, *id, table); !s.ok()) return Fail(s);
    if (isatty(STDOUT_FILENO)) std::cout << "\x1b[H\x1b[J";
    std::cout << table.str() << std::flush;
    const auto state = record->state();
    if (state == knockout::v1::DONE) return 0;
    if (state == knockout::v1::FAILED || state == knockout::v1::CANCELLED) return 1;
    for (int i = 0; i < 20 && !g_stop.load(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return 130;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"knockout: ablation sweeps inside transformer language models"};
  app.set_version_flag("--version", [] {
    auto libraries = knockout::rpc::LibraryVersions();
    libraries.emplace_back("RocksDB", knockout::storage::Store::RocksDbVersion());
    std::string text = knockout::VersionText("knockout", libraries);
    return text.substr(0, text.size() - 1);  // CLI11 ends the line
  });
  app.require_subcommand(1);
  Source source;
  source.channel.address = FromEnvironment("KNOCKOUT_COORDINATOR", "");
  source.channel.token_file = FromEnvironment("KNOCKOUT_TOKEN_FILE", "");
  // Query commands read a local store, or a coordinator when one is named.
  auto add_source = [&](CLI::App* cmd) {
    AddStoreFlag(cmd, &source);
    AddCoordinatorFlags(cmd, &source, /*required=*/false);
  };

  std::string spec_path;
  std::string format = "table";  // --format of every table command
  auto* validate = app.add_subcommand("validate", "check a spec and its files; print stage and shard counts");
  validate->add_option("SPEC", spec_path, "sweep spec (YAML)")->required();
  validate->add_option("--format", format, "table, csv or jsonl (the plan: one row per stage)");

  kc::LocalRunOptions run_options;
  bool no_summary = false;
  auto* run = app.add_subcommand(
      "run", "run (or resume) a sweep on this machine: embedded coordinator + local workers");
  run->add_option("SPEC", spec_path, "sweep spec (YAML)")->required();
  AddStoreFlag(run, &source);
  run->add_option("--workers", run_options.workers, "worker processes (default 1)")
      ->check(CLI::PositiveNumber);
  run->add_option("--devices", run_options.devices,
                  "one worker per device, pinned to it: cpu, cuda or cuda:N, comma-separated "
                  "(e.g. cuda:0,cuda:1; cpu,cpu works the same on CPU machines)")
      ->delimiter(',');
  run->add_option("--threads", run_options.threads,
                  "LibTorch CPU threads per worker (default: cores / workers)");
  run->add_option("--worker-binary", run_options.worker_binary,
                  "knockout-worker to start (default: next to knockout, or $KNOCKOUT_WORKER)");
  run->add_option("--batch-rows", run_options.max_batch_rows, "trial rows per forward pass")
      ->check(CLI::PositiveNumber);
  run->add_flag("--no-summary", no_summary, "do not print the summary tables");

  uint32_t priority = 0;
  bool follow = false;
  auto* submit = app.add_subcommand("submit", "submit a sweep to a coordinator; prints its id");
  submit->add_option("SPEC", spec_path, "sweep spec (YAML)")->required();
  submit->add_option("--priority", priority, "higher is leased first (default 0)");
  submit->add_flag("--watch", follow, "follow its progress until it ends");
  AddCoordinatorFlags(submit, &source, /*required=*/true);

  std::string sweep;
  bool watch = false;
  auto* status = app.add_subcommand("status", "sweeps with their stages and progress");
  status->add_option("SWEEP", sweep, "sweep id or name");
  status->add_flag("--watch", watch,
                   "follow one sweep live: progress bar, shards per state, ETA, workers, errors");
  status->add_option("--format", format, "table, csv or jsonl (one row per stage)");
  add_source(status);

  auto* cancel = app.add_subcommand("cancel", "cancel a sweep on a coordinator");
  cancel->add_option("SWEEP", sweep, "sweep id or name")->required();
  AddCoordinatorFlags(cancel, &source, /*required=*/true);

  kc::ResultsQuery query;
  auto* results = app.add_subcommand("results", "result tables of a sweep");
  results->add_option("SWEEP", query.sweep, "sweep id or name")->required();
  results->add_option("--stage", query.stage, "one stage (default: all)");
  results->add_option("--where", query.where, "FIELD=VALUE filter (repeatable)");
  results->add_option("--format", format, "table, csv or jsonl");
  results->add_flag("--per-prompt", query.per_prompt, "per-prompt rows instead of aggregates");
  add_source(results);

  std::string stage;
  int top = 5;
  auto* compensation = app.add_subcommand("compensation", "TE, DE, compensation and backup units");
  compensation->add_option("SWEEP", sweep, "sweep id or name")->required();
  compensation->add_option("--stage", stage, "a knockout_sweep stage (default: all with readings)");
  compensation->add_option("--top", top, "backup units shown per row")->check(CLI::NonNegativeNumber);
  compensation->add_option("--format", format, "table, csv or jsonl");
  std::vector<std::string> columns;
  compensation->add_option("--columns", columns, "only these columns, in this order")
      ->delimiter(',');
  add_source(compensation);

  auto* features = app.add_subcommand(
      "features", "the SAE latents each sae_latents target chose per layer, with their scores");
  features->add_option("SWEEP", sweep, "sweep id or name")->required();
  features->add_option("--stage", stage, "a knockout_sweep stage (default: all that ranked latents)");
  features->add_option("--format", format, "table, csv or jsonl");
  add_source(features);

  kc::BackupsQuery backups_query;
  auto* backups = app.add_subcommand(
      "backups", "SAE latents that rose when a unit was knocked out (dormant ones first)");
  backups->add_option("SWEEP", backups_query.sweep, "sweep id or name")->required();
  backups->add_option("--stage", backups_query.stage, "a knockout_sweep stage with backups")
      ->required();
  backups->add_option("--unit", backups_query.unit, "the knocked-out unit, e.g. L3F856")
      ->required();
  backups->add_option("--top", backups_query.top, "backups per trial and prompt set")
      ->check(CLI::PositiveNumber);
  backups->add_option("--format", format, "table, csv or jsonl");
  add_source(backups);

  auto* screen_check = app.add_subcommand(
      "screen-check",
      "an attribution screen's estimates vs the real knockouts that verified it (Spearman)");
  screen_check->add_option("SWEEP", sweep, "sweep id or name")->required();
  screen_check->add_option("--stage", stage, "the attribution_screen stage")->required();
  screen_check->add_option("--format", format, "table, csv or jsonl");
  add_source(screen_check);

  std::string export_path;
  auto* directions = app.add_subcommand(
      "directions", "per-layer cosines of the extracted directions; --export writes them all");
  directions->add_option("SWEEP", sweep, "sweep id or name")->required();
  directions->add_option("--export", export_path, "output .safetensors file");
  directions->add_option("--format", format, "table, csv or jsonl");
  add_source(directions);

  kc::ReportOptions report_options;
  std::string report_path;
  auto* report = app.add_subcommand(
      "report", "one self-contained HTML page of a sweep: heatmaps, rates, backups, CSVs");
  report->add_option("SWEEP", report_options.sweep, "sweep id or name")->required();
  report->add_option("--out", report_path, "the HTML file to write (replaced atomically)")
      ->required();
  report->add_option("--heatmaps", report_options.max_heatmaps, "heatmaps per stage at most")
      ->check(CLI::PositiveNumber);
  add_source(report);

  std::string shell;
  auto* completion = app.add_subcommand(
      "completion", "print a shell completion script: source <(knockout completion bash)");
  completion->add_option("SHELL", shell, "bash or zsh")->required();

  CLI11_PARSE(app, argc, argv);

  if (completion->parsed()) {
    auto script = kc::CompletionScript(app, "knockout", shell);
    if (!script.ok()) return Fail(script.status());
    std::cout << *script;
    return 0;
  }

  if (validate->parsed()) {
    auto validate_format = kc::ParseOutputFormat(format);
    if (!validate_format.ok()) return Fail(validate_format.status());
    return Validate(spec_path, *validate_format);
  }
  if (run->parsed()) {
    auto parsed = ke::LoadSpec(spec_path);
    if (!parsed.ok()) return Fail(parsed.status());
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    run_options.store_dir = source.store_dir;
    run_options.summary = !no_summary;
    run_options.live = isatty(STDOUT_FILENO);
    run_options.stop = &g_stop;
    Status s = kc::RunLocal(*parsed, run_options, std::cout);
    if (!s.ok()) {
      Fail(s);
      return g_stop.load() ? 130 : 1;
    }
    return 0;
  }

  auto output_format = kc::ParseOutputFormat(format);
  if (!output_format.ok()) return Fail(output_format.status());
  // Aligned tables fit the terminal they are printed on ($COLUMNS wins); files and pipes get
  // every column.
  if (isatty(STDOUT_FILENO)) {
    int width = 0;
    if (const char* columns = std::getenv("COLUMNS"); columns && *columns) width = std::atoi(columns);
    winsize size{};
    if (width <= 0 && ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0) width = size.ws_col;
    kc::SetTableWidth(width);
  }

  std::unique_ptr<knockout::rpc::CoordinatorClient> client;
  if (source.remote()) {
    auto connected = knockout::rpc::CoordinatorClient::Connect(source.channel);
    if (!connected.ok()) return Fail(connected.status());
    client = std::move(*connected);
  }
  if (submit->parsed()) {
    auto response = kc::SubmitSpec(*client, spec_path, priority);
    if (!response.ok()) return Fail(response.status());
    std::cout << response->sweep_id() << (response->resumed() ? " (resumed)" : "") << "\n"
              << std::flush;
    if (!follow) return 0;
    sweep = response->sweep_id();
    watch = true;
  }
  if (cancel->parsed()) {
    auto progress = kc::CancelSweep(*client, sweep);
    if (!progress.ok()) return Fail(progress.status());
    std::cout << "sweep " << progress->sweep().id() << " "
              << kc::RunStateName(progress->sweep().state()) << "\n";
    return 0;
  }
  if (watch) return Watch(client.get(), source, sweep);

  std::unique_ptr<knockout::storage::Store> store;
  std::unique_ptr<ke::SweepStore> local;
  std::unique_ptr<kc::RemoteSweepReader> remote;
  const ke::SweepReader* reader = nullptr;
  if (client) {
    remote = std::make_unique<kc::RemoteSweepReader>(client.get());
    reader = remote.get();
  } else {
    auto opened = OpenExisting(source.store_dir);
    if (!opened.ok()) return Fail(opened.status());
    store = std::move(*opened);
    local = std::make_unique<ke::SweepStore>(store.get());
    reader = local.get();
  }
  Status s;
  if (status->parsed()) {
    s = kc::PrintStatus(*reader, sweep, std::cout, *output_format);
    // A coordinator also knows the live side: shards per state, workers, failed attempts.
    if (s.ok() && remote && !sweep.empty() && *output_format == kc::OutputFormat::kTable) {
      auto progress = remote->Progress(sweep);
      if (!progress.ok()) return Fail(progress.status());
      std::cout << "\n" << kc::RenderProgress(*progress, 0);
    }
  } else if (results->parsed()) {
    query.format = *output_format;
    s = kc::PrintResults(*reader, query, std::cout);
  } else if (compensation->parsed()) {
    s = kc::PrintCompensation(*reader, sweep, stage, top, std::cout, *output_format, columns);
  } else if (features->parsed()) {
    s = kc::PrintFeatures(*reader, sweep, stage, std::cout, *output_format);
  } else if (backups->parsed()) {
    backups_query.format = *output_format;
    s = kc::PrintBackups(*reader, backups_query, std::cout);
  } else if (screen_check->parsed()) {
    s = kc::PrintScreenCheck(*reader, sweep, stage, std::cout, *output_format);
  } else if (directions->parsed() && !export_path.empty()) {
    s = kc::ExportDirections(*reader, sweep, export_path);
    if (s.ok()) std::cout << "wrote " << export_path << "\n";
  } else if (directions->parsed()) {
    s = kc::PrintDirectionCosines(*reader, sweep, std::cout, *output_format);
  } else if (report->parsed()) {
    report_options.source = client ? "coordinator " + source.channel.address
                                   : "store " + std::filesystem::absolute(source.store_dir).string();
    s = kc::WriteReportFile(*reader, report_options, report_path);
    if (s.ok()) std::cout << "wrote " << report_path << "\n";
  }
  return s.ok() ? 0 : Fail(s);
}
