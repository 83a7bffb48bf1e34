// The concrete Tokenizer: tokenizer.json (+ tokenizer_config.json) loading, Encode and Decode.

#include "tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/components.h"
#include "tokenizer/json_util.h"
#include "tokenizer/unicode.h"

namespace knockout::tokenizer {
namespace {

using internal::AddedToken;
using internal::AddedTokenMatcher;
using internal::BpeModel;
using internal::Field;
using internal::Index;
using internal::Json;
using internal::Member;
using internal::Segment;

// What tokenizer_config.json contributes.
struct Config {
  std::optional<bool> add_bos, add_eos;
  std::optional<std::string> bos, eos, pad, unk;
  std::string chat_template;
};

// A special-token field: a string, null, or an AddedToken-like object with "content".
Status ReadTokenField(const Json& cfg, const char* key, std::optional<std::string>* out) {
  const Json* v = Member(cfg, key);
  if (v == nullptr) return Status::Ok();
  if (v->is_string()) {
    *out = v->get<std::string>();
    return Status::Ok();
  }
  if (v->is_object()) {
    const Json* content = Member(*v, "content");
    if (content != nullptr && content->is_string()) {
      *out = content->get<std::string>();
      return Status::Ok();
    }
    return Status::InvalidArgument(std::string(key) +
                                   ": expected a string or an object with a string \"content\"");
  }
  return internal::TypeError(key, "a string, null or an object with \"content\"", *v);
}

StatusOr<Config> ParseConfig(const std::string& text) {
  Config c;
  if (text.empty()) return c;
  KO_ASSIGN_OR_RETURN(Json cfg, internal::ParseJson(text));
  if (!cfg.is_object()) return internal::TypeError("(top level)", "an object", cfg);
  using BoolField = std::pair<const char*, std::optional<bool>*>;
  for (auto [key, out] :
       {BoolField{"add_bos_token", &c.add_bos}, BoolField{"add_eos_token", &c.add_eos}}) {
    const Json* v = Member(cfg, key);
    if (v == nullptr) continue;
    if (!v->is_boolean()) return internal::TypeError(key, "a boolean", *v);
    *out = v->get<bool>();
  }
  KO_RETURN_IF_ERROR(ReadTokenField(cfg, "bos_token", &c.bos));
  KO_RETURN_IF_ERROR(ReadTokenField(cfg, "eos_token", &c.eos));
  KO_RETURN_IF_ERROR(ReadTokenField(cfg, "pad_token", &c.pad));
  KO_RETURN_IF_ERROR(ReadTokenField(cfg, "unk_token", &c.unk));
  if (const Json* t = Member(cfg, "chat_template")) {
    if (t->is_string()) {
      c.chat_template = t->get<std::string>();
    } else if (t->is_array()) {
      // Several named templates: the one named "default" is the chat template.
      for (size_t i = 0; i < t->size(); ++i) {
        const Json& item = (*t)[i];
        const std::string path = Index("chat_template", i);
        KO_ASSIGN_OR_RETURN(std::string name, internal::GetString(item, "name", path));
        KO_ASSIGN_OR_RETURN(std::string tmpl, internal::GetString(item, "template", path));
        if (name == "default") c.chat_template = std::move(tmpl);
      }
    } else {
      return internal::TypeError("chat_template", "a string or a list of {name, template}", *t);
    }
  }
  return c;
}

class TokenizerImpl : public Tokenizer {
 public:
  static StatusOr<std::unique_ptr<Tokenizer>> Build(const std::string& tokenizer_json,
                                                    const std::string& tokenizer_label,
                                                    const std::string& config_json,
                                                    const std::string& config_label);

  StatusOr<Encoding> Encode(std::string_view text, bool add_special_tokens) const override;
  StatusOr<std::string> Decode(const std::vector<int64_t>& ids,
                               bool skip_special_tokens) const override;

