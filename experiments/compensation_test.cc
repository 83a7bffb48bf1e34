#include "experiments/compensation.h"

#include <gtest/gtest.h>

#include <cmath>

namespace knockout::experiments {
namespace {

v1::ResultRow Row(uint32_t trial, const std::string& set, std::map<std::string, double> values,
                  std::vector<std::tuple<int, int, double, double>> downstream = {},
                  int prompt = -1) {
  v1::ResultRow row;
  row.set_trial(trial);
  row.set_prompt_set(set);
  row.set_prompt(prompt);
  for (const auto& [key, value] : values) (*row.mutable_values())[key] = value;
  for (const auto& [layer, unit, clean, ablated] : downstream) {
    v1::UnitReading* reading = row.add_downstream();
    reading->set_layer(layer);
    reading->set_unit(unit);
    reading->set_clean(clean);
    reading->set_ablated(ablated);
  }
  return row;
}

v1::TrialLabel Head(int layer, int head) {
  v1::TrialLabel label;
  label.set_unit_kind("head");
  label.set_layer(layer);
  label.set_unit(head);
  label.set_ablation("zero");
  label.set_positions("all");
  return label;
}

TEST(CompensationTest, ComputesTeDeCompensationRatioAndNormShare) {
  // Knocking out L2H1 removes a direct effect of -1.0; the total effect is only -0.4: 0.6 of it
  // came back, 0.15 through the final norm.
  const auto rows = ComputeCompensation(
      {Row(0, "harmful",
           {{"te", -0.4}, {"de", -1.0}, {"norm_effect", 0.15}, {"refusal_score", 1.6},
            {"clean_refusal_score", 2.0}},
           {{3, 0, 0.1, 0.5}, {3, 1, 0.2, 0.1}, {4, 2, 0.0, 0.05}, {5, 0, 0.0, -0.3}})},
      {{0, Head(2, 1)}}, /*top_n=*/-1);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 1u);
  const CompensationRow& row = rows->front();
  EXPECT_EQ(row.trial, 0u);
  EXPECT_EQ(row.label.layer(), 2);
  EXPECT_EQ(row.prompt_set, "harmful");
  EXPECT_DOUBLE_EQ(row.te, -0.4);
  EXPECT_DOUBLE_EQ(row.de, -1.0);
  EXPECT_DOUBLE_EQ(row.c, row.te - row.de);
  EXPECT_DOUBLE_EQ(row.c, 0.6);
  EXPECT_DOUBLE_EQ(row.ratio, 0.6);
  EXPECT_DOUBLE_EQ(row.norm_effect, 0.15);
  EXPECT_DOUBLE_EQ(row.norm_share, 0.25);
  EXPECT_DOUBLE_EQ(row.refusal_score, 1.6);
  EXPECT_DOUBLE_EQ(row.clean_refusal_score, 2.0);
  EXPECT_NEAR(row.explained, 0.4 - 0.1 + 0.05 - 0.3, 1e-15);
  EXPECT_NEAR(row.unexplained, 0.6 - 0.15 - 0.05, 1e-15);
  EXPECT_EQ(row.downstream_count, 4u);
}

TEST(CompensationTest, BackupsThatGrewBackComeFirstThenByMagnitude) {
  const std::vector<v1::ResultRow> input = {
      Row(0, "harmful", {{"te", -0.4}, {"de", -1.0}},
          {{3, 1, 0.2, 0.1}, {5, 0, 0.0, -0.3}, {4, 2, 0.0, 0.05}, {3, 0, 0.1, 0.5}})};
  const auto all = ComputeCompensation(input, {{0, Head(2, 1)}}, -1);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  const auto& backups = all->front().top_backups;
  ASSERT_EQ(backups.size(), 4u);
  // DE < 0: units whose direct effect rose (+) push the score back up: compensating.
  EXPECT_EQ(backups[0].layer, 3);
  EXPECT_EQ(backups[0].unit, 0);
  EXPECT_NEAR(backups[0].change, 0.4, 1e-15);
  EXPECT_TRUE(backups[0].compensating);
  EXPECT_EQ(backups[1].layer, 4);
  EXPECT_TRUE(backups[1].compensating);
  EXPECT_NEAR(backups[1].change, 0.05, 1e-15);
  // Then the units that amplified the knockout, by |change|.
  EXPECT_EQ(backups[2].layer, 5);
  EXPECT_FALSE(backups[2].compensating);
  EXPECT_NEAR(backups[2].change, -0.3, 1e-15);
  EXPECT_EQ(backups[3].layer, 3);
  EXPECT_EQ(backups[3].unit, 1);
  EXPECT_FALSE(backups[3].compensating);

  const auto top2 = ComputeCompensation(input, {{0, Head(2, 1)}}, 2);
  ASSERT_TRUE(top2.ok());
  ASSERT_EQ(top2->front().top_backups.size(), 2u);
  EXPECT_EQ(top2->front().top_backups[1].layer, 4);
  // `explained` sums every unit, not only the top ones.
  EXPECT_NEAR(top2->front().explained, all->front().explained, 1e-15);

  const auto none = ComputeCompensation(input, {{0, Head(2, 1)}}, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->front().top_backups.empty());
}

TEST(CompensationTest, PositiveDirectEffectFlipsWhatCompensates) {
  // Knocking out a unit that lowered refusal (DE > 0): backups are the ones whose effect fell.
  const auto rows = ComputeCompensation(
      {Row(0, "harmless", {{"te", 0.3}, {"de", 0.5}}, {{6, 0, 0.2, -0.1}, {6, 1, 0.0, 0.4}})},
      {{0, Head(5, 0)}}, -1);
  ASSERT_TRUE(rows.ok());
  const auto& backups = rows->front().top_backups;
  ASSERT_EQ(backups.size(), 2u);
  EXPECT_EQ(backups[0].unit, 0);
  EXPECT_TRUE(backups[0].compensating);
  EXPECT_FALSE(backups[1].compensating);
  EXPECT_NEAR(rows->front().c, -0.2, 1e-15);
}

TEST(CompensationTest, OverCorrectionIsJudgedAgainstTheDirectEffect) {
  // TE has the opposite sign of DE (self-repair over-corrected): the backups share TE's sign.
  EXPECT_EQ(CompensationReferenceSign(0.2, -1.0), -1);
  const auto rows = ComputeCompensation(
      {Row(0, "harmful", {{"te", 0.2}, {"de", -1.0}}, {{4, 0, 0.0, 1.2}})}, {{0, Head(1, 0)}},
      -1);
  ASSERT_TRUE(rows.ok());
  EXPECT_TRUE(rows->front().top_backups[0].compensating);
  EXPECT_DOUBLE_EQ(rows->front().ratio, 1.2);
}

TEST(CompensationTest, ZeroDirectEffectGivesNaNRatioAndUsesTotalEffect) {
  EXPECT_EQ(CompensationReferenceSign(-0.5, 0.0), -1);
  EXPECT_EQ(CompensationReferenceSign(0.0, 0.0), 0);
  const auto rows = ComputeCompensation(
      {Row(0, "harmful", {{"te", -0.5}, {"de", 0.0}, {"norm_effect", 0.1}},
           {{4, 0, 0.0, 0.2}, {4, 1, 0.0, -0.7}}),
       Row(1, "harmful", {{"te", -0.5}, {"de", -0.5}, {"norm_effect", 0.0}})},
      {{0, Head(1, 0)}, {1, Head(1, 1)}}, -1);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 2u);
  const CompensationRow& mediated = (*rows)[0];
  EXPECT_TRUE(std::isnan(mediated.ratio));
  EXPECT_DOUBLE_EQ(mediated.c, -0.5);
  EXPECT_DOUBLE_EQ(mediated.norm_share, -0.2);
  EXPECT_TRUE(mediated.top_backups[0].compensating);  // +0.2 opposes TE < 0
  EXPECT_EQ(mediated.top_backups[0].unit, 0);
  // C == 0: no share of nothing.
  const CompensationRow& exact = (*rows)[1];
  EXPECT_DOUBLE_EQ(exact.c, 0.0);
  EXPECT_DOUBLE_EQ(exact.ratio, 0.0);
  EXPECT_TRUE(std::isnan(exact.norm_share));
  EXPECT_EQ(exact.downstream_count, 0u);
}

