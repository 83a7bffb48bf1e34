// SAE training (worker/sae/train.h) against independent references:
//  - two optimiser steps (TopK with AuxK active; JumpReLU with its straight-through estimators)
//    equal tests/reference/sae_train_reference.py's PyTorch autograd + torch.optim.Adam within
//    1e-5;
//  - a CI-sized run on a tiny random model lowers the held-out FVU, computed here in float64 from
//    the files read back with formats::ReadSae (science.md: sum |x - x_hat|^2 /
//    sum |x - mean x|^2), below 0.3 and below a third of the initial SAE's, for TopK and
//    JumpReLU; TopK's decoder rows stay unit-norm;
//  - same seed, same inputs, same thread count: bit-identical weights;
//  - the buffer serves every row once per epoch (everything held) or streams a bounded window.
#include "worker/sae/train.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "formats/sae.h"
#include "worker/model/model.h"
#include "worker/sae/evaluate.h"
#include "worker/sae/sae.h"

namespace knockout::sae {
namespace {

namespace fs = std::filesystem;
using formats::SaeArchitecture;

// --- helpers ---------------------------------------------------------------------------------

std::string TempDir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() /
                       ("knockout_sae_train_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

at::Tensor FromSae(const formats::SaeTensor& t) {
  return at::from_blob(const_cast<float*>(t.values.data()), t.shape, at::kFloat).clone();
}

// The reference encode/decode of science.md in float64, written here (not the runtime's):
// pre = (x - b_dec) W_enc + b_enc; topk: the k largest pre, ReLU'd; jumprelu: pre * 1[pre > t].
double ReferenceFvu(const formats::SaeWeights& w, const at::Tensor& x_in) {
  const int64_t n = x_in.size(0), d = w.config.d_in, m = w.config.d_sae;
  at::Tensor x = x_in.to(at::kDouble).contiguous();
  const double* xp = x.data_ptr<double>();
  std::vector<double> mean(d, 0.0);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < d; ++j) mean[j] += xp[r * d + j] / static_cast<double>(n);
  }
  double error = 0.0, variance = 0.0;
  std::vector<double> pre(m), f(m), centred(d);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < d; ++j) centred[j] = xp[r * d + j] - w.b_dec.values[j];
    for (int64_t i = 0; i < m; ++i) {
      double sum = w.b_enc.values[i];
      for (int64_t j = 0; j < d; ++j) sum += centred[j] * w.W_enc.values[j * m + i];
      pre[i] = sum;
    }
    if (w.config.architecture == SaeArchitecture::kTopK) {
      std::vector<int64_t> order(m);
      for (int64_t i = 0; i < m; ++i) order[i] = i;
      std::partial_sort(order.begin(), order.begin() + w.config.k, order.end(),
                        [&](int64_t a, int64_t b) { return pre[a] > pre[b]; });
      std::fill(f.begin(), f.end(), 0.0);
      for (int64_t j = 0; j < w.config.k; ++j) f[order[j]] = std::max(0.0, pre[order[j]]);
    } else {
      for (int64_t i = 0; i < m; ++i) f[i] = pre[i] > w.threshold.values[i] ? pre[i] : 0.0;
    }
    for (int64_t j = 0; j < d; ++j) {
      double x_hat = w.b_dec.values[j];
      for (int64_t i = 0; i < m; ++i) {
        if (f[i] != 0.0) x_hat += f[i] * w.W_dec.values[i * d + j];
      }
      error += (x_hat - xp[r * d + j]) * (x_hat - xp[r * d + j]);
      variance += (xp[r * d + j] - mean[j]) * (xp[r * d + j] - mean[j]);
    }
  }
  return error / variance;
}

// A tiny random Llama and random prompts: activations with structure (token identity) and
// context, for a run of a few seconds.
formats::ModelConfig TinyConfig() {
  formats::ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.family = formats::Family::kLlama;
  c.vocab_size = 48;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 256;
  return c;
}

std::vector<std::vector<int64_t>> RandomPrompts(int64_t count, uint64_t seed, int64_t vocab) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t len = 6 + at::randint(10, {1}, g).item<int64_t>();
    at::Tensor ids = at::randint(vocab, {len}, g);
    prompts.emplace_back(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + len);
  }
  return prompts;
}

