// How well an attribution screen predicted the real knockouts (science.md "Attribution
// screening"): the rank statistics `knockout screen-check` prints. No proto, no store, no
// LibTorch (library knockout_selection): plain functions over numbers.
// Thread-safety: stateless functions.
#pragma once

#include <cstddef>
#include <vector>

namespace knockout::experiments {

// Ranks 1..n of `values` (ascending), ties given the mean of the ranks they span.
std::vector<double> AverageRanks(const std::vector<double>& values);

// Spearman's rank correlation of two equally long series: the Pearson correlation of their
// average ranks (ties handled as scipy.stats.spearmanr does). NaN when fewer than 2 pairs, the
// lengths differ, or either series is constant.
double Spearman(const std::vector<double>& a, const std::vector<double>& b);

// The fraction of the real top k that the screen put in its top k: over units indexed 0..n-1,
// `screen_top[i]` says whether unit i was in the screen's top k (k = how many are), and the real
// top k are the k units with the largest `real_key` (ties: the lower index). NaN when k is 0.
double TopKRecall(const std::vector<bool>& screen_top, const std::vector<double>& real_key);

}  // namespace knockout::experiments
