#include "experiments/screen_check.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace knockout::experiments {

std::vector<double> AverageRanks(const std::vector<double>& values) {
  const size_t n = values.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(n, 0.0);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && values[order[j + 1]] == values[order[i]]) ++j;
    const double rank = (static_cast<double>(i) + static_cast<double>(j)) / 2.0 + 1.0;
    for (size_t k = i; k <= j; ++k) ranks[order[k]] = rank;
    i = j + 1;
  }
  return ranks;
}

double Spearman(const std::vector<double>& a, const std::vector<double>& b) {
  const double nan = std::nan("");
  if (a.size() != b.size() || a.size() < 2) return nan;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return nan;
  }
  const std::vector<double> ra = AverageRanks(a), rb = AverageRanks(b);
  const double n = static_cast<double>(a.size());
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / n;
  const double mb = std::accumulate(rb.begin(), rb.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  if (saa == 0 || sbb == 0) return nan;
  return sab / std::sqrt(saa * sbb);
}

double TopKRecall(const std::vector<bool>& screen_top, const std::vector<double>& real_key) {
  const size_t k = static_cast<size_t>(std::count(screen_top.begin(), screen_top.end(), true));
  if (k == 0 || screen_top.size() != real_key.size()) return std::nan("");
  std::vector<size_t> order(real_key.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return real_key[a] > real_key[b]; });
  size_t hits = 0;
  for (size_t i = 0; i < k; ++i) hits += screen_top[order[i]] ? 1 : 0;
  return static_cast<double>(hits) / static_cast<double>(k);
}

}  // namespace knockout::experiments
