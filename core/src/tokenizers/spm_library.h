// SentencePiece through the engram_spm module (dlopen'ed; see spm_shim.h for why).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace engram::tok {

struct SpmPiece {
    int id;
    std::string piece;
    size_t begin, end;  // byte span in the encoded text
};

class SpmModel {
public:
    // Throws engram::Error(Format) when the file is not a SentencePiece model, (Io) when the
    // engram_spm module cannot be found or loaded.
    explicit SpmModel(const std::string& path);
    ~SpmModel();
    SpmModel(const SpmModel&) = delete;
    SpmModel& operator=(const SpmModel&) = delete;

    int piece_size() const;
    std::string id_to_piece(int id) const;
    int piece_to_id(std::string_view piece) const;
    bool is_control(int id) const;
    bool is_unknown(int id) const;
    bool is_byte(int id) const;
    int bos_id() const;
    int eos_id() const;
    std::vector<SpmPiece> encode(std::string_view text) const;
    std::string decode(const std::vector<int>& ids) const;

    struct Api;  // the module's entry points, resolved once per process

private:
    const Api* api_;
    void* model_;
    std::string path_;
};

}  // namespace engram::tok
