// The model's shape read from a Hugging Face checkpoint's config.json, as the engine takes it
// (experiments::ModelShape). For the CLI and tests: the coordinator takes the shape from the spec
// (spec_inputs.h), and neuron rankings are computed by workers (RANK shards).
// Stateless functions; thread-safe.
#pragma once

#include <string>

#include "common/status.h"
#include "experiments/spec.h"

namespace knockout::experiments {

// The model's shape from DIR/config.json (NotFound / InvalidArgument naming the file).
StatusOr<ModelShape> ReadModelShape(const std::string& model_dir);

}  // namespace knockout::experiments
