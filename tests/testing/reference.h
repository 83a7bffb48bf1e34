// Test support: the reference checkpoints written by tests/reference/hf_reference.py (an
// independent Python implementation) and readers for the tensors stored beside them.
// Not thread-safe; tests only.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <map>
#include <string>

#include "formats/safetensors.h"

namespace knockout::testing {

// Directory holding the reference checkpoints (env KNOCKOUT_REFERENCE_DIR, set by ctest's
// fixture); empty if unset.
inline std::string ReferenceRoot() {
  const char* dir = std::getenv("KNOCKOUT_REFERENCE_DIR");
  return dir ? dir : "";
}

// e.g. ReferenceDir("llama_gqa-f32").
inline std::string ReferenceDir(const std::string& name) { return ReferenceRoot() + "/" + name; }

// The device the reference tests that honour it run on (env KNOCKOUT_TEST_DEVICE, e.g. "cuda",
// set by scripts/gpu-check.sh); cpu if unset. Results are compared on the CPU.
inline c10::Device TestDevice() {
  const char* device = std::getenv("KNOCKOUT_TEST_DEVICE");
  return c10::Device(device && *device ? device : "cpu");
}

// Reads every tensor of a safetensors file into CPU tensors (copies). Aborts the test on error.
inline std::map<std::string, at::Tensor> ReadTensors(const std::string& path) {
  auto file = formats::SafetensorsFile::Open(path);
  if (!file.ok()) {
    ADD_FAILURE() << file.status().ToString();
    return {};
  }
  std::map<std::string, at::Tensor> out;
  for (const formats::TensorInfo& info : (*file)->header().tensors) {
    at::ScalarType type = at::kFloat;
    switch (info.dtype) {
      case formats::DType::kF32: type = at::kFloat; break;
      case formats::DType::kBF16: type = at::kBFloat16; break;
      case formats::DType::kF16: type = at::kHalf; break;
      case formats::DType::kI64: type = at::kLong; break;
      default: ADD_FAILURE() << "unexpected dtype in " << path; return {};
    }
    at::Tensor t = at::empty(info.shape, at::TensorOptions().dtype(type));
    std::memcpy(t.data_ptr(), (*file)->TensorData(info), info.num_bytes());
    out[info.name] = t;
  }
  return out;
}

}  // namespace knockout::testing
