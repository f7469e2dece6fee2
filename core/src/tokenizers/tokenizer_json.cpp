// tokenizer.json (HF tokenizers' serialization) and the classic GPT-2 vocab.json + merges.txt.

#include <climits>

#include "engram/tokenizer.h"
#include "tokenizers/components.h"
#include "tokenizers/models.h"

namespace engram {

namespace tok {
namespace {

Vocab vocab_from_json(const Json& value, const Where& where) {
    as_object(value, where);
    Vocab vocab;
    vocab.reserve(value.size());
    for (const auto& [token, id_value] : value.items()) {
        int64_t id = as_int(id_value, where.field(token));
        if (id < 0 || id > INT32_MAX) where.field(token).fail("token id " + std::to_string(id) + " out of range");
        vocab.insert(token, id);
    }
    vocab.finish(where.source);
    return vocab;
}

// Merges are "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs (newer files).
std::vector<std::pair<std::string, std::string>> merges_from_json(const Json& value, const Where& where) {
    as_array(value, where);
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(value.size());
    for (size_t i = 0; i < value.size(); ++i) {
        const Json& item = value[i];
        if (item.is_string()) {
            const std::string& line = item.get_ref<const std::string&>();
            size_t space = line.find(' ');
            if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
                where.index(i).fail("expected two tokens separated by one space, found \"" + line + "\"");
            merges.emplace_back(line.substr(0, space), line.substr(space + 1));
        } else if (item.is_array() && item.size() == 2) {
            merges.emplace_back(as_string(item[0], where.index(i).index(0)),
                                as_string(item[1], where.index(i).index(1)));
        } else {
            where.index(i).fail("expected \"a b\" or [\"a\", \"b\"]");
        }
    }
    return merges;
}

std::unique_ptr<Model> model_from_json(const Json& value, const Where& where) {
    as_object(value, where);
    std::string type;
    if (auto t = optional_string_field(value, "type", where)) {
        type = *t;
    } else if (find_field(value, "merges")) {
        type = "BPE";  // files from tokenizers < 0.9 omit the type
    } else if (const Json* v = find_field(value, "vocab"); v && v->is_array()) {
        type = "Unigram";
    } else if (find_field(value, "max_input_chars_per_word")) {
        type = "WordPiece";
    } else {
        type = "WordLevel";
    }

    if (type == "BPE") {
        Vocab vocab = vocab_from_json(require_field(value, "vocab", where), where.field("vocab"));
        auto merges = merges_from_json(require_field(value, "merges", where), where.field("merges"));
        BpeOptions options;
        options.unk_token = optional_string_field(value, "unk_token", where);
        options.continuing_subword_prefix = optional_string_field(value, "continuing_subword_prefix", where);
        options.end_of_word_suffix = optional_string_field(value, "end_of_word_suffix", where);
        options.fuse_unk = bool_field_or(value, "fuse_unk", where, false);
        options.byte_fallback = bool_field_or(value, "byte_fallback", where, false);
        options.ignore_merges = bool_field_or(value, "ignore_merges", where, false);
        // dropout only matters for training-time sampling; encoding here is deterministic.
        return std::make_unique<BpeModel>(std::move(vocab), merges, std::move(options), where.source);
    }
    if (type == "WordLevel") {
        Vocab vocab = vocab_from_json(require_field(value, "vocab", where), where.field("vocab"));
        return std::make_unique<WordLevelModel>(std::move(vocab),
                                                string_field_or(value, "unk_token", where, "<unk>"),
                                                where.source);
    }
    where.field("type").fail("model type \"" + type + "\" is not supported (supported: BPE, WordLevel)",
                             ErrorKind::Unsupported);
}

AddedVocabulary added_tokens_from_json(const Json* value, const Model& model, const Where& where) {
    AddedVocabulary added;
    if (!value) return added;
    as_array(*value, where);
    for (size_t i = 0; i < value->size(); ++i) {
        const Json& item = (*value)[i];
        Where w = where.index(i);
        as_object(item, w);
        AddedToken t;
        t.content = string_field(item, "content", w);
        t.special = bool_field_or(item, "special", w, false);
        t.single_word = bool_field_or(item, "single_word", w, false);
        t.lstrip = bool_field_or(item, "lstrip", w, false);
        t.rstrip = bool_field_or(item, "rstrip", w, false);
        t.normalized = bool_field_or(item, "normalized", w, !t.special);
        // Like HF, a token the model already knows keeps the model's id.
        if (auto id = model.token_to_id(t.content)) {
            t.id = *id;
        } else {
            t.id = int_field(item, "id", w);
            if (t.id < 0 || t.id > INT32_MAX) w.field("id").fail("token id " + std::to_string(t.id) + " out of range");
        }
        added.add(std::move(t));
    }
    return added;
}

std::unique_ptr<Tokenizer> tokenizer_from_document(const Json& doc, const std::string& source) {
    Where root{source, ""};
    if (!doc.is_object()) root.fail("expected a JSON object at the top level");
    auto model = model_from_json(require_field(doc, "model", root), root.field("model"));
    auto added = added_tokens_from_json(find_field(doc, "added_tokens"), *model, root.field("added_tokens"));
    static const Json null_json;
    auto component = [&](const char* key) -> const Json& {
        const Json* v = find_field(doc, key);
        return v ? *v : null_json;
    };
    auto normalizer = normalizer_from_json(component("normalizer"), root.field("normalizer"));
    auto pre_tokenizer = pre_tokenizer_from_json(component("pre_tokenizer"), root.field("pre_tokenizer"));
    auto post_processor = post_processor_from_json(component("post_processor"), root.field("post_processor"));
    auto decoder = decoder_from_json(component("decoder"), root.field("decoder"));
    return std::make_unique<PipelineTokenizer>(std::move(model), std::move(added), std::move(normalizer),
                                               std::move(pre_tokenizer), std::move(post_processor),
                                               std::move(decoder));
}

}  // namespace
}  // namespace tok

std::unique_ptr<Tokenizer> tokenizer_from_json(std::string_view json_text, const std::string& source) {
    tok::Json doc;
    try {
        doc = tok::Json::parse(json_text);
    } catch (const tok::Json::exception& e) {
        throw Error(ErrorKind::Format, source + ": invalid JSON: " + e.what());
    }
    try {
        return tok::tokenizer_from_document(doc, source);
    } catch (const tok::Json::exception& e) {
        // Our accessors check types; this catches whatever slipped past them.
        throw Error(ErrorKind::Format, source + ": " + e.what());
    }
}

std::unique_ptr<Tokenizer> tokenizer_from_vocab_merges(const std::filesystem::path& vocab_json,
                                                       const std::filesystem::path& merges_txt) {
    const std::string vocab_source = vocab_json.string();
    const std::string merges_source = merges_txt.string();
    tok::Json doc;
    try {
        doc = tok::Json::parse(tok::read_file(vocab_json));
    } catch (const tok::Json::exception& e) {
        throw Error(ErrorKind::Format, vocab_source + ": invalid JSON: " + e.what());
    }
    tok::Vocab vocab = tok::vocab_from_json(doc, tok::Where{vocab_source, ""});
    doc = tok::Json();

    const std::string text = tok::read_file(merges_txt);
    std::vector<std::pair<std::string, std::string>> merges;
    size_t line_no = 0;
    for (size_t pos = 0; pos < text.size();) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        std::string_view line(text.data() + pos, end - pos);
        pos = end + 1;
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty() || line.substr(0, 8) == "#version") continue;
        size_t space = line.find(' ');
        if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos) {
            throw Error(ErrorKind::Format, merges_source + ":" + std::to_string(line_no) +
                                               ": expected two tokens separated by one space");
        }
        merges.emplace_back(std::string(line.substr(0, space)), std::string(line.substr(space + 1)));
    }
    auto model = std::make_unique<tok::BpeModel>(std::move(vocab), merges, tok::BpeOptions{}, merges_source);

    // transformers' GPT2Tokenizer: <|endoftext|> is the unk, bos and eos token, matched literally.
    tok::AddedVocabulary added;
    if (auto id = model->token_to_id("<|endoftext|>")) {
        tok::AddedToken t;
        t.id = *id;
        t.content = "<|endoftext|>";
        t.special = true;
        t.normalized = false;
        added.add(std::move(t));
    }
    return std::make_unique<tok::PipelineTokenizer>(std::move(model), std::move(added), nullptr,
                                                    tok::make_byte_level_pre_tokenizer(false, true),
                                                    nullptr, tok::make_byte_level_decoder());
}

}  // namespace engram
