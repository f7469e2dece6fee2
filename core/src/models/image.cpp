// Image decoding (PNG and JPEG, image_decode.h) and the HF ViT image processor: resize, rescale,
// normalise, channels first.
//
// Resizing uses bilinear (resample 2) or bicubic (resample 3) interpolation with antialiasing on
// downscale, the closest libtorch has to PIL's filters; exact pixel agreement with PIL is not
// promised for images that need resizing.
#include <ATen/ATen.h>

#include <system_error>

#include "engram/error.h"
#include "engram/file.h"
#include "engram/image_decode.h"
#include "engram/model.h"

namespace engram {

at::Tensor load_image(const std::filesystem::path& path, const ImagePreprocess& pre) {
    // Compressed images are small; a file this large is not one, and is not read into memory.
    constexpr uintmax_t kMaxFileBytes = 256u << 20;
    std::error_code ec;
    const uintmax_t bytes = std::filesystem::file_size(path, ec);
    if (!ec && bytes > kMaxFileBytes)
        throw Error(ErrorKind::Format, path.string() + ": " + std::to_string(bytes >> 20) + " MiB is too large for an image (256 MiB at most)");
    const std::string file = read_file(path, "image");
    DecodedImage decoded = decode_image(reinterpret_cast<const uint8_t*>(file.data()), file.size(), path.string());
    at::Tensor img = at::from_blob(decoded.rgb.data(), {decoded.height, decoded.width, 3}, at::kByte).clone();  // [H, W, 3] uint8
    at::Tensor x = img.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);         // [1, 3, H, W] in 0..255
    const int64_t h = decoded.height, w = decoded.width;
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