class TinyModel : public ::testing::Test {
 protected:
  void SetUp() override {
    at::set_num_threads(1);
    model_ = model::Model::Random(TinyConfig(), /*seed=*/3, /*init_std=*/0.3, model::LoadOptions());
  }
  std::unique_ptr<model::Model> model_;
};

// --- exact steps against PyTorch autograd ------------------------------------------------------

struct StepCase {
  SaeArchitecture architecture;
  const char* name;
};

class ReferenceSteps : public ::testing::TestWithParam<StepCase> {};

TEST_P(ReferenceSteps, TwoStepsEqualAutogradAndAdam) {
  at::set_num_threads(1);
  const StepCase c = GetParam();
  const int64_t d_in = 12, n = 64;
  SaeTrainOptions o;
  o.architecture = c.architecture;
  o.d_sae = 40;
  o.k = 4;
  o.k_aux = 6;
  o.aux_coefficient = 0.5;  // large, so that AuxK's share of the update is visible
  o.dead_tokens = n;        // latents silent in step 1 are dead in step 2
  o.steps = 3;
  o.lr = 1e-2;
  o.warmup_fraction = 0.0;  // constant lr: the reference needs no schedule
  o.decay_fraction = 0.0;
  o.adam_epsilon = 1e-3;    // keeps Adam from amplifying float rounding of near-zero gradients
  o.l0_coefficient = 0.01;
  o.l0_warmup_fraction = 0.0;
  o.bandwidth = 0.5;
  o.initial_threshold = 0.3;
  o.seed = 11;
  at::Generator g = at::detail::createCPUGenerator(5);
  // Anisotropic rows with an offset and a scale far from 1 (exercises the internal scaling).
  at::Tensor mix = at::randn({d_in, d_in}, g);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(at::mm(at::randn({n, d_in}, g), mix) * 3.0 + 1.5);
  auto trainer = SaeTrainer::Create(d_in, o);
  ASSERT_TRUE(trainer.ok()) << trainer.status().ToString();
  ASSERT_TRUE((*trainer)->Initialize(at::cat(batches, 0)).ok());
  const formats::SaeWeights before = (*trainer)->Weights("blocks.0.hook_resid_post");
  std::vector<TrainStepStats> stats;
  for (const at::Tensor& b : batches) stats.push_back((*trainer)->Step(b));
  const formats::SaeWeights after = (*trainer)->Weights("blocks.0.hook_resid_post");
  if (c.architecture == SaeArchitecture::kTopK) {
    ASSERT_GT(stats[1].dead, 0) << "AuxK must be exercised";
    ASSERT_GT(stats[1].aux_loss, 0.0);
  }

  const std::string dir = TempDir(c.name);
  nlohmann::json options = {
      {"architecture", c.architecture == SaeArchitecture::kTopK ? "topk" : "jumprelu"},
      {"scale", (*trainer)->scale()},  {"k", o.k},
      {"k_aux", o.k_aux},              {"aux_coefficient", o.aux_coefficient},
      {"dead_tokens", o.dead_tokens},  {"l0_coefficient", o.l0_coefficient},
      {"bandwidth", o.bandwidth},      {"lr", o.lr},
      {"beta1", o.adam_beta1},         {"beta2", o.adam_beta2},
      {"epsilon", o.adam_epsilon},     {"steps", static_cast<int>(batches.size())}};
  std::vector<at::Tensor> keep;
  std::vector<formats::TensorToWrite> tensors;
  auto add = [&](const std::string& name, const at::Tensor& t) {
    keep.push_back(t.to(at::kFloat).contiguous());
    tensors.push_back({name, formats::DType::kF32, keep.back().sizes().vec(),
                       keep.back().data_ptr(), static_cast<size_t>(keep.back().nbytes())});
  };
  add("W_enc", FromSae(before.W_enc));
  add("b_enc", FromSae(before.b_enc));
  add("W_dec", FromSae(before.W_dec));
  add("b_dec", FromSae(before.b_dec));
  if (!before.threshold.empty()) add("threshold", FromSae(before.threshold));
  for (size_t i = 0; i < batches.size(); ++i) add("x" + std::to_string(i + 1), batches[i]);
  ASSERT_TRUE(formats::WriteSafetensors(dir + "/in.safetensors", tensors,
                                        {{"options", options.dump()}})
                  .ok());
  std::string output;
  const int rc = RunCommand(std::string(KNOCKOUT_REFERENCE_PYTHON) + " '" + KNOCKOUT_SOURCE_DIR +
                                "/tests/reference/sae_train_reference.py' '" + dir +
                                "/in.safetensors' '" + dir + "/out.safetensors'",
                            &output);
  ASSERT_EQ(rc, 0) << output;
  auto file = formats::SafetensorsFile::Open(dir + "/out.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::map<std::string, at::Tensor> reference;
  for (const formats::TensorInfo& info : (*file)->header().tensors) {
    at::Tensor t = at::empty(info.shape, at::kFloat);
    std::memcpy(t.data_ptr(), (*file)->TensorData(info), info.num_bytes());
    reference[info.name] = t;
  }
  auto compare = [&](const std::string& name, const formats::SaeTensor& before_t,
                     const formats::SaeTensor& after_t) {
    at::Tensor ours = FromSae(after_t);
    ASSERT_TRUE(reference.count(name)) << name;
    ASSERT_EQ(ours.sizes(), reference[name].sizes()) << name;
    EXPECT_LE((ours - reference[name]).abs().max().item<double>(), 1e-5) << name;
    // The comparison must not pass by comparing parameters that did not move.
    EXPECT_GE((ours - FromSae(before_t)).abs().max().item<double>(), 1e-3) << name << " moved";
  };
  compare("W_enc", before.W_enc, after.W_enc);
  compare("b_enc", before.b_enc, after.b_enc);
  compare("W_dec", before.W_dec, after.W_dec);
  compare("b_dec", before.b_dec, after.b_dec);
  if (c.architecture == SaeArchitecture::kJumpRelu) {
    compare("threshold", before.threshold, after.threshold);
  }
  for (size_t i = 0; i < stats.size(); ++i) {
    EXPECT_NEAR(stats[i].fvu, reference["fvu"][i].item<double>(), 1e-5) << "step " << i + 1;
    EXPECT_NEAR(stats[i].l0, reference["l0"][i].item<double>(), 1e-6) << "step " << i + 1;
    EXPECT_NEAR(stats[i].aux_loss, reference["aux"][i].item<double>(), 1e-6) << "step " << i + 1;
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Architectures, ReferenceSteps,
                         ::testing::Values(StepCase{SaeArchitecture::kTopK, "topk"},
                                           StepCase{SaeArchitecture::kJumpRelu, "jumprelu"}),
                         [](const auto& info) { return std::string(info.param.name); });

// --- the buffer --------------------------------------------------------------------------------

// Rows i carry the value i in every column, so that served rows can be identified.
at::Tensor NumberedRows(int64_t n, int64_t d) {
  return at::arange(n, at::kFloat).unsqueeze(1).expand({n, d}).contiguous();
}

std::vector<int64_t> RowIds(const at::Tensor& batch) {
  at::Tensor first = batch.select(1, 0).to(at::kLong).contiguous();
  return std::vector<int64_t>(first.data_ptr<int64_t>(), first.data_ptr<int64_t>() + first.numel());
}

TEST(ActivationBuffer, HoldsASmallSourceWholeAndServesEachRowOncePerEpoch) {
  TensorSource source(NumberedRows(50, 3), 7);
  at::Generator g = at::detail::createCPUGenerator(1);
  auto buffer = ActivationBuffer::Create(&source, 64, &g);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  EXPECT_TRUE((*buffer)->holds_everything());
  std::vector<int64_t> served;
  for (int i = 0; i < 10; ++i) {  // 10 x 10 rows = 2 epochs of 50
    auto batch = (*buffer)->Next(10);
    ASSERT_TRUE(batch.ok());
    for (int64_t id : RowIds(*batch)) served.push_back(id);
  }
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<int64_t> ids(served.begin() + 50 * epoch, served.begin() + 50 * (epoch + 1));
    std::vector<int64_t> sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 50; ++i) ASSERT_EQ(sorted[i], i) << "epoch " << epoch;
    if (epoch == 1) {
      EXPECT_NE(ids, std::vector<int64_t>(served.begin(), served.begin() + 50))
          << "a new permutation per epoch";
    }
  }
}

