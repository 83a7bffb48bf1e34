#include "worker/sae_commands.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>

#include "formats/sae.h"
#include "worker/runtime_flags.h"
#include "worker/sae/sae.h"

namespace knockout::worker {
namespace {

namespace kf = knockout::formats;
namespace km = knockout::model;
using nlohmann::json;

int Fail(const Status& status) {
  std::cerr << "knockout-worker: " << status.ToString() << "\n";
  return 1;
}

// A LibTorch exception as one line (no backtrace) naming `where`.
Status FromTorch(const c10::Error& e, const std::string& where) {
  std::string message = e.what_without_backtrace();
  message = message.substr(0, message.find('\n'));
  return Status::Internal(where + ": " + message);
}

StatusOr<std::vector<int64_t>> ParseIdList(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) {
      return Status::InvalidArgument("--ids \"" + text + "\": \"" + item +
                                     "\" is not an integer token id");
    }
    ids.push_back(value);
  }
  if (ids.empty()) return Status::InvalidArgument("--ids: empty token list");
  return ids;
}

// "LATENT=VALUE" of --sae-clamp.
StatusOr<std::pair<int64_t, double>> ParseClamp(const std::string& text) {
  const size_t eq = text.find('=');
  const Status bad = Status::InvalidArgument("--sae-clamp \"" + text +
                                             "\": expected LATENT=VALUE, e.g. 856=-3");
  if (eq == std::string::npos) return bad;
  const std::string latent_text = text.substr(0, eq);
  const std::string value_text = text.substr(eq + 1);
  size_t used_latent = 0, used_value = 0;
  long long latent = 0;
  double value = 0;
  try {
    latent = std::stoll(latent_text, &used_latent);
    value = std::stod(value_text, &used_value);
  } catch (const std::exception&) {
    return bad;
  }
  if (latent_text.empty() || used_latent != latent_text.size() || value_text.empty() ||
      used_value != value_text.size() || !std::isfinite(value)) {
    return bad;
  }
  return std::make_pair(static_cast<int64_t>(latent), value);
}

}  // namespace

// --- forward --sae ---------------------------------------------------------------------------

void AddSaeForwardFlags(CLI::App* forward, SaeForwardFlags* flags) {
  forward->add_option("--sae", flags->sae,
                      "SAE (SAELens/sparsify directory, Gemma Scope params.npz) whose latents "
                      "--sae-clamp sets");
  forward->add_option("--hook", flags->hook, "with --sae: the SAE's hook (default: the file's)");
  forward->add_option("--sae-clamp", flags->clamps,
                      "LATENT=VALUE: clamp that latent at every position, error term kept "
                      "(repeatable)");
}

StatusOr<std::unique_ptr<km::HookRegistry>> SaeForwardHooks(const SaeForwardFlags& flags,
                                                             const km::Model& model) {
  if (flags.sae.empty() && flags.clamps.empty()) {
    if (!flags.hook.empty()) return Status::InvalidArgument("--hook needs --sae");
    return std::unique_ptr<km::HookRegistry>();
  }
  if (flags.sae.empty()) return Status::InvalidArgument("--sae-clamp needs --sae PATH");
  if (flags.clamps.empty()) {
    return Status::InvalidArgument("--sae " + flags.sae + ": give --sae-clamp LATENT=VALUE");
  }
  sae::LatentEdit edit;
  edit.op = sae::LatentEdit::Op::kClamp;
  std::set<int64_t> seen;
  for (const std::string& text : flags.clamps) {
    KO_ASSIGN_OR_RETURN(auto clamp, ParseClamp(text));
    if (!seen.insert(clamp.first).second) {
      return Status::InvalidArgument("--sae-clamp: latent " + std::to_string(clamp.first) +
                                     " given twice");
    }
    edit.latents.push_back(clamp.first);
    edit.values.push_back(clamp.second);
  }
  KO_ASSIGN_OR_RETURN(
      std::shared_ptr<const sae::Sae> loaded,
      sae::Sae::Load(flags.sae, flags.hook, model.config(), model.device(), model.dtype()));
  // Several clamps are one edit (applied together: each latent's f from the same x).
  KO_ASSIGN_OR_RETURN(km::Intervention intervention,
                      sae::MakeLatentIntervention(loaded, std::move(edit)));
  auto hooks = std::make_unique<km::HookRegistry>(model.config());
  KO_RETURN_IF_ERROR(hooks->Intervene({loaded->hook(), intervention}));
  return hooks;
}

