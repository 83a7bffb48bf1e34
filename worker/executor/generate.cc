// GENERATE and ORTHOGONALIZE shards: greedy generation under conditions (judged by the
// substring judge), cross-entropy on the text set, and the weight-orthogonalised checkpoint.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "common/judge.h"
#include "worker/chat/chat_generation.h"
#include "worker/executor/shard_common.h"
#include "worker/executor/shard_kinds.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "tokenizer/tokenizer.h"

namespace knockout::executor::internal {
namespace {

namespace km = knockout::model;
namespace kt = knockout::tokenizer;

StatusOr<std::vector<v1::CompletionRecord>> Generate(const km::Model& model, const LoadedModel& m,
                                                     const v1::Shard& shard, km::HookRegistry* hooks,
                                                     const std::string& condition,
                                                     int64_t batch_size) {
  std::vector<std::string> instructions;
  for (const auto& p : shard.prompts()) instructions.push_back(p.instruction());
  KO_ASSIGN_OR_RETURN(auto tokenized, chat::TokenizeInstructions(*m.tokenizer, *m.chat, instructions));
  chat::ChatGenerationOptions options;
  options.max_new_tokens = shard.max_new_tokens() > 0 ? shard.max_new_tokens() : 64;
  options.batch_size = batch_size;
  options.hooks = hooks;
  KO_ASSIGN_OR_RETURN(auto completions, chat::GenerateCompletions(model, *m.tokenizer, tokenized, options));
  std::vector<v1::CompletionRecord> records;
  for (size_t i = 0; i < completions.size(); ++i) {
    v1::CompletionRecord r;
    r.set_set(shard.prompts(i).set());
    r.set_prompt(shard.prompts(i).index());
    r.set_condition(condition);
    r.set_instruction(shard.prompts(i).instruction());
    r.set_text(completions[i].text);
    r.set_refused(knockout::IsRefusal(completions[i].text));
    records.push_back(std::move(r));
  }
  return records;
}

// Mean next-token cross-entropy (nats) of the reference prompts read as plain text (no chat
// template, the tokenizer's BOS policy), under the registry's interventions at every position.
StatusOr<std::pair<double, int64_t>> CrossEntropy(const km::Model& model, const LoadedModel& m,
                                                  const v1::Shard& shard, km::HookRegistry* hooks,
                                                  int64_t batch_size) {
  std::vector<std::vector<int64_t>> texts;
  for (const auto& p : shard.reference_prompts()) {
    KO_ASSIGN_OR_RETURN(kt::Encoding encoding, m.tokenizer->Encode(p.instruction(), true));
    if (encoding.ids.size() >= 2) texts.push_back(encoding.ids);
  }
  double total = 0;
  int64_t tokens = 0;
  const int64_t pad_id = chat::PadTokenId(model, *m.tokenizer);
  for (size_t begin = 0; begin < texts.size(); begin += batch_size) {
    const size_t end = std::min(texts.size(), begin + static_cast<size_t>(batch_size));
    std::vector<std::vector<int64_t>> part(texts.begin() + begin, texts.begin() + end);
    km::Batch batch = km::MakeLeftPaddedBatch(part, pad_id, model.device());
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.hooks = hooks;
    KO_ASSIGN_OR_RETURN(km::ForwardResult result, model.Forward(request));
    at::Tensor logp = at::log_softmax(result.logits.to(at::kDouble), -1);
    const int64_t t = batch.input_ids.size(1);
    at::Tensor targets = batch.input_ids.narrow(1, 1, t - 1).unsqueeze(-1);
    at::Tensor nll = -logp.narrow(1, 0, t - 1).gather(-1, targets).squeeze(-1);
    // A pair counts where both the predicting and the predicted column are real tokens.
    at::Tensor real = (batch.attention_mask.narrow(1, 0, t - 1) * batch.attention_mask.narrow(1, 1, t - 1))
                          .to(at::kDouble);
    total += (nll * real).sum().item<double>();
    tokens += real.sum().item<double>();
  }
  return std::make_pair(tokens > 0 ? total / tokens : std::nan(""), tokens);
}

}  // namespace

StatusOr<v1::ShardResult> RunGenerate(const LoadedModel& m, const ExecutorOptions& options,
                                      const v1::Shard& shard) {
  const int64_t batch_size = options.generation_batch;
  const km::Model& model = *m.model;
  KO_ASSIGN_OR_RETURN(auto tensors, ShardTensors(shard));
  v1::ShardResult out;
  for (const v1::Trial& trial : shard.trials()) {
    if (options.should_stop && options.should_stop()) {
      return Status::Cancelled("shard stopped before it finished (deadline, dropped lease or shutdown)");
    }
    km::HookRegistry hooks(model.config());
    for (const v1::Edit& edit : trial.edits()) {
      KO_ASSIGN_OR_RETURN(at::Tensor r, FindTensor(tensors, edit.tensor()));
      KO_ASSIGN_OR_RETURN(std::vector<km::HookPoint> points, EditHooks(edit, model.config().num_layers));
      km::Intervention intervention;
      if (edit.ablation().kind() == v1::Ablation::DIRECTIONAL || edit.ablation().kind() == v1::Ablation::PROJECT) {
        intervention = km::Intervention::Directional(r);
      } else if (edit.ablation().kind() == v1::Ablation::ADD) {
        intervention = km::Intervention::Add(r, edit.ablation().coefficient());
      } else {
        return Status::InvalidArgument("generate condition " + trial.label().role() +
                                       ": only directional ablation, projection and addition are supported");
      }
      for (const km::HookPoint& point : points) {
        km::InterventionSite site;
        site.hook = point;
        site.intervention = intervention;
        KO_RETURN_IF_ERROR(hooks.Intervene(std::move(site)));
      }
    }
    KO_ASSIGN_OR_RETURN(auto records, Generate(model, m, shard, &hooks, trial.label().role(), batch_size));
    for (auto& r : records) *out.add_completions() = std::move(r);
    if (shard.reference_prompts_size() > 0 && !shard.metrics().text_set().empty()) {
      KO_ASSIGN_OR_RETURN(auto ce, CrossEntropy(model, m, shard, &hooks, batch_size));
      v1::ResultRow* row = out.add_rows();
      row->set_trial(trial.index());
      row->set_prompt_set(shard.metrics().text_set());
      row->set_prompt(-1);
      (*row->mutable_values())["cross_entropy"] = ce.first;
      (*row->mutable_values())["tokens"] = static_cast<double>(ce.second);
    }
  }
  out.set_trials_run(shard.trials_size());
  return out;
}

// W <- W - r_hat r_hat^T W for the embedding (rows are residual vectors) and every matrix that
// writes to the residual stream (o_proj, down_proj); biases untouched, as in the reference.
StatusOr<v1::ShardResult> RunOrthogonalize(const LoadedModel& m, const ExecutorOptions& options,
                                           const v1::Shard& shard) {
  const int64_t batch_size = options.generation_batch;
  namespace fs = std::filesystem;
  if (shard.tensors_size() != 1) return Status::InvalidArgument("orthogonalize needs one direction");
  KO_ASSIGN_OR_RETURN(auto tensors, ShardTensors(shard));
  at::Tensor r = tensors.begin()->second.to(at::kDouble);
  at::Tensor r_hat = r / (r.norm() + 1e-8);
  const km::Model& model = *m.model;
  if (model.config().family == formats::Family::kGemma2) {
    // Gemma 2 normalises o_proj's and down_proj's outputs (RMSNorm with a per-dimension weight)
    // before they join the residual stream, so no edit of those matrices removes r from it.
    return Status::Unimplemented(
        "orthogonalize: weight orthogonalization is not exact for Gemma 2 (its attention and MLP "
        "outputs pass through RMSNorms after o_proj and down_proj); use a generate condition with "
        "kind: ablate, which ablates r at every layer at run time");
  }
  km::ModelWeights edited = model.weights();
  auto project_out = [&](const at::Tensor& w_out_in) {  // [d, in]: the output axis is 0
    at::Tensor w = w_out_in.to(at::kDouble);
    return (w - at::outer(r_hat, at::matmul(r_hat, w))).to(w_out_in.scalar_type());
  };
  const bool tied = model.config().tie_word_embeddings;
  edited.embed = project_out(model.weights().embed.t()).t().contiguous();
  if (tied) edited.lm_head = edited.embed;
  for (size_t l = 0; l < edited.layers.size(); ++l) {
    edited.layers[l].o = project_out(model.weights().layers[l].o);
    edited.layers[l].down = project_out(model.weights().layers[l].down);
  }
  KO_ASSIGN_OR_RETURN(auto edited_model, km::Model::FromWeights(model.config(), std::move(edited)));

  // Written to a staging directory and renamed: a crash leaves no half-written checkpoint.
  const fs::path output(shard.output());
  const fs::path staging = output.string() + ".staging";
  std::error_code ec;
  fs::remove_all(staging, ec);
  fs::create_directories(staging, ec);
  if (ec) return Status::IOError(staging.string() + ": " + ec.message());
  KO_RETURN_IF_ERROR(edited_model->Save(staging.string(), at::kFloat));
  for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path source = fs::path(m.path) / file;
    if (fs::exists(source)) fs::copy_file(source, staging / file, fs::copy_options::overwrite_existing, ec);
    if (ec) return Status::IOError((staging / file).string() + ": " + ec.message());
  }
  if (fs::exists(output)) {
    if (!fs::exists(output / ".knockout-orthogonalized")) {
      return Status::FailedPrecondition(output.string() +
                                        ": exists and was not written by knockout; not replacing it");
    }
    fs::remove_all(output, ec);
  }
  {
    std::FILE* marker = std::fopen((staging / ".knockout-orthogonalized").c_str(), "w");
    if (marker) std::fclose(marker);
  }
  fs::rename(staging, output, ec);
  if (ec) return Status::IOError(output.string() + ": " + ec.message());

  // Load the checkpoint back through the runtime and evaluate it by generation.
  v1::ModelRef ref;
  ref.set_path(output.string());
  ref.set_dtype(model.dtype() == at::kFloat ? "float32" : model.dtype() == at::kBFloat16 ? "bfloat16" : "float16");
  ref.set_device(model.device().str());
  KO_ASSIGN_OR_RETURN(LoadedModel reloaded, LoadModel(ref));
  v1::ShardResult out;
  KO_ASSIGN_OR_RETURN(auto records, Generate(*reloaded.model, reloaded, shard, nullptr, "orthogonalized", batch_size));
  for (auto& rec : records) *out.add_completions() = std::move(rec);
  out.set_trials_run(1);
  return out;
}

}  // namespace knockout::executor::internal
