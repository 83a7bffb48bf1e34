#include "formats/sae.h"

#include <sys/stat.h>
#include <sys/types.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "formats/npy.h"
#include "formats/safetensors.h"

// What each source means, checked against the libraries' own code (not a converter's):
//
// SAELens (sae_lens/saes/*.py, loading/pretrained_sae_loaders.py): cfg.json defaults as its
// handle_config_defaulting / handle_pre_6_0_config: `architecture` "standard",
// `apply_b_dec_to_input` true, `normalize_activations` "none" (a bool: false -> "none",
// true -> "expected_average_only_in"; null -> "none"); pre-6.0 `hook_point` is `hook_name`;
// pre-6.0 TopK is `activation_fn[_str]: "topk"` with `activation_fn_kwargs.k`. 6.x keeps the hook
// under `metadata`. JumpReLU files hold `threshold` (training keeps `log_threshold` and converts
// on save; we accept either). Gated files have no `b_enc`. A `scaling_factor` tensor of d_sae
// entries is the *finetuning* scaling factor (feature activations are multiplied by it before
// decoding); SAELens drops it when all ones and otherwise requires `finetuning_scaling_factor`.
// We fold it into W_dec's rows, which is the same decode.
//
// EleutherAI sparsify (sparsify/sparse_coder.py, fused_encoder.py, config.py):
//   encode: x - b_dec (unless `transcode`), pre = ReLU(x W^T + b) with W = encoder.weight
//   [num_latents, d_in], then the top k of those (so ReLU before top-k: the same values as
//   top-k then ReLU); decode: top_acts @ W_dec [num_latents, d_in] + b_dec.
//   num_latents = cfg.num_latents or d_in * expansion_factor (defaults 0 and 32); `d_in` is in
//   cfg.json. `multi_topk` only adds a training loss over the top 4k (the forward pass uses k),
//   so it is read as plain TopK. `skip_connection` (W_skip), `transcode`, `activation:
//   groupmax`, `embed_skip` and `gram_lookup` change the computation: Unimplemented.
//
// Gemma Scope (SAELens' gemma_2 loader): params.npz, JumpReLU, apply_b_dec_to_input false, no
// normalisation; keys `w_*` are read as `W_*`; the `embedding` SAEs need a sqrt(d_model)
// rescale, which we do not do (Unimplemented).

namespace knockout::formats {
namespace {

using Json = nlohmann::json;

std::string Quote(const std::string& s) { return "\"" + s + "\""; }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool AllDigits(const std::string& s) {
  if (s.empty()) return false;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Where the files are.

struct SaeFiles {
  SaeSource source = SaeSource::kSaeLens;
  std::string dir;
  std::string cfg;      // empty for Gemma Scope
  std::string weights;  // sae_weights.safetensors, sae.safetensors or params.npz
};

StatusOr<SaeFiles> LocateFiles(const std::string& path) {
  SaeFiles files;
  if (IsRegularFile(path)) {
    const std::string base = BaseName(path);
    if (EndsWith(base, ".npz")) {
      files.source = SaeSource::kGemmaScope;
      files.dir = DirName(path);
      files.weights = path;
      return files;
    }
    if (base != "cfg.json" && base != "sae_weights.safetensors" && base != "sae.safetensors") {
      return Status::InvalidArgument(path + ": not an SAE (expected a directory with cfg.json "
                                     "and sae_weights.safetensors or sae.safetensors, or a "
                                     "params.npz)");
    }
    files.dir = DirName(path);
  } else if (IsDirectory(path)) {
    files.dir = path;
  } else {
    return Status::NotFound(path + ": no such file or directory");
  }
  const std::string saelens = JoinPath(files.dir, "sae_weights.safetensors");
  const std::string sparsify = JoinPath(files.dir, "sae.safetensors");
  const std::string npz = JoinPath(files.dir, "params.npz");
  // One directory holding two layouts would be odd; SAELens' name wins, then sparsify's.
  if (IsRegularFile(saelens)) {
    files.source = SaeSource::kSaeLens;
    files.weights = saelens;
  } else if (IsRegularFile(sparsify)) {
    files.source = SaeSource::kSparsify;
    files.weights = sparsify;
  } else if (IsRegularFile(npz)) {
    files.source = SaeSource::kGemmaScope;
    files.weights = npz;
    return files;
  } else {
    return Status::NotFound(files.dir + ": no SAE weights (sae_weights.safetensors for SAELens, "
                            "sae.safetensors for sparsify, params.npz for Gemma Scope)");
  }
  files.cfg = JoinPath(files.dir, "cfg.json");
  if (!IsRegularFile(files.cfg)) {
    return Status::NotFound(files.cfg + ": not found (" + SaeSourceName(files.source) +
                            " keeps its configuration there, beside " + BaseName(files.weights) +
                            ")");
  }
  return files;
}

// ---------------------------------------------------------------------------------------------
// cfg.json fields.

StatusOr<Json> ReadJsonObject(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError(path + ": cannot open: " + std::strerror(errno));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return Status::IOError(path + ": read failed");
  Json json;
  try {
    json = Json::parse(buffer.str());
  } catch (const Json::exception& e) {
    return Status::Corruption(path + ": not valid JSON: " + e.what());
  }
  if (!json.is_object()) {
    return Status::InvalidArgument(path + ": expected a JSON object, got " +
                                   std::string(json.type_name()));
  }
  return json;
}

std::string FieldPrefix(const std::string& label, const std::string& field) {
  return label + ": field " + Quote(field) + ": ";
}

// A field that is absent or null reads as nullopt.
const Json* Field(const Json& object, const std::string& key) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

StatusOr<std::optional<int64_t>> OptionalInt(const Json& object, const std::string& key,
                                             const std::string& label) {
  const Json* value = Field(object, key);
  if (value == nullptr) return std::optional<int64_t>();
  if (value->is_number_unsigned()) {
    const uint64_t v = value->get<uint64_t>();
    if (v > static_cast<uint64_t>(INT64_MAX)) {
      return Status::InvalidArgument(FieldPrefix(label, key) + "does not fit in 64 bits");
    }
    return std::optional<int64_t>(static_cast<int64_t>(v));
  }
  if (value->is_number_integer()) return std::optional<int64_t>(value->get<int64_t>());
  return Status::InvalidArgument(FieldPrefix(label, key) + "expected an integer, got " +
                                 std::string(value->type_name()) + " " + value->dump());
}

StatusOr<int64_t> RequiredPositiveInt(const Json& object, const std::string& key,
                                      const std::string& label, const std::string& why = "") {
  KO_ASSIGN_OR_RETURN(const std::optional<int64_t> value, OptionalInt(object, key, label));
  if (!value) {
    return Status::InvalidArgument(label + ": missing field " + Quote(key) + why);
  }
  if (*value <= 0) {
    return Status::InvalidArgument(FieldPrefix(label, key) + "expected a positive integer, got " +
                                   std::to_string(*value));
  }
  return *value;
}

StatusOr<std::optional<bool>> OptionalBool(const Json& object, const std::string& key,
                                           const std::string& label) {
  const Json* value = Field(object, key);
  if (value == nullptr) return std::optional<bool>();
  if (!value->is_boolean()) {
    return Status::InvalidArgument(FieldPrefix(label, key) + "expected true or false, got " +
                                   value->dump());
  }
  return std::optional<bool>(value->get<bool>());
}

StatusOr<std::optional<std::string>> OptionalString(const Json& object, const std::string& key,
                                                    const std::string& label) {
  const Json* value = Field(object, key);
  if (value == nullptr) return std::optional<std::string>();
  if (!value->is_string()) {
    return Status::InvalidArgument(FieldPrefix(label, key) + "expected a string, got " +
                                   value->dump());
  }
  return std::optional<std::string>(value->get<std::string>());
}

// ---------------------------------------------------------------------------------------------
// The tensors of one file, whatever the container, converted to float32 on demand.

const char* SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kF64: return "float64";
    default: return DTypeName(dtype);
  }
}

class TensorTable {
 public:
  struct Entry {
    std::vector<int64_t> shape;
    std::string dtype;  // "float32", ...
    // safetensors: the mapped bytes; npz: the values already converted (or none, headers only).
    const uint8_t* raw = nullptr;
    DType raw_dtype = DType::kF32;
    SaeTensor values;
  };

