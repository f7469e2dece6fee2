#include "tokenizers/normalized_string.h"

#include <algorithm>

#include "tokenizers/regex.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

std::vector<PatternPiece> find_regex(const Regex& re, std::string_view text) {
    if (text.empty()) return {{0, 0, false}};
    std::vector<PatternPiece> pieces;
    size_t prev = 0;
    for (auto [begin, end] : re.find_all(text)) {
        if (prev != begin) pieces.push_back({prev, begin, false});
        pieces.push_back({begin, end, true});
        prev = end;
    }
    if (prev != text.size()) pieces.push_back({prev, text.size(), false});
    return pieces;
}

std::vector<PatternPiece> find_literal(std::string_view needle, std::string_view text) {
    if (needle.empty() || text.empty()) return {{0, text.size(), false}};
    std::vector<PatternPiece> pieces;
    size_t prev = 0;
    for (size_t pos = text.find(needle); pos != std::string_view::npos;
         pos = text.find(needle, pos + needle.size())) {
        if (prev != pos) pieces.push_back({prev, pos, false});
        pieces.push_back({pos, pos + needle.size(), true});
        prev = pos + needle.size();
    }
    if (prev != text.size()) pieces.push_back({prev, text.size(), false});
    return pieces;
}

std::vector<PatternPiece> find_chars(const std::function<bool(char32_t)>& pred, std::string_view text) {
    if (text.empty()) return {{0, 0, false}};
    std::vector<PatternPiece> pieces;
    size_t prev = 0;
    for (size_t i = 0; i < text.size();) {
        size_t len = utf8_len(static_cast<unsigned char>(text[i]));
        if (pred(utf8_decode(text, i))) {
            if (prev < i) pieces.push_back({prev, i, false});
            pieces.push_back({i, i + len, true});
            prev = i + len;
        }
        i += len;
    }
    if (prev < text.size()) pieces.push_back({prev, text.size(), false});
    return pieces;
}

void invert(std::vector<PatternPiece>& pieces) {
    for (auto& p : pieces) p.is_match = !p.is_match;
}

NormalizedString::NormalizedString(std::string_view original) : text_(original) {
    align_.reserve(original.size());
    for (size_t i = 0; i < original.size();) {
        size_t len = std::min(utf8_len(static_cast<unsigned char>(original[i])), original.size() - i);
        for (size_t k = 0; k < len; ++k) align_.push_back({i, i + len});
        i += len;
    }
}

Span NormalizedString::original_span(size_t begin, size_t end) const {
    if (begin >= end || end > align_.size()) {
        size_t at = begin < align_.size() ? align_[begin].first : (align_.empty() ? origin_ : align_.back().second);
        return {at, at};
    }
    return {align_[begin].first, align_[end - 1].second};
}

NormalizedString NormalizedString::slice(size_t begin, size_t end) const {
    NormalizedString out;
    end = std::min(end, text_.size());
    begin = std::min(begin, end);
    out.text_ = text_.substr(begin, end - begin);
    out.align_.assign(align_.begin() + static_cast<std::ptrdiff_t>(begin),
                      align_.begin() + static_cast<std::ptrdiff_t>(end));
    out.origin_ = original_span(begin, end).first;
    return out;
}

void NormalizedString::prepend(std::string_view s) {
    if (text_.empty() || s.empty()) return;
    Span first = align_.front();
    text_.insert(0, s);
    align_.insert(align_.begin(), s.size(), first);
}

void NormalizedString::replace(const std::vector<PatternPiece>& pieces, std::string_view content) {
    std::string text;
    std::vector<Span> align;
    text.reserve(text_.size());
    align.reserve(align_.size());
    for (const auto& p : pieces) {
        if (!p.is_match) {
            text.append(text_, p.begin, p.end - p.begin);
            align.insert(align.end(), align_.begin() + static_cast<std::ptrdiff_t>(p.begin),
                         align_.begin() + static_cast<std::ptrdiff_t>(p.end));
            continue;
        }
        Span span = p.end > 0 ? align_[p.end - 1] : Span{origin_, origin_};
        text.append(content);
        align.insert(align.end(), content.size(), span);
    }
    text_ = std::move(text);
    align_ = std::move(align);
}

