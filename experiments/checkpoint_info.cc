#include "experiments/checkpoint_info.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "formats/checkpoint_files.h"
#include "formats/config.h"
#include "formats/safetensors.h"

namespace knockout::experiments {

namespace {

float ToFloat(formats::DType dtype, const uint8_t* p) {
  uint32_t bits = 0;
  float value = 0;
  switch (dtype) {
    case formats::DType::kF32:
      std::memcpy(&value, p, 4);
      return value;
    case formats::DType::kBF16:
      bits = static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16;
      std::memcpy(&value, &bits, 4);
      return value;
    case formats::DType::kF16: {
      const uint16_t h = static_cast<uint16_t>(p[0] | (p[1] << 8));
      const uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
      if (exponent == 0) {
        value = std::ldexp(static_cast<float>(mantissa), -24);
      } else if (exponent == 31) {
        value = mantissa ? std::nanf("") : INFINITY;
      } else {
        value = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
      }
      return sign ? -value : value;
    }
    default:
      return std::nanf("");
  }
}

}  // namespace

NeuronRanker MakeNeuronRanker(const std::string& model_dir) {
  return [model_dir](int layer, const std::string& score, const std::vector<float>& direction,
                     uint32_t k) -> StatusOr<std::vector<int32_t>> {
    if (score != "direction_cosine") {
      return Status::InvalidArgument("neuron score " + score + ": only direction_cosine is implemented");
    }
    const std::string name = "model.layers." + std::to_string(layer) + ".mlp.down_proj.weight";
    KO_ASSIGN_OR_RETURN(auto files, formats::CheckpointWeightFiles(model_dir));
    for (const std::string& path : files) {
      KO_ASSIGN_OR_RETURN(auto file, formats::SafetensorsFile::Open(path));
      const int index = file->header().Find(name);
      if (index < 0) continue;
      const formats::TensorInfo& info = file->header().tensors[index];
      if (info.shape.size() != 2 || info.shape[0] != static_cast<int64_t>(direction.size())) {
        return Status::InvalidArgument(path + ": " + name + " does not match the direction's size");
      }
      const int64_t d = info.shape[0], n = info.shape[1];
      const size_t width = formats::DTypeSize(info.dtype);
      const uint8_t* data = file->TensorData(info);
      // |cos(W_down[:, j], r)| for every neuron j: the neuron's write direction vs r.
      std::vector<double> dot(n, 0.0), norm(n, 0.0);
      double r_norm = 0;
      for (int64_t i = 0; i < d; ++i) {
        r_norm += static_cast<double>(direction[i]) * direction[i];
        for (int64_t j = 0; j < n; ++j) {
          const double w = ToFloat(info.dtype, data + (i * n + j) * width);
          dot[j] += w * direction[i];
          norm[j] += w * w;
        }
      }
      std::vector<int32_t> order(n);
      for (int64_t j = 0; j < n; ++j) order[j] = static_cast<int32_t>(j);
      auto cosine = [&](int32_t j) { return std::abs(dot[j]) / (std::sqrt(norm[j] * r_norm) + 1e-30); };
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return cosine(a) > cosine(b); });
      order.resize(std::min<size_t>(order.size(), k));
      std::sort(order.begin(), order.end());
      return order;
    }
    return Status::NotFound(model_dir + ": no tensor " + name);
  };
}

StatusOr<ModelShape> ReadModelShape(const std::string& model_dir) {
  KO_ASSIGN_OR_RETURN(formats::ModelConfig config, formats::LoadModelConfig(model_dir));
  ModelShape shape;
  shape.num_layers = config.num_layers;
  shape.num_heads = config.num_heads;
  shape.intermediate_size = config.intermediate_size;
  shape.hidden_size = config.hidden_size;
  return shape;
}

}  // namespace knockout::experiments
