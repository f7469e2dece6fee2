// Normalizers: rewrite the text before pre-tokenization (Llama-2's legacy files put the
// SentencePiece-style "▁" handling here instead of in a Metaspace pre-tokenizer).

#include "tokenizers/components.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

namespace {

class SequenceNormalizer final : public Normalizer {
public:
    explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
    void normalize(NormalizedString& s) const override {
        for (const auto& p : parts_) p->normalize(s);
    }

private:
    std::vector<std::unique_ptr<Normalizer>> parts_;
};

class PrependNormalizer final : public Normalizer {
public:
    explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
    void normalize(NormalizedString& s) const override { s.prepend(prefix_); }

private:
    std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
public:
    ReplaceNormalizer(TextPattern pattern, std::string content)
        : pattern_(std::move(pattern)), content_(std::move(content)) {}
    void normalize(NormalizedString& s) const override { s.replace(pattern_.find(s.get()), content_); }

private:
    TextPattern pattern_;
    std::string content_;
};

class LowercaseNormalizer final : public Normalizer {
public:
    void normalize(NormalizedString& s) const override {
        s.map_chars([](char32_t cp, std::string_view, std::string& out) { utf8_append(out, simple_lowercase(cp)); });
    }
};

class StripNormalizer final : public Normalizer {
public:
    StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
    void normalize(NormalizedString& s) const override { s.strip(left_, right_); }

private:
    bool left_, right_;
};

class ByteLevelNormalizer final : public Normalizer {
public:
    void normalize(NormalizedString& s) const override {
        const auto& table = byte_to_unicode();
        s.map_chars([&](char32_t, std::string_view utf8, std::string& out) {
            for (char c : utf8) out += table[static_cast<unsigned char>(c)];
        });
    }
};

// Unicode NFC. Without a normalization library we pass the text through: nearly all text is
// already NFC (keyboards, the web, Python's str literals), so Qwen2-style files that declare NFC
// tokenize correctly except on deliberately decomposed input.
class NfcPassThrough final : public Normalizer {
public:
    void normalize(NormalizedString&) const override {}
};

}  // namespace

std::unique_ptr<Normalizer> normalizer_from_json(const Json& value, const Where& where) {
    if (value.is_null()) return nullptr;
    as_object(value, where);
    const std::string type = string_field(value, "type", where);
    if (type == "Sequence") {
        Where list_where = where.nested("normalizers");
        const Json& list = as_array(require_field(value, "normalizers", where), list_where);
        std::vector<std::unique_ptr<Normalizer>> parts;
        for (size_t i = 0; i < list.size(); ++i) {
            if (auto n = normalizer_from_json(list[i], list_where.index(i))) parts.push_back(std::move(n));
        }
        return std::make_unique<SequenceNormalizer>(std::move(parts));
    }
    if (type == "Prepend") return std::make_unique<PrependNormalizer>(string_field(value, "prepend", where));
    if (type == "Replace") {
        return std::make_unique<ReplaceNormalizer>(
            TextPattern::from_json(require_field(value, "pattern", where), where.field("pattern")),
            string_field(value, "content", where));
    }
    if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
    if (type == "Strip") {
        return std::make_unique<StripNormalizer>(bool_field_or(value, "strip_left", where, true),
                                                 bool_field_or(value, "strip_right", where, true));
    }
    if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
    if (type == "NFC") return std::make_unique<NfcPassThrough>();
    where.fail("normalizer type \"" + type +
                   "\" is not supported (supported: Sequence, Prepend, Replace, Lowercase, Strip, "
                   "ByteLevel, NFC)",
               ErrorKind::Unsupported);
}

}  // namespace engram::tok
