#include "organism/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <sstream>
#include <thread>

#include "common/atomic_file.h"
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
};

struct Pools {
  std::vector<Row> documents;
  std::vector<Row> helpful;
  std::vector<Row> safety;
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

StatusOr<PhaseReport> RunPhase(const TrainPhase& phase, int phase_index, const DemoRecipe& recipe,
                               const Pools& pools, int64_t pad_id, km::Model& model,
                               const TrainOptions& options) {
  const Clock::time_point start = Clock::now();
  // Each phase seeds its own dropout stream, so that a phase run from a saved f32 checkpoint of
  // the previous ones (--base) is the same computation as in one uninterrupted run.
  at::manual_seed(recipe.seed * 1000 + phase_index);
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
                                               recipe.seed + 1000 + phase_index));
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
  Rng rng(recipe.seed * 7919 + phase_index);
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
    TrainBatch batch = MakeBatch(rows, pad_id);
    for (Adapter& a : adapters) *a.slot = a.Merged();
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.attention_dropout = phase.dropout;
    request.residual_dropout = phase.dropout;
    KO_ASSIGN_OR_RETURN(km::ForwardResult result, model.Forward(request));
    at::Tensor loss = at::cross_entropy_loss(
        result.logits.view({-1, result.logits.size(-1)}), batch.labels.view({-1}), {},
        at::Reduction::Mean, /*ignore_index=*/-100);
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
      line << "phase " << phase.name << " step " << step + 1 << "/" << phase.steps << " loss "
           << value << " lr " << lr << " grad_norm " << grad_norm << " (" << Seconds(start)
           << " s)";
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
  }
  nlohmann::json j = {{"seed", recipe.seed},         {"vocab_size", recipe.vocab_size},
                      {"layers", recipe.layers},     {"hidden", recipe.hidden},
                      {"heads", recipe.heads},       {"intermediate", recipe.intermediate},
                      {"batch_size", recipe.batch_size}, {"max_tokens", recipe.max_tokens},
                      {"documents", recipe.documents}, {"chat_examples", recipe.chat_examples},
                      {"impossible_percent", recipe.impossible_percent},
                      {"corpus_version", recipe.corpus_version},
                      {"phases", phases}};
  return j.dump(2) + "\n";
}

}  // namespace

DemoRecipe DemoRecipe::Default() {
  // The model card (models/demo-refusal/README.md) records why: a helpful base that complies
  // with everything and declines only impossible requests, then safety tuning through low-rank
  // adapters on the first three layers only, so that the frozen upper layers must be reached
  // through a narrow channel: the refusal direction.
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
    if (field == "learning_rate") return to_double(&p.learning_rate);
    if (field == "warmup_steps") return to_int(&p.warmup_steps);
    if (field == "weight_decay") return to_double(&p.weight_decay);
    if (field == "dropout") return to_double(&p.dropout);
    if (field == "document_fraction") return to_double(&p.document_fraction);
    if (field == "lora_rank") return to_int(&p.lora_rank);
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
  if (key == "corpus_version") return to_int(&corpus_version);
  if (key == "phases") {
    int n;
    KO_RETURN_IF_ERROR(to_int(&n));
    if (n < 1 || n > static_cast<int>(phases.size())) return bad("can only drop phases");
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
  const int threads =
      options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(threads);
  at::manual_seed(recipe.seed);

  try {
    CorpusOptions corpus_options;
    corpus_options.seed = recipe.seed;
    corpus_options.impossible_percent = recipe.impossible_percent;
    corpus_options.version = recipe.corpus_version;
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
    for (const ChatExample& e : corpus.HelpfulChat(recipe.chat_examples, recipe.seed + 2)) {
      KO_ASSIGN_OR_RETURN(Row row, ChatRow(*tokenizer, chat, e, end_of_turn, recipe.max_tokens));
      pools.helpful.push_back(std::move(row));
    }
    for (const ChatExample& e : corpus.SafetyChat(recipe.chat_examples, recipe.seed + 3)) {
      KO_ASSIGN_OR_RETURN(Row row, ChatRow(*tokenizer, chat, e, end_of_turn, recipe.max_tokens));
      pools.safety.push_back(std::move(row));
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

}  // namespace knockout::organism