  static StatusOr<TensorTable> FromSafetensors(const std::string& path) {
    TensorTable table;
    table.path_ = path;
    KO_ASSIGN_OR_RETURN(table.file_, SafetensorsFile::Open(path));
    for (const TensorInfo& info : table.file_->header().tensors) {
      Entry entry;
      entry.shape = info.shape;
      entry.raw_dtype = info.dtype;
      entry.dtype = SafetensorsDTypeName(info.dtype);
      entry.raw = table.file_->TensorData(info);
      table.entries_.emplace(info.name, std::move(entry));
    }
    return table;
  }

  static StatusOr<TensorTable> FromNpz(const std::string& path, bool headers_only) {
    TensorTable table;
    table.path_ = path;
    table.npz_ = true;
    KO_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
    KO_ASSIGN_OR_RETURN(std::vector<NpzArray> arrays,
                        ReadNpz(file->data(), file->size(), path, headers_only));
    for (NpzArray& array : arrays) {
      Entry entry;
      entry.shape = array.tensor.shape;
      entry.dtype = array.dtype;
      entry.values = std::move(array.tensor);
      // SAELens' Gemma Scope loader reads `w_enc` as `W_enc`.
      std::string name = array.name;
      if (name.rfind("w_", 0) == 0) name = "W_" + name.substr(2);
      if (table.entries_.count(name)) {
        return Status::InvalidArgument(path + ": holds both " + array.name + ".npy and " + name +
                                       ".npy");
      }
      table.file_names_[name] = array.name;
      table.entries_.emplace(std::move(name), std::move(entry));
    }
    return table;
  }

  const std::string& path() const { return path_; }
  const Entry* Find(const std::string& name) const {
    const auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }
  // "<file>: tensor "W_enc"" or "<file>: W_enc.npy".
  std::string Label(const std::string& name) const {
    if (!npz_) return path_ + ": tensor " + Quote(name);
    const auto it = file_names_.find(name);
    return path_ + ": " + (it == file_names_.end() ? name : it->second) + ".npy";
  }

  // The float32 values of `name` (which must exist); InvalidArgument for a non-float dtype.
  StatusOr<SaeTensor> Load(const std::string& name) {
    Entry& entry = entries_.at(name);
    if (npz_) return std::move(entry.values);
    SaeTensor tensor;
    tensor.shape = entry.shape;
    uint64_t count = 1;
    for (const int64_t d : entry.shape) count *= static_cast<uint64_t>(d);  // validated header
    tensor.values.resize(static_cast<size_t>(count));
    if (count == 0) return tensor;  // (memcpy from/to null is undefined even for 0 bytes)
    float* out = tensor.values.data();
    const uint8_t* in = entry.raw;
    switch (entry.raw_dtype) {
      case DType::kF32:
        std::memcpy(out, in, count * 4);
        break;
      case DType::kF64:
        for (uint64_t i = 0; i < count; ++i) {
          double d;
          std::memcpy(&d, in + 8 * i, 8);
          out[i] = static_cast<float>(d);
        }
        break;
      case DType::kF16:
        for (uint64_t i = 0; i < count; ++i) {
          uint16_t h;
          std::memcpy(&h, in + 2 * i, 2);
          out[i] = HalfToFloat(h);
        }
        break;
      case DType::kBF16:
        for (uint64_t i = 0; i < count; ++i) {
          uint16_t h;
          std::memcpy(&h, in + 2 * i, 2);
          out[i] = BFloat16ToFloat(h);
        }
        break;
      default:
        return Status::InvalidArgument(Label(name) + ": dtype " + DTypeName(entry.raw_dtype) +
                                       " is not a float type (F32, F16, BF16, F64)");
    }
    return tensor;
  }

