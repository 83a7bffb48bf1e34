#include <gtest/gtest.h>

#include "knockout/v1/common.pb.h"

namespace {

TEST(ProtoTest, ModelInfoRoundTripsThroughTheWireFormat) {
  knockout::v1::ModelInfo info;
  info.set_architecture("LlamaForCausalLM");
  info.set_num_layers(6);
  info.add_hook_points("hook_embed");
  info.add_hook_points("blocks.0.hook_resid_pre");
  std::string bytes;
  ASSERT_TRUE(info.SerializeToString(&bytes));
  knockout::v1::ModelInfo back;
  ASSERT_TRUE(back.ParseFromString(bytes));
  EXPECT_EQ(back.architecture(), "LlamaForCausalLM");
  EXPECT_EQ(back.num_layers(), 6);
  ASSERT_EQ(back.hook_points_size(), 2);
  EXPECT_EQ(back.hook_points(1), "blocks.0.hook_resid_pre");
  EXPECT_EQ(knockout::v1::ModelInfo::descriptor()->full_name(), "knockout.v1.ModelInfo");
}

TEST(ProtoTest, RejectsGarbage) {
  knockout::v1::ModelInfo info;
  EXPECT_FALSE(info.ParseFromString(std::string("\xff\xff\xff\xff", 4)));
}

}  // namespace
