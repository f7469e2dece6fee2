#include "tokenizers/sentencepiece.h"


#include <system_error>

#include "engram/error.h"

namespace engram::tok {

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_file)
    : source_(model_file.string()), sp_() {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(model_file, ec))
        throw Error(ErrorKind::Io, "cannot open " + source_ + ": no such file");
    sp_ = std::make_unique<SpmModel>(source_);
    const int n = sp_->piece_size();
    for (int id = 0; id < n; ++id) {
        if (!sp_->is_control(id) && !sp_->is_unknown(id)) continue;
        AddedToken t;
        t.id = id;
        t.content = sp_->id_to_piece(id);
        t.special = true;
        t.normalized = false;
        specials_.add(std::move(t));
    }
    specials_.finalize(nullptr);
    if (sp_->bos_id() >= 0 && sp_->bos_id() < n) bos_id_ = sp_->bos_id();
    if (sp_->eos_id() >= 0 && sp_->eos_id() < n) eos_id_ = sp_->eos_id();
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

Encoding SentencePieceTokenizer::encode(std::string_view text, bool add_special_tokens) const {
    require_utf8(text);
    Encoding enc;
    PreTokenizedString pre = specials_.extract_and_normalize(nullptr, text);
    for (const Split& split : pre.splits) {
        if (split.tokens) {
            for (const Token& t : *split.tokens) {
                enc.ids.push_back(t.id);
                enc.tokens.push_back(t.value);
                enc.offsets.push_back(split.normalized.original_span(t.begin, t.end));
            }
            continue;
        }
        const size_t base = split.normalized.original_begin();
        const size_t first = enc.ids.size();
        for (auto& piece : sp_->encode(split.normalized.get())) {
            enc.ids.push_back(piece.id);
            enc.tokens.push_back(std::move(piece.piece));
            enc.offsets.push_back({base + piece.begin, base + piece.end});
        }
        // SentencePiece gives a byte-fallback character's span to its last byte piece and empty
        // spans to the others; give every piece of the character its span.
        for (size_t k = enc.ids.size(); k-- > first + 1;) {
            auto& prev = enc.offsets[k - 1];
            if (prev.first == prev.second && sp_->is_byte(static_cast<int>(enc.ids[k - 1])) &&
                sp_->is_byte(static_cast<int>(enc.ids[k])))
                prev = enc.offsets[k];
        }
    }
    if (add_special_tokens) {
        if (add_bos_ && bos_id_) {
            enc.ids.insert(enc.ids.begin(), *bos_id_);
            enc.tokens.insert(enc.tokens.begin(), id_to_token(*bos_id_));
            enc.offsets.insert(enc.offsets.begin(), {0, 0});
        }
        if (add_eos_ && eos_id_) {
            enc.ids.push_back(*eos_id_);
            enc.tokens.push_back(id_to_token(*eos_id_));
            enc.offsets.push_back({0, 0});
        }
    }
    return enc;
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
    const int64_t n = sp_->piece_size();
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
        if (run.empty()) return;
        out += sp_->decode(run);
        run.clear();
    };
    for (int64_t id : ids) {
        if (id < 0 || id >= n) continue;  // unknown ids are dropped, as HF does
        const std::string piece = sp_->id_to_piece(static_cast<int>(id));
        if (specials_.is_special(piece)) {
            if (skip_special_tokens) continue;
            flush();
            out += piece;
            continue;
        }
        run.push_back(static_cast<int>(id));
    }
    flush();
    return out;
}

int64_t SentencePieceTokenizer::vocab_size() const { return sp_->piece_size(); }

std::string SentencePieceTokenizer::id_to_token(int64_t id) const {
    if (id < 0 || id >= sp_->piece_size()) return {};
    return sp_->id_to_piece(static_cast<int>(id));
}

std::optional<int64_t> SentencePieceTokenizer::token_to_id(std::string_view token) const {
    int id = sp_->piece_to_id(token);
    // PieceToId answers unk_id for pieces it does not know.
    if (id < 0 || id >= sp_->piece_size() || sp_->id_to_piece(id) != token) return std::nullopt;
    return id;
}

void SentencePieceTokenizer::set_bos_eos(std::optional<int64_t> bos, std::optional<int64_t> eos) {
    bos_id_ = bos;
    eos_id_ = eos;
}

void SentencePieceTokenizer::set_add_bos_eos(bool add_bos, bool add_eos) {
    add_bos_ = add_bos;
    add_eos_ = add_eos;
}

}  // namespace engram::tok
