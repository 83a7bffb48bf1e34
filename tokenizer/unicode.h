// UTF-8 and Unicode helpers for the tokenizer: validation, code point iteration, the GPT-2
// byte-to-unicode table, lossy decoding, whitespace / word-character classes (as Rust's
// `char::is_whitespace` and regex `\w` define them) and utf8proc-backed normalization forms.
// Internal to tokenizer/. All functions are pure and safe to call from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace knockout::tokenizer::internal {

inline constexpr size_t kNoError = static_cast<size_t>(-1);

// Offset of the first byte that does not start a well-formed UTF-8 sequence, or kNoError.
size_t FindInvalidUtf8(std::string_view s);

// Length of the sequence led by `lead` (1 for ASCII and, defensively, for stray bytes).
inline size_t Utf8SeqLen(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// Decodes the code point at s[*i] (which must be valid UTF-8) and advances *i past it.
char32_t NextCodePoint(std::string_view s, size_t* i);

void AppendUtf8(char32_t cp, std::string* out);

// Unicode White_Space (what Rust's char::is_whitespace and regex `\s` match).
bool IsWhiteSpace(char32_t cp);
// Rust regex `\w` (alphabetic, marks, decimal digits, connector punctuation, joiners).
bool IsWordChar(char32_t cp);

// Bytes to text, replacing each maximal ill-formed subsequence with U+FFFD (the WHATWG rule
// that both JavaScript's TextDecoder and Rust's from_utf8_lossy follow).
std::string Utf8Lossy(std::string_view bytes);

// GPT-2's reversible byte <-> printable-character table used by ByteLevel components.
// ByteToUnicode()[b] is the UTF-8 encoding of the character standing for byte b.
const std::array<std::string, 256>& ByteToUnicode();
// The byte a character stands for, or -1 when `cp` is not in the table.
int UnicodeToByte(char32_t cp);

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };
// Unicode normalization through utf8proc. `s` must be valid UTF-8.
StatusOr<std::string> Normalize(std::string_view s, NormalForm form);

// Per-character lowercasing (Rust's char::to_lowercase, so no final-sigma rule).
std::string Lowercase(std::string_view s);

}  // namespace knockout::tokenizer::internal
