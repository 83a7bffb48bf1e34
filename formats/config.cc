#include "formats/config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace knockout::formats {
namespace {

using nlohmann::json;

// Reads fields out of one JSON object, producing errors that name the file and the field.
class FieldReader {
 public:
  // `prefix` names the enclosing object for nested fields ("rope_scaling.").
  FieldReader(const json& object, std::string label, std::string prefix = "")
      : object_(object), label_(std::move(label)), prefix_(std::move(prefix)) {}

  Status Error(const std::string& field, const std::string& what) const {
    return Status::InvalidArgument(label_ + ": field " + prefix_ + field + ": " + what);
  }

  bool Has(const std::string& field) const {
    auto it = object_.find(field);
    return it != object_.end() && !it->is_null();
  }

  StatusOr<int64_t> PositiveInt(const std::string& field) const {
    if (!Has(field)) return Error(field, "missing");
    const json& v = object_.at(field);
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
      return Error(field, "expected a positive integer, got " + v.dump());
    }
    return v.get<int64_t>();
  }

  StatusOr<int64_t> PositiveIntOr(const std::string& field, int64_t fallback) const {
    if (!Has(field)) return fallback;
    return PositiveInt(field);
  }

  StatusOr<double> PositiveNumberOr(const std::string& field, double fallback) const {
    if (!Has(field)) return fallback;
    const json& v = object_.at(field);
    if (!v.is_number() || v.get<double>() <= 0) {
      return Error(field, "expected a positive number, got " + v.dump());
    }
    return v.get<double>();
  }

  StatusOr<bool> BoolOr(const std::string& field, bool fallback) const {
    if (!Has(field)) return fallback;
    const json& v = object_.at(field);
    if (!v.is_boolean()) return Error(field, "expected true or false, got " + v.dump());
    return v.get<bool>();
  }

  StatusOr<std::string> StringOr(const std::string& field, std::string fallback) const {
    if (!Has(field)) return fallback;
    const json& v = object_.at(field);
    if (!v.is_string()) return Error(field, "expected a string, got " + v.dump());
    return v.get<std::string>();
  }

  // A token id (non-negative integer) or absent.
  StatusOr<std::optional<int64_t>> OptionalTokenId(const std::string& field) const {
    if (!Has(field)) return std::optional<int64_t>();
    const json& v = object_.at(field);
    if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      return Error(field, "expected a token id, got " + v.dump());
    }
    return std::optional<int64_t>(v.get<int64_t>());
  }

  // eos_token_id may be one id or a list of ids (Llama 3).
  StatusOr<std::vector<int64_t>> TokenIdList(const std::string& field) const {
    std::vector<int64_t> ids;
    if (!Has(field)) return ids;
    const json& v = object_.at(field);
    auto take = [&](const json& item) -> Status {
      if (!item.is_number_integer() || item.get<int64_t>() < 0) {
        return Error(field, "expected a token id or a list of token ids, got " + v.dump());
      }
      ids.push_back(item.get<int64_t>());
      return Status::Ok();
    };
    if (v.is_array()) {
      for (const json& item : v) KO_RETURN_IF_ERROR(take(item));
    } else {
      KO_RETURN_IF_ERROR(take(v));
    }
    return ids;
  }

  const json& object() const { return object_; }
  const std::string& label() const { return label_; }

 private:
  const json& object_;
  std::string label_;
  std::string prefix_;
};

StatusOr<Family> FamilyFromArchitecture(const std::string& arch, const std::string& label) {
  if (arch == "LlamaForCausalLM") return Family::kLlama;
  if (arch == "MistralForCausalLM") return Family::kMistral;
  if (arch == "Qwen2ForCausalLM") return Family::kQwen2;
  if (arch == "Gemma2ForCausalLM") return Family::kGemma2;
  return Status::Unimplemented(label + ": field architectures: unsupported architecture \"" +
                               arch +
                               "\" (supported: LlamaForCausalLM, MistralForCausalLM, "
                               "Qwen2ForCausalLM, Gemma2ForCausalLM)");
}

