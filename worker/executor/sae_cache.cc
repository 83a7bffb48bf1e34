#include "worker/executor/sae_cache.h"

#include <set>

#include "worker/sae/sae.h"

namespace knockout::executor {

namespace {

// What a stored SAE costs: W_enc and W_dec at 4 bytes a weight (float32, or a half-precision
// copy beside the float32 decoder rows the readings use); the biases are negligible.
int64_t EstimatedBytes(const sae::Sae& sae) { return 2 * sae.d_in() * sae.d_sae() * 4; }

// A file every worker would read the same way is the shard's fault, not the worker's: the
// coordinator fails such a shard at once (InvalidArgument, NotFound) instead of retrying it.
Status AsShardError(const Status& status) {
  if (status.code() == StatusCode::kCorruption || status.code() == StatusCode::kUnimplemented) {
    return Status::InvalidArgument(status.message());
  }
  return status;
}

}  // namespace

StatusOr<std::vector<std::shared_ptr<const sae::Sae>>> SaeCache::Acquire(
    const std::vector<Ref>& refs, const model::ModelConfig& config, c10::Device device,
    c10::ScalarType dtype) {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<const sae::Sae>> out;
  std::set<const sae::Sae*> taken;
  for (const Ref& ref : refs) {
    auto it = entries_.begin();
    while (it != entries_.end() && !(it->path == ref.path && it->hook == ref.hook)) ++it;
    if (it != entries_.end()) {
      entries_.splice(entries_.begin(), entries_, it);  // most recently used
    } else {
      const std::string what = "sae " + ref.path + (ref.hook.empty() ? "" : " (hook " + ref.hook + ")");
      StatusOr<std::shared_ptr<const sae::Sae>> loaded = Status::Internal("unreachable");
      try {
        loaded = sae::Sae::Load(ref.path, ref.hook, config, device, dtype);
      } catch (const c10::Error& e) {
        loaded = Status::Internal(std::string("LibTorch: ") + e.what_without_backtrace());
      }
      if (!loaded.ok()) {
        const Status& s = loaded.status();
        // Load's messages name the file already; the hook the shard asked for is added.
        return AsShardError(s.message().find(ref.path) == std::string::npos ? s.WithContext(what)
                                                                            : s.WithContext("sae"));
      }
      entries_.push_front(Entry{ref.path, ref.hook, *loaded, EstimatedBytes(**loaded)});
    }
    out.push_back(entries_.front().sae);
    taken.insert(entries_.front().sae.get());
  }
  int64_t bytes = 0;
  for (const Entry& e : entries_) bytes += e.bytes;
  for (auto it = entries_.end(); it != entries_.begin() && bytes > budget_bytes_;) {
    --it;
    if (taken.count(it->sae.get())) continue;
    bytes -= it->bytes;
    it = entries_.erase(it);
  }
  return out;
}

int64_t SaeCache::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(entries_.size());
}

int64_t SaeCache::held_bytes() const {
  absl::MutexLock lock(&mu_);
  int64_t bytes = 0;
  for (const Entry& e : entries_) bytes += e.bytes;
  return bytes;
}

}  // namespace knockout::executor
