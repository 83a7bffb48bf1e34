// The sparse autoencoders a worker has loaded for one model (LoadedModel::saes): shards of a
// sweep name the same SAE files, so each is read and moved to the device once, not once per
// shard. Bounded: after a shard takes its SAEs, the least recently used others are dropped
// while the cache holds more than its byte budget (a shard's own SAEs are always kept, so one
// sweep's set stays loaded however large). A shard keeps what it took alive while it runs.
//
// Thread-safety: all methods may be called from several threads (one mutex; a load happens
// under it, so two shards never read the same file twice at once).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "worker/model/hooks.h"

namespace knockout::sae {
class Sae;
}

namespace knockout::executor {

class SaeCache {
 public:
  // 8 GiB of weights: a few 65k-latent SAEs at d 2304 in float32.
  static constexpr int64_t kDefaultBudgetBytes = int64_t{8} << 30;
  explicit SaeCache(int64_t budget_bytes = kDefaultBudgetBytes) : budget_bytes_(budget_bytes) {}

  struct Ref {
    std::string path;  // absolute: the engine resolves spec-relative paths
    std::string hook;  // empty: the hook the file names
  };

  // The SAEs of `refs` (in that order), each bound to its hook and checked against `config`,
  // on `device` in `dtype` (sae::Sae::Load). Loads the ones not cached, then trims the cache to
  // its budget keeping these. Errors name the SAE file and its hook: NotFound (no such file),
  // InvalidArgument (a file that does not fit the model or is not a readable SAE; Corruption and
  // Unimplemented from the reader arrive as InvalidArgument, since every worker would read the
  // same bytes).
  StatusOr<std::vector<std::shared_ptr<const sae::Sae>>> Acquire(const std::vector<Ref>& refs,
                                                                 const model::ModelConfig& config,
                                                                 c10::Device device,
                                                                 c10::ScalarType dtype);

  int64_t size() const;        // SAEs held
  int64_t held_bytes() const;  // their weights, estimated from d_in x d_sae

 private:
  struct Entry {
    std::string path, hook;
    std::shared_ptr<const sae::Sae> sae;
    int64_t bytes = 0;
  };

  const int64_t budget_bytes_;
  mutable absl::Mutex mu_;
  std::list<Entry> entries_ ABSL_GUARDED_BY(mu_);  // most recently used first
};

}  // namespace knockout::executor