TEST(ActivationBuffer, StreamsALargeSourceThroughABoundedWindow) {
  const int64_t rows = 1000;
  TensorSource source(NumberedRows(rows, 2), 16);
  at::Generator g = at::detail::createCPUGenerator(2);
  auto buffer = ActivationBuffer::Create(&source, 100, &g);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  EXPECT_FALSE((*buffer)->holds_everything());
  std::vector<int64_t> count(rows, 0);
  int64_t max_held = 0;
  for (int i = 0; i < 200; ++i) {  // 200 x 25 = 5000 rows: several passes
    auto batch = (*buffer)->Next(25);
    ASSERT_TRUE(batch.ok());
    for (int64_t id : RowIds(*batch)) ++count[id];
    max_held = std::max<int64_t>(max_held, (*buffer)->held().size(0));
  }
  EXPECT_LE(max_held, 100 + 16) << "capacity plus at most one block";
  EXPECT_GE((*buffer)->epochs_started(), 4);
  for (int64_t i = 0; i < rows; ++i) EXPECT_GE(count[i], 1) << "row " << i << " never served";
}

TEST(ActivationBuffer, AnEmptySourceIsAnError) {
  TensorSource source(at::zeros({0, 4}), 8);
  at::Generator g = at::detail::createCPUGenerator(3);
  auto buffer = ActivationBuffer::Create(&source, 64, &g);
  ASSERT_FALSE(buffer.ok());
  EXPECT_EQ(buffer.status().code(), StatusCode::kFailedPrecondition);
}

