// UTF-8 and Unicode helpers shared by the tokenizer pipeline.
//
// Everything past the entry points works on valid UTF-8 (encode() checks its input once), so the
// decoders here do not re-validate.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace engram::tok {

// Length of the UTF-8 sequence that `lead` starts (1 for a stray continuation byte, so that loops
// over untrusted bytes always advance).
inline size_t utf8_len(unsigned char lead) {
    if (lead < 0x80) return 1;
    if ((lead >> 5) == 0x6) return 2;
    if ((lead >> 4) == 0xE) return 3;
    if ((lead >> 3) == 0x1E) return 4;
    return 1;
}

// The code point starting at text[pos] (text must be valid UTF-8 there).
char32_t utf8_decode(std::string_view text, size_t pos);
void utf8_append(std::string& out, char32_t cp);
std::string utf8_encode(char32_t cp);

// Byte index of the first byte that does not belong to a well-formed UTF-8 sequence.
std::optional<size_t> utf8_first_invalid(std::string_view bytes);

// Rust's String::from_utf8_lossy: each maximal ill-formed subpart becomes one U+FFFD. The HF
// ByteLevel decoder relies on exactly this when a token sequence ends mid-character.
std::string utf8_lossy(std::string_view bytes);

// Number of code points.
size_t utf8_count(std::string_view text);

// Unicode White_Space (what Rust's char::is_whitespace, onig's and PCRE2-UCP's \s accept).
bool is_unicode_whitespace(char32_t cp);

// GPT-2's reversible byte <-> printable-character map (openai/gpt-2 encoder.py bytes_to_unicode).
// byte_to_unicode()[b] is the UTF-8 of the character standing for byte b.
const std::array<std::string, 256>& byte_to_unicode();
// The byte a character stands for, or -1 when the character is not in the map.
int unicode_to_byte(char32_t cp);

// Simple (one-to-one) lowercase mapping; good enough for the Lowercase normalizer.
char32_t simple_lowercase(char32_t cp);

// Unicode general categories used by a few pre-tokenizers (Punctuation, Digits, BertPreTokenizer,
// single_word added tokens). Answered by PCRE2's Unicode tables.
bool is_punctuation(char32_t cp);  // P* or ASCII punctuation
bool is_numeric(char32_t cp);      // N*
bool is_word_char(char32_t cp);    // \w: letters, marks, numbers, connector punctuation

}  // namespace engram::tok
