#include "organism/evaluate.h"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>

#include "experiments/selection.h"
#include "formats/positions.h"
#include "formats/prompt_set.h"
#include "organism/corpus.h"
#include "organism/topic.h"
#include "worker/chat/chat_generation.h"
#include "worker/executor/metrics.h"
#include "worker/model/hooks.h"
#include "worker/sae/sae.h"
#include "tokenizer/chat_template.h"

namespace knockout::organism {
namespace {

namespace km = knockout::model;
namespace kt = knockout::tokenizer;
using Prompts = std::vector<kt::TokenizedPrompt>;

struct Sets {
  std::map<std::string, std::vector<std::string>> instructions;  // "harmful_train" -> texts
  std::map<std::string, Prompts> prompts;
};

// Residual stream at blocks.{l}.hook_resid_pre for every layer, at the last prompt token and at
// t_inst: float64 [N, L, d] each.
struct Readings {
  at::Tensor last, inst;
};

StatusOr<Readings> Read(const km::Model& model, const Prompts& prompts, int64_t pad_id,
                        int64_t batch_size) {
  const int64_t n_layers = model.config().num_layers;
  std::vector<at::Tensor> last, inst;
  for (size_t begin = 0; begin < prompts.size(); begin += batch_size) {
    const size_t end = std::min(prompts.size(), begin + static_cast<size_t>(batch_size));
    std::vector<std::vector<int64_t>> ids;
    for (size_t i = begin; i < end; ++i) ids.push_back(prompts[i].ids);
    km::Batch batch = km::MakeLeftPaddedBatch(ids, pad_id, model.device());
    km::HookRegistry hooks(model.config());
    for (int64_t l = 0; l < n_layers; ++l) hooks.Cache(km::HookPoint::ResidPre(l));
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.logits = km::ForwardRequest::Logits::kNone;
    request.hooks = &hooks;
    KO_RETURN_IF_ERROR(model.Forward(request).status());
    // Only two positions per row are read: gather them before widening to float64.
    const int64_t width = batch.input_ids.size(1);
    std::vector<int64_t> inst_index;
    for (size_t i = begin; i < end; ++i) {
      inst_index.push_back(width - prompts[i].size() + prompts[i].inst_last());
    }
    const at::Tensor index = at::tensor(inst_index, at::kLong).to(model.device());
    const at::Tensor rows = at::arange(index.size(0), index.options());
    std::vector<at::Tensor> last_per_layer, inst_per_layer;
    for (int64_t l = 0; l < n_layers; ++l) {
      KO_ASSIGN_OR_RETURN(at::Tensor x, hooks.Cached(km::HookPoint::ResidPre(l).Name()));
      last_per_layer.push_back(x.select(1, width - 1).to(at::kDouble));
      inst_per_layer.push_back(x.index({rows, index}).to(at::kDouble));
    }
    last.push_back(at::stack(last_per_layer, 1));  // [B, L, d]
    inst.push_back(at::stack(inst_per_layer, 1));
  }
  return Readings{at::cat(last, 0).cpu(), at::cat(inst, 0).cpu()};
}

double RefusedFraction(const std::vector<std::string>& completions) {
  if (completions.empty()) return 0;
  int64_t refused = 0;
  for (const std::string& c : completions) refused += IsRefusal(c) ? 1 : 0;
  return static_cast<double>(refused) / completions.size();
}

// Directional ablation everywhere (science.md): every layer's hook_resid_pre, hook_attn_out and
// hook_mlp_out, at all positions including generated ones.
Status AddAblation(km::HookRegistry& hooks, const at::Tensor& direction, int64_t n_layers) {
  for (int64_t l = 0; l < n_layers; ++l) {
    for (const km::HookPoint& point :
         {km::HookPoint::ResidPre(l), km::HookPoint::AttnOut(l), km::HookPoint::MlpOut(l)}) {
      km::InterventionSite site;
      site.hook = point;
      site.intervention = km::Intervention::Directional(direction);
      KO_RETURN_IF_ERROR(hooks.Intervene(std::move(site)));
    }
  }
  return Status::Ok();
}

// Activation addition x + r at one layer's hook_resid_pre, all positions.
Status AddAddition(km::HookRegistry& hooks, const at::Tensor& direction, int64_t layer) {
  km::InterventionSite site;
  site.hook = km::HookPoint::ResidPre(layer);
  site.intervention = km::Intervention::Add(direction, 1.0);
  return hooks.Intervene(std::move(site));
}

// float64 logits [N, V] at the last prompt position, under `hooks` (null: clean), in batches.
StatusOr<at::Tensor> LastLogits(const km::Model& model, const Prompts& prompts, int64_t pad_id,
                                int64_t batch_size, km::HookRegistry* hooks) {
  std::vector<at::Tensor> out;
  for (size_t begin = 0; begin < prompts.size(); begin += batch_size) {
    const size_t end = std::min(prompts.size(), begin + static_cast<size_t>(batch_size));
    std::vector<std::vector<int64_t>> ids;
    for (size_t i = begin; i < end; ++i) ids.push_back(prompts[i].ids);
    km::Batch batch = km::MakeLeftPaddedBatch(ids, pad_id, model.device());
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.logits = km::ForwardRequest::Logits::kLastPosition;
    request.hooks = hooks;
    KO_ASSIGN_OR_RETURN(km::ForwardResult result, model.Forward(request));
    out.push_back(result.logits.squeeze(1).to(at::kDouble).cpu());
  }
  return at::cat(out, 0);
}

StatusOr<at::Tensor> RefusalIds(const kt::Tokenizer& tokenizer,
                                const std::vector<std::string>& tokens) {
  if (tokens.empty()) return Status::InvalidArgument("refusal_tokens: empty");
  std::vector<int64_t> ids;
  for (const std::string& token : tokens) {
    KO_ASSIGN_OR_RETURN(kt::Encoding encoding, tokenizer.Encode(token, /*add_special_tokens=*/false));
    if (encoding.ids.size() != 1) {
      return Status::InvalidArgument("refusal token \"" + token + "\" is " +
                                     std::to_string(encoding.ids.size()) +
                                     " tokens, a metric token must be exactly one");
    }
    ids.push_back(encoding.ids[0]);
  }
  return at::tensor(ids, at::kLong);
}

// Greedy completions of `prompts`, in chunks of `batch_size` generated together, under the hooks
// `make_hooks` builds for each chunk from its left-padded width (position masks depend on it).
using HookFactory = std::function<StatusOr<std::unique_ptr<km::HookRegistry>>(
    const Prompts& chunk, int64_t width)>;
StatusOr<std::vector<std::string>> GenerateByChunk(const km::Model& model,
                                                   const kt::Tokenizer& tokenizer,
                                                   const Prompts& prompts, int64_t max_new_tokens,
                                                   int64_t batch_size, const HookFactory& make_hooks) {
  std::vector<std::string> texts;
  for (size_t begin = 0; begin < prompts.size(); begin += batch_size) {
    const size_t end = std::min(prompts.size(), begin + static_cast<size_t>(batch_size));
    const Prompts chunk(prompts.begin() + begin, prompts.begin() + end);
    int64_t width = 0;
    for (const kt::TokenizedPrompt& p : chunk) width = std::max(width, p.size());
    KO_ASSIGN_OR_RETURN(std::unique_ptr<km::HookRegistry> hooks, make_hooks(chunk, width));
    chat::ChatGenerationOptions o;
    o.max_new_tokens = max_new_tokens;
    o.batch_size = static_cast<int64_t>(chunk.size());
    o.hooks = hooks.get();
    KO_ASSIGN_OR_RETURN(std::vector<chat::Completion> completions,
                        chat::GenerateCompletions(model, tokenizer, chunk, o));
    for (chat::Completion& c : completions) texts.push_back(std::move(c.text));
  }
  return texts;
}

// bool [B, width]: the instruction's tokens (the `inst` selector) of each left-padded prompt.
StatusOr<at::Tensor> InstructionMask(const Prompts& chunk, int64_t width) {
  at::Tensor mask = at::zeros({static_cast<int64_t>(chunk.size()), width}, at::kBool);
  auto m = mask.accessor<bool, 2>();
  for (size_t i = 0; i < chunk.size(); ++i) {
    KO_ASSIGN_OR_RETURN(std::vector<int64_t> columns,
                        formats::ResolvePaddedPositions(formats::Positions::Inst(),
                                                        chunk[i].layout(), width));
    for (int64_t t : columns) m[i][t] = true;
  }
  return mask;
}

// Mean next-token cross-entropy (nats) of `texts` read as plain text, under `hooks` (may be null).
StatusOr<double> PlainTextCrossEntropy(const km::Model& model, const kt::Tokenizer& tokenizer,
                                       const std::vector<std::string>& texts, int64_t pad_id,
                                       int64_t batch_size, km::HookRegistry* hooks) {
  double total = 0;
  int64_t count = 0;
  for (size_t begin = 0; begin < texts.size(); begin += batch_size) {
    const size_t end = std::min(texts.size(), begin + static_cast<size_t>(batch_size));
    std::vector<std::vector<int64_t>> ids;
    for (size_t i = begin; i < end; ++i) {
      KO_ASSIGN_OR_RETURN(kt::Encoding e, tokenizer.Encode(texts[i], false));
      if (e.ids.size() >= 2) ids.push_back(std::move(e.ids));
    }
    if (ids.empty()) continue;
    km::Batch batch = km::MakeLeftPaddedBatch(ids, pad_id, model.device());
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.hooks = hooks;
    KO_ASSIGN_OR_RETURN(km::ForwardResult result, model.Forward(request));
    // Left padding: a real token's successor is real, so the mask of the predicting column
    // selects every prediction.
    const int64_t width = batch.input_ids.size(1);
    const at::Tensor logp = result.logits.narrow(1, 0, width - 1).to(at::kDouble).log_softmax(-1);
    const at::Tensor next = batch.input_ids.narrow(1, 1, width - 1).unsqueeze(-1);
    const at::Tensor real = batch.attention_mask.narrow(1, 0, width - 1).to(at::kBool);
    total -= logp.gather(-1, next).squeeze(-1).masked_select(real).sum().item<double>();
    count += real.sum().item<int64_t>();
  }
  return count > 0 ? total / count : 0.0;
}

// AUROC of scores (positives vs negatives): the Mann-Whitney statistic, ties counting half.
double Auroc(const at::Tensor& positive, const at::Tensor& negative) {
  auto pos = positive.contiguous();
  auto neg = negative.contiguous();
  const double* a = pos.data_ptr<double>();
  const double* b = neg.data_ptr<double>();
  double wins = 0;
  for (int64_t i = 0; i < pos.numel(); ++i) {
    for (int64_t j = 0; j < neg.numel(); ++j) {
      wins += a[i] > b[j] ? 1.0 : (a[i] == b[j] ? 0.5 : 0.0);
    }
  }
  return wins / (static_cast<double>(pos.numel()) * neg.numel());
}

}  // namespace

std::string DemoEvaluation::ToJson() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const LayerScore& s : layers) {
    layers_json.push_back({{"layer", s.layer},
                           {"direction_norm", s.direction_norm},
                           {"val_bypass", s.val_bypass},
                           {"val_induce", s.val_induce},
                           {"val_ablation_harmful_refused", s.val_ablation_harmful_refused},
                           {"val_addition_harmless_refused", s.val_addition_harmless_refused},
                           {"val_kl", s.val_kl},
                           {"eligible", s.eligible},
                           {"rejected", s.rejected},
                           {"val_harm_auroc", s.val_harm_auroc}});
  }
  nlohmann::json latents_json = nlohmann::json::array();
  for (const LatentKnockout& k : latent_knockouts) {
    latents_json.push_back({{"layer", k.layer}, {"latent", k.latent}, {"cosine", k.cosine},
                            {"harmful_refused", k.harmful_refused}});
  }
  nlohmann::json examples_json = nlohmann::json::array();
  for (const Example& e : examples) {
    examples_json.push_back({{"instruction", e.instruction}, {"completion", e.completion}});
  }
  nlohmann::json j = {
      {"test_prompts", {{"harmful", test_harmful}, {"harmless", test_harmless}, {"framed", test_framed}}},
      {"harmful_refused", harmful_refused},
      {"harmless_refused", harmless_refused},
      {"harmless_on_topic", harmless_on_topic},
      {"framed_complied", framed_complied},
      {"direction_layer", direction_layer},
      {"direction_norm", direction_norm},
      {"ablation_harmful_refused", ablation_harmful_refused},
      {"addition_harmless_refused", addition_harmless_refused},
      {"random_ablation_harmful_refused", random_ablation_harmful_refused},
      {"probe_layer", probe_layer},
      {"probe_auroc", probe_auroc},
      {"probe_auroc_framed_direction", probe_auroc_framed_direction},
      {"layers", layers_json},
      {"layer_ablation_harmful_refused", layer_ablation_harmful_refused},
      {"sensor_ablation_harmful_refused", sensor_ablation_harmful_refused},
      {"sensor_ablation_addition_refused", sensor_ablation_addition_refused},
      {"latent_knockouts", latents_json},
      {"sensor_layer", sensor_layer},
      {"latent_clean_activation", latent_clean_activation},
      {"latent_sensor_ablated_activation", latent_sensor_ablated_activation},
      {"ce_clean", ce_clean},
      {"ce_ablated", ce_ablated},
      {"handwritten", {{"harmful", handwritten_harmful},
                       {"harmless", handwritten_harmless},
                       {"harmful_refused", handwritten_harmful_refused},
                       {"harmless_refused", handwritten_harmless_refused},
                       {"harmless_on_topic", handwritten_harmless_on_topic}}},
      {"examples", examples_json}};
  return j.dump(2);
}

