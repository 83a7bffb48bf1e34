#include "formats/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

// Error codes used by the parser, consistently:
//   Corruption      - the bytes contradict the format's own layout: short file, header length
//                     beyond the file, unparsable JSON, offsets out of order / out of range /
//                     disagreeing with dtype x shape, overlapping tensors.
//   InvalidArgument - well-formed bytes with unsupported or malformed values: header above the
//                     size limit, wrong JSON types, missing fields, unknown dtypes, negative or
//                     overflowing shapes, duplicate names or keys.

namespace knockout::formats {
namespace {

using Json = nlohmann::json;

// Same limit as the reference implementation (MAX_HEADER_SIZE): guards against absurd
// allocations when a corrupt length still happens to fit inside a large file.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string Quote(const std::string& s) { return "\"" + s + "\""; }

std::string TensorPrefix(const std::string& label, const std::string& name) {
  return label + ": tensor " + Quote(name) + ": ";
}

// "string", "number", ...: for "expected X, got Y" messages.
std::string JsonTypeName(const Json& j) { return j.type_name(); }

uint64_t ReadLittleEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Product of `shape` times `elem_size`, or false on a negative dim or uint64 overflow. `what`
// receives the reason for the error message.
bool CheckedByteCount(const std::vector<int64_t>& shape, size_t elem_size, uint64_t* numel,
                      uint64_t* nbytes, std::string* what) {
  uint64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      *what = "negative dimension " + std::to_string(shape[i]) + " at index " + std::to_string(i);
      return false;
    }
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(shape[i]), &n)) {
      *what = "element count overflows 64 bits";
      return false;
    }
  }
  uint64_t b = 0;
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(elem_size), &b)) {
    *what = "byte count overflows 64 bits";
    return false;
  }
  *numel = n;
  *nbytes = b;
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string RangeString(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// Real headers nest three levels (root, entry, shape); anything much deeper is hostile. Deep
// values are dropped while parsing, because building, copying or dumping them is memory hungry
// and, in nlohmann's recursive serializer, could overflow the stack.
constexpr int kMaxJsonDepth = 32;

// Parser callback that records the first repeated key in any object (nlohmann's DOM silently
// keeps only the last duplicate, so they must be caught while parsing) and refuses to build
// values nested deeper than kMaxJsonDepth.
struct HeaderParseChecker {
  std::vector<std::set<std::string>> open_objects;  // keys seen so far in each kept object
  std::string current_tensor;                       // last key seen at depth 1
  bool too_deep = false;
  bool found = false;
  int depth = 0;
  std::string key;
  std::string tensor;  // enclosing depth-1 key when depth > 1

  bool OnEvent(int event_depth, nlohmann::json::parse_event_t event, Json& parsed) {
    using E = nlohmann::json::parse_event_t;
    switch (event) {
      case E::object_start:
      case E::array_start:
        if (event_depth >= kMaxJsonDepth) {
          too_deep = true;
          return false;  // discard: the subtree is skipped, object_end is not reported for it
        }
        if (event == E::object_start) open_objects.emplace_back();
        break;
      case E::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case E::key: {
        // Keys of a kept object at depth d arrive with depth d + 1 == open_objects.size().
        if (static_cast<size_t>(event_depth) != open_objects.size() || !parsed.is_string()) break;
        const std::string& k = parsed.get_ref<const std::string&>();
        if (event_depth == 1) current_tensor = k;
        if (!open_objects.back().insert(k).second && !found) {
          found = true;
          depth = event_depth;
          key = k;
          tensor = current_tensor;
        }
        break;
      }
      default:
        break;
    }
    return true;  // keep; errors are reported after parsing
  }
};

// Validates one tensor entry of the header and fills `info` (begin/end relative to the data
// section).
Status ParseTensorEntry(const std::string& label, const std::string& name, const Json& entry,
                        uint64_t data_size, TensorInfo* info) {
  const std::string prefix = TensorPrefix(label, name);
  if (!entry.is_object()) {
    return Status::InvalidArgument(prefix + "expected an object, got " + JsonTypeName(entry));
  }
  info->name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return Status::InvalidArgument(prefix + "missing field \"dtype\"");
  if (!dtype_it->is_string()) {
    return Status::InvalidArgument(prefix + "field \"dtype\": expected a string, got " +
                                   JsonTypeName(*dtype_it));
  }
  StatusOr<DType> dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return dtype.status().WithContext(label + ": tensor " + Quote(name));
  info->dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return Status::InvalidArgument(prefix + "missing field \"shape\"");
  if (!shape_it->is_array()) {
    return Status::InvalidArgument(prefix + "field \"shape\": expected an array, got " +
                                   JsonTypeName(*shape_it));
  }
  info->shape.clear();
  info->shape.reserve(shape_it->size());
  for (size_t i = 0; i < shape_it->size(); ++i) {
    const Json& dim = (*shape_it)[i];
    if (dim.is_number_unsigned()) {
      uint64_t v = dim.get<uint64_t>();
      if (v > static_cast<uint64_t>(INT64_MAX)) {
        return Status::InvalidArgument(prefix + "field \"shape\": dimension " + std::to_string(v) +
                                       " at index " + std::to_string(i) + " is too large");
      }
      info->shape.push_back(static_cast<int64_t>(v));
    } else if (dim.is_number_integer()) {
      int64_t v = dim.get<int64_t>();
      if (v < 0) {
        return Status::InvalidArgument(prefix + "field \"shape\": negative dimension " +
                                       std::to_string(v) + " at index " + std::to_string(i));
      }
      info->shape.push_back(v);
    } else {
      return Status::InvalidArgument(prefix + "field \"shape\": expected integers, got " +
                                     JsonTypeName(dim) + " at index " + std::to_string(i));
    }
  }
  uint64_t numel = 0, nbytes = 0;
  std::string why;
  if (!CheckedByteCount(info->shape, DTypeSize(info->dtype), &numel, &nbytes, &why)) {
    return Status::InvalidArgument(prefix + "field \"shape\" " + ShapeString(info->shape) + ": " +
                                   why);
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) {
    return Status::InvalidArgument(prefix + "missing field \"data_offsets\"");
  }
  const Json& offsets = *offsets_it;
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    std::string got = offsets.dump(-1, ' ', false, Json::error_handler_t::replace);
    if (got.size() > 64) got = got.substr(0, 64) + "...";  // keep messages readable
    return Status::InvalidArgument(
        prefix + "field \"data_offsets\": expected two non-negative integers, got " + got);
  }
  info->begin = offsets[0].get<uint64_t>();
  info->end = offsets[1].get<uint64_t>();
  const std::string range = "data_offsets " + RangeString(info->begin, info->end);
  if (info->begin > info->end) {
    return Status::Corruption(prefix + range + " begin after end");
  }
  if (info->end > data_size) {
    return Status::Corruption(prefix + range + " end beyond the data section (" +
                              std::to_string(data_size) + " bytes)");
  }
  if (info->end - info->begin != nbytes) {
    return Status::Corruption(prefix + range + " length " +
                              std::to_string(info->end - info->begin) + " disagrees with " +
                              DTypeName(info->dtype) + " x " + ShapeString(info->shape) + " (" +
                              std::to_string(nbytes) + " bytes)");
  }
  return Status::Ok();
}

