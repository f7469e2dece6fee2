// load_tokenizer: pick the tokenizer a model folder ships, then let tokenizer_config.json say which
// tokens are BOS/EOS and whether add_special_tokens adds them.

#include "engram/tokenizer.h"

#include "engram/error.h"
#include "tokenizers/json_util.h"
#include "tokenizers/pipeline.h"
#include "tokenizers/sentencepiece.h"

namespace fs = std::filesystem;

namespace engram {

namespace {

bool is_file(const fs::path& p) {
    std::error_code ec;
    return fs::is_regular_file(p, ec);
}

// bos_token / eos_token are a string, an AddedToken object {"content": ...}, or null.
struct ConfigToken {
    bool present = false;           // the key exists (null included)
    std::optional<std::string> name;
};

ConfigToken config_token(const tok::Json& config, const char* key, const tok::Where& where) {
    ConfigToken t;
    if (!config.contains(key)) return t;
    t.present = true;
    const tok::Json& v = config.at(key);
    if (v.is_string()) t.name = v.get<std::string>();
    else if (v.is_object()) t.name = tok::string_field(v, "content", where.field(key));
    else if (!v.is_null()) where.field(key).fail("expected a string, an object or null");
    return t;
}

std::optional<bool> config_flag(const tok::Json& config, const char* key, const tok::Where& where) {
    if (!tok::find_field(config, key)) return std::nullopt;
    return tok::bool_field_or(config, key, where, false);
}

void apply_tokenizer_config(Tokenizer& tokenizer, const fs::path& path) {
    const std::string source = path.string();
    tok::Json config;
    try {
        config = tok::Json::parse(tok::read_file(path));
    } catch (const tok::Json::exception& e) {
        throw Error(ErrorKind::Format, source + ": invalid JSON: " + e.what());
    }
    tok::Where where{source, ""};
    if (!config.is_object()) where.fail("expected a JSON object at the top level");

    auto resolve = [&](const ConfigToken& t, std::optional<int64_t> current) -> std::optional<int64_t> {
        if (!t.present) return current;
        if (!t.name) return std::nullopt;  // explicitly null: the model has no such token
        // A name the vocabulary lacks is a stale config; keep what the tokenizer itself says.
        if (auto id = tokenizer.token_to_id(*t.name)) return id;
        return current;
    };
    std::optional<int64_t> bos = resolve(config_token(config, "bos_token", where), tokenizer.bos_id());
    std::optional<int64_t> eos = resolve(config_token(config, "eos_token", where), tokenizer.eos_id());
    std::optional<bool> add_bos = config_flag(config, "add_bos_token", where);
    std::optional<bool> add_eos = config_flag(config, "add_eos_token", where);

    if (auto* pipeline = dynamic_cast<tok::PipelineTokenizer*>(&tokenizer)) {
        pipeline->set_bos_eos(bos, eos);
        if (add_bos || add_eos) pipeline->set_bos_eos_template(add_bos.value_or(false), add_eos.value_or(false));
    } else if (auto* sp = dynamic_cast<tok::SentencePieceTokenizer*>(&tokenizer)) {
        sp->set_bos_eos(bos, eos);
        sp->set_add_bos_eos(add_bos.value_or(true), add_eos.value_or(false));
    }
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_from_sentencepiece(const fs::path& model_file) {
    return std::make_unique<tok::SentencePieceTokenizer>(model_file);
}

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) throw Error(ErrorKind::Io, "cannot open " + dir.string() + ": not a directory");

    std::unique_ptr<Tokenizer> tokenizer;
    const fs::path json = dir / "tokenizer.json";
    const fs::path vocab = dir / "vocab.json";
    const fs::path merges = dir / "merges.txt";
    const fs::path sp_model = dir / "tokenizer.model";
    if (is_file(json)) {
        tokenizer = tokenizer_from_json(tok::read_file(json), json.string());
    } else if (is_file(vocab) && is_file(merges)) {
        tokenizer = tokenizer_from_vocab_merges(vocab, merges);
    } else if (is_file(sp_model)) {
        tokenizer = tokenizer_from_sentencepiece(sp_model);
    } else {
        throw Error(ErrorKind::Io, "no tokenizer in " + dir.string() +
                                       " (looked for tokenizer.json, vocab.json + merges.txt, tokenizer.model)");
    }

    const fs::path config = dir / "tokenizer_config.json";
    if (is_file(config)) apply_tokenizer_config(*tokenizer, config);
    return tokenizer;
}

}  // namespace engram