// C / |DE| is shown only where |DE| >= kRatioMinDeShare (5%) of |TE|: here |DE| = 0.01 against
// |TE| = 0.5 (2%) gives NaN ("-" in the table), |DE| = 0.05 against 0.5 (10%) a ratio.
TEST(CompensationTest, RatioOnlyWhereTheDirectEffectIsNotNegligible) {
  const auto rows = ComputeCompensation(
      {Row(0, "harmful", {{"te", -0.5}, {"de", -0.01}}), Row(1, "harmful", {{"te", -0.5}, {"de", -0.05}})},
      {{0, Head(1, 0)}, {1, Head(1, 1)}}, 5);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_TRUE(std::isnan((*rows)[0].ratio));
  EXPECT_DOUBLE_EQ((*rows)[1].ratio, (-0.5 - -0.05) / 0.05);
}

// The decomposition adds up to C by its definition (norm_effect + explained + unexplained), with
// explained the sum over every read unit (heads and MLP outputs of a head sweep), and `read`
// names the kinds of units read. A row whose every prompt was left out is skipped.
TEST(CompensationTest, DecompositionNamesTheUnitsItRead) {
  v1::ResultRow head_row = Row(0, "harmful", {{"te", -0.4}, {"de", -1.0}, {"norm_effect", 0.1}, {"prompts", 4}},
                               {{3, 2, 0.1, 0.3}, {3, -1, 0.2, 0.5}});
  head_row.mutable_downstream(0)->set_kind(v1::UnitReading::HEAD);
  head_row.mutable_downstream(1)->set_kind(v1::UnitReading::MLP_OUT);
  v1::ResultRow empty = Row(1, "harmful", {{"prompts", 0}, {"excluded_prompts", 4}});
  const auto rows = ComputeCompensation({head_row, empty}, {{0, Head(2, 0)}, {1, Head(2, 1)}}, -1);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 1u);
  const CompensationRow& row = rows->front();
  EXPECT_EQ(row.read, "heads+mlp_out");
  EXPECT_NEAR(row.explained, 0.2 + 0.3, 1e-12);  // (0.3 - 0.1) + (0.5 - 0.2)
  EXPECT_NEAR(row.norm_effect + row.explained + row.unexplained, row.c, 1e-12);
  EXPECT_NEAR(row.c, 0.6, 1e-12);
  EXPECT_EQ(row.top_backups[0].kind, v1::UnitReading::MLP_OUT);
}

