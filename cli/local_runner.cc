#include "cli/local_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "cli/queries.h"
#include "cli/remote.h"
#include "coordinator/server.h"
#include "experiments/spec_inputs.h"
#include "experiments/spec_tokens.h"
#include "experiments/sweep_store.h"
#include "rpc/channel.h"
#include "storage/store.h"

namespace knockout::cli {

namespace fs = std::filesystem;

namespace {

// knockout-worker: next to this executable (an install), or in the build tree's worker/.
StatusOr<std::string> FindWorkerBinary(const std::string& configured) {
  if (!configured.empty()) {
    if (access(configured.c_str(), X_OK) != 0) {
      return Status::NotFound(configured + ": not an executable (--worker-binary)");
    }
    return configured;
  }
  if (const char* env = std::getenv("KNOCKOUT_WORKER"); env && *env) return std::string(env);
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (!error) {
    for (const fs::path& candidate :
         {self.parent_path() / "knockout-worker", self.parent_path() / ".." / "worker" / "knockout-worker"}) {
      if (access(candidate.c_str(), X_OK) == 0) return candidate.lexically_normal().string();
    }
  }
  return Status::NotFound(
      "knockout-worker not found next to knockout or in ../worker/; set KNOCKOUT_WORKER or pass "
      "--worker-binary");
}

struct WorkerProcess {
  pid_t pid = -1;
  std::string log;
  int exit_status = 0;  // waitpid status once reaped
  bool reaped = false;
};

// Starts one worker. Its output goes to `log`; it is killed if this process dies (kill -9
// included), so that no orphan keeps pulling from a coordinator that is gone.
StatusOr<pid_t> SpawnWorker(const std::vector<std::string>& argv, const std::string& log) {
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IOError(log + ": cannot open the worker log");
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    return Status::Internal("fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);  // the parent died before prctl took effect
    // Own process group: a terminal's Ctrl-C reaches the CLI, which stops the workers itself.
    setpgid(0, 0);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fd);
  return pid;
}

std::string LogTail(const std::string& path, int lines) {
  std::ifstream file(path);
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(file, line)) {
    tail.push_back(line);
    if (static_cast<int>(tail.size()) > lines) tail.pop_front();
  }
  std::string text;
  for (const std::string& l : tail) text += "\n    " + l;
  return text;
}

// Stops the workers: SIGTERM (they give their leases back), then SIGKILL after `grace`.
void StopWorkers(std::vector<WorkerProcess>& workers, std::chrono::milliseconds grace) {
  for (WorkerProcess& worker : workers) {
    if (!worker.reaped) kill(worker.pid, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (WorkerProcess& worker : workers) {
    while (!worker.reaped) {
      if (waitpid(worker.pid, &worker.exit_status, WNOHANG) == worker.pid) {
        worker.reaped = true;
      } else if (std::chrono::steady_clock::now() > deadline) {
        kill(worker.pid, SIGKILL);
        waitpid(worker.pid, &worker.exit_status, 0);
        worker.reaped = true;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }
}

void PrintSummary(const v1::SweepSpec& spec, const experiments::SweepReader& sweeps,
                  const std::string& id, std::ostream& out) {
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
  for (const v1::Stage& stage : spec.stages()) {
    if (!stage.has_attribution_screen()) continue;
    // The screen against the knockouts that verified it: its summary lines only.
    std::ostringstream check;
    if (!PrintScreenCheck(sweeps, id, stage.name(), check).ok()) continue;
    out << "\n== screen-check: " << stage.name() << " (knockout screen-check " << spec.name()
        << " --stage " << stage.name() << ") ==\n";
    std::istringstream lines(check.str());
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind("Spearman", 0) == 0 || line.find("recall:") != std::string::npos) {
        out << line << "\n";
      }
    }
  }
}

// `--devices`: each entry cpu, cuda or cuda:N (whether CUDA is there is the worker's to say).
Status CheckDevices(const LocalRunOptions& options) {
  for (size_t i = 0; i < options.devices.size(); ++i) {
    const std::string& d = options.devices[i];
    bool ok = d == "cpu" || d == "cuda";
    if (!ok && d.rfind("cuda:", 0) == 0 && d.size() > 5) {
      ok = d.find_first_not_of("0123456789", 5) == std::string::npos;
    }
    if (!ok) {
      return Status::InvalidArgument("--devices: entry " + std::to_string(i + 1) + " \"" + d +
                                     "\" is not a device (expected cpu, cuda or cuda:N)");
    }
  }
  if (!options.devices.empty() && options.workers > 1 &&
      options.workers != static_cast<int>(options.devices.size())) {
    return Status::InvalidArgument("--devices lists " + std::to_string(options.devices.size()) +
                                   " devices but --workers asks for " +
                                   std::to_string(options.workers) +
                                   " workers (one worker runs per device; drop --workers)");
  }
  return Status::Ok();
}

}  // namespace

Status RunLocal(const experiments::ParsedSpec& parsed, const LocalRunOptions& options,
                std::ostream& out) {
  const v1::SweepSpec& spec = parsed.spec;
  // The checks a submission gets, before the coordinator starts: the model's shape and the
  // prompts as they are read here (SubmitSpec reads and sends them again).
  experiments::ParsedSpec filled = parsed;
  KO_RETURN_IF_ERROR(experiments::FillSpecInputs(&filled));
  KO_ASSIGN_OR_RETURN(experiments::ModelShape shape, experiments::SpecModelShape(filled.spec));
  KO_RETURN_IF_ERROR(experiments::ValidateSpecFiles(filled, shape));
  KO_RETURN_IF_ERROR(experiments::ValidateSpecTokens(filled));
  KO_RETURN_IF_ERROR(CheckDevices(options));
  KO_ASSIGN_OR_RETURN(const std::string worker_binary, FindWorkerBinary(options.worker_binary));
  const int workers_wanted =
      options.devices.empty() ? std::max(1, options.workers) : static_cast<int>(options.devices.size());
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = options.threads > 0 ? options.threads : std::max(1, cores / workers_wanted);

  // The coordinator, embedded, on a free loopback port. Its log lines (start-up) stay quiet.
  std::ostringstream server_log;
  coordinator::ServerOptions server_options;
  server_options.store_dir = options.store_dir;
  server_options.listen = "127.0.0.1:0";
  server_options.scheduler.lease_ms = options.lease_ms;
  // Every lease in the store belongs to workers of an earlier run of this command, which died
  // with it: give them back at once instead of waiting for their deadlines.
  server_options.scheduler.release_leases_on_open = true;
  server_options.log = &server_log;
  KO_ASSIGN_OR_RETURN(auto server, coordinator::Server::Start(server_options));

  rpc::ChannelOptions channel;
  channel.address = server->address();
  KO_ASSIGN_OR_RETURN(auto client, rpc::CoordinatorClient::Connect(channel));
  KO_ASSIGN_OR_RETURN(v1::SubmitSweepResponse submitted,
                      SubmitSpec(*client, spec.source(), /*priority=*/0));
  const std::string id = submitted.sweep_id();
  out << "sweep " << id << (submitted.resumed() ? " (resumed)" : "") << " in "
      << options.store_dir << "\n"
      << std::flush;

  std::vector<WorkerProcess> workers;
  const bool already_finished = submitted.progress().sweep().state() == v1::DONE;
  for (int i = 0; i < workers_wanted && !already_finished; ++i) {
    WorkerProcess worker;
    worker.log = (fs::path(options.store_dir) / ("worker-" + std::to_string(i + 1) + ".log")).string();
    std::vector<std::string> argv = {
        worker_binary, "--coordinator", server->address(), "--threads", std::to_string(threads),
        "--batch-rows", std::to_string(options.max_batch_rows), "--name",
        "local-" + std::to_string(i + 1)};
    if (!options.devices.empty()) {
      argv.push_back("--device");
      argv.push_back(options.devices[i]);
    }
    auto pid = SpawnWorker(argv, worker.log);
    if (!pid.ok()) {
      StopWorkers(workers, std::chrono::seconds(5));
      return pid.status();
    }
    worker.pid = *pid;
    workers.push_back(worker);
  }

  // A worker that exits by itself (a fatal error: a model that does not load...) ends the run:
  // nobody else would take its shards in embedded mode.
  std::atomic<bool> stop{false};
  std::mutex died_mu;
  std::string died;
  std::atomic<bool> watching{true};
  std::thread monitor([&] {
    while (watching.load()) {
      if (options.stop && options.stop->load()) stop = true;
      for (WorkerProcess& worker : workers) {
        if (worker.reaped) continue;
        if (waitpid(worker.pid, &worker.exit_status, WNOHANG) == worker.pid) {
          worker.reaped = true;
          std::lock_guard<std::mutex> lock(died_mu);
          std::ostringstream why;
          why << "worker " << worker.pid << " exited (";
          if (WIFEXITED(worker.exit_status)) {
            why << "status " << WEXITSTATUS(worker.exit_status);
          } else {
            why << "signal " << WTERMSIG(worker.exit_status);
          }
          why << "); last lines of " << worker.log << ":" << LogTail(worker.log, 8);
          died = why.str();
          stop = true;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });

  WatchOptions watch;
  watch.shard_lines = !options.live;  // plain lines when the output is a file or a pipe
  watch.live = options.live;
  watch.interval_ms = options.live ? 250 : 100;
  watch.stop = &stop;
  watch.since = &submitted.progress();
  v1::SweepProgress final;
  const auto start = std::chrono::steady_clock::now();
  Status watched = WatchProgress(*client, id, watch, out, &final);
  watching = false;
  monitor.join();
  StopWorkers(workers, std::chrono::seconds(10));
  server->Shutdown();

  if (!died.empty() && !(options.stop && options.stop->load())) {
    return Status::Internal(died);
  }
  if (!watched.ok()) {
    if (watched.code() == StatusCode::kFailedPrecondition) {
      return Status::FailedPrecondition("interrupted; run the same command again to resume sweep " +
                                        id);
    }
    return watched;
  }
  if (final.sweep().state() == v1::FAILED) {
    return Status::FailedPrecondition("sweep " + id + " failed: " + final.sweep().error());
  }
  if (final.sweep().state() == v1::CANCELLED) {
    return Status::FailedPrecondition("sweep " + id + " was cancelled");
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out << "sweep " << id << " done (" << std::fixed << std::setprecision(1) << seconds
      << " s this run)\n";
  if (!options.summary) return Status::Ok();

  // The summary reads the store the coordinator has just closed.
  KO_ASSIGN_OR_RETURN(auto store, storage::Store::OpenReadOnly(options.store_dir));
  experiments::SweepStore sweeps(store.get());
  PrintSummary(spec, sweeps, id, out);
  return Status::Ok();
}

}  // namespace knockout::cli
