// The armable fault points: linked only into test binaries (fault_points.h).
#include "common/fault_points.h"

#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

namespace knockout::fault {
namespace {

struct Armed {
  Action action = Action::kNone;
  int remaining = 0;  // hits left before it fires; fires when it reaches 0
};

struct Table {
  absl::Mutex mu;
  std::map<std::string, Armed> armed ABSL_GUARDED_BY(mu);
  bool env_read ABSL_GUARDED_BY(mu) = false;
};

Table& GetTable() {
  static Table* table = new Table();  // never destroyed: hits may come during exit
  return *table;
}

Action ParseAction(const std::string& text) {
  if (text == "crash") return Action::kCrash;
  if (text == "drop") return Action::kDrop;
  if (text == "error") return Action::kError;
  return Action::kNone;
}

void ReadEnvironment(Table& table) ABSL_EXCLUSIVE_LOCKS_REQUIRED(table.mu) {
  if (table.env_read) return;
  table.env_read = true;
  const char* env = std::getenv("KNOCKOUT_FAULTS");
  if (!env) return;
  std::stringstream items(env);
  std::string item;
  while (std::getline(items, item, ',')) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) continue;
    std::string action = item.substr(eq + 1);
    int after = 1;
    if (const size_t at = action.find('@'); at != std::string::npos) {
      after = std::atoi(action.c_str() + at + 1);
      action.resize(at);
    }
    table.armed[item.substr(0, eq)] = Armed{ParseAction(action), after < 1 ? 1 : after};
  }
}

}  // namespace

bool Enabled() { return true; }

Action Hit(const char* name) {
  Table& table = GetTable();
  Action action = Action::kNone;
  {
    absl::MutexLock lock(&table.mu);
    ReadEnvironment(table);
    auto it = table.armed.find(name);
    if (it == table.armed.end() || --it->second.remaining > 0) return Action::kNone;
    action = it->second.action;
    table.armed.erase(it);
  }
  if (action == Action::kCrash) {
    std::fprintf(stderr, "fault point %s: crashing\n", name);
    std::fflush(stderr);
    _exit(86);
  }
  return action;
}

void Arm(const std::string& name, Action action, int after) {
  Table& table = GetTable();
  absl::MutexLock lock(&table.mu);
  ReadEnvironment(table);
  table.armed[name] = Armed{action, after < 1 ? 1 : after};
}

void DisarmAll() {
  Table& table = GetTable();
  absl::MutexLock lock(&table.mu);
  table.env_read = true;
  table.armed.clear();
}

}  // namespace knockout::fault
