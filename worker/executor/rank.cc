// RANK shards: units ranked for knockout targets chosen by score (the engine expands the stage's
// trials from these rankings). Workers hold the weights, so the coordinator never opens a model
// or SAE file. The best top_k are kept (ties: the lower index first) and returned in index order.
//
// MLP neurons of a layer, "direction_cosine": |cos(W_down[:, n], r)|, the neuron's write
// direction against r, in float64 from the loaded weights.
//
// SAE latents (RankRequest.sae_hook; science.md, Yeo et al. 2025), LatentSelection's scores:
//   "decoder_cosine": cos(write_i, r), signed, the highest first (write_i = W_dec[i]; W_O W_dec[i]
//     at attn.hook_z, sae_latents.h), float64;
//   "activation_diff": mean over the shard's prompts of set `positive` of f_i at `position` (the
//     mean over the positions selected in each prompt, then over prompts) minus the same over
//     `negative`; position unset: inst_last. The model runs in blocks of max_batch_rows caching
//     only the SAEs' hooks; f is encoded in float32, summed in float64;
//   "cosine_and_activation": the `candidates` (default 4 x top_k) best by decoder cosine, then
//     the top_k of those by activation difference.
// A ranking carries the cosines when the request names a direction and the activation
// differences when it names both sets, whatever its score.
#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <vector>

#include "worker/chat/chat_generation.h"
#include "worker/executor/sae_latents.h"
#include "worker/executor/shard_common.h"
#include "worker/executor/shard_kinds.h"
#include "worker/model/model.h"

namespace knockout::executor::internal {
namespace {

namespace km = knockout::model;

// The `k` best of `pool` by `score` (higher first; ties: the lower index), in index order.
std::vector<int64_t> Best(std::vector<int64_t> pool, const double* score, size_t k) {
  std::sort(pool.begin(), pool.end());
  std::stable_sort(pool.begin(), pool.end(), [score](int64_t a, int64_t b) { return score[a] > score[b]; });
  pool.resize(std::min(pool.size(), k));
  std::sort(pool.begin(), pool.end());
  return pool;
}

StatusOr<v1::NeuronRanking> RankNeurons(const km::Model& model,
                                        const std::map<std::string, at::Tensor>& tensors,
                                        const v1::RankRequest& request) {
  const int64_t n_layers = model.config().num_layers;
  const std::string what = "rank request (layer " + std::to_string(request.layer()) + ", " +
                           request.tensor() + ")";
  if (request.score() != "direction_cosine") {
    return Status::InvalidArgument(what + ": neuron score \"" + request.score() +
                                   "\": only direction_cosine is implemented");
  }
  if (request.layer() < 0 || request.layer() >= n_layers) {
    return Status::InvalidArgument(what + ": layer out of range, the model has " +
                                   std::to_string(n_layers) + " layers");
  }
  KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors, request.tensor()));
  // W_down: [d_model, d_mlp]; column n is what neuron n writes to the residual stream.
  const at::Tensor w = model.weights().layers[request.layer()].down.to(at::kCPU, at::kDouble);
  if (w.dim() != 2 || w.size(0) != r.numel()) {
    return Status::InvalidArgument(what + ": the direction has " + std::to_string(r.numel()) +
                                   " values, W_down has " + std::to_string(w.size(0)) + " rows");
  }
  const at::Tensor r64 = r.reshape({-1}).to(at::kDouble);
  const at::Tensor dot = at::matmul(r64, w);                         // [d_mlp]
  const at::Tensor norms = (w * w).sum(0) * (r64 * r64).sum();       // |w_n|^2 |r|^2
  const at::Tensor cosine = (dot.abs() / (norms.sqrt() + 1e-30)).contiguous();
  const double* c = cosine.data_ptr<double>();
  std::vector<int64_t> all(cosine.numel());
  std::iota(all.begin(), all.end(), 0);
  v1::NeuronRanking ranking;
  ranking.set_layer(request.layer());
  ranking.set_score(request.score());
  ranking.set_tensor(request.tensor());
  ranking.set_top_k(request.top_k());
  for (int64_t n : Best(all, c, request.top_k())) {
    ranking.add_units(static_cast<int32_t>(n));
    ranking.add_scores(c[n]);
  }
  return ranking;
}

// A latent request resolved against the shard: its SAE, and what it needs.
struct LatentRequest {
  const v1::RankRequest* request = nullptr;
  std::string what;  // for messages
  const ShardSae* sae = nullptr;
  bool cosine = false, activation = false;
  at::Tensor read;                // [P, T] bool: the positions, activation scores only
  at::Tensor sum_pos, sum_neg;    // float64 [d_sae]: sums of per-prompt means
  int64_t n_pos = 0, n_neg = 0;
};

