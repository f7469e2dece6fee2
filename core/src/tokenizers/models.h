// The subword models: BPE (byte-level, or with byte fallback) and WordLevel.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizers/pipeline.h"

namespace engram::tok {

// token -> id and back. Ids are dense in every real vocabulary; `finish` refuses wildly sparse ones
// so that a hostile file cannot make us allocate a reverse table of 2^31 entries.
class Vocab {
public:
    // Later duplicates of a token replace earlier ones. `id` must be in [0, 2^31).
    void insert(std::string token, int64_t id);
    // Builds the reverse table; throws engram::Error(Format) naming `source`.
    void finish(const std::string& source);

    std::optional<int64_t> find(std::string_view token) const {
        auto it = map_.find(token);
        if (it == map_.end()) return std::nullopt;
        return it->second;
    }
    const std::string* token(int64_t id) const {
        if (id < 0 || static_cast<uint64_t>(id) >= reverse_.size()) return nullptr;
        return reverse_[static_cast<size_t>(id)];
    }
    size_t size() const { return map_.size(); }
    void reserve(size_t n) { map_.reserve(n); }

private:
    StringMap<int32_t> map_;
    std::vector<const std::string*> reverse_;  // points at map_'s keys, which never move
};

struct BpeOptions {
    std::optional<std::string> unk_token;
    std::optional<std::string> continuing_subword_prefix;
    std::optional<std::string> end_of_word_suffix;
    bool fuse_unk = false;
    bool byte_fallback = false;
    bool ignore_merges = false;
};

class BpeModel final : public Model {
public:
    // Throws engram::Error(Format) naming `source` when a merge names a token the vocabulary lacks.
    BpeModel(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
             BpeOptions options, std::string source);

    std::vector<Token> tokenize(std::string_view word) const override;
    std::optional<int64_t> token_to_id(std::string_view token) const override { return vocab_.find(token); }
    const std::string* id_to_token(int64_t id) const override { return vocab_.token(id); }
    int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.size()); }
    std::string kind() const override { return "bpe"; }

private:
    struct Piece {
        int32_t id;
        uint32_t len;  // bytes of the word this piece covers
    };
    struct MergeTarget {
        int32_t rank;
        int32_t new_id;
    };
    static uint64_t pair_key(int32_t a, int32_t b) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    std::vector<Piece> merge_word(std::string_view word) const;

    Vocab vocab_;
    BpeOptions options_;
    std::string source_;
    std::unordered_map<uint64_t, MergeTarget> merges_;
    std::array<int32_t, 256> byte_ids_{};  // ids of "<0xXX>" for byte fallback, -1 where absent

    // Words repeat a lot in real text; merging is the expensive part. Bounded like HF's cache.
    static constexpr size_t kCacheCapacity = 10000;
    mutable std::mutex cache_mutex_;
    mutable StringMap<std::vector<Piece>> cache_;
};

class WordLevelModel final : public Model {
public:
    WordLevelModel(Vocab vocab, std::string unk_token, std::string source);

    std::vector<Token> tokenize(std::string_view word) const override;
    std::optional<int64_t> token_to_id(std::string_view token) const override { return vocab_.find(token); }
    const std::string* id_to_token(int64_t id) const override { return vocab_.token(id); }
    int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.size()); }
    std::string kind() const override { return "wordlevel"; }

private:
    Vocab vocab_;
    std::string unk_token_;
    std::string source_;
};

}  // namespace engram::tok
