#include "tokenizer/chat_template.h"

#include "tokenizer/unicode.h"

#include <algorithm>

namespace knockout::tokenizer {
namespace {

// Jinja's `trim` as the reference JavaScript renderer runs it (String.prototype.trim): ASCII
// whitespace plus the Unicode space separators, line/paragraph separators and BOM.
bool IsTrimmedCodePoint(uint32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0d) || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000 || c == 0xfeff;
}

// Input must be valid UTF-8 (rendered prompts are checked when they are encoded; an invalid
// byte here is decoded defensively, never read past the end).
std::string Trim(const std::string& s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t next = begin;
    if (!IsTrimmedCodePoint(internal::NextCodePoint(s, &next))) break;
    begin = std::min(next, s.size());
  }
  // Scan forward remembering the end of the last code point that is not trimmed.
  size_t end = begin;
  for (size_t i = begin; i < s.size();) {
    const bool trimmed = IsTrimmedCodePoint(internal::NextCodePoint(s, &i));
    if (!trimmed) end = std::min(i, s.size());
  }
  return s.substr(begin, end - begin);
}

size_t CountOccurrences(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

}  // namespace

ChatTemplate ChatTemplate::BuiltIn(Family family, const std::string& bos_token) {
  ChatTemplate t;
  t.family_ = family;
  switch (family) {
    case Family::kLlama3: t.bos_ = bos_token.empty() ? "<|begin_of_text|>" : bos_token; break;
    case Family::kLlama2: t.bos_ = bos_token.empty() ? "<s>" : bos_token; break;
    case Family::kGemma: t.bos_ = bos_token.empty() ? "<bos>" : bos_token; break;
    case Family::kChatML: t.bos_ = ""; break;
    case Family::kCustom: break;
  }
  return t;
}

StatusOr<ChatTemplate::Family> ChatTemplate::ParseFamily(const std::string& name) {
  if (name == "llama3") return Family::kLlama3;
  if (name == "llama2") return Family::kLlama2;
  if (name == "chatml" || name == "qwen") return Family::kChatML;
  if (name == "gemma") return Family::kGemma;
  return Status::InvalidArgument("unknown chat template \"" + name +
                                 "\" (expected llama3, llama2, chatml, qwen, gemma, or a custom "
                                 "template string with an {instruction} slot)");
}

StatusOr<ChatTemplate> ChatTemplate::Custom(const std::string& text) {
  const size_t slots = CountOccurrences(text, "{instruction}");
  if (slots != 1) {
    return Status::InvalidArgument("custom chat template: expected exactly one {instruction} slot, "
                                   "found " + std::to_string(slots));
  }
  const size_t system_slots = CountOccurrences(text, "{system}");
  if (system_slots > 1 || (system_slots == 1 && text.find("{system}") > text.find("{instruction}"))) {
    return Status::InvalidArgument(
        "custom chat template: at most one {system} slot, placed before {instruction}");
  }
  if (text.size() == text.find("{instruction}") + std::string("{instruction}").size()) {
    return Status::InvalidArgument(
        "custom chat template: nothing follows {instruction}, so there are no post-instruction "
        "tokens to read refusal at");
  }
  ChatTemplate t;
  t.family_ = Family::kCustom;
  t.custom_ = text;
  return t;
}

StatusOr<ChatTemplate> ChatTemplate::Detect(const Tokenizer& tokenizer) {
  const std::string& jinja = tokenizer.chat_template();
  const std::string bos = tokenizer.special_tokens().bos.value_or("");
  if (jinja.empty()) {
    return Status::NotFound(
        "the tokenizer has no chat_template in tokenizer_config.json; name a template (llama3, "
        "llama2, chatml, gemma or a custom string with an {instruction} slot)");
  }
  if (jinja.find("<|start_header_id|>") != std::string::npos) return BuiltIn(Family::kLlama3, bos);
  if (jinja.find("<|im_start|>") != std::string::npos) return BuiltIn(Family::kChatML, bos);
  if (jinja.find("<start_of_turn>") != std::string::npos) {
    ChatTemplate gemma = BuiltIn(Family::kGemma, bos);
    gemma.supports_system_ = jinja.find("System role not supported") == std::string::npos;
    return gemma;
  }
  if (jinja.find("[INST]") != std::string::npos) return BuiltIn(Family::kLlama2, bos);
  return Status::NotFound(
      "the tokenizer's chat_template matches no built-in family (llama3, llama2, chatml, gemma); "
      "give a custom template string with an {instruction} slot");
}

