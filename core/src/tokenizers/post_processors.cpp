// Post-processors: what add_special_tokens adds (BOS/EOS, [CLS]/[SEP]) and, for the byte-level
// family, trimming the offsets of leading spaces.

#include "tokenizers/components.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

namespace {

struct SpecialPiece {
    std::vector<int64_t> ids;
    std::vector<std::string> tokens;
};

void append_special(Encoding& out, const SpecialPiece& piece) {
    for (size_t i = 0; i < piece.ids.size(); ++i) {
        out.ids.push_back(piece.ids[i]);
        out.tokens.push_back(piece.tokens[i]);
        out.offsets.push_back({0, 0});
    }
}

void append_encoding(Encoding& out, const Encoding& in) {
    out.ids.insert(out.ids.end(), in.ids.begin(), in.ids.end());
    out.tokens.insert(out.tokens.end(), in.tokens.begin(), in.tokens.end());
    out.offsets.insert(out.offsets.end(), in.offsets.begin(), in.offsets.end());
}

// HF's byte-level process_offsets: offsets stop covering the spaces a token starts or ends with.
void trim_offsets(Encoding& enc, bool add_prefix_space) {
    static const char32_t space_char = utf8_decode(byte_to_unicode()[' '], 0);
    for (size_t i = 0; i < enc.tokens.size(); ++i) {
        const std::string& token = enc.tokens[i];
        auto& [begin, end] = enc.offsets[i];
        std::vector<char32_t> chars;
        for (size_t k = 0; k < token.size(); k += utf8_len(static_cast<unsigned char>(token[k])))
            chars.push_back(utf8_decode(token, k));
        auto is_space = [](char32_t c) { return c == space_char || is_unicode_whitespace(c); };
        size_t leading = 0;
        while (leading < chars.size() && is_space(chars[leading])) ++leading;
        size_t trailing = 0;
        while (trailing < chars.size() && is_space(chars[chars.size() - 1 - trailing])) ++trailing;
        if (leading > 0) {
            bool is_first = i == 0 || begin == 0;
            // The single space add_prefix_space put in front of the first word was never in the text.
            if (is_first && add_prefix_space && leading == 1) leading = 0;
            begin = std::min(begin + leading, end);
        }
        if (trailing > 0 && end >= trailing) end = std::max(end - trailing, begin);
    }
}

class TemplateProcessor final : public PostProcessor {
public:
    struct Piece {
        bool is_sequence;
        std::string special_id;  // key into specials_ when !is_sequence
    };
    TemplateProcessor(std::vector<Piece> single, std::unordered_map<std::string, SpecialPiece> specials)
        : single_(std::move(single)), specials_(std::move(specials)) {}

