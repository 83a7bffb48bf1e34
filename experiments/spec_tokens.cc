#include "experiments/spec_tokens.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "experiments/spec_inputs.h"
#include "formats/prompt_set.h"
#include "formats/positions.h"
#include "proto/positions.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace knockout::experiments {
namespace {

namespace kt = knockout::tokenizer;
using formats::Prompt;

std::string Field(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string Item(const std::string& path, int index) {
  return path + "[" + std::to_string(index) + "]";
}

Status CheckMetricTokens(const ParsedSpec& parsed, const kt::Tokenizer& tokenizer,
                         const std::string& key,
                         const google::protobuf::RepeatedPtrField<std::string>& tokens) {
  for (int i = 0; i < tokens.size(); ++i) {
    const std::string where = parsed.Where(Item(Field("metrics", key), i));
    StatusOr<kt::Encoding> encoding = tokenizer.Encode(tokens[i], /*add_special_tokens=*/false);
    if (!encoding.ok()) return encoding.status().WithContext(where);
    if (encoding->ids.size() != 1) {
      std::string ids;
      for (int64_t id : encoding->ids) ids += (ids.empty() ? "" : " ") + std::to_string(id);
      return Status::InvalidArgument(where + ": \"" + tokens[i] + "\" is " +
                                     std::to_string(encoding->ids.size()) +
                                     " tokens under the model's tokenizer (ids " +
                                     (ids.empty() ? "none" : ids) +
                                     "); a metric token must be exactly one");
    }
  }
  return Status::Ok();
}

// The prompts of one set as the workers see them: loaded with the set's options and limit,
// rendered through the chat template and tokenized. Layouts are cached per set.
class PromptLayouts {
 public:
  PromptLayouts(const ParsedSpec& parsed, const kt::Tokenizer& tokenizer,
                const kt::ChatTemplate& chat)
      : parsed_(parsed), tokenizer_(tokenizer), chat_(chat) {}

  StatusOr<const std::vector<formats::PromptLayout>*> Get(const std::string& set) {
    auto it = cache_.find(set);
    if (it != cache_.end()) return &it->second;
    const v1::PromptSetRef* ref = nullptr;
    for (const auto& candidate : parsed_.spec.prompt_sets()) {
      if (candidate.name() == set) ref = &candidate;
    }
    if (!ref) return Status::InvalidArgument("prompt set \"" + set + "\" is not in prompt_sets");
    const std::string where = parsed_.Where(Field(Field("prompt_sets", set), "path"));
    // A filled spec (spec_inputs.h) carries its prompts: no file is read again.
    StatusOr<std::vector<Prompt>> prompts = LoadPromptSetRef(*ref);
    if (!prompts.ok()) return prompts.status().WithContext(where);
    std::vector<formats::PromptLayout> layouts;
    layouts.reserve(prompts->size());
    for (size_t i = 0; i < prompts->size(); ++i) {
      StatusOr<kt::TokenizedPrompt> tokenized =
          kt::TokenizeChat(tokenizer_, chat_, (*prompts)[i].instruction);
      if (!tokenized.ok()) {
        return tokenized.status().WithContext(where + ": prompt " + std::to_string(i));
      }
      layouts.push_back(tokenized->layout());
    }
    return &cache_.emplace(set, std::move(layouts)).first->second;
  }

 private:
  const ParsedSpec& parsed_;
  const kt::Tokenizer& tokenizer_;
  const kt::ChatTemplate& chat_;
  std::map<std::string, std::vector<formats::PromptLayout>> cache_;
};

// Every selector that can fall outside a prompt (explicit indices, post_inst[-k]) must resolve
// in every prompt of `sets`; the error names the first prompt where it does not and how many
// prompts fail.
Status CheckStagePositions(const ParsedSpec& parsed, const std::string& path,
                           const google::protobuf::RepeatedPtrField<std::string>& sets,
                           const google::protobuf::RepeatedPtrField<v1::Positions>& positions,
                           PromptLayouts* layouts) {
  for (int p = 0; p < positions.size(); ++p) {
    const formats::Positions selector = FromProto(positions[p]);
    if (selector.kind != formats::Positions::Kind::kExplicit &&
        selector.kind != formats::Positions::Kind::kPostInstAt) {
      continue;
    }
    for (const std::string& set : sets) {
      KO_ASSIGN_OR_RETURN(const std::vector<formats::PromptLayout>* prompts, layouts->Get(set));
      Status first;
      size_t failing = 0;
      for (size_t i = 0; i < prompts->size(); ++i) {
        StatusOr<std::vector<int64_t>> resolved =
            formats::ResolvePositions(selector, (*prompts)[i]);
        if (resolved.ok()) continue;
        if (failing++ == 0) {
          first = resolved.status().WithContext("prompt set \"" + set + "\" prompt " +
                                                std::to_string(i));
        }
      }
      if (failing > 0) {
        return Status::InvalidArgument(
            parsed.Where(Item(Field(path, "positions"), p)) + ": " + first.message() + " (" +
            std::to_string(failing) + " of " + std::to_string(prompts->size()) +
            " prompts of the set, rendered through the chat template)");
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateSpecTokens(const ParsedSpec& parsed) {
  const v1::SweepSpec& spec = parsed.spec;
  const std::string model_where = parsed.Where("model.path");
  StatusOr<std::unique_ptr<kt::Tokenizer>> tokenizer = kt::Tokenizer::Load(spec.model().path());
  if (!tokenizer.ok()) return tokenizer.status().WithContext(model_where + ": tokenizer");
  // The template the workers use (worker/executor LoadModel): the spec's, else the tokenizer's.
  StatusOr<kt::ChatTemplate> chat = spec.model().chat_template().empty()
                                        ? kt::ChatTemplate::Detect(**tokenizer)
                                        : kt::ChatTemplate::Custom(spec.model().chat_template());
  if (!chat.ok()) {
    return chat.status().WithContext(spec.model().chat_template().empty()
                                         ? model_where + ": chat template"
                                         : parsed.Where("model.chat_template"));
  }

  const v1::MetricsSpec& metrics = spec.metrics();
  KO_RETURN_IF_ERROR(
      CheckMetricTokens(parsed, **tokenizer, "refusal_tokens", metrics.refusal_tokens()));
  KO_RETURN_IF_ERROR(
      CheckMetricTokens(parsed, **tokenizer, "positive_tokens", metrics.positive_tokens()));
  KO_RETURN_IF_ERROR(
      CheckMetricTokens(parsed, **tokenizer, "negative_tokens", metrics.negative_tokens()));

  PromptLayouts layouts(parsed, **tokenizer, *chat);
  for (int i = 0; i < spec.stages_size(); ++i) {
    const v1::Stage& stage = spec.stages(i);
    const std::string path = Item("stages", i);
    if (stage.has_extract_directions()) {
      const auto& s = stage.extract_directions();
      google::protobuf::RepeatedPtrField<std::string> sets;
      sets.Add(std::string(s.positive()));
      if (s.negative() != s.positive()) sets.Add(std::string(s.negative()));
      KO_RETURN_IF_ERROR(CheckStagePositions(parsed, path, sets, s.positions(), &layouts));
    } else if (stage.has_knockout_sweep()) {
      const auto& s = stage.knockout_sweep();
      KO_RETURN_IF_ERROR(
          CheckStagePositions(parsed, path, s.prompt_sets(), s.positions(), &layouts));
    } else if (stage.has_attribution_screen()) {
      const auto& s = stage.attribution_screen();
      KO_RETURN_IF_ERROR(
          CheckStagePositions(parsed, path, s.prompt_sets(), s.positions(), &layouts));
    }
  }
  return Status::Ok();
}

}  // namespace knockout::experiments
