// libFuzzer entry point: arbitrary bytes as a tokenizer.json.
//
// Parsing, encoding and decoding must either succeed or throw engram::Error. Any other exception
// escapes and aborts the run, and sanitizer reports or broken invariants crash it: each is a bug.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "engram/error.h"
#include "engram/tokenizer.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::unique_ptr<engram::Tokenizer> tok;
    try {
        tok = engram::tokenizer_from_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    } catch (const engram::Error&) {
        return 0;
    }
    engram::fuzz::exercise_tokenizer(*tok);
    return 0;
}
