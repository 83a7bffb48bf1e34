#include "formats/npy.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>
#include <string_view>
#include <utility>

#ifdef KNOCKOUT_HAVE_LIBZIP
#include <zip.h>
#endif

// Error codes, as in safetensors.cc:
//   Corruption      - the bytes contradict their own format: bad magic, a header or member that
//                     runs past the end, a data length that disagrees with the header, a zip
//                     that libzip cannot open or whose CRC fails.
//   InvalidArgument - well-formed bytes that this reader refuses: an unsupported .npy version,
//                     dtype, Fortran order, a header that is not numpy's dict, overflowing
//                     shapes, a compression method other than stored/deflated, encryption.

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the .npy reader copies little-endian floats directly");

namespace knockout::formats {
namespace {

constexpr uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
// numpy itself refuses headers above 10,000 bytes unless told otherwise; a megabyte leaves room
// for any real shape while bounding what a corrupt length can make us allocate.
constexpr uint64_t kMaxHeaderBytes = 1 << 20;

size_t ItemSize(NpyType type) {
  switch (type) {
    case NpyType::kF2: return 2;
    case NpyType::kF4: return 4;
    case NpyType::kF8: return 8;
  }
  return 4;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// The header text for messages: at most 120 characters, non-printable bytes escaped.
std::string Printable(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < 120; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (text.size() > 120) out += "...";
  return out;
}

// A recursive-descent parser for exactly the dict literal numpy writes:
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// Spaces may appear between tokens; strings use single or double quotes without escapes; a
// one-element shape needs its trailing comma (`(5)` is an int in Python, not a tuple).
class HeaderDictParser {
 public:
  explicit HeaderDictParser(std::string_view text) : text_(text) {}

  // Fills descr/fortran/shape; `error` says what is wrong and where.
  bool Parse(std::string* descr, bool* fortran, std::vector<int64_t>* shape, std::string* error) {
    std::set<std::string> seen;
    SkipSpaces();
    if (!Consume('{')) return Fail("expected '{'", error);
    SkipSpaces();
    while (!Peek('}')) {
      std::string key;
      if (!ParseString(&key)) return Fail("expected a quoted key or '}'", error);
      if (!seen.insert(key).second) return Fail("key '" + key + "' appears twice", error);
      SkipSpaces();
      if (!Consume(':')) return Fail("expected ':' after '" + key + "'", error);
      SkipSpaces();
      if (key == "descr") {
        if (!ParseString(descr)) {
          return Fail("'descr' must be a dtype string (structured dtypes are not supported)",
                      error);
        }
      } else if (key == "fortran_order") {
        if (ConsumeWord("True")) {
          *fortran = true;
        } else if (ConsumeWord("False")) {
          *fortran = false;
        } else {
          return Fail("'fortran_order' must be True or False", error);
        }
      } else if (key == "shape") {
        if (!ParseShape(shape, error)) return false;
      } else {
        return Fail("unexpected key '" + key + "' (expected descr, fortran_order, shape)", error);
      }
      SkipSpaces();
      if (Consume(',')) {
        SkipSpaces();
        continue;
      }
      if (!Peek('}')) return Fail("expected ',' or '}'", error);
    }
    Consume('}');
    for (const char* required : {"descr", "fortran_order", "shape"}) {
      if (!seen.count(required)) {
        return Fail(std::string("missing key '") + required + "'", error);
      }
    }
    // numpy pads with spaces and ends the header with one newline.
    SkipSpaces();
    if (!Consume('\n') || pos_ != text_.size()) {
      return Fail("expected only spaces and a final newline after '}'", error);
    }
    return true;
  }

 private:
  bool Fail(const std::string& what, std::string* error) {
    *error = what + " at offset " + std::to_string(pos_);
    return false;
  }
  void SkipSpaces() {
    while (pos_ < text_.size() && text_[pos_] == ' ') ++pos_;
  }
  bool Peek(char c) const { return pos_ < text_.size() && text_[pos_] == c; }
  bool Consume(char c) {
    if (!Peek(c)) return false;
    ++pos_;
    return true;
  }
  bool ConsumeWord(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    const size_t end = pos_ + word.size();
    // `Falsey` is a name, not False.
    if (end < text_.size()) {
      const char c = text_[end];
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_') {
        return false;
      }
    }
    pos_ = end;
    return true;
  }
  bool ParseString(std::string* out) {
    if (!Peek('\'') && !Peek('"')) return false;
    const char quote = text_[pos_];
    size_t end = pos_ + 1;
    while (end < text_.size() && text_[end] != quote) {
      const unsigned char c = static_cast<unsigned char>(text_[end]);
      if (c == '\\' || c < 0x20 || c >= 0x7f) return false;
      ++end;
    }
    if (end >= text_.size()) return false;
    *out = std::string(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return true;
  }
  bool ParseInt(int64_t* out, std::string* error) {
    const size_t start = pos_;
    uint64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const uint64_t digit = static_cast<uint64_t>(text_[pos_] - '0');
      if (value > (static_cast<uint64_t>(INT64_MAX) - digit) / 10) {
        return Fail("dimension does not fit in 64 bits", error);
      }
      value = value * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) return Fail("expected a non-negative integer dimension", error);
    if (pos_ - start > 1 && text_[start] == '0') {
      pos_ = start;
      return Fail("dimension with a leading zero", error);
    }
    *out = static_cast<int64_t>(value);
    return true;
  }
  bool ParseShape(std::vector<int64_t>* shape, std::string* error) {
    shape->clear();
    if (!Consume('(')) return Fail("'shape' must be a tuple", error);
    SkipSpaces();
    bool trailing_comma = false;
    while (!Peek(')')) {
      int64_t dim = 0;
      if (!ParseInt(&dim, error)) return false;
      shape->push_back(dim);
      SkipSpaces();
      trailing_comma = Consume(',');
      SkipSpaces();
      if (!trailing_comma && !Peek(')')) return Fail("expected ',' or ')' in 'shape'", error);
    }
    if (shape->size() == 1 && !trailing_comma) {
      return Fail("'shape' (n) is not a tuple; numpy writes (n,)", error);
    }
    Consume(')');
    return true;
  }

  std::string_view text_;
  size_t pos_ = 0;
};

// Validates magic and version; sets the header length and where it starts.
Status ParsePreamble(const uint8_t* bytes, size_t size, const std::string& label,
                     uint64_t* header_begin, uint64_t* header_len) {
  if (size < 10) {
    return Status::Corruption(label + ": truncated: " + std::to_string(size) +
                              " bytes, shorter than the .npy preamble");
  }
  if (std::memcmp(bytes, kMagic, sizeof(kMagic)) != 0) {
    return Status::Corruption(label + ": not a .npy file (bad magic)");
  }
  const int major = bytes[6];
  const int minor = bytes[7];
  if (minor != 0 || major < 1 || major > 3) {
    return Status::InvalidArgument(label + ": unsupported .npy format version " +
                                   std::to_string(major) + "." + std::to_string(minor) +
                                   " (supported: 1.0, 2.0, 3.0)");
  }
  if (major == 1) {
    *header_begin = 10;
    *header_len = static_cast<uint64_t>(bytes[8]) | (static_cast<uint64_t>(bytes[9]) << 8);
  } else {
    if (size < 12) {
      return Status::Corruption(label + ": truncated: " + std::to_string(size) +
                                " bytes, shorter than the .npy 2.0 preamble");
    }
    *header_begin = 12;
    *header_len = static_cast<uint64_t>(bytes[8]) | (static_cast<uint64_t>(bytes[9]) << 8) |
                  (static_cast<uint64_t>(bytes[10]) << 16) |
                  (static_cast<uint64_t>(bytes[11]) << 24);
  }
  if (*header_len > kMaxHeaderBytes) {
    return Status::InvalidArgument(label + ": header length " + std::to_string(*header_len) +
                                   " exceeds the limit of " + std::to_string(kMaxHeaderBytes));
  }
  return Status::Ok();
}

void ConvertToFloat(NpyType type, const uint8_t* data, uint64_t count, float* out) {
  if (count == 0) return;  // `out` may be null
  switch (type) {
    case NpyType::kF4:
      std::memcpy(out, data, count * 4);
      return;
    case NpyType::kF8:
      for (uint64_t i = 0; i < count; ++i) {
        double d;
        std::memcpy(&d, data + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      return;
    case NpyType::kF2:
      for (uint64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, data + 2 * i, 2);
        out[i] = HalfToFloat(h);
      }
      return;
  }
}

}  // namespace

const char* NpyTypeName(NpyType type) {
  switch (type) {
    case NpyType::kF2: return "float16";
    case NpyType::kF4: return "float32";
    case NpyType::kF8: return "float64";
  }
  return "?";
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf / NaN (payload kept)
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;  // +-0
  } else {
    // Subnormal half: normalise into a float32 normal.
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    bits = sign | static_cast<uint32_t>(112 - e) << 23 | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float BFloat16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

StatusOr<NpyHeader> ParseNpyHeader(const uint8_t* bytes, size_t size, const std::string& label) {
  uint64_t begin = 0;
  uint64_t length = 0;
  KO_RETURN_IF_ERROR(ParsePreamble(bytes, size, label, &begin, &length));
  if (begin + length > size) {
    return Status::Corruption(label + ": header of " + std::to_string(length) +
                              " bytes runs past the end (" + std::to_string(size) + " bytes)");
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes + begin),
                              static_cast<size_t>(length));
  NpyHeader header;
  bool fortran = false;
  std::string error;
  HeaderDictParser parser(text);
  if (!parser.Parse(&header.descr, &fortran, &header.shape, &error)) {
    return Status::InvalidArgument(label + ": header is not numpy's dict: " + error + " in \"" +
                                   Printable(text) + "\"");
  }
  if (header.descr == "<f4") {
    header.type = NpyType::kF4;
  } else if (header.descr == "<f8") {
    header.type = NpyType::kF8;
  } else if (header.descr == "<f2") {
    header.type = NpyType::kF2;
  } else {
    return Status::InvalidArgument(label + ": dtype '" + Printable(header.descr) +
                                   "' is not supported (little-endian floats only: <f2, <f4, <f8)");
  }
  if (fortran) {
    return Status::InvalidArgument(label + ": fortran_order is True; only C-order arrays are "
                                   "supported (save with numpy.ascontiguousarray)");
  }
  uint64_t count = 1;
  for (const int64_t dim : header.shape) {
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(dim), &count)) {
      return Status::InvalidArgument(label + ": shape " + ShapeString(header.shape) +
                                     ": element count overflows 64 bits");
    }
  }
  if (__builtin_mul_overflow(count, static_cast<uint64_t>(ItemSize(header.type)),
                             &header.data_bytes)) {
    return Status::InvalidArgument(label + ": shape " + ShapeString(header.shape) +
                                   ": byte count overflows 64 bits");
  }
  header.num_elements = count;
  header.data_offset = begin + length;
  return header;
}