// RankRequest.sae_hook: a full hook name, or the suffix of layer `layer`'s (as a Target's).
std::string SaeHookName(const v1::RankRequest& request) {
  if (request.sae_hook().rfind("blocks.", 0) == 0) return request.sae_hook();
  return "blocks." + std::to_string(request.layer()) + "." + request.sae_hook();
}

StatusOr<LatentRequest> ResolveLatentRequest(const km::ModelConfig& config,
                                             const std::vector<ShardSae>& saes,
                                             const v1::RankRequest& request) {
  LatentRequest out;
  out.request = &request;
  const std::string name = SaeHookName(request);
  out.what = "rank request (" + name + ", " + request.score() + ")";
  StatusOr<km::HookPoint> hook = km::HookPoint::Parse(name, config.num_layers);
  if (!hook.ok()) return hook.status().WithContext(out.what);
  out.sae = FindSae(saes, *hook);
  if (!out.sae) return Status::InvalidArgument(out.what + ": the shard has no SAE at " + name + " (Shard.saes)");
  const std::string& score = request.score();
  const bool sets = !request.positive().empty() && !request.negative().empty();
  if (score == "decoder_cosine") {
    out.cosine = true;
  } else if (score == "activation_diff") {
    out.activation = true;
  } else if (score == "cosine_and_activation") {
    out.cosine = out.activation = true;
  } else {
    return Status::InvalidArgument(out.what + ": unknown latent score \"" + score +
                                   "\" (decoder_cosine, activation_diff, cosine_and_activation)");
  }
  if (out.cosine && request.tensor().empty()) {
    return Status::InvalidArgument(out.what + ": a cosine score needs a direction (tensor)");
  }
  if (out.activation && !sets) {
    return Status::InvalidArgument(out.what + ": an activation score needs prompt sets positive and negative");
  }
  out.cosine |= !request.tensor().empty();
  out.activation |= sets;
  return out;
}

// Per-prompt mean latent activations at each request's positions, summed per set in float64,
// in blocks of prompts; one forward per block caches every requested SAE's hook.
Status SumActivations(const LoadedModel& m, const ExecutorOptions& options, const v1::Shard& shard,
                      std::vector<LatentRequest>& requests) {
  std::vector<LatentRequest*> active;
  std::set<std::string> sets;
  for (LatentRequest& r : requests) {
    if (!r.activation) continue;
    active.push_back(&r);
    sets.insert(r.request->positive());
    sets.insert(r.request->negative());
  }
  if (active.empty()) return Status::Ok();
  const km::Model& model = *m.model;
  KO_ASSIGN_OR_RETURN(PromptBatch batch, Tokenize(m, shard.prompts(), chat::PadTokenId(model, *m.tokenizer)));
  int64_t last_layer = 0;
  for (LatentRequest* r : active) {
    v1::Positions position = r->request->position();
    if (position.kind() == v1::Positions::POSITIONS_UNSPECIFIED) position.set_kind(v1::Positions::INST_LAST);
    auto mask = PositionMask(position, batch);
    if (!mask.ok()) return mask.status().WithContext(r->what + ": position");
    r->read = *mask;
    r->sum_pos = at::zeros({r->sae->sae->d_sae()}, at::kDouble);
    r->sum_neg = at::zeros({r->sae->sae->d_sae()}, at::kDouble);
    last_layer = std::max<int64_t>(last_layer, r->sae->hook.layer);
  }
  std::vector<int64_t> used;  // prompts of some requested set
  for (int64_t p = 0; p < shard.prompts_size(); ++p) {
    if (sets.count(shard.prompts(p).set())) used.push_back(p);
  }
  const size_t block = static_cast<size_t>(std::max<int64_t>(1, options.max_batch_rows));
  for (size_t begin = 0; begin < used.size(); begin += block) {
    if (options.should_stop && options.should_stop()) {
      return Status::Cancelled("shard stopped before it finished (deadline, dropped lease or shutdown)");
    }
    const std::vector<int64_t> prompts(used.begin() + begin, used.begin() + std::min(used.size(), begin + block));
    const at::Tensor index = at::tensor(prompts, at::kLong);
    const at::Tensor device_index = index.to(model.device());
    km::HookRegistry hooks(model.config());
    for (LatentRequest* r : active) hooks.Cache(r->sae->hook);
    km::ForwardRequest request;
    request.input_ids = batch.ids.index_select(0, device_index);
    request.attention_mask = batch.mask.index_select(0, device_index);
    request.logits = km::ForwardRequest::Logits::kNone;
    request.end_layer = last_layer + 1;
    request.hooks = &hooks;
    KO_ASSIGN_OR_RETURN(km::ForwardResult unused, model.Forward(request));
    (void)unused;
    for (LatentRequest* r : active) {
      const at::Tensor mean = ReadLatents(*r->sae->sae, hooks.cache().at(r->sae->name),
                                          r->read.index_select(0, index), /*with_last=*/false)
                                  .mean.to(at::kCPU, at::kDouble);  // [n, d_sae]
      for (size_t i = 0; i < prompts.size(); ++i) {
        const std::string& set = shard.prompts(prompts[i]).set();
        if (set == r->request->positive()) {
          r->sum_pos += mean[i];
          ++r->n_pos;
        }
        if (set == r->request->negative()) {
          r->sum_neg += mean[i];
          ++r->n_neg;
        }
      }
    }
  }
  for (LatentRequest* r : active) {
    if (r->n_pos == 0 || r->n_neg == 0) {
      return Status::InvalidArgument(r->what + ": the shard has no prompts of set \"" +
                                     (r->n_pos == 0 ? r->request->positive() : r->request->negative()) + "\"");
    }
  }
  return Status::Ok();
}

