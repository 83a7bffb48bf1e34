// RANK shards on the shipped demo model against an independent NumPy computation: the expected
// neurons and cosines below are printed by
//   /usr/bin/python3 tests/reference/rank_reference.py models/demo-refusal 4
// (float64 from the checkpoint bytes with hf_reference.py's own safetensors reader; direction
// r_i = sin(i + 1) rounded to float32 as a shard carries it). The demo model is stored in bf16
// and loaded in float32 here, which widens exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "worker/executor/executor.h"

namespace knockout::executor {
namespace {

struct Expected {
  int layer;
  std::vector<int> units;
  std::vector<double> cosines;
};

const std::vector<Expected> kExpected = {
    {0, {447, 586, 621, 675}, {0.184872178592, 0.188281212100, 0.176978652851, 0.192644126878}},
    {1, {179, 288, 490, 644}, {0.166882826896, 0.178954545008, 0.203552366516, 0.191966630082}},
    {2, {233, 282, 573, 646}, {0.181891475881, 0.167781089378, 0.170435534951, 0.184200155794}},
    {3, {326, 329, 420, 481}, {0.158294396371, 0.159758443888, 0.172089474995, 0.173619462951}},
    {4, {44, 134, 464, 477}, {0.201208177163, 0.248971577860, 0.193249922892, 0.183600124749}},
    {5, {14, 32, 377, 391}, {0.178403098773, 0.206117897036, 0.181007444774, 0.200527515888}},
};

v1::Shard RankShard() {
  v1::Shard shard;
  shard.set_sweep_id("rank-test");
  shard.set_kind(v1::Shard::RANK);
  shard.mutable_model()->set_path(KNOCKOUT_SOURCE_DIR "/models/demo-refusal");
  shard.mutable_model()->set_dtype("float32");
  v1::TensorData* r = shard.add_tensors();
  r->set_name("r");
  r->add_shape(256);
  for (int i = 0; i < 256; ++i) r->add_values(static_cast<float>(std::sin(i + 1.0)));
  for (int layer = 0; layer < 6; ++layer) {
    v1::RankRequest* request = shard.add_rank_requests();
    request->set_layer(layer);
    request->set_score("direction_cosine");
    request->set_tensor("r");
    request->set_top_k(4);
  }
  return shard;
}

class RankTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto loaded = LoadModel(RankShard().model());
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    model_ = new LoadedModel(std::move(*loaded));
  }
  static void TearDownTestSuite() { delete model_; }
  static LoadedModel* model_;
};
LoadedModel* RankTest::model_ = nullptr;

TEST_F(RankTest, TopNeuronsByDirectionCosineMatchNumPy) {
  ASSERT_NE(model_, nullptr);
  auto result = ShardExecutor(*model_, {}).Run(RankShard());
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_EQ(result->rankings_size(), 6);
  for (const Expected& want : kExpected) {
    const v1::NeuronRanking& got = result->rankings(want.layer);
    SCOPED_TRACE("layer " + std::to_string(want.layer));
    EXPECT_EQ(got.layer(), want.layer);
    EXPECT_EQ(got.tensor(), "r");
    EXPECT_EQ(got.top_k(), 4u);
    ASSERT_EQ(got.units_size(), 4);
    ASSERT_EQ(got.scores_size(), 4);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(got.units(i), want.units[i]);
      EXPECT_NEAR(got.scores(i), want.cosines[i], 1e-9);
    }
  }
}

TEST_F(RankTest, BadRequestsAreInvalidArgument) {
  ASSERT_NE(model_, nullptr);
  v1::Shard other_score = RankShard();
  other_score.mutable_rank_requests(0)->set_score("attribution");
  auto r = ShardExecutor(*model_, {}).Run(other_score);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  v1::Shard deep = RankShard();
  deep.mutable_rank_requests(1)->set_layer(6);
  r = ShardExecutor(*model_, {}).Run(deep);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  v1::Shard short_direction = RankShard();
  short_direction.mutable_tensors(0)->set_shape(0, 255);
  short_direction.mutable_tensors(0)->mutable_values()->RemoveLast();
  r = ShardExecutor(*model_, {}).Run(short_direction);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  v1::Shard unknown = RankShard();
  unknown.mutable_rank_requests(2)->set_tensor("nope");
  r = ShardExecutor(*model_, {}).Run(unknown);
  EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace knockout::executor
