#include "engram/about.h"

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <sqlite3.h>
#include <torch/csrc/api/include/torch/version.h>

#include <dlfcn.h>
#include <jconfig.h>
#include <png.h>

#define ENGRAM_STRINGIFY_(x) #x
#define ENGRAM_STRINGIFY(x) ENGRAM_STRINGIFY_(x)

namespace engram {

namespace {

// OpenBLAS reports its build configuration ("OpenBLAS 0.3.21 DYNAMIC_ARCH ...") through
// openblas_get_config when it is the BLAS in use; another BLAS leaves the entry as "not loaded".
std::string openblas_version() {
    using ConfigFn = const char* (*)();
    auto fn = reinterpret_cast<ConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
    if (!fn) return "not loaded (another BLAS is in use)";
    std::string config = fn();
    return config.rfind("OpenBLAS ", 0) == 0 ? config.substr(9) : config;
}

}  // namespace

const char* engram_version() { return ENGRAM_VERSION; }

std::vector<LibraryInfo> core_libraries() {
    return {
        {"libtorch", TORCH_VERSION, "BSD-3-Clause"},
        {"OpenBLAS", openblas_version(), "BSD-3-Clause"},
        {"SQLite", sqlite3_libversion(), "blessing (public domain)"},
        {"OpenSSL", OpenSSL_version(OPENSSL_VERSION), "Apache-2.0"},
        {"yaml-cpp", ENGRAM_YAML_CPP_VERSION, "MIT"},
        {"nlohmann-json", std::to_string(NLOHMANN_JSON_VERSION_MAJOR) + "." + std::to_string(NLOHMANN_JSON_VERSION_MINOR) + "." +
                              std::to_string(NLOHMANN_JSON_VERSION_PATCH),
         "MIT"},
        {"libpng", png_get_libpng_ver(nullptr), "Libpng"},
        {"libjpeg-turbo", ENGRAM_STRINGIFY(LIBJPEG_TURBO_VERSION), "IJG AND BSD-3-Clause AND Zlib"},
        {"stb_image_write", ENGRAM_STB_IMAGE_VERSION, "MIT OR Unlicense"},
        {"SentencePiece", ENGRAM_SENTENCEPIECE_VERSION, "Apache-2.0"},
    };
}

}  // namespace engram
