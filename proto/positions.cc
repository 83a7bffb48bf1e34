#include "proto/positions.h"

namespace knockout {

formats::Positions FromProto(const v1::Positions& positions) {
  using formats::Positions;
  switch (positions.kind()) {
    case v1::Positions::INST_LAST:
      return Positions::InstLast();
    case v1::Positions::INST:
      return Positions::Inst();
    case v1::Positions::POST_INST:
      return Positions::PostInst();
    case v1::Positions::POST_INST_AT:
      return Positions::PostInstAt(positions.index());
    case v1::Positions::EXPLICIT:
      return Positions::Explicit({positions.indices().begin(), positions.indices().end()});
    case v1::Positions::ALL:
    default:
      return Positions::All();
  }
}

v1::Positions ToProto(const formats::Positions& positions) {
  using Kind = formats::Positions::Kind;
  v1::Positions out;
  switch (positions.kind) {
    case Kind::kInstLast:
      out.set_kind(v1::Positions::INST_LAST);
      break;
    case Kind::kInst:
      out.set_kind(v1::Positions::INST);
      break;
    case Kind::kPostInst:
      out.set_kind(v1::Positions::POST_INST);
      break;
    case Kind::kPostInstAt:
      out.set_kind(v1::Positions::POST_INST_AT);
      out.set_index(positions.index);
      break;
    case Kind::kAll:
      out.set_kind(v1::Positions::ALL);
      break;
    case Kind::kExplicit:
      out.set_kind(v1::Positions::EXPLICIT);
      for (int32_t i : positions.indices) out.add_indices(i);
      break;
  }
  return out;
}

std::string PositionsName(const v1::Positions& positions) {
  return formats::PositionsName(FromProto(positions));
}

}  // namespace knockout