  // InvalidArgument unless `name` has a float dtype (checked before anything is converted).
  Status CheckFloat(const std::string& name) const {
    const Entry* entry = Find(name);
    if (npz_ || entry == nullptr) return Status::Ok();
    switch (entry->raw_dtype) {
      case DType::kF32:
      case DType::kF64:
      case DType::kF16:
      case DType::kBF16:
        return Status::Ok();
      default:
        return Status::InvalidArgument(Label(name) + ": dtype " + DTypeName(entry->raw_dtype) +
                                       " is not a float type (F32, F16, BF16, F64)");
    }
  }

 private:
  std::string path_;
  bool npz_ = false;
  std::unique_ptr<SafetensorsFile> file_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> file_names_;  // npz: canonical name -> member name
};

// ---------------------------------------------------------------------------------------------
// Shapes and loading.

// InvalidArgument unless `name` is present, float, and shaped `expected`; `why` says where the
// expected shape comes from ("d_sae x d_in from cfg.json").
Status CheckTensor(const TensorTable& table, const std::string& name,
                   const std::vector<int64_t>& expected, const std::string& why) {
  const TensorTable::Entry* entry = table.Find(name);
  if (entry == nullptr) {
    return Status::InvalidArgument(table.path() + ": missing tensor " + Quote(name));
  }
  KO_RETURN_IF_ERROR(table.CheckFloat(name));
  if (entry->shape != expected) {
    return Status::InvalidArgument(table.Label(name) + ": shape " + ShapeString(entry->shape) +
                                   ", expected " + ShapeString(expected) + " (" + why + ")");
  }
  return Status::Ok();
}

// The two dimensions of a 2-D tensor that fixes d_in and d_sae (Gemma Scope's W_enc,
// sparsify's encoder.weight).
Status CheckMatrix(const TensorTable& table, const std::string& name, int64_t* rows,
                   int64_t* cols) {
  const TensorTable::Entry* entry = table.Find(name);
  if (entry == nullptr) {
    return Status::InvalidArgument(table.path() + ": missing tensor " + Quote(name));
  }
  KO_RETURN_IF_ERROR(table.CheckFloat(name));
  if (entry->shape.size() != 2 || entry->shape[0] <= 0 || entry->shape[1] <= 0) {
    return Status::InvalidArgument(table.Label(name) + ": shape " + ShapeString(entry->shape) +
                                   ", expected a non-empty matrix");
  }
  *rows = entry->shape[0];
  *cols = entry->shape[1];
  return Status::Ok();
}

Status CheckK(const SaeConfig& config, const std::string& label) {
  if (config.k <= 0 || config.k > config.d_sae) {
    return Status::InvalidArgument(FieldPrefix(label, "k") + "k " + std::to_string(config.k) +
                                   " must be in [1, d_sae " + std::to_string(config.d_sae) + "]");
  }
  return Status::Ok();
}

// A `scaling_factor` / `finetuning_scaling_factor` tensor of d_sae entries multiplies the
// feature activations before decoding (SAELens); folded into W_dec's rows it is the same decode.
Status ApplyFinetuningScale(TensorTable& table, const std::string& name, bool load,
                            SaeWeights* sae) {
  const int64_t d_sae = sae->config.d_sae;
  KO_RETURN_IF_ERROR(CheckTensor(table, name, {d_sae},
                                 "a finetuning scaling factor per latent, d_sae " +
                                     std::to_string(d_sae)));
  if (!load) return Status::Ok();
  KO_ASSIGN_OR_RETURN(const SaeTensor scale, table.Load(name));
  const int64_t d_in = sae->config.d_in;
  for (int64_t i = 0; i < d_sae; ++i) {
    const float s = scale.values[static_cast<size_t>(i)];
    if (s == 1.0f) continue;
    float* row = sae->W_dec.values.data() + i * d_in;
    for (int64_t j = 0; j < d_in; ++j) row[j] *= s;
  }
  return Status::Ok();
}

// Loads the canonical tensors that the architecture needs (shapes already checked).
Status LoadCanonical(TensorTable& table, const std::string& w_enc_name, SaeWeights* sae) {
  const SaeConfig& c = sae->config;
  KO_ASSIGN_OR_RETURN(sae->W_enc, table.Load(w_enc_name));
  KO_ASSIGN_OR_RETURN(sae->W_dec, table.Load("W_dec"));
  KO_ASSIGN_OR_RETURN(sae->b_dec, table.Load("b_dec"));
  if (table.Find("b_enc") != nullptr) {
    KO_ASSIGN_OR_RETURN(sae->b_enc, table.Load("b_enc"));
  }
  if (c.architecture == SaeArchitecture::kJumpRelu) {
    if (table.Find("threshold") != nullptr) {
      KO_ASSIGN_OR_RETURN(sae->threshold, table.Load("threshold"));
    } else {
      // SAELens' training SAE keeps log_threshold; threshold = exp(log_threshold).
      KO_ASSIGN_OR_RETURN(sae->threshold, table.Load("log_threshold"));
      for (float& v : sae->threshold.values) v = std::exp(v);
    }
  }
  if (c.architecture == SaeArchitecture::kGated) {
    KO_ASSIGN_OR_RETURN(sae->b_gate, table.Load("b_gate"));
    KO_ASSIGN_OR_RETURN(sae->r_mag, table.Load("r_mag"));
    KO_ASSIGN_OR_RETURN(sae->b_mag, table.Load("b_mag"));
  }
  return Status::Ok();
}

// Shapes of the tensors every source shares once named canonically (W_enc checked by caller).
Status CheckCommonTensors(const TensorTable& table, const SaeConfig& c, const std::string& why) {
  const int64_t d_in = c.d_in;
  const int64_t d_sae = c.d_sae;
  KO_RETURN_IF_ERROR(CheckTensor(table, "W_dec", {d_sae, d_in}, "d_sae x d_in" + why));
  KO_RETURN_IF_ERROR(CheckTensor(table, "b_dec", {d_in}, "d_in" + why));
  if (c.architecture == SaeArchitecture::kGated) {
    // SAELens' gated SAE has no b_enc (b_gate and b_mag take its place).
    if (table.Find("b_enc") != nullptr) {
      KO_RETURN_IF_ERROR(CheckTensor(table, "b_enc", {d_sae}, "d_sae" + why));
    }
    for (const char* name : {"b_gate", "r_mag", "b_mag"}) {
      if (table.Find(name) == nullptr) {
        return Status::InvalidArgument(table.path() + ": missing tensor " + Quote(name) +
                                       " (architecture gated needs b_gate, r_mag, b_mag)");
      }
      KO_RETURN_IF_ERROR(CheckTensor(table, name, {d_sae}, "d_sae" + why));
    }
  } else {
    KO_RETURN_IF_ERROR(CheckTensor(table, "b_enc", {d_sae}, "d_sae" + why));
  }
  if (c.architecture == SaeArchitecture::kJumpRelu) {
    const char* name = table.Find("threshold") != nullptr       ? "threshold"
                       : table.Find("log_threshold") != nullptr ? "log_threshold"
                                                                : nullptr;
    if (name == nullptr) {
      return Status::InvalidArgument(table.path() + ": missing tensor \"threshold\" (architecture "
                                     "jumprelu needs one threshold per latent)");
    }
    KO_RETURN_IF_ERROR(CheckTensor(table, name, {d_sae}, "d_sae" + why));
  }
  return Status::Ok();
}

std::string RealPath(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return path;
  std::string out = resolved;
  std::free(resolved);
  return out;
}

std::vector<std::string> PathComponents(const std::string& path) {
  std::vector<std::string> parts;
  std::string part;
  for (const char c : path) {
    if (c == '/') {
      if (!part.empty()) parts.push_back(part);
      part.clear();
    } else {
      part += c;
    }
  }
  if (!part.empty()) parts.push_back(part);
  return parts;
}

// ---------------------------------------------------------------------------------------------
// SAELens.

StatusOr<SaeNormalization> ParseNormalization(const Json& cfg, const std::string& label) {
  const Json* value = Field(cfg, "normalize_activations");
  if (value == nullptr) return SaeNormalization::kNone;
  if (value->is_boolean()) {
    // Before the string values, `true` meant the April update's expected-average scaling.
    return value->get<bool>() ? SaeNormalization::kExpectedAverageOnlyIn : SaeNormalization::kNone;
  }
  if (!value->is_string()) {
    return Status::InvalidArgument(FieldPrefix(label, "normalize_activations") +
                                   "expected a string, got " + value->dump());
  }
  const std::string name = value->get<std::string>();
  if (name == "none") return SaeNormalization::kNone;
  if (name == "expected_average_only_in") return SaeNormalization::kExpectedAverageOnlyIn;
  if (name == "constant_norm_rescale") return SaeNormalization::kConstantNormRescale;
  if (name == "layer_norm") {
    return Status::Unimplemented(FieldPrefix(label, "normalize_activations") +
                                 "layer_norm is not supported (none, expected_average_only_in, "
                                 "constant_norm_rescale)");
  }
  return Status::InvalidArgument(FieldPrefix(label, "normalize_activations") + "unknown value " +
                                 Quote(name) +
                                 " (none, expected_average_only_in, constant_norm_rescale)");
}

StatusOr<std::string> SaeLensHook(const Json& cfg, const std::string& label) {
  for (const char* meta_key : {"metadata", "meta"}) {
    const Json* meta = Field(cfg, meta_key);
    if (meta == nullptr) continue;
    if (!meta->is_object()) {
      return Status::InvalidArgument(FieldPrefix(label, meta_key) + "expected an object, got " +
                                     meta->dump());
    }
    KO_ASSIGN_OR_RETURN(const std::optional<std::string> hook,
                        OptionalString(*meta, "hook_name", label + ": " + meta_key));
    if (hook) return *hook;
  }
  for (const char* key : {"hook_name", "hook_point"}) {
    KO_ASSIGN_OR_RETURN(const std::optional<std::string> hook, OptionalString(cfg, key, label));
    if (hook) return *hook;
  }
  return std::string();
}

Status RefuseHeadIndex(const Json& cfg, const std::string& label) {
  std::vector<std::pair<const Json*, std::string>> places = {
      {&cfg, "hook_head_index"}, {&cfg, "hook_point_head_index"}};
  for (const char* meta_key : {"metadata", "meta"}) {
    const Json* meta = Field(cfg, meta_key);
    if (meta != nullptr && meta->is_object()) places.push_back({meta, "hook_head_index"});
  }
  for (const auto& [object, key] : places) {
    const Json* value = Field(*object, key);
    if (value != nullptr) {
      return Status::Unimplemented(FieldPrefix(label, key) + "SAEs on one attention head (" +
                                   value->dump() + ") are not supported");
    }
  }
  return Status::Ok();
}

StatusOr<SaeWeights> ReadSaeLens(const SaeFiles& files, bool load) {
  const std::string& label = files.cfg;
  KO_ASSIGN_OR_RETURN(const Json cfg, ReadJsonObject(files.cfg));
  SaeWeights sae;
  SaeConfig& c = sae.config;
  c.source = SaeSource::kSaeLens;

  KO_ASSIGN_OR_RETURN(const std::optional<std::string> arch, OptionalString(cfg, "architecture",
                                                                            label));
  const std::string architecture = arch.value_or("standard");
  if (architecture == "standard") {
    c.architecture = SaeArchitecture::kStandard;
  } else if (architecture == "jumprelu") {
    c.architecture = SaeArchitecture::kJumpRelu;
  } else if (architecture == "topk") {
    c.architecture = SaeArchitecture::kTopK;
  } else if (architecture == "gated") {
    c.architecture = SaeArchitecture::kGated;
  } else {
    return Status::InvalidArgument(FieldPrefix(label, "architecture") + "unknown architecture " +
                                   Quote(architecture) + " (standard, jumprelu, topk, gated)");
  }
  // Before 6.0, TopK was `architecture: standard` with `activation_fn_str: topk`.
  for (const char* key : {"activation_fn_str", "activation_fn"}) {
    KO_ASSIGN_OR_RETURN(const std::optional<std::string> fn, OptionalString(cfg, key, label));
    if (!fn) continue;
    if (*fn == "topk" && (c.architecture == SaeArchitecture::kStandard ||
                          c.architecture == SaeArchitecture::kTopK)) {
      c.architecture = SaeArchitecture::kTopK;
    } else if (*fn != "relu") {
      return Status::Unimplemented(FieldPrefix(label, key) + "activation " + Quote(*fn) +
                                   " with architecture " + architecture + " is not supported");
    }
    break;
  }

  KO_ASSIGN_OR_RETURN(c.d_in, RequiredPositiveInt(cfg, "d_in", label));
  KO_ASSIGN_OR_RETURN(c.d_sae, RequiredPositiveInt(cfg, "d_sae", label));
  if (c.architecture == SaeArchitecture::kTopK) {
    KO_ASSIGN_OR_RETURN(std::optional<int64_t> k, OptionalInt(cfg, "k", label));
    const Json* kwargs = Field(cfg, "activation_fn_kwargs");
    if (!k && kwargs != nullptr && kwargs->is_object()) {
      KO_ASSIGN_OR_RETURN(k, OptionalInt(*kwargs, "k", label + ": activation_fn_kwargs"));
    }
    if (!k) {
      return Status::InvalidArgument(label + ": missing field \"k\" (architecture topk needs it)");
    }
    c.k = *k;
    KO_RETURN_IF_ERROR(CheckK(c, label));
  }
  KO_ASSIGN_OR_RETURN(const std::optional<bool> apply,
                      OptionalBool(cfg, "apply_b_dec_to_input", label));
  c.apply_b_dec_to_input = apply.value_or(true);  // SAELens' default
  KO_ASSIGN_OR_RETURN(c.normalization, ParseNormalization(cfg, label));
  KO_ASSIGN_OR_RETURN(c.hook, SaeLensHook(cfg, label));
  KO_RETURN_IF_ERROR(RefuseHeadIndex(cfg, label));

  KO_ASSIGN_OR_RETURN(TensorTable table, TensorTable::FromSafetensors(files.weights));
  sae.path = files.dir;
  const std::string why = ", from " + label;
  KO_RETURN_IF_ERROR(CheckTensor(table, "W_enc", {c.d_in, c.d_sae}, "d_in x d_sae" + why));
  KO_RETURN_IF_ERROR(CheckCommonTensors(table, c, why));
  c.dtype = table.Find("W_enc")->dtype;

  // The expected-average scale: cfg.json, else a one-element `scaling_factor` tensor. A
  // `scaling_factor` of d_sae entries is the finetuning factor instead (below).
  const TensorTable::Entry* scaling = table.Find("scaling_factor");
  const bool scalar_scaling =
      scaling != nullptr && (scaling->shape.empty() ||
                             (scaling->shape == std::vector<int64_t>{1} && c.d_sae != 1));
  if (c.normalization == SaeNormalization::kExpectedAverageOnlyIn) {
    std::optional<double> scale;
    for (const char* key : {"scaling_factor", "norm_scaling_factor"}) {
      const Json* value = Field(cfg, key);
      if (value == nullptr) continue;
      if (!value->is_number()) {
        return Status::InvalidArgument(FieldPrefix(label, key) + "expected a number, got " +
                                       value->dump());
      }
      scale = value->get<double>();
      if (!std::isfinite(*scale) || *scale <= 0) {
        return Status::InvalidArgument(FieldPrefix(label, key) +
                                       "expected a positive number, got " + value->dump());
      }
      break;
    }
    if (!scale && scalar_scaling) {
      KO_RETURN_IF_ERROR(table.CheckFloat("scaling_factor"));
      KO_ASSIGN_OR_RETURN(const SaeTensor t, table.Load("scaling_factor"));
      scale = t.values.at(0);
      if (!std::isfinite(*scale) || *scale <= 0) {
        return Status::InvalidArgument(table.Label("scaling_factor") +
                                       ": expected a positive scale, got " +
                                       std::to_string(*scale));
      }
    }
    if (!scale) {
      return Status::InvalidArgument(
          FieldPrefix(label, "normalize_activations") +
          "expected_average_only_in needs the scale, but neither cfg.json's \"scaling_factor\" "
          "nor a one-element tensor \"scaling_factor\" in " + files.weights +
          " gives it (SAELens keeps it in pretrained_saes.yaml as norm_scaling_factor; add it "
          "to cfg.json)");
    }
    c.scaling_factor = *scale;
  }

  if (load) KO_RETURN_IF_ERROR(LoadCanonical(table, "W_enc", &sae));
  if (table.Find("finetuning_scaling_factor") != nullptr) {
    KO_RETURN_IF_ERROR(ApplyFinetuningScale(table, "finetuning_scaling_factor", load, &sae));
  }
  if (scaling != nullptr && !(scalar_scaling &&
                              c.normalization == SaeNormalization::kExpectedAverageOnlyIn)) {
    KO_RETURN_IF_ERROR(ApplyFinetuningScale(table, "scaling_factor", load, &sae));
  }
  return sae;
}

// ---------------------------------------------------------------------------------------------
// EleutherAI sparsify.

// `layers.L` is the output of decoder layer L (resid_post); `layers.L.mlp` its MLP's output.
std::string SparsifyHook(const std::string& dir) {
  const std::string name = BaseName(RealPath(dir));
  const std::string prefix = "layers.";
  if (name.rfind(prefix, 0) != 0) return "";
  const std::string rest = name.substr(prefix.size());
  if (AllDigits(rest)) return "blocks." + rest + ".hook_resid_post";
  const size_t dot = rest.find('.');
  if (dot != std::string::npos && AllDigits(rest.substr(0, dot)) && rest.substr(dot) == ".mlp") {
    return "blocks." + rest.substr(0, dot) + ".hook_mlp_out";
  }
  return "";
}

StatusOr<SaeWeights> ReadSparsify(const SaeFiles& files, bool load) {
  const std::string& label = files.cfg;
  KO_ASSIGN_OR_RETURN(const Json cfg, ReadJsonObject(files.cfg));
  SaeWeights sae;
  SaeConfig& c = sae.config;
  c.source = SaeSource::kSparsify;
  c.architecture = SaeArchitecture::kTopK;
  c.apply_b_dec_to_input = true;
  c.normalization = SaeNormalization::kNone;

  for (const char* key : {"skip_connection", "transcode", "embed_skip", "gram_lookup"}) {
    KO_ASSIGN_OR_RETURN(const std::optional<bool> on, OptionalBool(cfg, key, label));
    if (on.value_or(false)) {
      return Status::Unimplemented(FieldPrefix(label, key) +
                                   "true changes the encoder or decoder; only plain TopK sparse "
                                   "autoencoders are supported");
    }
  }
  KO_ASSIGN_OR_RETURN(const std::optional<std::string> activation,
                      OptionalString(cfg, "activation", label));
  if (activation && *activation != "topk") {
    return Status::Unimplemented(FieldPrefix(label, "activation") + Quote(*activation) +
                                 " is not supported (topk)");
  }
  KO_ASSIGN_OR_RETURN(c.k, RequiredPositiveInt(cfg, "k", label, " (sparsify's TopK needs it)"));
  KO_ASSIGN_OR_RETURN(const std::optional<int64_t> num_latents,
                      OptionalInt(cfg, "num_latents", label));
  KO_ASSIGN_OR_RETURN(const std::optional<int64_t> expansion,
                      OptionalInt(cfg, "expansion_factor", label));
  KO_ASSIGN_OR_RETURN(const std::optional<int64_t> cfg_d_in, OptionalInt(cfg, "d_in", label));
  if (num_latents && *num_latents < 0) {
    return Status::InvalidArgument(FieldPrefix(label, "num_latents") + "negative");
  }
  if (expansion && *expansion <= 0) {
    return Status::InvalidArgument(FieldPrefix(label, "expansion_factor") +
                                   "expected a positive integer");
  }

  KO_ASSIGN_OR_RETURN(TensorTable table, TensorTable::FromSafetensors(files.weights));
  sae.path = files.dir;
  if (table.Find("W_skip") != nullptr) {
    return Status::Unimplemented(table.Label("W_skip") +
                                 ": skip connections are not supported");
  }
  int64_t rows = 0;
  int64_t cols = 0;
  KO_RETURN_IF_ERROR(CheckMatrix(table, "encoder.weight", &rows, &cols));
  if (cfg_d_in && *cfg_d_in != cols) {
    return Status::InvalidArgument(table.Label("encoder.weight") + ": shape [" +
                                   std::to_string(rows) + ", " + std::to_string(cols) +
                                   "] disagrees with d_in " + std::to_string(*cfg_d_in) +
                                   " in " + label);
  }
  c.d_in = cols;
  c.d_sae = rows;
  int64_t expected_latents = num_latents.value_or(0);
  std::string from = "num_latents " + std::to_string(expected_latents);
  if (expected_latents == 0) {
    const int64_t factor = expansion.value_or(32);  // sparsify's default
    if (__builtin_mul_overflow(c.d_in, factor, &expected_latents)) expected_latents = -1;
    from = "d_in " + std::to_string(c.d_in) + " x expansion_factor " + std::to_string(factor);
  }
  if (expected_latents != rows) {
    return Status::InvalidArgument(table.Label("encoder.weight") + ": " + std::to_string(rows) +
                                   " latents, but " + label + " gives " + from);
  }
  KO_RETURN_IF_ERROR(CheckK(c, label));
  const std::string why = ", from encoder.weight [d_sae, d_in]";
  KO_RETURN_IF_ERROR(CheckTensor(table, "encoder.bias", {c.d_sae}, "d_sae" + why));
  KO_RETURN_IF_ERROR(CheckTensor(table, "W_dec", {c.d_sae, c.d_in}, "d_sae x d_in" + why));
  KO_RETURN_IF_ERROR(CheckTensor(table, "b_dec", {c.d_in}, "d_in" + why));
  c.dtype = table.Find("encoder.weight")->dtype;
  c.hook = SparsifyHook(files.dir);
  if (!load) return sae;

  KO_ASSIGN_OR_RETURN(const SaeTensor encoder, table.Load("encoder.weight"));
  sae.W_enc.shape = {c.d_in, c.d_sae};
  sae.W_enc.values.resize(encoder.values.size());
  for (int64_t j = 0; j < c.d_sae; ++j) {
    for (int64_t i = 0; i < c.d_in; ++i) {
      sae.W_enc.values[static_cast<size_t>(i * c.d_sae + j)] =
          encoder.values[static_cast<size_t>(j * c.d_in + i)];
    }
  }
  KO_ASSIGN_OR_RETURN(sae.b_enc, table.Load("encoder.bias"));
  KO_ASSIGN_OR_RETURN(sae.W_dec, table.Load("W_dec"));
  KO_ASSIGN_OR_RETURN(sae.b_dec, table.Load("b_dec"));
  return sae;
}

// ---------------------------------------------------------------------------------------------
// Gemma Scope.

// `.../gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz`: layer 12's
// resid_post; a component with "-mlp" means hook_mlp_out, "-att" attn.hook_z.
StatusOr<std::string> GemmaScopeHook(const std::string& weights) {
  const std::vector<std::string> parts = PathComponents(RealPath(weights));
  std::string layer;
  bool mlp = false;
  bool attn = false;
  for (const std::string& part : parts) {
    if (part == "embedding") {
      return Status::Unimplemented(weights + ": Gemma Scope embedding SAEs (rescaled by "
                                   "sqrt(d_model)) are not supported");
    }
    if (part.rfind("gemma-scope", 0) == 0 && part.find("transcoder") != std::string::npos) {
      return Status::Unimplemented(weights + ": Gemma Scope transcoders (MLP input to output) "
                                   "are not sparse autoencoders");
    }
    if (part.rfind("layer_", 0) == 0 && AllDigits(part.substr(6))) layer = part.substr(6);
    if (part.find("-mlp") != std::string::npos) mlp = true;
    if (part.find("-att") != std::string::npos) attn = true;
  }
  if (layer.empty()) return std::string();
  if (mlp) return "blocks." + layer + ".hook_mlp_out";
  if (attn) return "blocks." + layer + ".attn.hook_z";
  return "blocks." + layer + ".hook_resid_post";
}

StatusOr<SaeWeights> ReadGemmaScope(const SaeFiles& files, bool load) {
  SaeWeights sae;
  SaeConfig& c = sae.config;
  c.source = SaeSource::kGemmaScope;
  c.architecture = SaeArchitecture::kJumpRelu;
  c.apply_b_dec_to_input = false;
  c.normalization = SaeNormalization::kNone;
  KO_ASSIGN_OR_RETURN(c.hook, GemmaScopeHook(files.weights));
  KO_ASSIGN_OR_RETURN(TensorTable table, TensorTable::FromNpz(files.weights, !load));
  sae.path = files.weights;
  KO_RETURN_IF_ERROR(CheckMatrix(table, "W_enc", &c.d_in, &c.d_sae));
  KO_RETURN_IF_ERROR(CheckCommonTensors(table, c, ", from W_enc [d_in, d_sae]"));
  c.dtype = table.Find("W_enc")->dtype;
  if (load) KO_RETURN_IF_ERROR(LoadCanonical(table, "W_enc", &sae));
  if (table.Find("scaling_factor") != nullptr) {
    KO_RETURN_IF_ERROR(ApplyFinetuningScale(table, "scaling_factor", load, &sae));
  }
  return sae;
}

StatusOr<SaeWeights> Read(const std::string& path, const std::string& hook_override, bool load) {
  KO_ASSIGN_OR_RETURN(const SaeFiles files, LocateFiles(path));
  StatusOr<SaeWeights> sae = Status::Internal("unreachable");
  switch (files.source) {
    case SaeSource::kSaeLens: sae = ReadSaeLens(files, load); break;
    case SaeSource::kSparsify: sae = ReadSparsify(files, load); break;
    case SaeSource::kGemmaScope: sae = ReadGemmaScope(files, load); break;
  }
  if (sae.ok() && !hook_override.empty()) sae->config.hook = hook_override;
  return sae;
}

// ---------------------------------------------------------------------------------------------
// Writing.

Status CheckForWrite(const SaeTensor& tensor, const char* name, std::vector<int64_t> shape,
                     const std::string& dir) {
  uint64_t count = 1;
  for (const int64_t d : shape) count *= static_cast<uint64_t>(d);
  if (tensor.shape != shape || tensor.values.size() != count) {
    return Status::InvalidArgument(dir + ": tensor " + Quote(name) + ": shape " +
                                   ShapeString(tensor.shape) + " with " +
                                   std::to_string(tensor.values.size()) + " values, expected " +
                                   ShapeString(shape));
  }
  return Status::Ok();
}

Status MakeDirectories(const std::string& dir) {
  std::string prefix;
  for (const std::string& part : PathComponents(dir)) {
    prefix += (prefix.empty() && dir[0] != '/') ? part : "/" + part;
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return Status::IOError(prefix + ": cannot create directory: " + std::strerror(errno));
    }
  }
  if (!IsDirectory(dir)) return Status::IOError(dir + ": not a directory");
  return Status::Ok();
}

}  // namespace