StatusOr<v1::NeuronRanking> RankLatents(const std::map<std::string, at::Tensor>& tensors,
                                        const LatentRequest& r) {
  const v1::RankRequest& request = *r.request;
  at::Tensor cosine, diff;  // float64 [d_sae] on the CPU
  if (r.cosine) {
    KO_ASSIGN_OR_RETURN(at::Tensor direction, FindTensor(tensors, request.tensor()));
    auto c = WriteCosines(*r.sae, direction);
    if (!c.ok()) return c.status().WithContext(r.what);
    cosine = c->contiguous();
  }
  if (r.activation) {
    diff = (r.sum_pos / static_cast<double>(r.n_pos) - r.sum_neg / static_cast<double>(r.n_neg)).contiguous();
  }
  const int64_t d_sae = r.sae->sae->d_sae();
  std::vector<int64_t> all(d_sae);
  std::iota(all.begin(), all.end(), 0);
  std::vector<int64_t> units;
  const double* score = nullptr;
  if (request.score() == "decoder_cosine") {
    score = cosine.data_ptr<double>();
    units = Best(all, score, request.top_k());
  } else if (request.score() == "activation_diff") {
    score = diff.data_ptr<double>();
    units = Best(all, score, request.top_k());
  } else {  // cosine_and_activation
    const size_t candidates = request.candidates() > 0 ? request.candidates() : 4 * request.top_k();
    score = diff.data_ptr<double>();
    units = Best(Best(all, cosine.data_ptr<double>(), candidates), score, request.top_k());
  }
  v1::NeuronRanking ranking;
  ranking.set_layer(static_cast<int32_t>(r.sae->hook.layer));
  ranking.set_score(request.score());
  ranking.set_tensor(request.tensor());
  ranking.set_top_k(request.top_k());
  ranking.set_sae_hook(request.sae_hook());
  for (int64_t i : units) {
    ranking.add_units(static_cast<int32_t>(i));
    ranking.add_scores(score[i]);
    if (cosine.defined()) ranking.add_cosines(cosine.data_ptr<double>()[i]);
    if (diff.defined()) ranking.add_activation_diffs(diff.data_ptr<double>()[i]);
  }
  return ranking;
}

}  // namespace

StatusOr<v1::ShardResult> RunRank(const LoadedModel& m, const ExecutorOptions& options,
                                  const v1::Shard& shard) {
  const km::Model& model = *m.model;
  KO_ASSIGN_OR_RETURN(auto tensors, ShardTensors(shard));
  std::vector<ShardSae> saes;
  bool saes_loaded = false;
  std::vector<LatentRequest> latent_requests;
  for (const v1::RankRequest& request : shard.rank_requests()) {
    if (request.sae_hook().empty()) continue;
    if (!saes_loaded) {
      KO_ASSIGN_OR_RETURN(saes, LoadShardSaes(m, shard));
      saes_loaded = true;
    }
    KO_ASSIGN_OR_RETURN(LatentRequest r, ResolveLatentRequest(model.config(), saes, request));
    latent_requests.push_back(std::move(r));
  }
  KO_RETURN_IF_ERROR(SumActivations(m, options, shard, latent_requests));
  v1::ShardResult result;
  size_t next_latent = 0;
  for (const v1::RankRequest& request : shard.rank_requests()) {
    StatusOr<v1::NeuronRanking> ranking = request.sae_hook().empty()
                                              ? RankNeurons(model, tensors, request)
                                              : RankLatents(tensors, latent_requests[next_latent++]);
    if (!ranking.ok()) return ranking.status();
    *result.add_rankings() = std::move(*ranking);
  }
  return result;
}

}  // namespace knockout::executor::internal
