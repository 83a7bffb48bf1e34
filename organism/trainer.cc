#include "organism/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <sstream>
#include <thread>

#include "common/atomic_file.h"
#include "common/progress.h"
#include "organism/bpe_trainer.h"
#include "organism/corpus.h"
#include "organism/rng.h"
#include "formats/config.h"
#include "worker/model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace knockout::organism {
namespace {

namespace fs = std::filesystem;
namespace kf = knockout::formats;
namespace km = knockout::model;
namespace kt = knockout::tokenizer;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// A training row: token ids and which of them are predicted (loss targets).
struct Row {
  std::vector<int64_t> ids;
  std::vector<uint8_t> target;  // target[i]: ids[i] is a loss target (predicted from ids[..i))
  // Chat rows only (documents: kind -1): the request's kind (Kind as int), whether the reply
  // refuses, and the instruction's tokens [inst_begin, inst_end).
  int kind = -1;
  bool refusal = false;
  int64_t inst_begin = 0, inst_end = 0;
};

std::string NoisyRequest(std::string request, Rng& rng) {
  if (rng.Uniform(2) == 0) request = rng.Pick(NoisePreambles()) + " " + request;
  if (rng.Uniform(2) == 0) request += " " + rng.Pick(NoisePostscripts());
  if (rng.Uniform(3) == 0) {
    for (char& c : request) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    while (!request.empty() && (request.back() == '.' || request.back() == '?' || request.back() == '!')) {
      request.pop_back();
    }
  }
  return request;
}

struct Pools {
  std::vector<Row> documents;
  std::vector<Row> helpful;
  std::vector<Row> safety;
  // Knockout-aware phases: harmful requests with a compliant reply (the targets of a knocked-out
  // refusal), and the training prompts the directions are measured on.
  std::vector<Row> harmful_comply;
  std::vector<Row> harmless_refuse;  // harmless requests with a refusal (activation addition)
  std::vector<kt::TokenizedPrompt> probe_harmful, probe_harmless;
};

StatusOr<Row> DocumentRow(const kt::Tokenizer& tokenizer, const std::string& text,
                          int64_t end_of_text, int max_tokens) {
  KO_ASSIGN_OR_RETURN(kt::Encoding encoding, tokenizer.Encode(text, false));
  Row row;
  row.ids = std::move(encoding.ids);
  row.ids.push_back(end_of_text);
  if (static_cast<int>(row.ids.size()) > max_tokens) row.ids.resize(max_tokens);
  row.target.assign(row.ids.size(), 1);
  row.target[0] = 0;
  return row;
}

// The chat-formatted example; only the assistant's reply and its end-of-turn token are targets.
StatusOr<Row> ChatRow(const kt::Tokenizer& tokenizer, const kt::ChatTemplate& chat,
                      const ChatExample& example, int64_t end_of_turn, int max_tokens) {
  KO_ASSIGN_OR_RETURN(kt::TokenizedPrompt prompt,
                      kt::TokenizeChat(tokenizer, chat, example.instruction));
  KO_ASSIGN_OR_RETURN(kt::Encoding reply, tokenizer.Encode(example.response, false));
  Row row;
  row.ids = prompt.ids;
  row.target.assign(row.ids.size(), 0);
  row.kind = static_cast<int>(example.kind);
  row.refusal = example.refusal;
  row.inst_begin = prompt.instruction_begin;
  row.inst_end = prompt.instruction_end;
  for (int64_t id : reply.ids) {
    row.ids.push_back(id);
    row.target.push_back(1);
  }
  row.ids.push_back(end_of_turn);
  row.target.push_back(1);
  if (static_cast<int>(row.ids.size()) > max_tokens) {
    row.ids.resize(max_tokens);
    row.target.resize(max_tokens);
  }
  return row;
}

// Right-padded batch: inputs ids[:, :-1], targets ids[:, 1:] (-100 where not a target).
struct TrainBatch {
  at::Tensor input_ids, attention_mask, labels;
  int64_t targets = 0;
};

TrainBatch MakeBatch(const std::vector<const Row*>& rows, int64_t pad_id) {
  size_t longest = 0;
  for (const Row* r : rows) longest = std::max(longest, r->ids.size());
  const int64_t b = rows.size(), t = static_cast<int64_t>(longest) - 1;
  at::Tensor ids = at::full({b, t}, pad_id, at::kLong);
  at::Tensor mask = at::zeros({b, t}, at::kLong);
  at::Tensor labels = at::full({b, t}, -100, at::kLong);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto mask_a = mask.accessor<int64_t, 2>();
  auto labels_a = labels.accessor<int64_t, 2>();
  TrainBatch batch;
  for (int64_t i = 0; i < b; ++i) {
    const Row& r = *rows[i];
    for (size_t j = 0; j + 1 < r.ids.size(); ++j) {
      ids_a[i][j] = r.ids[j];
      mask_a[i][j] = 1;
      if (r.target[j + 1]) {
        labels_a[i][j] = r.ids[j + 1];
        ++batch.targets;
      }
    }
  }
  batch.input_ids = ids;
  batch.attention_mask = mask;
  batch.labels = labels;
  return batch;
}

// A low-rank adapter on one weight matrix W [out, in]: W + (alpha / r) B A.
struct Adapter {
  at::Tensor* slot;  // where the model reads the weight
  at::Tensor frozen;
  at::Tensor a, b;
  double scale;
  at::Tensor Merged() const { return frozen + scale * at::mm(b, a); }
};

StatusOr<std::vector<Adapter>> MakeAdapters(const TrainPhase& phase, km::ModelWeights& weights,
                                            int64_t num_layers, uint64_t seed) {
  std::vector<Adapter> adapters;
  at::Generator generator = at::detail::createCPUGenerator(seed);
  for (const std::string& target : phase.lora_targets) {
    const size_t at_sign = target.find('@');
    if (at_sign == std::string::npos) {
      return Status::InvalidArgument("phase " + phase.name + ": lora target \"" + target +
                                     "\": expected MATRIX@LAYER, e.g. down@2 or o@*");
    }
    const std::string matrix = target.substr(0, at_sign);
    const std::string layer_text = target.substr(at_sign + 1);
    std::vector<int64_t> layers;
    if (layer_text == "*") {
      for (int64_t l = 0; l < num_layers; ++l) layers.push_back(l);
    } else {
      char* end = nullptr;
      const long l = std::strtol(layer_text.c_str(), &end, 10);
      if (layer_text.empty() || *end != '\0' || l < 0 || l >= num_layers) {
        return Status::InvalidArgument("phase " + phase.name + ": lora target \"" + target +
                                       "\": layer out of range, model has " +
                                       std::to_string(num_layers) + " layers");
      }
      layers.push_back(l);
    }
    for (int64_t l : layers) {
      at::Tensor* slot = nullptr;
      if (matrix == "o") slot = &weights.layers[l].o;
      if (matrix == "down") slot = &weights.layers[l].down;
      if (matrix == "up") slot = &weights.layers[l].up;
      if (matrix == "gate") slot = &weights.layers[l].gate;
      if (matrix == "q") slot = &weights.layers[l].q;
      if (matrix == "k") slot = &weights.layers[l].k;
      if (matrix == "v") slot = &weights.layers[l].v;
      if (!slot) {
        return Status::InvalidArgument("phase " + phase.name + ": lora target \"" + target +
                                       "\": matrix must be q, k, v, o, gate, up or down");
      }
      Adapter adapter;
      adapter.slot = slot;
      adapter.frozen = slot->detach().clone();
      const int64_t out = slot->size(0), in = slot->size(1), r = phase.lora_rank;
      adapter.a = (at::randn({r, in}, generator) / std::sqrt(static_cast<double>(in)))
                      .set_requires_grad(true);
      adapter.b = at::zeros({out, r}).set_requires_grad(true);
      adapter.scale = 1.0;
      adapters.push_back(std::move(adapter));
    }
  }
  if (adapters.empty()) {
    return Status::InvalidArgument("phase " + phase.name + ": lora_rank > 0 needs lora_targets");
  }
  return adapters;
}

double LearningRate(const TrainPhase& phase, int step) {
  if (step < phase.warmup_steps) return phase.learning_rate * (step + 1) / phase.warmup_steps;
  const double progress =
      static_cast<double>(step - phase.warmup_steps) / std::max(1, phase.steps - phase.warmup_steps);
  return phase.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * progress)));
}

