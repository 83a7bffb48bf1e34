// SAE files against an independent writer: tests/reference/sae_fixtures.py writes SAELens and
// sparsify directories (safetensors by hand from the spec), Gemma Scope params.npz and plain
// .npy/.npz with numpy itself, and the canonical float32 tensors knockout must read from them
// (<case>.expected.json). WriteSaeLens is checked by the same script reading its output by hand.
#include "formats/sae.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace knockout::formats {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const std::string kScript = std::string(KNOCKOUT_SOURCE_DIR) + "/tests/reference/sae_fixtures.py";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
}

// Runs a command; returns its exit status and (in `output`) stdout+stderr.
int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string Shell(const std::string& s) { return "'" + s + "'"; }

// ---------------------------------------------------------------------------------------------
// The fixture cases (written once per build by the Python script; keyed by a hash of the cases
// and the script, so that ctest's one-process-per-test does not rerun Python each time).

Json Cases() {
  Json cases = Json::array();
  auto add = [&](const std::string& name, const std::string& format, Json spec) {
    spec["name"] = name;
    spec["format"] = format;
    cases.push_back(std::move(spec));
  };
  // SAELens, every architecture and stored dtype.
  for (const char* arch : {"standard", "jumprelu", "topk", "gated"}) {
    add(std::string("saelens_") + arch, "saelens", {{"arch", arch}, {"seed", 1}});
  }
  add("saelens_standard_bf16", "saelens", {{"arch", "standard"}, {"dtype", "bf16"}, {"seed", 2}});
  add("saelens_jumprelu_f16", "saelens", {{"arch", "jumprelu"}, {"dtype", "f16"}, {"seed", 3}});
  add("saelens_topk_f64", "saelens", {{"arch", "topk"}, {"dtype", "f64"}, {"k", 5}, {"seed", 4}});
  add("saelens_gated_bf16", "saelens", {{"arch", "gated"}, {"dtype", "bf16"}, {"seed", 5}});
  add("saelens_log_threshold", "saelens", {{"arch", "jumprelu"}, {"log_threshold", true}});
  add("saelens_finetuning_scale", "saelens",
      {{"arch", "standard"}, {"finetuning_scale", true}, {"seed", 6}});
  // A pre-6.0 cfg.json: hook_point, no apply_b_dec_to_input, TopK as activation_fn_str.
  add("saelens_pre6_topk", "saelens",
      {{"arch", "standard"},
       {"cfg_delete", {"metadata", "apply_b_dec_to_input", "architecture"}},
       {"cfg_set",
        {{"hook_point", "blocks.2.hook_mlp_out"},
         {"activation_fn_str", "topk"},
         {"activation_fn_kwargs", {{"k", 2}}},
         {"normalize_activations", false}}}});
  add("saelens_expected_average_cfg", "saelens",
      {{"cfg_set", {{"normalize_activations", "expected_average_only_in"},
                    {"scaling_factor", 2.5}}}});
  add("saelens_expected_average_tensor", "saelens",
      {{"cfg_set", {{"normalize_activations", "expected_average_only_in"}}},
       {"extra", {{"scaling_factor", {{"shape", Json::array()}, {"fill", 3.0}}}}}});
  add("saelens_expected_average_missing", "saelens",
      {{"cfg_set", {{"normalize_activations", "expected_average_only_in"}}}});
  add("saelens_constant_norm", "saelens",
      {{"cfg_set", {{"normalize_activations", "constant_norm_rescale"}}}});
  add("saelens_layer_norm", "saelens", {{"cfg_set", {{"normalize_activations", "layer_norm"}}}});
  add("saelens_bogus_norm", "saelens", {{"cfg_set", {{"normalize_activations", "whiten"}}}});
  add("saelens_no_apply_b_dec", "saelens", {{"cfg_set", {{"apply_b_dec_to_input", false}}}});
  // SAELens, bad files.
  add("saelens_missing_w_dec", "saelens", {{"drop", {"W_dec"}}});
  add("saelens_w_enc_shape", "saelens", {{"reshape", {{"W_enc", {4, 7}}}}});
  add("saelens_b_dec_shape", "saelens", {{"reshape", {{"b_dec", {5}}}}});
  add("saelens_missing_threshold", "saelens", {{"arch", "jumprelu"}, {"drop", {"threshold"}}});
  add("saelens_threshold_shape", "saelens",
      {{"arch", "jumprelu"}, {"reshape", {{"threshold", {7}}}}});
  add("saelens_missing_k", "saelens", {{"arch", "topk"}, {"cfg_delete", {"k"}}});
  add("saelens_k_too_big", "saelens", {{"arch", "topk"}, {"cfg_set", {{"k", 9}}}});
  add("saelens_unknown_arch", "saelens", {{"cfg_set", {{"architecture", "batchtopk"}}}});
  add("saelens_gated_missing_r_mag", "saelens", {{"arch", "gated"}, {"drop", {"r_mag"}}});
  add("saelens_int_tensor", "saelens", {{"raw_dtype", {{"W_enc", "I32"}}}});
  add("saelens_missing_d_sae", "saelens", {{"cfg_delete", {"d_sae"}}});
  add("saelens_d_in_string", "saelens", {{"cfg_set", {{"d_in", "4"}}}});
  add("saelens_d_in_disagrees", "saelens", {{"cfg_set", {{"d_in", 5}}}});
  add("saelens_head_index", "saelens", {{"cfg_set", {{"hook_head_index", 3}}}});
  add("saelens_tanh_relu", "saelens", {{"cfg_set", {{"activation_fn_str", "tanh-relu"}}}});
  add("saelens_bad_json", "saelens", Json::object());  // cfg.json overwritten by the test
  add("saelens_no_cfg", "saelens", Json::object());    // cfg.json removed by the test
  // sparsify.
  add("sparsify_resid", "sparsify", {{"subdir", "layers.3"}, {"seed", 7}});
  add("sparsify_mlp_bf16", "sparsify",
      {{"subdir", "layers.5.mlp"}, {"dtype", "bf16"}, {"seed", 8}, {"k", 2}});
  add("sparsify_num_latents_no_d_in", "sparsify",
      {{"subdir", "embed"}, {"cfg_set", {{"num_latents", 8}, {"expansion_factor", 32}}},
       {"cfg_delete", {"d_in"}}});
  add("sparsify_multi_topk", "sparsify", {{"cfg_set", {{"multi_topk", true}}}});
  add("sparsify_skip", "sparsify", {{"cfg_set", {{"skip_connection", true}}}});
  add("sparsify_transcode", "sparsify", {{"cfg_set", {{"transcode", true}}}});
  add("sparsify_groupmax", "sparsify", {{"cfg_set", {{"activation", "groupmax"}}}});
  add("sparsify_num_latents_mismatch", "sparsify", {{"cfg_set", {{"num_latents", 16}}}});
  add("sparsify_d_in_mismatch", "sparsify", {{"cfg_set", {{"d_in", 5}}}});
  add("sparsify_missing_k", "sparsify", {{"cfg_delete", {"k"}}});
  add("sparsify_w_dec_shape", "sparsify", {{"reshape", {{"W_dec", {8, 3}}}}});
  add("sparsify_missing_bias", "sparsify", {{"drop", {"encoder.bias"}}});
  // Gemma Scope.
  add("gemma_res", "gemma_scope",
      {{"subdir", "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"}, {"seed", 9}});
  add("gemma_mlp_compressed", "gemma_scope",
      {{"subdir", "gemma-scope-2b-pt-mlp/layer_5/width_16k/average_l0_40"},
       {"compressed", true}, {"seed", 10}, {"d_in", 6}, {"d_sae", 12}});
  add("gemma_att_f16", "gemma_scope",
      {{"subdir", "gemma-scope-2b-pt-att/layer_0/width_16k/average_l0_10"}, {"dtype", "f16"}});
  add("gemma_f64_lowercase", "gemma_scope", {{"dtype", "f64"}, {"lowercase", true}});
  add("gemma_finetuning_scale", "gemma_scope", {{"finetuning_scale", true}, {"compressed", true}});
  add("gemma_missing_threshold", "gemma_scope", {{"drop", {"threshold"}}});
  add("gemma_w_dec_shape", "gemma_scope", {{"reshape", {{"W_dec", {8, 5}}}}});
  add("gemma_embedding", "gemma_scope",
      {{"subdir", "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6"}});
  add("gemma_big", "gemma_scope",  // large enough for several deflate blocks
      {{"compressed", true}, {"d_in", 64}, {"d_sae", 256}, {"seed", 11}});
  // Plain .npy files from numpy.save / write_array.
  const Json random_2x3 = {{"shape", {2, 3}}};
  add("npy", "npy",
      {{"arrays",
        {{"v1_f4", random_2x3},
         {"v2_f4", {{"shape", {3, 2}}, {"version", {2, 0}}}},
         {"v3_f4", {{"shape", {5}}, {"version", {3, 0}}}},
         {"f8", {{"shape", {2, 2, 2}}, {"dtype", "<f8"}}},
         {"f2", {{"shape", {7}}, {"dtype", "<f2"}}},
         {"f2_special",
          {{"values", {0.0, -0.0, 6.1035156e-05, 5.9604645e-08, -65504.0, 1.0}},
           {"dtype", "<f2"}}},
         {"scalar", {{"values", 1.5}}},
         {"empty", {{"shape", {0}}}},
         {"wide", {{"shape", {1, 300}}}},
         {"fortran", {{"shape", {2, 3}}, {"fortran", true}}},
         {"big_endian", {{"shape", {3}}, {"dtype", ">f4"}}},
         {"int32", {{"shape", {3}}, {"dtype", "<i4"}}}}}});
  // .npz from numpy.savez / savez_compressed.
  const Json three = {{"a", random_2x3},
                      {"b", {{"shape", {4}}, {"dtype", "<f8"}}},
                      {"c", {{"shape", {2, 2}}, {"dtype", "<f2"}}}};
  add("npz_stored", "npz", {{"arrays", three}});
  add("npz_deflated", "npz", {{"arrays", three}, {"compressed", true}});
  add("npz_readme", "npz", {{"arrays", three}, {"extra_members", {{"README.txt", "hello"}}}});
  add("npz_fortran", "npz", {{"arrays", {{"m", {{"shape", {3, 4}}, {"fortran", true}}}}}});
  add("npz_int", "npz", {{"arrays", {{"ids", {{"shape", {3}}, {"dtype", "<i8"}}}}}});
  return cases;
}

class SaeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const Json cases = Cases();
    const std::string text = cases.dump();
    const size_t key = std::hash<std::string>()(text + ReadFile(kScript));
    root_ = std::string(SAE_FIXTURE_CACHE) + "/" + std::to_string(key);
    if (fs::exists(root_ + "/done")) return;
    // Written beside the final name and renamed, so that concurrent test processes agree.
    const std::string temp = root_ + ".tmp." + std::to_string(::getpid());
    fs::remove_all(temp);
    fs::create_directories(temp);
    WriteFile(temp + "/cases.json", text);
    std::string output;
    const int rc = RunCommand(std::string(KNOCKOUT_REFERENCE_PYTHON) + " " + Shell(kScript) + " " +
                           Shell(temp + "/cases.json") + " " + Shell(temp),
                       &output);
    if (rc != 0) {
      setup_error_ = "sae_fixtures.py failed (" + std::to_string(rc) + "): " + output;
      return;
    }
    WriteFile(temp + "/done", "");
    std::error_code ec;
    fs::rename(temp, root_, ec);
    if (ec) fs::remove_all(temp);  // another process won the race; its files are the same
    // Fixtures of earlier versions of the cases or the script.
    for (const auto& entry : fs::directory_iterator(SAE_FIXTURE_CACHE)) {
      const std::string name = entry.path().filename().string();
      if (entry.path().string() != root_ && name.find(".tmp.") == std::string::npos) {
        fs::remove_all(entry.path(), ec);
      }
    }
  }

  void SetUp() override {
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
    std::string tmpl = ::testing::TempDir() + "/sae_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    scratch_ = tmpl;
  }
  void TearDown() override {
    if (!scratch_.empty()) fs::remove_all(scratch_);
  }

  // The SAE directory of a case (its `subdir`), and a private copy for tests that damage it.
  static std::string Case(const std::string& name, const std::string& subdir = "") {
    return root_ + "/" + name + (subdir.empty() ? "" : "/" + subdir);
  }
  std::string Copy(const std::string& name) {
    const std::string to = scratch_ + "/" + name;
    fs::copy(Case(name), to, fs::copy_options::recursive);
    return to;
  }
  static Json Expected(const std::string& name) {
    return Json::parse(ReadFile(root_ + "/" + name + ".expected.json"));
  }

  static std::string root_;
  static std::string setup_error_;
  std::string scratch_;
};
std::string SaeTest::root_;
std::string SaeTest::setup_error_;

