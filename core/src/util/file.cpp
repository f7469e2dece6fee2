#include "engram/file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "engram/error.h"

namespace engram {

std::string read_file(const std::filesystem::path& path, std::string_view what) {
    const std::string role = what.empty() ? std::string() : " " + std::string(what);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(ErrorKind::Io, path.string() + ": cannot read" + role + " (" + std::strerror(errno) + ")");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    if (in.bad()) throw Error(ErrorKind::Io, path.string() + ": cannot read" + role + " (a read error)");
    return std::move(buffer).str();
}

}  // namespace engram
