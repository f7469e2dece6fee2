// Added/special tokens: found in the text before anything else sees it.
//
// Matching follows HF's AddedVocabulary: tokens with normalized=false are matched in the raw text,
// the others in the normalized pieces between them; leftmost match wins, longest at that position;
// single_word, lstrip and rstrip are applied to each match.

#include <algorithm>

#include "tokenizers/pipeline.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

void AddedVocabulary::add(AddedToken token) {
    if (token.content.empty()) return;  // HF ignores them too; they would match everywhere
    if (auto it = by_content_.find(token.content); it != by_content_.end()) {
        AddedToken& existing = tokens_[it->second];
        by_id_.erase(existing.id);
        special_.erase(existing.content);
        existing = std::move(token);
        by_id_[existing.id] = it->second;
        if (existing.special) special_.insert(existing.content);
        return;
    }
    size_t index = tokens_.size();
    by_content_[token.content] = index;
    by_id_[token.id] = index;
    if (token.special) special_.insert(token.content);
    tokens_.push_back(std::move(token));
}

void AddedVocabulary::build_matcher(Matcher& m, bool normalized_tokens, const Normalizer* normalizer) {
    m = Matcher{};
    m.by_first_byte.resize(256);
    for (size_t i = 0; i < tokens_.size(); ++i) {
        const AddedToken& t = tokens_[i];
        if (t.normalized != normalized_tokens) continue;
        std::string pattern = t.content;
        if (normalized_tokens && normalizer) {
            NormalizedString s(pattern);
            normalizer->normalize(s);
            pattern = s.get();
        }
        if (pattern.empty()) continue;
        m.by_first_byte[static_cast<unsigned char>(pattern[0])].emplace_back(std::move(pattern), i);
        m.empty = false;
    }
    for (auto& bucket : m.by_first_byte) {
        std::stable_sort(bucket.begin(), bucket.end(), [](const auto& a, const auto& b) {
            return a.first.size() > b.first.size();
        });
    }
}

void AddedVocabulary::finalize(const Normalizer* normalizer) {
    build_matcher(raw_, false, normalizer);
    build_matcher(normalized_, true, normalizer);
}

namespace {

bool whitespace_at(std::string_view text, size_t pos) {
    return is_unicode_whitespace(utf8_decode(text, pos));
}

size_t previous_char(std::string_view text, size_t pos) {
    size_t start = pos - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    return start;
}

}  // namespace

std::vector<Split> AddedVocabulary::split_with_matcher(NormalizedString&& s, const Matcher& m) const {
    if (m.empty || s.empty()) {
        std::vector<Split> out;
        out.push_back({std::move(s), std::nullopt});
        return out;
    }
    const std::string_view text = s.get();
    struct Piece {
        size_t begin, end;
        const AddedToken* token;
    };
    std::vector<Piece> pieces;
    size_t start_offset = 0;
    size_t pos = 0;
    while (pos < text.size()) {
        // Leftmost position with any match, then the longest pattern there.
        size_t begin = std::string_view::npos;
        size_t length = 0;
        size_t index = 0;
        for (size_t i = pos; i < text.size() && begin == std::string_view::npos; ++i) {
            for (const auto& [pattern, token_index] : m.by_first_byte[static_cast<unsigned char>(text[i])]) {
                if (text.compare(i, pattern.size(), pattern) == 0) {
                    begin = i;
                    length = pattern.size();
                    index = token_index;
                    break;
                }
            }
        }
        if (begin == std::string_view::npos) break;
        size_t end = begin + length;
        pos = end;  // a rejected match still consumes its text, as with HF's aho-corasick iterator
        const AddedToken& token = tokens_[index];
        if (token.single_word) {
            bool start_space = begin == 0 || !is_word_char(utf8_decode(text, previous_char(text, begin)));
            bool stop_space = end == text.size() || !is_word_char(utf8_decode(text, end));
            if (!start_space || !stop_space) continue;
        }
        if (token.lstrip) {
            size_t new_begin = begin;
            while (new_begin > 0) {
                size_t prev = previous_char(text, new_begin);
                if (!whitespace_at(text, prev)) break;
                new_begin = prev;
            }
            begin = std::max(new_begin, start_offset);
        }
        if (token.rstrip) {
            while (end < text.size() && whitespace_at(text, end))
                end += utf8_len(static_cast<unsigned char>(text[end]));
            pos = end;
        }
        if (start_offset < begin) pieces.push_back({start_offset, begin, nullptr});
        pieces.push_back({begin, end, &token});
        start_offset = end;
    }
    if (start_offset != text.size()) pieces.push_back({start_offset, text.size(), nullptr});

    std::vector<Split> out;
    out.reserve(pieces.size());
    for (const auto& p : pieces) {
        NormalizedString piece = s.slice(p.begin, p.end);
        if (p.token) {
            // HF reports the matched text (stripped whitespace included) as the token's value.
            std::vector<Token> tokens{{p.token->id, piece.get(), 0, piece.get().size()}};
            out.push_back({std::move(piece), std::move(tokens)});
        } else {
            out.push_back({std::move(piece), std::nullopt});
        }
    }
    return out;
}

PreTokenizedString AddedVocabulary::extract_and_normalize(const Normalizer* normalizer,
                                                          std::string_view text) const {
    PreTokenizedString pre;
    pre.splits.push_back({NormalizedString(text), std::nullopt});
    pre.split([&](size_t, NormalizedString&& s) { return split_with_matcher(std::move(s), raw_); });
    pre.split([&](size_t, NormalizedString&& s) {
        if (normalizer) normalizer->normalize(s);
        return split_with_matcher(std::move(s), normalized_);
    });
    return pre;
}

std::optional<int64_t> AddedVocabulary::token_to_id(std::string_view content) const {
    auto it = by_content_.find(content);
    if (it == by_content_.end()) return std::nullopt;
    return tokens_[it->second].id;
}

const std::string* AddedVocabulary::id_to_token(int64_t id) const {
    auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &tokens_[it->second].content;
}

std::optional<int64_t> AddedVocabulary::max_id() const {
    std::optional<int64_t> best;
    for (const auto& t : tokens_)
        if (!best || t.id > *best) best = t.id;
    return best;
}

}  // namespace engram::tok
