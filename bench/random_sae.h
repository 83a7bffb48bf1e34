// A random SAE for the benchmarks (sae_sweep_bench, screen_bench): Gao et al.'s initialisation
// (unit-norm decoder rows, the encoder their transpose, zero biases), TopK or JumpReLU
// (threshold 0.5), written in SAELens layout. A failure to write ends the program (the bench's
// own temp dir, not input).
#pragma once

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "formats/sae.h"

namespace knockout::bench {

inline void WriteRandomSae(const std::string& dir, const std::string& hook, int64_t d_in,
                           int64_t latents, const std::string& arch, int64_t k, uint64_t seed) {
  namespace kf = knockout::formats;
  at::manual_seed(static_cast<int64_t>(seed));
  at::Tensor w_dec = at::randn({latents, d_in});
  w_dec = w_dec / w_dec.norm(2, {1}, true);
  at::Tensor w_enc = w_dec.t().contiguous();
  auto values = [](const at::Tensor& t) {
    at::Tensor c = t.contiguous().to(at::kFloat);
    return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  };
  kf::SaeWeights sae;
  sae.config.architecture = arch == "topk" ? kf::SaeArchitecture::kTopK : kf::SaeArchitecture::kJumpRelu;
  sae.config.k = arch == "topk" ? k : 0;
  sae.config.d_in = d_in;
  sae.config.d_sae = latents;
  sae.config.hook = hook;
  sae.config.apply_b_dec_to_input = true;
  sae.W_enc = {{d_in, latents}, values(w_enc)};
  sae.W_dec = {{latents, d_in}, values(w_dec)};
  sae.b_enc = {{latents}, std::vector<float>(latents, 0.0f)};
  sae.b_dec = {{d_in}, std::vector<float>(d_in, 0.0f)};
  if (arch == "jumprelu") sae.threshold = {{latents}, std::vector<float>(latents, 0.5f)};
  const auto status = kf::WriteSaeLens(dir, sae);
  if (!status.ok()) {
    std::fprintf(stderr, "random SAE: %s\n", status.ToString().c_str());
    std::exit(2);
  }
}

}  // namespace knockout::bench