// Exact unless `rel` > 0 (for values computed on both sides, e.g. exp(log_threshold)).
void ExpectTensor(const SaeTensor& got, const Json& want, const std::string& what,
                  double rel = 0) {
  ASSERT_EQ(got.shape, want["shape"].get<std::vector<int64_t>>()) << what;
  const std::vector<double> values = want["values"].get<std::vector<double>>();
  ASSERT_EQ(got.values.size(), values.size()) << what;
  int nonzero = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    const float expected = static_cast<float>(values[i]);
    if (rel == 0) {
      ASSERT_EQ(std::memcmp(&got.values[i], &expected, 4), 0)
          << what << "[" << i << "]: " << got.values[i] << " vs " << expected;
    } else {
      ASSERT_NEAR(got.values[i], expected, rel * std::fabs(expected)) << what << "[" << i << "]";
    }
    nonzero += expected != 0;
  }
  // Random fixtures: a comparison of zeros with zeros would prove nothing.
  if (values.size() > 2) {
    EXPECT_GT(nonzero, static_cast<int>(values.size()) / 2) << what;
  }
}

void ExpectWeights(const SaeWeights& sae, const Json& expected, double rel = 0) {
  const std::map<std::string, const SaeTensor*> tensors = {
      {"W_enc", &sae.W_enc},         {"W_dec", &sae.W_dec}, {"b_enc", &sae.b_enc},
      {"b_dec", &sae.b_dec},         {"threshold", &sae.threshold},
      {"b_gate", &sae.b_gate},       {"r_mag", &sae.r_mag}, {"b_mag", &sae.b_mag}};
  for (const auto& [name, tensor] : tensors) {
    if (expected.contains(name)) {
      ExpectTensor(*tensor, expected[name], name, name == "threshold" ? rel : 0);
    } else {
      EXPECT_TRUE(tensor->empty()) << name << " should be absent";
    }
  }
}

// An error with `code` whose message names every string in `names`.
void ExpectError(const Status& status, StatusCode code, const std::vector<std::string>& names) {
  ASSERT_FALSE(status.ok()) << "expected an error naming " << (names.empty() ? "" : names[0]);
  EXPECT_EQ(status.code(), code) << status.ToString();
  for (const std::string& name : names) {
    EXPECT_NE(status.message().find(name), std::string::npos)
        << "message lacks \"" << name << "\": " << status.message();
  }
}

// ---------------------------------------------------------------------------------------------
// Reading what the independent writer wrote.

struct GoodCase {
  const char* name;
  const char* subdir;
  SaeSource source;
  SaeArchitecture architecture;
  int64_t d_in, d_sae, k;
  bool apply_b_dec;
  const char* hook;
  const char* dtype;
};