    void process(Encoding& enc, bool add_special_tokens) const override {
        if (!add_special_tokens) return;
        Encoding out;
        for (const Piece& p : single_) {
            if (p.is_sequence) append_encoding(out, enc);
            else append_special(out, specials_.at(p.special_id));
        }
        enc = std::move(out);
    }
    std::optional<int64_t> leading_special() const override {
        if (single_.empty() || single_.front().is_sequence) return std::nullopt;
        const auto& ids = specials_.at(single_.front().special_id).ids;
        return ids.empty() ? std::nullopt : std::optional<int64_t>(ids.front());
    }
    std::optional<int64_t> trailing_special() const override {
        if (single_.empty() || single_.back().is_sequence) return std::nullopt;
        const auto& ids = specials_.at(single_.back().special_id).ids;
        return ids.empty() ? std::nullopt : std::optional<int64_t>(ids.back());
    }

private:
    std::vector<Piece> single_;
    std::unordered_map<std::string, SpecialPiece> specials_;
};

class ByteLevelProcessor final : public PostProcessor {
public:
    ByteLevelProcessor(bool trim, bool add_prefix_space) : trim_(trim), add_prefix_space_(add_prefix_space) {}
    void process(Encoding& enc, bool) const override {
        if (trim_) trim_offsets(enc, add_prefix_space_);
    }

private:
    bool trim_, add_prefix_space_;
};

// RobertaProcessing and BertProcessing: <cls> A <sep>, the former also trimming offsets.
class ClsSepProcessor final : public PostProcessor {
public:
    ClsSepProcessor(SpecialPiece cls, SpecialPiece sep, bool trim, bool add_prefix_space)
        : cls_(std::move(cls)), sep_(std::move(sep)), trim_(trim), add_prefix_space_(add_prefix_space) {}
    void process(Encoding& enc, bool add_special_tokens) const override {
        if (trim_) trim_offsets(enc, add_prefix_space_);
        if (!add_special_tokens) return;
        Encoding out;
        append_special(out, cls_);
        append_encoding(out, enc);
        append_special(out, sep_);
        enc = std::move(out);
    }
    std::optional<int64_t> leading_special() const override { return cls_.ids.front(); }
    std::optional<int64_t> trailing_special() const override { return sep_.ids.front(); }

private:
    SpecialPiece cls_, sep_;
    bool trim_, add_prefix_space_;
};

class SequenceProcessor final : public PostProcessor {
public:
    explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
    void process(Encoding& enc, bool add_special_tokens) const override {
        for (const auto& p : parts_) p->process(enc, add_special_tokens);
    }
    std::optional<int64_t> leading_special() const override {
        for (const auto& p : parts_)
            if (auto id = p->leading_special()) return id;
        return std::nullopt;
    }
    std::optional<int64_t> trailing_special() const override {
        for (const auto& p : parts_)
            if (auto id = p->trailing_special()) return id;
        return std::nullopt;
    }

private:
    std::vector<std::unique_ptr<PostProcessor>> parts_;
};

// "$A", "$B", "$", "$0", "<s>", optionally followed by ":type_id".
TemplateProcessor::Piece piece_from_string(std::string s) {
    if (auto colon = s.rfind(':'); colon != std::string::npos && colon > 0) {
        std::string tail = s.substr(colon + 1);
        if (!tail.empty() && tail.find_first_not_of("0123456789") == std::string::npos) s.resize(colon);
    }
    if (!s.empty() && s[0] == '$') return {true, {}};
    return {false, s};
}

std::vector<TemplateProcessor::Piece> template_from_json(const Json& value, const Where& where) {
    std::vector<TemplateProcessor::Piece> pieces;
    if (value.is_string()) {
        // "<s> $A </s>"
        std::string s = value.get<std::string>();
        size_t pos = 0;
        while (pos < s.size()) {
            size_t end = s.find(' ', pos);
            if (end == std::string::npos) end = s.size();
            if (end > pos) pieces.push_back(piece_from_string(s.substr(pos, end - pos)));
            pos = end + 1;
        }
        return pieces;
    }
    as_array(value, where);
    for (size_t i = 0; i < value.size(); ++i) {
        const Json& item = value[i];
        Where w = where.index(i);
        if (item.is_string()) {
            pieces.push_back(piece_from_string(item.get<std::string>()));
        } else if (const Json* seq = find_field(as_object(item, w), "Sequence")) {
            as_object(*seq, w.field("Sequence"));
            pieces.push_back({true, {}});
        } else if (const Json* special = find_field(item, "SpecialToken")) {
            pieces.push_back({false, string_field(*special, "id", w.field("SpecialToken"))});
        } else {
            w.fail("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
        }
    }
    return pieces;
}

SpecialPiece cls_sep_from_json(const Json& obj, std::string_view key, const Where& where) {
    Where w = where.field(key);
    const Json& pair = as_array(require_field(obj, key, where), w);
    if (pair.size() != 2) w.fail("expected [token, id]");
    int64_t id = as_int(pair[1], w.index(1));
    if (id < 0) w.index(1).fail("negative token id");
    return {{id}, {as_string(pair[0], w.index(0))}};
}

}  // namespace

std::unique_ptr<PostProcessor> make_simple_template(std::vector<std::pair<std::string, int64_t>> before,
                                                    std::vector<std::pair<std::string, int64_t>> after) {
    std::vector<TemplateProcessor::Piece> pieces;
    std::unordered_map<std::string, SpecialPiece> specials;
    for (auto& [token, id] : before) {
        pieces.push_back({false, token});
        specials[token] = {{id}, {token}};
    }
    pieces.push_back({true, {}});
    for (auto& [token, id] : after) {
        pieces.push_back({false, token});
        specials[token] = {{id}, {token}};
    }
    return std::make_unique<TemplateProcessor>(std::move(pieces), std::move(specials));
}

bool is_template_processor(const PostProcessor* p) { return dynamic_cast<const TemplateProcessor*>(p) != nullptr; }

std::unique_ptr<PostProcessor> post_processor_from_json(const Json& value, const Where& where) {
    if (value.is_null()) return nullptr;
    as_object(value, where);
    const std::string type = string_field(value, "type", where);
    if (type == "TemplateProcessing") {
        auto single = template_from_json(require_field(value, "single", where), where.field("single"));
        std::unordered_map<std::string, SpecialPiece> specials;
        if (const Json* map = find_field(value, "special_tokens")) {
            Where mw = where.field("special_tokens");
            for (const auto& [key, item] : as_object(*map, mw).items()) {
                Where iw = mw.field(key);
                as_object(item, iw);
                SpecialPiece piece;
                const Json& ids = as_array(require_field(item, "ids", iw), iw.field("ids"));
                const Json& tokens = as_array(require_field(item, "tokens", iw), iw.field("tokens"));
                if (ids.size() != tokens.size()) iw.fail("ids and tokens differ in length");
                for (size_t i = 0; i < ids.size(); ++i) {
                    int64_t id = as_int(ids[i], iw.field("ids").index(i));
                    if (id < 0) iw.field("ids").index(i).fail("negative token id");
                    piece.ids.push_back(id);
                    piece.tokens.push_back(as_string(tokens[i], iw.field("tokens").index(i)));
                }
                specials[key] = std::move(piece);
            }
        }
        for (const auto& p : single) {
            if (!p.is_sequence && !specials.count(p.special_id))
                where.field("single").fail("special token \"" + p.special_id + "\" is not in special_tokens");
        }
        return std::make_unique<TemplateProcessor>(std::move(single), std::move(specials));
    }
    if (type == "ByteLevel") {
        return std::make_unique<ByteLevelProcessor>(bool_field_or(value, "trim_offsets", where, true),
                                                    bool_field_or(value, "add_prefix_space", where, true));
    }
    if (type == "RobertaProcessing") {
        return std::make_unique<ClsSepProcessor>(cls_sep_from_json(value, "cls", where),
                                                 cls_sep_from_json(value, "sep", where),
                                                 bool_field_or(value, "trim_offsets", where, true),
                                                 bool_field_or(value, "add_prefix_space", where, true));
    }
    if (type == "BertProcessing") {
        return std::make_unique<ClsSepProcessor>(cls_sep_from_json(value, "cls", where),
                                                 cls_sep_from_json(value, "sep", where), false, false);
    }
    if (type == "Sequence") {
        Where list_where = where.nested("processors");
        const Json& list = as_array(require_field(value, "processors", where), list_where);
        std::vector<std::unique_ptr<PostProcessor>> parts;
        for (size_t i = 0; i < list.size(); ++i) {
            if (auto p = post_processor_from_json(list[i], list_where.index(i))) parts.push_back(std::move(p));
        }
        return std::make_unique<SequenceProcessor>(std::move(parts));
    }
    where.fail("post-processor type \"" + type +
                   "\" is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, "
                   "BertProcessing, Sequence)",
               ErrorKind::Unsupported);
}

}  // namespace engram::tok
