// The one conversion between the wire's v1::Positions message and formats::Positions, the
// position selector's value type (formats/positions.h: the grammar, printer and resolution).
// Everything that reads a Positions message (spec, engine, executor, queries) goes through here.
// Stateless functions; thread-safe.
#pragma once

#include <string>

#include "formats/positions.h"
#include "knockout/v1/sweep.pb.h"

namespace knockout {

// An unset kind (POSITIONS_UNSPECIFIED: edits that act everywhere, e.g. directional ablation at
// every layer) reads as `all`. Total: a malformed message (POST_INST_AT with index >= 0, EXPLICIT
// without indices) converts as it is, and formats::ResolvePositions rejects it by name.
formats::Positions FromProto(const v1::Positions& positions);
v1::Positions ToProto(const formats::Positions& positions);

// formats::PositionsName(FromProto(positions)): "inst_last", "post_inst[-2]", "[3,-1]", ...
std::string PositionsName(const v1::Positions& positions);

}  // namespace knockout
