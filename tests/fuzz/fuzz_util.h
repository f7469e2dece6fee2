// Shared pieces of the libFuzzer targets.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>

#include "engram/error.h"
#include "engram/tokenizer.h"

namespace engram::fuzz {

// A broken invariant: a crash the fuzzer records.
inline void check(bool ok) {
    if (!ok) __builtin_trap();
}

// A folder of this process's own under the temp dir, for parsers that read files.
inline const std::filesystem::path& scratch() {
    static const std::filesystem::path dir = [] {
        auto d = std::filesystem::temp_directory_path() / ("engram-fuzz-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        return d;
    }();
    return dir;
}

inline std::filesystem::path write_file(const std::string& name, std::string_view bytes) {
    const std::filesystem::path p = scratch() / name;
    std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
}

// Two files from one input: the bytes before the first NUL and those after it (empty if none).
inline std::pair<std::string_view, std::string_view> split_at_nul(const uint8_t* data, size_t size) {
    const std::string_view all(reinterpret_cast<const char*>(data), size);
    const size_t nul = all.find('\0');
    if (nul == std::string_view::npos) return {all, {}};
    return {all.substr(0, nul), all.substr(nul + 1)};
}

// Encodes and decodes texts that reach the interesting paths (added tokens, whitespace runs,
// multi-byte characters, byte fallback, digits, the empty string) and asks for ids out of range.
// Each call must succeed or throw engram::Error; offsets must lie inside the text.
inline void exercise_tokenizer(const Tokenizer& tok) {
    static constexpr const char* kSamples[] = {
        "Hello world",
        " <s>a  b\t\tc\n\nd</s>",
        "na\xC3\xAFve \xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x91\x8D 12345 don't",
        "<|endoftext|>x<unk>[UNK]",
        "",
    };
    for (const char* sample : kSamples) {
        const size_t len = std::strlen(sample);
        for (bool add_special : {false, true}) {
            try {
                Encoding enc = tok.encode(sample, add_special);
                check(enc.tokens.size() == enc.ids.size() && enc.offsets.size() == enc.ids.size());
                for (auto [begin, end] : enc.offsets) check(begin <= end && end <= len);
                tok.decode(enc.ids, false);
                tok.decode(enc.ids, true);
            } catch (const Error&) {
                // A malformed file may only fail at encode time (an unk token missing from the
                // vocabulary, say); that is a clean failure.
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
    } catch (const Error&) {
    }
}

}  // namespace engram::fuzz
