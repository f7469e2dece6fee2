// Tokenizers: what the models read. Torch-free, so the GUI and the fuzzers can use it cheaply.
//
// Supported sources, chosen by load_tokenizer() from what a folder holds (first match wins):
//   tokenizer.json                  HF tokenizers: BPE (byte-level, or Metaspace + byte fallback),
//                                   WordLevel; Split/ByteLevel/Metaspace/Whitespace pre-tokenizers
//   vocab.json + merges.txt         the classic GPT-2 files (byte-level BPE)
//   tokenizer.model                 SentencePiece, through libsentencepiece
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram {

struct Encoding {
    std::vector<int64_t> ids;
    std::vector<std::string> tokens;  // the vocabulary strings of ids, as HF reports them
    // Byte offsets [begin, end) into the input text for each token (what the subject locator
    // uses to map characters to tokens). Special tokens added by add_special_tokens get {0, 0}.
    std::vector<std::pair<size_t, size_t>> offsets;
};

class Tokenizer {
public:
    virtual ~Tokenizer() = default;

    // Added/special tokens present in the text are always recognised. add_special_tokens adds the
    // BOS/EOS that the tokenizer's post-processor (or SentencePiece's defaults) would add.
    // Throws engram::Error(Argument) when `text` is not valid UTF-8.
    virtual Encoding encode(std::string_view text, bool add_special_tokens = false) const = 0;
    virtual std::string decode(const std::vector<int64_t>& ids,
                               bool skip_special_tokens = false) const = 0;

    virtual int64_t vocab_size() const = 0;
    virtual std::string id_to_token(int64_t id) const = 0;  // "" when out of range
    virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;

    virtual std::optional<int64_t> bos_id() const = 0;
    virtual std::optional<int64_t> eos_id() const = 0;
    virtual std::string kind() const = 0;  // "bpe-bytelevel", "bpe-metaspace", "wordlevel", "sentencepiece"
};

// Loads from a folder (see the order above). Throws engram::Error naming the file at fault.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir);

// Parses the text of a tokenizer.json. `source` names it in errors. Used by load_tokenizer and by
// the fuzz target.
std::unique_ptr<Tokenizer> tokenizer_from_json(std::string_view json_text, const std::string& source);

// The classic GPT-2 pair.
std::unique_ptr<Tokenizer> tokenizer_from_vocab_merges(const std::filesystem::path& vocab_json,
                                                       const std::filesystem::path& merges_txt);

// A SentencePiece model file.
std::unique_ptr<Tokenizer> tokenizer_from_sentencepiece(const std::filesystem::path& model_file);

}  // namespace engram
