// Exports: the edited model as a HF checkpoint folder.
#include <ATen/ATen.h>

#include <fstream>

#include "engram/error.h"
#include "engram/store.h"

namespace engram {

namespace fs = std::filesystem;

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