// --- sae inspect / sae encode ----------------------------------------------------------------

struct SaeCommands::Flags {
  // inspect
  std::string inspect_path;
  std::string inspect_hook;
  bool inspect_json = false;
  // encode
  RuntimeFlags runtime;
  std::string model;
  std::string sae;
  std::string hook;
  std::vector<std::string> ids;
  bool json = false;
  bool dense = false;
  int top_k = 10;
};

SaeCommands::SaeCommands(CLI::App* app) : flags_(std::make_unique<Flags>()) {
  Flags& f = *flags_;
  sae_ = app->add_subcommand("sae", "sparse autoencoders: inspect a file, encode activations");
  sae_->require_subcommand(1);

  inspect_ = sae_->add_subcommand(
      "inspect", "architecture, source format, hook, sizes, dtype, normalization, k/threshold");
  inspect_->add_option("path", f.inspect_path,
                       "SAELens or sparsify directory, Gemma Scope params.npz or its directory")
      ->required();
  inspect_->add_option("--hook", f.inspect_hook, "the hook, if the file names none");
  inspect_->add_flag("--json", f.inspect_json, "print a JSON object");

  encode_ = sae_->add_subcommand(
      "encode", "SAE latents of the last position of token sequences, with L0 and FVU");
  encode_->add_option("--model", f.model, "Hugging Face checkpoint directory")->required();
  encode_->add_option("--sae", f.sae, "the SAE (as for inspect)")->required();
  encode_->add_option("--hook", f.hook, "the SAE's hook (default: the file's)");
  encode_->add_option("--ids", f.ids, "comma-separated token ids (repeat for a batch)")
      ->required();
  encode_->add_flag("--json", f.json, "one JSON object per sequence, one per line");
  auto* top = encode_->add_option("--top-k", f.top_k, "how many active latents to list")
                  ->check(CLI::PositiveNumber);
  auto* dense = encode_->add_flag("--dense", f.dense, "print all d_sae latents (`latents`)");
  top->excludes(dense);
  AddRuntimeFlags(encode_, &f.runtime);
}

SaeCommands::~SaeCommands() = default;

bool SaeCommands::Selected() const { return sae_->parsed(); }