TEST_F(SaeTest, ReadsEveryFormatAndArchitecture) {
  const std::string resid1 = "blocks.1.hook_resid_post";
  const std::vector<GoodCase> cases = {
      {"saelens_standard", "", SaeSource::kSaeLens, SaeArchitecture::kStandard, 4, 8, 0, true,
       "blocks.1.hook_resid_post", "float32"},
      {"saelens_jumprelu", "", SaeSource::kSaeLens, SaeArchitecture::kJumpRelu, 4, 8, 0, true,
       "blocks.1.hook_resid_post", "float32"},
      {"saelens_topk", "", SaeSource::kSaeLens, SaeArchitecture::kTopK, 4, 8, 3, true,
       "blocks.1.hook_resid_post", "float32"},
      {"saelens_gated", "", SaeSource::kSaeLens, SaeArchitecture::kGated, 4, 8, 0, true,
       "blocks.1.hook_resid_post", "float32"},
      {"saelens_standard_bf16", "", SaeSource::kSaeLens, SaeArchitecture::kStandard, 4, 8, 0,
       true, "blocks.1.hook_resid_post", "bfloat16"},
      {"saelens_jumprelu_f16", "", SaeSource::kSaeLens, SaeArchitecture::kJumpRelu, 4, 8, 0,
       true, "blocks.1.hook_resid_post", "float16"},
      {"saelens_topk_f64", "", SaeSource::kSaeLens, SaeArchitecture::kTopK, 4, 8, 5, true,
       "blocks.1.hook_resid_post", "float64"},
      {"saelens_gated_bf16", "", SaeSource::kSaeLens, SaeArchitecture::kGated, 4, 8, 0, true,
       "blocks.1.hook_resid_post", "bfloat16"},
      {"saelens_finetuning_scale", "", SaeSource::kSaeLens, SaeArchitecture::kStandard, 4, 8, 0,
       true, "blocks.1.hook_resid_post", "float32"},
      {"saelens_pre6_topk", "", SaeSource::kSaeLens, SaeArchitecture::kTopK, 4, 8, 2, true,
       "blocks.2.hook_mlp_out", "float32"},
      {"saelens_no_apply_b_dec", "", SaeSource::kSaeLens, SaeArchitecture::kStandard, 4, 8, 0,
       false, "blocks.1.hook_resid_post", "float32"},
      {"sparsify_resid", "layers.3", SaeSource::kSparsify, SaeArchitecture::kTopK, 4, 8, 3, true,
       "blocks.3.hook_resid_post", "float32"},
      {"sparsify_mlp_bf16", "layers.5.mlp", SaeSource::kSparsify, SaeArchitecture::kTopK, 4, 8, 2,
       true, "blocks.5.hook_mlp_out", "bfloat16"},
      {"sparsify_num_latents_no_d_in", "embed", SaeSource::kSparsify, SaeArchitecture::kTopK, 4,
       8, 3, true, "", "float32"},
      {"sparsify_multi_topk", "", SaeSource::kSparsify, SaeArchitecture::kTopK, 4, 8, 3, true, "",
       "float32"},
      {"gemma_res", "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82",
       SaeSource::kGemmaScope, SaeArchitecture::kJumpRelu, 4, 8, 0, false,
       "blocks.12.hook_resid_post", "float32"},
      {"gemma_mlp_compressed", "gemma-scope-2b-pt-mlp/layer_5/width_16k/average_l0_40",
       SaeSource::kGemmaScope, SaeArchitecture::kJumpRelu, 6, 12, 0, false,
       "blocks.5.hook_mlp_out", "float32"},
      {"gemma_att_f16", "gemma-scope-2b-pt-att/layer_0/width_16k/average_l0_10",
       SaeSource::kGemmaScope, SaeArchitecture::kJumpRelu, 4, 8, 0, false,
       "blocks.0.attn.hook_z", "float16"},
      {"gemma_f64_lowercase", "", SaeSource::kGemmaScope, SaeArchitecture::kJumpRelu, 4, 8, 0,
       false, "", "float64"},
      {"gemma_finetuning_scale", "", SaeSource::kGemmaScope, SaeArchitecture::kJumpRelu, 4, 8, 0,
       false, "", "float32"},
      {"gemma_big", "", SaeSource::kGemmaScope, SaeArchitecture::kJumpRelu, 64, 256, 0, false, "",
       "float32"},
  };
  for (const GoodCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = Case(c.name, c.subdir);
    StatusOr<SaeWeights> sae = ReadSae(dir);
    ASSERT_TRUE(sae.ok()) << sae.status().ToString();
    const SaeConfig& config = sae->config;
    EXPECT_EQ(config.source, c.source);
    EXPECT_EQ(config.architecture, c.architecture);
    EXPECT_EQ(config.d_in, c.d_in);
    EXPECT_EQ(config.d_sae, c.d_sae);
    EXPECT_EQ(config.k, c.k);
    EXPECT_EQ(config.apply_b_dec_to_input, c.apply_b_dec);
    EXPECT_EQ(config.hook, c.hook);
    EXPECT_EQ(config.dtype, c.dtype);
    EXPECT_EQ(config.normalization, SaeNormalization::kNone);
    ExpectWeights(*sae, Expected(c.name));

    // ReadSaeConfig reads the same configuration without the tensors.
    StatusOr<SaeConfig> only = ReadSaeConfig(dir);
    ASSERT_TRUE(only.ok()) << only.status().ToString();
    EXPECT_EQ(only->architecture, config.architecture);
    EXPECT_EQ(only->d_in, config.d_in);
    EXPECT_EQ(only->d_sae, config.d_sae);
    EXPECT_EQ(only->k, config.k);
    EXPECT_EQ(only->hook, config.hook);
    EXPECT_EQ(only->dtype, config.dtype);

    // The override wins over whatever the file says.
    StatusOr<SaeConfig> overridden = ReadSaeConfig(dir, "blocks.9.hook_resid_pre");
    ASSERT_TRUE(overridden.ok());
    EXPECT_EQ(overridden->hook, "blocks.9.hook_resid_pre");
  }
}

TEST_F(SaeTest, LogThresholdIsExponentiated) {
  StatusOr<SaeWeights> sae = ReadSae(Case("saelens_log_threshold"));
  ASSERT_TRUE(sae.ok()) << sae.status().ToString();
  // numpy's float32 exp and std::exp may differ in the last bit.
  ExpectWeights(*sae, Expected("saelens_log_threshold"), 1e-6);
}

TEST_F(SaeTest, FilePathsInsideTheDirectoryWork) {
  for (const std::string& path :
       {Case("saelens_topk") + "/cfg.json", Case("saelens_topk") + "/sae_weights.safetensors",
        Case("saelens_topk") + "/"}) {
    StatusOr<SaeConfig> config = ReadSaeConfig(path);
    ASSERT_TRUE(config.ok()) << path << ": " << config.status().ToString();
    EXPECT_EQ(config->architecture, SaeArchitecture::kTopK);
  }
  const std::string npz =
      Case("gemma_res", "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82") + "/params.npz";
  StatusOr<SaeConfig> config = ReadSaeConfig(npz);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->hook, "blocks.12.hook_resid_post");
  EXPECT_EQ(config->source, SaeSource::kGemmaScope);
}

