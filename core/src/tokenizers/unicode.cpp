#include "tokenizers/unicode.h"

#include <clocale>
#include <cwctype>
#include <locale.h>

#include "tokenizers/regex.h"

namespace engram::tok {

char32_t utf8_decode(std::string_view text, size_t pos) {
    auto byte = [&](size_t i) { return static_cast<unsigned char>(text[pos + i]); };
    unsigned char lead = byte(0);
    size_t len = utf8_len(lead);
    if (len == 1 || pos + len > text.size()) return lead;
    char32_t cp = lead & (0x7F >> len);
    for (size_t i = 1; i < len; ++i) cp = (cp << 6) | (byte(i) & 0x3F);
    return cp;
}

void utf8_append(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

std::string utf8_encode(char32_t cp) {
    std::string s;
    utf8_append(s, cp);
    return s;
}

namespace {

// How many bytes from `pos` form a well-formed prefix of a UTF-8 sequence (the "maximal subpart"
// of the Unicode standard), and whether that prefix is a complete character.
struct Utf8Scan {
    size_t valid_prefix;
    bool complete;
};

Utf8Scan scan_utf8(std::string_view s, size_t pos) {
    auto at = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
    unsigned char lead = at(pos);
    if (lead < 0x80) return {1, true};
    size_t width;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (lead >= 0xC2 && lead <= 0xDF) {
        width = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        width = 3;
        if (lead == 0xE0) lo = 0xA0;
        if (lead == 0xED) hi = 0x9F;  // no surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        width = 4;
        if (lead == 0xF0) lo = 0x90;
        if (lead == 0xF4) hi = 0x8F;
    } else {
        return {0, false};
    }
    size_t n = 1;
    for (size_t i = 1; i < width; ++i) {
        if (pos + i >= s.size()) return {n, false};
        unsigned char b = at(pos + i);
        unsigned char min = i == 1 ? lo : 0x80;
        unsigned char max = i == 1 ? hi : 0xBF;
        if (b < min || b > max) return {n, false};
        ++n;
    }
    return {n, true};
}

}  // namespace

std::optional<size_t> utf8_first_invalid(std::string_view bytes) {
    size_t i = 0;
    while (i < bytes.size()) {
        Utf8Scan scan = scan_utf8(bytes, i);
        if (!scan.complete) return i;
        i += scan.valid_prefix;
    }
    return std::nullopt;
}

std::string utf8_lossy(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    size_t i = 0;
    while (i < bytes.size()) {
        Utf8Scan scan = scan_utf8(bytes, i);
        if (scan.complete) {
            out.append(bytes.substr(i, scan.valid_prefix));
            i += scan.valid_prefix;
        } else {
            out += "\xEF\xBF\xBD";
            i += scan.valid_prefix == 0 ? 1 : scan.valid_prefix;
        }
    }
    return out;
}

size_t utf8_count(std::string_view text) {
    size_t n = 0;
    for (size_t i = 0; i < text.size(); i += utf8_len(static_cast<unsigned char>(text[i]))) ++n;
    return n;
}

bool is_unicode_whitespace(char32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

namespace {

struct ByteMap {
    std::array<std::string, 256> to_unicode;
    std::array<int16_t, 512> from_unicode;  // every mapped code point is below 0x144
};

const ByteMap& byte_map() {
    static const ByteMap map = [] {
        ByteMap m;
        m.from_unicode.fill(-1);
        auto printable = [](int b) {
            return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        };
        // Printable bytes stand for themselves; the others are moved, in byte order, to U+0100+n
        // so that every byte has a visible, non-whitespace character.
        int n = 0;
        for (int b = 0; b < 256; ++b) {
            char32_t cp = printable(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
            m.to_unicode[b] = utf8_encode(cp);
            m.from_unicode[cp] = static_cast<int16_t>(b);
        }
        return m;
    }();
    return map;
}

}  // namespace

const std::array<std::string, 256>& byte_to_unicode() { return byte_map().to_unicode; }

int unicode_to_byte(char32_t cp) {
    if (cp >= 512) return -1;
    return byte_map().from_unicode[cp];
}

char32_t simple_lowercase(char32_t cp) {
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    // The "C" locale only knows ASCII; C.UTF-8 (always present on Debian) has the Unicode tables.
    struct Utf8Locale {
        locale_t handle = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
        ~Utf8Locale() {
            if (handle) freelocale(handle);
        }
    };
    static const Utf8Locale utf8;
    if (!utf8.handle) return cp;
    return static_cast<char32_t>(towlower_l(static_cast<wint_t>(cp), utf8.handle));
}

namespace {

bool char_matches(const Regex& re, char32_t cp) { return re.search(utf8_encode(cp)); }

}  // namespace

bool is_punctuation(char32_t cp) {
    if (cp < 0x80) {
        return (cp >= '!' && cp <= '/') || (cp >= ':' && cp <= '@') || (cp >= '[' && cp <= '`') ||
               (cp >= '{' && cp <= '~');
    }
    static const Regex re("^\\p{P}$");
    return char_matches(re, cp);
}

bool is_numeric(char32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    static const Regex re("^\\p{N}$");
    return char_matches(re, cp);
}

bool is_word_char(char32_t cp) {
    if (cp < 0x80) {
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    }
    static const Regex re("^[\\p{L}\\p{M}\\p{N}\\p{Pc}]$");
    return char_matches(re, cp);
}

}  // namespace engram::tok
