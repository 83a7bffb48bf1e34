// The selection rule of science.md ("Selection") on crafted candidates: each filter dropped by a
// candidate that fails only that filter and would otherwise win (the lowest bypass), boundary
// values that pass, NaN anywhere, zero-norm directions, ties, and no survivor. Expected values
// are science.md's rules worked by hand, not the function's output.
#include "experiments/selection.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace knockout::experiments {
namespace {

const double kNan = std::numeric_limits<double>::quiet_NaN();

SelectionCandidate C(int layer, double bypass, double induce, double kl,
                     std::optional<double> norm = std::nullopt) {
  SelectionCandidate c;
  c.layer = layer;
  c.position = "post_inst[-1]";
  c.bypass = bypass, c.induce = induce, c.kl = kl, c.norm = norm;
  return c;
}

// 6 layers: floor(0.8 * 6) = 4, so layers 0-3 may be chosen (the demo model's card).
SelectionFilters Filters() {
  SelectionFilters f;
  f.num_layers = 6;
  f.max_kl = 0.5;
  return f;
}

TEST(SelectionTest, EachFilterDropsTheOtherwiseBestCandidate) {
  // Bypass grows down the list: every candidate but the last fails exactly one filter and would
  // win without it.
  const std::vector<SelectionCandidate> candidates = {
      C(0, -20, 1.0, 0.1, kNan),  // NaN norm
      C(1, -19, kNan, 0.1),       // NaN induce
      C(1, kNan, 1.0, 0.1),       // NaN bypass
      C(1, -18, 1.0, kNan),       // NaN kl
      C(0, -17, 1.0, 0.1, 0.0),   // zero norm
      C(2, -16, 1.0, 0.1, 1e-7),  // norm below 1e-6
      C(4, -15, 1.0, 0.1, 130),   // layer 4 >= floor(0.8 * 6)
      C(5, -14, 1.0, 0.1),        // deeper still
      C(3, -13, 1.0, 0.51),       // kl > 0.5
      C(3, -12, -0.01, 0.1),      // induce < 0
      C(2, -3, 1.0, 0.1, 40),     // passes
  };
  const SelectionResult r = SelectDirection(candidates, Filters());
  ASSERT_EQ(r.rejected.size(), candidates.size());
  EXPECT_EQ(r.chosen, 10);
  const std::vector<std::string> want = {"NaN score", "NaN score", "NaN score", "NaN score",
                                         "norm <= 1e-06", "norm <= 1e-06", "layer >= 4",
                                         "layer >= 4", "kl > 0.5", "induce < 0", ""};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(r.rejected[i], want[i]) << "candidate " << i;
}

TEST(SelectionTest, BoundaryValuesPass) {
  // kl == max_kl, induce == min_induce, layer floor(0.8 L) - 1 all pass; norm 2e-6 > 1e-6.
  const std::vector<SelectionCandidate> candidates = {C(3, -5, 0.0, 0.5, 2e-6), C(1, -1, 2, 0)};
  const SelectionResult r = SelectDirection(candidates, Filters());
  EXPECT_EQ(r.chosen, 0);
  EXPECT_EQ(r.rejected[0], "");
  EXPECT_EQ(r.rejected[1], "");
}

TEST(SelectionTest, TiesGoToTheEarliestCandidate) {
  const std::vector<SelectionCandidate> candidates = {C(5, -9, 1, 0.1), C(2, -4, 1, 0.1),
                                                      C(1, -4, 1, 0.1), C(3, -4, 1, 0.2)};
  EXPECT_EQ(SelectDirection(candidates, Filters()).chosen, 1);
}

TEST(SelectionTest, NoneLeft) {
  const std::vector<SelectionCandidate> candidates = {C(4, -9, 1, 0.1), C(0, -4, -1, 0.1)};
  const SelectionResult r = SelectDirection(candidates, Filters());
  EXPECT_EQ(r.chosen, -1);
  EXPECT_EQ(r.rejected[0], "layer >= 4");
  EXPECT_EQ(r.rejected[1], "induce < 0");
  EXPECT_TRUE(SelectDirection({}, Filters()).rejected.empty());
}

TEST(SelectionTest, SettingsChangeTheFilters) {
  SelectionFilters f = Filters();
  f.max_layer_fraction = 0.5;  // floor(0.5 * 6) = 3
  f.min_induce = 0.5;
  f.max_kl = 0.1;              // science.md's default
  const std::vector<SelectionCandidate> candidates = {C(3, -9, 1, 0.05), C(1, -8, 0.4, 0.05),
                                                      C(1, -7, 1, 0.11), C(2, -6, 0.5, 0.1)};
  const SelectionResult r = SelectDirection(candidates, f);
  EXPECT_EQ(r.chosen, 3);
  EXPECT_EQ(r.rejected[0], "layer >= 3");
  EXPECT_EQ(r.rejected[1], "induce < 0.5");
  EXPECT_EQ(r.rejected[2], "kl > 0.1");
  EXPECT_EQ(f.Describe(), "layer < 3, kl <= 0.1, induce >= 0.5, |r| > 1e-06");
}

}  // namespace
}  // namespace knockout::experiments