  std::optional<int64_t> TokenToId(std::string_view token) const override {
    auto it = added_ids_.find(std::string(token));
    if (it != added_ids_.end()) return it->second;
    auto id = model_->TokenToId(token);
    if (id) return *id;
    return std::nullopt;
  }
  std::optional<std::string> IdToToken(int64_t id) const override {
    if (id < 0 || id >= vocab_size() || !has_token_[id]) return std::nullopt;
    return tokens_[id];
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(tokens_.size()); }
  const SpecialTokens& special_tokens() const override { return special_; }
  const std::string& chat_template() const override { return chat_template_; }
  bool IsSpecial(int64_t id) const override {
    return id >= 0 && id < vocab_size() && special_by_id_[id];
  }
  void SetChatTemplate(std::string t) { chat_template_ = std::move(t); }

 private:
  Status ParseTokenizer(const Json& root);
  Status ApplyConfig(const Config& config);
  // Normalizes, pre-tokenizes and runs the model over one piece of text outside added tokens.
  Status EncodeText(std::string_view text, bool at_start, std::vector<int64_t>* ids) const;

  std::unique_ptr<internal::Normalizer> normalizer_;
  std::unique_ptr<internal::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<internal::Decoder> decoder_;
  internal::PostProcessor post_;

  std::vector<AddedToken> added_;
  std::unordered_set<std::string> added_contents_;  // for the ByteLevel decoder
  std::unordered_map<std::string, int64_t> added_ids_;
  AddedTokenMatcher raw_matcher_;         // tokens with normalized == false
  AddedTokenMatcher normalized_matcher_;  // tokens with normalized == true

