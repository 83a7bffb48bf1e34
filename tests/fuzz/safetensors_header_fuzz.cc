// libFuzzer target for the safetensors header parser: any bytes must give either an error or a
// header whose invariants hold; crashes, sanitizer reports and escaped exceptions are bugs.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "formats/safetensors.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "safetensors invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using knockout::formats::DTypeSize;
  using knockout::formats::ParseSafetensorsHeader;
  auto header = ParseSafetensorsHeader(data, size, size, "fuzz");
  if (!header.ok()) {
    Check(header.status().message().rfind("fuzz: ", 0) == 0, "error message lacks the label");
    return 0;
  }
  Check(header->data_offset >= 8 && header->data_offset + header->data_size == size,
        "data section does not end at the end of the file");
  uint64_t prev_end = 0;
  for (size_t i = 0; i < header->tensors.size(); ++i) {
    const auto& t = header->tensors[i];
    Check(t.begin <= t.end && t.end <= header->data_size, "tensor outside the data section");
    Check(t.num_bytes() == t.num_elements() * DTypeSize(t.dtype),
          "num_bytes != num_elements * dtype size");
    if (i > 0) Check(header->tensors[i - 1].begin <= t.begin, "tensors not sorted by begin");
    // Empty ranges cannot overlap; non-empty ones must start at or after every earlier end.
    if (t.begin == t.end) continue;
    Check(t.begin >= prev_end, "tensor byte ranges overlap");
    prev_end = t.end;
    Check(header->Find(t.name) >= 0, "Find misses a tensor");
  }
  return 0;
}
