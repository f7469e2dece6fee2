#include "engram/error.h"
#include "tokenizers/pipeline.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

void require_utf8(std::string_view text) {
    if (auto bad = utf8_first_invalid(text)) {
        throw Error(ErrorKind::Argument,
                    "text to tokenize is not valid UTF-8 (byte " + std::to_string(*bad) + ")");
    }
}

PipelineTokenizer::PipelineTokenizer(std::unique_ptr<Model> model, AddedVocabulary added,
                                     std::unique_ptr<Normalizer> normalizer,
                                     std::unique_ptr<PreTokenizer> pre_tokenizer,
                                     std::unique_ptr<PostProcessor> post_processor,
                                     std::unique_ptr<Decoder> decoder)
    : model_(std::move(model)),
      added_(std::move(added)),
      normalizer_(std::move(normalizer)),
      pre_tokenizer_(std::move(pre_tokenizer)),
      post_processor_(std::move(post_processor)),
      decoder_(std::move(decoder)) {
    added_.finalize(normalizer_.get());
    guess_bos_eos();
}

Encoding PipelineTokenizer::encode(std::string_view text, bool add_special_tokens) const {
    require_utf8(text);
    PreTokenizedString pre = added_.extract_and_normalize(normalizer_.get(), text);
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pre);

    Encoding enc;
    auto emit = [&](const Split& split, const Token& t) {
        enc.ids.push_back(t.id);
        enc.tokens.push_back(t.value);
        enc.offsets.push_back(split.normalized.original_span(t.begin, t.end));
    };
    for (const Split& split : pre.splits) {
        if (split.tokens) {
            for (const Token& t : *split.tokens) emit(split, t);
        } else {
            for (const Token& t : model_->tokenize(split.normalized.get())) emit(split, t);
        }
    }
    if (post_processor_) post_processor_->process(enc, add_special_tokens);
    return enc;
}

std::string PipelineTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int64_t id : ids) {
        const std::string* token = added_.id_to_token(id);
        if (!token) token = model_->id_to_token(id);
        if (!token) continue;  // unknown ids are dropped, as HF does
        if (skip_special_tokens && added_.is_special(*token)) continue;
        tokens.push_back(*token);
    }
    std::string out;
    if (decoder_) {
        for (const std::string& piece : decoder_->decode_chain(std::move(tokens))) out += piece;
    } else {
        // Without a decoder HF joins the vocabulary strings with spaces (WordLevel's case).
        for (size_t i = 0; i < tokens.size(); ++i) {
            if (i) out += ' ';
            out += tokens[i];
        }
    }
    return out;
}

int64_t PipelineTokenizer::vocab_size() const {
    int64_t n = model_->vocab_size();
    if (auto max_added = added_.max_id()) n = std::max(n, *max_added + 1);
    return n;
}

std::string PipelineTokenizer::id_to_token(int64_t id) const {
    if (const std::string* t = added_.id_to_token(id)) return *t;
    if (const std::string* t = model_->id_to_token(id)) return *t;
    return {};
}

std::optional<int64_t> PipelineTokenizer::token_to_id(std::string_view token) const {
    if (auto id = added_.token_to_id(token)) return id;
    return model_->token_to_id(token);
}

std::string PipelineTokenizer::kind() const {
    if (model_->kind() == "wordlevel") return "wordlevel";
    bool byte_level = (pre_tokenizer_ && pre_tokenizer_->is_byte_level()) ||
                      (decoder_ && decoder_->is_byte_level());
    return byte_level ? "bpe-bytelevel" : "bpe-metaspace";
}

void PipelineTokenizer::guess_bos_eos() {
    // Without tokenizer_config.json the template is the best witness; after it, the conventional
    // names. GPT-2 uses <|endoftext|> for both.
    if (post_processor_) {
        bos_id_ = post_processor_->leading_special();
        eos_id_ = post_processor_->trailing_special();
    }
    auto first_present = [&](std::initializer_list<const char*> names) -> std::optional<int64_t> {
        for (const char* name : names)
            if (auto id = token_to_id(name)) return id;
        return std::nullopt;
    };
    if (!bos_id_) bos_id_ = first_present({"<|begin_of_text|>", "<s>", "<bos>", "[CLS]", "<|startoftext|>", "<|endoftext|>"});
    if (!eos_id_) eos_id_ = first_present({"<|end_of_text|>", "</s>", "<eos>", "[SEP]", "<|endoftext|>"});
}

void PipelineTokenizer::set_bos_eos(std::optional<int64_t> bos, std::optional<int64_t> eos) {
    bos_id_ = bos;
    eos_id_ = eos;
}

void PipelineTokenizer::set_bos_eos_template(bool add_bos, bool add_eos) {
    if (post_processor_ && !is_template_processor(post_processor_.get())) return;
    std::vector<std::pair<std::string, int64_t>> before, after;
    if (add_bos && bos_id_) before.emplace_back(id_to_token(*bos_id_), *bos_id_);
    if (add_eos && eos_id_) after.emplace_back(id_to_token(*eos_id_), *eos_id_);
    post_processor_ = make_simple_template(std::move(before), std::move(after));
}

}  // namespace engram::tok
