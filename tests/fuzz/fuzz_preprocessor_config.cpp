// libFuzzer target: a ViT's preprocessor_config.json (engram/model_config.h), for a 32-pixel model.
// Parsing must succeed or throw engram::Error; a parsed config resizes to a bounded, positive size
// and normalises by a non-zero standard deviation.
#include <nlohmann/json.hpp>

#include "engram/model_config.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using engram::fuzz::check;
    const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return 0;
    engram::HParams hp;
    hp.image_size = 32;
    hp.patch_size = 8;
    try {
        const engram::ImagePreprocess p = engram::parse_preprocessor_config(j, hp);
        check(p.height >= 1 && p.height <= engram::kMaxConfigImageSide && p.width >= 1 && p.width <= engram::kMaxConfigImageSide);
        check(p.resample >= 0 && p.resample <= 5);
        for (double s : p.std) check(s != 0);
    } catch (const engram::Error&) {
    }
    return 0;
}