Status ParseMetadata(const std::string& label, const Json& meta,
                     std::map<std::string, std::string>* out) {
  if (!meta.is_object()) {
    return Status::InvalidArgument(label + ": \"__metadata__\": expected an object, got " +
                                   JsonTypeName(meta));
  }
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    if (!it.value().is_string()) {
      return Status::InvalidArgument(label + ": \"__metadata__\" key " + Quote(it.key()) +
                                     ": expected a string value, got " +
                                     JsonTypeName(it.value()));
    }
    (*out)[it.key()] = it.value().get<std::string>();
  }
  return Status::Ok();
}

StatusOr<SafetensorsHeader> ParseHeaderImpl(const uint8_t* bytes, size_t size, uint64_t file_size,
                                            const std::string& label) {
  if (file_size < 8 || size < 8 || bytes == nullptr) {
    return Status::Corruption(label + ": file too short for a safetensors header (" +
                              std::to_string(std::min<uint64_t>(file_size, size)) +
                              " bytes, need at least 8)");
  }
  const uint64_t header_len = ReadLittleEndian64(bytes);
  if (header_len > file_size - 8) {
    return Status::Corruption(label + ": header length " + std::to_string(header_len) +
                              " beyond the file (" + std::to_string(file_size) + " bytes)");
  }
  if (header_len > kMaxHeaderBytes) {
    return Status::InvalidArgument(label + ": header length " + std::to_string(header_len) +
                                   " above the limit of " + std::to_string(kMaxHeaderBytes) +
                                   " bytes");
  }
  if (header_len > size - 8) {
    return Status::InvalidArgument(label + ": header length " + std::to_string(header_len) +
                                   " but only " + std::to_string(size - 8) +
                                   " header bytes were provided");
  }

  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  header.data_size = file_size - header.data_offset;

  HeaderParseChecker checker;
  const char* json_begin = reinterpret_cast<const char*>(bytes + 8);
  Json root = Json::parse(
      json_begin, json_begin + header_len,
      [&checker](int depth, Json::parse_event_t event, Json& parsed) {
        return checker.OnEvent(depth, event, parsed);
      },
      /*allow_exceptions=*/false);
  if (root.is_discarded()) return Status::Corruption(label + ": header is not valid JSON");
  if (checker.too_deep) {
    return Status::InvalidArgument(label + ": header JSON nests deeper than " +
                                   std::to_string(kMaxJsonDepth) + " levels");
  }
  if (!root.is_object()) {
    return Status::InvalidArgument(label + ": header is not a JSON object (got " +
                                   JsonTypeName(root) + ")");
  }
  if (checker.found) {
    if (checker.depth == 1) {
      if (checker.key == "__metadata__") {
        return Status::InvalidArgument(label + ": duplicate \"__metadata__\" entry");
      }
      return Status::InvalidArgument(label + ": duplicate tensor name " + Quote(checker.key));
    }
    const std::string where = checker.tensor == "__metadata__"
                                  ? Quote(checker.tensor)
                                  : "tensor " + Quote(checker.tensor);
    return Status::InvalidArgument(label + ": " + where + ": duplicate key " + Quote(checker.key));
  }

  header.tensors.reserve(root.size());
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      KO_RETURN_IF_ERROR(ParseMetadata(label, it.value(), &header.metadata));
      continue;
    }
    TensorInfo info;
    KO_RETURN_IF_ERROR(ParseTensorEntry(label, it.key(), it.value(), header.data_size, &info));
    header.tensors.push_back(std::move(info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              if (a.begin != b.begin) return a.begin < b.begin;
              if (a.end != b.end) return a.end < b.end;
              return a.name < b.name;
            });
  // Empty tensors occupy no bytes, so they cannot overlap anything; among the rest, sorted by
  // begin, checking neighbours is enough (no overlap so far means ends are increasing).
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : header.tensors) {
    if (t.begin == t.end) continue;
    if (prev != nullptr && t.begin < prev->end) {
      return Status::Corruption(TensorPrefix(label, t.name) + "data_offsets " +
                                RangeString(t.begin, t.end) + " overlap tensor " +
                                Quote(prev->name) + " at " + RangeString(prev->begin, prev->end));
    }
    prev = &t;
  }
  return header;
}