const char* ChatTemplate::FamilyName() const {
  switch (family_) {
    case Family::kLlama3: return "llama3";
    case Family::kLlama2: return "llama2";
    case Family::kChatML: return "chatml";
    case Family::kGemma: return "gemma";
    case Family::kCustom: return "custom";
  }
  return "unknown";
}

ChatTemplate::Rendered ChatTemplate::Render(const std::string& instruction,
                                            const std::string& system) const {
  Rendered r;
  switch (family_) {
    case Family::kLlama3:
      // Meta's template: bos + per message header + content | trim + <|eot_id|>, then the
      // assistant header as the generation prompt.
      r.prefix = bos_;
      if (!system.empty()) {
        r.prefix += "<|start_header_id|>system<|end_header_id|>\n\n" + Trim(system) + "<|eot_id|>";
      }
      r.prefix += "<|start_header_id|>user<|end_header_id|>\n\n";
      r.instruction = Trim(instruction);
      r.suffix = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case Family::kLlama2:
      // bos + '[INST] ' + content.strip() + ' [/INST]', the system prompt inside <<SYS>>.
      r.prefix = bos_ + "[INST] ";
      if (!system.empty()) r.prefix += "<<SYS>>\n" + Trim(system) + "\n<</SYS>>\n\n";
      r.instruction = Trim(instruction);
      r.suffix = " [/INST]";
      break;
    case Family::kChatML:
      if (!system.empty()) r.prefix = "<|im_start|>system\n" + system + "<|im_end|>\n";
      r.prefix += "<|im_start|>user\n";
      r.instruction = instruction;
      r.suffix = "<|im_end|>\n<|im_start|>assistant\n";
      break;
    case Family::kGemma:
      // Gemma folds a system prompt into the first user turn.
      r.prefix = bos_ + "<start_of_turn>user\n";
      if (!system.empty()) r.prefix += system + "\n\n";
      r.instruction = Trim(instruction);
      r.suffix = "<end_of_turn>\n<start_of_turn>model\n";
      break;
    case Family::kCustom: {
      std::string text = custom_;
      const size_t system_at = text.find("{system}");
      if (system_at != std::string::npos) text.replace(system_at, 8, system);
      const size_t at = text.find("{instruction}");
      r.prefix = text.substr(0, at);
      r.instruction = instruction;
      r.suffix = text.substr(at + std::string("{instruction}").size());
      break;
    }
  }
  return r;
}

StatusOr<TokenizedPrompt> TokenizeChat(const Tokenizer& tokenizer, const ChatTemplate& chat,
                                       const std::string& instruction, const std::string& system) {
  if (!system.empty() && !chat.supports_system()) {
    return Status::InvalidArgument(
        "this model's chat template (tokenizer_config.json) does not support a system prompt "
        "(Gemma 2's raises \"System role not supported\"); drop the system prompt or put it in "
        "the instruction");
  }
  ChatTemplate::Rendered r = chat.Render(instruction, system);
  if (r.instruction.empty()) return Status::InvalidArgument("empty instruction");
  KO_ASSIGN_OR_RETURN(Encoding full, tokenizer.Encode(r.text(), /*add_special_tokens=*/false));
  KO_ASSIGN_OR_RETURN(Encoding prefix, tokenizer.Encode(r.prefix, false));
  KO_ASSIGN_OR_RETURN(Encoding suffix, tokenizer.Encode(r.suffix, false));
  const auto& ids = full.ids;
  const int64_t n = ids.size();
  // Post-instruction tokens: the longest common tail of the full prompt and the suffix alone.
  // Built-in suffixes start with a special token (or a space that never merges backwards), so
  // this is the whole suffix.
  int64_t tail = 0;
  while (tail < static_cast<int64_t>(suffix.ids.size()) && tail < n &&
         ids[n - 1 - tail] == suffix.ids[suffix.ids.size() - 1 - tail]) {
    ++tail;
  }
  // Instruction tokens start where the full prompt stops agreeing with the prefix alone (a
  // trailing space of the prefix may merge into the first instruction token).
  int64_t head = 0;
  while (head < static_cast<int64_t>(prefix.ids.size()) && head < n &&
         ids[head] == prefix.ids[head]) {
    ++head;
  }
  if (tail == 0 || head >= n - tail) {
    return Status::FailedPrecondition(
        std::string("chat template ") + chat.FamilyName() +
        ": cannot separate the instruction from the post-instruction tokens (they merge when "
        "tokenized); use a template whose suffix starts with a special token");
  }
  TokenizedPrompt out;
  out.ids = std::move(full.ids);
  out.instruction_begin = head;
  out.instruction_end = n - tail;
  out.post_begin = n - tail;
  return out;
}

}  // namespace knockout::tokenizer