// --- options -----------------------------------------------------------------------------------

TEST(TrainOptions, BadValuesNameTheFlag) {
  SaeTrainOptions o;
  o.d_sae = 64;
  o.k = 65;
  Status s = ValidateTrainOptions(o, 16);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--k"), std::string::npos) << s.message();
  o.k = 8;
  o.batch_tokens = 512;
  o.buffer_tokens = 256;
  s = ValidateTrainOptions(o, 16);
  EXPECT_NE(s.message().find("--buffer-tokens"), std::string::npos) << s.message();
  o.buffer_tokens = 4096;
  o.architecture = SaeArchitecture::kGated;
  EXPECT_FALSE(ValidateTrainOptions(o, 16).ok());
  o.architecture = SaeArchitecture::kTopK;
  EXPECT_TRUE(ValidateTrainOptions(o, 16).ok());
}

// --- training on a tiny model ------------------------------------------------------------------

struct RunOutput {
  TrainResult result;
  at::Tensor held_out;
};

RunOutput Train(const model::Model& model, SaeArchitecture architecture, uint64_t seed,
                int64_t buffer_tokens = 262144) {
  const model::HookPoint hook = model::HookPoint::ResidPost(1);
  auto source = PromptActivationSource::Create(model, hook, RandomPrompts(120, 7, 48), 0, 16);
  EXPECT_TRUE(source.ok()) << source.status().ToString();
  SaeTrainOptions o;
  o.architecture = architecture;
  o.d_sae = 128;
  o.k = 12;
  o.steps = 400;
  o.batch_tokens = 256;
  o.lr = 3e-3;
  o.seed = seed;
  o.dead_tokens = 2000;
  o.l0_coefficient = 2e-3;
  o.buffer_tokens = buffer_tokens;
  auto result = TrainSae(**source, o, hook.Name());
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  auto held_out = HookActivations(model, hook, RandomPrompts(30, 8, 48), 0);
  EXPECT_TRUE(held_out.ok());
  return {std::move(*result), *held_out};
}

class TrainOnTinyModel : public TinyModel,
                         public ::testing::WithParamInterface<StepCase> {};