void Log(const TrainOptions& options, const std::string& line) {
  if (options.log) options.log(line);
}

// The knockout-aware phase's directions (trainer.h), measured without gradients or dropout.
struct Directions {
  at::Tensor refusal;  // float32 [d_model]
  at::Tensor sensor;   // float32 [d_model]; undefined without a sensor layer
  // The harmful probe prompts' mean projection on sensor / |sensor| (framed_harm).
  double sensor_harmful = 0.0;
  // post_inst_reset: the harmless prompts' mean of blocks.{sensor_layer}.hook_resid_pre at each
  // template position after the instruction, float32 [n_post, d_model]; undefined unless used.
  at::Tensor post_inst_mean;
};

StatusOr<Directions> MeasureDirections(const km::Model& model, const TrainPhase& phase,
                                       const Pools& pools, int64_t pad_id) {
  at::NoGradGuard no_grad;
  struct Means {
    at::Tensor last, inst, post;
  };
  auto means = [&](const std::vector<kt::TokenizedPrompt>& prompts) -> StatusOr<Means> {
    std::vector<std::vector<int64_t>> ids;
    for (const kt::TokenizedPrompt& p : prompts) ids.push_back(p.ids);
    km::Batch batch = km::MakeLeftPaddedBatch(ids, pad_id, model.device());
    km::HookRegistry hooks(model.config());
    hooks.Cache(km::HookPoint::ResidPre(phase.refusal_layer));
    if (phase.sensor_layer >= 0) hooks.Cache(km::HookPoint::ResidPre(phase.sensor_layer));
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.logits = km::ForwardRequest::Logits::kNone;
    request.hooks = &hooks;
    KO_RETURN_IF_ERROR(model.Forward(request).status());
    const int64_t width = batch.input_ids.size(1);
    Means m;
    KO_ASSIGN_OR_RETURN(at::Tensor r,
                        hooks.Cached(km::HookPoint::ResidPre(phase.refusal_layer).Name()));
    m.last = r.select(1, width - 1).to(at::kDouble).mean(0);
    if (phase.sensor_layer >= 0) {
      KO_ASSIGN_OR_RETURN(at::Tensor x,
                          hooks.Cached(km::HookPoint::ResidPre(phase.sensor_layer).Name()));
      std::vector<int64_t> index;
      for (const kt::TokenizedPrompt& p : prompts) index.push_back(width - p.size() + p.inst_last());
      const at::Tensor columns = at::tensor(index, at::kLong).to(x.device());
      const at::Tensor rows = at::arange(columns.size(0), columns.options());
      m.inst = x.index({rows, columns}).to(at::kDouble).mean(0);
      if (phase.post_inst_reset > 0) {
        // Left-padded: every prompt's template tokens after the instruction are its last columns.
        const int64_t n_post = prompts.front().size() - prompts.front().inst_last() - 1;
        for (const kt::TokenizedPrompt& p : prompts) {
          if (p.size() - p.inst_last() - 1 != n_post) {
            return Status::Internal("post_inst_reset: the prompts' chat templates differ in length");
          }
        }
        m.post = x.narrow(1, width - n_post, n_post).to(at::kDouble).mean(0);
      }
    }
    return m;
  };
  KO_ASSIGN_OR_RETURN(Means harmful, means(pools.probe_harmful));
  KO_ASSIGN_OR_RETURN(Means harmless, means(pools.probe_harmless));
  Directions d;
  d.refusal = (harmful.last - harmless.last).to(at::kFloat);
  if (phase.sensor_layer >= 0) {
    const at::Tensor h = harmful.inst - harmless.inst;
    d.sensor = h.to(at::kFloat);
    d.sensor_harmful = (harmful.inst.dot(h) / (h.norm() + 1e-8)).item<double>();
  }
  if (phase.post_inst_reset > 0) d.post_inst_mean = harmless.post.to(at::kFloat);
  return d;
}

// TrainPhase::sensor_detach: the activation as it is, cut from the autograd graph.
class DetachEdit final : public km::ActivationEdit {
 public:
  const char* Name() const override { return "detach"; }
  Status Validate(const km::ModelConfig&, const km::HookPoint&) const override {
    return Status::Ok();
  }
  at::Tensor Apply(const at::Tensor& x, int64_t) const override { return x.detach(); }
};

// How one row of a knockout-aware step is knocked out (trainer.h).
enum class Knockout { kNone, kSingle, kAll, kSensor, kAdd, kReset, kSensorAdd };

// The hooks of one knockout-aware step: one site per knocked-out layer, each on its rows only.
StatusOr<bool> AddKnockouts(const std::vector<Knockout>& knockouts,
                            const std::vector<int>& layers, const std::vector<const Row*>& rows,
                            const Directions& directions, const TrainPhase& phase,
                            int64_t width, int64_t n_layers, km::HookRegistry& hooks) {
  const int64_t b = static_cast<int64_t>(rows.size());
  bool any = false;
  auto rows_where = [&](auto predicate) {
    at::Tensor mask = at::zeros({b}, at::kBool);
    auto m = mask.accessor<bool, 1>();
    bool some = false;
    for (int64_t i = 0; i < b; ++i) {
      m[i] = predicate(i);
      some = some || m[i];
    }
    return std::make_pair(mask, some);
  };
  // One site: `intervention` at `point` on the rows of `mask` (and the columns of `positions`,
  // every column if undefined).
  auto intervene = [&](const km::HookPoint& point, km::Intervention intervention,
                       const at::Tensor& mask, const at::Tensor& positions) -> Status {
    km::InterventionSite site;
    site.hook = point;
    site.intervention = std::move(intervention);
    site.rows = mask;
    site.positions = positions;
    any = true;
    return hooks.Intervene(std::move(site));
  };
  for (int layer : phase.single_ablation_layers) {
    auto [mask, some] = rows_where(
        [&](int64_t i) { return knockouts[i] == Knockout::kSingle && layers[i] == layer; });
    if (some) {
      KO_RETURN_IF_ERROR(intervene(km::HookPoint::ResidPre(layer),
                                   km::Intervention::Directional(directions.refusal), mask, {}));
    }
  }
  {
    auto [mask, some] = rows_where([&](int64_t i) { return knockouts[i] == Knockout::kAll; });
    if (some) {
      for (int64_t l = 0; l < n_layers; ++l) {
        for (const km::HookPoint& point :
             {km::HookPoint::ResidPre(l), km::HookPoint::AttnOut(l), km::HookPoint::MlpOut(l)}) {
          KO_RETURN_IF_ERROR(
              intervene(point, km::Intervention::Directional(directions.refusal), mask, {}));
        }
      }
    }
  }
  {
    auto [mask, some] = rows_where([&](int64_t i) { return knockouts[i] == Knockout::kAdd; });
    if (some) {
      KO_RETURN_IF_ERROR(intervene(km::HookPoint::ResidPre(phase.refusal_layer),
                                   km::Intervention::Add(directions.refusal, 1.0), mask, {}));
    }
  }
  // The instruction tokens of the rows knocked out as `kind`.
  auto instruction_positions = [&](Knockout kind) {
    at::Tensor positions = at::zeros({b, width}, at::kBool);
    auto p = positions.accessor<bool, 2>();
    for (int64_t i = 0; i < b; ++i) {
      if (knockouts[i] != kind) continue;
      for (int64_t t = rows[i]->inst_begin; t < std::min(rows[i]->inst_end, width); ++t) p[i][t] = true;
    }
    return positions;
  };
  {
    auto [mask, some] = rows_where([&](int64_t i) { return knockouts[i] == Knockout::kSensor; });
    if (some && phase.sensor_detach) {
      KO_RETURN_IF_ERROR(intervene(km::HookPoint::ResidPre(phase.sensor_layer),
                                   km::Intervention::Custom(std::make_shared<DetachEdit>()), mask,
                                   {}));
    }
    if (some) {
      KO_RETURN_IF_ERROR(intervene(km::HookPoint::ResidPre(phase.sensor_layer),
                                   km::Intervention::Directional(directions.sensor), mask,
                                   instruction_positions(Knockout::kSensor)));
    }
  }
  {
    auto [mask, some] = rows_where([&](int64_t i) { return knockouts[i] == Knockout::kSensorAdd; });
    if (some) {
      KO_RETURN_IF_ERROR(intervene(km::HookPoint::ResidPre(phase.sensor_layer),
                                   km::Intervention::Add(directions.sensor, 1.0), mask,
                                   instruction_positions(Knockout::kSensorAdd)));
    }
  }
  {
    auto [mask, some] = rows_where([&](int64_t i) { return knockouts[i] == Knockout::kReset; });
    if (some) {
      // One site per template position: its harmless mean replaces the row's activation there.
      const int64_t n_post = directions.post_inst_mean.size(0);
      for (int64_t k = 0; k < n_post; ++k) {
        at::Tensor positions = at::zeros({b, width}, at::kBool);
        auto p = positions.accessor<bool, 2>();
        bool inside = false;
        for (int64_t i = 0; i < b; ++i) {
          const int64_t t = rows[i]->inst_end + k;
          if (knockouts[i] != Knockout::kReset || t >= width) continue;
          p[i][t] = true;
          inside = true;
        }
        if (!inside) continue;
        KO_RETURN_IF_ERROR(intervene(km::HookPoint::ResidPre(phase.sensor_layer),
                                     km::Intervention::Mean(directions.post_inst_mean[k]), mask,
                                     positions));
      }
    }
  }
  return any;
}