StatusOr<std::optional<RopeScaling>> ParseRopeScaling(const FieldReader& top) {
  if (!top.Has("rope_scaling")) return std::optional<RopeScaling>();
  const json& v = top.object().at("rope_scaling");
  if (!v.is_object()) return top.Error("rope_scaling", "expected an object or null");
  FieldReader r(v, top.label(), "rope_scaling.");
  // Newer configs say "rope_type", older ones "type".
  KO_ASSIGN_OR_RETURN(std::string type, r.StringOr("rope_type", ""));
  if (type.empty()) {
    KO_ASSIGN_OR_RETURN(type, r.StringOr("type", ""));
  }
  if (type == "default") return std::optional<RopeScaling>();
  RopeScaling scaling;
  if (type == "linear") {
    scaling.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    scaling.type = RopeScaling::Type::kLlama3;
  } else {
    return r.Error("rope_type",
                     "unsupported rope scaling \"" + type +
                         "\" (supported: default, linear, llama3)");
  }
  if (!r.Has("factor")) return r.Error("factor", "missing");
  KO_ASSIGN_OR_RETURN(scaling.factor, r.PositiveNumberOr("factor", 1.0));
  if (scaling.type == RopeScaling::Type::kLlama3) {
    for (const char* field :
         {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      if (!r.Has(field)) return r.Error(field, "missing");
    }
    KO_ASSIGN_OR_RETURN(scaling.low_freq_factor, r.PositiveNumberOr("low_freq_factor", 1.0));
    KO_ASSIGN_OR_RETURN(scaling.high_freq_factor, r.PositiveNumberOr("high_freq_factor", 4.0));
    KO_ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                        r.PositiveInt("original_max_position_embeddings"));
    if (scaling.high_freq_factor <= scaling.low_freq_factor) {
      return r.Error("high_freq_factor", "must be greater than low_freq_factor");
    }
  }
  return std::optional<RopeScaling>(scaling);
}

}  // namespace

const char* FamilyName(Family family) {
  switch (family) {
    case Family::kLlama: return "llama";
    case Family::kMistral: return "mistral";
    case Family::kQwen2: return "qwen2";
    case Family::kGemma2: return "gemma2";
  }
  return "unknown";
}

namespace {

// Gemma 2's own fields, with Gemma2Config's defaults (transformers configuration_gemma2.py).
Status ParseGemma2(const FieldReader& r, ModelConfig& c) {
  KO_ASSIGN_OR_RETURN(double scalar, r.PositiveNumberOr("query_pre_attn_scalar", 256.0));
  c.query_pre_attn_scalar = scalar;
  // A null cap (written by some conversions) means no capping.
  const json& root = r.object();
  auto cap = [&](const std::string& field, double fallback) -> StatusOr<std::optional<double>> {
    if (root.contains(field) && root.at(field).is_null()) return std::optional<double>();
    KO_ASSIGN_OR_RETURN(double value, r.PositiveNumberOr(field, fallback));
    return std::optional<double>(value);
  };
  KO_ASSIGN_OR_RETURN(c.attn_logit_softcapping, cap("attn_logit_softcapping", 50.0));
  KO_ASSIGN_OR_RETURN(c.final_logit_softcapping, cap("final_logit_softcapping", 30.0));
  KO_ASSIGN_OR_RETURN(int64_t window, r.PositiveIntOr("sliding_window", 4096));
  c.sliding_window = window;
  if (r.Has("attention_bias")) {
    KO_ASSIGN_OR_RETURN(bool bias, r.BoolOr("attention_bias", false));
    if (bias) return r.Error("attention_bias", "Gemma 2 with attention biases is not supported");
  }
  c.attention_bias = c.o_proj_bias = false;
  c.sliding_layers.assign(static_cast<size_t>(c.num_layers), false);
  if (r.Has("layer_types")) {
    const json& types = root.at("layer_types");
    if (!types.is_array() || types.size() != static_cast<size_t>(c.num_layers)) {
      return r.Error("layer_types", "expected one entry per layer (" +
                                        std::to_string(c.num_layers) + "), got " + types.dump());
    }
    for (size_t i = 0; i < types.size(); ++i) {
      const std::string type = types[i].is_string() ? types[i].get<std::string>() : "";
      if (type != "sliding_attention" && type != "full_attention") {
        return r.Error("layer_types", "entry " + std::to_string(i) + ": expected " +
                                          "\"sliding_attention\" or \"full_attention\", got " +
                                          types[i].dump());
      }
      c.sliding_layers[i] = type == "sliding_attention";
    }
  } else {
    // Gemma2Attention: sliding_window if not bool(layer_idx % 2).
    for (int64_t i = 0; i < c.num_layers; i += 2) c.sliding_layers[static_cast<size_t>(i)] = true;
  }
  return Status::Ok();
}

}  // namespace

StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& label) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Status::InvalidArgument(label + ": not valid JSON");
  if (!root.is_object()) return Status::InvalidArgument(label + ": expected a JSON object");
  FieldReader r(root, label);
  ModelConfig c;

  if (!r.Has("architectures")) return r.Error("architectures", "missing");
  const json& archs = root.at("architectures");
  if (!archs.is_array() || archs.size() != 1 || !archs[0].is_string()) {
    return r.Error("architectures", "expected a list with one architecture name, got " +
                                        archs.dump());
  }
  c.architecture = archs[0].get<std::string>();
  KO_ASSIGN_OR_RETURN(c.family, FamilyFromArchitecture(c.architecture, label));

  KO_ASSIGN_OR_RETURN(c.vocab_size, r.PositiveInt("vocab_size"));
  KO_ASSIGN_OR_RETURN(c.hidden_size, r.PositiveInt("hidden_size"));
  KO_ASSIGN_OR_RETURN(c.intermediate_size, r.PositiveInt("intermediate_size"));
  KO_ASSIGN_OR_RETURN(c.num_layers, r.PositiveInt("num_hidden_layers"));
  KO_ASSIGN_OR_RETURN(c.num_heads, r.PositiveInt("num_attention_heads"));
  KO_ASSIGN_OR_RETURN(c.num_kv_heads, r.PositiveIntOr("num_key_value_heads", c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Error("num_key_value_heads",
                   std::to_string(c.num_kv_heads) + " does not divide num_attention_heads " +
                       std::to_string(c.num_heads));
  }
  if (r.Has("head_dim")) {
    KO_ASSIGN_OR_RETURN(c.head_dim, r.PositiveInt("head_dim"));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return r.Error("num_attention_heads",
                     std::to_string(c.num_heads) + " does not divide hidden_size " +
                         std::to_string(c.hidden_size) + " and no head_dim is given");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {
    return r.Error("head_dim", "rotary embeddings need an even head_dim, got " +
                                   std::to_string(c.head_dim));
  }

  const bool gemma2 = c.family == Family::kGemma2;
  // Gemma 2 names its activation `hidden_activation` (HF ignores `hidden_act` there).
  const std::string act_field = gemma2 && r.Has("hidden_activation") ? "hidden_activation"
                                                                     : "hidden_act";
  KO_ASSIGN_OR_RETURN(std::string act,
                      r.StringOr(act_field, gemma2 ? "gelu_pytorch_tanh" : "silu"));
  const std::string supported = gemma2 ? "gelu_pytorch_tanh" : "silu";
  if (act != supported) {
    return Status::Unimplemented(label + ": field " + act_field + ": unsupported activation \"" +
                                 act + "\" (supported: " + supported + ")");
  }
  c.activation = gemma2 ? ModelConfig::Activation::kGeluTanh : ModelConfig::Activation::kSilu;
  KO_ASSIGN_OR_RETURN(c.rms_norm_eps, r.PositiveNumberOr("rms_norm_eps", 1e-6));
  KO_ASSIGN_OR_RETURN(c.rope_theta, r.PositiveNumberOr("rope_theta", 10000.0));
  KO_ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(r));
  KO_ASSIGN_OR_RETURN(c.max_position_embeddings, r.PositiveIntOr("max_position_embeddings", 2048));
  KO_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.BoolOr("tie_word_embeddings", gemma2));
  KO_ASSIGN_OR_RETURN(c.mlp_bias, r.BoolOr("mlp_bias", false));
  if (c.family == Family::kQwen2) {
    // Qwen2 hard-codes biases on q/k/v and none on o_proj.
    c.attention_bias = true;
    c.o_proj_bias = false;
    KO_ASSIGN_OR_RETURN(bool sliding, r.BoolOr("use_sliding_window", false));
    if (sliding) {
      return Status::Unimplemented(label +
                                   ": field use_sliding_window: Qwen2 sliding-window attention "
                                   "is not supported");
    }
  } else {
    // Llama's attention_bias puts biases on all four projections.
    KO_ASSIGN_OR_RETURN(c.attention_bias, r.BoolOr("attention_bias", false));
    c.o_proj_bias = c.attention_bias;
  }
  if (c.family == Family::kMistral && r.Has("sliding_window")) {
    KO_ASSIGN_OR_RETURN(int64_t window, r.PositiveInt("sliding_window"));
    c.sliding_window = window;
  }
  if (gemma2) KO_RETURN_IF_ERROR(ParseGemma2(r, c));
  KO_ASSIGN_OR_RETURN(c.bos_token_id, r.OptionalTokenId("bos_token_id"));
  KO_ASSIGN_OR_RETURN(c.pad_token_id, r.OptionalTokenId("pad_token_id"));
  KO_ASSIGN_OR_RETURN(c.eos_token_ids, r.TokenIdList("eos_token_id"));
  KO_ASSIGN_OR_RETURN(c.torch_dtype, r.StringOr("torch_dtype", "float32"));
  return c;
}