TEST_P(TrainOnTinyModel, LowersHeldOutFvuAndReadsBack) {
  const StepCase c = GetParam();
  RunOutput run = Train(*model_, c.architecture, 1);
  const std::string dir = TempDir(std::string("tiny_") + c.name);
  ASSERT_TRUE(formats::WriteSaeLens(dir, run.result.weights, R"({"training": {"test": true}})").ok());
  auto read = formats::ReadSae(dir);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(read->config.architecture, c.architecture);
  EXPECT_EQ(read->config.hook, "blocks.1.hook_resid_post");
  EXPECT_TRUE(read->config.apply_b_dec_to_input);
  EXPECT_EQ(read->W_enc.values, run.result.weights.W_enc.values);
  EXPECT_EQ(read->W_dec.values, run.result.weights.W_dec.values);
  EXPECT_EQ(read->b_dec.values, run.result.weights.b_dec.values);

  const double initial = ReferenceFvu(run.result.initial_weights, run.held_out);
  const double trained = ReferenceFvu(*read, run.held_out);
  std::printf("%s: held-out FVU %.4f (initial SAE %.4f)\n", c.name, trained, initial);
  EXPECT_LT(trained, 0.3);
  EXPECT_LT(trained, initial / 3.0);

  // The runtime reads the file the same way (its Fvu equals the reference's).
  auto runtime = Sae::Load(dir, "", model_->config(), model_->device(), model_->dtype());
  ASSERT_TRUE(runtime.ok()) << runtime.status().ToString();
  EXPECT_NEAR(Fvu(**runtime, run.held_out), trained, 1e-4);

  if (c.architecture == SaeArchitecture::kTopK) {
    at::Tensor norms = FromSae(read->W_dec).norm(2, {1});
    EXPECT_LE((norms - 1).abs().max().item<double>(), 1e-5) << "unit-norm decoder rows";
  }
  fs::remove_all(dir);
}

TEST_P(TrainOnTinyModel, SameSeedIsBitIdenticalOtherSeedIsNot) {
  const StepCase c = GetParam();
  RunOutput a = Train(*model_, c.architecture, 4);
  RunOutput b = Train(*model_, c.architecture, 4);
  RunOutput other = Train(*model_, c.architecture, 5);
  EXPECT_EQ(a.result.weights.W_enc.values, b.result.weights.W_enc.values);
  EXPECT_EQ(a.result.weights.W_dec.values, b.result.weights.W_dec.values);
  EXPECT_EQ(a.result.weights.b_enc.values, b.result.weights.b_enc.values);
  EXPECT_EQ(a.result.weights.b_dec.values, b.result.weights.b_dec.values);
  EXPECT_EQ(a.result.weights.threshold.values, b.result.weights.threshold.values);
  EXPECT_NE(a.result.weights.W_enc.values, other.result.weights.W_enc.values);
}

// A buffer smaller than the data (~1,200 rows): the model's activations are streamed through a
// mixing buffer, pass after pass; training still works and is still deterministic.
TEST_F(TinyModel, StreamsActivationsThroughASmallBuffer) {
  RunOutput a = Train(*model_, SaeArchitecture::kTopK, 6, /*buffer_tokens=*/512);
  RunOutput b = Train(*model_, SaeArchitecture::kTopK, 6, /*buffer_tokens=*/512);
  EXPECT_FALSE(a.result.held_everything);
  EXPECT_GT(a.result.epochs, 10);
  EXPECT_EQ(a.result.weights.W_enc.values, b.result.weights.W_enc.values);
  const double initial = ReferenceFvu(a.result.initial_weights, a.held_out);
  const double trained = ReferenceFvu(a.result.weights, a.held_out);
  std::printf("streamed: held-out FVU %.4f (initial SAE %.4f)\n", trained, initial);
  EXPECT_LT(trained, 0.3);
  EXPECT_LT(trained, initial / 3.0);
}

INSTANTIATE_TEST_SUITE_P(Architectures, TrainOnTinyModel,
                         ::testing::Values(StepCase{SaeArchitecture::kTopK, "topk"},
                                           StepCase{SaeArchitecture::kJumpRelu, "jumprelu"}),
                         [](const auto& info) { return std::string(info.param.name); });

