// The engram_spm module: libsentencepiece behind a C interface (see spm_shim.h for why).
#include "tokenizers/spm_shim.h"

#include <sentencepiece_processor.h>

#include <cstring>
#include <exception>
#include <string>
#include <vector>

struct espm_model {
    sentencepiece::SentencePieceProcessor sp;
};

namespace {
void set_err(char* err, size_t len, const std::string& msg) {
    if (!err || len == 0) return;
    std::strncpy(err, msg.c_str(), len - 1);
    err[len - 1] = '\0';
}
}  // namespace

extern "C" {

__attribute__((visibility("default"))) espm_model* espm_load(const char* path, char* err, size_t err_len) {
    try {
        auto* m = new espm_model();
        auto status = m->sp.Load(path);
        if (!status.ok()) {
            set_err(err, err_len, status.ToString());
            delete m;
            return nullptr;
        }
        return m;
    } catch (const std::exception& e) {
        set_err(err, err_len, e.what());
        return nullptr;
    }
}

__attribute__((visibility("default"))) void espm_free(espm_model* model) { delete model; }

__attribute__((visibility("default"))) int espm_piece_size(const espm_model* m) { return m->sp.GetPieceSize(); }

__attribute__((visibility("default"))) const char* espm_id_to_piece(const espm_model* m, int id, size_t* len) {
    const std::string& piece = m->sp.IdToPiece(id);
    *len = piece.size();
    return piece.data();
}

__attribute__((visibility("default"))) int espm_piece_to_id(const espm_model* m, const char* piece, size_t len) {
    return m->sp.PieceToId(std::string_view(piece, len));
}

__attribute__((visibility("default"))) int espm_piece_flags(const espm_model* m, int id) {
    return (m->sp.IsControl(id) ? ESPM_CONTROL : 0) | (m->sp.IsUnknown(id) ? ESPM_UNKNOWN : 0) | (m->sp.IsByte(id) ? ESPM_BYTE : 0);
}

__attribute__((visibility("default"))) int espm_bos_id(const espm_model* m) { return m->sp.bos_id(); }
__attribute__((visibility("default"))) int espm_eos_id(const espm_model* m) { return m->sp.eos_id(); }

__attribute__((visibility("default"))) int espm_encode(const espm_model* m, const char* text, size_t len, espm_piece_fn fn, void* user,
                                                       char* err, size_t err_len) {
    try {
        sentencepiece::ImmutableSentencePieceText spt;
        auto status = m->sp.Encode(std::string_view(text, len), spt.mutable_proto());
        if (!status.ok()) {
            set_err(err, err_len, status.ToString());
            return 1;
        }
        for (const auto& p : spt.pieces()) fn(user, static_cast<int>(p.id()), p.piece().data(), p.piece().size(), p.begin(), p.end());
        return 0;
    } catch (const std::exception& e) {
        set_err(err, err_len, e.what());
        return 1;
    }
}

__attribute__((visibility("default"))) int espm_decode(const espm_model* m, const int* ids, size_t n, espm_text_fn fn, void* user,
                                                       char* err, size_t err_len) {
    try {
        std::string text;
        auto status = m->sp.Decode(std::vector<int>(ids, ids + n), &text);
        if (!status.ok()) {
            set_err(err, err_len, status.ToString());
            return 1;
        }
        fn(user, text.data(), text.size());
        return 0;
    } catch (const std::exception& e) {
        set_err(err, err_len, e.what());
        return 1;
    }
}
}
