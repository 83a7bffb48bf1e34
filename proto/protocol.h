// The wire protocol version this build speaks (ProtocolVersion in common.proto), and the check
// every Coordinator RPC applies to its caller's. Header-only; thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "knockout/v1/common.pb.h"

namespace knockout {

constexpr uint32_t kProtocolMajor = 1;
constexpr uint32_t kProtocolMinor = 0;

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

}  // namespace knockout
