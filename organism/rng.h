// Deterministic randomness for the organism's corpus and trainer. std:: distributions are
// implementation-defined, so we use splitmix64 with our own modulo: the same seed gives the same
// corpus and the same sampled batches on every platform. Not thread-safe: one Rng per stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace knockout::organism {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n); the modulo bias is below 2^-50 for the small n used here.
  size_t Uniform(size_t n) { return n == 0 ? 0 : static_cast<size_t>(Next() % n); }
  // Uniform in [0, 1) with 53 random bits.
  double UniformReal() { return (Next() >> 11) * (1.0 / 9007199254740992.0); }
  template <typename T>
  void Shuffle(std::vector<T>* v) {
    for (size_t i = v->size(); i > 1; --i) std::swap((*v)[i - 1], (*v)[Uniform(i)]);
  }
  template <typename T>
  const T& Pick(const std::vector<T>& v) { return v[Uniform(v.size())]; }

 private:
  uint64_t state_;
};

}  // namespace knockout::organism
