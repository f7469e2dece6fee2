// PNG and JPEG decoding (image_decode.h). Both C libraries report errors by longjmp back to the
// decode function's setjmp, so the code between the two creates no object with a destructor:
// everything that owns memory is declared before setjmp and outlives the jump.
#include "engram/image_decode.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>

#include <jpeglib.h>
#include <png.h>

#include "engram/error.h"

namespace engram {

namespace {

// Empty when the dimensions are accepted.
std::string size_problem(int64_t width, int64_t height, const char* format) {
    if (width <= 0 || height <= 0) return std::string("a ") + format + " image of " + std::to_string(width) + "x" + std::to_string(height) + " pixels";
    if (width > kMaxImageSide || height > kMaxImageSide || width * height > kMaxImagePixels)
        return std::string("the ") + format + " image is " + std::to_string(width) + "x" + std::to_string(height) + " pixels; images up to " +
               std::to_string(kMaxImageSide) + " pixels a side and " + std::to_string(kMaxImagePixels / 1'000'000) + " megapixels are read";
    return {};
}

// ---- PNG ----

struct PngState {
    const uint8_t* data;
    size_t size, pos;
    char message[200];
};

void png_read_bytes(png_structp png, png_bytep out, png_size_t n) {
    auto* s = static_cast<PngState*>(png_get_io_ptr(png));
    if (n > s->size - s->pos) png_error(png, "the file ends early");
    std::memcpy(out, s->data + s->pos, n);
    s->pos += n;
}

void png_fail(png_structp png, png_const_charp message) {
    auto* s = static_cast<PngState*>(png_get_error_ptr(png));
    std::snprintf(s->message, sizeof s->message, "cannot decode PNG (%s)", message);
    png_longjmp(png, 1);
}

void png_quiet(png_structp, png_const_charp) {}

// Fills `out`; returns the problem, empty on success.
std::string decode_png(const uint8_t* data, size_t size, DecodedImage& out) {
    PngState s{data, size, 0, {}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s, png_fail, png_quiet);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!info) {
        png_destroy_read_struct(&png, nullptr, nullptr);
        return "libpng could not start";
    }
    std::vector<png_bytep> rows;
    std::string problem;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, nullptr);
        return s.message;
    }
    png_set_read_fn(png, &s, png_read_bytes);
    png_set_chunk_malloc_max(png, 8 << 20);  // text, ICC and other ancillary chunks: 8 MiB each at most
    png_read_info(png, info);
    const int64_t width = png_get_image_width(png, info), height = png_get_image_height(png, info);
    problem = size_problem(width, height, "PNG");
    if (!problem.empty()) {
        png_destroy_read_struct(&png, &info, nullptr);
        return problem;
    }
    // To 8-bit RGB as PIL's convert("RGB") does: 16-bit samples keep their high byte, palettes and
    // gray expand, alpha is dropped (not composited), no gamma correction.
    png_set_strip_16(png);
    png_set_palette_to_rgb(png);
    png_set_expand_gray_1_2_4_to_8(png);
    png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != static_cast<size_t>(width) * 3) png_error(png, "unexpected row layout after conversion to RGB");
    out.width = width;
    out.height = height;
    out.rgb.resize(static_cast<size_t>(width * height * 3));
    rows.resize(static_cast<size_t>(height));
    for (int64_t y = 0; y < height; ++y) rows[static_cast<size_t>(y)] = out.rgb.data() + y * width * 3;
    png_read_image(png, rows.data());
    png_read_end(png, nullptr);
    png_destroy_read_struct(&png, &info, nullptr);
    return {};
}

// ---- JPEG ----

constexpr int kMaxJpegScans = 500;  // progressive files with thousands of scans only burn time

struct JpegState {
    jpeg_error_mgr err;
    jpeg_progress_mgr progress;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX + 40];
};

void jpeg_fail(j_common_ptr cinfo) {
    auto* s = reinterpret_cast<JpegState*>(cinfo->err);
    char text[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, text);
    std::snprintf(s->message, sizeof s->message, "cannot decode JPEG (%s)", text);
    std::longjmp(s->jump, 1);
}

void jpeg_quiet(j_common_ptr, int) {}  // warnings (a truncated file is one) are not printed

void jpeg_count_scans(j_common_ptr cinfo) {
    auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
    if (d->input_scan_number <= kMaxJpegScans) return;
    auto* s = reinterpret_cast<JpegState*>(cinfo->err);
    std::snprintf(s->message, sizeof s->message, "cannot decode JPEG (more than %d progressive scans)", kMaxJpegScans);
    std::longjmp(s->jump, 1);
}

std::string decode_jpeg(const uint8_t* data, size_t size, DecodedImage& out) {
    jpeg_decompress_struct cinfo{};
    JpegState s{};
    std::string problem;
    cinfo.err = jpeg_std_error(&s.err);
    s.err.error_exit = jpeg_fail;
    s.err.emit_message = jpeg_quiet;
    if (setjmp(s.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return s.message;
    }
    jpeg_create_decompress(&cinfo);
    s.progress.progress_monitor = jpeg_count_scans;
    cinfo.progress = &s.progress;
    cinfo.mem->max_memory_to_use = 1024L << 20;
    jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
    jpeg_read_header(&cinfo, TRUE);
    problem = size_problem(cinfo.image_width, cinfo.image_height, "JPEG");
    if (!problem.empty()) {
        jpeg_destroy_decompress(&cinfo);
        return problem;
    }
    cinfo.out_color_space = JCS_RGB;  // from gray or YCbCr; CMYK fails with the library's message
    jpeg_start_decompress(&cinfo);
    const int64_t width = cinfo.output_width, height = cinfo.output_height;
    if (cinfo.output_components != 3 || width != cinfo.image_width || height != cinfo.image_height) {
        jpeg_destroy_decompress(&cinfo);
        return "cannot decode JPEG (unexpected layout after conversion to RGB)";
    }
    out.width = width;
    out.height = height;
    out.rgb.resize(static_cast<size_t>(width * height * 3));
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out.rgb.data() + static_cast<size_t>(cinfo.output_scanline) * static_cast<size_t>(width) * 3;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) break;  // suspension cannot happen with a memory source
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return {};
}

}  // namespace

DecodedImage decode_image(const uint8_t* data, size_t size, const std::string& what) {
    static constexpr uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    DecodedImage out;
    std::string problem;
    if (size >= 8 && std::memcmp(data, kPng, 8) == 0) problem = decode_png(data, size, out);
    else if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) problem = decode_jpeg(data, size, out);
    else problem = "cannot decode image (not a PNG or JPEG file; convert it to PNG)";
    if (!problem.empty()) throw Error(ErrorKind::Format, what + ": " + problem);
    return out;
}

}  // namespace engram
