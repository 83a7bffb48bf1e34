// Chat templates and position bookkeeping: turns an instruction into the token ids a chat model
// sees, and records where the instruction and the post-instruction template tokens are, so that
// position selectors (formats/positions.h: `inst_last`, `post_inst`, `post_inst[-k]`, `all`,
// `[i,j]`) resolve to exact indices, also under left padding (science.md: harmfulness is read
// at t_inst, refusal at t_post_inst).
// Thread-safety: ChatTemplate is an immutable value; Apply may be called concurrently.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "formats/positions.h"
#include "tokenizer/tokenizer.h"

namespace knockout::tokenizer {

// A single-turn template: `prefix` + instruction + `suffix`, rendered exactly as the family's
// Jinja template renders one user message with add_generation_prompt=true.
class ChatTemplate {
 public:
  enum class Family { kLlama3, kLlama2, kChatML, kGemma, kCustom };

  // Built-in families. Llama 3 and Gemma trim the instruction (their Jinja templates apply
  // `| trim`), Llama 2 strips it (`.strip()`); ChatML keeps it as is.
  static ChatTemplate BuiltIn(Family family, const std::string& bos_token = "");
  // "llama3", "llama2", "chatml" (also "qwen"), "gemma". InvalidArgument otherwise.
  static StatusOr<Family> ParseFamily(const std::string& name);
  // A custom template with exactly one `{instruction}` slot and at most one `{system}` slot
  // (placed before the instruction). InvalidArgument naming the problem otherwise.
  static StatusOr<ChatTemplate> Custom(const std::string& text);
  // Picks the family from a tokenizer's Jinja chat template (tokenizer_config.json): markers
  // `<|start_header_id|>` (Llama 3), `<|im_start|>` (ChatML), `<start_of_turn>` (Gemma),
  // `[INST]` (Llama 2). NotFound if there is no template or no marker is recognised: the caller
  // must then name a template explicitly.
  static StatusOr<ChatTemplate> Detect(const Tokenizer& tokenizer);

  Family family() const { return family_; }
  const char* FamilyName() const;

  // The rendered prompt, split into the three parts whose token ranges we report.
  struct Rendered {
    std::string prefix;       // BOS, system prompt, user header
    std::string instruction;  // after trimming, if the family trims
    std::string suffix;       // end-of-turn and assistant header: the post-instruction tokens
    std::string text() const { return prefix + instruction + suffix; }
  };
  // `system` empty: no system prompt (the default).
  Rendered Render(const std::string& instruction, const std::string& system = "") const;

  // False for a template that rejects a system message: Gemma 2's raises "System role not
  // supported" (Detect finds that in the Jinja text), where Gemma 3's folds it into the first
  // user turn. TokenizeChat then refuses a non-empty system prompt.
  bool supports_system() const { return supports_system_; }

 private:
  Family family_ = Family::kCustom;
  bool supports_system_ = true;
  std::string bos_;
  std::string custom_;  // the custom template text
};

// Token ids of one prompt and the ranges that position selectors refer to, in the coordinates
// of the unpadded prompt (0 .. ids.size()).
struct TokenizedPrompt {
  std::vector<int64_t> ids;
  int64_t instruction_begin = 0;  // first token that contains instruction text
  int64_t instruction_end = 0;    // one past the last instruction token
  int64_t post_begin = 0;         // first post-instruction template token (== instruction_end)
  // t_inst: the last instruction token.
  int64_t inst_last() const { return instruction_end - 1; }
  int64_t size() const { return static_cast<int64_t>(ids.size()); }
  // What position selectors resolve against (formats::ResolvePositions).
  formats::PromptLayout layout() const {
    return {size(), instruction_begin, instruction_end, post_begin};
  }
};

// Renders and tokenizes `instruction` (special tokens in the rendered text are matched as added
// tokens; no extra BOS is added since the template carries it). Errors: InvalidArgument for an
// empty instruction or invalid UTF-8; FailedPrecondition if the template's suffix tokens merge
// with the instruction so that no post-instruction token can be identified; InvalidArgument for
// a system prompt the template does not support (supports_system()).
StatusOr<TokenizedPrompt> TokenizeChat(const Tokenizer& tokenizer, const ChatTemplate& chat,
                                       const std::string& instruction,
                                       const std::string& system = "");

}  // namespace knockout::tokenizer
