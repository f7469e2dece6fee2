// Exports: base64 for history JSON, and the edited model as a HF checkpoint folder.
#include <ATen/ATen.h>

#include <fstream>

#include "engram/error.h"
#include "engram/store.h"
#include "store/base64.h"

namespace engram {

namespace fs = std::filesystem;

namespace store {

namespace {
constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64_encode(const uint8_t* data, size_t size) {
    std::string out;
    out.reserve((size + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 3 <= size; i += 3) {
        const uint32_t n = (uint32_t(data[i]) << 16) | (uint32_t(data[i + 1]) << 8) | data[i + 2];
        for (int s = 18; s >= 0; s -= 6) out.push_back(kAlphabet[(n >> s) & 63]);
    }
    if (size - i == 1) {
        const uint32_t n = uint32_t(data[i]) << 16;
        out += {kAlphabet[(n >> 18) & 63], kAlphabet[(n >> 12) & 63], '=', '='};
    } else if (size - i == 2) {
        const uint32_t n = (uint32_t(data[i]) << 16) | (uint32_t(data[i + 1]) << 8);
        out += {kAlphabet[(n >> 18) & 63], kAlphabet[(n >> 12) & 63], kAlphabet[(n >> 6) & 63], '='};
    }
    return out;
}

std::vector<uint8_t> base64_decode(std::string_view text, const std::string& what) {
    if (text.size() % 4 != 0) throw Error(ErrorKind::Format, what + ": base64 length is not a multiple of 4");
    int8_t value[256];
    std::fill(std::begin(value), std::end(value), int8_t(-1));
    for (int i = 0; i < 64; ++i) value[static_cast<uint8_t>(kAlphabet[i])] = static_cast<int8_t>(i);
    std::vector<uint8_t> out;
    out.reserve(text.size() / 4 * 3);
    for (size_t i = 0; i < text.size(); i += 4) {
        const bool last = i + 4 == text.size();
        const int pad = last ? (text[i + 3] == '=') + (text[i + 2] == '=') : 0;
        uint32_t n = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = text[i + k];
            int v = 0;
            if (k >= 4 - pad) {
                if (c != '=') throw Error(ErrorKind::Format, what + ": bad base64 padding");
            } else {
                v = value[static_cast<uint8_t>(c)];
                if (v < 0) throw Error(ErrorKind::Format, what + ": character " + std::to_string(int(static_cast<uint8_t>(c))) + " is not base64");
            }
            n = (n << 6) | static_cast<uint32_t>(v);
        }
        out.push_back(static_cast<uint8_t>(n >> 16));
        if (pad < 2) out.push_back(static_cast<uint8_t>(n >> 8));
        if (pad < 1) out.push_back(static_cast<uint8_t>(n));
    }
    return out;
}

}  // namespace store

const std::vector<std::string>& tokenizer_file_names() {
    static const std::vector<std::string> names = {"tokenizer.json",          "vocab.json",         "merges.txt",
                                                   "tokenizer.model",         "tokenizer_config.json",
                                                   "special_tokens_map.json", "added_tokens.json",  "preprocessor_config.json",
                                                   "generation_config.json"};
    return names;
}

void export_model(const Model& model, const fs::path& out_dir, const fs::path& source_dir, DType storage, const nlohmann::json& provenance) {
    if (!model.adapters().empty()) {
        std::string names;
        for (const auto& a : model.adapters().list()) names += (names.empty() ? "" : ", ") + a.name;
        throw Error(ErrorKind::Argument, "the model has adapter edits installed (" + names +
                                             "), which a Hugging Face checkpoint cannot hold; nothing was written. Revert them "
                                             "(engram-cli revert/undo) to export the weights, or keep the edits in the project "
                                             "(export-history)");
    }
    std::error_code ec;
    if (!source_dir.empty() && fs::exists(out_dir, ec) && fs::equivalent(out_dir, source_dir, ec))
        throw Error(ErrorKind::Argument, out_dir.string() + ": refusing to export into the base model's own folder (the project needs it unchanged)");
    save_checkpoint(model, out_dir, storage);
    for (const std::string& name : tokenizer_file_names()) {
        const fs::path from = source_dir / name;
        if (source_dir.empty() || !fs::exists(from, ec)) continue;
        fs::copy_file(from, out_dir / name, fs::copy_options::overwrite_existing, ec);
        if (ec) throw Error(ErrorKind::Io, (out_dir / name).string() + ": cannot copy from " + from.string() + " (" + ec.message() + ")");
    }
    const fs::path prov = out_dir / "engram_provenance.json";
    std::ofstream out(prov);
    out << provenance.dump(2) << "\n";
    if (!out) throw Error(ErrorKind::Io, prov.string() + ": cannot write");
}

}  // namespace engram