TEST_F(SaeTest, Normalization) {
  StatusOr<SaeConfig> cfg = ReadSaeConfig(Case("saelens_expected_average_cfg"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->normalization, SaeNormalization::kExpectedAverageOnlyIn);
  EXPECT_EQ(cfg->scaling_factor, 2.5);

  StatusOr<SaeWeights> tensor = ReadSae(Case("saelens_expected_average_tensor"));
  ASSERT_TRUE(tensor.ok()) << tensor.status().ToString();
  EXPECT_EQ(tensor->config.normalization, SaeNormalization::kExpectedAverageOnlyIn);
  EXPECT_EQ(tensor->config.scaling_factor, 3.0);
  // The scalar is the normalisation scale, not a finetuning factor: W_dec is untouched.
  ExpectWeights(*tensor, Expected("saelens_expected_average_tensor"));

  StatusOr<SaeConfig> constant = ReadSaeConfig(Case("saelens_constant_norm"));
  ASSERT_TRUE(constant.ok()) << constant.status().ToString();
  EXPECT_EQ(constant->normalization, SaeNormalization::kConstantNormRescale);

  const std::string cfg_json = Case("saelens_expected_average_missing") + "/cfg.json";
  ExpectError(ReadSaeConfig(Case("saelens_expected_average_missing")).status(),
              StatusCode::kInvalidArgument,
              {cfg_json, "normalize_activations", "scaling_factor"});
  ExpectError(ReadSaeConfig(Case("saelens_layer_norm")).status(), StatusCode::kUnimplemented,
              {Case("saelens_layer_norm") + "/cfg.json", "normalize_activations", "layer_norm"});
  ExpectError(ReadSaeConfig(Case("saelens_bogus_norm")).status(), StatusCode::kInvalidArgument,
              {Case("saelens_bogus_norm") + "/cfg.json", "normalize_activations", "whiten"});
}

// ---------------------------------------------------------------------------------------------
// Bad SAE files: each error names the file and the field or tensor.

struct BadCase {
  const char* name;
  const char* subdir;
  StatusCode code;
  const char* file;  // relative to the SAE directory
  std::vector<std::string> names;
};

TEST_F(SaeTest, BadFilesNameTheFileAndField) {
  const std::vector<BadCase> cases = {
      {"saelens_missing_w_dec", "", StatusCode::kInvalidArgument, "sae_weights.safetensors",
       {"\"W_dec\"", "missing"}},
      {"saelens_w_enc_shape", "", StatusCode::kInvalidArgument, "sae_weights.safetensors",
       {"\"W_enc\"", "[4, 7]", "[4, 8]", "cfg.json"}},
      {"saelens_b_dec_shape", "", StatusCode::kInvalidArgument, "sae_weights.safetensors",
       {"\"b_dec\"", "[5]", "[4]"}},
      {"saelens_missing_threshold", "", StatusCode::kInvalidArgument, "sae_weights.safetensors",
       {"\"threshold\"", "jumprelu"}},
      {"saelens_threshold_shape", "", StatusCode::kInvalidArgument, "sae_weights.safetensors",
       {"\"threshold\"", "[7]", "[8]"}},
      {"saelens_missing_k", "", StatusCode::kInvalidArgument, "cfg.json", {"\"k\"", "topk"}},
      {"saelens_k_too_big", "", StatusCode::kInvalidArgument, "cfg.json", {"\"k\"", "9"}},
      {"saelens_unknown_arch", "", StatusCode::kInvalidArgument, "cfg.json",
       {"\"architecture\"", "batchtopk"}},
      {"saelens_gated_missing_r_mag", "", StatusCode::kInvalidArgument, "sae_weights.safetensors",
       {"\"r_mag\"", "gated"}},
      {"saelens_int_tensor", "", StatusCode::kInvalidArgument, "sae_weights.safetensors",
       {"\"W_enc\"", "I32", "not a float"}},
      {"saelens_missing_d_sae", "", StatusCode::kInvalidArgument, "cfg.json", {"\"d_sae\""}},
      {"saelens_d_in_string", "", StatusCode::kInvalidArgument, "cfg.json",
       {"\"d_in\"", "integer"}},
      {"saelens_d_in_disagrees", "", StatusCode::kInvalidArgument, "sae_weights.safetensors",
       {"\"W_enc\"", "[4, 8]", "[5, 8]"}},
      {"saelens_head_index", "", StatusCode::kUnimplemented, "cfg.json", {"hook_head_index"}},
      {"saelens_tanh_relu", "", StatusCode::kUnimplemented, "cfg.json",
       {"activation_fn_str", "tanh-relu"}},
      {"sparsify_skip", "", StatusCode::kUnimplemented, "cfg.json", {"\"skip_connection\""}},
      {"sparsify_transcode", "", StatusCode::kUnimplemented, "cfg.json", {"\"transcode\""}},
      {"sparsify_groupmax", "", StatusCode::kUnimplemented, "cfg.json",
       {"\"activation\"", "groupmax"}},
      {"sparsify_num_latents_mismatch", "", StatusCode::kInvalidArgument, "sae.safetensors",
       {"\"encoder.weight\"", "num_latents 16", "cfg.json"}},
      {"sparsify_d_in_mismatch", "", StatusCode::kInvalidArgument, "sae.safetensors",
       {"\"encoder.weight\"", "d_in 5"}},
      {"sparsify_missing_k", "", StatusCode::kInvalidArgument, "cfg.json", {"\"k\""}},
      {"sparsify_w_dec_shape", "", StatusCode::kInvalidArgument, "sae.safetensors",
       {"\"W_dec\"", "[8, 3]", "[8, 4]"}},
      {"sparsify_missing_bias", "", StatusCode::kInvalidArgument, "sae.safetensors",
       {"\"encoder.bias\""}},
      {"gemma_missing_threshold", "", StatusCode::kInvalidArgument, "params.npz",
       {"\"threshold\""}},
      {"gemma_w_dec_shape", "", StatusCode::kInvalidArgument, "params.npz",
       {"W_dec.npy", "[8, 5]", "[8, 4]"}},
      {"gemma_embedding", "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6",
       StatusCode::kUnimplemented, "params.npz", {"embedding"}},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = Case(c.name, c.subdir);
    const std::string file = dir + "/" + c.file;
    std::vector<std::string> names = c.names;
    names.push_back(file);
    ExpectError(ReadSae(dir).status(), c.code, names);
    ExpectError(ReadSaeConfig(dir).status(), c.code, names);
  }
}

TEST_F(SaeTest, MissingAndBrokenFiles) {
  ExpectError(ReadSae(scratch_ + "/nowhere").status(), StatusCode::kNotFound,
              {scratch_ + "/nowhere"});
  fs::create_directories(scratch_ + "/empty");
  ExpectError(ReadSae(scratch_ + "/empty").status(), StatusCode::kNotFound,
              {scratch_ + "/empty", "sae_weights.safetensors", "params.npz"});

  const std::string no_cfg = Copy("saelens_no_cfg");
  fs::remove(no_cfg + "/cfg.json");
  ExpectError(ReadSae(no_cfg).status(), StatusCode::kNotFound, {no_cfg + "/cfg.json"});

  const std::string bad_json = Copy("saelens_bad_json");
  WriteFile(bad_json + "/cfg.json", "{\"d_in\": 4, ");
  ExpectError(ReadSae(bad_json).status(), StatusCode::kCorruption,
              {bad_json + "/cfg.json", "JSON"});
  WriteFile(bad_json + "/cfg.json", "[1, 2]");
  ExpectError(ReadSae(bad_json).status(), StatusCode::kInvalidArgument,
              {bad_json + "/cfg.json", "object"});

  // A truncated weights file is the safetensors reader's Corruption, naming the file.
  const std::string cut = Copy("saelens_standard");
  fs::resize_file(cut + "/sae_weights.safetensors", 100);
  ExpectError(ReadSae(cut).status(), StatusCode::kCorruption, {cut + "/sae_weights.safetensors"});

  WriteFile(scratch_ + "/notes.txt", "hello");
  ExpectError(ReadSae(scratch_ + "/notes.txt").status(), StatusCode::kInvalidArgument,
              {scratch_ + "/notes.txt"});
}

TEST_F(SaeTest, TruncatedAndDamagedNpz) {
  for (const char* name : {"gemma_big", "gemma_res"}) {
    SCOPED_TRACE(name);
    const std::string subdir =
        std::string(name) == "gemma_res" ? "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"
                                         : "";
    const std::string bytes = ReadFile(Case(name, subdir) + "/params.npz");
    ASSERT_GT(bytes.size(), 200u);
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    ASSERT_TRUE(ParseNpz(data, bytes.size(), "params.npz").ok());
    const size_t n = bytes.size();
    for (const size_t cut : {size_t{0}, size_t{1}, size_t{4}, size_t{30}, size_t{64}, n / 4, n / 2,
                             n - 100, n - 22, n - 1}) {
      SCOPED_TRACE(cut);
      StatusOr<std::vector<NpzArray>> arrays = ParseNpz(data, cut, "params.npz");
      ExpectError(arrays.status(), StatusCode::kCorruption, {"params.npz"});
      // The same through the file reader, which names the path.
      const std::string dir = scratch_ + "/cut" + std::to_string(cut);
      fs::create_directories(dir);
      WriteFile(dir + "/params.npz", bytes.substr(0, cut));
      ExpectError(ReadSae(dir).status(), StatusCode::kCorruption, {dir + "/params.npz"});
    }
    // One flipped byte inside a member's array data: the CRC (stored; the first member's data
    // starts after its 128-byte .npy header) or inflate (deflated; the middle of the archive is
    // inside W_enc's or W_dec's stream) fails.
    const size_t npy = bytes.find("\x93NUMPY");
    const size_t flip = npy == std::string::npos ? n / 2 : npy + 128 + 5;
    std::string damaged = bytes;
    damaged[flip] = static_cast<char>(damaged[flip] ^ 0x5a);
    ExpectError(
        ParseNpz(reinterpret_cast<const uint8_t*>(damaged.data()), n, "params.npz").status(),
        StatusCode::kCorruption, {"params.npz"});
    // Whatever byte is flipped, no crash, and any error is labelled.
    for (size_t i = 0; i < n; i += std::max<size_t>(7, n / 400)) {
      std::string flipped = bytes;
      flipped[i] = static_cast<char>(flipped[i] ^ 0xff);
      StatusOr<std::vector<NpzArray>> arrays =
          ParseNpz(reinterpret_cast<const uint8_t*>(flipped.data()), n, "params.npz");
      if (!arrays.ok()) {
        EXPECT_EQ(arrays.status().message().rfind("params.npz", 0), 0u);
      }
    }
  }
  ExpectError(ParseNpz(reinterpret_cast<const uint8_t*>("not a zip"), 9, "x.npz").status(),
              StatusCode::kCorruption, {"x.npz"});
}

// ---------------------------------------------------------------------------------------------
// .npy and .npz parsing.

SaeTensor MustParseNpy(const std::string& path) {
  const std::string bytes = ReadFile(path);
  StatusOr<SaeTensor> t =
      ParseNpy(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : SaeTensor();
}

TEST_F(SaeTest, ParsesNumpysNpy) {
  const Json expected = Expected("npy");
  for (const char* name : {"v1_f4", "v2_f4", "v3_f4", "f8", "f2", "f2_special", "scalar", "empty",
                           "wide"}) {
    SCOPED_TRACE(name);
    const SaeTensor t = MustParseNpy(Case("npy") + "/" + name + ".npy");
    const Json& want = expected[name];
    ASSERT_EQ(t.shape, want["shape"].get<std::vector<int64_t>>());
    const std::vector<double> values = want["values"].get<std::vector<double>>();
    ASSERT_EQ(t.values.size(), values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      const float f = static_cast<float>(values[i]);
      EXPECT_EQ(std::memcmp(&t.values[i], &f, 4), 0) << i << ": " << t.values[i] << " vs " << f;
    }
  }
  // -0.0 stays negative and the half subnormal 2^-24 is exact.
  const SaeTensor special = MustParseNpy(Case("npy") + "/f2_special.npy");
  EXPECT_TRUE(std::signbit(special.values[1]));
  EXPECT_EQ(special.values[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(MustParseNpy(Case("npy") + "/scalar.npy").shape, std::vector<int64_t>{});
}

TEST_F(SaeTest, RefusesWhatNumpyWritesButWeDoNotRead) {
  struct Refused {
    const char* name;
    std::vector<std::string> names;
  };
  for (const Refused& r : std::vector<Refused>{{"fortran", {"fortran_order"}},
                                               {"big_endian", {">f4", "dtype"}},
                                               {"int32", {"<i4", "dtype"}}}) {
    SCOPED_TRACE(r.name);
    const std::string path = Case("npy") + "/" + r.name + ".npy";
    const std::string bytes = ReadFile(path);
    std::vector<std::string> names = r.names;
    names.push_back(path);
    ExpectError(
        ParseNpy(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path).status(),
        StatusCode::kInvalidArgument, names);
  }
}

TEST_F(SaeTest, TruncatedOrPaddedNpy) {
  const std::string bytes = ReadFile(Case("npy") + "/v1_f4.npy");
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    StatusOr<SaeTensor> t = ParseNpy(data, cut, "a.npy");
    ASSERT_FALSE(t.ok()) << cut;
    EXPECT_EQ(t.status().message().rfind("a.npy: ", 0), 0u) << t.status().message();
  }
  const std::string padded = bytes + "x";
  ExpectError(
      ParseNpy(reinterpret_cast<const uint8_t*>(padded.data()), padded.size(), "a.npy").status(),
      StatusCode::kCorruption, {"a.npy", "trailing"});
}

// A version 1.0 .npy with `header` (padded and newline-terminated here unless `raw`).
std::string MakeNpy(std::string header, size_t data_bytes, bool raw = false, int major = 1) {
  if (!raw) {
    const size_t preamble = major == 1 ? 10 : 12;
    while ((preamble + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
  }
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  if (major != 1) out += std::string(2, '\0');
  return out + header + std::string(data_bytes, '\0');
}

TEST_F(SaeTest, StrictHeaderParsing) {
  const std::string good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string ok = MakeNpy(good, 24);
  ASSERT_TRUE(ParseNpy(reinterpret_cast<const uint8_t*>(ok.data()), ok.size(), "h").ok());
  const std::string dq =
      MakeNpy("{\"descr\": \"<f4\", \"shape\": (3,), \"fortran_order\": False}", 12);
  ASSERT_TRUE(ParseNpy(reinterpret_cast<const uint8_t*>(dq.data()), dq.size(), "h").ok());

  struct Bad {
    std::string bytes;
    StatusCode code;
    std::string says;
  };
  const std::vector<Bad> bad = {
      {"\x93NUMPX" + ok.substr(6), StatusCode::kCorruption, "magic"},
      {MakeNpy(good, 24, false, 4), StatusCode::kInvalidArgument, "version 4.0"},
      {MakeNpy("{'descr': '<f4', 'shape': (2, 3), }", 24), StatusCode::kInvalidArgument,
       "missing key 'fortran_order'"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", 24),
       StatusCode::kInvalidArgument, "unexpected key 'x'"},
      {MakeNpy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}", 24),
       StatusCode::kInvalidArgument, "twice"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (6)}", 24),
       StatusCode::kInvalidArgument, "not a tuple"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3)}", 24),
       StatusCode::kInvalidArgument, "dimension"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (06,)}", 24),
       StatusCode::kInvalidArgument, "leading zero"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", 24),
       StatusCode::kInvalidArgument, "64 bits"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': False, "
               "'shape': (4294967296, 4294967296, 16)}", 24),
       StatusCode::kInvalidArgument, "overflows"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': 0, 'shape': (6,)}", 24),
       StatusCode::kInvalidArgument, "True or False"},
      {MakeNpy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,)}", 24),
       StatusCode::kInvalidArgument, "descr"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': Falsey, 'shape': (6,)}", 24),
       StatusCode::kInvalidArgument, "True or False"},
      {MakeNpy(good + "}", 24), StatusCode::kInvalidArgument, "newline"},
      {MakeNpy(good, 24, /*raw=*/true), StatusCode::kInvalidArgument, "newline"},
      {MakeNpy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", 24),
       StatusCode::kInvalidArgument, "fortran_order"},
      {MakeNpy("{'descr': '<u2', 'fortran_order': False, 'shape': (2, 3)}", 12),
       StatusCode::kInvalidArgument, "'<u2'"},
      {MakeNpy(good, 23), StatusCode::kCorruption, "truncated"},
      {MakeNpy(good, 25), StatusCode::kCorruption, "trailing"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.says);
    ExpectError(ParseNpy(reinterpret_cast<const uint8_t*>(b.bytes.data()), b.bytes.size(),
                         "h.npy")
                    .status(),
                b.code, {"h.npy: ", b.says});
  }
  // A header length beyond the bytes.
  std::string long_header = ok.substr(0, 8) + std::string("\xff\xff", 2) + ok.substr(10);
  ExpectError(ParseNpy(reinterpret_cast<const uint8_t*>(long_header.data()), long_header.size(),
                       "h.npy")
                  .status(),
              StatusCode::kCorruption, {"runs past"});
}

