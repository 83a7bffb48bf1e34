// Fault points in a normal build: nothing can be armed, KNOCKOUT_FAULTS is never read, every
// point is a no-op (fault_points.h). Linked into every binary that is not a test.
#include "common/fault_points.h"

namespace knockout::fault {

bool Enabled() { return false; }
Action Hit(const char*) { return Action::kNone; }
void Arm(const std::string&, Action, int) {}
void DisarmAll() {}

}  // namespace knockout::fault
