// Named fault points for tests (RocksDB's sync points, Ray's rpc_chaos): code marks a place with
// KO_FAULT_POINT("report.after_commit") and a test arms it to crash the process there or to make
// the caller drop a reply. The code that marks points always calls Hit(); which implementation a
// binary gets is chosen when it is linked: test binaries (and the -test variants of the
// processes that the chaos tests run, e.g. knockout-coordinator-test) link fault_points.cc, every
// other binary links fault_points_off.cc, where nothing can be armed and Hit() returns kNone
// (common/CMakeLists.txt: the object libraries knockout_fault_points and _off).
//
// Arming: fault::Arm(name, action, after) in-process, or the environment variable
// KNOCKOUT_FAULTS="name=action[@n],..." read on first use (action: crash | drop | error; n: fire
// on the n-th hit, default 1; each fires once).
// Thread-safety: Arm/Hit may be called from any thread (a mutex guards the table).
#pragma once

#include <string>

namespace knockout::fault {

enum class Action { kNone, kCrash, kDrop, kError };

// Whether this binary has armable fault points (false: linked with fault_points_off.cc).
bool Enabled();
// Records a hit of `name`; returns the armed action when it fires (kCrash never returns: the
// process exits at once with status 86, like kill -9 without cleanup).
Action Hit(const char* name);
// Arms `name` to fire `action` on hit number `after` (1 = the next hit).
void Arm(const std::string& name, Action action, int after = 1);
void DisarmAll();
#define KO_FAULT_POINT(name) ::knockout::fault::Hit(name)

}  // namespace knockout::fault
