// A compiled PCRE2 pattern (UTF + UCP), the regex engine behind Split, ByteLevel and Whitespace.
//
// HF tokenizers uses Oniguruma; PCRE2 with UCP agrees with it on the patterns tokenizer.json files
// carry (\p{L}, \p{N}, \s, look-ahead, (?i:...)), and std::regex cannot do Unicode classes at all.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace engram::tok {

class Regex {
public:
    // Throws engram::Error(Format) naming the pattern when PCRE2 rejects it.
    explicit Regex(std::string_view pattern);
    ~Regex();
    Regex(Regex&&) noexcept;
    Regex& operator=(Regex&&) noexcept;
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    // Non-overlapping matches, left to right, as onig's find_iter reports them: after an empty match
    // the search resumes one character later, and an empty match right after a match is dropped.
    // `text` must be valid UTF-8. Thread-safe.
    std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

    // Whether the pattern matches anywhere in `text`.
    bool search(std::string_view text) const;

    const std::string& pattern() const { return pattern_; }

private:
    struct CodeDeleter {
        void operator()(pcre2_real_code_8* code) const;
    };
    // Runs one match from `start`; returns false on no match. Throws on engine errors.
    bool match_at(std::string_view text, size_t start, std::pair<size_t, size_t>& out) const;

    std::string pattern_;
    std::unique_ptr<pcre2_real_code_8, CodeDeleter> code_;
    bool jit_ = false;
};

}  // namespace engram::tok