TEST(CompensationTest, MissingNormEffectIsNaNNotZero) {
  const auto rows =
      ComputeCompensation({Row(0, "harmful", {{"te", -0.4}, {"de", -1.0}})}, {{0, Head(2, 1)}}, 5);
  ASSERT_TRUE(rows.ok());
  EXPECT_TRUE(std::isnan(rows->front().norm_effect));
  EXPECT_TRUE(std::isnan(rows->front().norm_share));
  EXPECT_TRUE(std::isnan(rows->front().unexplained));
  EXPECT_TRUE(std::isnan(rows->front().refusal_score));
}

TEST(CompensationTest, OneRowPerTrialAndSetSortedByLayerAndUnitSkippingPerPromptRows) {
  const auto rows = ComputeCompensation(
      {Row(0, "harmful", {{"te", -0.1}, {"de", -0.2}}),
       Row(0, "harmful", {{"te", 9.0}, {"de", 9.0}}, {}, /*prompt=*/3),
       Row(0, "harmless", {{"te", -0.3}, {"de", -0.2}}),
       Row(1, "harmful", {{"te", -0.5}, {"de", -0.2}}),
       Row(2, "harmful", {{"te", -0.7}, {"de", -0.2}})},
      {{0, Head(3, 1)}, {1, Head(0, 4)}, {2, Head(3, 0)}}, -1);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 4u);
  EXPECT_EQ((*rows)[0].trial, 1u);  // L0H4
  EXPECT_EQ((*rows)[1].trial, 2u);  // L3H0
  EXPECT_EQ((*rows)[2].trial, 0u);  // L3H1 harmful
  EXPECT_EQ((*rows)[2].prompt_set, "harmful");
  EXPECT_DOUBLE_EQ((*rows)[2].te, -0.1);  // the per-prompt row did not replace the aggregate
  EXPECT_EQ((*rows)[3].prompt_set, "harmless");
}