// write(2) until done; false with errno set on failure.
bool WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

std::string ErrnoText(int err) { return std::strerror(err); }

}  // namespace

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF64: return "F64";
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kI16: return "I16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
  }
  return "UNKNOWN";
}

StatusOr<DType> ParseDType(const std::string& name) {
  static const std::pair<const char*, DType> kNames[] = {
      {"F64", DType::kF64}, {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
      {"I64", DType::kI64}, {"I32", DType::kI32}, {"I16", DType::kI16}, {"I8", DType::kI8},
      {"U8", DType::kU8},   {"BOOL", DType::kBool},
  };
  for (const auto& [text, dtype] : kNames) {
    if (name == text) return dtype;
  }
  return Status::InvalidArgument("unknown dtype " + Quote(name));
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64: case DType::kI64: return 8;
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: case DType::kI16: return 2;
    case DType::kI8: case DType::kU8: case DType::kBool: return 1;
  }
  return 1;
}

uint64_t TensorInfo::num_elements() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);  // validated not to overflow when parsed
  return n;
}

int SafetensorsHeader::Find(const std::string& name) const {
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* bytes, size_t size,
                                                   uint64_t file_size, const std::string& label) {
  // The parser is written not to throw; this is a backstop (e.g. std::bad_alloc) so that no
  // exception escapes the module.
  try {
    return ParseHeaderImpl(bytes, size, file_size, label);
  } catch (const std::exception& e) {
    return Status::Internal(label + ": unexpected error while parsing the header: " + e.what());
  } catch (...) {
    return Status::Internal(label + ": unexpected error while parsing the header");
  }
}

StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::IOError(path + ": cannot open: " + ErrnoText(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Status::IOError(path + ": cannot stat: " + ErrnoText(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::IOError(path + ": cannot map: not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return Status::IOError(path + ": cannot mmap " + std::to_string(size) +
                             " bytes: " + ErrnoText(err));
    }
    data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file referenced
  return std::unique_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::Release(size_t begin, size_t end) const {
  if (data_ == nullptr) return;
  end = std::min(end, size_);
  if (begin >= end) return;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  // Only whole pages inside the range: neighbouring tensors may share the boundary pages.
  const size_t first = (begin + page - 1) / page * page;
  const size_t last = end / page * page;
  if (first >= last) return;
  // Advisory only: a failure just leaves the pages resident.
  (void)::madvise(const_cast<uint8_t*>(data_) + first, last - first, MADV_DONTNEED);
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  KO_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  KO_ASSIGN_OR_RETURN(SafetensorsHeader header,
                      ParseSafetensorsHeader(file->data(), file->size(), file->size(), path));
  return std::unique_ptr<SafetensorsFile>(new SafetensorsFile(std::move(file), std::move(header)));
}

Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  // Validate and build the header before touching the file system.
  std::string header_text;
  try {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [key, value] : metadata) meta[key] = value;
      header["__metadata__"] = std::move(meta);
    }
    std::set<std::string> names;
    uint64_t offset = 0;
    for (const TensorToWrite& t : tensors) {
      const std::string prefix = TensorPrefix(path, t.name);
      if (t.name == "__metadata__") {
        return Status::InvalidArgument(prefix + "name is reserved for metadata");
      }
      if (!names.insert(t.name).second) {
        return Status::InvalidArgument(path + ": duplicate tensor name " + Quote(t.name));
      }
      uint64_t numel = 0, nbytes = 0;
      std::string why;
      if (!CheckedByteCount(t.shape, DTypeSize(t.dtype), &numel, &nbytes, &why)) {
        return Status::InvalidArgument(prefix + "shape " + ShapeString(t.shape) + ": " + why);
      }
      if (nbytes != t.num_bytes) {
        return Status::InvalidArgument(prefix + std::to_string(t.num_bytes) +
                                       " bytes given but " + DTypeName(t.dtype) + " x " +
                                       ShapeString(t.shape) + " needs " + std::to_string(nbytes));
      }
      if (t.num_bytes > 0 && t.data == nullptr) {
        return Status::InvalidArgument(prefix + "null data for " + std::to_string(t.num_bytes) +
                                       " bytes");
      }
      uint64_t end = 0;
      if (__builtin_add_overflow(offset, nbytes, &end)) {
        return Status::InvalidArgument(prefix + "total data size overflows 64 bits");
      }
      nlohmann::ordered_json entry = nlohmann::ordered_json::object();
      entry["dtype"] = DTypeName(t.dtype);
      entry["shape"] = t.shape;
      entry["data_offsets"] = {offset, end};
      header[t.name] = std::move(entry);
      offset = end;
    }
    // Strict: invalid UTF-8 in a name or metadata throws here and becomes InvalidArgument.
    header_text = header.dump();
  } catch (const std::exception& e) {
    return Status::InvalidArgument(path + ": cannot encode the header: " + e.what());
  }
  // Pad with spaces so that the data section starts 8-byte aligned (as the reference does).
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) {
    len_bytes[i] = static_cast<uint8_t>(static_cast<uint64_t>(header_text.size()) >> (8 * i));
  }

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IOError(tmp + ": cannot create: " + ErrnoText(errno));
  auto fail = [&](const std::string& what, int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return Status::IOError(tmp + ": " + what + ": " + ErrnoText(err));
  };
  if (!WriteAll(fd, len_bytes, sizeof(len_bytes)) ||
      !WriteAll(fd, header_text.data(), header_text.size())) {
    int err = errno;
    return fail("cannot write the header", err);
  }
  for (const TensorToWrite& t : tensors) {
    if (t.num_bytes > 0 && !WriteAll(fd, t.data, t.num_bytes)) {
      int err = errno;
      return fail("cannot write tensor " + Quote(t.name), err);
    }
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    return fail("cannot fsync", err);
  }
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) {
    int err = errno;
    return fail("cannot close", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return Status::IOError(tmp + ": cannot rename to " + path + ": " + ErrnoText(err));
  }
  // Best effort: persist the rename itself.
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
  return Status::Ok();
}

}  // namespace knockout::formats
