// The safetensors file format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON header, then the raw tensor data. This module
// parses and validates headers, memory-maps files, and writes files atomically. It does not
// depend on LibTorch, so that the header parser can be fuzzed and reused by tools without torch.
// Thread-safety: parsed headers and MappedFile are immutable after construction and may be read
// from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace knockout::formats {

// Element types that can appear in a safetensors file. Only F32, F16 and BF16 are model weights;
// the integer types are used for token ids and masks in test fixtures.
enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ... as spelled in safetensors headers.
const char* DTypeName(DType dtype);
// Parses a header dtype string; NotFound-style InvalidArgument for anything else (e.g. "F8_E4M3").
StatusOr<DType> ParseDType(const std::string& name);
size_t DTypeSize(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  // Byte range [begin, end) relative to the start of the data section (after the header).
  uint64_t begin = 0;
  uint64_t end = 0;

  uint64_t num_elements() const;
  uint64_t num_bytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;            // in ascending order of `begin`
  std::map<std::string, std::string> metadata;  // the optional "__metadata__" object
  uint64_t data_offset = 0;                   // 8 + header length: where the data section starts
  uint64_t data_size = 0;                     // bytes in the data section

  // Index of the tensor called `name`, or -1.
  int Find(const std::string& name) const;
};

// Parses and fully validates the header of a safetensors file whose complete contents (or at
// least the first `file_size` bytes' worth of header) are `bytes[0, size)`. `file_size` is the
// size of the whole file on disk, used to check that every tensor lies inside it. `label` (the
// file path) prefixes every error message.
//
// Errors (all InvalidArgument or Corruption, message naming the file and the tensor or field):
// file shorter than 8 bytes; header length beyond the file or above 100 MB; header not valid
// JSON or not an object; a tensor entry missing "dtype", "shape" or "data_offsets", or with
// fields of the wrong type; an unknown dtype; negative dimensions or an element count that
// overflows; data_offsets out of order, beyond the data section, or whose length disagrees with
// dtype x shape; two tensors whose byte ranges overlap; duplicate tensor names.
// Never crashes, whatever the bytes.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* bytes, size_t size,
                                                   uint64_t file_size, const std::string& label);

// A read-only, private memory mapping of a whole file. Pages are loaded lazily by the kernel; call
// `Release(begin, end)` once a range has been copied elsewhere so that it stops counting towards
// the process's resident memory (keeps peak RSS near one copy of the weights while loading).
class MappedFile {
 public:
  // IOError naming the path if the file cannot be opened, stat'ed or mapped. An empty file maps
  // to data() == nullptr, size() == 0.
  static StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Advises the kernel that bytes [begin, end) will not be needed again (MADV_DONTNEED on the
  // whole pages inside the range). Safe to call with any range; out-of-range parts are ignored.
  void Release(size_t begin, size_t end) const;

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

// A safetensors file opened for reading: the mapping plus its validated header.
class SafetensorsFile {
 public:
  // Opens, maps and validates `path`. Errors: those of MappedFile::Open and
  // ParseSafetensorsHeader.
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const SafetensorsHeader& header() const { return header_; }
  const MappedFile& file() const { return *file_; }
  const std::string& path() const { return file_->path(); }
  // Pointer to the first byte of tensor `info`'s data (inside the mapping).
  const uint8_t* TensorData(const TensorInfo& info) const {
    return file_->data() + header_.data_offset + info.begin;
  }
  // Releases the pages of one tensor (see MappedFile::Release).
  void ReleaseTensor(const TensorInfo& info) const {
    file_->Release(header_.data_offset + info.begin, header_.data_offset + info.end);
  }

 private:
  SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header)
      : file_(std::move(file)), header_(std::move(header)) {}
  std::unique_ptr<MappedFile> file_;
  SafetensorsHeader header_;
};

// One tensor to write: raw little-endian bytes of dtype x shape (not owned; must stay alive
// during the call).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t num_bytes;
};

// Writes a safetensors file atomically: to "<path>.tmp.<pid>", fsync, then rename over `path`,
// so that a crash never leaves a half-written file under the final name. Tensors are laid out
// in the order given, with the header padded with spaces to a multiple of 8 bytes (as the
// reference implementation does). InvalidArgument if a tensor's byte count disagrees with its
// dtype and shape or names repeat; IOError if writing fails (the temporary file is removed).
Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace knockout::formats
