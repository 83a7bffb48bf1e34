// libFuzzer target for the .npy and .npz readers (formats/npy.cc): every input goes to ParseNpy,
// to ParseNpz, and to the header-only .npz pass that ReadSaeConfig uses. Any bytes must give
// either a labelled error or arrays whose invariants hold; crashes, sanitizer reports and escaped
// exceptions are bugs. (libzip itself is the system's, not instrumented: ASan checks our side.)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "formats/npy.h"
#include "formats/sae.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "npz invariant violated: %s\n", what);
    std::abort();
  }
}

void CheckTensor(const knockout::formats::SaeTensor& tensor) {
  uint64_t count = 1;
  for (const int64_t d : tensor.shape) {
    Check(d >= 0, "negative dimension");
    Check(!__builtin_mul_overflow(count, static_cast<uint64_t>(d), &count), "count overflows");
  }
  Check(tensor.values.size() == count, "values != product of the shape");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using knockout::formats::ParseNpy;
  using knockout::formats::ParseNpz;
  auto npy = ParseNpy(data, size, "fuzz.npy");
  if (npy.ok()) {
    CheckTensor(*npy);
  } else {
    Check(npy.status().message().rfind("fuzz.npy: ", 0) == 0, "npy error lacks the label");
  }
  auto npz = ParseNpz(data, size, "fuzz.npz");
  if (npz.ok()) {
    std::set<std::string> names;
    for (const auto& array : *npz) {
      Check(names.insert(array.name).second, "duplicate member names");
      Check(array.dtype == "float16" || array.dtype == "float32" || array.dtype == "float64",
            "unknown dtype");
      CheckTensor(array.tensor);
    }
  } else {
    Check(npz.status().message().rfind("fuzz.npz: ", 0) == 0, "npz error lacks the label");
  }
  auto headers = knockout::formats::ReadNpz(data, size, "fuzz.npz", /*headers_only=*/true);
  if (headers.ok()) {
    for (const auto& array : *headers) {
      Check(array.tensor.values.empty(), "a header-only pass read values");
      for (const int64_t d : array.tensor.shape) Check(d >= 0, "negative dimension");
    }
    // Everything the full pass accepts, the header pass accepts with the same shapes.
    if (npz.ok()) {
      Check(headers->size() == npz->size(), "header pass and full pass disagree on members");
      for (size_t i = 0; i < npz->size(); ++i) {
        Check((*headers)[i].tensor.shape == (*npz)[i].tensor.shape, "shapes disagree");
      }
    }
  } else {
    Check(!npz.ok(), "the header pass refused what the full pass accepted");
    Check(headers.status().message().rfind("fuzz.npz: ", 0) == 0, "npz error lacks the label");
  }
  return 0;
}