StatusOr<SaeTensor> ParseNpy(const uint8_t* bytes, size_t size, const std::string& label) {
  KO_ASSIGN_OR_RETURN(const NpyHeader header, ParseNpyHeader(bytes, size, label));
  const uint64_t available = size - header.data_offset;
  if (available != header.data_bytes) {
    return Status::Corruption(label + ": data is " + std::to_string(available) +
                              " bytes, but shape " + ShapeString(header.shape) + " of " +
                              header.descr + " needs " + std::to_string(header.data_bytes) +
                              (available < header.data_bytes ? " (truncated)"
                                                             : " (trailing bytes)"));
  }
  SaeTensor tensor;
  tensor.shape = header.shape;
  tensor.values.resize(static_cast<size_t>(header.num_elements));
  ConvertToFloat(header.type, bytes + header.data_offset, header.num_elements,
                 tensor.values.data());
  return tensor;
}

StatusOr<std::vector<NpzArray>> ParseNpz(const uint8_t* bytes, size_t size,
                                         const std::string& label) {
  return ReadNpz(bytes, size, label, /*headers_only=*/false);
}

#ifndef KNOCKOUT_HAVE_LIBZIP

StatusOr<std::vector<NpzArray>> ReadNpz(const uint8_t*, size_t, const std::string& label, bool) {
  return Status::Unimplemented(label + ": this build has no libzip, so it cannot read .npz files");
}

