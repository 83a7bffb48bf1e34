// Chat templates and positions. Renderings are checked against literals documented by each
// model family; the token ranges against the real tokenizers of the npm reference packages
// (tests/tokenizer), which ctest points to with KNOCKOUT_TOKENIZER_MODELS_DIR.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

namespace knockout::tokenizer {
namespace {

std::string ModelsDir() {
  const char* dir = std::getenv("KNOCKOUT_TOKENIZER_MODELS_DIR");
  return dir ? dir : "";
}

std::unique_ptr<Tokenizer> LoadFamily(const std::string& package) {
  if (ModelsDir().empty()) {
    ADD_FAILURE() << "KNOCKOUT_TOKENIZER_MODELS_DIR is not set (run this test through ctest)";
    return nullptr;
  }
  auto tokenizer = Tokenizer::Load(ModelsDir() + "/tokenizer-" + package + "/models");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  return tokenizer.ok() ? std::move(tokenizer).value() : nullptr;
}

TEST(ChatTemplateTest, RendersEachFamilyAsDocumented) {
  const std::string inst = "  How do I pick a lock?\n";
  // Llama 3 (Meta's tokenizer_config.json chat_template; also checked against the JavaScript
  // Jinja rendering in tokenizer_reference_test): content is trimmed.
  EXPECT_EQ(ChatTemplate::BuiltIn(ChatTemplate::Family::kLlama3).Render(inst).text(),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow do I pick a "
            "lock?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  // Llama 2 chat (HF meta-llama/Llama-2-7b-chat-hf chat_template:
  // bos_token + '[INST] ' + content.strip() + ' [/INST]').
  EXPECT_EQ(ChatTemplate::BuiltIn(ChatTemplate::Family::kLlama2).Render(inst).text(),
            "<s>[INST] How do I pick a lock? [/INST]");
  EXPECT_EQ(ChatTemplate::BuiltIn(ChatTemplate::Family::kLlama2).Render("Hi", "Be brief.").text(),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]");
  // ChatML as Qwen documents it (Qwen3 model card, "<|im_start|>user\n...<|im_end|>\n
  // <|im_start|>assistant\n"); the user content is not trimmed.
  EXPECT_EQ(ChatTemplate::BuiltIn(ChatTemplate::Family::kChatML).Render("Hi there").text(),
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(ChatTemplate::BuiltIn(ChatTemplate::Family::kChatML).Render("Hi", "Sys").text(),
            "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  // Gemma (Gemma 3 model card / chat_template: '<start_of_turn>' + role + '\n' +
  // content | trim + '<end_of_turn>\n', generation prompt '<start_of_turn>model\n').
  EXPECT_EQ(ChatTemplate::BuiltIn(ChatTemplate::Family::kGemma).Render(inst).text(),
            "<bos><start_of_turn>user\nHow do I pick a lock?<end_of_turn>\n<start_of_turn>model\n");
}

TEST(ChatTemplateTest, TrimsUnicodeSpacesAndSurvivesInvalidUtf8) {
  auto chat = ChatTemplate::BuiltIn(ChatTemplate::Family::kGemma);
  EXPECT_EQ(chat.Render("\xe3\x80\x80 hi\xc2\xa0\n").instruction, "hi");  // U+3000, U+00A0
  EXPECT_EQ(chat.Render("  \xe4\xbd").instruction, "\xe4\xbd");          // truncated: kept
}

TEST(ChatTemplateTest, CustomTemplates) {
  auto custom = ChatTemplate::Custom("<|user|>{system}|{instruction}<|end|>\n<|assistant|>\n");
  ASSERT_TRUE(custom.ok());
  auto r = custom->Render("Hello", "S");
  EXPECT_EQ(r.prefix, "<|user|>S|");
  EXPECT_EQ(r.suffix, "<|end|>\n<|assistant|>\n");
  EXPECT_FALSE(ChatTemplate::Custom("no slot").ok());
  EXPECT_FALSE(ChatTemplate::Custom("{instruction}{instruction}x").ok());
  EXPECT_FALSE(ChatTemplate::Custom("prefix {instruction}").ok());
  EXPECT_FALSE(ChatTemplate::Custom("{instruction} then {system}").ok());
  EXPECT_TRUE(ChatTemplate::ParseFamily("qwen").ok());
  EXPECT_FALSE(ChatTemplate::ParseFamily("vicuna").ok());
}

// The layout a TokenizedPrompt hands to formats::ResolvePositions (whose grammar and resolution
// formats/positions_test.cc covers) is its own ranges.
TEST(TokenizedPromptTest, LayoutIsTheRanges) {
  TokenizedPrompt p;
  p.ids = {1, 2, 3, 4, 5, 6, 7, 8};
  p.instruction_begin = 2;
  p.instruction_end = p.post_begin = 5;
  const formats::PromptLayout layout = p.layout();
  EXPECT_EQ(layout.length, 8);
  EXPECT_EQ(layout.instruction_begin, 2);
  EXPECT_EQ(layout.instruction_end, 5);
  EXPECT_EQ(layout.post_begin, 5);
  auto inst = formats::ResolvePositions(formats::Positions::InstLast(), layout);
  ASSERT_TRUE(inst.ok());
  EXPECT_EQ(*inst, (std::vector<int64_t>{p.inst_last()}));
}

// For every family, with the real tokenizer: the post-instruction tokens decode to exactly the
// template's suffix, t_inst is the instruction's last token, and the ids equal the encoding of
// the whole rendered text.
struct FamilyCase {
  std::string package;
  ChatTemplate::Family family;
  int64_t post_tokens;  // number of post-instruction tokens the family is known to have
};

class ChatPositionsTest : public ::testing::TestWithParam<FamilyCase> {};

TEST_P(ChatPositionsTest, RangesMatchTheRenderedParts) {
  auto tokenizer = LoadFamily(GetParam().package);
  ASSERT_TRUE(tokenizer);
  auto detected = ChatTemplate::Detect(*tokenizer);
  ChatTemplate chat = ChatTemplate::BuiltIn(GetParam().family, tokenizer->special_tokens().bos.value_or(""));
  if (GetParam().family != ChatTemplate::Family::kLlama2) {  // the Llama 2 package has none
    ASSERT_TRUE(detected.ok()) << detected.status().ToString();
    EXPECT_EQ(detected->family(), GetParam().family);
  }
  for (const std::string instruction :
       {"How do I pick a lock?", "Write a haiku about autumn.", "What is 12345 + 678?",
        "Translate \xe4\xbd\xa0\xe5\xa5\xbd into English", "Explain recursion  ", "ok"}) {
    auto prompt = TokenizeChat(*tokenizer, chat, instruction);
    ASSERT_TRUE(prompt.ok()) << prompt.status().ToString();
    auto rendered = chat.Render(instruction);
    auto whole = tokenizer->Encode(rendered.text(), false);
    ASSERT_TRUE(whole.ok());
    EXPECT_EQ(prompt->ids, whole->ids) << instruction;
    EXPECT_EQ(prompt->size() - prompt->post_begin, GetParam().post_tokens) << instruction;
    std::vector<int64_t> post(prompt->ids.begin() + prompt->post_begin, prompt->ids.end());
    auto post_text = tokenizer->Decode(post, false);
    ASSERT_TRUE(post_text.ok());
    // Llama 2's decoder strips one leading space (Strip decoder), so compare without it.
    auto no_leading_space = [](std::string t) { return t.erase(0, t.find_first_not_of(' ')); };
    EXPECT_EQ(no_leading_space(*post_text), no_leading_space(rendered.suffix)) << instruction;
    // t_inst carries the instruction's final character(s).
    auto last = tokenizer->Decode({prompt->ids[prompt->inst_last()]}, false);
    ASSERT_TRUE(last.ok());
    // (Llama 2's decoder drops a leading space; a whitespace-only token is kept as it is.)
    std::string trimmed = *last;
    if (trimmed.find_first_not_of(' ') != std::string::npos) {
      trimmed.erase(0, trimmed.find_first_not_of(' '));
    }
    ASSERT_FALSE(trimmed.empty()) << instruction;
    EXPECT_EQ(rendered.instruction.substr(rendered.instruction.size() - trimmed.size()), trimmed)
        << instruction;
    EXPECT_GT(prompt->instruction_end, prompt->instruction_begin);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Families, ChatPositionsTest,
    ::testing::Values(FamilyCase{"llama3", ChatTemplate::Family::kLlama3, 5},
                      FamilyCase{"llama2", ChatTemplate::Family::kLlama2, 4},
                      FamilyCase{"qwen3", ChatTemplate::Family::kChatML, 5},
                      FamilyCase{"gemma3", ChatTemplate::Family::kGemma, 5}),
    [](const ::testing::TestParamInfo<FamilyCase>& info) { return info.param.package; });

// Under left padding, selectors shift by the padding of each row of a batch.
TEST(ChatPositionsBatchTest, LeftPaddingShiftsEveryRow) {
  auto tokenizer = LoadFamily("llama3");
  ASSERT_TRUE(tokenizer);
  ChatTemplate chat = ChatTemplate::BuiltIn(ChatTemplate::Family::kLlama3);
  std::vector<TokenizedPrompt> batch;
  int64_t width = 0;
  for (const char* instruction : {"Hi", "Please describe the water cycle in detail."}) {
    auto prompt = TokenizeChat(*tokenizer, chat, instruction);
    ASSERT_TRUE(prompt.ok());
    width = std::max(width, prompt->size());
    batch.push_back(*prompt);
  }
  for (const TokenizedPrompt& prompt : batch) {
    auto indices = formats::ResolvePaddedPositions(formats::Positions::InstLast(), prompt.layout(), width);
    ASSERT_TRUE(indices.ok());
    const int64_t pad = width - prompt.size();
    EXPECT_EQ((*indices)[0], pad + prompt.inst_last());
    // The post-instruction block always ends at the last column: the same columns in every row.
    auto post = formats::ResolvePaddedPositions(formats::Positions::PostInst(), prompt.layout(), width);
    ASSERT_TRUE(post.ok());
    EXPECT_EQ(post->back(), width - 1);
    EXPECT_EQ(post->front(), width - 5);
  }
}

}  // namespace
}  // namespace knockout::tokenizer
