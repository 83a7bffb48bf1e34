// The wire protocol version this build speaks (ProtocolVersion in common.proto), the check
// every Coordinator RPC applies to its caller's, and a Status code's wire form (ErrorCode in
// coordinator.proto). Header-only; thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "knockout/v1/common.pb.h"
#include "knockout/v1/coordinator.pb.h"

namespace knockout {

constexpr uint32_t kProtocolMajor = 1;
constexpr uint32_t kProtocolMinor = 3;  // 1: ReleaseShardRequest.code; 2: SCREEN shards;
                                         // 3: QueryResults LABELS

// The PartialSum names a SCREEN shard reports (ShardResult.sums, layer -1; the worker writes
// them, the finaliser reduces them in float64): per prompt set, "screen/score" and
// "screen/score_sq" hold each trial's sum over the shard's prompts (shard trial order; count:
// the prompts summed), "screen/clean" the clean metric's sum (sum[0]), and
// "screen/hook <hook> <positions>" {effect, attributed} summed over prompts (count).
inline constexpr char kScreenScoreSum[] = "screen/score";
inline constexpr char kScreenScoreSqSum[] = "screen/score_sq";
inline constexpr char kScreenCleanSum[] = "screen/clean";
inline constexpr char kScreenHookSumPrefix[] = "screen/hook ";


inline v1::ProtocolVersion CurrentProtocol() {
  v1::ProtocolVersion version;
  version.set_major(kProtocolMajor);
  version.set_minor(kProtocolMinor);
  return version;
}

// FailedPrecondition naming both versions when the peer's major version differs (an absent
// version reads as 0.0, e.g. a client built before versions existed).
inline Status CheckProtocol(const v1::ProtocolVersion& peer, const std::string& who) {
  if (peer.major() == kProtocolMajor) return Status::Ok();
  return Status::FailedPrecondition(
      who + " speaks knockout protocol " + std::to_string(peer.major()) + "." +
      std::to_string(peer.minor()) + ", this coordinator speaks " + std::to_string(kProtocolMajor) +
      "." + std::to_string(kProtocolMinor) + "; run the same knockout version on both sides");
}

// The wire form of a status code (ReleaseShardRequest.code); OK has none (unspecified).
inline v1::ErrorCode ToWire(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return v1::ERROR_CODE_UNSPECIFIED;
    case StatusCode::kInvalidArgument: return v1::ERROR_INVALID_ARGUMENT;
    case StatusCode::kNotFound: return v1::ERROR_NOT_FOUND;
    case StatusCode::kCorruption: return v1::ERROR_CORRUPTION;
    case StatusCode::kIOError: return v1::ERROR_IO;
    case StatusCode::kUnimplemented: return v1::ERROR_UNIMPLEMENTED;
    case StatusCode::kFailedPrecondition: return v1::ERROR_FAILED_PRECONDITION;
    case StatusCode::kInternal: return v1::ERROR_INTERNAL;
    case StatusCode::kPermissionDenied: return v1::ERROR_PERMISSION_DENIED;
    case StatusCode::kUnavailable: return v1::ERROR_UNAVAILABLE;
    case StatusCode::kUnauthenticated: return v1::ERROR_UNAUTHENTICATED;
    case StatusCode::kCancelled: return v1::ERROR_CANCELLED;
    case StatusCode::kDeadlineExceeded: return v1::ERROR_DEADLINE_EXCEEDED;
  }
  return v1::ERROR_CODE_UNSPECIFIED;
}

}  // namespace knockout
