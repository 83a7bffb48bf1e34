// RANK shards: the MLP neurons of a layer ranked against a direction, for knockout targets with
// top_k (the engine expands the stage's trials from these rankings). "direction_cosine":
// |cos(W_down[:, n], r)|, the neuron's write direction against r, in float64 from the loaded
// weights; the best top_k are kept (ties: the lower index first) and returned in index order.
// Workers hold the weights, so the coordinator never opens a model file.
#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "worker/executor/shard_common.h"
#include "worker/executor/shard_kinds.h"
#include "worker/model/model.h"

namespace knockout::executor::internal {

StatusOr<v1::ShardResult> RunRank(const LoadedModel& m, const ExecutorOptions& /*options*/,
                                  const v1::Shard& shard) {
  const model::Model& model = *m.model;
  const int64_t n_layers = model.config().num_layers;
  KO_ASSIGN_OR_RETURN(auto tensors, ShardTensors(shard));
  v1::ShardResult result;
  for (const v1::RankRequest& request : shard.rank_requests()) {
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
    std::vector<int32_t> order(cosine.numel());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [c](int32_t a, int32_t b) { return c[a] > c[b]; });
    order.resize(std::min<size_t>(order.size(), request.top_k()));
    std::sort(order.begin(), order.end());
    v1::NeuronRanking* ranking = result.add_rankings();
    ranking->set_layer(request.layer());
    ranking->set_score(request.score());
    ranking->set_tensor(request.tensor());
    ranking->set_top_k(request.top_k());
    for (int32_t n : order) {
      ranking->add_units(n);
      ranking->add_scores(c[n]);
    }
  }
  return result;
}

}  // namespace knockout::executor::internal
