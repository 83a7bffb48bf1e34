#include "worker/executor/shard_common.h"

#include "formats/positions.h"
#include "proto/positions.h"
#include "worker/chat/chat_generation.h"
#include "worker/model/model.h"
#include "tokenizer/tokenizer.h"

namespace knockout::executor::internal {

namespace km = knockout::model;
namespace kt = knockout::tokenizer;

StatusOr<PromptBatch> Tokenize(const LoadedModel& m,
                               const google::protobuf::RepeatedPtrField<v1::ShardPrompt>& prompts,
                               int64_t pad_id) {
  PromptBatch batch;
  std::vector<std::string> instructions;
  for (const auto& p : prompts) instructions.push_back(p.instruction());
  KO_ASSIGN_OR_RETURN(batch.tokenized, chat::TokenizeInstructions(*m.tokenizer, *m.chat, instructions));
  std::vector<std::vector<int64_t>> ids;
  for (const auto& t : batch.tokenized) ids.push_back(t.ids);
  km::Batch padded = km::MakeLeftPaddedBatch(ids, pad_id, m.model->device());
  batch.ids = padded.input_ids;
  batch.mask = padded.attention_mask;
  batch.length = batch.ids.size(1);
  return batch;
}

StatusOr<at::Tensor> PositionMask(const v1::Positions& positions, const PromptBatch& batch) {
  const formats::Positions selector = FromProto(positions);
  const int64_t p = static_cast<int64_t>(batch.tokenized.size());
  at::Tensor mask = at::zeros({p, batch.length}, at::kBool);
  auto a = mask.accessor<bool, 2>();
  for (int64_t i = 0; i < p; ++i) {
    auto cols = formats::ResolvePaddedPositions(selector, batch.tokenized[i].layout(), batch.length);
    if (!cols.ok()) return cols.status().WithContext("prompt " + std::to_string(i));
    for (int64_t c : *cols) a[i][c] = true;
  }
  return mask;
}

StatusOr<std::vector<int64_t>> ResolveTokens(const kt::Tokenizer& tokenizer,
                                             const google::protobuf::RepeatedPtrField<std::string>& strings,
                                             const std::string& field) {
  std::vector<int64_t> ids;
  for (const std::string& s : strings) {
    KO_ASSIGN_OR_RETURN(kt::Encoding encoding, tokenizer.Encode(s, /*add_special_tokens=*/false));
    if (encoding.ids.size() != 1) {
      return Status::InvalidArgument("metrics." + field + ": \"" + s + "\" is " +
                                     std::to_string(encoding.ids.size()) +
                                     " tokens, a metric token must be exactly one");
    }
    ids.push_back(encoding.ids[0]);
  }
  return ids;
}

StatusOr<std::map<std::string, at::Tensor>> ShardTensors(const v1::Shard& shard) {
  std::map<std::string, at::Tensor> tensors;
  for (const v1::TensorData& t : shard.tensors()) {
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    if (n != t.values_size()) {
      return Status::InvalidArgument("tensor " + t.name() + ": shape holds " + std::to_string(n) +
                                     " values, got " + std::to_string(t.values_size()));
    }
    tensors[t.name()] = at::from_blob(const_cast<float*>(t.values().data()), shape, at::kFloat).clone();
  }
  return tensors;
}

StatusOr<at::Tensor> FindTensor(const std::map<std::string, at::Tensor>& tensors,
                                const std::string& name) {
  auto it = tensors.find(name);
  if (it == tensors.end()) return Status::InvalidArgument("shard has no tensor named " + name);
  return it->second;
}

StatusOr<std::vector<km::HookPoint>> EditHooks(const v1::Edit& edit, int64_t num_layers) {
  std::vector<km::HookPoint> hooks;
  if (edit.every_layer()) {
    for (int64_t l = 0; l < num_layers; ++l) {
      hooks.push_back(km::HookPoint::ResidPre(l));
      hooks.push_back(km::HookPoint::AttnOut(l));
      hooks.push_back(km::HookPoint::MlpOut(l));
    }
    return hooks;
  }
  KO_ASSIGN_OR_RETURN(km::HookPoint hook, km::HookPoint::Parse(edit.hook(), num_layers));
  hooks.push_back(hook);
  return hooks;
}

}  // namespace knockout::executor::internal
