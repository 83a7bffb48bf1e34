#include "tokenizer/json_util.h"

namespace knockout::tokenizer::internal {
namespace {

// Collects the first parse error; nlohmann's SAX interface reports it without throwing.
class ErrorSax : public nlohmann::json_sax<Json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    message = ex.what();
    (void)position;
    return false;
  }
  std::string message;
};

}  // namespace

StatusOr<Json> ParseJson(const std::string& text) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded()) return j;
  ErrorSax sax;
  Json::sax_parse(text, &sax, nlohmann::detail::input_format_t::json, /*strict=*/true);
  return Status::InvalidArgument("malformed JSON" +
                                 (sax.message.empty() ? std::string() : ": " + sax.message));
}

std::string JsonTypeName(const Json& j) { return j.type_name(); }

Status TypeError(const std::string& path, const char* expected, const Json& got) {
  return Status::InvalidArgument(path + ": expected " + expected + ", got " + JsonTypeName(got));
}

const Json* Member(const Json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

StatusOr<std::string> GetString(const Json& j, const char* key, const std::string& path) {
  const Json* v = Member(j, key);
  if (v == nullptr) return Status::InvalidArgument(Field(path, key) + ": missing");
  if (!v->is_string()) return TypeError(Field(path, key), "a string", *v);
  return v->get<std::string>();
}

StatusOr<std::optional<std::string>> GetOptString(const Json& j, const char* key,
                                                  const std::string& path) {
  const Json* v = Member(j, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return TypeError(Field(path, key), "a string or null", *v);
  return std::optional<std::string>(v->get<std::string>());
}

StatusOr<bool> GetBool(const Json& j, const char* key, bool fallback, const std::string& path) {
  const Json* v = Member(j, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return TypeError(Field(path, key), "a boolean", *v);
  return v->get<bool>();
}

StatusOr<int64_t> AsInt(const Json& j, const std::string& path) {
  if (j.is_number_unsigned()) {
    const auto u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) {
      return Status::InvalidArgument(path + ": integer out of range");
    }
    return static_cast<int64_t>(u);
  }
  if (j.is_number_integer()) return j.get<int64_t>();
  return TypeError(path, "an integer", j);
}

StatusOr<int64_t> GetInt(const Json& j, const char* key, std::optional<int64_t> fallback,
                         const std::string& path) {
  const Json* v = Member(j, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Status::InvalidArgument(Field(path, key) + ": missing");
  }
  return AsInt(*v, Field(path, key));
}

StatusOr<const Json*> GetArray(const Json& j, const char* key, const std::string& path) {
  const Json* v = Member(j, key);
  if (v == nullptr) return Status::InvalidArgument(Field(path, key) + ": missing");
  if (!v->is_array()) return TypeError(Field(path, key), "an array", *v);
  return v;
}

StatusOr<const Json*> GetObject(const Json& j, const char* key, const std::string& path) {
  const Json* v = Member(j, key);
  if (v == nullptr) return Status::InvalidArgument(Field(path, key) + ": missing");
  if (!v->is_object()) return TypeError(Field(path, key), "an object", *v);
  return v;
}

}  // namespace knockout::tokenizer::internal
