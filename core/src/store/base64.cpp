// RFC 4648 base64 for the tensor blobs of history JSON (store/base64.h). Torch-free: engram_base.
#include "store/base64.h"

#include <algorithm>
#include <iterator>

#include "engram/error.h"

namespace engram {

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

}  // namespace engram
