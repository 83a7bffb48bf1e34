#include "experiments/spec_inputs.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "formats/config.h"

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
  return Status::Ok();
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
