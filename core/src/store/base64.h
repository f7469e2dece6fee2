// RFC 4648 base64 (standard alphabet, padded) for tensor blobs in history JSON.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace engram::store {

std::string base64_encode(const uint8_t* data, size_t size);
// Throws Error(Format) naming `what` on a character outside the alphabet or bad padding.
std::vector<uint8_t> base64_decode(std::string_view text, const std::string& what);

}  // namespace engram::store