#else

namespace {

struct ZipDiscard {
  void operator()(zip_t* zip) const { zip_discard(zip); }
};
struct ZipFileClose {
  void operator()(zip_file_t* file) const { zip_fclose(file); }
};
using ZipFilePtr = std::unique_ptr<zip_file_t, ZipFileClose>;

// Deflate expands at most ~1032:1; anything claiming more is lying, and we allocate from it.
constexpr uint64_t kMaxDeflateRatio = 1100;

// Reads exactly n bytes of a member, or a Corruption naming where it stopped.
Status ReadExact(zip_file_t* file, uint8_t* out, uint64_t n, uint64_t already,
                 const std::string& label) {
  uint64_t done = 0;
  while (done < n) {
    const zip_int64_t got = zip_fread(file, out + done, n - done);
    if (got < 0) {
      return Status::Corruption(label + ": read failed after " + std::to_string(already + done) +
                                " bytes: " + zip_file_strerror(file));
    }
    if (got == 0) {
      return Status::Corruption(label + ": member ends after " + std::to_string(already + done) +
                                " bytes, expected " + std::to_string(already + n));
    }
    done += static_cast<uint64_t>(got);
  }
  return Status::Ok();
}

StatusOr<NpzArray> ReadMember(zip_t* zip, zip_uint64_t index, const zip_stat_t& st,
                              const std::string& name, const std::string& label,
                              bool headers_only) {
  ZipFilePtr file(zip_fopen_index(zip, index, 0));
  if (!file) {
    return Status::Corruption(label + ": cannot open member: " + zip_strerror(zip));
  }
  // Preamble (10 bytes for version 1.0, 12 for 2.0/3.0), then the rest of the header; nothing
  // past the header is read here.
  std::vector<uint8_t> head(static_cast<size_t>(std::min<uint64_t>(st.size, 10)));
  KO_RETURN_IF_ERROR(ReadExact(file.get(), head.data(), head.size(), 0, label));
  if (head.size() == 10 && head[6] != 1 && st.size >= 12) {
    head.resize(12);
    KO_RETURN_IF_ERROR(ReadExact(file.get(), head.data() + 10, 2, 10, label));
  }
  uint64_t begin = 0;
  uint64_t length = 0;
  KO_RETURN_IF_ERROR(ParsePreamble(head.data(), head.size(), label, &begin, &length));
  if (begin + length > st.size) {
    return Status::Corruption(label + ": header of " + std::to_string(length) +
                              " bytes runs past the member's end (" + std::to_string(st.size) +
                              " bytes)");
  }
  const size_t have = head.size();  // == begin
  head.resize(static_cast<size_t>(begin + length));
  if (head.size() > have) {
    KO_RETURN_IF_ERROR(
        ReadExact(file.get(), head.data() + have, head.size() - have, have, label));
  }
  KO_ASSIGN_OR_RETURN(const NpyHeader header, ParseNpyHeader(head.data(), head.size(), label));
  if (st.size - header.data_offset != header.data_bytes) {
    return Status::Corruption(
        label + ": member holds " + std::to_string(st.size - header.data_offset) +
        " data bytes, but shape " + ShapeString(header.shape) + " of " + header.descr +
        " needs " + std::to_string(header.data_bytes));
  }
  NpzArray array;
  array.name = name;
  array.dtype = NpyTypeName(header.type);
  array.tensor.shape = header.shape;
  if (headers_only) return array;

  std::vector<float>& values = array.tensor.values;
  values.resize(static_cast<size_t>(header.num_elements));
  if (header.type == NpyType::kF4) {
    KO_RETURN_IF_ERROR(ReadExact(file.get(), reinterpret_cast<uint8_t*>(values.data()),
                                 header.data_bytes, header.data_offset, label));
  } else {
    const uint64_t item = ItemSize(header.type);
    const uint64_t chunk_elements = (uint64_t{1} << 16) / item;
    std::vector<uint8_t> chunk(static_cast<size_t>(chunk_elements * item));
    for (uint64_t i = 0; i < header.num_elements; i += chunk_elements) {
      const uint64_t n = std::min(chunk_elements, header.num_elements - i);
      KO_RETURN_IF_ERROR(
          ReadExact(file.get(), chunk.data(), n * item, header.data_offset + i * item, label));
      ConvertToFloat(header.type, chunk.data(), n, values.data() + i);
    }
  }
  // Reading past the end is what makes libzip check the size and CRC.
  uint8_t extra = 0;
  const zip_int64_t got = zip_fread(file.get(), &extra, 1);
  if (got > 0) {
    return Status::Corruption(label + ": trailing bytes after " + std::to_string(st.size));
  }
  if (got < 0) {
    return Status::Corruption(label + ": " + zip_file_strerror(file.get()));
  }
  if (zip_fclose(file.release()) != 0) {
    return Status::Corruption(label + ": closing the member failed");
  }
  return array;
}

}  // namespace