// --- evaluation --------------------------------------------------------------------------------

TEST_F(TinyModel, EvaluationMatchesTheReferenceAndAPerfectSpliceCostsNothing) {
  RunOutput run = Train(*model_, SaeArchitecture::kTopK, 2);
  auto sae = Sae::FromWeights(run.result.weights, model_->config(), model_->device(),
                              model_->dtype());
  ASSERT_TRUE(sae.ok()) << sae.status().ToString();
  const auto prompts = RandomPrompts(30, 8, 48);
  std::vector<EvalSequence> sequences;
  for (const auto& p : prompts) {
    // The last 3 tokens play the response.
    sequences.push_back({p, static_cast<int64_t>(p.size()) - 3});
  }
  auto e = EvaluateSae(*model_, *sae, sequences, 0);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  // S is every position but the first: the same rows HookActivations gives.
  EXPECT_EQ(e->positions, run.held_out.size(0));
  EXPECT_NEAR(e->fvu, ReferenceFvu(run.result.weights, run.held_out), 1e-4);
  EXPECT_GT(e->prompt.tokens, 0);
  EXPECT_EQ(e->response.tokens, 3 * static_cast<int64_t>(prompts.size()));
  EXPECT_GT(e->response.kl, 0.0);

  // An SAE whose reconstruction is exact (d_sae = d_in, identity weights, k = d_in on positive
  // activations shifted by b_dec) leaves the forward pass unchanged: KL 0, CE unchanged.
  formats::SaeWeights identity = run.result.weights;
  const int64_t d = identity.config.d_in;
  identity.config.architecture = SaeArchitecture::kJumpRelu;
  identity.config.d_sae = 2 * d;  // latents x - b and -(x - b): ReLU keeps one of each pair
  identity.W_enc = {{d, 2 * d}, std::vector<float>(d * 2 * d, 0.0f)};
  identity.W_dec = {{2 * d, d}, std::vector<float>(2 * d * d, 0.0f)};
  for (int64_t j = 0; j < d; ++j) {
    identity.W_enc.values[j * 2 * d + j] = 1.0f;
    identity.W_enc.values[j * 2 * d + d + j] = -1.0f;
    identity.W_dec.values[j * d + j] = 1.0f;
    identity.W_dec.values[(d + j) * d + j] = -1.0f;
  }
  identity.b_enc = {{2 * d}, std::vector<float>(2 * d, 0.0f)};
  identity.threshold = {{2 * d}, std::vector<float>(2 * d, 0.0f)};
  auto exact = Sae::FromWeights(identity, model_->config(), model_->device(), model_->dtype());
  ASSERT_TRUE(exact.ok()) << exact.status().ToString();
  auto perfect = EvaluateSae(*model_, *exact, sequences, 0);
  ASSERT_TRUE(perfect.ok()) << perfect.status().ToString();
  EXPECT_LT(perfect->fvu, 1e-10);
  EXPECT_LT(perfect->prompt.kl, 1e-9);
  EXPECT_LT(perfect->response.kl, 1e-9);
  EXPECT_NEAR(perfect->response.ce_spliced, perfect->response.ce_clean, 1e-6);
  EXPECT_NEAR(perfect->response.ce_recovered, 1.0, 1e-6);
}

TEST_F(TinyModel, BadInputsAreErrors) {
  const model::HookPoint embed = model::HookPoint::Embed();
  auto bad_hook = PromptActivationSource::Create(*model_, embed, RandomPrompts(4, 1, 48), 0, 4);
  ASSERT_FALSE(bad_hook.ok());
  EXPECT_NE(bad_hook.status().message().find("hook_embed"), std::string::npos);
  auto too_short = PromptActivationSource::Create(*model_, model::HookPoint::ResidPost(0),
                                                  {{1, 2, 3}, {4}}, 0, 4);
  ASSERT_FALSE(too_short.ok());
  EXPECT_NE(too_short.status().message().find("prompt 1"), std::string::npos);
}

}  // namespace
}  // namespace knockout::sae
