// Time for the coordinator: wall-clock milliseconds since the Unix epoch, behind an interface so
// that lease expiry is tested with a fake clock instead of sleeping. Wall clock (not steady):
// lease deadlines are stored and must mean the same after a restart.
// Thread-safety: both implementations may be read from any thread; FakeClock's setters too.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace knockout::coordinator {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual uint64_t NowMs() const = 0;
};

class SystemClock : public Clock {
 public:
  uint64_t NowMs() const override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  }
};

class FakeClock : public Clock {
 public:
  explicit FakeClock(uint64_t start_ms = 1'700'000'000'000ull) : now_ms_(start_ms) {}
  uint64_t NowMs() const override { return now_ms_.load(); }
  void Advance(uint64_t ms) { now_ms_ += ms; }
  void Set(uint64_t ms) { now_ms_ = ms; }

 private:
  std::atomic<uint64_t> now_ms_;
};

}  // namespace knockout::coordinator
