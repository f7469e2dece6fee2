// Decoders: turn vocabulary strings back into text. Each stage maps a list of strings to a list of
// strings (HF's decode_chain) and the result is concatenated.

#include "tokenizers/components.h"
#include "tokenizers/unicode.h"

namespace engram::tok {

namespace {

using Tokens = std::vector<std::string>;

class SequenceDecoder final : public Decoder {
public:
    explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
    Tokens decode_chain(Tokens tokens) const override {
        for (const auto& p : parts_) tokens = p->decode_chain(std::move(tokens));
        return tokens;
    }
    bool is_byte_level() const override {
        for (const auto& p : parts_)
            if (p->is_byte_level()) return true;
        return false;
    }

private:
    std::vector<std::unique_ptr<Decoder>> parts_;
};

class ByteLevelDecoder final : public Decoder {
public:
    Tokens decode_chain(Tokens tokens) const override {
        std::string bytes;
        for (const std::string& t : tokens) {
            // A token with any character outside the byte map (an added token such as a CJK word)
            // contributes its own UTF-8 bytes.
            std::string mapped;
            bool all_mapped = true;
            for (size_t i = 0; i < t.size();) {
                int b = unicode_to_byte(utf8_decode(t, i));
                if (b < 0) {
                    all_mapped = false;
                    break;
                }
                mapped += static_cast<char>(b);
                i += utf8_len(static_cast<unsigned char>(t[i]));
            }
            bytes += all_mapped ? mapped : t;
        }
        // Ids may stop in the middle of a character; such bytes become U+FFFD as in HF.
        return {utf8_lossy(bytes)};
    }
    bool is_byte_level() const override { return true; }
};

class MetaspaceDecoder final : public Decoder {
public:
    MetaspaceDecoder(std::string replacement, PrependScheme scheme)
        : replacement_(std::move(replacement)), scheme_(scheme) {}
    Tokens decode_chain(Tokens tokens) const override {
        char32_t rep = utf8_decode(replacement_, 0);
        for (size_t i = 0; i < tokens.size(); ++i) {
            std::string out;
            const std::string& t = tokens[i];
            for (size_t k = 0; k < t.size();) {
                size_t len = utf8_len(static_cast<unsigned char>(t[k]));
                if (utf8_decode(t, k) == rep) {
                    // The first token's markers stand for the prefix space the encoder added.
                    if (!(i == 0 && scheme_ != PrependScheme::Never)) out += ' ';
                } else {
                    out.append(t, k, len);
                }
                k += len;
            }
            tokens[i] = std::move(out);
        }
        return tokens;
    }

private:
    std::string replacement_;
    PrependScheme scheme_;
};

class ReplaceDecoder final : public Decoder {
public:
    ReplaceDecoder(TextPattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
    Tokens decode_chain(Tokens tokens) const override {
        for (std::string& t : tokens) {
            std::string out;
            for (const auto& p : pattern_.find(t)) {
                if (p.is_match) out += content_;
                else out.append(t, p.begin, p.end - p.begin);
            }
            t = std::move(out);
        }
        return tokens;
    }

private:
    TextPattern pattern_;
    std::string content_;
};

// "<0xE6>" tokens (SentencePiece byte fallback) become the bytes they stand for; runs of them are
// joined first so that multi-byte characters come back whole.
class ByteFallbackDecoder final : public Decoder {
public:
    Tokens decode_chain(Tokens tokens) const override {
        Tokens out;
        std::string pending;
        auto flush = [&] {
            if (pending.empty()) return;
            if (!utf8_first_invalid(pending)) {
                out.push_back(pending);
            } else {
                for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
            }
            pending.clear();
        };
        for (std::string& t : tokens) {
            if (auto byte = parse_byte_token(t)) {
                pending += static_cast<char>(*byte);
                continue;
            }
            flush();
            out.push_back(std::move(t));
        }
        flush();
        return out;
    }

private:
    static std::optional<unsigned char> parse_byte_token(const std::string& t) {
        if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return std::nullopt;
        auto hex = [](char c) -> int {
            if (c >= '0' && c <= '9') return c - '0';
            if (c >= 'a' && c <= 'f') return c - 'a' + 10;
            if (c >= 'A' && c <= 'F') return c - 'A' + 10;
            return -1;
        };
        int hi = hex(t[3]), lo = hex(t[4]);
        if (hi < 0 || lo < 0) return std::nullopt;
        return static_cast<unsigned char>(hi * 16 + lo);
    }
};

class FuseDecoder final : public Decoder {
public:
    Tokens decode_chain(Tokens tokens) const override {
        std::string all;
        for (const auto& t : tokens) all += t;
        return {all};
    }
};

class StripDecoder final : public Decoder {
public:
    StripDecoder(std::string content, size_t start, size_t stop)
        : content_(utf8_decode(content, 0)), start_(start), stop_(stop) {}
    Tokens decode_chain(Tokens tokens) const override {
        for (std::string& t : tokens) {
            std::vector<std::pair<size_t, size_t>> chars;  // (byte offset, length)
            for (size_t i = 0; i < t.size(); i += utf8_len(static_cast<unsigned char>(t[i])))
                chars.push_back({i, utf8_len(static_cast<unsigned char>(t[i]))});
            size_t begin = 0;
            while (begin < chars.size() && begin < start_ && utf8_decode(t, chars[begin].first) == content_) ++begin;
            size_t end = chars.size();
            for (size_t n = 0; n < stop_ && end > begin && utf8_decode(t, chars[end - 1].first) == content_; ++n) --end;
            size_t b = begin < chars.size() ? chars[begin].first : t.size();
            size_t e = end < chars.size() ? chars[end].first : t.size();
            t = t.substr(b, e - b);
        }
        return tokens;
    }

private:
    char32_t content_;
    size_t start_, stop_;
};

class BpeSuffixDecoder final : public Decoder {
public:
    explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
    Tokens decode_chain(Tokens tokens) const override {
        for (size_t i = 0; i < tokens.size(); ++i) {
            const std::string replacement = i + 1 == tokens.size() ? "" : " ";
            tokens[i] = replace_all(tokens[i], suffix_, replacement);
        }
        return tokens;
    }
    static std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
        if (from.empty()) return s;
        std::string out;
        size_t pos = 0;
        for (size_t hit = s.find(from); hit != std::string::npos; hit = s.find(from, pos)) {
            out.append(s, pos, hit - pos);
            out += to;
            pos = hit + from.size();
        }
        out.append(s, pos, std::string::npos);
        return out;
    }

private:
    std::string suffix_;
};

class WordPieceDecoder final : public Decoder {
public:
    WordPieceDecoder(std::string prefix, bool cleanup) : prefix_(std::move(prefix)), cleanup_(cleanup) {}
    Tokens decode_chain(Tokens tokens) const override {
        for (size_t i = 0; i < tokens.size(); ++i) {
            std::string& t = tokens[i];
            if (i != 0) {
                if (!prefix_.empty() && t.compare(0, prefix_.size(), prefix_) == 0) t.erase(0, prefix_.size());
                else t.insert(0, " ");
            }
            if (cleanup_) t = cleanup(t);
        }
        return tokens;
    }

private:
    static std::string cleanup(std::string s) {
        static const std::pair<const char*, const char*> rules[] = {
            {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
            {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
        for (const auto& [from, to] : rules) s = BpeSuffixDecoder::replace_all(s, from, to);
        return s;
    }
    std::string prefix_;
    bool cleanup_;
};

}  // namespace

std::unique_ptr<Decoder> make_byte_level_decoder() { return std::make_unique<ByteLevelDecoder>(); }

std::unique_ptr<Decoder> decoder_from_json(const Json& value, const Where& where) {
    if (value.is_null()) return nullptr;
    as_object(value, where);
    const std::string type = string_field(value, "type", where);
    if (type == "Sequence") {
        Where list_where = where.nested("decoders");
        const Json& list = as_array(require_field(value, "decoders", where), list_where);
        std::vector<std::unique_ptr<Decoder>> parts;
        for (size_t i = 0; i < list.size(); ++i) {
            if (auto d = decoder_from_json(list[i], list_where.index(i))) parts.push_back(std::move(d));
        }
        return std::make_unique<SequenceDecoder>(std::move(parts));
    }
    if (type == "ByteLevel") return make_byte_level_decoder();
    if (type == "Metaspace") {
        return std::make_unique<MetaspaceDecoder>(char_field(value, "replacement", where, "\u2581"),
                                                  prepend_scheme_from_json(value, where));
    }
    if (type == "Replace") {
        return std::make_unique<ReplaceDecoder>(
            TextPattern::from_json(require_field(value, "pattern", where), where.field("pattern")),
            string_field(value, "content", where));
    }
    if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
    if (type == "Fuse") return std::make_unique<FuseDecoder>();
    if (type == "Strip") {
        int64_t start = int_field_or(value, "start", where, 0);
        int64_t stop = int_field_or(value, "stop", where, 0);
        if (start < 0 || stop < 0) where.fail("start and stop must not be negative");
        return std::make_unique<StripDecoder>(char_field(value, "content", where, " "),
                                              static_cast<size_t>(start), static_cast<size_t>(stop));
    }
    if (type == "BPEDecoder") return std::make_unique<BpeSuffixDecoder>(string_field_or(value, "suffix", where, "</w>"));
    if (type == "WordPiece") {
        return std::make_unique<WordPieceDecoder>(string_field_or(value, "prefix", where, "##"),
                                                  bool_field_or(value, "cleanup", where, true));
    }
    where.fail("decoder type \"" + type +
                   "\" is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, "
                   "ByteFallback, Fuse, Strip, BPEDecoder, WordPiece)",
               ErrorKind::Unsupported);
}

}  // namespace engram::tok
