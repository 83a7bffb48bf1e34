// Bad checkpoints give a clear error naming the file and the tensor or field, never a crash.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "tests/testing/reference.h"
#include "worker/model/model.h"

namespace knockout::model {
namespace {

namespace fs = std::filesystem;
using knockout::testing::ReferenceDir;
using formats::DType;
using formats::SafetensorsFile;
using formats::TensorInfo;
using formats::TensorToWrite;
using formats::WriteSafetensors;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A fresh copy of a reference checkpoint that a test may damage.
std::string CopyCheckpoint(const std::string& name, const std::string& tag) {
  const std::string dir = ::testing::TempDir() + "/bad_checkpoint_" + tag;
  fs::remove_all(dir);
  fs::copy(ReferenceDir(name), dir, fs::copy_options::recursive);
  return dir;
}

// Rewrites model.safetensors with `edit` applied to the list of tensors.
void RewriteTensors(const std::string& dir, const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo& info : (*file)->header().tensors) {
    tensors.push_back({info.name, info.dtype, info.shape, (*file)->TensorData(info),
                       static_cast<size_t>(info.num_bytes())});
  }
  edit(tensors);
  const std::string tmp = dir + "/rewritten.safetensors";
  ASSERT_TRUE(WriteSafetensors(tmp, tensors).ok());
  fs::rename(tmp, dir + "/model.safetensors");
}

void EditConfig(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(ReadFile(dir + "/config.json"));
  edit(j);
  WriteFile(dir + "/config.json", j.dump());
}

void ExpectLoadError(const std::string& dir, const std::vector<std::string>& fragments) {
  auto model = Model::Load(dir, LoadOptions());
  ASSERT_FALSE(model.ok()) << "loaded a bad checkpoint: " << dir;
  for (const std::string& fragment : fragments) {
    EXPECT_NE(model.status().message().find(fragment), std::string::npos)
        << "missing \"" << fragment << "\" in: " << model.status().ToString();
  }
}

TEST(BadCheckpointTest, TruncatedSafetensors) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "truncated");
  const std::string path = dir + "/model.safetensors";
  fs::resize_file(path, fs::file_size(path) - 1000);
  ExpectLoadError(dir, {path});
}

TEST(BadCheckpointTest, HeaderLengthBeyondFile) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "header_len");
  const std::string path = dir + "/model.safetensors";
  std::string bytes = ReadFile(path);
  const uint64_t huge = bytes.size() + 10;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((huge >> (8 * i)) & 0xff);
  WriteFile(path, bytes);
  ExpectLoadError(dir, {path, "header"});
}

TEST(BadCheckpointTest, OffsetsOutOfRangeAndOverlapping) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "offsets");
  const std::string path = dir + "/model.safetensors";
  std::string bytes = ReadFile(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  const std::string name = "model.norm.weight";
  auto rewrite = [&](uint64_t begin, uint64_t end) {
    nlohmann::json h = header;
    h[name]["data_offsets"] = {begin, end};
    std::string text = h.dump();
    text.resize(n, ' ');  // same length: the data section stays where it is
    WriteFile(path, bytes.substr(0, 8) + text + bytes.substr(8 + n));
  };
  const uint64_t data_size = bytes.size() - 8 - n;
  rewrite(data_size, data_size + 256);
  ExpectLoadError(dir, {path, name, "data_offsets"});
  rewrite(0, 256);  // on top of the embedding
  ExpectLoadError(dir, {path, "overlap"});
}

TEST(BadCheckpointTest, UnknownDtype) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "dtype");
  const std::string path = dir + "/model.safetensors";
  std::string bytes = ReadFile(path);
  const size_t at = bytes.find("\"F32\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 5, "\"F31\"");
  WriteFile(path, bytes);
  ExpectLoadError(dir, {path, "F31"});
}

TEST(BadCheckpointTest, NonFloatWeight) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "int_weight");
  RewriteTensors(dir, [](std::vector<TensorToWrite>& tensors) {
    for (TensorToWrite& t : tensors) {
      if (t.name == "model.norm.weight") {
        t.dtype = DType::kI32;  // same byte count as F32
      }
    }
  });
  ExpectLoadError(dir, {"model.safetensors", "model.norm.weight", "I32"});
}

TEST(BadCheckpointTest, MissingTensor) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "missing");
  RewriteTensors(dir, [](std::vector<TensorToWrite>& tensors) {
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [](const TensorToWrite& t) {
                                   return t.name == "model.layers.1.self_attn.k_proj.weight";
                                 }),
                  tensors.end());
  });
  ExpectLoadError(dir, {"missing tensor model.layers.1.self_attn.k_proj.weight", "[32, 64]"});
}

TEST(BadCheckpointTest, UnexpectedTensor) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "unexpected");
  static const float value = 1.0f;
  RewriteTensors(dir, [](std::vector<TensorToWrite>& tensors) {
    tensors.push_back({"model.layers.0.self_attn.q_norm.weight", DType::kF32, {1}, &value, 4});
  });
  ExpectLoadError(dir, {"unexpected tensor model.layers.0.self_attn.q_norm.weight"});
}

TEST(BadCheckpointTest, ShapeContradictsConfig) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "shape");
  EditConfig(dir, [](nlohmann::json& j) { j["intermediate_size"] = 128; });
  ExpectLoadError(dir, {"model.safetensors", "mlp.gate_proj.weight", "[96, 64]", "[128, 64]",
                        "intermediate_size 128"});
}

TEST(BadCheckpointTest, MissingConfigField) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "config_field");
  EditConfig(dir, [](nlohmann::json& j) { j.erase("num_attention_heads"); });
  ExpectLoadError(dir, {dir + "/config.json", "field num_attention_heads: missing"});
}

TEST(BadCheckpointTest, UnknownArchitecture) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "arch");
  EditConfig(dir, [](nlohmann::json& j) { j["architectures"] = {"FalconForCausalLM"}; });
  auto model = Model::Load(dir, LoadOptions());
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(model.status().message().find("FalconForCausalLM"), std::string::npos);
}

TEST(BadCheckpointTest, MissingFilesAndShards) {
  ExpectLoadError("/nonexistent/dir", {"/nonexistent/dir/config.json"});
  const std::string dir = CopyCheckpoint("llama_gqa-f32-sharded", "shard");
  fs::remove(dir + "/model-00002-of-00003.safetensors");
  ExpectLoadError(dir, {"model.safetensors.index.json", "model-00002-of-00003.safetensors"});
  const std::string none = CopyCheckpoint("llama_gqa-f32", "no_weights");
  fs::remove(none + "/model.safetensors");
  ExpectLoadError(none, {"no model.safetensors"});
}

TEST(BadCheckpointTest, GarbageFilesNeverCrash) {
  const std::string dir = CopyCheckpoint("llama_gqa-f32", "garbage");
  const std::string path = dir + "/model.safetensors";
  const std::string original = ReadFile(path);
  // Deterministic damage at many places of the header: every outcome must be a clean Status.
  for (size_t i = 0; i < 600; i += 7) {
    std::string bytes = original;
    bytes[i] = static_cast<char>(bytes[i] ^ 0x5a);
    WriteFile(path, bytes);
    auto model = Model::Load(dir, LoadOptions());
    if (!model.ok()) {
      EXPECT_FALSE(model.status().message().empty());
    }
  }
}

}  // namespace
}  // namespace knockout::model
