// What the torch-free side (spec validation, the sweep engine, the coordinator) reads from a
// Hugging Face checkpoint without loading it: the model's shape from config.json, and neuron
// rankings computed from one memory-mapped weight (safetensors, f32/bf16/f16).
// Stateless functions; thread-safe.
#pragma once

#include <string>

#include "common/status.h"
#include "experiments/engine.h"
#include "experiments/spec.h"

namespace knockout::experiments {

// The model's shape from DIR/config.json (NotFound / InvalidArgument naming the file).
StatusOr<ModelShape> ReadModelShape(const std::string& model_dir);

// Ranks neurons by |cos(W_down[:, n], direction)| ("direction_cosine"), reading the layer's
// down_proj weight from the checkpoint's safetensors (f32, bf16 or f16). Errors (when called):
// InvalidArgument for another score or a weight whose size does not match the direction;
// NotFound if no file of the checkpoint has the layer's down_proj.
NeuronRanker MakeNeuronRanker(const std::string& model_dir);

}  // namespace knockout::experiments
