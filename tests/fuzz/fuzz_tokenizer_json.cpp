// libFuzzer entry point: arbitrary bytes as a tokenizer.json.
//
// Parsing, encoding and decoding must either succeed or throw engram::Error. Any other exception
// escapes and aborts the run, and sanitizer reports or broken invariants crash it: each is a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>

#include "engram/error.h"
#include "engram/tokenizer.h"

namespace {

// Texts that reach the interesting paths: added tokens, whitespace runs, multi-byte characters,
// byte fallback, digits, the empty string.
constexpr const char* kSamples[] = {
    "Hello world",
    " <s>a  b\t\tc\n\nd</s>",
    "na\xC3\xAFve \xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x91\x8D 12345 don't",
    "<|endoftext|>x<unk>[UNK]",
    "",
};

void check(bool ok) {
    if (!ok) __builtin_trap();
}

void exercise(const engram::Tokenizer& tok) {
    for (const char* sample : kSamples) {
        const size_t len = std::strlen(sample);
        for (bool add_special : {false, true}) {
            try {
                engram::Encoding enc = tok.encode(sample, add_special);
                check(enc.tokens.size() == enc.ids.size() && enc.offsets.size() == enc.ids.size());
                for (auto [begin, end] : enc.offsets) check(begin <= end && end <= len);
                tok.decode(enc.ids, false);
                tok.decode(enc.ids, true);
            } catch (const engram::Error&) {
                // A malformed file may only fail at encode time (e.g. an unk token missing from
                // the vocabulary); that is a clean failure.
            }
        }
    }
    try {
        const int64_t n = tok.vocab_size();
        tok.decode({-1, 0, 1, n - 1, n, int64_t{1} << 40}, false);
        tok.id_to_token(-1);
        tok.id_to_token(n);
        tok.token_to_id("<s>");
        tok.bos_id();
        tok.eos_id();
        tok.kind();
    } catch (const engram::Error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::unique_ptr<engram::Tokenizer> tok;
    try {
        tok = engram::tokenizer_from_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    } catch (const engram::Error&) {
        return 0;
    }
    exercise(*tok);
    return 0;
}
