// Pre-tokenizers: cut the (normalized) text into words before the model sees them. The splitting
// rules follow HF tokenizers so that byte-level BPE reproduces their ids exactly.

#include "tokenizers/components.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

// ---- patterns ----------------------------------------------------------------------------------

TextPattern TextPattern::from_json(const Json& value, const Where& where) {
    as_object(value, where);
    TextPattern p;
    if (const Json* s = find_field(value, "String")) {
        p.literal_ = as_string(*s, where.field("String"));
    } else if (const Json* r = find_field(value, "Regex")) {
        std::string pattern = as_string(*r, where.field("Regex"));
        try {
            p.regex_ = std::make_shared<const Regex>(pattern);
        } catch (const Error& e) {
            where.field("Regex").fail(e.what());
        }
    } else {
        where.fail("expected {\"String\": ...} or {\"Regex\": ...}");
    }
    return p;
}

TextPattern TextPattern::literal(std::string s) {
    TextPattern p;
    p.literal_ = std::move(s);
    return p;
}

std::vector<PatternPiece> TextPattern::find(std::string_view text) const {
    return regex_ ? find_regex(*regex_, text) : find_literal(literal_, text);
}

PrependScheme prepend_scheme_from_json(const Json& obj, const Where& where) {
    // Files written before tokenizers 0.19 carry add_prefix_space instead.
    auto scheme = optional_string_field(obj, "prepend_scheme", where);
    if (!scheme) return bool_field_or(obj, "add_prefix_space", where, true) ? PrependScheme::Always
                                                                             : PrependScheme::Never;
    if (*scheme == "first") return PrependScheme::First;
    if (*scheme == "never") return PrependScheme::Never;
    if (*scheme == "always") return PrependScheme::Always;
    where.field("prepend_scheme").fail("unknown prepend_scheme \"" + *scheme + "\"");
}

namespace {

SplitBehavior behavior_from_string(const std::string& s, const Where& where) {
    if (s == "Removed") return SplitBehavior::Removed;
    if (s == "Isolated") return SplitBehavior::Isolated;
    if (s == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
    if (s == "MergedWithNext") return SplitBehavior::MergedWithNext;
    if (s == "Contiguous") return SplitBehavior::Contiguous;
    where.fail("unknown split behavior \"" + s + "\"");
}

// GPT-2's word pattern, as HF's ByteLevel pre-tokenizer applies it when use_regex is true.
const Regex& gpt2_regex() {
    static const Regex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
    return re;
}

const Regex& whitespace_words_regex() {
    // HF's Whitespace pre-tokenizer: \w+|[^\w\s]+ (onig \w: letters, marks, digits, connectors).
    static const Regex re(R"([\p{L}\p{M}\p{N}\p{Pc}]+|[^\p{L}\p{M}\p{N}\p{Pc}\s]+)");
    return re;
}

// ---- components --------------------------------------------------------------------------------

class SequencePreTokenizer final : public PreTokenizer {
public:
    explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
    void pre_tokenize(PreTokenizedString& s) const override {
        for (const auto& p : parts_) p->pre_tokenize(s);
    }
    bool is_byte_level() const override {
        for (const auto& p : parts_)
            if (p->is_byte_level()) return true;
        return false;
    }

private:
    std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
public:
    ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
        : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}

    void pre_tokenize(PreTokenizedString& pre) const override {
        pre.split_normalized([&](size_t, NormalizedString&& s) {
            if (add_prefix_space_ && !s.empty() && s.get().front() != ' ') s.prepend(" ");
            if (use_regex_) return s.split(find_regex(gpt2_regex(), s.get()), SplitBehavior::Isolated);
            std::vector<NormalizedString> out;
            out.push_back(std::move(s));
            return out;
        });
        // Every byte becomes its printable stand-in; the pieces of one character keep its span.
        const auto& table = byte_to_unicode();
        pre.normalize([&](NormalizedString& s) {
            s.map_chars([&](char32_t, std::string_view utf8, std::string& out) {
                for (char c : utf8) out += table[static_cast<unsigned char>(c)];
            });
        });
    }
    bool is_byte_level() const override { return true; }

private:
    bool add_prefix_space_;
    bool use_regex_;
};

class SplitPreTokenizer final : public PreTokenizer {
public:
    SplitPreTokenizer(TextPattern pattern, SplitBehavior behavior, bool invert)
        : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
    void pre_tokenize(PreTokenizedString& pre) const override {
        pre.split_normalized([&](size_t, NormalizedString&& s) {
            auto pieces = pattern_.find(s.get());
            if (invert_) invert(pieces);
            return s.split(pieces, behavior_);
        });
    }

private:
    TextPattern pattern_;
    SplitBehavior behavior_;
    bool invert_;
};

class MetaspacePreTokenizer final : public PreTokenizer {
public:
    MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
        : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}

    void pre_tokenize(PreTokenizedString& pre) const override {
        pre.split_normalized([&](size_t, NormalizedString&& s) {
            s.replace(find_literal(" ", s.get()), replacement_);
            bool starts_with_replacement = s.get().compare(0, replacement_.size(), replacement_) == 0;
            // "first" prepends only to the piece that starts the input, so text after a special
            // token does not get a spurious "▁".
            if (!starts_with_replacement &&
                (scheme_ == PrependScheme::Always ||
                 (scheme_ == PrependScheme::First && s.original_begin() == 0))) {
                s.prepend(replacement_);
            }
            if (split_) return s.split(find_literal(replacement_, s.get()), SplitBehavior::MergedWithNext);
            std::vector<NormalizedString> out;
            out.push_back(std::move(s));
            return out;
        });
    }

private:
    std::string replacement_;
    PrependScheme scheme_;
    bool split_;
};