  std::vector<std::string> tokens_;  // by id: model vocabulary overlaid with added tokens
  std::vector<bool> has_token_;
  std::vector<bool> special_by_id_;
  SpecialTokens special_;
  std::string chat_template_;
};

Status TokenizerImpl::ParseTokenizer(const Json& root) {
  if (!root.is_object()) return internal::TypeError("(top level)", "an object", root);
  static const Json kNull;
  auto member = [&](const char* key) -> const Json& {
    const Json* v = Member(root, key);
    return v == nullptr ? kNull : *v;
  };

  // The model first: the bound on added-token ids depends on its size.
  const Json* model = Member(root, "model");
  if (model == nullptr) return Status::InvalidArgument("model: missing");
  if (!model->is_object()) return internal::TypeError("model", "an object", *model);
  KO_ASSIGN_OR_RETURN(auto type, internal::GetOptString(*model, "type", "model"));
  // Old files omit the type; a BPE model is recognisable by its merges.
  if (type ? *type != "BPE" : Member(*model, "merges") == nullptr) {
    return Status::Unimplemented("model: unsupported model type \"" + type.value_or("(none)") +
                                 "\"");
  }
  KO_ASSIGN_OR_RETURN(model_, BpeModel::FromJson(*model, "model"));

  KO_ASSIGN_OR_RETURN(normalizer_, internal::ParseNormalizer(member("normalizer"), "normalizer"));
  KO_ASSIGN_OR_RETURN(pre_tokenizer_,
                      internal::ParsePreTokenizer(member("pre_tokenizer"), "pre_tokenizer"));
  KO_ASSIGN_OR_RETURN(post_,
                      internal::ParsePostProcessor(member("post_processor"), "post_processor"));

  // Added tokens.
  if (const Json* list = Member(root, "added_tokens")) {
    if (!list->is_array()) return internal::TypeError("added_tokens", "an array", *list);
    for (size_t i = 0; i < list->size(); ++i) {
      const Json& item = (*list)[i];
      const std::string path = Index("added_tokens", i);
      if (!item.is_object()) return internal::TypeError(path, "an object", item);
      AddedToken t;
      KO_ASSIGN_OR_RETURN(t.content, internal::GetString(item, "content", path));
      if (t.content.empty()) return Status::InvalidArgument(Field(path, "content") + ": empty");
      if (internal::FindInvalidUtf8(t.content) != internal::kNoError) {
        return Status::InvalidArgument(Field(path, "content") + ": not valid UTF-8");
      }
      KO_ASSIGN_OR_RETURN(t.id, internal::GetInt(item, "id", std::nullopt, path));
      if (t.id < 0 || t.id > internal::MaxTokenId(model_->id_to_token().size() + list->size())) {
        return Status::InvalidArgument(Field(path, "id") + ": " + std::to_string(t.id) +
                                       " out of range");
      }
      KO_ASSIGN_OR_RETURN(t.special, internal::GetBool(item, "special", false, path));
      KO_ASSIGN_OR_RETURN(t.lstrip, internal::GetBool(item, "lstrip", false, path));
      KO_ASSIGN_OR_RETURN(t.rstrip, internal::GetBool(item, "rstrip", false, path));
      KO_ASSIGN_OR_RETURN(t.single_word, internal::GetBool(item, "single_word", false, path));
      // The reference's default: special tokens match the raw text, others the normalized.
      KO_ASSIGN_OR_RETURN(t.normalized, internal::GetBool(item, "normalized", !t.special, path));
      added_.push_back(std::move(t));
    }
  }

  // The id space: model vocabulary overlaid with added tokens.
  tokens_ = model_->id_to_token();
  has_token_ = model_->id_used();
  for (const AddedToken& t : added_) {
    if (t.id >= static_cast<int64_t>(tokens_.size())) {
      tokens_.resize(t.id + 1);
      has_token_.resize(t.id + 1, false);
    }
  }
  special_by_id_.assign(tokens_.size(), false);
  std::vector<std::string> raw_patterns, norm_patterns;
  std::vector<int32_t> raw_indices, norm_indices;
  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& t = added_[i];
    tokens_[t.id] = t.content;
    has_token_[t.id] = true;
    if (t.special) special_by_id_[t.id] = true;
    added_contents_.insert(t.content);
    added_ids_.emplace(t.content, t.id);
    if (t.normalized) {
      std::string pattern = t.content;
      if (normalizer_) KO_RETURN_IF_ERROR(normalizer_->Apply(&pattern));
      norm_patterns.push_back(std::move(pattern));
      norm_indices.push_back(static_cast<int32_t>(i));
    } else {
      raw_patterns.push_back(t.content);
      raw_indices.push_back(static_cast<int32_t>(i));
    }
  }
  raw_matcher_.Build(&added_, raw_patterns, raw_indices);
  normalized_matcher_.Build(&added_, norm_patterns, norm_indices);

  // Template ids must name real tokens.
  for (const auto* list : {&post_.prefix, &post_.suffix}) {
    for (const int64_t id : *list) {
      if (id < 0 || id >= vocab_size() || !has_token_[id]) {
        return Status::InvalidArgument("post_processor: special token id " + std::to_string(id) +
                                       " is not in the vocabulary");
      }
    }
  }

