// The HF tokenizers pipeline: added tokens -> normalizer -> pre-tokenizer -> model ->
// post-processor, and decoder on the way back. tokenizer.json describes one of these; the classic
// GPT-2 vocab.json + merges.txt pair is assembled into one too.
//
// Components are small interfaces because tokenizer.json composes them freely (Sequence of
// Split + ByteLevel, Sequence of decoders...).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engram/tokenizer.h"
#include "tokenizers/normalized_string.h"

namespace engram::tok {

// Transparent hashing so that maps keyed by std::string can be probed with a string_view.
struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

class Normalizer {
public:
    virtual ~Normalizer() = default;
    virtual void normalize(NormalizedString& s) const = 0;
};

class PreTokenizer {
public:
    virtual ~PreTokenizer() = default;
    virtual void pre_tokenize(PreTokenizedString& s) const = 0;
    virtual bool is_byte_level() const { return false; }
};

class Model {
public:
    virtual ~Model() = default;
    // Tokens of one pre-tokenized word; offsets are bytes of `word`.
    virtual std::vector<Token> tokenize(std::string_view word) const = 0;
    virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;
    virtual const std::string* id_to_token(int64_t id) const = 0;
    virtual int64_t vocab_size() const = 0;
    virtual std::string kind() const = 0;  // "bpe" or "wordlevel"
};

class PostProcessor {
public:
    virtual ~PostProcessor() = default;
    virtual void process(Encoding& encoding, bool add_special_tokens) const = 0;
    // The special token that a template puts first / last, if any (a hint for bos_id / eos_id).
    virtual std::optional<int64_t> leading_special() const { return std::nullopt; }
    virtual std::optional<int64_t> trailing_special() const { return std::nullopt; }
};

class Decoder {
public:
    virtual ~Decoder() = default;
    virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
    virtual bool is_byte_level() const { return false; }
};

struct AddedToken {
    int64_t id = 0;
    std::string content;
    bool single_word = false;
    bool lstrip = false;
    bool rstrip = false;
    bool normalized = true;
    bool special = false;
};

// The tokens of tokenizer.json's "added_tokens": found in the raw text (or, for normalized ones, in
// the normalized text) before pre-tokenization, so that "<|endoftext|>" is one token and never
// split by the BPE.
class AddedVocabulary {
public:
    void add(AddedToken token);
    // Builds the matchers; normalized tokens are matched in their normalized form.
    void finalize(const Normalizer* normalizer);

    PreTokenizedString extract_and_normalize(const Normalizer* normalizer, std::string_view text) const;

    std::optional<int64_t> token_to_id(std::string_view content) const;
    const std::string* id_to_token(int64_t id) const;
    bool is_special(std::string_view content) const { return special_.find(content) != special_.end(); }
    std::optional<int64_t> max_id() const;
    const std::vector<AddedToken>& tokens() const { return tokens_; }

private:
    // Leftmost-longest literal matcher (the aho-corasick match kind HF uses). Patterns are bucketed
    // by first byte and sorted longest first; tokenizers carry at most a few hundred added tokens.
    struct Matcher {
        std::vector<std::vector<std::pair<std::string, size_t>>> by_first_byte;  // (pattern, token index)
        bool empty = true;
    };
    void build_matcher(Matcher& m, bool normalized_tokens, const Normalizer* normalizer);
    std::vector<Split> split_with_matcher(NormalizedString&& s, const Matcher& m) const;

    std::vector<AddedToken> tokens_;
    StringMap<size_t> by_content_;
    std::unordered_map<int64_t, size_t> by_id_;
    std::unordered_set<std::string, StringHash, std::equal_to<>> special_;
    Matcher raw_;
    Matcher normalized_;
};

class PipelineTokenizer final : public Tokenizer {
public:
    PipelineTokenizer(std::unique_ptr<Model> model, AddedVocabulary added,
                      std::unique_ptr<Normalizer> normalizer,
                      std::unique_ptr<PreTokenizer> pre_tokenizer,
                      std::unique_ptr<PostProcessor> post_processor,
                      std::unique_ptr<Decoder> decoder);

    Encoding encode(std::string_view text, bool add_special_tokens = false) const override;
    std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const override;
    int64_t vocab_size() const override;
    std::string id_to_token(int64_t id) const override;
    std::optional<int64_t> token_to_id(std::string_view token) const override;
    std::optional<int64_t> bos_id() const override { return bos_id_; }
    std::optional<int64_t> eos_id() const override { return eos_id_; }
    std::string kind() const override;

    // tokenizer_config.json knows the BOS/EOS better than our guesses.
    void set_bos_eos(std::optional<int64_t> bos, std::optional<int64_t> eos);
    // What transformers' Llama/Gemma fast tokenizers do with add_bos_token / add_eos_token: rebuild
    // the template around the sequence. Only applied when the post-processor is a plain template
    // (or absent), so richer processors are left alone.
    void set_bos_eos_template(bool add_bos, bool add_eos);

private:
    void guess_bos_eos();

    std::unique_ptr<Model> model_;
    AddedVocabulary added_;
    std::unique_ptr<Normalizer> normalizer_;
    std::unique_ptr<PreTokenizer> pre_tokenizer_;
    std::unique_ptr<PostProcessor> post_processor_;
    std::unique_ptr<Decoder> decoder_;
    std::optional<int64_t> bos_id_;
    std::optional<int64_t> eos_id_;
};

// A TemplateProcessing that adds `before` and `after` around the single sequence.
std::unique_ptr<PostProcessor> make_simple_template(std::vector<std::pair<std::string, int64_t>> before,
                                                    std::vector<std::pair<std::string, int64_t>> after);
bool is_template_processor(const PostProcessor* p);

// Components the loaders assemble directly.
std::unique_ptr<PreTokenizer> make_byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex);
std::unique_ptr<Decoder> make_byte_level_decoder();

// Throws engram::Error(Argument) when `text` is not valid UTF-8.
void require_utf8(std::string_view text);

}  // namespace engram::tok
