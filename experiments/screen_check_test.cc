// Spearman's rank correlation and top-k recall against published values: scipy's documented
// example (scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233) and
// values worked by hand from the definition (Pearson correlation of average ranks).
#include "experiments/screen_check.h"

#include <gtest/gtest.h>

#include <cmath>

namespace knockout::experiments {
namespace {

TEST(ScreenCheckTest, SpearmanMatchesScipysDocumentedExample) {
  EXPECT_NEAR(Spearman({1, 2, 3, 4, 5}, {5, 6, 7, 8, 7}), 0.8207826816681233, 1e-12);
}

TEST(ScreenCheckTest, SpearmanOfMonotoneSeriesIsOneOrMinusOne) {
  EXPECT_DOUBLE_EQ(Spearman({0.1, 0.5, 2.0, 9.0}, {-3, -1, 4, 100}), 1.0);
  EXPECT_DOUBLE_EQ(Spearman({0.1, 0.5, 2.0, 9.0}, {3, 1, -4, -100}), -1.0);
}

TEST(ScreenCheckTest, SpearmanGivesTiesTheirAverageRank) {
  // ranks [1.5, 1.5, 3] vs [1, 2, 3]: 1.5 / sqrt(1.5 * 2) = sqrt(3) / 2.
  EXPECT_NEAR(Spearman({1, 1, 2}, {1, 2, 3}), std::sqrt(3.0) / 2.0, 1e-12);
  const std::vector<double> ranks = AverageRanks({10, 30, 10, 20, 30});
  EXPECT_EQ(ranks, (std::vector<double>{1.5, 4.5, 1.5, 3.0, 4.5}));
}

TEST(ScreenCheckTest, SpearmanIsUndefinedForConstantOrShortSeries) {
  EXPECT_TRUE(std::isnan(Spearman({1, 1, 1}, {1, 2, 3})));
  EXPECT_TRUE(std::isnan(Spearman({1}, {2})));
  EXPECT_TRUE(std::isnan(Spearman({1, 2}, {1, 2, 3})));
  EXPECT_TRUE(std::isnan(Spearman({1, NAN}, {1, 2})));
}

TEST(ScreenCheckTest, TopKRecallCountsTheRealTopKTheScreenFound) {
  // Real top 2 by key: units 3 (0.9) and 0 (0.8); the screen's top 2: units 0 and 1.
  EXPECT_DOUBLE_EQ(TopKRecall({true, true, false, false}, {0.8, 0.1, 0.3, 0.9}), 0.5);
  EXPECT_DOUBLE_EQ(TopKRecall({true, false, false, true}, {0.8, 0.1, 0.3, 0.9}), 1.0);
  EXPECT_TRUE(std::isnan(TopKRecall({false, false}, {1, 2})));
}

}  // namespace
}  // namespace knockout::experiments
