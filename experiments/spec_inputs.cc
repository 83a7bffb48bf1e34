#include "experiments/spec_inputs.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "experiments/spec_parser.h"
#include "formats/config.h"
#include "formats/sae.h"

namespace knockout::experiments {
namespace {

std::string Fnv1aHex(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

// The field of the spec's i-th SAE: `saes.HOOK` (map form) or `saes[i]` (list form).
std::string SaeField(const ParsedSpec& parsed, int i) {
  const std::string& hook = parsed.spec.saes(i).hook();
  const std::string by_hook = spec_internal::Join("saes", hook);
  if (!hook.empty() && parsed.lines.count(by_hook) > 0) return by_hook;
  return spec_internal::At("saes", static_cast<size_t>(i));
}

// The SAEs' hooks and sizes as the CLI read them, checked against the model: one SAE per hook,
// a hook inside the model, d_in equal to the residual width where the hook is a residual or
// sublayer output (attn.hook_z is checked by the worker, which knows head_dim).
Status ApplySaeInputs(const v1::SpecInputs& inputs, ParsedSpec* parsed) {
  v1::SweepSpec& spec = parsed->spec;
  if (inputs.saes_size() != spec.saes_size()) {
    return Status::InvalidArgument(
        parsed->Where("saes") + ": the submission carries " + std::to_string(inputs.saes_size()) +
        " SAE configs for " + std::to_string(spec.saes_size()) +
        " SAEs (the knockout CLI reads each SAE's config and sends it with the spec)");
  }
  const v1::ModelShape& shape = inputs.model_shape();
  std::map<std::string, int> seen;
  for (int i = 0; i < spec.saes_size(); ++i) {
    const std::string where = parsed->Where(SaeField(*parsed, i));
    const v1::SaeRef& given = inputs.saes(i);
    v1::SaeRef& sae = *spec.mutable_saes(i);
    // Entries pair up by position; paths may be spelled differently on the two sides (the CLI's
    // relative to where it runs, the coordinator's resolved against the submitted base
    // directory), hooks may not.
    if (!sae.hook().empty() && given.hook() != sae.hook()) {
      return Status::InvalidArgument(where + ": the submission's SAE config reads " +
                                     given.hook() + ", the spec says " + sae.hook());
    }
    int layer = 0;
    std::string suffix;
    if (!spec_internal::SplitSaeHook(given.hook(), &layer, &suffix)) {
      return Status::InvalidArgument(where + ": " + sae.path() + " reads " + given.hook() +
                                     ", which is not a hook an SAE can read (blocks.L.hook_resid_pre/"
                                     "mid/post, hook_attn_out, hook_mlp_out, attn.hook_z)");
    }
    if (layer >= shape.num_layers()) {
      return Status::InvalidArgument(where + ": " + given.hook() + ": layer " +
                                     std::to_string(layer) + " out of range, model has " +
                                     std::to_string(shape.num_layers()) + " layers");
    }
    if (suffix != "attn.hook_z" && given.d_in() != shape.hidden_size()) {
      return Status::InvalidArgument(where + ": " + sae.path() + " has d_in " +
                                     std::to_string(given.d_in()) + ", the model's width at " +
                                     given.hook() + " is " + std::to_string(shape.hidden_size()));
    }
    if (given.d_sae() <= 0) {
      return Status::InvalidArgument(where + ": " + sae.path() + " has no latents (d_sae " +
                                     std::to_string(given.d_sae()) + ")");
    }
    auto [it, inserted] = seen.emplace(given.hook(), i);
    if (!inserted) {
      return Status::InvalidArgument(where + ": two SAEs read " + given.hook() + " (saes entries " +
                                     std::to_string(it->second) + " and " + std::to_string(i) + ")");
    }
    const std::string path = sae.path();
    sae = given;
    sae.set_path(path);
  }
  return Status::Ok();
}

}  // namespace

StatusOr<v1::ModelShape> ReadConfigShape(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": cannot be opened");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return Status::IOError(path + ": read failed");
  KO_ASSIGN_OR_RETURN(formats::ModelConfig config, formats::ParseModelConfig(bytes, path));
  v1::ModelShape shape;
  shape.set_num_layers(config.num_layers);
  shape.set_num_heads(config.num_heads);
  shape.set_intermediate_size(config.intermediate_size);
  shape.set_hidden_size(config.hidden_size);
  shape.set_config_digest(Fnv1aHex(bytes));
  shape.set_architecture(config.architecture);
  return shape;
}

StatusOr<v1::SpecInputs> ReadSpecInputs(const ParsedSpec& parsed) {
  v1::SpecInputs inputs;
  auto shape = ReadConfigShape(parsed.spec.model().path());
  if (!shape.ok()) return shape.status().WithContext(parsed.Where("model.path"));
  *inputs.mutable_model_shape() = std::move(shape).value();
  for (const v1::PromptSetRef& ref : parsed.spec.prompt_sets()) {
    auto prompts = LoadPromptSetRef(ref);
    if (!prompts.ok()) {
      return prompts.status().WithContext(parsed.Where("prompt_sets." + ref.name() + ".path"));
    }
    v1::PromptSetRef* set = inputs.add_prompt_sets();
    set->set_name(ref.name());
    set->set_inlined(true);
    for (const formats::Prompt& p : *prompts) {
      v1::InlinePrompt* prompt = set->add_prompts();
      prompt->set_instruction(p.instruction);
      prompt->set_category(p.category);
    }
  }
  for (int i = 0; i < parsed.spec.saes_size(); ++i) {
    const v1::SaeRef& ref = parsed.spec.saes(i);
    const std::string field = SaeField(parsed, i);
    auto config = formats::ReadSaeConfig(ref.path(), ref.hook());
    if (!config.ok()) return config.status().WithContext(parsed.Where(field));
    if (config->hook.empty()) {
      return Status::InvalidArgument(parsed.Where(field) + ": " + ref.path() +
                                     " does not say which hook it reads; write saes as "
                                     "{HOOK: PATH}");
    }
    v1::SaeRef* sae = inputs.add_saes();
    sae->set_hook(config->hook);
    sae->set_path(ref.path());
    sae->set_d_in(config->d_in);
    sae->set_d_sae(config->d_sae);
    sae->set_architecture(formats::SaeArchitectureName(config->architecture));
  }
  return inputs;
}

StatusOr<v1::SpecInputs> ReadSpecInputs(const std::string& spec_yaml, const std::string& label,
                                        const std::string& base_dir) {
  KO_ASSIGN_OR_RETURN(ParsedSpec parsed, ParseSpec(spec_yaml, label));
  ResolveSpecPaths(base_dir, &parsed.spec);
  return ReadSpecInputs(parsed);
}

Status ApplySpecInputs(const v1::SpecInputs& inputs, ParsedSpec* parsed) {
  v1::SweepSpec& spec = parsed->spec;
  if (inputs.model_shape().num_layers() <= 0) {
    return Status::InvalidArgument(
        parsed->Where("model.path") +
        ": the submission carries no model shape (the coordinator opens no model files; the "
        "knockout CLI reads config.json and sends it with the spec)");
  }
  std::map<std::string, const v1::PromptSetRef*> given;
  for (const v1::PromptSetRef& set : inputs.prompt_sets()) given[set.name()] = &set;
  for (v1::PromptSetRef& set : *spec.mutable_prompt_sets()) {
    auto it = given.find(set.name());
    if (it == given.end() || !it->second->inlined()) {
      return Status::InvalidArgument(
          parsed->Where("prompt_sets." + set.name()) + ": the submission carries no prompts for "
          "prompt set \"" + set.name() + "\" (the coordinator reads no prompt files; the "
          "knockout CLI sends them with the spec)");
    }
    set.set_inlined(true);
    *set.mutable_prompts() = it->second->prompts();
    given.erase(it);
  }
  if (!given.empty()) {
    return Status::InvalidArgument(parsed->label + ": the submission carries prompts for \"" +
                                   given.begin()->first + "\", which the spec does not define");
  }
  *spec.mutable_model()->mutable_shape() = inputs.model_shape();
  return ApplySaeInputs(inputs, parsed);
}

Status FillSpecInputs(ParsedSpec* parsed) {
  KO_ASSIGN_OR_RETURN(v1::SpecInputs inputs, ReadSpecInputs(*parsed));
  return ApplySpecInputs(inputs, parsed);
}

StatusOr<ModelShape> SpecModelShape(const v1::SweepSpec& spec) {
  const v1::ModelShape& s = spec.model().shape();
  if (s.num_layers() <= 0) {
    return Status::InvalidArgument("sweep " + spec.name() +
                                   ": the spec carries no model shape (stored by an older "
                                   "knockout; submit it again)");
  }
  ModelShape shape;
  shape.num_layers = s.num_layers();
  shape.num_heads = s.num_heads();
  shape.intermediate_size = s.intermediate_size();
  shape.hidden_size = s.hidden_size();
  shape.architecture = s.architecture();
  return shape;
}

std::vector<formats::Prompt> InlinedPrompts(const v1::PromptSetRef& set) {
  std::vector<formats::Prompt> prompts;
  prompts.reserve(set.prompts_size());
  for (const v1::InlinePrompt& p : set.prompts()) {
    formats::Prompt prompt;
    prompt.instruction = p.instruction();
    prompt.category = p.category();
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

StatusOr<std::vector<formats::Prompt>> LoadPromptSetRef(const v1::PromptSetRef& set) {
  if (set.inlined()) return InlinedPrompts(set);
  formats::PromptSetOptions options;
  if (!set.field().empty()) options.field = set.field();
  if (!set.csv_column().empty()) options.csv_column = set.csv_column();
  KO_ASSIGN_OR_RETURN(std::vector<formats::Prompt> prompts, formats::LoadPromptSet(set.path(), options));
  if (set.limit() > 0 && prompts.size() > set.limit()) prompts.resize(set.limit());
  return prompts;
}

}  // namespace knockout::experiments