int SaeCommands::Run() const {
  const Flags& f = *flags_;
  try {
    if (inspect_->parsed()) {
      auto weights = kf::ReadSae(f.inspect_path, f.inspect_hook);
      if (!weights.ok()) return Fail(weights.status());
      const kf::SaeConfig& c = weights->config;
      json out = {
          {"path", f.inspect_path},
          {"architecture", kf::SaeArchitectureName(c.architecture)},
          {"source", kf::SaeSourceName(c.source)},
          {"hook", c.hook.empty() ? json(nullptr) : json(c.hook)},
          {"d_in", c.d_in},
          {"d_sae", c.d_sae},
          {"dtype", c.dtype},
          {"normalization", kf::SaeNormalizationName(c.normalization)},
          {"apply_b_dec_to_input", c.apply_b_dec_to_input},
      };
      if (c.normalization == kf::SaeNormalization::kExpectedAverageOnlyIn) {
        out["scaling_factor"] = c.scaling_factor;
      }
      if (c.architecture == kf::SaeArchitecture::kTopK) out["k"] = c.k;
      if (c.architecture == kf::SaeArchitecture::kJumpRelu && !weights->threshold.empty()) {
        const std::vector<float>& t = weights->threshold.values;
        double sum = 0;
        for (float v : t) sum += v;
        out["threshold"] = {{"min", *std::min_element(t.begin(), t.end())},
                            {"mean", sum / static_cast<double>(t.size())},
                            {"max", *std::max_element(t.begin(), t.end())}};
      }
      if (f.inspect_json) {
        std::cout << out.dump(2) << "\n";
        return 0;
      }
      std::cout << f.inspect_path << "\n"
                << "  architecture   " << out["architecture"].get<std::string>() << "\n"
                << "  source         " << out["source"].get<std::string>() << "\n"
                << "  hook           " << (c.hook.empty() ? "(none: give --hook)" : c.hook)
                << "\n"
                << "  d_in           " << c.d_in << "\n"
                << "  d_sae          " << c.d_sae << "\n"
                << "  dtype          " << c.dtype << "\n"
                << "  normalization  " << out["normalization"].get<std::string>();
      if (out.contains("scaling_factor")) std::cout << " (scaling factor " << c.scaling_factor << ")";
      std::cout << "\n  b_dec on input " << (c.apply_b_dec_to_input ? "subtracted" : "no") << "\n";
      if (out.contains("k")) std::cout << "  k              " << c.k << "\n";
      if (out.contains("threshold")) {
        std::cout << "  threshold      min " << out["threshold"]["min"].get<double>() << ", mean "
                  << out["threshold"]["mean"].get<double>() << ", max "
                  << out["threshold"]["max"].get<double>() << "\n";
      }
      return 0;
    }
    if (!encode_->parsed()) return Fail(Status::InvalidArgument("sae: give inspect or encode"));

    auto options = ApplyRuntimeFlags(f.runtime);
    if (!options.ok()) return Fail(options.status());
    std::vector<std::vector<int64_t>> sequences;
    for (const std::string& text : f.ids) {
      auto ids = ParseIdList(text);
      if (!ids.ok()) return Fail(ids.status());
      sequences.push_back(*ids);
    }
    auto model = km::Model::Load(f.model, *options);
    if (!model.ok()) return Fail(model.status());
    const km::ModelConfig& config = (*model)->config();
    auto sae = sae::Sae::Load(f.sae, f.hook, config, (*model)->device(), (*model)->dtype());
    if (!sae.ok()) return Fail(sae.status());
    const km::HookPoint hook = (*sae)->hook();

    // One left-padded batch, stopped after the hook's layer; the last column is every
    // sequence's last token.
    km::Batch batch =
        km::MakeLeftPaddedBatch(sequences, config.pad_token_id.value_or(0), (*model)->device());
    km::HookRegistry hooks(config);
    hooks.Cache(hook);
    km::ForwardRequest request;
    request.input_ids = batch.input_ids;
    request.attention_mask = batch.attention_mask;
    request.logits = km::ForwardRequest::Logits::kNone;
    request.end_layer = hook.layer + 1;
    request.hooks = &hooks;
    auto result = (*model)->Forward(request);
    if (!result.ok()) return Fail(result.status().WithContext(f.model));
    auto cached = hooks.Cached(hook.Name());
    if (!cached.ok()) return Fail(cached.status());
    at::Tensor x = cached->select(1, cached->size(1) - 1);  // [B, ...]
    at::Tensor latents = (*sae)->Encode(x).to(at::kCPU, at::kDouble).contiguous();  // [B, d_sae]
    at::Tensor fvu = sae::VectorFvu(**sae, x).contiguous();                         // [B]
    const int64_t d_sae = (*sae)->d_sae();
    for (size_t i = 0; i < sequences.size(); ++i) {
      at::Tensor row = latents[i];
      const double* values = row.data_ptr<double>();
      json out;
      out["ids"] = sequences[i];
      out["hook"] = hook.Name();
      int64_t l0 = 0;
      for (int64_t j = 0; j < d_sae; ++j) l0 += values[j] != 0.0;
      out["l0"] = l0;
      const double v = fvu[i].item<double>();
      out["fvu"] = std::isfinite(v) ? json(v) : json(nullptr);
      if (f.dense) {
        out["latents"] = std::vector<double>(values, values + d_sae);
      } else {
        // The largest active latents, by value (ties: the lower index first).
        std::vector<int64_t> active;
        for (int64_t j = 0; j < d_sae; ++j) {
          if (values[j] != 0.0) active.push_back(j);
        }
        std::stable_sort(active.begin(), active.end(),
                         [&](int64_t a, int64_t b) { return values[a] > values[b]; });
        if (static_cast<int64_t>(active.size()) > f.top_k) active.resize(f.top_k);
        json top = json::array();
        for (int64_t j : active) top.push_back({j, values[j]});
        out["top"] = top;
      }
      if (f.json) {
        std::cout << out.dump() << "\n";
        continue;
      }
      std::cout << "sequence " << i << " (" << sequences[i].size() << " tokens) at "
                << hook.Name() << ": l0 " << l0 << ", fvu " << v << "\n";
      if (f.dense) {
        std::cout << " ";
        for (int64_t j = 0; j < d_sae; ++j) std::cout << " " << values[j];
        std::cout << "\n";
      } else {
        for (const json& e : out["top"]) {
          std::cout << "  latent " << e[0] << "  " << e[1].get<double>() << "\n";
        }
      }
    }
    return 0;
  } catch (const c10::Error& e) {
    return Fail(FromTorch(e, inspect_->parsed() ? f.inspect_path : f.sae));
  }
}

}  // namespace knockout::worker