TEST(CompensationTest, MissingDirectEffectNamesTheTrial) {
  const auto rows = ComputeCompensation({Row(7, "harmful", {{"te", -0.4}, {"kl", 0.1}})},
                                        {{7, Head(2, 1)}}, 3);
  ASSERT_FALSE(rows.ok());
  EXPECT_EQ(rows.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(rows.status().message().find("trial 7"), std::string::npos);
  EXPECT_NE(rows.status().message().find("harmful"), std::string::npos);
  EXPECT_NE(rows.status().message().find("\"de\""), std::string::npos);
  EXPECT_NE(rows.status().message().find("kl"), std::string::npos);  // lists what it has
}

TEST(CompensationTest, DirectionalAblationHasATotalButNoDirectEffect) {
  // science.md's directional ablation removes the direction at every layer: no single write is
  // "direct", the worker records no de, and the row shows TE with DE and C left empty.
  v1::TrialLabel everywhere;
  everywhere.set_unit_kind("direction");
  everywhere.set_layer(-1);
  everywhere.set_unit(-1);
  everywhere.set_ablation("directional");
  everywhere.set_positions("all");
  v1::TrialLabel one_layer = everywhere;
  one_layer.set_layer(3);
  one_layer.set_ablation("project");
  const auto rows = ComputeCompensation(
      {Row(0, "harmful", {{"te", -4.5}}), Row(1, "harmful", {{"te", -0.5}, {"de", -2.0}})},
      {{0, everywhere}, {1, one_layer}}, 3);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_DOUBLE_EQ((*rows)[0].te, -4.5);
  EXPECT_TRUE(std::isnan((*rows)[0].de));
  EXPECT_TRUE(std::isnan((*rows)[0].c));
  EXPECT_TRUE(std::isnan((*rows)[0].ratio));
  EXPECT_DOUBLE_EQ((*rows)[1].c, 1.5);
  // A projection at one layer still needs its de.
  const auto missing =
      ComputeCompensation({Row(1, "harmful", {{"te", -0.5}})}, {{1, one_layer}}, 3);
  EXPECT_FALSE(missing.ok());
}

TEST(CompensationTest, MissingTotalEffectAndNonFiniteValuesAreErrors) {
  const auto no_te =
      ComputeCompensation({Row(4, "harmful", {{"de", -0.4}})}, {{4, Head(2, 1)}}, 3);
  ASSERT_FALSE(no_te.ok());
  EXPECT_NE(no_te.status().message().find("\"te\""), std::string::npos);
  const auto nan_de = ComputeCompensation(
      {Row(4, "harmful", {{"te", -0.4}, {"de", std::nan("")}})}, {{4, Head(2, 1)}}, 3);
  ASSERT_FALSE(nan_de.ok());
  EXPECT_NE(nan_de.status().message().find("not finite"), std::string::npos);
}

TEST(CompensationTest, MissingLabelAndDuplicateRowsAreErrors) {
  const auto unlabelled =
      ComputeCompensation({Row(9, "harmful", {{"te", -0.4}, {"de", -1.0}})}, {{0, Head(2, 1)}}, 3);
  ASSERT_FALSE(unlabelled.ok());
  EXPECT_NE(unlabelled.status().message().find("trial 9"), std::string::npos);
  EXPECT_NE(unlabelled.status().message().find("label"), std::string::npos);

  const auto duplicate = ComputeCompensation(
      {Row(0, "harmful", {{"te", -0.4}, {"de", -1.0}}),
       Row(0, "harmful", {{"te", -0.3}, {"de", -1.0}})},
      {{0, Head(2, 1)}}, 3);
  ASSERT_FALSE(duplicate.ok());
  EXPECT_NE(duplicate.status().message().find("more than one"), std::string::npos);
}

}  // namespace
}  // namespace knockout::experiments
