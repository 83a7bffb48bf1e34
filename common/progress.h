// One progress phrase for long loops (training steps, benchmark repetitions): the share done,
// the time so far and the estimated time left at the mean rate so far, e.g.
// "40% (800/2000), 1m12s, ETA 1m48s". Header-only; thread-safe (pure).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

namespace knockout {

// "45s", "3m07s", "2h05m": a duration for people.
inline std::string HumanDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  char buffer[32];
  if (s < 60) {
    std::snprintf(buffer, sizeof(buffer), "%llds", static_cast<long long>(s));
  } else if (s < 3600) {
    std::snprintf(buffer, sizeof(buffer), "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  } else {
    std::snprintf(buffer, sizeof(buffer), "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  }
  return buffer;
}

inline std::string ProgressText(int64_t done, int64_t total, double elapsed_seconds) {
  std::string text = std::to_string(total > 0 ? done * 100 / total : 100) + "% (" +
                     std::to_string(done) + "/" + std::to_string(total) + "), " +
                     HumanDuration(elapsed_seconds);
  if (done > 0 && done < total) {
    text += ", ETA " + HumanDuration(elapsed_seconds * static_cast<double>(total - done) /
                                     static_cast<double>(done));
  }
  return text;
}

}  // namespace knockout
