// Model::Load and Model::Save: Hugging Face checkpoint directories <-> ModelWeights.
#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "common/atomic_file.h"
#include "formats/checkpoint_files.h"
#include "formats/safetensors.h"
#include "worker/model/model.h"

namespace knockout::model {
namespace {

using formats::CheckpointWeightFiles;
using formats::DType;
using formats::DTypeName;
using formats::DTypeSize;
using formats::LoadModelConfig;
using formats::ModelConfigToJson;
using formats::SafetensorsFile;
using formats::TensorInfo;
using formats::TensorToWrite;
using formats::WriteSafetensors;

// Tensors that old checkpoints carry but that are derived, not learned.
bool IsIgnorableTensor(const std::string& name) {
  return name.find("rotary_emb.inv_freq") != std::string::npos;
}

StatusOr<at::ScalarType> WeightScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return at::kFloat;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    default: return Status::InvalidArgument(std::string("dtype ") + DTypeName(dtype) +
                                            " is not a weight dtype (expected F32, F16 or BF16)");
  }
}

// The safetensors files of a checkpoint and which file holds each tensor.
struct CheckpointFiles {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>> tensors;
};

StatusOr<CheckpointFiles> OpenCheckpointFiles(const std::string& dir) {
  KO_ASSIGN_OR_RETURN(std::vector<std::string> paths, CheckpointWeightFiles(dir));
  CheckpointFiles out;
  for (const std::string& path : paths) {
    KO_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
    out.files.push_back(std::move(file));
  }
  for (const auto& file : out.files) {
    for (const TensorInfo& info : file->header().tensors) {
      auto [it, inserted] = out.tensors.emplace(info.name, std::make_pair(file.get(), &info));
      if (!inserted) {
        return Status::InvalidArgument(file->path() + ": tensor " + info.name +
                                       " also appears in " + it->second.first->path());
      }
    }
  }
  return out;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Copies one tensor out of the mapping into a new tensor of the compute dtype on the device, in
// slices of rows, releasing each slice's mapped pages as soon as it is copied: the resident
// memory never holds more than the weights copied so far plus one slice of mapped file (a whole
// 32k x 4096 embedding would otherwise sit in RSS twice while it is converted).
constexpr size_t kSliceBytes = 8 << 20;

StatusOr<at::Tensor> ReadTensor(const SafetensorsFile& file, const TensorInfo& info,
                                const LoadOptions& options) {
  KO_ASSIGN_OR_RETURN(at::ScalarType stored, WeightScalarType(info.dtype));
  const uint8_t* data = file.TensorData(info);
  const size_t element = DTypeSize(info.dtype);
  const auto source_options = at::TensorOptions().dtype(stored);
  at::Tensor result =
      at::empty(info.shape, at::TensorOptions().dtype(options.dtype).device(options.device));
  if (result.numel() == 0) return result;
  // Slices of rows along the first dimension (elements, for a 1-D tensor).
  const int64_t rows = info.shape.empty() ? 1 : info.shape[0];
  const size_t row_bytes = info.num_bytes() / static_cast<size_t>(rows);
  const int64_t rows_per_slice = std::max<int64_t>(1, kSliceBytes / std::max<size_t>(row_bytes, 1));
  std::vector<int64_t> slice_shape = info.shape;
  for (int64_t row = 0; row < rows; row += rows_per_slice) {
    const int64_t n = std::min(rows_per_slice, rows - row);
    const uint8_t* slice = data + row * row_bytes;
    at::Tensor source;
    if (!slice_shape.empty()) slice_shape[0] = n;
    if (reinterpret_cast<uintptr_t>(slice) % element != 0) {
      // Unaligned data (legal in the format): copy the bytes into an aligned buffer first.
      source = at::empty(slice_shape, source_options);
      std::memcpy(source.data_ptr(), slice, n * row_bytes);
    } else {
      source = at::from_blob(const_cast<uint8_t*>(slice), slice_shape, source_options);
    }
    at::Tensor target = info.shape.empty() ? result : result.narrow(0, row, n);
    target.copy_(source);  // converts dtype and moves to the device
    file.file().Release(file.header().data_offset + info.begin + row * row_bytes,
                        file.header().data_offset + info.begin + (row + n) * row_bytes);
  }
  return result;
}

}  // namespace

StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, const LoadOptions& options) {
  KO_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  if (options.dtype != at::kFloat && options.dtype != at::kBFloat16 &&
      options.dtype != at::kHalf) {
    return Status::InvalidArgument("compute dtype must be float32, bfloat16 or float16");
  }
  KO_ASSIGN_OR_RETURN(CheckpointFiles files, OpenCheckpointFiles(dir));
  try {
    ModelWeights weights;
    std::set<std::string> used;
    for (const NamedWeightSlot& slot : WeightSlots(config, weights)) {
      auto it = files.tensors.find(slot.name);
      if (it == files.tensors.end()) {
        return Status::NotFound(dir + ": missing tensor " + slot.name + " (config.json implies " +
                                ShapeString(slot.shape) + ")");
      }
      const auto& [file, info] = it->second;
      if (info->shape != slot.shape) {
        return Status::InvalidArgument(
            file->path() + ": tensor " + slot.name + " has shape " + ShapeString(info->shape) +
            ", config.json implies " + ShapeString(slot.shape) + " (hidden_size " +
            std::to_string(config.hidden_size) + ", heads " + std::to_string(config.num_heads) +
            "/" + std::to_string(config.num_kv_heads) + ", head_dim " +
            std::to_string(config.head_dim) + ", intermediate_size " +
            std::to_string(config.intermediate_size) + ", vocab_size " +
            std::to_string(config.vocab_size) + ")");
      }
      auto tensor = ReadTensor(*file, *info, options);
      if (!tensor.ok()) return tensor.status().WithContext(file->path() + ": tensor " + slot.name);
      *slot.tensor = std::move(tensor).value();
      used.insert(slot.name);
    }
    for (const auto& [name, location] : files.tensors) {
      if (used.count(name) || IsIgnorableTensor(name)) continue;
      if (name == "lm_head.weight" && config.tie_word_embeddings) continue;  // saved tied copy
      return Status::InvalidArgument(location.first->path() + ": unexpected tensor " + name +
                                     " (not part of " + config.architecture + " with this "
                                     "config.json)");
    }
    return std::unique_ptr<Model>(new Model(std::move(config), std::move(weights)));
  } catch (const c10::Error& e) {
    return Status::Internal(dir + ": loading failed in LibTorch: " + e.what_without_backtrace());
  }
}

Status Model::Save(const std::string& dir, c10::ScalarType storage_dtype) const {
  DType dtype;
  std::string dtype_name;
  if (storage_dtype == at::kFloat) {
    dtype = DType::kF32;
    dtype_name = "float32";
  } else if (storage_dtype == at::kBFloat16) {
    dtype = DType::kBF16;
    dtype_name = "bfloat16";
  } else if (storage_dtype == at::kHalf) {
    dtype = DType::kF16;
    dtype_name = "float16";
  } else {
    return Status::InvalidArgument("storage dtype must be float32, bfloat16 or float16");
  }
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::IOError(dir + ": cannot create directory: " + std::strerror(errno));
  }
  std::vector<at::Tensor> keep_alive;
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, tensor] : NamedParameters()) {
    at::Tensor cpu = tensor.detach().to(at::kCPU, storage_dtype).contiguous();
    keep_alive.push_back(cpu);
    tensors.push_back({name, dtype, cpu.sizes().vec(), cpu.data_ptr(),
                       static_cast<size_t>(cpu.numel() * cpu.element_size())});
  }
  KO_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}}));

  ModelConfig config = config_;
  config.torch_dtype = dtype_name;
  KO_RETURN_IF_ERROR(WriteFileAtomically(dir + "/config.json", ModelConfigToJson(config)));
  return Status::Ok();
}

}  // namespace knockout::model
