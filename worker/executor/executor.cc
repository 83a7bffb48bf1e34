#include "worker/executor/executor.h"

#include <ATen/ATen.h>

#include <chrono>

#include "worker/executor/sae_cache.h"
#include "worker/executor/shard_kinds.h"
#include "worker/model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace knockout::executor {

namespace km = knockout::model;
namespace kt = knockout::tokenizer;

LoadedModel::LoadedModel() : saes(std::make_unique<SaeCache>()) {}
LoadedModel::~LoadedModel() = default;
LoadedModel::LoadedModel(LoadedModel&&) noexcept = default;
LoadedModel& LoadedModel::operator=(LoadedModel&&) noexcept = default;

StatusOr<LoadedModel> LoadModel(const v1::ModelRef& ref) {
  LoadedModel loaded;
  loaded.path = ref.path();
  km::LoadOptions options;
  KO_ASSIGN_OR_RETURN(options.dtype, km::ParseComputeDType(ref.dtype().empty() ? "float32" : ref.dtype()));
  KO_ASSIGN_OR_RETURN(options.device, km::ParseDevice(ref.device().empty() ? "cpu" : ref.device()));
  KO_ASSIGN_OR_RETURN(loaded.model, km::Model::Load(ref.path(), options));
  KO_ASSIGN_OR_RETURN(loaded.tokenizer, kt::Tokenizer::Load(ref.path()));
  StatusOr<kt::ChatTemplate> chat = ref.chat_template().empty()
                                        ? kt::ChatTemplate::Detect(*loaded.tokenizer)
                                        : kt::ChatTemplate::Custom(ref.chat_template());
  if (!chat.ok()) return chat.status().WithContext(ref.path() + ": chat template");
  loaded.chat = std::make_unique<kt::ChatTemplate>(std::move(*chat));
  return loaded;
}

StatusOr<v1::ShardResult> ShardExecutor::Run(const v1::Shard& shard) const {
  const auto start = std::chrono::steady_clock::now();
  StatusOr<v1::ShardResult> result = Status::Internal("unreachable");
  try {
    switch (shard.kind()) {
      case v1::Shard::EXTRACT:
        result = internal::RunExtract(model_, options_, shard);
        break;
      case v1::Shard::TRIALS:
        result = internal::RunTrials(model_, options_, shard);
        break;
      case v1::Shard::GENERATE:
        result = internal::RunGenerate(model_, options_, shard);
        break;
      case v1::Shard::ORTHOGONALIZE:
        result = internal::RunOrthogonalize(model_, options_, shard);
        break;
      case v1::Shard::RANK:
        result = internal::RunRank(model_, options_, shard);
        break;
      case v1::Shard::SCREEN:
        result = internal::RunScreen(model_, options_, shard);
        break;
      default:
        return Status::InvalidArgument("shard " + std::to_string(shard.index()) + ": no kind");
    }
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("shard failed in LibTorch: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Status::Internal(std::string("shard failed: ") + e.what());
  }
  if (!result.ok()) {
    return result.status().WithContext("shard " + shard.stage_name() + "/" +
                                       std::to_string(shard.index()));
  }
  result->set_sweep_id(shard.sweep_id());
  result->set_stage(shard.stage());
  result->set_index(shard.index());
  result->set_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return result;
}

}  // namespace knockout::executor