const char* SaeArchitectureName(SaeArchitecture architecture) {
  switch (architecture) {
    case SaeArchitecture::kStandard: return "standard";
    case SaeArchitecture::kJumpRelu: return "jumprelu";
    case SaeArchitecture::kTopK: return "topk";
    case SaeArchitecture::kGated: return "gated";
  }
  return "?";
}

const char* SaeSourceName(SaeSource source) {
  switch (source) {
    case SaeSource::kSaeLens: return "saelens";
    case SaeSource::kGemmaScope: return "gemma_scope";
    case SaeSource::kSparsify: return "sparsify";
  }
  return "?";
}

const char* SaeNormalizationName(SaeNormalization normalization) {
  switch (normalization) {
    case SaeNormalization::kNone: return "none";
    case SaeNormalization::kExpectedAverageOnlyIn: return "expected_average_only_in";
    case SaeNormalization::kConstantNormRescale: return "constant_norm_rescale";
  }
  return "?";
}

StatusOr<SaeConfig> ReadSaeConfig(const std::string& path, const std::string& hook_override) {
  KO_ASSIGN_OR_RETURN(SaeWeights sae, Read(path, hook_override, /*load=*/false));
  return sae.config;
}

StatusOr<SaeWeights> ReadSae(const std::string& path, const std::string& hook_override) {
  return Read(path, hook_override, /*load=*/true);
}

