// Spec loading and validation: the YAML text prepared and handed to SpecParser
// (spec_parser.h), the checks against the model's shape and the prompt files, path resolution.
#include "experiments/spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

#include "experiments/spec_parser.h"
#include "formats/positions.h"
#include "formats/prompt_set.h"
#include "proto/positions.h"

namespace knockout::experiments {
namespace {

namespace fs = std::filesystem;
using namespace spec_internal;  // the parser and its helpers (spec_parser.h)

// ------------------------------------------------------------------------------------------
// The spec language writes post_inst[-k] bare, also inside flow lists and maps
// ("[post_inst[-2], post_inst[-1]]", as science.md and the demo spec do), where YAML would read
// the '[' as the start of a nested list. Quoting each such token before parsing keeps that
// notation; lines do not move, so error lines still match the file. Quoted strings and comments
// are left alone (block scalars are not recognised; a chat template holding the bare token
// would gain quotes).

bool StartsToken(const std::string& text, size_t i) {
  return i == 0 || std::string_view(" \t\n[{,").find(text[i - 1]) != std::string_view::npos;
}

// Length of a bare post_inst[N] token at `i` (0 if none): "post_inst[", an optional sign,
// digits, "]", then the end of a YAML token.
size_t PostInstTokenLength(const std::string& text, size_t i) {
  constexpr std::string_view kPrefix = "post_inst[";
  if (!StartsToken(text, i) || text.compare(i, kPrefix.size(), kPrefix) != 0) return 0;
  size_t j = i + kPrefix.size();
  if (j < text.size() && (text[j] == '-' || text[j] == '+')) ++j;
  const size_t digits = j;
  while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
  if (j == digits || j >= text.size() || text[j] != ']') return 0;
  ++j;
  if (j < text.size() && std::string_view(" \t\r\n,]}#").find(text[j]) == std::string_view::npos) {
    return 0;
  }
  return j - i;
}

std::string QuotePostInstTokens(const std::string& text) {
  std::string out;
  out.reserve(text.size() + 64);
  char quote = 0;  // the open quote character, if inside a quoted scalar
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quote == '"' && c == '\\' && i + 1 < text.size()) {
      out += c;
      out += text[++i];
      continue;
    }
    if (quote != 0) {
      if (c == quote) quote = 0;  // '' inside single quotes reopens at once: same result
      out += c;
      continue;
    }
    if (c == '#' && (i == 0 || std::isspace(static_cast<unsigned char>(text[i - 1])))) {
      const size_t end = std::min(text.find('\n', i), text.size());
      out.append(text, i, end - i);
      i = end - 1;
      continue;
    }
    if ((c == '"' || c == '\'') && StartsToken(text, i)) quote = c;
    if (const size_t n = PostInstTokenLength(text, i); n > 0) {
      out += '"' + text.substr(i, n) + '"';
      i += n - 1;
      continue;
    }
    out += c;
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Loading and validation helpers

std::string MarkPrefix(const std::string& label, const YAML::Mark& mark) {
  if (mark.is_null()) return label + ": ";
  return label + ":" + std::to_string(mark.line + 1) + ": ";
}

// A relative path in the spec names a file next to the spec, wherever the tool runs from.
std::string ResolveAgainst(const fs::path& dir, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  return (dir / path).lexically_normal().string();
}


Status CheckIndexRange(const ParsedSpec& parsed, const std::string& field,
                       const google::protobuf::RepeatedField<int32_t>& indices, int64_t limit,
                       const char* unit, const char* what) {
  for (int32_t index : indices) {
    if (index < 0 || index >= limit) {
      return Status::InvalidArgument(parsed.Where(field) + ": " + unit + " " +
                                     std::to_string(index) + " out of range, model has " +
                                     std::to_string(limit) + " " + what);
    }
  }
  return Status::Ok();
}

Status CheckLayers(const ParsedSpec& parsed, const std::string& field,
                   const google::protobuf::RepeatedField<int32_t>& layers,
                   const ModelShape& shape) {
  return CheckIndexRange(parsed, field, layers, shape.num_layers, "layer", "layers");
}

// A single layer (-1: chosen later, always in range).
Status CheckLayer(const ParsedSpec& parsed, const std::string& field, int32_t layer,
                  const ModelShape& shape) {
  if (layer < 0) return Status::Ok();
  google::protobuf::RepeatedField<int32_t> one;
  one.Add(layer);
  return CheckLayers(parsed, field, one, shape);
}

// Every layer of an sae_latents target has an SAE at blocks.L.{sae_hook} among the spec's saes
// (their hooks known once the CLI has read the files: spec_inputs.h), and the latents fit it.
Status CheckLatentTarget(const ParsedSpec& parsed, const std::string& path, const Target& target,
                         const ModelShape& shape) {
  std::vector<int> layers(target.layers().begin(), target.layers().end());
  if (layers.empty()) {
    for (int l = 0; l < shape.num_layers; ++l) layers.push_back(l);
  }
  for (int layer : layers) {
    const std::string hook = "blocks." + std::to_string(layer) + "." + target.sae_hook();
    const v1::SaeRef* sae = nullptr;
    std::string listed;
    for (const v1::SaeRef& s : parsed.spec.saes()) {
      if (s.hook() == hook) sae = &s;
      listed += (listed.empty() ? "" : ", ") + (s.hook().empty() ? s.path() : s.hook());
    }
    if (!sae) {
      return Status::InvalidArgument(parsed.Where(Join(path, "layers")) + ": layer " +
                                     std::to_string(layer) + " has no SAE at " + hook +
                                     " (saes: " + listed + ")");
    }
    if (sae->d_sae() <= 0) continue;  // not read yet (validate without inputs)
    KO_RETURN_IF_ERROR(CheckIndexRange(parsed, Join(path, "units"), target.units(), sae->d_sae(),
                                       "latent", ("latents in the SAE at " + hook).c_str()));
    const uint32_t wanted = std::max(target.select().top_k(), target.select().candidates());
    if (static_cast<int64_t>(wanted) > sae->d_sae()) {
      return Status::InvalidArgument(parsed.Where(Join(path, "select.top_k")) + ": " +
                                     std::to_string(wanted) + " latents asked for, the SAE at " +
                                     hook + " has " + std::to_string(sae->d_sae()));
    }
  }
  return CheckLayer(parsed, Join(path, "select.direction.layer"),
                    target.select().direction().layer(), shape);
}

Status CheckTarget(const ParsedSpec& parsed, const std::string& path, const Target& target,
                   const ModelShape& shape) {
  KO_RETURN_IF_ERROR(CheckLayers(parsed, Join(path, "layers"), target.layers(), shape));
  if (target.kind() == Target::HEADS) {
    KO_RETURN_IF_ERROR(CheckIndexRange(parsed, Join(path, "units"), target.units(), shape.num_heads,
                                       "head", "heads per layer"));
  }
  // A target chosen by a screen (`from`) takes the screen's units: checked there.
  if (!target.from().empty()) return Status::Ok();
  if (target.kind() == Target::NEURONS) {
    KO_RETURN_IF_ERROR(CheckIndexRange(parsed, Join(path, "units"), target.units(),
                                       shape.intermediate_size, "neuron", "MLP neurons per layer"));
    if (target.top_k() > shape.intermediate_size) {
      return Status::InvalidArgument(
          parsed.Where(Join(path, "top_k")) + ": top_k " + std::to_string(target.top_k()) +
          " exceeds the model's " + std::to_string(shape.intermediate_size) + " neurons per layer");
    }
  }
  if (target.kind() == Target::SAE_LATENTS) {
    KO_RETURN_IF_ERROR(CheckLatentTarget(parsed, path, target, shape));
  }
  KO_RETURN_IF_ERROR(
      CheckLayer(parsed, Join(path, "direction.layer"), target.direction().layer(), shape));
  return CheckLayer(parsed, Join(path, "score_direction.layer"), target.score_direction().layer(),
                    shape);
}

Status CheckStageShape(const ParsedSpec& parsed, const std::string& path, const Stage& stage,
                       const ModelShape& shape) {
  switch (stage.kind_case()) {
    case Stage::kExtractDirections:
      return CheckLayers(parsed, Join(path, "layers"), stage.extract_directions().layers(), shape);
    case Stage::kKnockoutSweep:
      for (int t = 0; t < stage.knockout_sweep().targets_size(); ++t) {
        KO_RETURN_IF_ERROR(CheckTarget(parsed, At(Join(path, "targets"), t),
                                       stage.knockout_sweep().targets(t), shape));
      }
      return Status::Ok();
    case Stage::kAttributionScreen:
      for (int u = 0; u < stage.attribution_screen().units_size(); ++u) {
        KO_RETURN_IF_ERROR(CheckTarget(parsed, At(Join(path, "units"), u),
                                       stage.attribution_screen().units(u), shape));
      }
      return CheckLayer(parsed, Join(path, "patch.direction.layer"),
                        stage.attribution_screen().patch().layer(), shape);
    case Stage::kGenerate:
      for (int c = 0; c < stage.generate().conditions_size(); ++c) {
        const std::string at = At(Join(path, "conditions"), c);
        const GenerateCondition& condition = stage.generate().conditions(c);
        KO_RETURN_IF_ERROR(
            CheckLayer(parsed, Join(at, "direction.layer"), condition.direction().layer(), shape));
        KO_RETURN_IF_ERROR(CheckLayer(parsed, Join(at, "layer"), condition.layer(), shape));
      }
      return Status::Ok();
    case Stage::kOrthogonalize:
      if (shape.architecture == "Gemma2ForCausalLM") {
        // worker/executor refuses it too; here the sweep is refused before anything runs.
        return Status::InvalidArgument(
            parsed.Where(Join(path, "orthogonalize")) +
            ": weight orthogonalization is not exact for Gemma 2 (its attention and MLP outputs "
            "pass through RMSNorms after o_proj and down_proj); use a generate condition with "
            "kind: ablate instead");
      }
      return CheckLayer(parsed, Join(path, "direction.layer"),
                        stage.orthogonalize().direction().layer(), shape);
    default:
      return Status::Ok();
  }
}

Status CheckPromptSet(const ParsedSpec& parsed, const v1::PromptSetRef& set) {
  formats::PromptSetOptions options;
  if (!set.field().empty()) options.field = set.field();
  if (!set.csv_column().empty()) options.csv_column = set.csv_column();
  const std::string where = parsed.Where(Join(Join("prompt_sets", set.name()), "path"));
  if (set.inlined()) {  // read by the CLI (spec_inputs.h): no file here
    if (set.prompts_size() > 0) return Status::Ok();
    return Status::InvalidArgument(where + ": prompt set " + Quoted(set.name()) + " is empty");
  }
  StatusOr<std::vector<formats::Prompt>> prompts = formats::LoadPromptSet(set.path(), options);
  if (!prompts.ok()) return prompts.status().WithContext(where);
  if (prompts->empty()) {
    return Status::InvalidArgument(where + ": prompt set " + Quoted(set.name()) + " is empty");
  }
  return Status::Ok();
}

}  // namespace

// ------------------------------------------------------------------------------------------

std::string ParsedSpec::Where(const std::string& field) const {
  for (std::string path = field;; path = ParentPath(path)) {
    const auto it = lines.find(path);
    if (it != lines.end()) {
      return label + ":" + std::to_string(it->second) + (field.empty() ? "" : ": " + field);
    }
    if (path.empty()) break;
  }
  return field.empty() ? label : label + ": " + field;
}

StatusOr<ParsedSpec> ParseSpec(const std::string& yaml_text, const std::string& label) {
  if (Status utf8 = formats::CheckUtf8(yaml_text); !utf8.ok()) return utf8.WithContext(label);
  ParsedSpec parsed;
  parsed.label = label;
  try {
    const std::vector<YAML::Node> documents = YAML::LoadAll(QuotePostInstTokens(yaml_text));
    if (documents.empty()) return Status::InvalidArgument(label + ": empty spec");
    if (documents.size() > 1) {
      return Status::InvalidArgument(MarkPrefix(label, documents[1].Mark()) +
                                     "a spec file holds one YAML document");
    }
    KO_RETURN_IF_ERROR(SpecParser(&parsed).Parse(documents[0]));
  } catch (const YAML::Exception& e) {
    // Syntax errors, and anything else yaml-cpp throws: errors are values past this point.
    return Status::InvalidArgument(MarkPrefix(label, e.mark) + e.msg);
  } catch (const std::exception& e) {
    return Status::Internal(label + ": " + e.what());
  }
  return parsed;
}

StatusOr<ParsedSpec> LoadSpec(const std::string& path) {
  std::error_code error;
  if (!fs::is_regular_file(path, error)) {
    return Status::NotFound(path + ": no such spec file");
  }
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  if (!file.good() && !file.eof()) return Status::IOError(path + ": could not read the spec file");
  KO_ASSIGN_OR_RETURN(ParsedSpec parsed, ParseSpec(text.str(), path));
  ResolveSpecPaths(fs::path(path).parent_path().string(), &parsed.spec);
  parsed.spec.set_source(path);
  return parsed;
}

void ResolveSpecPaths(const std::string& base_dir, v1::SweepSpec* spec) {
  const fs::path dir(base_dir);
  spec->mutable_model()->set_path(ResolveAgainst(dir, spec->model().path()));
  for (auto& set : *spec->mutable_prompt_sets()) set.set_path(ResolveAgainst(dir, set.path()));
  for (auto& sae : *spec->mutable_saes()) sae.set_path(ResolveAgainst(dir, sae.path()));
  for (auto& stage : *spec->mutable_stages()) {
    if (!stage.has_orthogonalize() || stage.orthogonalize().output().empty()) continue;
    auto* orthogonalize = stage.mutable_orthogonalize();
    orthogonalize->set_output(ResolveAgainst(dir, orthogonalize->output()));
  }
}

Status ValidateSpecFiles(const ParsedSpec& parsed, const ModelShape& shape) {
  const v1::SweepSpec& spec = parsed.spec;
  for (int i = 0; i < spec.stages_size(); ++i) {
    KO_RETURN_IF_ERROR(CheckStageShape(parsed, At("stages", i), spec.stages(i), shape));
  }
  for (const auto& set : spec.prompt_sets()) KO_RETURN_IF_ERROR(CheckPromptSet(parsed, set));
  return Status::Ok();
}

std::string DirectionRefName(const DirectionRef& ref) {
  if (ref.best()) return ref.stage() + ".best";
  const std::string layer = ref.layer() < 0 ? "*" : std::to_string(ref.layer());
  return ref.stage() + "@" + layer + "/" + PositionsName(ref.position());
}

}  // namespace knockout::experiments
