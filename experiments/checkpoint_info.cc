#include "experiments/checkpoint_info.h"

#include "formats/config.h"

namespace knockout::experiments {

StatusOr<ModelShape> ReadModelShape(const std::string& model_dir) {
  KO_ASSIGN_OR_RETURN(formats::ModelConfig config, formats::LoadModelConfig(model_dir));
  ModelShape shape;
  shape.num_layers = config.num_layers;
  shape.num_heads = config.num_heads;
  shape.intermediate_size = config.intermediate_size;
  shape.hidden_size = config.hidden_size;
  shape.architecture = config.architecture;
  return shape;
}

}  // namespace knockout::experiments
