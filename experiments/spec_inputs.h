// A spec's inputs on the submitting machine: the model's shape (from its config.json, with a
// digest of the file) and every prompt set's prompts, read by the CLI (validate, run, submit)
// and carried in the spec (ModelRef.shape, PromptSetRef.prompts), so that the coordinator and
// the engine open no model or prompt file, and the sweep id (engine.h SweepIdFor) covers them.
// Stateless functions; thread-safe.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "experiments/spec.h"
#include "formats/prompt_set.h"
#include "knockout/v1/sweep.pb.h"

namespace knockout::experiments {

// The shape of the checkpoint in `model_dir` from its config.json, with config_digest (FNV-1a 64
// of the file's bytes). NotFound / InvalidArgument naming the file.
StatusOr<v1::ModelShape> ReadConfigShape(const std::string& model_dir);

// Reads, on this machine, what `parsed` names: the model's shape and every prompt set's prompts
// (after `limit`). Errors name the spec file, line and field (model.path, prompt_sets.X.path).
StatusOr<v1::SpecInputs> ReadSpecInputs(const ParsedSpec& parsed);

// The same for a spec sent as text (SubmitSweepRequest: spec_yaml, spec_label, base_dir):
// parses it and resolves its paths against `base_dir` first. What the CLI sends to a
// coordinator; tests and benchmarks that build requests by hand use it too.
StatusOr<v1::SpecInputs> ReadSpecInputs(const std::string& spec_yaml, const std::string& label,
                                        const std::string& base_dir);

// Writes `inputs` into the spec: ModelRef.shape and, per prompt set, inlined = true and its
// prompts. InvalidArgument naming the spec file if the shape is missing (num_layers 0), or a
// prompt set of the spec has no inlined prompts in `inputs` or `inputs` names an unknown set.
Status ApplySpecInputs(const v1::SpecInputs& inputs, ParsedSpec* parsed);

// ReadSpecInputs then ApplySpecInputs: what the CLI does before it validates, plans or submits.
Status FillSpecInputs(ParsedSpec* parsed);

// The engine's view of a filled spec's shape. InvalidArgument if the spec has none (a sweep
// stored by a CLI that did not fill it in: submit it again).
StatusOr<ModelShape> SpecModelShape(const v1::SweepSpec& spec);

// The inlined prompts of a prompt set (empty if it is not inlined).
std::vector<formats::Prompt> InlinedPrompts(const v1::PromptSetRef& set);

// The prompts of one set as the workers see them: its inlined prompts, or else read from its
// file with the set's `field` / `csv_column` and cut to `limit`. Errors as LoadPromptSet's.
StatusOr<std::vector<formats::Prompt>> LoadPromptSetRef(const v1::PromptSetRef& set);

}  // namespace knockout::experiments
