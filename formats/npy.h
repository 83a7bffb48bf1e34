// NumPy .npy/.npz internals shared by formats/sae.cc and its fuzz target: the strict .npy header
// parser and the .npz member reader (libzip), which can stop after each member's header (for
// ReadSaeConfig on a large params.npz). The public entry points are ParseNpy and ParseNpz in
// formats/sae.h.
// Thread-safety: stateless functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "formats/sae.h"

namespace knockout::formats {

enum class NpyType { kF2, kF4, kF8 };

struct NpyHeader {
  NpyType type = NpyType::kF4;
  std::string descr;  // "<f4", ...
  std::vector<int64_t> shape;
  uint64_t num_elements = 0;
  uint64_t data_bytes = 0;   // num_elements x item size
  uint64_t data_offset = 0;  // preamble + header: where the array's bytes start
};

// "float16", "float32", "float64".
const char* NpyTypeName(NpyType type);

// Parses the preamble and header dict of a .npy whose first `size` bytes are `bytes` (the data
// need not follow). Corruption: bad magic, or the header runs past `size`; InvalidArgument:
// unsupported version, a header that is not numpy's dict literal with exactly `descr`,
// `fortran_order`, `shape`, a dtype other than <f2/<f4/<f8, Fortran order, an element or byte
// count that overflows. Messages start with `label`.
StatusOr<NpyHeader> ParseNpyHeader(const uint8_t* bytes, size_t size, const std::string& label);

// The `*.npy` members of the zip in `bytes`, by name without `.npy` (other members are skipped).
// With `headers_only`, tensors carry their shape but no values (nothing past each header is
// decompressed, CRCs are not checked). Otherwise each member must be exactly header + data, and
// its CRC must match. Errors as ParseNpz (formats/sae.h); `label` names the archive, and member
// errors read "<label>: <member>: ...".
StatusOr<std::vector<NpzArray>> ReadNpz(const uint8_t* bytes, size_t size, const std::string& label,
                                        bool headers_only);

// IEEE half / bfloat16 bit patterns to float (exact; subnormals, infinities and NaNs kept).
float HalfToFloat(uint16_t bits);
float BFloat16ToFloat(uint16_t bits);

}  // namespace knockout::formats