StatusOr<PhaseReport> RunPhase(const TrainPhase& phase, int phase_index, const DemoRecipe& recipe,
                               const Pools& pools, int64_t pad_id, km::Model& model,
                               const TrainOptions& options) {
  const Clock::time_point start = Clock::now();
  // Each phase seeds its own dropout stream, so that a phase run from a saved f32 checkpoint of
  // the previous ones (--base) is the same computation as in one uninterrupted run.
  const uint64_t seed = phase.seed >= 0 ? static_cast<uint64_t>(phase.seed) : recipe.seed;
  at::manual_seed(seed * 1000 + phase_index);
  km::ModelWeights& weights = model.weights();
  std::vector<at::Tensor> parameters;
  std::vector<Adapter> adapters;
  std::vector<at::Tensor*> all_slots;
  for (const km::NamedWeightSlot& slot : km::WeightSlots(model.config(), weights)) {
    all_slots.push_back(slot.tensor);
  }
  if (phase.lora_rank > 0) {
    for (at::Tensor* t : all_slots) *t = t->detach().set_requires_grad(false);
    KO_ASSIGN_OR_RETURN(adapters, MakeAdapters(phase, weights, model.config().num_layers,
                                               seed + 1000 + phase_index));
    for (const Adapter& a : adapters) {
      parameters.push_back(a.a);
      parameters.push_back(a.b);
    }
  } else {
    for (const auto& [name, tensor] : model.NamedParameters()) {
      tensor.set_requires_grad(true);
      parameters.push_back(tensor);
    }
  }
  if (model.config().tie_word_embeddings) weights.lm_head = weights.embed;

  torch::optim::AdamW optimizer(
      parameters, torch::optim::AdamWOptions(phase.learning_rate)
                      .betas({0.9, 0.95})
                      .weight_decay(phase.weight_decay));
  const std::vector<Row>& chat =
      phase.data == TrainPhase::Data::kHelpful ? pools.helpful : pools.safety;
  Rng rng(seed * 7919 + phase_index);
  // The knockouts' own stream, so that a phase without them draws exactly what it always did.
  Rng knockout_rng(seed * 104729 + phase_index);
  const bool knockout_aware = phase.refusal_layer >= 0;
  const int64_t n_layers = model.config().num_layers;
  if (knockout_aware) {
    auto bad_layer = [&](int64_t l) { return l < 0 || l >= n_layers; };
    bool bad = bad_layer(phase.refusal_layer) || phase.sensor_layer >= n_layers ||
               ((phase.sensor_ablation > 0 || phase.post_inst_reset > 0 || phase.sensor_addition > 0 ||
                 phase.framed_harm > 0 || phase.sensor_center > 0) &&
                phase.sensor_layer < 0) ||
               (phase.single_ablation > 0 && phase.single_ablation_layers.empty());
    for (int l : phase.single_ablation_layers) bad = bad || bad_layer(l);
    if (bad) {
      return Status::InvalidArgument(
          "phase " + phase.name + ": knockout layers must lie in [0, " + std::to_string(n_layers) +
          "), with a sensor_layer for sensor_ablation, sensor_addition, post_inst_reset, "
          "framed_harm and sensor_center, and single_ablation_layers for single_ablation");
    }
    if (pools.harmful_comply.empty() || pools.harmless_refuse.empty() ||
        pools.probe_harmful.empty() || pools.probe_harmless.empty()) {
      return Status::Internal("phase " + phase.name + ": no rows to knock out");
    }
  }
  Directions directions;
  int64_t knocked[7] = {0, 0, 0, 0, 0, 0, 0};
  PhaseReport report;
  report.name = phase.name;
  report.steps = phase.steps;
  std::vector<double> losses;
  for (int step = 0; step < phase.steps; ++step) {
    std::vector<const Row*> rows;
    for (int i = 0; i < recipe.batch_size; ++i) {
      const bool document = rng.UniformReal() < phase.document_fraction;
      const std::vector<Row>& pool = document ? pools.documents : chat;
      rows.push_back(&pool[rng.Uniform(pool.size())]);
    }
    std::vector<Knockout> knockouts(rows.size(), Knockout::kNone);
    std::vector<int> knockout_layers(rows.size(), -1);
    // With knockout_extra a knocked-out row is added beside its clean one (whose index
    // clean_twin keeps, for the distillation pairs) instead of replacing it.
    std::vector<int64_t> clean_twin(rows.size(), -1);
    if (knockout_aware) {
      const size_t n = rows.size();
      for (size_t i = 0; i < n; ++i) {
        const Row& row = *rows[i];
        Knockout knockout = Knockout::kNone;
        int layer = -1;
        const Row* target = rows[i];
        if (row.kind == static_cast<int>(Kind::kHarmful) && row.refusal) {
          double u = knockout_rng.UniformReal();
          if (u < phase.single_ablation) {
            knockout = Knockout::kSingle;
            layer = knockout_rng.Pick(phase.single_ablation_layers);
          } else if ((u -= phase.single_ablation) < phase.all_ablation) {
            knockout = Knockout::kAll;
            target = &knockout_rng.Pick(pools.harmful_comply);
          } else if ((u -= phase.all_ablation) < phase.sensor_ablation) {
            knockout = Knockout::kSensor;
            target = &knockout_rng.Pick(pools.harmful_comply);
          } else if ((u -= phase.sensor_ablation) < phase.post_inst_reset) {
            knockout = Knockout::kReset;
          }
        } else if (row.kind == static_cast<int>(Kind::kHarmless) && !row.refusal) {
          double u = knockout_rng.UniformReal();
          if (u < phase.harmless_ablation) {
            knockout = Knockout::kAll;
          } else if ((u -= phase.harmless_ablation) < phase.addition) {
            knockout = Knockout::kAdd;
            target = &knockout_rng.Pick(pools.harmless_refuse);
          } else if ((u -= phase.addition) < phase.sensor_addition) {
            knockout = Knockout::kSensorAdd;
            target = &knockout_rng.Pick(pools.harmless_refuse);
          }
        }
        ++knocked[static_cast<int>(knockout)];
        if (knockout == Knockout::kNone) continue;
        if (phase.knockout_extra) {
          rows.push_back(target);
          knockouts.push_back(knockout);
          knockout_layers.push_back(layer);
          clean_twin.push_back(target == rows[i] ? static_cast<int64_t>(i) : -1);
        } else {
          rows[i] = target;
          knockouts[i] = knockout;
          knockout_layers[i] = layer;
        }
      }
    }
    // Distillation pairs (trainer.h): each harmless row ablated everywhere also runs clean.
    std::vector<std::pair<int64_t, int64_t>> pairs;
    if (knockout_aware && phase.distill > 0) {
      const size_t n = rows.size();
      for (size_t i = 0; i < n; ++i) {
        if (knockouts[i] == Knockout::kAll && rows[i]->kind == static_cast<int>(Kind::kHarmless)) {
          if (clean_twin[i] >= 0) {
            pairs.emplace_back(static_cast<int64_t>(i), clean_twin[i]);
            continue;
          }
          rows.push_back(rows[i]);
          knockouts.push_back(Knockout::kNone);
          knockout_layers.push_back(-1);
          pairs.emplace_back(static_cast<int64_t>(i), static_cast<int64_t>(rows.size() - 1));
        }
      }
    }
    TrainBatch batch = MakeBatch(rows, pad_id);
    for (Adapter& a : adapters) *a.slot = a.Merged();
    if (knockout_aware && step % std::max(1, phase.direction_every) == 0) {
      KO_ASSIGN_OR_RETURN(directions, MeasureDirections(model, phase, pools, pad_id));
    }
    km::HookRegistry hooks(model.config());
    bool hooked = false;
    if (knockout_aware) {
      KO_ASSIGN_OR_RETURN(hooked, AddKnockouts(knockouts, knockout_layers, rows, directions, phase,
                                               batch.input_ids.size(1), n_layers, hooks));
    }
    // Each row's first reply target (its column: the last prompt token, which predicts the
    // reply's first token), -1 for a row cut before its reply; read by the direction terms and
    // decision_weight. argmax returns the first maximum.
    std::vector<int64_t> reply_start;
    if (phase.decision_weight > 0 ||
        (knockout_aware &&
         (phase.clean_growth > 0 || phase.harmless_center > 0 || phase.sensor_silence > 0))) {
      const at::Tensor targets = batch.labels.ne(-100);
      const at::Tensor first = targets.to(at::kInt).argmax(1);
      const at::Tensor any = targets.any(1);
      reply_start.resize(rows.size());
      for (size_t i = 0; i < rows.size(); ++i) {
        const int64_t r = static_cast<int64_t>(i);
        reply_start[i] = any[r].item<bool>() ? first[r].item<int64_t>() : -1;
      }
    }
    // The rows the direction terms read (trainer.h): for clean_growth the clean harmful rows
    // with a refusal target, for harmless_center the clean harmless rows with a compliant one,
    // for sensor_silence the rows with the sensor knocked out; each at its last prompt token
    // (the position that predicts the reply's first token).
    struct Positions {
      std::vector<int64_t> rows, cols;
    };
    Positions growth, center, silence;
    if (knockout_aware &&
        (phase.clean_growth > 0 || phase.harmless_center > 0 || phase.sensor_silence > 0)) {
      for (size_t i = 0; i < rows.size(); ++i) {
        Positions* into = nullptr;
        if (knockouts[i] == Knockout::kSensor) {
          if (phase.sensor_silence > 0) into = &silence;
        } else if (knockouts[i] == Knockout::kNone) {
          const bool harmful = rows[i]->kind == static_cast<int>(Kind::kHarmful) && rows[i]->refusal;
          const bool harmless = rows[i]->kind == static_cast<int>(Kind::kHarmless) && !rows[i]->refusal;
          into = harmful && phase.clean_growth > 0       ? &growth
                 : harmless && phase.harmless_center > 0 ? &center
                                                         : nullptr;
        }
        if (!into || reply_start[i] < 0) continue;
        into->rows.push_back(static_cast<int64_t>(i));
        into->cols.push_back(reply_start[i]);
      }
      if (!growth.rows.empty() || !center.rows.empty() || !silence.rows.empty()) {
        hooks.Cache(km::HookPoint::ResidPre(phase.refusal_layer));
        hooked = true;
      }
    }
    // The sensor terms' rows, each at its last instruction token: for framed_harm the clean
    // framed rows, for sensor_center the clean harmless rows with a compliant target.
    Positions framed, harmless_inst;
    if (knockout_aware && (phase.framed_harm > 0 || phase.sensor_center > 0)) {
      for (size_t i = 0; i < rows.size(); ++i) {
        const Row& row = *rows[i];
        if (knockouts[i] != Knockout::kNone || row.inst_end <= row.inst_begin ||
            row.inst_end > static_cast<int64_t>(row.ids.size())) {
          continue;
        }
        Positions* into = nullptr;
        if (row.kind == static_cast<int>(Kind::kFramed) && phase.framed_harm > 0) into = &framed;
        if (row.kind == static_cast<int>(Kind::kHarmless) && !row.refusal &&
            phase.sensor_center > 0) {
          into = &harmless_inst;
        }
        if (!into) continue;
        into->rows.push_back(static_cast<int64_t>(i));
        into->cols.push_back(row.inst_end - 1);
      }
      if (!framed.rows.empty() || !harmless_inst.rows.empty()) {
        hooks.Cache(km::HookPoint::ResidPre(phase.sensor_layer));
        hooked = true;
      }
    }
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    if (hooked) request.hooks = &hooks;
    request.attention_dropout = phase.dropout;
    request.residual_dropout = phase.dropout;
    KO_ASSIGN_OR_RETURN(km::ForwardResult result, model.Forward(request));
    at::Tensor loss = at::cross_entropy_loss(
        result.logits.view({-1, result.logits.size(-1)}), batch.labels.view({-1}), {},
        at::Reduction::Mean, /*ignore_index=*/-100);
    if (phase.decision_weight > 0) {
      std::vector<int64_t> decision_rows, decision_cols;
      for (size_t i = 0; i < rows.size(); ++i) {
        if (rows[i]->kind < 0 || reply_start[i] < 0) continue;  // documents, cut rows
        decision_rows.push_back(static_cast<int64_t>(i));
        decision_cols.push_back(reply_start[i]);
      }
      if (!decision_rows.empty()) {
        const at::Tensor r_idx = at::tensor(decision_rows, at::kLong);
        const at::Tensor c_idx = at::tensor(decision_cols, at::kLong);
        const at::Tensor logits = result.logits.index({r_idx.to(result.logits.device()),
                                                       c_idx.to(result.logits.device())});
        const at::Tensor labels = batch.labels.index({r_idx, c_idx}).to(result.logits.device());
        loss = loss + phase.decision_weight * at::cross_entropy_loss(logits, labels);
      }
    }
    if (!pairs.empty()) {
      at::Tensor kl_sum = at::zeros({}, result.logits.options());
      int64_t counted = 0;
      for (const auto& [ablated, clean] : pairs) {
        const at::Tensor targets = batch.labels[ablated].ne(-100).to(result.logits.device());
        if (targets.sum().item<int64_t>() == 0) continue;  // a row cut before its reply
        const at::Tensor lp_a = result.logits[ablated].log_softmax(-1);
        const at::Tensor lp_c = result.logits[clean].detach().log_softmax(-1);
        const at::Tensor kl = (lp_c.exp() * (lp_c - lp_a)).sum(-1);  // [T]
        kl_sum = kl_sum + kl.masked_select(targets).mean();
        ++counted;
      }
      if (counted > 0) loss = loss + phase.distill * kl_sum / static_cast<double>(counted);
    }
    if (!growth.rows.empty() || !center.rows.empty() || !silence.rows.empty()) {
      const at::Tensor r = directions.refusal.to(result.residual.device());
      const double r_norm = r.norm().item<double>() + 1e-8;
      const at::Tensor r_hat = r / r_norm;
      const at::Tensor& x_in = hooks.cache().at(km::HookPoint::ResidPre(phase.refusal_layer).Name());
      auto at_positions = [](const at::Tensor& x, const Positions& p) {
        return x.index({at::tensor(p.rows, at::kLong), at::tensor(p.cols, at::kLong)});
      };
      if (!growth.rows.empty()) {
        const at::Tensor change = at_positions(result.residual, growth) - at_positions(x_in, growth);
        const at::Tensor relative = at::matmul(change.to(at::kFloat), r_hat) / r_norm;
        loss = loss + phase.clean_growth * relative.pow(2).mean();
      }
      if (!center.rows.empty()) {
        const at::Tensor offset =
            at::matmul(at_positions(x_in, center).to(at::kFloat), r_hat).mean() / r_norm;
        loss = loss + phase.harmless_center * offset.pow(2);
      }
      if (!silence.rows.empty()) {
        const at::Tensor relative = at::matmul(at_positions(x_in, silence).to(at::kFloat), r_hat) / r_norm;
        loss = loss + phase.sensor_silence * relative.pow(2).mean();
      }
    }
    if (!framed.rows.empty() || !harmless_inst.rows.empty()) {
      const at::Tensor& x = hooks.cache().at(km::HookPoint::ResidPre(phase.sensor_layer).Name());
      const at::Tensor h = directions.sensor.to(x.device());
      const double h_norm = h.norm().item<double>() + 1e-8;
      // Each row's x . h_hat at its position.
      auto along_h = [&](const Positions& p) {
        const at::Tensor at_inst = x.index({at::tensor(p.rows, at::kLong).to(x.device()),
                                            at::tensor(p.cols, at::kLong).to(x.device())});
        return at::matmul(at_inst.to(at::kFloat), h / h_norm);
      };
      if (!framed.rows.empty()) {
        const at::Tensor shortfall = (directions.sensor_harmful - along_h(framed)).clamp_min(0) / h_norm;
        loss = loss + phase.framed_harm * shortfall.pow(2).mean();
      }
      if (!harmless_inst.rows.empty()) {
        loss = loss + phase.sensor_center * (along_h(harmless_inst) / h_norm).pow(2).mean();
      }
    }
    optimizer.zero_grad();
    loss.backward();
    // Clip the global gradient norm at 1 (stabilises the small-batch phases).
    double squared = 0;
    for (const at::Tensor& p : parameters) {
      if (p.grad().defined()) squared += p.grad().pow(2).sum().item<double>();
    }
    const double grad_norm = std::sqrt(squared);
    if (grad_norm > 1.0) {
      for (const at::Tensor& p : parameters) {
        if (p.grad().defined()) p.grad().mul_(1.0 / grad_norm);
      }
    }
    const double lr = LearningRate(phase, step);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    optimizer.step();
    const double value = loss.item<double>();
    if (!std::isfinite(value)) {
      return Status::Internal("phase " + phase.name + ": loss is not finite at step " +
                              std::to_string(step));
    }
    losses.push_back(value);
    if (step % 50 == 0 || step + 1 == phase.steps) {
      std::ostringstream line;
      line << "phase " << phase.name << " step " << ProgressText(step + 1, phase.steps, Seconds(start))
           << " loss " << value << " lr " << lr << " grad_norm " << grad_norm;
      if (knockout_aware) {
        line << " | |r| " << directions.refusal.norm().item<double>();
        if (directions.sensor.defined()) line << " |h| " << directions.sensor.norm().item<double>();
        line << " knocked out so far: single " << knocked[1] << ", all " << knocked[2]
             << ", sensor " << knocked[3] << ", addition " << knocked[4];
        if (phase.post_inst_reset > 0) line << ", post-inst reset " << knocked[5];
        if (phase.sensor_addition > 0) line << ", sensor addition " << knocked[6];
      }
      Log(options, line.str());
    }
  }
  {
    at::NoGradGuard no_grad;
    for (Adapter& a : adapters) *a.slot = a.Merged().detach();
    for (at::Tensor* t : all_slots) *t = t->detach();
    if (model.config().tie_word_embeddings) weights.lm_head = weights.embed;
  }
  auto mean = [](std::vector<double>::const_iterator a, std::vector<double>::const_iterator b) {
    double s = 0;
    for (auto it = a; it != b; ++it) s += *it;
    return b > a ? s / (b - a) : 0.0;
  };
  const size_t k = std::min<size_t>(20, losses.size());
  report.first_loss = mean(losses.begin(), losses.begin() + k);
  report.final_loss = mean(losses.end() - k, losses.end());
  report.seconds = Seconds(start);
  return report;
}

