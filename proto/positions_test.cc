// The v1::Positions <-> formats::Positions conversion (proto/positions.h): every selector kind
// survives text -> value -> message -> bytes -> message -> value -> text unchanged, and messages
// built field by field (as older shards hold them) read as the kinds sweep.proto documents.
#include "proto/positions.h"

#include <gtest/gtest.h>

#include <string>

namespace knockout {
namespace {

TEST(ProtoPositionsTest, EveryKindRoundTripsThroughTheWire) {
  for (const std::string text :
       {"inst_last", "inst", "post_inst", "post_inst[-1]", "post_inst[-7]", "all", "[3,-1]", "[0]"}) {
    StatusOr<formats::Positions> value = formats::ParsePositions(text);
    ASSERT_TRUE(value.ok()) << text;
    const std::string bytes = ToProto(*value).SerializeAsString();
    v1::Positions message;
    ASSERT_TRUE(message.ParseFromString(bytes)) << text;
    EXPECT_EQ(FromProto(message), *value) << text;
    EXPECT_EQ(PositionsName(message), text);
  }
}

TEST(ProtoPositionsTest, MessagesReadAsSweepProtoDocuments) {
  v1::Positions m;
  m.set_kind(v1::Positions::POST_INST_AT);
  m.set_index(-2);
  EXPECT_EQ(PositionsName(m), "post_inst[-2]");
  m.Clear();
  m.set_kind(v1::Positions::EXPLICIT);
  m.add_indices(3);
  m.add_indices(-1);
  EXPECT_EQ(PositionsName(m), "[3,-1]");
  EXPECT_EQ(ToProto(FromProto(m)).SerializeAsString(), m.SerializeAsString());
  // Unset: edits that act at every position (directional ablation at every layer).
  EXPECT_EQ(FromProto(v1::Positions()), formats::Positions::All());
}

}  // namespace
}  // namespace knockout
