// Byte-pair encoding, as HF tokenizers runs it: the word starts as one symbol per character (or
// per byte token when a character is missing and byte_fallback is on) and the lowest-ranked
// adjacent pair is merged until no known pair remains.

#include <algorithm>
#include <cstdio>
#include <queue>

#include "engram/error.h"
#include "tokenizers/models.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

BpeModel::BpeModel(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options, std::string source)
    : vocab_(std::move(vocab)), options_(std::move(options)), source_(std::move(source)) {
    const std::string prefix = options_.continuing_subword_prefix.value_or("");
    merges_.reserve(merges.size());
    std::string merged;
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        // Named references, not a structured binding: clang 14 cannot capture those in lambdas.
        const std::string& a = merges[rank].first;
        const std::string& b = merges[rank].second;
        auto a_id = vocab_.find(a);
        auto b_id = vocab_.find(b);
        auto missing = [&](const std::string& token) {
            return Error(ErrorKind::Format, source_ + ": merge " + std::to_string(rank + 1) + " (\"" +
                                                a + " " + b + "\") uses \"" + token +
                                                "\", which is not in the vocabulary");
        };
        if (!a_id) throw missing(a);
        if (!b_id) throw missing(b);
        // With a continuing-subword prefix ("##"), "a" + "##b" makes "ab": the prefix of the right
        // side disappears in the merge.
        std::string_view b_tail = b;
        if (!prefix.empty() && b_tail.substr(0, prefix.size()) == prefix) b_tail.remove_prefix(prefix.size());
        merged.assign(a);
        merged.append(b_tail);
        auto new_id = vocab_.find(merged);
        if (!new_id) throw missing(merged);
        merges_[pair_key(static_cast<int32_t>(*a_id), static_cast<int32_t>(*b_id))] =
            MergeTarget{static_cast<int32_t>(rank), static_cast<int32_t>(*new_id)};
    }
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto id = vocab_.find(name);
        byte_ids_[static_cast<size_t>(b)] = id ? static_cast<int32_t>(*id) : -1;
    }
}

std::vector<BpeModel::Piece> BpeModel::merge_word(std::string_view word) const {
    struct Symbol {
        int32_t id;
        int32_t prev;
        int32_t next;
        uint32_t len;
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto add = [&](int32_t id, uint32_t len) {
        auto index = static_cast<int32_t>(symbols.size());
        symbols.push_back({id, index - 1, -1, len});
        if (index > 0) symbols[static_cast<size_t>(index - 1)].next = index;
    };

    std::optional<Piece> pending_unk;
    std::string key;
    for (size_t i = 0; i < word.size();) {
        const size_t len = std::min(utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
        const bool is_first = i == 0;
        const bool is_last = i + len == word.size();
        std::string_view ch = word.substr(i, len);
        i += len;

        std::string_view lookup = ch;
        if ((!is_first && options_.continuing_subword_prefix) || (is_last && options_.end_of_word_suffix)) {
            key.clear();
            if (!is_first && options_.continuing_subword_prefix) key += *options_.continuing_subword_prefix;
            key += ch;
            if (is_last && options_.end_of_word_suffix) key += *options_.end_of_word_suffix;
            lookup = key;
        }

        if (auto id = vocab_.find(lookup)) {
            if (pending_unk) {
                add(pending_unk->id, pending_unk->len);
                pending_unk.reset();
            }
            add(static_cast<int32_t>(*id), static_cast<uint32_t>(len));
            continue;
        }
        if (options_.byte_fallback &&
            std::all_of(ch.begin(), ch.end(), [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
            if (pending_unk) {
                add(pending_unk->id, pending_unk->len);
                pending_unk.reset();
            }
            for (char c : ch) add(byte_ids_[static_cast<unsigned char>(c)], 1);
            continue;
        }
        if (!options_.unk_token) continue;  // HF drops characters it cannot represent
        auto unk_id = vocab_.find(*options_.unk_token);
        if (!unk_id) {
            throw Error(ErrorKind::Format, source_ + ": unk_token \"" + *options_.unk_token +
                                               "\" is not in the vocabulary");
        }
        if (pending_unk && options_.fuse_unk) {
            pending_unk->len += static_cast<uint32_t>(len);
        } else {
            if (pending_unk) add(pending_unk->id, pending_unk->len);
            pending_unk = Piece{static_cast<int32_t>(*unk_id), static_cast<uint32_t>(len)};
        }
    }
    if (pending_unk) add(pending_unk->id, pending_unk->len);

    struct Merge {
        int32_t pos;
        int32_t rank;
        int32_t new_id;
    };
    // Lowest rank first; among equal ranks the leftmost pair.
    auto later = [](const Merge& x, const Merge& y) {
        return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
    };
    std::priority_queue<Merge, std::vector<Merge>, decltype(later)> queue(later);
    auto find_merge = [&](int32_t a, int32_t b) -> const MergeTarget* {
        auto it = merges_.find(pair_key(a, b));
        return it == merges_.end() ? nullptr : &it->second;
    };
    for (size_t k = 0; k + 1 < symbols.size(); ++k) {
        if (const MergeTarget* m = find_merge(symbols[k].id, symbols[k + 1].id))
            queue.push({static_cast<int32_t>(k), m->rank, m->new_id});
    }
    while (!queue.empty()) {
        Merge top = queue.top();
        queue.pop();
        Symbol& current = symbols[static_cast<size_t>(top.pos)];
        if (current.len == 0 || current.next == -1) continue;
        const Symbol right = symbols[static_cast<size_t>(current.next)];
        // The queue may hold pairs that earlier merges have since changed.
        const MergeTarget* still = find_merge(current.id, right.id);
        if (!still || still->new_id != top.new_id) continue;

        symbols[static_cast<size_t>(current.next)].len = 0;
        current.id = top.new_id;
        current.len += right.len;
        current.next = right.next;
        if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;

        if (current.prev >= 0) {
            const Symbol& prev = symbols[static_cast<size_t>(current.prev)];
            if (const MergeTarget* m = find_merge(prev.id, current.id))
                queue.push({current.prev, m->rank, m->new_id});
        }
        if (current.next >= 0) {
            const Symbol& next = symbols[static_cast<size_t>(current.next)];
            if (const MergeTarget* m = find_merge(current.id, next.id))
                queue.push({top.pos, m->rank, m->new_id});
        }
    }

    std::vector<Piece> pieces;
    pieces.reserve(symbols.size());
    for (const Symbol& s : symbols)
        if (s.len != 0) pieces.push_back({s.id, s.len});
    return pieces;
}

std::vector<Token> BpeModel::tokenize(std::string_view word) const {
    std::vector<Token> tokens;
    if (word.empty()) return tokens;
    if (options_.ignore_merges) {
        // Llama-3 style: a word that is itself a token is taken whole, whatever the merges say.
        if (auto id = vocab_.find(word)) {
            tokens.push_back({*id, std::string(word), 0, word.size()});
            return tokens;
        }
    }

    std::vector<Piece> pieces;
    bool cached = false;
    {
        std::lock_guard lock(cache_mutex_);
        if (auto it = cache_.find(word); it != cache_.end()) {
            pieces = it->second;
            cached = true;
        }
    }
    if (!cached) {
        pieces = merge_word(word);
        std::lock_guard lock(cache_mutex_);
        if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), pieces);
    }

    tokens.reserve(pieces.size());
    size_t offset = 0;
    for (const Piece& p : pieces) {
        const std::string* value = vocab_.token(p.id);
        tokens.push_back({p.id, value ? *value : std::string(), offset, offset + p.len});
        offset += p.len;
    }
    return tokens;
}

}  // namespace engram::tok