TEST_F(SaeTest, ParsesNumpysNpz) {
  const Json expected = Expected("npz_stored");
  for (const char* name : {"npz_stored", "npz_deflated", "npz_readme"}) {
    SCOPED_TRACE(name);
    const std::string bytes = ReadFile(Case(name) + "/arrays.npz");
    StatusOr<std::vector<NpzArray>> arrays =
        ParseNpz(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
    ASSERT_TRUE(arrays.ok()) << arrays.status().ToString();
    ASSERT_EQ(arrays->size(), 3u);  // README.txt is not an array
    std::map<std::string, std::string> dtypes;
    for (const NpzArray& a : *arrays) {
      dtypes[a.name] = a.dtype;
      ExpectTensor(a.tensor, expected[a.name], a.name);
    }
    EXPECT_EQ(dtypes, (std::map<std::string, std::string>{
                          {"a", "float32"}, {"b", "float64"}, {"c", "float16"}}));
  }
  const std::string fortran = ReadFile(Case("npz_fortran") + "/arrays.npz");
  ExpectError(ParseNpz(reinterpret_cast<const uint8_t*>(fortran.data()), fortran.size(),
                       "f.npz")
                  .status(),
              StatusCode::kInvalidArgument, {"f.npz: m.npy", "fortran_order"});
  const std::string ints = ReadFile(Case("npz_int") + "/arrays.npz");
  ExpectError(ParseNpz(reinterpret_cast<const uint8_t*>(ints.data()), ints.size(), "i.npz")
                  .status(),
              StatusCode::kInvalidArgument, {"i.npz: ids.npy", "<i8"});
}

// ---------------------------------------------------------------------------------------------
// Writing.

TEST_F(SaeTest, WriteSaeLensRoundTripsEveryArchitecture) {
  for (const char* name : {"saelens_standard", "saelens_jumprelu", "saelens_topk", "saelens_gated",
                           "sparsify_resid", "gemma_mlp_compressed", "saelens_expected_average_cfg",
                           "saelens_constant_norm"}) {
    SCOPED_TRACE(name);
    StatusOr<SaeWeights> read = ReadSae(Case(name, name == std::string("sparsify_resid")
                                                       ? "layers.3"
                                               : name == std::string("gemma_mlp_compressed")
                                                   ? "gemma-scope-2b-pt-mlp/layer_5/width_16k/"
                                                     "average_l0_40"
                                                   : ""));
    ASSERT_TRUE(read.ok()) << read.status().ToString();
    const std::string out = scratch_ + "/out/" + name;  // WriteSaeLens creates the directories
    ASSERT_TRUE(WriteSaeLens(out, *read, R"({"recipe": {"steps": 10}, "seed": 3})").ok());
    StatusOr<SaeWeights> again = ReadSae(out);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    const SaeConfig& a = read->config;
    const SaeConfig& b = again->config;
    EXPECT_EQ(b.source, SaeSource::kSaeLens);
    EXPECT_EQ(b.architecture, a.architecture);
    EXPECT_EQ(b.d_in, a.d_in);
    EXPECT_EQ(b.d_sae, a.d_sae);
    EXPECT_EQ(b.k, a.k);
    EXPECT_EQ(b.apply_b_dec_to_input, a.apply_b_dec_to_input);
    EXPECT_EQ(b.normalization, a.normalization);
    EXPECT_EQ(b.scaling_factor, a.scaling_factor);
    EXPECT_EQ(b.hook, a.hook);
    EXPECT_EQ(b.dtype, "float32");
    for (const auto& [x, y] : std::vector<std::pair<const SaeTensor*, const SaeTensor*>>{
             {&read->W_enc, &again->W_enc}, {&read->W_dec, &again->W_dec},
             {&read->b_enc, &again->b_enc}, {&read->b_dec, &again->b_dec},
             {&read->threshold, &again->threshold}, {&read->b_gate, &again->b_gate},
             {&read->r_mag, &again->r_mag}, {&read->b_mag, &again->b_mag}}) {
      EXPECT_EQ(x->shape, y->shape);
      EXPECT_EQ(x->values, y->values);
    }

    // The independent reader: tensors bit for bit, and the cfg.json fields SAELens reads.
    Json check;
    check["tensors"] = Expected(name);
    Json cfg = {{"architecture", SaeArchitectureName(a.architecture)},
                {"d_in", a.d_in},
                {"d_sae", a.d_sae},
                {"apply_b_dec_to_input", a.apply_b_dec_to_input},
                {"normalize_activations", SaeNormalizationName(a.normalization)},
                {"dtype", "float32"},
                {"hook_name", a.hook},
                {"metadata.hook_name", a.hook},
                {"metadata.recipe.steps", 10},
                {"metadata.seed", 3}};
    if (a.architecture == SaeArchitecture::kTopK) cfg["k"] = a.k;
    if (a.normalization == SaeNormalization::kExpectedAverageOnlyIn) {
      cfg["scaling_factor"] = a.scaling_factor;
    }
    check["cfg"] = cfg;
    WriteFile(scratch_ + "/check.json", check.dump());
    std::string output;
    EXPECT_EQ(RunCommand(std::string(KNOCKOUT_REFERENCE_PYTHON) + " " + Shell(kScript) +
                      " --check-saelens " + Shell(out) + " " + Shell(scratch_ + "/check.json"),
                  &output),
              0)
        << output;
  }
}

TEST_F(SaeTest, WriteSaeLensRefusesTensorsThatDoNotFit) {
  StatusOr<SaeWeights> read = ReadSae(Case("saelens_jumprelu"));
  ASSERT_TRUE(read.ok());
  SaeWeights bad = *read;
  bad.W_enc.shape = {8, 4};
  ExpectError(WriteSaeLens(scratch_ + "/a", bad), StatusCode::kInvalidArgument,
              {scratch_ + "/a", "\"W_enc\"", "[8, 4]"});
  bad = *read;
  bad.threshold = SaeTensor();
  ExpectError(WriteSaeLens(scratch_ + "/b", bad), StatusCode::kInvalidArgument, {"\"threshold\""});
  bad = *read;
  bad.b_dec.values.pop_back();
  ExpectError(WriteSaeLens(scratch_ + "/c", bad), StatusCode::kInvalidArgument, {"\"b_dec\""});
  bad = *read;
  bad.config.architecture = SaeArchitecture::kTopK;
  bad.config.k = 0;
  ExpectError(WriteSaeLens(scratch_ + "/d", bad), StatusCode::kInvalidArgument, {"k"});
  ExpectError(WriteSaeLens(scratch_ + "/e", *read, "[1]"), StatusCode::kInvalidArgument,
              {"metadata"});
  EXPECT_FALSE(fs::exists(scratch_ + "/a/cfg.json"));
}

TEST(SaeNames, PrintTheFileSpellings) {
  EXPECT_STREQ(SaeArchitectureName(SaeArchitecture::kJumpRelu), "jumprelu");
  EXPECT_STREQ(SaeArchitectureName(SaeArchitecture::kTopK), "topk");
  EXPECT_STREQ(SaeSourceName(SaeSource::kGemmaScope), "gemma_scope");
  EXPECT_STREQ(SaeNormalizationName(SaeNormalization::kExpectedAverageOnlyIn),
               "expected_average_only_in");
}

}  // namespace
}  // namespace knockout::formats
