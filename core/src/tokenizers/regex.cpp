#include "tokenizers/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engram/error.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

namespace {

// A pattern from a tokenizer.json is untrusted: bound the backtracking so that a pathological one
// fails with an error instead of hanging the GUI (or the fuzzer).
constexpr uint32_t kMatchLimit = 10'000'000;

struct MatchDataDeleter {
    void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
struct MatchContextDeleter {
    void operator()(pcre2_match_context* ctx) const { pcre2_match_context_free(ctx); }
};

pcre2_match_context* shared_match_context() {
    // Read-only after construction, so one context serves every thread.
    static std::unique_ptr<pcre2_match_context, MatchContextDeleter> ctx = [] {
        std::unique_ptr<pcre2_match_context, MatchContextDeleter> c(pcre2_match_context_create(nullptr));
        if (c) pcre2_set_match_limit(c.get(), kMatchLimit);
        return c;
    }();
    return ctx.get();
}

std::string pcre2_message(int code) {
    PCRE2_UCHAR buffer[256];
    int n = pcre2_get_error_message(code, buffer, sizeof buffer);
    if (n < 0) return "PCRE2 error " + std::to_string(code);
    return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

}  // namespace

void Regex::CodeDeleter::operator()(pcre2_real_code_8* code) const { pcre2_code_free(code); }

Regex::Regex(std::string_view pattern) : pattern_(pattern) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
    if (!code) {
        throw Error(ErrorKind::Format, "invalid regex \"" + pattern_ + "\" at offset " +
                                           std::to_string(error_offset) + ": " +
                                           pcre2_message(error_code));
    }
    code_.reset(code);
    // JIT is a large speed-up for the GPT-2 pattern; when unavailable the interpreter still works.
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

bool Regex::match_at(std::string_view text, size_t start, std::pair<size_t, size_t>& out) const {
    thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
        pcre2_match_data_create(1, nullptr));
    if (!data) throw Error(ErrorKind::Internal, "out of memory creating PCRE2 match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    // Our callers only pass valid UTF-8, so skip PCRE2's per-call validity scan (it is O(n) per
    // match, which makes splitting a long text quadratic).
    int rc = pcre2_match(code_.get(), subject, text.size(), start, PCRE2_NO_UTF_CHECK, data.get(),
                         shared_match_context());
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && jit_) {
        // The JIT's small default stack ran out on a long run; the interpreter uses the heap.
        rc = pcre2_match(code_.get(), subject, text.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                         data.get(), shared_match_context());
    }
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
        throw Error(ErrorKind::Format,
                    "regex \"" + pattern_ + "\" failed on the input: " + pcre2_message(rc));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
    out = {ovector[0], ovector[1]};
    // \K in a look-behind can report end < start; treat such a match as empty.
    if (out.second < out.first) out.second = out.first;
    return true;
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
    std::vector<std::pair<size_t, size_t>> matches;
    size_t start = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (start <= text.size()) {
        std::pair<size_t, size_t> m;
        if (!match_at(text, start, m)) break;
        if (m.first == m.second) {
            if (!(have_last && m.second == last_end)) matches.push_back(m);
            have_last = true;
            last_end = m.second;
            if (m.second >= text.size()) break;
            start = m.second + utf8_len(static_cast<unsigned char>(text[m.second]));
        } else {
            matches.push_back(m);
            have_last = true;
            last_end = m.second;
            start = m.second;
        }
    }
    return matches;
}

bool Regex::search(std::string_view text) const {
    std::pair<size_t, size_t> m;
    return match_at(text, 0, m);
}

}  // namespace engram::tok
