// Locating the weight files of a Hugging Face checkpoint directory: model.safetensors, or the
// shards named by model.safetensors.index.json. Torch-free. Stateless functions; thread-safe.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace knockout::formats {

// Paths of the safetensors files holding the weights of checkpoint `dir`, in a stable order.
// Errors: NotFound if neither file exists or a shard named by the index is missing (naming
// both); InvalidArgument if the index is not valid JSON, lacks weight_map, or names a shard with
// a path separator (which could escape the directory).
StatusOr<std::vector<std::string>> CheckpointWeightFiles(const std::string& dir);

}  // namespace knockout::formats
