// libFuzzer target: the classic GPT-2 tokenizer files. The input is vocab.json, a NUL byte, then
// merges.txt. Loading, encoding and decoding must succeed or throw engram::Error.
#include <memory>

#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto [vocab, merges] = engram::fuzz::split_at_nul(data, size);
    const auto vocab_file = engram::fuzz::write_file("vocab.json", vocab);
    const auto merges_file = engram::fuzz::write_file("merges.txt", merges);
    std::unique_ptr<engram::Tokenizer> tok;
    try {
        tok = engram::tokenizer_from_vocab_merges(vocab_file, merges_file);
    } catch (const engram::Error&) {
        return 0;
    }
    engram::fuzz::exercise_tokenizer(*tok);
    return 0;
}