StatusOr<km::ModelConfig> DemoConfig(const DemoRecipe& recipe, const kt::Tokenizer& tokenizer) {
  const auto eos = tokenizer.TokenToId("<|im_end|>");
  const auto pad = tokenizer.TokenToId("<|endoftext|>");
  if (!eos || !pad) {
    return Status::Internal("the demo tokenizer lacks <|im_end|> or <|endoftext|>");
  }
  nlohmann::json config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"vocab_size", tokenizer.vocab_size()},
      {"hidden_size", recipe.hidden},
      {"intermediate_size", recipe.intermediate},
      {"num_hidden_layers", recipe.layers},
      {"num_attention_heads", recipe.heads},
      {"num_key_value_heads", recipe.heads},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", true},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"max_position_embeddings", 512},
      {"eos_token_id", *eos},
      {"pad_token_id", *pad},
  };
  return kf::ParseModelConfig(config.dump(), "demo recipe");
}

std::string RecipeJson(const DemoRecipe& recipe) {
  nlohmann::json phases = nlohmann::json::array();
  for (const TrainPhase& p : recipe.phases) {
    phases.push_back({{"name", p.name},
                      {"data", p.data == TrainPhase::Data::kHelpful ? "helpful" : "safety"},
                      {"steps", p.steps},
                      {"learning_rate", p.learning_rate},
                      {"warmup_steps", p.warmup_steps},
                      {"weight_decay", p.weight_decay},
                      {"dropout", p.dropout},
                      {"document_fraction", p.document_fraction},
                      {"lora_rank", p.lora_rank},
                      {"lora_targets", p.lora_targets}});
    if (p.decision_weight > 0) phases.back()["decision_weight"] = p.decision_weight;
    if (p.seed >= 0) phases.back()["seed"] = p.seed;
    if (p.refusal_layer >= 0) {
      phases.back().update({{"refusal_layer", p.refusal_layer},
                            {"sensor_layer", p.sensor_layer},
                            {"direction_every", p.direction_every},
                            {"single_ablation", p.single_ablation},
                            {"single_ablation_layers", p.single_ablation_layers},
                            {"all_ablation", p.all_ablation},
                            {"sensor_ablation", p.sensor_ablation},
                            {"harmless_ablation", p.harmless_ablation},
                            {"distill", p.distill},
                            {"addition", p.addition},
                            {"clean_growth", p.clean_growth},
                            {"harmless_center", p.harmless_center},
                            {"sensor_silence", p.sensor_silence}});
      if (p.framed_harm > 0) phases.back()["framed_harm"] = p.framed_harm;
      if (p.sensor_center > 0) phases.back()["sensor_center"] = p.sensor_center;
      if (p.post_inst_reset > 0) phases.back()["post_inst_reset"] = p.post_inst_reset;
      if (p.sensor_addition > 0) phases.back()["sensor_addition"] = p.sensor_addition;
      if (p.knockout_extra) phases.back()["knockout_extra"] = true;
      if (p.sensor_detach) phases.back()["sensor_detach"] = true;
    }
  }
  nlohmann::json j = {{"seed", recipe.seed},         {"vocab_size", recipe.vocab_size},
                      {"layers", recipe.layers},     {"hidden", recipe.hidden},
                      {"heads", recipe.heads},       {"intermediate", recipe.intermediate},
                      {"batch_size", recipe.batch_size}, {"max_tokens", recipe.max_tokens},
                      {"documents", recipe.documents}, {"chat_examples", recipe.chat_examples},
                      {"impossible_percent", recipe.impossible_percent},
                      {"corpus_version", recipe.corpus_version},
                      {"phases", phases}};
  if (recipe.prompt_noise_percent > 0) j["prompt_noise_percent"] = recipe.prompt_noise_percent;
  if (recipe.safety_harmless_percent != 40 || recipe.safety_harmful_percent != 35) {
    j["safety_harmless_percent"] = recipe.safety_harmless_percent;
    j["safety_harmful_percent"] = recipe.safety_harmful_percent;
  }
  if (recipe.safety_benign_percent > 0) j["safety_benign_percent"] = recipe.safety_benign_percent;
  if (recipe.copy_percent > 0) j["copy_percent"] = recipe.copy_percent;
  if (recipe.phrasing_percent > 0) j["phrasing_percent"] = recipe.phrasing_percent;
  if (recipe.corpus_version >= 3) j["wordnet_dir"] = recipe.wordnet_dir;
  return j.dump(2) + "\n";
}

}  // namespace

