// EXTRACT shards: float64 partial sums of a hook's activation at each (layer, position
// selector), per prompt set; the engine reduces them into diff-in-means directions. Prompts run
// in blocks, so memory does not grow with the shard's prompt count.
#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "proto/positions.h"
#include "worker/chat/chat_generation.h"
#include "worker/executor/shard_common.h"
#include "worker/executor/shard_kinds.h"
#include "worker/model/model.h"

namespace knockout::executor::internal {

namespace km = knockout::model;

StatusOr<v1::ShardResult> RunExtract(const LoadedModel& m, const ExecutorOptions& options,
                                     const v1::Shard& shard) {
  const km::Model& model = *m.model;
  const int64_t n_layers = model.config().num_layers;
  KO_ASSIGN_OR_RETURN(PromptBatch batch, Tokenize(m, shard.prompts(), chat::PadTokenId(model, *m.tokenizer)));
  const std::string hook_kind = shard.hook().empty() ? "resid_pre" : shard.hook();
  std::vector<int64_t> layers(shard.layers().begin(), shard.layers().end());
  if (layers.empty()) {
    layers.resize(n_layers);
    std::iota(layers.begin(), layers.end(), 0);
  }
  std::vector<std::string> names;
  for (int64_t l : layers) names.push_back("blocks." + std::to_string(l) + ".hook_" + hook_kind);
  const int64_t last = *std::max_element(layers.begin(), layers.end());
  // Per-selector weights: the mean over a selector's positions in each prompt.
  std::vector<at::Tensor> weights;
  for (const v1::Positions& positions : shard.positions()) {
    KO_ASSIGN_OR_RETURN(at::Tensor mask, PositionMask(positions, batch));
    at::Tensor w = mask.to(at::kDouble);
    weights.push_back(w / w.sum(1, true).clamp_min(1));
  }
  // (selector, layer, set) -> float64 sum [d] and count.
  std::map<std::tuple<size_t, size_t, std::string>, std::pair<at::Tensor, uint64_t>> sums;
  const int64_t p_count = shard.prompts_size();
  const int64_t block = std::max<int64_t>(1, options.max_batch_rows);
  for (int64_t p0 = 0; p0 < p_count; p0 += block) {
    const int64_t n = std::min(block, p_count - p0);
    km::HookRegistry hooks(model.config());
    for (const std::string& name : names) KO_RETURN_IF_ERROR(hooks.Cache(name));
    km::ForwardRequest request;
    request.input_ids = batch.ids.narrow(0, p0, n);
    request.attention_mask = batch.mask.narrow(0, p0, n);
    request.logits = km::ForwardRequest::Logits::kNone;
    request.hooks = &hooks;
    request.end_layer = last + 1;
    KO_ASSIGN_OR_RETURN(km::ForwardResult unused, model.Forward(request));
    (void)unused;
    std::map<std::string, std::vector<int64_t>> by_set;
    for (int64_t p = p0; p < p0 + n; ++p) by_set[shard.prompts(p).set()].push_back(p - p0);
    for (size_t li = 0; li < layers.size(); ++li) {
      at::Tensor act = hooks.cache().at(names[li]).to(at::kCPU, at::kDouble);  // [n, T, d]
      for (size_t si = 0; si < weights.size(); ++si) {
        at::Tensor per_prompt = (act * weights[si].narrow(0, p0, n).unsqueeze(-1)).sum(1);  // [n, d]
        for (const auto& [set, members] : by_set) {
          at::Tensor sum = per_prompt.index_select(0, at::tensor(members, at::kLong)).sum(0);
          auto& entry = sums[{si, li, set}];
          entry.first = entry.first.defined() ? entry.first + sum : sum;
          entry.second += members.size();
        }
      }
    }
  }
  v1::ShardResult out;
  for (size_t si = 0; si < weights.size(); ++si) {
    const std::string position = PositionsName(shard.positions(static_cast<int>(si)));
    for (size_t li = 0; li < layers.size(); ++li) {
      for (const auto& [key, entry] : sums) {
        if (std::get<0>(key) != si || std::get<1>(key) != li) continue;
        at::Tensor sum = entry.first.contiguous();
        v1::PartialSum* ps = out.add_sums();
        ps->set_layer(static_cast<int32_t>(layers[li]));
        ps->set_position(position);
        ps->set_set(std::get<2>(key));
        ps->set_count(entry.second);
        const double* data = sum.data_ptr<double>();
        ps->mutable_sum()->Add(data, data + sum.numel());
      }
    }
  }
  return out;
}

}  // namespace knockout::executor::internal