void NormalizedString::map_chars(
    const std::function<void(char32_t, std::string_view, std::string&)>& f) {
    std::string text;
    std::vector<Span> align;
    text.reserve(text_.size());
    align.reserve(align_.size());
    for (size_t i = 0; i < text_.size();) {
        size_t len = utf8_len(static_cast<unsigned char>(text_[i]));
        size_t before = text.size();
        f(utf8_decode(text_, i), std::string_view(text_).substr(i, len), text);
        align.insert(align.end(), text.size() - before, align_[i]);
        i += len;
    }
    text_ = std::move(text);
    align_ = std::move(align);
}

void NormalizedString::strip(bool left, bool right) {
    size_t begin = 0, end = text_.size();
    if (left) {
        while (begin < end && is_unicode_whitespace(utf8_decode(text_, begin)))
            begin += utf8_len(static_cast<unsigned char>(text_[begin]));
    }
    if (right) {
        while (end > begin) {
            size_t start = end - 1;
            while (start > begin && (static_cast<unsigned char>(text_[start]) & 0xC0) == 0x80) --start;
            if (!is_unicode_whitespace(utf8_decode(text_, start))) break;
            end = start;
        }
    }
    if (begin == 0 && end == text_.size()) return;
    size_t origin = origin_;
    *this = slice(begin, end);
    origin_ = origin;  // stripping does not move where the piece starts
}

std::vector<NormalizedString> NormalizedString::split(const std::vector<PatternPiece>& pieces,
                                                      SplitBehavior behavior) const {
    struct Range {
        size_t begin, end;
        bool remove;
    };
    std::vector<Range> ranges;
    ranges.reserve(pieces.size());
    switch (behavior) {
    case SplitBehavior::Isolated:
        for (const auto& p : pieces) ranges.push_back({p.begin, p.end, false});
        break;
    case SplitBehavior::Removed:
        for (const auto& p : pieces) ranges.push_back({p.begin, p.end, p.is_match});
        break;
    case SplitBehavior::Contiguous: {
        bool previous_match = false;
        for (const auto& p : pieces) {
            if (p.is_match == previous_match && !ranges.empty())
                ranges.back().end = p.end;
            else
                ranges.push_back({p.begin, p.end, false});
            previous_match = p.is_match;
        }
        break;
    }
    case SplitBehavior::MergedWithPrevious: {
        bool previous_match = false;
        for (const auto& p : pieces) {
            if (p.is_match && !previous_match && !ranges.empty())
                ranges.back().end = p.end;
            else
                ranges.push_back({p.begin, p.end, false});
            previous_match = p.is_match;
        }
        break;
    }
    case SplitBehavior::MergedWithNext: {
        bool previous_match = false;
        for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
            if (it->is_match && !previous_match && !ranges.empty())
                ranges.back().begin = it->begin;
            else
                ranges.push_back({it->begin, it->end, false});
            previous_match = it->is_match;
        }
        std::reverse(ranges.begin(), ranges.end());
        break;
    }
    }
    std::vector<NormalizedString> out;
    out.reserve(ranges.size());
    for (const auto& r : ranges)
        if (!r.remove) out.push_back(slice(r.begin, r.end));
    return out;
}

void PreTokenizedString::split(const std::function<std::vector<Split>(size_t, NormalizedString&&)>& f) {
    std::vector<Split> next;
    next.reserve(splits.size());
    for (size_t i = 0; i < splits.size(); ++i) {
        if (splits[i].tokens) {
            next.push_back(std::move(splits[i]));
            continue;
        }
        for (auto& piece : f(i, std::move(splits[i].normalized)))
            if (!piece.normalized.empty()) next.push_back(std::move(piece));
    }
    splits = std::move(next);
}

void PreTokenizedString::split_normalized(
    const std::function<std::vector<NormalizedString>(size_t, NormalizedString&&)>& f) {
    split([&](size_t i, NormalizedString&& s) {
        std::vector<Split> out;
        for (auto& piece : f(i, std::move(s))) out.push_back({std::move(piece), std::nullopt});
        return out;
    });
}

void PreTokenizedString::normalize(const std::function<void(NormalizedString&)>& f) {
    for (auto& s : splits)
        if (!s.tokens) f(s.normalized);
}

}  // namespace engram::tok
