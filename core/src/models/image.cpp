// Image decoding (PNG, JPEG, BMP, GIF, TGA through Debian's stb_image) and the HF ViT image
// processor: resize, rescale, normalise, channels first.
//
// Resizing uses bilinear (resample 2) or bicubic (resample 3) interpolation with antialiasing on
// downscale, the closest libtorch has to PIL's filters; exact pixel agreement with PIL is not
// promised for images that need resizing.
#include <ATen/ATen.h>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include <stb_image.h>

#include <memory>

#include "engram/error.h"
#include "engram/model.h"

namespace engram {

at::Tensor load_image(const std::filesystem::path& path, const ImagePreprocess& pre) {
    int w = 0, h = 0, channels = 0;
    std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load(path.c_str(), &w, &h, &channels, 3), stbi_image_free);
    if (!pixels) {
        const char* why = stbi_failure_reason();
        throw Error(ErrorKind::Format, path.string() + ": cannot decode image (" + (why ? why : "unknown reason") + ")");
    }
    at::Tensor img = at::from_blob(pixels.get(), {h, w, 3}, at::kByte).clone();  // [H, W, 3] uint8
    at::Tensor x = img.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);         // [1, 3, H, W] in 0..255
    if (pre.do_resize && (h != pre.height || w != pre.width)) {
        const bool down = pre.height < h || pre.width < w;
        if (pre.resample == 3)
            x = down ? at::_upsample_bicubic2d_aa(x, {pre.height, pre.width}, false)
                     : at::upsample_bicubic2d(x, {pre.height, pre.width}, false);
        else
            x = down ? at::_upsample_bilinear2d_aa(x, {pre.height, pre.width}, false)
                     : at::upsample_bilinear2d(x, {pre.height, pre.width}, false);
        x = x.round().clamp(0, 255);  // PIL hands back 8-bit pixels
    }
    if (pre.do_rescale) x = x * pre.rescale_factor;
    if (pre.do_normalize) {
        at::Tensor mean = at::tensor(std::vector<double>(pre.mean.begin(), pre.mean.end()), at::kFloat).view({1, 3, 1, 1});
        at::Tensor std = at::tensor(std::vector<double>(pre.std.begin(), pre.std.end()), at::kFloat).view({1, 3, 1, 1});
        x = (x - mean) / std;
    }
    return x.contiguous();
}

at::Tensor load_model_image(const Model& model, const std::filesystem::path& path) {
    if (model.arch() != Arch::Vit) throw Error(ErrorKind::Argument, model.arch_name() + " is not an image classifier");
    ImagePreprocess pre = model.preprocess();
    pre.height = pre.width = model.hparams().image_size;
    pre.do_resize = true;
    return load_image(path, pre);
}

}  // namespace engram
