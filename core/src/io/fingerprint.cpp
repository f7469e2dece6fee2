#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sys/stat.h>
#include <unistd.h>

#include "engram/checkpoint.h"
#include "engram/error.h"
#include "engram/sha256.h"

namespace engram {

namespace fs = std::filesystem;

fs::path engram_cache_dir() {
    fs::path dir;
    if (const char* e = std::getenv("ENGRAM_CACHE_DIR"); e && *e) dir = e;
    else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) dir = fs::path(x) / "engram";
    else if (const char* h = std::getenv("HOME"); h && *h) dir = fs::path(h) / ".cache" / "engram";
    else dir = fs::temp_directory_path() / "engram-cache";
    std::error_code ec;
    fs::create_directories(dir, ec);
    return dir;
}

namespace {

// What the cached value depends on: every file's absolute path, size and mtime (ns).
std::string cache_key(const Checkpoint& ck) {
    Sha256 h;
    h.update("engram-fingerprint-v1");
    for (const auto& p : ck.file_paths()) {
        struct stat st {};
        if (::stat(p.c_str(), &st) != 0) throw Error(ErrorKind::Io, p.string() + ": cannot stat");
        h.update(fs::absolute(p).lexically_normal().string());
        h.update_u64(static_cast<uint64_t>(st.st_size));
        h.update_u64(static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000ull + static_cast<uint64_t>(st.st_mtim.tv_nsec));
    }
    return h.hex_digest();
}

std::string compute_fingerprint(const Checkpoint& ck) {
    Sha256 h;
    h.update("engram-model-v1");
    for (const auto& [name, entry] : ck.tensors()) {  // std::map: sorted by name
        h.update_u64(name.size());
        h.update(name);
        h.update(dtype_name(entry.info.dtype));
        h.update_u64(entry.info.shape.size());
        for (int64_t d : entry.info.shape) h.update_u64(static_cast<uint64_t>(d));
        auto [ptr, n] = ck.bytes(name);
        h.update_u64(n);
        h.update(ptr, n);
    }
    return h.hex_digest();
}

}  // namespace

std::string checkpoint_fingerprint(const Checkpoint& ck, bool use_cache) {
    if (!use_cache) return compute_fingerprint(ck);
    const fs::path file = engram_cache_dir() / "fingerprints" / (cache_key(ck) + ".txt");
    {
        std::ifstream in(file);
        std::string cached;
        if (in && std::getline(in, cached) && cached.size() == 64) return cached;
    }
    std::string fp = compute_fingerprint(ck);
    std::error_code ec;
    fs::create_directories(file.parent_path(), ec);
    const fs::path tmp = file.string() + "." + std::to_string(::getpid()) + ".tmp";
    {
        std::ofstream out(tmp);
        out << fp << "\n";
    }
    fs::rename(tmp, file, ec);  // a cache that cannot be written is not an error
    if (ec) fs::remove(tmp, ec);
    return fp;
}

}  // namespace engram