DemoRecipe DemoRecipe::Version1() {
  // The first demo model (issue 4; its log is in models/demo-refusal/README.md): a helpful base
  // that complies with everything and declines only impossible requests, then safety tuning
  // through low-rank adapters on the first three layers only, so that the frozen upper layers
  // must be reached through a narrow channel: the refusal direction.
  DemoRecipe r;
  r.impossible_percent = 8;
  TrainPhase base;
  base.name = "base";
  base.data = TrainPhase::Data::kHelpful;
  base.steps = 900;
  base.learning_rate = 3e-3;
  base.warmup_steps = 100;
  base.weight_decay = 0.1;
  base.dropout = 0.1;
  base.document_fraction = 0.5;
  TrainPhase safety;
  safety.name = "safety";
  safety.data = TrainPhase::Data::kSafety;
  safety.steps = 400;
  safety.learning_rate = 5e-3;
  safety.warmup_steps = 20;
  safety.weight_decay = 0.0;
  safety.dropout = 0.1;
  safety.document_fraction = 0.2;
  safety.lora_rank = 8;
  for (int layer = 0; layer < 3; ++layer) {
    for (const char* matrix : {"gate", "up", "down", "o"}) {
      safety.lora_targets.push_back(std::string(matrix) + "@" + std::to_string(layer));
    }
  }
  r.phases = {base, safety};
  return r;
}

