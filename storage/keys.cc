#include "storage/keys.h"

namespace knockout::storage {
namespace {

template <typename T>
void AppendBigEndian(std::string* key, T value) {
  for (int shift = (sizeof(T) - 1) * 8; shift >= 0; shift -= 8) {
    key->push_back(static_cast<char>((value >> shift) & 0xff));
  }
}

}  // namespace

void AppendUint64(std::string* key, uint64_t value) { AppendBigEndian(key, value); }
void AppendUint32(std::string* key, uint32_t value) { AppendBigEndian(key, value); }

void AppendString(std::string* key, std::string_view value) {
  AppendUint32(key, static_cast<uint32_t>(value.size()));
  key->append(value.data(), value.size());
}

StatusOr<uint64_t> KeyReader::Uint64(const char* field) {
  if (rest_.size() < 8) return Status::Corruption(std::string("key too short for ") + field);
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | static_cast<uint8_t>(rest_[i]);
  rest_.remove_prefix(8);
  return value;
}

StatusOr<uint32_t> KeyReader::Uint32(const char* field) {
  if (rest_.size() < 4) return Status::Corruption(std::string("key too short for ") + field);
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value = (value << 8) | static_cast<uint8_t>(rest_[i]);
  rest_.remove_prefix(4);
  return value;
}

StatusOr<std::string> KeyReader::String(const char* field) {
  KO_ASSIGN_OR_RETURN(uint32_t length, Uint32(field));
  if (rest_.size() < length) return Status::Corruption(std::string("key too short for ") + field);
  std::string value(rest_.substr(0, length));
  rest_.remove_prefix(length);
  return value;
}

}  // namespace knockout::storage
