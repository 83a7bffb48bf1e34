// Key encoding for the RocksDB store: fixed-width big-endian integers and length-prefixed
// strings, so that bytewise key order equals the logical order and prefix scans return rows in
// (sweep, stage, shard, ...) order. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace knockout::storage {

// Appends `value` as 8 big-endian bytes.
void AppendUint64(std::string* key, uint64_t value);
// Appends `value` as 4 big-endian bytes.
void AppendUint32(std::string* key, uint32_t value);
// Appends a string as a 4-byte big-endian length then its bytes (keeps prefixes unambiguous).
void AppendString(std::string* key, std::string_view value);

// Reads keys written with the functions above, front to back. Every read fails with Corruption
// naming the field if the key is too short.
class KeyReader {
 public:
  explicit KeyReader(std::string_view key) : rest_(key) {}
  StatusOr<uint64_t> Uint64(const char* field);
  StatusOr<uint32_t> Uint32(const char* field);
  StatusOr<std::string> String(const char* field);
  bool done() const { return rest_.empty(); }

 private:
  std::string_view rest_;
};

}  // namespace knockout::storage