StatusOr<ModelConfig> LoadModelConfig(const std::string& checkpoint_dir) {
  const std::string path = checkpoint_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": cannot open (is this a Hugging Face checkpoint?)");
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return Status::IOError(path + ": read failed");
  return ParseModelConfig(buffer.str(), path);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = FamilyName(c.family);
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  const bool gemma2 = c.family == Family::kGemma2;
  j["hidden_act"] = gemma2 ? "gelu_pytorch_tanh" : "silu";
  if (gemma2) {
    j["hidden_activation"] = "gelu_pytorch_tanh";
    j["query_pre_attn_scalar"] = c.query_pre_attn_scalar.value_or(256.0);
    j["attn_logit_softcapping"] =
        c.attn_logit_softcapping ? json(*c.attn_logit_softcapping) : json(nullptr);
    j["final_logit_softcapping"] =
        c.final_logit_softcapping ? json(*c.final_logit_softcapping) : json(nullptr);
    json types = json::array();
    for (int64_t i = 0; i < c.num_layers; ++i) {
      types.push_back(c.Slides(i) ? "sliding_attention" : "full_attention");
    }
    j["layer_types"] = types;
  }
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling) {
    const RopeScaling& s = *c.rope_scaling;
    json rs;
    rs["factor"] = s.factor;
    if (s.type == RopeScaling::Type::kLlama3) {
      rs["rope_type"] = "llama3";
      rs["low_freq_factor"] = s.low_freq_factor;
      rs["high_freq_factor"] = s.high_freq_factor;
      rs["original_max_position_embeddings"] = s.original_max_position_embeddings;
    } else {
      rs["rope_type"] = "linear";
    }
    j["rope_scaling"] = rs;
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.family != Family::kQwen2) j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  if (c.sliding_window) j["sliding_window"] = *c.sliding_window;
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.pad_token_id) j["pad_token_id"] = *c.pad_token_id;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else if (!c.eos_token_ids.empty()) {
    j["eos_token_id"] = c.eos_token_ids;
  }
  j["torch_dtype"] = c.torch_dtype;
  return j.dump(2) + "\n";
}

}  // namespace knockout::formats