Status WriteSaeLens(const std::string& dir, const SaeWeights& sae,
                    const std::string& extra_metadata_json) {
  const SaeConfig& c = sae.config;
  if (c.d_in <= 0 || c.d_sae <= 0) {
    return Status::InvalidArgument(dir + ": d_in " + std::to_string(c.d_in) + " and d_sae " +
                                   std::to_string(c.d_sae) + " must be positive");
  }
  if (c.architecture == SaeArchitecture::kTopK) KO_RETURN_IF_ERROR(CheckK(c, dir));
  if (c.normalization == SaeNormalization::kExpectedAverageOnlyIn &&
      !(std::isfinite(c.scaling_factor) && c.scaling_factor > 0)) {
    return Status::InvalidArgument(dir + ": scaling_factor " + std::to_string(c.scaling_factor) +
                                   " must be positive for expected_average_only_in");
  }
  Json extra;
  try {
    extra = Json::parse(extra_metadata_json.empty() ? "{}" : extra_metadata_json);
  } catch (const Json::exception& e) {
    return Status::InvalidArgument(dir + ": extra metadata is not valid JSON: " + e.what());
  }
  if (!extra.is_object()) {
    return Status::InvalidArgument(dir + ": extra metadata must be a JSON object");
  }

  struct Named {
    const char* name;
    const SaeTensor* tensor;
    std::vector<int64_t> shape;
  };
  std::vector<Named> tensors = {{"W_enc", &sae.W_enc, {c.d_in, c.d_sae}},
                                {"W_dec", &sae.W_dec, {c.d_sae, c.d_in}},
                                {"b_dec", &sae.b_dec, {c.d_in}}};
  // A gated SAE has no b_enc in SAELens; keep one only if the caller has it.
  if (c.architecture != SaeArchitecture::kGated || !sae.b_enc.empty()) {
    tensors.insert(tensors.begin() + 1, {"b_enc", &sae.b_enc, {c.d_sae}});
  }
  if (c.architecture == SaeArchitecture::kJumpRelu) {
    tensors.push_back({"threshold", &sae.threshold, {c.d_sae}});
  }
  if (c.architecture == SaeArchitecture::kGated) {
    tensors.push_back({"b_gate", &sae.b_gate, {c.d_sae}});
    tensors.push_back({"r_mag", &sae.r_mag, {c.d_sae}});
    tensors.push_back({"b_mag", &sae.b_mag, {c.d_sae}});
  }
  std::vector<TensorToWrite> to_write;
  for (const Named& t : tensors) {
    KO_RETURN_IF_ERROR(CheckForWrite(*t.tensor, t.name, t.shape, dir));
    to_write.push_back({t.name, DType::kF32, t.shape, t.tensor->values.data(),
                        t.tensor->values.size() * sizeof(float)});
  }

  Json cfg = Json::object();
  cfg["architecture"] = SaeArchitectureName(c.architecture);
  cfg["d_in"] = c.d_in;
  cfg["d_sae"] = c.d_sae;
  if (c.architecture == SaeArchitecture::kTopK) cfg["k"] = c.k;
  cfg["dtype"] = "float32";
  cfg["apply_b_dec_to_input"] = c.apply_b_dec_to_input;
  cfg["normalize_activations"] = SaeNormalizationName(c.normalization);
  // In cfg.json, not as a tensor: SAELens reads a `scaling_factor` tensor as the finetuning
  // factor.
  if (c.normalization == SaeNormalization::kExpectedAverageOnlyIn) {
    cfg["scaling_factor"] = c.scaling_factor;
  }
  cfg["reshape_activations"] = EndsWith(c.hook, "hook_z") ? "hook_z" : "none";
  cfg["hook_name"] = c.hook;  // for pre-6.0 readers
  Json metadata = extra;
  metadata["hook_name"] = c.hook;
  // SAELens decides between its 6.x and pre-6.0 cfg layouts by this version; ours is 6.x's.
  if (!metadata.contains("sae_lens_version")) metadata["sae_lens_version"] = "6.0.0";
  cfg["metadata"] = std::move(metadata);

  KO_RETURN_IF_ERROR(MakeDirectories(dir));
  KO_RETURN_IF_ERROR(WriteSafetensors(JoinPath(dir, "sae_weights.safetensors"), to_write));
  return WriteFileAtomically(JoinPath(dir, "cfg.json"), cfg.dump(2) + "\n");
}

}  // namespace knockout::formats
