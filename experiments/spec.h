// Sweep specs: YAML files parsed (yaml-cpp) and validated into the SweepSpec proto. Every error
// names the file, the line and the field path, e.g.
//   "demo.yaml:14: stages[2].targets[0].layers: layer 9 out of range, model has 6 layers".
// Stateless functions; thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "common/status.h"
#include "knockout/v1/sweep.pb.h"

namespace knockout::experiments {

// What validation needs to know about the model (read from its config.json).
struct ModelShape {
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t intermediate_size = 0;
  int64_t hidden_size = 0;
  std::string architecture;  // config.json's architectures[0]; empty when unknown
};

// A parsed spec and where each field was written, so that later checks can name the line.
struct ParsedSpec {
  v1::SweepSpec spec;
  std::string label;                // the file name used in messages
  std::map<std::string, int> lines; // field path ("stages[2].targets[0].layers") -> 1-based line
  // "label:line: field" (the nearest recorded ancestor's line if the field has none).
  std::string Where(const std::string& field) const;
};

// Parses YAML text (`label` names it in errors) into a spec: syntax, types, unknown keys, enum
// values, references between stages and to prompt sets, defaults filled in. Paths stay as
// written. InvalidArgument on any error.
StatusOr<ParsedSpec> ParseSpec(const std::string& yaml_text, const std::string& label);

// Reads and parses FILE, then resolves relative paths (model, prompt sets, orthogonalize
// outputs) against the file's directory and sets spec.source. NotFound if FILE is missing.
StatusOr<ParsedSpec> LoadSpec(const std::string& path);

// Resolves the spec's relative paths (model, prompt sets, orthogonalize outputs) against
// `base_dir`, as LoadSpec does with the file's directory: what the coordinator uses for a spec
// sent as text with the directory it came from. Absolute and empty paths stay as they are.
void ResolveSpecPaths(const std::string& base_dir, v1::SweepSpec* spec);

// Checks a parsed spec against the model's shape (read by the caller from config.json) and the
// files it names: every layer/head/neuron index is in range, every prompt set loads (or is
// inlined, spec_inputs.h: then no file is read) and holds at least one prompt. Errors name the
// spec file, line and field.
Status ValidateSpecFiles(const ParsedSpec& parsed, const ModelShape& shape);

// Stable text for a direction reference: "select.best", "extract@3/post_inst[-1]".
std::string DirectionRefName(const v1::DirectionRef& ref);

}  // namespace knockout::experiments