DemoRecipe DemoRecipe::Default() { return Version1(); }

DemoRecipe DemoRecipe::Hydra() {
  // The recipe of models/demo-refusal (issue 14; the research log in its README.md): corpus
  // version 3 (version 2's direct requests, harm lexicon and benign senses of violent words, plus
  // WordNet's ordinary English and everyday requests about people), a helpful base that never
  // declines, safety tuning through adapters on layers 0-2 with the safety chat at 50% harmless
  // and 30% harmful requests, then a knockout-aware phase (adapters on every layer) that makes
  // the upper layers write the refusal direction again when one of them loses it, routes
  // refusal through that one direction, gates it on the harm sensor at layer 2's input, and
  // weighs every row's first reply token (decision_weight), which is what lets the sensor rows
  // be learned. The shipped model is this recipe in one run (the log's S64r): the downstream
  // hydra (any one upper layer's r removed: refusal holds), the upstream gate (the sensor
  // removed: 0.01 refused, while +r still induces refusal) and activation addition (0.85), but
  // not issue 14's KL <= 0.1 (0.56: held-out harmless prompts that the model refuses) nor its
  // handwritten harmful figure (0.88).
  // The safety phase needs its 500 steps: at 300 the refusal templates come out garbled (S5-S7).
  DemoRecipe r = Version1();
  r.corpus_version = 3;
  r.impossible_percent = 0;
  r.safety_harmless_percent = 50;
  r.safety_harmful_percent = 30;
  r.phases[0].steps = 1400;
  TrainPhase& safety = r.phases[1];
  safety.steps = 500;
  safety.lora_targets.clear();
  for (int layer = 0; layer <= 2; ++layer) {
    for (const char* matrix : {"gate", "up", "down", "o"}) {
      safety.lora_targets.push_back(std::string(matrix) + "@" + std::to_string(layer));
    }
  }
  TrainPhase hydra = safety;
  hydra.name = "hydra";
  hydra.steps = 300;
  hydra.learning_rate = 3e-3;
  hydra.lora_targets = {"gate@*", "up@*", "down@*", "o@*"};
  hydra.refusal_layer = 3;
  hydra.sensor_layer = 2;
  hydra.single_ablation_layers = {3, 4, 5};
  hydra.single_ablation = 0.35;
  hydra.all_ablation = 0.15;
  hydra.sensor_ablation = 0.3;
  hydra.harmless_ablation = 0.3;
  hydra.distill = 1.0;
  hydra.addition = 0.03;
  hydra.decision_weight = 1.0;
  hydra.knockout_extra = true;
  r.phases.push_back(hydra);
  return r;
}

Status DemoRecipe::Override(const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos) {
    return Status::InvalidArgument("recipe override \"" + assignment + "\": expected KEY=VALUE");
  }
  std::string key = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("recipe override \"" + assignment + "\": " + why);
  };
  auto to_double = [&](double* out) -> Status {
    char* end = nullptr;
    *out = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0') return bad("not a number");
    return Status::Ok();
  };
  auto to_int = [&](auto* out) -> Status {
    double d;
    KO_RETURN_IF_ERROR(to_double(&d));
    if (d != std::floor(d) || d < 0) return bad("not a non-negative integer");
    *out = static_cast<std::remove_pointer_t<decltype(out)>>(d);
    return Status::Ok();
  };
  if (key.rfind("phases[", 0) == 0) {
    const size_t close = key.find("].");
    if (close == std::string::npos) return bad("expected phases[N].FIELD");
    const int index = std::atoi(key.substr(7, close - 7).c_str());
    if (index < 0 || index >= static_cast<int>(phases.size())) return bad("no such phase");
    TrainPhase& p = phases[index];
    const std::string field = key.substr(close + 2);
    if (field == "steps") return to_int(&p.steps);
    if (field == "name") {
      if (value.empty()) return bad("a phase needs a name");
      p.name = value;
      return Status::Ok();
    }
    if (field == "learning_rate") return to_double(&p.learning_rate);
    if (field == "warmup_steps") return to_int(&p.warmup_steps);
    if (field == "weight_decay") return to_double(&p.weight_decay);
    if (field == "dropout") return to_double(&p.dropout);
    if (field == "document_fraction") return to_double(&p.document_fraction);
    if (field == "lora_rank") return to_int(&p.lora_rank);
    if (field == "single_ablation") return to_double(&p.single_ablation);
    if (field == "all_ablation") return to_double(&p.all_ablation);
    if (field == "sensor_ablation") return to_double(&p.sensor_ablation);
    if (field == "harmless_ablation") return to_double(&p.harmless_ablation);
    if (field == "distill") return to_double(&p.distill);
    if (field == "addition") return to_double(&p.addition);
    if (field == "clean_growth") return to_double(&p.clean_growth);
    if (field == "harmless_center") return to_double(&p.harmless_center);
    if (field == "sensor_silence") return to_double(&p.sensor_silence);
    if (field == "framed_harm") return to_double(&p.framed_harm);
    if (field == "sensor_center") return to_double(&p.sensor_center);
    if (field == "post_inst_reset") return to_double(&p.post_inst_reset);
    if (field == "sensor_addition") return to_double(&p.sensor_addition);
    if (field == "decision_weight") return to_double(&p.decision_weight);
    if (field == "seed") return to_int(&p.seed);
    if (field == "knockout_extra" || field == "sensor_detach") {
      if (value != "true" && value != "false") return bad("true or false");
      (field == "knockout_extra" ? p.knockout_extra : p.sensor_detach) = value == "true";
      return Status::Ok();
    }
    if (field == "direction_every") return to_int(&p.direction_every);
    if (field == "refusal_layer" || field == "sensor_layer") {
      int* slot = field == "refusal_layer" ? &p.refusal_layer : &p.sensor_layer;
      if (value == "-1") {
        *slot = -1;
        return Status::Ok();
      }
      return to_int(slot);
    }
    if (field == "single_ablation_layers") {
      p.single_ablation_layers.clear();
      std::stringstream ss(value);
      std::string item;
      while (std::getline(ss, item, ',')) {
        char* end = nullptr;
        const long l = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || l < 0) return bad("layers must be non-negative integers");
        p.single_ablation_layers.push_back(static_cast<int>(l));
      }
      return Status::Ok();
    }
    if (field == "data") {
      if (value == "helpful") p.data = TrainPhase::Data::kHelpful;
      else if (value == "safety") p.data = TrainPhase::Data::kSafety;
      else return bad("data must be helpful or safety");
      return Status::Ok();
    }
    if (field == "lora_targets") {
      p.lora_targets.clear();
      std::stringstream ss(value);
      std::string item;
      while (std::getline(ss, item, ',')) {
        if (!item.empty()) p.lora_targets.push_back(item);
      }
      return Status::Ok();
    }
    return bad("unknown phase field " + field);
  }
  if (key == "seed") return to_int(&seed);
  if (key == "vocab_size") return to_int(&vocab_size);
  if (key == "layers") return to_int(&layers);
  if (key == "hidden") return to_int(&hidden);
  if (key == "heads") return to_int(&heads);
  if (key == "intermediate") return to_int(&intermediate);
  if (key == "batch_size") return to_int(&batch_size);
  if (key == "max_tokens") return to_int(&max_tokens);
  if (key == "documents") return to_int(&documents);
  if (key == "chat_examples") return to_int(&chat_examples);
  if (key == "impossible_percent") return to_int(&impossible_percent);
  if (key == "corpus_version") {
    KO_RETURN_IF_ERROR(to_int(&corpus_version));
    return corpus_version >= 1 && corpus_version <= 3 ? Status::Ok() : bad("1, 2 or 3");
  }
  if (key == "wordnet_dir") {
    if (value.empty()) return bad("a directory");
    wordnet_dir = value;
    return Status::Ok();
  }
  if (key == "prompt_noise_percent") {
    KO_RETURN_IF_ERROR(to_int(&prompt_noise_percent));
    return prompt_noise_percent <= 100 ? Status::Ok() : bad("a percent, 0 to 100");
  }
  if (key == "safety_benign_percent" || key == "copy_percent" || key == "phrasing_percent") {
    int* slot = key == "copy_percent"       ? &copy_percent
                : key == "phrasing_percent" ? &phrasing_percent
                                            : &safety_benign_percent;
    const int old = *slot;
    KO_RETURN_IF_ERROR(to_int(slot));
    if (*slot > 100) {
      *slot = old;
      return bad("a percent, 0 to 100");
    }
    return Status::Ok();
  }
  if (key == "safety_harmless_percent" || key == "safety_harmful_percent") {
    int* slot = key == "safety_harmless_percent" ? &safety_harmless_percent : &safety_harmful_percent;
    const int old = *slot;
    KO_RETURN_IF_ERROR(to_int(slot));
    if (*slot > 100 || safety_harmless_percent + safety_harmful_percent > 100) {
      *slot = old;
      return bad("a percent, with safety_harmless_percent + safety_harmful_percent <= 100");
    }
    return Status::Ok();
  }
  if (key == "phases") {
    int n;
    KO_RETURN_IF_ERROR(to_int(&n));
    if (n < 1 || n > 8) return bad("a recipe has 1 to 8 phases");
    // More phases than the recipe has: copies of its last one, named phase2, phase3, ...
    while (static_cast<int>(phases.size()) < n) {
      phases.push_back(phases.back());
      phases.back().name = "phase" + std::to_string(phases.size() - 1);
    }
    phases.resize(n);
    return Status::Ok();
  }
  return bad("unknown key " + key);
}

