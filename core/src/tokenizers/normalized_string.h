// NormalizedString and PreTokenizedString: text that normalizers and pre-tokenizers rewrite while
// remembering, byte by byte, which bytes of the caller's input each byte came from. That alignment
// is what turns a token back into an offset range of the original text.
//
// The semantics (which original span an inserted or replaced character inherits, how splits merge
// their delimiters) follow HF tokenizers' NormalizedString, so offsets agree with theirs.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace engram::tok {

class Regex;

using Span = std::pair<size_t, size_t>;  // [begin, end) bytes of the original input

// One piece of a pattern search; the pieces cover the searched string in order.
struct PatternPiece {
    size_t begin;
    size_t end;
    bool is_match;
};

std::vector<PatternPiece> find_regex(const Regex& re, std::string_view text);
std::vector<PatternPiece> find_literal(std::string_view needle, std::string_view text);
// Every character satisfying `pred` is a match of its own.
std::vector<PatternPiece> find_chars(const std::function<bool(char32_t)>& pred, std::string_view text);
void invert(std::vector<PatternPiece>& pieces);

// What a split does with the delimiters it finds (HF SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

class NormalizedString {
public:
    NormalizedString() = default;
    // The whole input: each byte is aligned to the span of the character it belongs to.
    explicit NormalizedString(std::string_view original);

    const std::string& get() const { return text_; }
    bool empty() const { return text_.empty(); }
    // Where this piece starts in the original input (HF offsets_original().0).
    size_t original_begin() const { return origin_; }
    // The original span covered by the normalized bytes [begin, end).
    Span original_span(size_t begin, size_t end) const;

    NormalizedString slice(size_t begin, size_t end) const;

    // Inserts `s` before the first character; the new characters take its span.
    void prepend(std::string_view s);
    // Replaces every matched piece by `content`, which takes the span of the last replaced byte.
    void replace(const std::vector<PatternPiece>& pieces, std::string_view content);
    // Rewrites each character as `f` says (appending zero or more characters to `out`); the new
    // characters take the span of the character they replace.
    void map_chars(const std::function<void(char32_t cp, std::string_view utf8, std::string& out)>& f);
    // Removes leading/trailing Unicode whitespace.
    void strip(bool left, bool right);

    std::vector<NormalizedString> split(const std::vector<PatternPiece>& pieces,
                                        SplitBehavior behavior) const;

private:
    std::string text_;
    std::vector<Span> align_;  // one per byte of text_, absolute offsets into the original
    size_t origin_ = 0;
};

struct Token {
    int64_t id;
    std::string value;
    size_t begin;  // bytes of the split's normalized text
    size_t end;
};

struct Split {
    NormalizedString normalized;
    std::optional<std::vector<Token>> tokens;  // already tokenized (added tokens)
};

struct PreTokenizedString {
    std::vector<Split> splits;

    // Replaces every split that is not yet tokenized by what `f` makes of it; empty results are
    // dropped. `f` receives the split's index.
    void split(const std::function<std::vector<Split>(size_t, NormalizedString&&)>& f);
    void split_normalized(
        const std::function<std::vector<NormalizedString>(size_t, NormalizedString&&)>& f);
    void normalize(const std::function<void(NormalizedString&)>& f);
};

}  // namespace engram::tok
