// Decoding images from outside (the ViT commands' --image files, the GUI's image list): PNG through
// libpng and JPEG through libjpeg-turbo, both maintained and patched by the distribution. Other
// formats are refused. Torch-free, so the fuzzer can link it alone.
//
// A file is untrusted input: its stated dimensions are checked against the caps below before a
// pixel buffer is allocated, and every decoder error becomes one engram::Error naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace engram {

inline constexpr int64_t kMaxImageSide = 8192;          // pixels, either side
inline constexpr int64_t kMaxImagePixels = 40'000'000;  // a 48-megapixel photo is refused, 36 is not

struct DecodedImage {
    int64_t width = 0, height = 0;
    std::vector<uint8_t> rgb;  // [height, width, 3], 8 bits per channel; alpha dropped, gray repeated
};

// `what` names the image in errors (its file).
DecodedImage decode_image(const uint8_t* data, size_t size, const std::string& what);

}  // namespace engram