  KO_ASSIGN_OR_RETURN(decoder_,
                      internal::ParseDecoder(member("decoder"), "decoder", &added_contents_));
  return Status::Ok();
}

Status TokenizerImpl::ApplyConfig(const Config& c) {
  auto lookup = [this](const std::optional<std::string>& name) -> std::optional<int64_t> {
    if (!name) return std::nullopt;
    return TokenToId(*name);
  };
  // Without a config entry, a lone template token stands for BOS / EOS.
  special_.bos = c.bos;
  special_.eos = c.eos;
  if (!special_.bos && post_.prefix.size() == 1) special_.bos = tokens_[post_.prefix[0]];
  if (!special_.eos && post_.suffix.size() == 1) special_.eos = tokens_[post_.suffix[0]];
  special_.pad = c.pad;
  special_.unk = c.unk ? c.unk : model_->unk_token();
  special_.bos_id = lookup(special_.bos);
  special_.eos_id = lookup(special_.eos);
  special_.pad_id = lookup(special_.pad);
  special_.unk_id = lookup(special_.unk);

  // add_bos_token / add_eos_token replace what the post-processor adds on that side.
  if (c.add_bos) {
    post_.prefix.clear();
    if (*c.add_bos) {
      if (!special_.bos_id) {
        return Status::InvalidArgument("add_bos_token is true but bos_token " +
                                       (special_.bos
                                            ? "\"" + *special_.bos + "\" is not in the vocabulary"
                                            : std::string("is not set")));
      }
      post_.prefix.push_back(*special_.bos_id);
    }
  }
  if (c.add_eos) {
    post_.suffix.clear();
    if (*c.add_eos) {
      if (!special_.eos_id) {
        return Status::InvalidArgument("add_eos_token is true but eos_token " +
                                       (special_.eos
                                            ? "\"" + *special_.eos + "\" is not in the vocabulary"
                                            : std::string("is not set")));
      }
      post_.suffix.push_back(*special_.eos_id);
    }
  }
  special_.add_bos = !post_.prefix.empty();
  special_.add_eos = !post_.suffix.empty();
  chat_template_ = c.chat_template;
  return Status::Ok();
}

StatusOr<std::unique_ptr<Tokenizer>> TokenizerImpl::Build(const std::string& tokenizer_json,
                                                          const std::string& tokenizer_label,
                                                          const std::string& config_json,
                                                          const std::string& config_label) {
  std::unique_ptr<TokenizerImpl> t(new TokenizerImpl());
  {
    auto root = internal::ParseJson(tokenizer_json);
    if (!root.ok()) return root.status().WithContext(tokenizer_label);
    Status s = t->ParseTokenizer(*root);
    if (!s.ok()) return s.WithContext(tokenizer_label);
  }  // the parsed JSON (hundreds of MB for large vocabularies) is released here
  auto config = ParseConfig(config_json);
  if (!config.ok()) return config.status().WithContext(config_label);
  Status s = t->ApplyConfig(*config);
  if (!s.ok()) return s.WithContext(config_label);
  return std::unique_ptr<Tokenizer>(std::move(t));
}

Status TokenizerImpl::EncodeText(std::string_view text, bool at_start,
                                 std::vector<int64_t>* ids) const {
  std::string normalized(text);
  if (normalizer_) KO_RETURN_IF_ERROR(normalizer_->Apply(&normalized));
  if (normalized.empty()) return Status::Ok();

  std::vector<internal::Piece> pieces;
  std::vector<int32_t> scratch;
  scratch.reserve(normalized.size() / 3 + 4);
  auto run_model = [&] {
    if (pre_tokenizer_) pre_tokenizer_->Apply(&pieces);
    scratch.clear();
    for (const auto& p : pieces) model_->Tokenize(p.text, &scratch);
    ids->insert(ids->end(), scratch.begin(), scratch.end());
    pieces.clear();
  };
  if (normalized_matcher_.empty()) {
    pieces.push_back(internal::Piece{std::move(normalized), at_start});
    run_model();
    return Status::Ok();
  }
  // Added tokens with normalized == true are found in the normalized text.
  std::vector<Segment> segs;
  normalized_matcher_.Split(normalized, &segs);
  for (const Segment& s : segs) {
    if (s.token >= 0) {
      ids->push_back(added_[s.token].id);
      continue;
    }
    pieces.push_back(
        internal::Piece{normalized.substr(s.start, s.end - s.start), at_start && s.start == 0});
    run_model();
  }
  return Status::Ok();
}

StatusOr<Encoding> TokenizerImpl::Encode(std::string_view text, bool add_special_tokens) const {
  const size_t bad = internal::FindInvalidUtf8(text);
  if (bad != internal::kNoError) {
    return Status::InvalidArgument("Encode: text is not valid UTF-8 (byte offset " +
                                   std::to_string(bad) + ")");
  }
  Encoding enc;
  if (add_special_tokens) enc.ids = post_.prefix;
  std::vector<Segment> segs;
  raw_matcher_.Split(text, &segs);
  for (const Segment& s : segs) {
    if (s.token >= 0) {
      enc.ids.push_back(added_[s.token].id);
    } else {
      KO_RETURN_IF_ERROR(EncodeText(text.substr(s.start, s.end - s.start), s.start == 0, &enc.ids));
    }
  }
  if (add_special_tokens) enc.ids.insert(enc.ids.end(), post_.suffix.begin(), post_.suffix.end());
  enc.tokens.reserve(enc.ids.size());
  for (const int64_t id : enc.ids) enc.tokens.push_back(tokens_[id]);
  return enc;
}

StatusOr<std::string> TokenizerImpl::Decode(const std::vector<int64_t>& ids,
                                            bool skip_special_tokens) const {
  std::vector<std::string> pieces;
  pieces.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if (id < 0 || id >= vocab_size() || !has_token_[id]) {
      return Status::InvalidArgument("Decode: unknown token id " + std::to_string(id) +
                                     " at position " + std::to_string(i));
    }
    if (skip_special_tokens && special_by_id_[id]) continue;
    pieces.push_back(tokens_[id]);
  }
  std::string out;
  if (decoder_) {
    decoder_->Apply(&pieces);
    for (const std::string& p : pieces) out.append(p);
  } else {
    // Without a decoder the reference joins tokens with spaces.
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (i > 0) out.push_back(' ');
      out.append(pieces[i]);
    }
  }
  return out;
}

StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError(path.string() + ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Status::IOError(path.string() + ": read failed");
  return ss.str();
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const std::string& tokenizer_json,
                                                         const std::string& config_json,
                                                         const std::string& label) {
  return TokenizerImpl::Build(tokenizer_json, label, config_json,
                              label + ": tokenizer_config.json");
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path tokenizer_path(path);
  if (fs::is_directory(tokenizer_path, ec)) tokenizer_path /= "tokenizer.json";
  if (!fs::is_regular_file(tokenizer_path, ec)) {
    return Status::NotFound(tokenizer_path.string() + ": no tokenizer.json");
  }
  const fs::path dir = tokenizer_path.parent_path();
  KO_ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFile(tokenizer_path));

  std::string config_json;
  const fs::path config_path = dir / "tokenizer_config.json";
  if (fs::is_regular_file(config_path, ec)) {
    KO_ASSIGN_OR_RETURN(config_json, ReadFile(config_path));
  }
  KO_ASSIGN_OR_RETURN(auto tokenizer, TokenizerImpl::Build(tokenizer_json, tokenizer_path.string(),
                                                           config_json, config_path.string()));
  if (!tokenizer->chat_template().empty()) return tokenizer;

  // Newer checkpoints keep the chat template beside the config instead of inside it.
  const fs::path jinja_path = dir / "chat_template.jinja";
  const fs::path json_path = dir / "chat_template.json";
  std::string tmpl;
  if (fs::is_regular_file(jinja_path, ec)) {
    KO_ASSIGN_OR_RETURN(tmpl, ReadFile(jinja_path));
  } else if (fs::is_regular_file(json_path, ec)) {
    KO_ASSIGN_OR_RETURN(std::string text, ReadFile(json_path));
    auto j = internal::ParseJson(text);
    if (!j.ok()) return j.status().WithContext(json_path.string());
    auto t = internal::GetString(*j, "chat_template", "");
    if (!t.ok()) return t.status().WithContext(json_path.string());
    tmpl = *t;
  }
  if (!tmpl.empty()) static_cast<TokenizerImpl*>(tokenizer.get())->SetChatTemplate(tmpl);
  return tokenizer;
}

}  // namespace knockout::tokenizer
