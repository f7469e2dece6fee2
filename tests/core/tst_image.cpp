// The image decoder: PNG and JPEG decode to the pixels written, alpha is dropped and gray repeated
// as PIL's convert("RGB") does, other formats and damaged files get one clear error, and stated
// dimensions beyond the caps are refused before any pixel buffer is allocated.
#include <QtTest>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "engram/error.h"
#include "engram/image_decode.h"

using namespace engram;

namespace {

// stb_image_write's callback appends to a byte string.
void append(void* context, void* data, int size) { static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size)); }

std::string png(int w, int h, int comps, const std::vector<uint8_t>& px) {
    std::string out;
    stbi_write_png_to_func(append, &out, w, h, comps, px.data(), w * comps);
    return out;
}

std::vector<uint8_t> pattern(size_t n) {
    std::vector<uint8_t> px(n);
    for (size_t i = 0; i < n; ++i) px[i] = static_cast<uint8_t>((i * 37 + 11) % 251);
    return px;
}

DecodedImage decode(const std::string& bytes) { return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "img"); }

QString error_of(const std::string& bytes) {
    try {
        decode(bytes);
    } catch (const Error& e) {
        return QString::fromStdString(e.what());
    }
    return {};
}

// A PNG signature, an IHDR stating `w` x `h` (8-bit RGB) and an empty IDAT: a decoder that
// allocated from the header alone would ask for gigabytes.
std::string png_header(uint32_t w, uint32_t h) {
    std::string s("\x89PNG\r\n\x1a\n", 8);
    auto be32 = [&](uint32_t v) {
        for (int shift : {24, 16, 8, 0}) s.push_back(static_cast<char>((v >> shift) & 0xff));
    };
    auto chunk = [&](const char* type, const std::string& data) {
        be32(static_cast<uint32_t>(data.size()));
        const size_t start = s.size();
        s += type;
        s += data;
        uint32_t crc = 0xffffffffu;  // over type and data
        for (size_t i = start; i < s.size(); ++i) {
            crc ^= static_cast<uint8_t>(s[i]);
            for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
        }
        be32(crc ^ 0xffffffffu);
    };
    std::string ihdr;
    for (uint32_t v : {w, h})
        for (int shift : {24, 16, 8, 0}) ihdr.push_back(static_cast<char>((v >> shift) & 0xff));
    ihdr += std::string("\x08\x02\x00\x00\x00", 5);
    chunk("IHDR", ihdr);
    chunk("IDAT", "");
    return s;
}

}  // namespace

class TestImage : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void pngRgbIsExact() {
        const auto px = pattern(5 * 3 * 3);
        const DecodedImage img = decode(png(5, 3, 3, px));
        QCOMPARE(img.width, int64_t{5});
        QCOMPARE(img.height, int64_t{3});
        QVERIFY(img.rgb == px);
    }

    void pngAlphaIsDroppedAndGrayRepeated() {
        const auto rgba = pattern(4 * 2 * 4);
        const DecodedImage a = decode(png(4, 2, 4, rgba));
        QCOMPARE(a.rgb.size(), size_t{4 * 2 * 3});
        for (size_t p = 0; p < 8; ++p)
            for (size_t c = 0; c < 3; ++c) QCOMPARE(a.rgb[p * 3 + c], rgba[p * 4 + c]);
        const auto gray = pattern(3 * 3);
        const DecodedImage g = decode(png(3, 3, 1, gray));
        for (size_t p = 0; p < 9; ++p)
            for (size_t c = 0; c < 3; ++c) QCOMPARE(g.rgb[p * 3 + c], gray[p]);
    }

    void jpegDecodesCloseToWhatWasWritten() {
        // A flat colour survives JPEG's lossy coding to within a few levels.
        std::vector<uint8_t> px(16 * 8 * 3);
        for (size_t i = 0; i < px.size(); i += 3) px[i] = 200, px[i + 1] = 40, px[i + 2] = 90;
        std::string jpg;
        QVERIFY(stbi_write_jpg_to_func(append, &jpg, 16, 8, 3, px.data(), 95) != 0);
        const DecodedImage img = decode(jpg);
        QCOMPARE(img.width, int64_t{16});
        QCOMPARE(img.height, int64_t{8});
        for (size_t i = 0; i < px.size(); ++i) QVERIFY2(std::abs(int(img.rgb[i]) - int(px[i])) <= 4, qPrintable(QString::number(i)));
    }

    void otherFormatsAndDamageAreOneClearError() {
        const auto px = pattern(4 * 4 * 3);
        std::string bmp;
        stbi_write_bmp_to_func(append, &bmp, 4, 4, 3, px.data());
        QVERIFY(error_of(bmp).startsWith("img: cannot decode image (not a PNG or JPEG file"));
        QVERIFY(error_of("").contains("not a PNG or JPEG file"));
        const std::string good = png(4, 4, 3, px);
        for (size_t cut : {size_t{8}, size_t{20}, good.size() / 2, good.size() - 13}) {
            const QString err = error_of(good.substr(0, cut));
            QVERIFY2(err.startsWith("img: cannot decode PNG ("), qPrintable(err));
        }
        std::string jpg;
        stbi_write_jpg_to_func(append, &jpg, 4, 4, 3, px.data(), 90);
        QVERIFY2(error_of(jpg.substr(0, 40)).startsWith("img: cannot decode JPEG ("), qPrintable(error_of(jpg.substr(0, 40))));
    }

    void dimensionsAreCappedBeforeDecoding() {
        QString err = error_of(png_header(kMaxImageSide + 1, 10));
        QVERIFY2(err.contains("8193x10") && err.contains("8192 pixels a side"), qPrintable(err));
        err = error_of(png_header(8000, 8000));
        QVERIFY2(err.contains("8000x8000") && err.contains("megapixels"), qPrintable(err));
        err = error_of(png_header(0x7fffffff, 0x7fffffff));
        QVERIFY2(err.startsWith("img: "), qPrintable(err));
        // Within the caps the same header fails only for want of data.
        err = error_of(png_header(64, 64));
        QVERIFY2(err.startsWith("img: cannot decode PNG ("), qPrintable(err));
    }
};

QTEST_GUILESS_MAIN(TestImage)
#include "tst_image.moc"