StatusOr<std::vector<NpzArray>> ReadNpz(const uint8_t* bytes, size_t size, const std::string& label,
                                        bool headers_only) {
  // libzip opens an empty buffer as an empty archive; a real one has at least its 22-byte end
  // record.
  if (size < 22) {
    return Status::Corruption(label + ": " + std::to_string(size) +
                              " bytes, too short for a zip archive (truncated?)");
  }
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* source = zip_source_buffer_create(bytes, size, 0, &error);
  if (source == nullptr) {
    const std::string what = zip_error_strerror(&error);
    zip_error_fini(&error);
    return Status::Internal(label + ": libzip cannot wrap the buffer: " + what);
  }
  zip_t* raw = zip_open_from_source(source, ZIP_RDONLY | ZIP_CHECKCONS, &error);
  if (raw == nullptr) {
    const std::string what = zip_error_strerror(&error);
    zip_error_fini(&error);
    zip_source_free(source);
    return Status::Corruption(label + ": not a readable zip archive (truncated?): " + what);
  }
  zip_error_fini(&error);
  std::unique_ptr<zip_t, ZipDiscard> zip(raw);

  const zip_int64_t entries = zip_get_num_entries(zip.get(), 0);
  if (entries < 0) return Status::Corruption(label + ": cannot count the zip's members");
  std::vector<NpzArray> arrays;
  std::set<std::string> names;
  for (zip_int64_t i = 0; i < entries; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip.get(), static_cast<zip_uint64_t>(i), 0, &st) != 0) {
      return Status::Corruption(label + ": member #" + std::to_string(i) + ": " +
                                zip_strerror(zip.get()));
    }
    if (!(st.valid & ZIP_STAT_NAME) || st.name == nullptr) {
      return Status::Corruption(label + ": member #" + std::to_string(i) + " has no name");
    }
    const std::string member = st.name;
    constexpr std::string_view kSuffix = ".npy";
    if (member.size() < kSuffix.size() ||
        member.compare(member.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) {
      continue;
    }
    const std::string member_label = label + ": " + Printable(member);
    const std::string name = member.substr(0, member.size() - kSuffix.size());
    if (!names.insert(name).second) {
      return Status::InvalidArgument(member_label + ": the archive holds this member twice");
    }
    const uint64_t needed = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD;
    if ((st.valid & needed) != needed) {
      return Status::Corruption(member_label + ": sizes or compression method unknown");
    }
    if (st.valid & ZIP_STAT_ENCRYPTION_METHOD && st.encryption_method != ZIP_EM_NONE) {
      return Status::InvalidArgument(member_label + ": encrypted members are not supported");
    }
    if (st.comp_method != ZIP_CM_STORE && st.comp_method != ZIP_CM_DEFLATE) {
      return Status::InvalidArgument(member_label + ": compression method " +
                                     std::to_string(st.comp_method) +
                                     " is not supported (numpy writes stored or deflated)");
    }
    if (st.comp_size > size ||
        (st.comp_method == ZIP_CM_STORE && st.size != st.comp_size) ||
        st.size / kMaxDeflateRatio > st.comp_size) {
      return Status::Corruption(member_label + ": declares " + std::to_string(st.size) +
                                " bytes from " + std::to_string(st.comp_size) +
                                " compressed bytes in a " + std::to_string(size) +
                                "-byte archive");
    }
    KO_ASSIGN_OR_RETURN(NpzArray array, ReadMember(zip.get(), static_cast<zip_uint64_t>(i), st,
                                                   name, member_label, headers_only));
    arrays.push_back(std::move(array));
  }
  return arrays;
}

#endif  // KNOCKOUT_HAVE_LIBZIP

}  // namespace knockout::formats
