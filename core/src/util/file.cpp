#include "engram/file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
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

uint64_t memory_budget_bytes() {
    if (const char* env = std::getenv("ENGRAM_MEMORY_LIMIT_MB"); env && *env) {
        char* end = nullptr;
        const unsigned long long mb = std::strtoull(env, &end, 10);
        if (end && *end == '\0' && mb > 0 && mb < (uint64_t{1} << 40)) return mb << 20;
        throw Error(ErrorKind::Argument, std::string("ENGRAM_MEMORY_LIMIT_MB must be a positive number of MiB, got '") + env + "'");
    }
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return UINT64_MAX;  // unknown: nothing is refused
    return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

void require_memory(uint64_t bytes, std::string_view what) {
    const uint64_t budget = memory_budget_bytes();
    if (bytes <= budget) return;
    auto size = [](uint64_t b) {
        char buf[32];
        if (b < (uint64_t{1} << 30)) std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / double(1 << 20));
        else std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / double(uint64_t{1} << 30));
        return std::string(buf);
    };
    const bool limited = std::getenv("ENGRAM_MEMORY_LIMIT_MB") && *std::getenv("ENGRAM_MEMORY_LIMIT_MB");
    throw Error(ErrorKind::Argument, std::string(what) + " needs " + size(bytes) + " of memory, more than the " + size(budget) + " " +
                                         (limited ? "that ENGRAM_MEMORY_LIMIT_MB allows" : "this machine has") + "; nothing was loaded");
}

}  // namespace engram
