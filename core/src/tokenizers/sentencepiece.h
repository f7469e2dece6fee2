// SentencePiece models (tokenizer.model), encoded by libsentencepiece itself so that ids match the
// reference library exactly, including its dummy-prefix and whitespace rules.
#pragma once

#include <filesystem>
#include <memory>

#include "engram/tokenizer.h"
#include "tokenizers/pipeline.h"
#include "tokenizers/spm_library.h"


namespace engram::tok {

class SentencePieceTokenizer final : public Tokenizer {
public:
    // Throws engram::Error(Io) when the file cannot be read, (Format) when it is not a model.
    explicit SentencePieceTokenizer(const std::filesystem::path& model_file);
    ~SentencePieceTokenizer() override;

    Encoding encode(std::string_view text, bool add_special_tokens = false) const override;
    std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const override;
    int64_t vocab_size() const override;
    std::string id_to_token(int64_t id) const override;
    std::optional<int64_t> token_to_id(std::string_view token) const override;
    std::optional<int64_t> bos_id() const override { return bos_id_; }
    std::optional<int64_t> eos_id() const override { return eos_id_; }
    std::string kind() const override { return "sentencepiece"; }

    // From tokenizer_config.json. Llama's default is BOS only.
    void set_bos_eos(std::optional<int64_t> bos, std::optional<int64_t> eos);
    void set_add_bos_eos(bool add_bos, bool add_eos);

private:
    std::string source_;
    std::unique_ptr<SpmModel> sp_;
    // Control and unknown pieces (<s>, </s>, <unk>): SentencePiece would spell "<s>" in the text out
    // piece by piece, but transformers treats them as special tokens, and so do we.
    AddedVocabulary specials_;
    std::optional<int64_t> bos_id_;
    std::optional<int64_t> eos_id_;
    bool add_bos_ = true;
    bool add_eos_ = false;
};

}  // namespace engram::tok