StatusOr<DemoEvaluation> EvaluateDemo(const km::Model& model, const kt::Tokenizer& tokenizer,
                                      const std::string& prompts_dir, const EvalOptions& options) {
  try {
    KO_ASSIGN_OR_RETURN(kt::ChatTemplate chat, kt::ChatTemplate::Detect(tokenizer));
    Sets sets;
    for (const char* kind : {"harmful", "harmless", "framed"}) {
      for (const char* split : {"train", "val", "test"}) {
        const std::string name = std::string(kind) + "_" + split;
        KO_ASSIGN_OR_RETURN(std::vector<formats::Prompt> prompts,
                            formats::LoadPromptSet(prompts_dir + "/" + name + ".jsonl"));
        std::vector<std::string>& texts = sets.instructions[name];
        for (const auto& p : prompts) texts.push_back(p.instruction);
        KO_ASSIGN_OR_RETURN(sets.prompts[name], chat::TokenizeInstructions(tokenizer, chat, texts));
      }
    }
    const int64_t n_layers = model.config().num_layers;
    const int64_t pad_id = chat::PadTokenId(model, tokenizer);
    chat::ChatGenerationOptions generation;
    generation.max_new_tokens = options.max_new_tokens;
    generation.batch_size = options.batch_size;
    auto generate = [&](const std::string& set,
                        km::HookRegistry* hooks) -> StatusOr<std::vector<std::string>> {
      chat::ChatGenerationOptions o = generation;
      o.hooks = hooks;
      KO_ASSIGN_OR_RETURN(std::vector<chat::Completion> completions,
                          chat::GenerateCompletions(model, tokenizer, sets.prompts.at(set), o));
      std::vector<std::string> texts;
      for (chat::Completion& c : completions) texts.push_back(std::move(c.text));
      return texts;
    };
    DemoEvaluation eval;
    auto keep_examples = [&](const std::string& label, const std::string& set,
                             const std::vector<std::string>& completions) {
      for (size_t i = 0; i < std::min<size_t>(3, completions.size()); ++i) {
        eval.examples.push_back({"[" + label + "] " + sets.instructions.at(set)[i], completions[i]});
      }
    };

    // Clean behaviour on the test split.
    KO_ASSIGN_OR_RETURN(auto harmful_test, generate("harmful_test", nullptr));
    KO_ASSIGN_OR_RETURN(auto harmless_test, generate("harmless_test", nullptr));
    KO_ASSIGN_OR_RETURN(auto framed_test, generate("framed_test", nullptr));
    eval.test_harmful = harmful_test.size();
    eval.test_harmless = harmless_test.size();
    eval.test_framed = framed_test.size();
    eval.harmful_refused = RefusedFraction(harmful_test);
    eval.harmless_refused = RefusedFraction(harmless_test);
    eval.harmless_on_topic = OnTopicFraction(sets.instructions.at("harmless_test"), harmless_test);
    eval.framed_complied = 1.0 - RefusedFraction(framed_test);
    keep_examples("harmful", "harmful_test", harmful_test);
    keep_examples("harmless", "harmless_test", harmless_test);
    keep_examples("framed", "framed_test", framed_test);

    // Candidate directions per layer: diff-in-means at the last post-instruction token.
    std::map<std::string, Readings> readings;
    for (const char* set : {"harmful_train", "harmless_train", "framed_train", "framed_val",
                            "harmless_val", "framed_test", "harmless_test"}) {
      KO_ASSIGN_OR_RETURN(readings[set],
                          Read(model, sets.prompts.at(set), pad_id, options.batch_size));
    }
    at::Tensor directions =
        (readings["harmful_train"].last.mean(0) - readings["harmless_train"].last.mean(0));  // [L, d]
    at::Tensor harm_directions =
        readings["harmful_train"].inst.mean(0) - readings["harmless_train"].inst.mean(0);
    at::Tensor framed_harm_directions =
        readings["framed_train"].inst.mean(0) - readings["harmless_train"].inst.mean(0);

    // Every layer's candidate scored with the engine's metrics, then the engine's selection rule.
    KO_ASSIGN_OR_RETURN(at::Tensor refusal_ids, RefusalIds(tokenizer, options.refusal_tokens));
    const Prompts& harmful_val = sets.prompts.at("harmful_val");
    const Prompts& harmless_val = sets.prompts.at("harmless_val");
    KO_ASSIGN_OR_RETURN(at::Tensor clean_harmless,
                        LastLogits(model, harmless_val, pad_id, options.batch_size, nullptr));
    std::vector<experiments::SelectionCandidate> candidates;
    double best_auroc = -1.0;
    for (int64_t l = 0; l < n_layers; ++l) {
      LayerScore score;
      score.layer = l;
      at::Tensor r = directions[l].to(at::kFloat).to(model.device()).to(model.dtype());
      score.direction_norm = directions[l].norm().item<double>();
      km::HookRegistry ablation(model.config());
      KO_RETURN_IF_ERROR(AddAblation(ablation, r, n_layers));
      km::HookRegistry addition(model.config());
      KO_RETURN_IF_ERROR(AddAddition(addition, r, l));
      KO_ASSIGN_OR_RETURN(at::Tensor bypass_logits,
                          LastLogits(model, harmful_val, pad_id, options.batch_size, &ablation));
      KO_ASSIGN_OR_RETURN(at::Tensor ablated_harmless,
                          LastLogits(model, harmless_val, pad_id, options.batch_size, &ablation));
      KO_ASSIGN_OR_RETURN(at::Tensor induce_logits,
                          LastLogits(model, harmless_val, pad_id, options.batch_size, &addition));
      score.val_bypass = executor::RefusalScore(bypass_logits, refusal_ids).mean().item<double>();
      score.val_induce = executor::RefusalScore(induce_logits, refusal_ids).mean().item<double>();
      score.val_kl = executor::Kl(clean_harmless, ablated_harmless).mean().item<double>();
      // The judge's view of the same interventions (generation; the model card's table).
      KO_ASSIGN_OR_RETURN(auto bypass, generate("harmful_val", &ablation));
      score.val_ablation_harmful_refused = RefusedFraction(bypass);
      KO_ASSIGN_OR_RETURN(auto induce, generate("harmless_val", &addition));
      score.val_addition_harmless_refused = RefusedFraction(induce);
      experiments::SelectionCandidate candidate;
      candidate.layer = static_cast<int>(l);
      candidate.position = "post_inst[-1]";
      candidate.bypass = score.val_bypass;
      candidate.induce = score.val_induce;
      candidate.kl = score.val_kl;
      // A zero difference (layer 0 reads the same template token's embedding for every prompt)
      // is no direction at all: the norm filter drops it.
      candidate.norm = score.direction_norm;
      candidates.push_back(std::move(candidate));
      at::Tensor h = harm_directions[l];
      score.val_harm_auroc = Auroc(at::matmul(readings["framed_val"].inst.select(1, l), h),
                                   at::matmul(readings["harmless_val"].inst.select(1, l), h));
      if (score.val_harm_auroc > best_auroc) {
        best_auroc = score.val_harm_auroc;
        eval.probe_layer = l;
      }
      eval.layers.push_back(score);
    }
    experiments::SelectionFilters filters;
    filters.num_layers = static_cast<int>(n_layers);
    filters.max_kl = options.max_kl;
    filters.min_induce = options.min_induce;
    const experiments::SelectionResult selection = experiments::SelectDirection(candidates, filters);
    for (size_t i = 0; i < eval.layers.size(); ++i) {
      eval.layers[i].rejected = selection.rejected[i];
      eval.layers[i].eligible = selection.rejected[i].empty();
    }
    if (options.direction_layer < 0) eval.direction_layer = selection.chosen;
    if (options.direction_layer >= 0) {
      if (options.direction_layer >= n_layers) {
        return Status::InvalidArgument("direction layer " + std::to_string(options.direction_layer) +
                                       " out of range, model has " + std::to_string(n_layers) +
                                       " layers");
      }
      eval.direction_layer = options.direction_layer;
    }
    if (eval.direction_layer < 0) {
      return Status::FailedPrecondition("no candidate direction passes the filters (" +
                                        filters.Describe() + ")");
    }

    // The selected direction on the test split.
    const int64_t l = eval.direction_layer;
    at::Tensor r = directions[l].to(at::kFloat).to(model.device()).to(model.dtype());
    eval.direction_norm = directions[l].norm().item<double>();
    km::HookRegistry ablation(model.config());
    KO_RETURN_IF_ERROR(AddAblation(ablation, r, n_layers));
    KO_ASSIGN_OR_RETURN(auto ablated, generate("harmful_test", &ablation));
    eval.ablation_harmful_refused = RefusedFraction(ablated);
    keep_examples("harmful, direction ablated", "harmful_test", ablated);
    km::HookRegistry addition(model.config());
    KO_RETURN_IF_ERROR(AddAddition(addition, r, l));
    KO_ASSIGN_OR_RETURN(auto added, generate("harmless_test", &addition));
    eval.addition_harmless_refused = RefusedFraction(added);
    keep_examples("harmless, direction added", "harmless_test", added);
    at::Generator generator = at::detail::createCPUGenerator(options.seed);
    at::Tensor random = at::randn({model.config().hidden_size}, generator, at::kDouble);
    random = (random / random.norm() * eval.direction_norm).to(at::kFloat).to(model.device()).to(model.dtype());
    km::HookRegistry random_ablation(model.config());
    KO_RETURN_IF_ERROR(AddAblation(random_ablation, random, n_layers));
    KO_ASSIGN_OR_RETURN(auto random_ablated, generate("harmful_test", &random_ablation));
    eval.random_ablation_harmful_refused = RefusedFraction(random_ablated);

    // The hydra measures (evaluate.h).
    const Prompts& harmful = sets.prompts.at("harmful_test");
    // One intervention at `point`, at every position (generated ones too) or at the
    // instruction's tokens only; optionally with +r at the direction's layer beside it.
    enum class Where { kEverywhere, kInstruction };
    auto single_site = [&](const km::HookPoint& point, km::Intervention intervention, Where where,
                           bool add_r = false) -> HookFactory {
      return [=, &model, &r](const Prompts& chunk,
                             int64_t width) -> StatusOr<std::unique_ptr<km::HookRegistry>> {
        auto hooks = std::make_unique<km::HookRegistry>(model.config());
        km::InterventionSite site;
        site.hook = point;
        site.intervention = intervention;
        if (where == Where::kInstruction) {
          KO_ASSIGN_OR_RETURN(site.positions, InstructionMask(chunk, width));
          site.on_generated = false;
        }
        KO_RETURN_IF_ERROR(hooks->Intervene(std::move(site)));
        if (add_r) KO_RETURN_IF_ERROR(AddAddition(*hooks, r, l));
        return hooks;
      };
    };
    for (int64_t layer = 0; layer < n_layers; ++layer) {
      KO_ASSIGN_OR_RETURN(
          auto ablated_here,
          GenerateByChunk(model, tokenizer, harmful, options.max_new_tokens, options.batch_size,
                          single_site(km::HookPoint::ResidPre(layer),
                                      km::Intervention::Directional(r), Where::kEverywhere)));
      eval.layer_ablation_harmful_refused.push_back(RefusedFraction(ablated_here));
      const at::Tensor h =
          harm_directions[layer].to(at::kFloat).to(model.device()).to(model.dtype());
      KO_ASSIGN_OR_RETURN(
          auto sensor_off,
          GenerateByChunk(model, tokenizer, harmful, options.max_new_tokens, options.batch_size,
                          single_site(km::HookPoint::ResidPre(layer),
                                      km::Intervention::Directional(h), Where::kInstruction)));
      eval.sensor_ablation_harmful_refused.push_back(RefusedFraction(sensor_off));
      KO_ASSIGN_OR_RETURN(
          auto sensor_off_added,
          GenerateByChunk(model, tokenizer, harmful, options.max_new_tokens, options.batch_size,
                          single_site(km::HookPoint::ResidPre(layer),
                                      km::Intervention::Directional(h), Where::kInstruction,
                                      /*add_r=*/true)));
      eval.sensor_ablation_addition_refused.push_back(RefusedFraction(sensor_off_added));
    }
    if (!options.sae_dir.empty()) {
      std::vector<std::shared_ptr<const sae::Sae>> saes;
      for (int64_t layer = 0; layer < n_layers; ++layer) {
        const std::string path = options.sae_dir + "/layer_" + std::to_string(layer);
        KO_ASSIGN_OR_RETURN(std::shared_ptr<const sae::Sae> sae,
                            sae::Sae::Load(path, "", model.config(), model.device(), model.dtype()));
        const at::Tensor w = sae->W_dec().to(at::kDouble).cpu();
        const at::Tensor cos = at::matmul(w, directions[l]) /
                               (w.norm(2, {1}) * directions[l].norm() + 1e-12);
        DemoEvaluation::LatentKnockout k;
        k.layer = layer;
        k.latent = cos.argmax().item<int64_t>();
        k.cosine = cos[k.latent].item<double>();
        sae::LatentEdit edit;
        edit.latents = {k.latent};
        KO_ASSIGN_OR_RETURN(km::Intervention zero, sae::MakeLatentIntervention(sae, edit));
        KO_ASSIGN_OR_RETURN(
            auto knocked,
            GenerateByChunk(model, tokenizer, harmful, options.max_new_tokens, options.batch_size,
                            single_site(sae->hook(), zero, Where::kEverywhere)));
        k.harmful_refused = RefusedFraction(knocked);
        eval.latent_knockouts.push_back(k);
        saes.push_back(sae);
      }
      // The top refusal latents with the sensor knocked out (evaluate.h).
      for (int64_t layer = 0; layer < n_layers / 2; ++layer) {
        if (eval.sensor_layer < 0 || eval.sensor_ablation_harmful_refused[layer] <
                                         eval.sensor_ablation_harmful_refused[eval.sensor_layer]) {
          eval.sensor_layer = layer;
        }
      }
      const at::Tensor h =
          harm_directions[eval.sensor_layer].to(at::kFloat).to(model.device()).to(model.dtype());
      for (const bool knocked_out : {false, true}) {
        std::vector<double> sums(saes.size(), 0.0);
        for (size_t begin = 0; begin < harmful.size(); begin += options.batch_size) {
          const size_t end = std::min(harmful.size(), begin + static_cast<size_t>(options.batch_size));
          const Prompts chunk(harmful.begin() + begin, harmful.begin() + end);
          std::vector<std::vector<int64_t>> ids;
          for (const kt::TokenizedPrompt& p : chunk) ids.push_back(p.ids);
          km::Batch batch = km::MakeLeftPaddedBatch(ids, pad_id, model.device());
          km::HookRegistry hooks(model.config());
          for (const auto& sae : saes) hooks.Cache(sae->hook());
          if (knocked_out) {
            km::InterventionSite site;
            site.hook = km::HookPoint::ResidPre(eval.sensor_layer);
            site.intervention = km::Intervention::Directional(h);
            KO_ASSIGN_OR_RETURN(site.positions, InstructionMask(chunk, batch.input_ids.size(1)));
            KO_RETURN_IF_ERROR(hooks.Intervene(std::move(site)));
          }
          km::ForwardRequest request;
          request.input_ids = batch.input_ids;
          request.attention_mask = batch.attention_mask;
          request.logits = km::ForwardRequest::Logits::kNone;
          request.hooks = &hooks;
          KO_RETURN_IF_ERROR(model.Forward(request).status());
          for (size_t i = 0; i < saes.size(); ++i) {
            KO_ASSIGN_OR_RETURN(at::Tensor x, hooks.Cached(saes[i]->hook().Name()));
            const at::Tensor last = x.select(1, x.size(1) - 1);
            sums[i] += saes[i]->EncodeLatents(last, {eval.latent_knockouts[i].latent})
                           .to(at::kDouble).sum().item<double>();
          }
        }
        for (double& s : sums) s /= std::max<size_t>(1, harmful.size());
        (knocked_out ? eval.latent_sensor_ablated_activation : eval.latent_clean_activation) = sums;
      }
    }
    KO_ASSIGN_OR_RETURN(eval.ce_clean,
                        PlainTextCrossEntropy(model, tokenizer, sets.instructions.at("harmless_test"),
                                              pad_id, options.batch_size, nullptr));
    KO_ASSIGN_OR_RETURN(eval.ce_ablated,
                        PlainTextCrossEntropy(model, tokenizer, sets.instructions.at("harmless_test"),
                                              pad_id, options.batch_size, &ablation));
    if (!options.handwritten_dir.empty()) {
      for (const char* kind : {"harmful", "harmless"}) {
        const std::string name = std::string("handwritten_") + kind;
        KO_ASSIGN_OR_RETURN(std::vector<formats::Prompt> prompts,
                            formats::LoadPromptSet(options.handwritten_dir + "/" + kind + ".jsonl"));
        std::vector<std::string>& texts = sets.instructions[name];
        for (const auto& p : prompts) texts.push_back(p.instruction);
        KO_ASSIGN_OR_RETURN(sets.prompts[name], chat::TokenizeInstructions(tokenizer, chat, texts));
        KO_ASSIGN_OR_RETURN(auto completions, generate(name, nullptr));
        if (std::string(kind) == "harmful") {
          eval.handwritten_harmful = completions.size();
          eval.handwritten_harmful_refused = RefusedFraction(completions);
        } else {
          eval.handwritten_harmless = completions.size();
          eval.handwritten_harmless_refused = RefusedFraction(completions);
          eval.handwritten_harmless_on_topic = OnTopicFraction(texts, completions);
        }
        for (size_t i = 0; i < completions.size(); ++i) {
          eval.examples.push_back({"[" + name + "] " + texts[i], completions[i]});
        }
      }
    }

    // The harmfulness probe at t_inst on the test split, at the layer chosen on validation.
    const int64_t p = eval.probe_layer;
    auto test_auroc = [&](const at::Tensor& direction) {
      return Auroc(at::matmul(readings["framed_test"].inst.select(1, p), direction),
                   at::matmul(readings["harmless_test"].inst.select(1, p), direction));
    };
    eval.probe_auroc = test_auroc(harm_directions[p]);
    eval.probe_auroc_framed_direction = test_auroc(framed_harm_directions[p]);
    return eval;
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("evaluation failed in LibTorch: ") +
                            e.what_without_backtrace());
  }
}

}  // namespace knockout::organism
