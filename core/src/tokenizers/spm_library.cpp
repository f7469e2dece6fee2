#include "tokenizers/spm_library.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "engram/error.h"
#include "tokenizers/spm_shim.h"

#if defined(__SANITIZE_ADDRESS__)
#define ENGRAM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ENGRAM_ASAN 1
#endif
#endif
#ifndef ENGRAM_ASAN
#define ENGRAM_ASAN 0
#endif

namespace engram::tok {

struct SpmModel::Api {
    decltype(&espm_load) load;
    decltype(&espm_free) free_model;
    decltype(&espm_piece_size) piece_size;
    decltype(&espm_id_to_piece) id_to_piece;
    decltype(&espm_piece_to_id) piece_to_id;
    decltype(&espm_piece_flags) piece_flags;
    decltype(&espm_bos_id) bos_id;
    decltype(&espm_eos_id) eos_id;
    decltype(&espm_encode) encode;
    decltype(&espm_decode) decode;
};

namespace {

// Where the module may be: $ENGRAM_SPM_MODULE, the build tree, the install tree, and beside the
// running executable's ../lib/engram.
std::vector<std::string> module_candidates() {
    std::vector<std::string> out;
    if (const char* env = std::getenv("ENGRAM_SPM_MODULE"); env && *env) out.emplace_back(env);
    // The module beside the running executable first, so an installed binary never loads the build tree's.
    std::error_code ec;
    auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) out.push_back((exe.parent_path().parent_path() / "lib" / "engram" / "libengram_spm.so").string());
#ifdef ENGRAM_SPM_MODULE_INSTALL_PATH
    out.emplace_back(ENGRAM_SPM_MODULE_INSTALL_PATH);
#endif
#ifdef ENGRAM_SPM_MODULE_BUILD_PATH
    out.emplace_back(ENGRAM_SPM_MODULE_BUILD_PATH);
#endif
    return out;
}

const SpmModel::Api* load_api() {
    static std::once_flag once;
    static SpmModel::Api api{};
    static std::string failure;
    std::call_once(once, [] {
        void* handle = nullptr;
        std::string tried;
        for (const auto& path : module_candidates()) {
            if (!std::filesystem::exists(path)) continue;
            // DEEPBIND: libsentencepiece must bind to its own protobuf copy, not libtorch's. The
            // sanitizer runtimes abort on DEEPBIND, so sanitized builds (gcc's macro, or clang's
            // feature test: clang 14 does not define the macro) load it plainly.
#if defined(RTLD_DEEPBIND) && !ENGRAM_ASAN
            handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#else
            handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
            if (handle) break;
            const char* why = dlerror();
            tried += " " + path + " (" + (why ? why : "?") + ")";
        }
        if (!handle) {
            failure = "cannot load the SentencePiece module libengram_spm.so" + (tried.empty() ? std::string(" (not found)") : ":" + tried);
            return;
        }
        auto sym = [&](const char* name) {
            void* p = dlsym(handle, name);
            if (!p) failure = std::string("libengram_spm.so lacks ") + name;
            return p;
        };
        api.load = reinterpret_cast<decltype(api.load)>(sym("espm_load"));
        api.free_model = reinterpret_cast<decltype(api.free_model)>(sym("espm_free"));
        api.piece_size = reinterpret_cast<decltype(api.piece_size)>(sym("espm_piece_size"));
        api.id_to_piece = reinterpret_cast<decltype(api.id_to_piece)>(sym("espm_id_to_piece"));
        api.piece_to_id = reinterpret_cast<decltype(api.piece_to_id)>(sym("espm_piece_to_id"));
        api.piece_flags = reinterpret_cast<decltype(api.piece_flags)>(sym("espm_piece_flags"));
        api.bos_id = reinterpret_cast<decltype(api.bos_id)>(sym("espm_bos_id"));
        api.eos_id = reinterpret_cast<decltype(api.eos_id)>(sym("espm_eos_id"));
        api.encode = reinterpret_cast<decltype(api.encode)>(sym("espm_encode"));
        api.decode = reinterpret_cast<decltype(api.decode)>(sym("espm_decode"));
    });
    if (!failure.empty()) throw Error(ErrorKind::Io, failure);
    return &api;
}

}  // namespace

SpmModel::SpmModel(const std::string& path) : api_(load_api()), model_(nullptr), path_(path) {
    char err[512] = {0};
    model_ = api_->load(path.c_str(), err, sizeof err);
    if (!model_) throw Error(ErrorKind::Format, path + ": not a SentencePiece model (" + err + ")");
}

SpmModel::~SpmModel() {
    if (model_) api_->free_model(static_cast<espm_model*>(model_));
}

#define M static_cast<const espm_model*>(model_)

int SpmModel::piece_size() const { return api_->piece_size(M); }
std::string SpmModel::id_to_piece(int id) const {
    size_t len = 0;
    const char* p = api_->id_to_piece(M, id, &len);
    return std::string(p, len);
}
int SpmModel::piece_to_id(std::string_view piece) const { return api_->piece_to_id(M, piece.data(), piece.size()); }
bool SpmModel::is_control(int id) const { return api_->piece_flags(M, id) & ESPM_CONTROL; }
bool SpmModel::is_unknown(int id) const { return api_->piece_flags(M, id) & ESPM_UNKNOWN; }
bool SpmModel::is_byte(int id) const { return api_->piece_flags(M, id) & ESPM_BYTE; }
int SpmModel::bos_id() const { return api_->bos_id(M); }
int SpmModel::eos_id() const { return api_->eos_id(M); }

std::vector<SpmPiece> SpmModel::encode(std::string_view text) const {
    std::vector<SpmPiece> out;
    char err[512] = {0};
    auto fn = [](void* user, int id, const char* piece, size_t len, size_t begin, size_t end) {
        static_cast<std::vector<SpmPiece>*>(user)->push_back({id, std::string(piece, len), begin, end});
    };
    if (api_->encode(M, text.data(), text.size(), fn, &out, err, sizeof err) != 0)
        throw Error(ErrorKind::Internal, path_ + ": SentencePiece encoding failed: " + err);
    return out;
}

std::string SpmModel::decode(const std::vector<int>& ids) const {
    std::string out;
    char err[512] = {0};
    auto fn = [](void* user, const char* text, size_t len) { static_cast<std::string*>(user)->assign(text, len); };
    if (api_->decode(M, ids.data(), ids.size(), fn, &out, err, sizeof err) != 0)
        throw Error(ErrorKind::Internal, path_ + ": SentencePiece decoding failed: " + err);
    return out;
}

#undef M

}  // namespace engram::tok
