// Self-test of scripts/check-thread-safety.py (ctest thread_safety): a member guarded by a mutex
// and read without it. clang's -Wthread-safety must reject the marked line; if it does not, the
// check fails instead of passing over code it cannot judge. Never built, only analysed.
#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>

namespace knockout::testing {

class Counter {
 public:
  void Add() {
    absl::MutexLock lock(&mu_);
    ++count_;
  }
  int Read() const { return count_; }  // VIOLATION: count_ read without mu_

 private:
  mutable absl::Mutex mu_;
  int count_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace knockout::testing