class WhitespacePreTokenizer final : public PreTokenizer {
public:
    void pre_tokenize(PreTokenizedString& pre) const override {
        pre.split_normalized([](size_t, NormalizedString&& s) {
            auto pieces = find_regex(whitespace_words_regex(), s.get());
            invert(pieces);
            return s.split(pieces, SplitBehavior::Removed);
        });
    }
};

class CharPredicatePreTokenizer final : public PreTokenizer {
public:
    CharPredicatePreTokenizer(std::function<bool(char32_t)> pred, SplitBehavior behavior)
        : pred_(std::move(pred)), behavior_(behavior) {}
    void pre_tokenize(PreTokenizedString& pre) const override {
        pre.split_normalized([&](size_t, NormalizedString&& s) { return s.split(find_chars(pred_, s.get()), behavior_); });
    }

private:
    std::function<bool(char32_t)> pred_;
    SplitBehavior behavior_;
};

class BertPreTokenizer final : public PreTokenizer {
public:
    void pre_tokenize(PreTokenizedString& pre) const override {
        pre.split_normalized([](size_t, NormalizedString&& s) {
            return s.split(find_chars(is_unicode_whitespace, s.get()), SplitBehavior::Removed);
        });
        pre.split_normalized([](size_t, NormalizedString&& s) {
            return s.split(find_chars(is_punctuation, s.get()), SplitBehavior::Isolated);
        });
    }
};

class FixedLengthPreTokenizer final : public PreTokenizer {
public:
    explicit FixedLengthPreTokenizer(size_t length) : length_(length) {}
    void pre_tokenize(PreTokenizedString& pre) const override {
        pre.split_normalized([&](size_t, NormalizedString&& s) {
            std::vector<NormalizedString> out;
            const std::string& text = s.get();
            size_t begin = 0, chars = 0;
            for (size_t i = 0; i < text.size();) {
                i += utf8_len(static_cast<unsigned char>(text[i]));
                if (++chars == length_) {
                    out.push_back(s.slice(begin, i));
                    begin = i;
                    chars = 0;
                }
            }
            if (begin < text.size()) out.push_back(s.slice(begin, text.size()));
            return out;
        });
    }

private:
    size_t length_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex) {
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, use_regex);
}

std::unique_ptr<PreTokenizer> pre_tokenizer_from_json(const Json& value, const Where& where) {
    if (value.is_null()) return nullptr;
    as_object(value, where);
    const std::string type = string_field(value, "type", where);
    if (type == "Sequence") {
        Where list_where = where.nested("pretokenizers");
        const Json& list = as_array(require_field(value, "pretokenizers", where), list_where);
        std::vector<std::unique_ptr<PreTokenizer>> parts;
        for (size_t i = 0; i < list.size(); ++i) {
            if (auto p = pre_tokenizer_from_json(list[i], list_where.index(i))) parts.push_back(std::move(p));
        }
        return std::make_unique<SequencePreTokenizer>(std::move(parts));
    }
    if (type == "ByteLevel") {
        return make_byte_level_pre_tokenizer(bool_field_or(value, "add_prefix_space", where, true),
                                             bool_field_or(value, "use_regex", where, true));
    }
    if (type == "Split") {
        return std::make_unique<SplitPreTokenizer>(
            TextPattern::from_json(require_field(value, "pattern", where), where.field("pattern")),
            behavior_from_string(string_field(value, "behavior", where), where.field("behavior")),
            bool_field_or(value, "invert", where, false));
    }
    if (type == "Metaspace") {
        return std::make_unique<MetaspacePreTokenizer>(char_field(value, "replacement", where, "\u2581"),
                                                       prepend_scheme_from_json(value, where),
                                                       bool_field_or(value, "split", where, true));
    }
    if (type == "Whitespace") return std::make_unique<WhitespacePreTokenizer>();
    if (type == "WhitespaceSplit")
        return std::make_unique<CharPredicatePreTokenizer>(is_unicode_whitespace, SplitBehavior::Removed);
    if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
    if (type == "Punctuation") {
        SplitBehavior b = SplitBehavior::Isolated;
        if (auto s = optional_string_field(value, "behavior", where)) b = behavior_from_string(*s, where.field("behavior"));
        return std::make_unique<CharPredicatePreTokenizer>(is_punctuation, b);
    }
    if (type == "Digits") {
        bool individual = bool_field_or(value, "individual_digits", where, false);
        return std::make_unique<CharPredicatePreTokenizer>(
            is_numeric, individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
    }
    if (type == "CharDelimiterSplit") {
        std::string delimiter = char_field(value, "delimiter", where);
        char32_t cp = utf8_decode(delimiter, 0);
        return std::make_unique<CharPredicatePreTokenizer>([cp](char32_t c) { return c == cp; },
                                                           SplitBehavior::Removed);
    }
    if (type == "FixedLength") {
        int64_t length = int_field_or(value, "length", where, 5);
        if (length <= 0) where.field("length").fail("must be positive");
        return std::make_unique<FixedLengthPreTokenizer>(static_cast<size_t>(length));
    }
    where.fail("pre-tokenizer type \"" + type +
                   "\" is not supported (supported: Sequence, ByteLevel, Split, Metaspace, Whitespace, "
                   "WhitespaceSplit, BertPreTokenizer, Punctuation, Digits, CharDelimiterSplit, "
                   "FixedLength)",
               ErrorKind::Unsupported);
}

}  // namespace engram::tok