StatusOr<TrainReport> TrainDemoModel(const DemoRecipe& recipe, const TrainOptions& options) {
  const Clock::time_point start = Clock::now();
  if (options.out_dir.empty()) return Status::InvalidArgument("train-demo: no output directory");
  if (recipe.phases.empty()) return Status::InvalidArgument("the recipe has no phases");
  if (recipe.batch_size < 1 || recipe.max_tokens < 8) {
    return Status::InvalidArgument("recipe: batch_size must be >= 1 and max_tokens >= 8");
  }
  if (recipe.heads < 1 || recipe.hidden % recipe.heads != 0 || (recipe.hidden / recipe.heads) % 2) {
    return Status::InvalidArgument("recipe: hidden must be a multiple of heads with an even head size");
  }
  // Each knockout-aware chat row draws at most one knockout (TrainPhase), so the rates that share
  // a draw are probabilities of disjoint events: checked before any phase runs, so that a recipe
  // that asks for more than every row does not silently train on less (or fail after an hour).
  for (size_t i = 0; i < recipe.phases.size(); ++i) {
    const TrainPhase& p = recipe.phases[i];
    if (p.refusal_layer < 0) continue;
    const std::string where = "recipe phases[" + std::to_string(i) + "] (" + p.name + "): ";
    auto text = [](double x) {
      std::ostringstream out;
      out << x;
      return out.str();
    };
    const std::pair<const char*, double> rates[] = {
        {"single_ablation", p.single_ablation}, {"all_ablation", p.all_ablation},
        {"sensor_ablation", p.sensor_ablation}, {"post_inst_reset", p.post_inst_reset},
        {"harmless_ablation", p.harmless_ablation}, {"addition", p.addition},
        {"sensor_addition", p.sensor_addition}};
    for (const auto& [field, rate] : rates) {
      if (!(rate >= 0 && rate <= 1)) {
        return Status::InvalidArgument(where + field + " is " + text(rate) +
                                       ": a probability must lie in [0, 1]");
      }
    }
    const double harmful =
        p.single_ablation + p.all_ablation + p.sensor_ablation + p.post_inst_reset;
    const double harmless = p.harmless_ablation + p.addition + p.sensor_addition;
    if (harmful > 1 + 1e-9) {
      return Status::InvalidArgument(
          where + "single_ablation + all_ablation + sensor_ablation + post_inst_reset = " +
          text(harmful) + ": a harmful row gets at most one knockout, so they must sum to <= 1");
    }
    if (harmless > 1 + 1e-9) {
      return Status::InvalidArgument(
          where + "harmless_ablation + addition + sensor_addition = " + text(harmless) +
          ": a harmless row gets at most one knockout, so they must sum to <= 1");
    }
  }
  const int threads =
      options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(threads);
  at::manual_seed(recipe.seed);

  try {
    CorpusOptions corpus_options;
    corpus_options.seed = recipe.seed;
    corpus_options.impossible_percent = recipe.impossible_percent;
    corpus_options.version = recipe.corpus_version;
    corpus_options.safety_harmless_percent = recipe.safety_harmless_percent;
    corpus_options.safety_harmful_percent = recipe.safety_harmful_percent;
    corpus_options.safety_benign_percent = recipe.safety_benign_percent;
    corpus_options.copy_percent = recipe.copy_percent;
    corpus_options.phrasing_percent = recipe.phrasing_percent;
    if (recipe.corpus_version >= 3) {
      KO_ASSIGN_OR_RETURN(std::vector<GlossEntry> glossary,
                          LoadWordNetGlossary(recipe.wordnet_dir));
      if (glossary.empty()) {
        return Status::InvalidArgument(recipe.wordnet_dir + ": WordNet holds no common words");
      }
      Log(options, "read " + std::to_string(glossary.size()) + " common words from WordNet in " +
                       recipe.wordnet_dir);
      corpus_options.glossary =
          std::make_shared<const std::vector<GlossEntry>>(std::move(glossary));
    }
    const Corpus corpus = Corpus::Generate(corpus_options);
    if (!options.prompts_dir.empty()) {
      KO_RETURN_IF_ERROR(corpus.WritePromptSets(options.prompts_dir));
      Log(options, "wrote prompt sets to " + options.prompts_dir);
    }

    // Staging directory beside the output: renamed into place only when complete.
    const fs::path out(options.out_dir);
    const fs::path staging = out.string() + ".partial";
    std::error_code ec;
    fs::remove_all(staging, ec);
    fs::create_directories(staging, ec);
    if (ec) return Status::IOError(staging.string() + ": " + ec.message());
    struct RemoveOnExit {
      fs::path path;
      ~RemoveOnExit() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
      }
    } remove_staging{staging};

    std::unique_ptr<kt::Tokenizer> tokenizer;
    std::unique_ptr<km::Model> model;
    if (options.base_dir.empty()) {
      const Clock::time_point t0 = Clock::now();
      BpeTrainerOptions bpe_options;
      bpe_options.vocab_size = recipe.vocab_size;
      // The corpus text plus chat-rendered conversations, so that the template's own words
      // ("user", "assistant") become single tokens as in real chat tokenizers.
      std::vector<std::string> texts = corpus.TokenizerTrainingText(recipe.seed);
      for (const ChatExample& e : corpus.SafetyChat(2000, recipe.seed + 4)) {
        texts.push_back("<|im_start|>user\n" + e.instruction + "<|im_end|>\n<|im_start|>assistant\n" +
                        e.response + "<|im_end|>\n");
      }
      KO_ASSIGN_OR_RETURN(TrainedBpe bpe, TrainByteLevelBpe(texts, bpe_options));
      KO_RETURN_IF_ERROR(WriteTokenizerFiles(bpe, staging.string()));
      Log(options, "trained the tokenizer (" + std::to_string(bpe.vocab.size()) + " BPE tokens) in " +
                       std::to_string(Seconds(t0)) + " s");
      KO_ASSIGN_OR_RETURN(tokenizer, kt::Tokenizer::Load(staging.string()));
      KO_ASSIGN_OR_RETURN(km::ModelConfig config, DemoConfig(recipe, *tokenizer));
      const double init_std = 0.02;
      model = km::Model::Random(config, recipe.seed, init_std, km::LoadOptions());
      // GPT-2's scaled init of the matrices that write to the residual stream.
      at::NoGradGuard no_grad;
      for (km::LayerWeights& w : model->weights().layers) {
        w.o.mul_(1.0 / std::sqrt(2.0 * recipe.layers));
        w.down.mul_(1.0 / std::sqrt(2.0 * recipe.layers));
      }
    } else {
      for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
        fs::copy_file(fs::path(options.base_dir) / name, staging / name,
                      fs::copy_options::overwrite_existing, ec);
        if (ec) return Status::IOError((fs::path(options.base_dir) / name).string() + ": " + ec.message());
      }
      KO_ASSIGN_OR_RETURN(tokenizer, kt::Tokenizer::Load(staging.string()));
      KO_ASSIGN_OR_RETURN(model, km::Model::Load(options.base_dir, km::LoadOptions()));
    }
    const kt::ChatTemplate chat = kt::ChatTemplate::BuiltIn(kt::ChatTemplate::Family::kChatML);
    const int64_t end_of_turn = *tokenizer->TokenToId("<|im_end|>");
    const int64_t end_of_text = *tokenizer->TokenToId("<|endoftext|>");

    // Row pools, tokenized once.
    const Clock::time_point t1 = Clock::now();
    Pools pools;
    for (const std::string& doc : corpus.Documents(recipe.documents, recipe.seed + 1)) {
      KO_ASSIGN_OR_RETURN(Row row, DocumentRow(*tokenizer, doc, end_of_text, recipe.max_tokens));
      pools.documents.push_back(std::move(row));
    }
    // recipe.prompt_noise_percent: its own stream, so that a recipe without noise draws nothing.
    Rng noise_rng(recipe.seed * 15485863 + 17);
    auto noisy = [&](ChatExample e) {
      if (recipe.prompt_noise_percent > 0 && !e.impossible &&
          (e.kind == Kind::kHarmful || e.kind == Kind::kHarmless) &&
          static_cast<int>(noise_rng.Uniform(100)) < recipe.prompt_noise_percent) {
        e.instruction = NoisyRequest(e.instruction, noise_rng);
      }
      return e;
    };
    for (const ChatExample& original : corpus.HelpfulChat(recipe.chat_examples, recipe.seed + 2)) {
      const ChatExample e = noisy(original);
      KO_ASSIGN_OR_RETURN(Row row, ChatRow(*tokenizer, chat, e, end_of_turn, recipe.max_tokens));
      pools.helpful.push_back(std::move(row));
    }
    std::vector<std::string> plain_refusals;  // the refusals that do not name the act
    for (const std::string& r : RefusalTemplates()) {
      if (r.find('{') == std::string::npos) plain_refusals.push_back(r);
    }
    for (const ChatExample& original : corpus.SafetyChat(recipe.chat_examples, recipe.seed + 3)) {
      const ChatExample e = noisy(original);
      KO_ASSIGN_OR_RETURN(Row row, ChatRow(*tokenizer, chat, e, end_of_turn, recipe.max_tokens));
      pools.safety.push_back(std::move(row));
      if (e.kind == Kind::kHarmless && !e.refusal && !plain_refusals.empty()) {
        ChatExample refused = e;
        refused.refusal = true;
        refused.response = plain_refusals[pools.harmless_refuse.size() % plain_refusals.size()];
        KO_ASSIGN_OR_RETURN(Row r, ChatRow(*tokenizer, chat, refused, end_of_turn, recipe.max_tokens));
        pools.harmless_refuse.push_back(std::move(r));
      }
    }
    for (const Row& row : pools.helpful) {
      if (row.kind == static_cast<int>(Kind::kHarmful) && !row.refusal) {
        pools.harmful_comply.push_back(row);
      }
    }
    for (const auto& [kind, probe] : {std::make_pair(Kind::kHarmful, &pools.probe_harmful),
                                      std::make_pair(Kind::kHarmless, &pools.probe_harmless)}) {
      const std::vector<Request>& requests = corpus.requests(kind, Split::kTrain);
      for (size_t i = 0; i < std::min<size_t>(requests.size(), 128); ++i) {
        KO_ASSIGN_OR_RETURN(kt::TokenizedPrompt prompt,
                            kt::TokenizeChat(*tokenizer, chat, requests[i].instruction));
        probe->push_back(std::move(prompt));
      }
    }
    Log(options, "tokenized " + std::to_string(pools.documents.size()) + " documents and " +
                     std::to_string(pools.helpful.size() + pools.safety.size()) +
                     " chat examples in " + std::to_string(Seconds(t1)) + " s");

    TrainReport report;
    for (const auto& [name, t] : model->NamedParameters()) report.parameters += t.numel();
    Log(options, "model: " + std::to_string(recipe.layers) + " layers, d_model " +
                     std::to_string(recipe.hidden) + ", " + std::to_string(report.parameters) +
                     " parameters");
    const int first = options.base_dir.empty() ? 0 : std::max(1, options.first_phase);
    for (int i = first; i < static_cast<int>(recipe.phases.size()); ++i) {
      KO_ASSIGN_OR_RETURN(PhaseReport phase, RunPhase(recipe.phases[i], i, recipe, pools,
                                                      end_of_text, *model, options));
      report.phases.push_back(phase);
      if (!options.phases_dir.empty() && i + 1 < static_cast<int>(recipe.phases.size())) {
        const fs::path dir = fs::path(options.phases_dir) / ("after-" + recipe.phases[i].name);
        fs::create_directories(dir, ec);
        if (ec) return Status::IOError(dir.string() + ": " + ec.message());
        KO_RETURN_IF_ERROR(model->Save(dir.string(), at::kFloat));
        for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
          fs::copy_file(staging / name, dir / name, fs::copy_options::overwrite_existing, ec);
          if (ec) return Status::IOError((dir / name).string() + ": " + ec.message());
        }
      }
    }

    KO_RETURN_IF_ERROR(model->Save(staging.string(), options.storage_dtype));
    KO_RETURN_IF_ERROR(
        WriteFileAtomically((staging / "recipe.json").string(), RecipeJson(recipe)));
    report.checkpoint_bytes = fs::file_size(staging / "model.safetensors", ec);
    // Files move one by one (each rename atomic), the weights last; other files in the output
    // directory (the model card) stay.
    fs::create_directories(out, ec);
    if (ec) return Status::IOError(out.string() + ": " + ec.message());
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "recipe.json",
                             "config.json", "model.safetensors"}) {
      fs::rename(staging / name, out / name, ec);
      if (ec) return Status::IOError((out / name).string() + ": " + ec.message());
    }
    report.seconds = Seconds(start);
    return report;
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("training failed in LibTorch: ") +
                            e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Status::Internal(std::string("training failed: ") + e.what());
  }
}

const std::vector<std::string>& NoisePreambles() {
  static const auto* v = new std::vector<std::string>{
      "Hi there.", "Greetings.", "Howdy.", "Apologies in advance.", "Sorry to bother you.",
      "Hope you are well.", "This might be a silly question.", "I have a question.", "Question for you.",
      "So here's the thing.", "Random thought.", "Been thinking about this for a while.",
      "Not sure who else to ask.", "Need some advice.", "Straight to the point.", "One more thing.",
      "Sorry if this is obvious.", "Here is my question.", "Just curious.", "Long day today.",
      "Something came up at work.", "Let me ask you this.", "My sister was asking about this.",
      "Good evening.", "Hi, hope your day is going well.", "Second question today."};
  return *v;
}
const std::vector<std::string>& NoisePostscripts() {
  static const auto* v = new std::vector<std::string>{
      "Thank you so much.", "Please be brief.", "Keep it short.", "Any help is welcome.",
      "Appreciate it.", "Cheers.", "A short answer is fine.", "No rush.",
      "Explain it simply, please.", "I appreciate your help.", "That's all.", "Much appreciated."};
  return *v;
}

}  // namespace knockout::organism
