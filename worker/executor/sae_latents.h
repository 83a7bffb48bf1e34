// Internal to worker/executor: the SAEs a shard names (Shard.saes, through LoadedModel::saes),
// and the latent readings TRIALS (backups) and RANK shards take from a hook's activations.
//
// A latent's write into the residual stream: f_j * W_dec[j] / s, where s is the SAE's input
// normalisation scale (sae::Sae::Scale: 1, the file's scaling factor, or sqrt(d_in) / |x| per
// token for constant_norm_rescale) — the decode of formats/sae.h. At attn.hook_z the decoder row lives in
// the heads' z space and is written through W_O: the write direction is W_O W_dec[j]. Cosines
// with a residual-stream direction and direct effects use this write direction.
// Thread-safety: free functions over values; ShardSae is immutable once made.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "knockout/v1/sweep.pb.h"
#include "worker/executor/executor.h"
#include "worker/model/hooks.h"
#include "worker/sae/sae.h"

namespace knockout::model {
class Model;
}

namespace knockout::executor::internal {

struct ShardSae {
  std::shared_ptr<const sae::Sae> sae;
  model::HookPoint hook;  // where it reads
  std::string name;       // hook.Name()
  at::Tensor o;           // attn.hook_z: W_O [d_model, n_heads * d_head] as the model holds it
};

// The SAEs of shard.saes() in order, from the model's cache. InvalidArgument for two SAEs at
// one hook; the cache's errors otherwise (they name the file).
StatusOr<std::vector<ShardSae>> LoadShardSaes(const LoadedModel& m, const v1::Shard& shard);
// The SAE at `hook` (a TransformerLens name), or nullptr.
const ShardSae* FindSae(const std::vector<ShardSae>& saes, const model::HookPoint& hook);

// Latents of rows of a hook's activation `act` [B, T, ...]: `mean` [B, d_sae], each row's mean
// activation over the columns `read` [B, T] (bool, any device) selects (0 where it selects
// none); `last` [B, d_sae], the activation at column T - 1; `last_divisor` [B, 1], the SAE's
// normalisation scale s there (sae::Sae::Scale; a latent writes f_j W_dec[j] / s). One full
// encode over the selected columns and the last (float32). Without `with_last` only `mean`.
struct LatentReading {
  at::Tensor mean, last, last_divisor;
};
LatentReading ReadLatents(const sae::Sae& sae, const at::Tensor& act, const at::Tensor& read,
                          bool with_last = true);

// write_j . m for every latent and every row of m [B, d_model]: float32 [B, d_sae] on the
// SAE's device, as (m W_O) W_dec^T at attn.hook_z (never the [d_sae, d_model] product).
at::Tensor WriteProjections(const ShardSae& sae, const at::Tensor& m);

// cos(write_j, r) for every latent, float64 [d_sae] on the CPU (0 where either is zero), with
// the write computed in float64 from W_dec (and W_O).
// InvalidArgument if r does not have d_model values.
StatusOr<at::Tensor> WriteCosines(const ShardSae& sae, const at::Tensor& r);

}  // namespace knockout::executor::internal
