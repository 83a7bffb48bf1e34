#include "common/progress.h"

#include <gtest/gtest.h>

namespace knockout {
namespace {

TEST(ProgressTest, DurationsForPeople) {
  EXPECT_EQ(HumanDuration(0), "0s");
  EXPECT_EQ(HumanDuration(44.6), "45s");
  EXPECT_EQ(HumanDuration(187), "3m07s");
  EXPECT_EQ(HumanDuration(7500), "2h05m");
  EXPECT_EQ(HumanDuration(-1), "?");
}

TEST(ProgressTest, ShareElapsedAndEtaAtTheMeanRate) {
  // 800 of 2000 in 72 s: 0.09 s each, 1200 left -> 108 s.
  EXPECT_EQ(ProgressText(800, 2000, 72), "40% (800/2000), 1m12s, ETA 1m48s");
  EXPECT_EQ(ProgressText(0, 10, 0), "0% (0/10), 0s");        // no rate yet: no ETA
  EXPECT_EQ(ProgressText(10, 10, 5), "100% (10/10), 5s");    // done: no ETA
}

}  // namespace
}  // namespace knockout
