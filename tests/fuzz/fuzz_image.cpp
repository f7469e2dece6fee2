// libFuzzer target: the image decoder (PNG through libpng, JPEG through libjpeg-turbo). A file
// decodes to exactly width x height x 3 bytes within the caps, or throws engram::Error.
#include "engram/image_decode.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const engram::DecodedImage img = engram::decode_image(data, size, "fuzz image");
        engram::fuzz::check(img.width > 0 && img.height > 0 && img.width <= engram::kMaxImageSide && img.height <= engram::kMaxImageSide);
        engram::fuzz::check(img.rgb.size() == static_cast<size_t>(img.width * img.height * 3));
    } catch (const engram::Error&) {
    }
    return 0;
}
