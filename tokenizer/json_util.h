// Typed, non-throwing accessors for nlohmann::json values read from tokenizer files. Every
// error names the field by its JSON path ("model.merges[3]") so the caller only has to prefix
// the file name. Internal to tokenizer/; stateless and thread-safe.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/status.h"

namespace knockout::tokenizer::internal {

using Json = nlohmann::json;

// Parses `text` without exceptions. InvalidArgument with the parser's message on failure.
StatusOr<Json> ParseJson(const std::string& text);

std::string JsonTypeName(const Json& j);

inline std::string Field(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}
inline std::string Index(const std::string& path, size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

Status TypeError(const std::string& path, const char* expected, const Json& got);

// The member `key` of object `j`, or nullptr when absent (a JSON null counts as absent).
const Json* Member(const Json& j, const char* key);

StatusOr<std::string> GetString(const Json& j, const char* key, const std::string& path);
StatusOr<std::optional<std::string>> GetOptString(const Json& j, const char* key,
                                                  const std::string& path);
StatusOr<bool> GetBool(const Json& j, const char* key, bool fallback, const std::string& path);
StatusOr<int64_t> GetInt(const Json& j, const char* key, std::optional<int64_t> fallback,
                         const std::string& path);
// An integer value (not a member).
StatusOr<int64_t> AsInt(const Json& j, const std::string& path);
// The member `key`, which must be an array (or an object, for GetObject).
StatusOr<const Json*> GetArray(const Json& j, const char* key, const std::string& path);
StatusOr<const Json*> GetObject(const Json& j, const char* key, const std::string& path);

}  // namespace knockout::tokenizer::internal
