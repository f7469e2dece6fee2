// What Engram is built from: the libraries it links, their versions as loaded, and their licences,
// for Help > About and `--version`-style reports.
#pragma once

#include <string>
#include <vector>

namespace engram {

struct LibraryInfo {
    std::string name;
    std::string version;  // as reported at run time where the library can say, else as built
    std::string licence;  // SPDX identifier
};

// Engram's semantic version ("0.2.0"), as recorded in the projects it writes.
const char* engram_version();

// The core's libraries (libtorch, OpenBLAS, SQLite, OpenSSL, yaml-cpp, nlohmann-json, libpng,
// libjpeg-turbo, stb_image_write, SentencePiece); front ends add their own (Qt, QCustomPlot).
std::vector<LibraryInfo> core_libraries();

}  // namespace engram
