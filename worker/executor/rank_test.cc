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
    {0, {31, 267, 509, 666}, {0.170595984894, 0.167020164076, 0.167247098998, 0.168583240761}},
    {1, {34, 256, 372, 554}, {0.182594266152, 0.205832759172, 0.173590284161, 0.170828911530}},
    {2, {181, 195, 201, 504}, {0.165760912181, 0.173929622300, 0.163178746585, 0.178105548300}},
    {3, {6, 118, 651, 670}, {0.151583254450, 0.164666061817, 0.149104194564, 0.152301551473}},
    {4, {263, 276, 564, 613}, {0.183718390261, 0.181595331840, 0.163852799784, 0.169351764211}},
    {5, {25, 62, 89, 388}, {0.201893862576, 0.183084675324, 0.184790809898, 0.202688641042}},
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
