#include "worker/executor/sae_latents.h"

#include <cmath>

#include "worker/executor/sae_cache.h"
#include "worker/model/model.h"

namespace knockout::executor::internal {

namespace km = knockout::model;

StatusOr<std::vector<ShardSae>> LoadShardSaes(const LoadedModel& m, const v1::Shard& shard) {
  std::vector<ShardSae> out;
  if (shard.saes_size() == 0) return out;
  const km::Model& model = *m.model;
  std::vector<SaeCache::Ref> refs;
  for (const v1::SaeRef& ref : shard.saes()) refs.push_back({ref.path(), ref.hook()});
  KO_ASSIGN_OR_RETURN(auto loaded, m.saes->Acquire(refs, model.config(), model.device(), model.dtype()));
  for (size_t i = 0; i < loaded.size(); ++i) {
    ShardSae s;
    s.sae = loaded[i];
    s.hook = s.sae->hook();
    s.name = s.hook.Name();
    if (FindSae(out, s.hook)) {
      return Status::InvalidArgument("saes: two SAEs read " + s.name + " (" + out.back().sae->path() +
                                     ", " + s.sae->path() + "); a shard holds one SAE per hook");
    }
    // z (heads x d_head, flattened) reaches the residual stream through o_proj: W_O z.
    if (s.hook.kind == km::HookKind::kAttnZ) s.o = model.weights().layers[s.hook.layer].o;
    out.push_back(std::move(s));
  }
  return out;
}

const ShardSae* FindSae(const std::vector<ShardSae>& saes, const model::HookPoint& hook) {
  for (const ShardSae& s : saes) {
    if (s.hook == hook) return &s;
  }
  return nullptr;
}

LatentReading ReadLatents(const sae::Sae& sae, const at::Tensor& act, const at::Tensor& read,
                          bool with_last) {
  const int64_t b = act.size(0), t = act.size(1);
  const at::Tensor x = act.reshape({b, t, sae.d_in()});
  at::Tensor read_mask = read.to(x.device(), at::kBool);
  at::Tensor selected = read_mask.clone();
  if (with_last) selected.select(1, t - 1).fill_(true);
  // (row, column) pairs in row-major order: each row's last pair is its column T - 1.
  const at::Tensor pairs = selected.nonzero();  // [N, 2]
  const at::Tensor rows = pairs.select(1, 0), cols = pairs.select(1, 1);
  const at::Tensor flat = rows * t + cols;
  const at::Tensor f = sae.Encode(x.reshape({b * t, sae.d_in()}).index_select(0, flat));  // [N, d_sae]
  const at::Tensor count = read_mask.sum(1).to(at::kFloat).clamp_min(1);  // [B]
  const at::Tensor weight =
      read_mask.reshape({b * t}).index_select(0, flat).to(at::kFloat) / count.index_select(0, rows);  // [N]
  LatentReading out;
  out.mean = at::zeros({b, sae.d_sae()}, f.options()).index_add_(0, rows.to(f.device()),
                                                                  f * weight.to(f.device()).unsqueeze(1));
  if (!with_last) return out;
  out.last = f.index_select(0, (cols == t - 1).nonzero().squeeze(1).to(f.device()));
  out.last_divisor = sae.Scale(x.select(1, t - 1));
  return out;
}

at::Tensor WriteProjections(const ShardSae& s, const at::Tensor& m) {
  const at::Tensor& w_dec = s.sae->W_dec();  // [d_sae, d_in] float32
  at::Tensor v = m.to(w_dec.device(), at::kFloat);
  if (s.o.defined()) v = at::matmul(v, s.o.to(w_dec.device(), at::kFloat));  // [B, d_in]
  return at::matmul(v, w_dec.t());
}

StatusOr<at::Tensor> WriteCosines(const ShardSae& s, const at::Tensor& r) {
  const int64_t d = s.o.defined() ? s.o.size(0) : s.sae->W_dec().size(1);
  if (r.numel() != d) {
    return Status::InvalidArgument("the direction has " + std::to_string(r.numel()) +
                                   " values, the SAE at " + s.name + " writes " + std::to_string(d));
  }
  const at::Tensor r64 = r.reshape({-1}).to(at::kCPU, at::kDouble);
  const double r_norm = r64.norm().item<double>();
  std::vector<at::Tensor> parts;
  // Blocks of rows: a float64 copy of a 65k x 2304 decoder would be 1.2 GB.
  const at::Tensor& w_dec = s.sae->W_dec();
  const at::Tensor o = s.o.defined() ? s.o.to(at::kCPU, at::kDouble) : at::Tensor();
  const int64_t rows = w_dec.size(0), block = 4096;
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    at::Tensor w = w_dec.narrow(0, r0, std::min(block, rows - r0)).to(at::kCPU, at::kDouble);
    if (o.defined()) w = at::linear(w, o);
    const at::Tensor norms = w.norm(2, {1}) * r_norm;
    parts.push_back(at::where(norms > 0, at::matmul(w, r64) / norms.clamp_min(1e-300), at::zeros_like(norms)));
  }
  return at::cat(parts);
}

}  // namespace knockout::executor::internal
