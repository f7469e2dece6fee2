#include "engram/sha256.h"

#include <openssl/evp.h>

#include "engram/error.h"

namespace engram {

struct Sha256::Impl {
    EVP_MD_CTX* ctx = nullptr;
    bool done = false;
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
    impl_->ctx = EVP_MD_CTX_new();
    if (!impl_->ctx || EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr) != 1)
        throw Error(ErrorKind::Internal, "OpenSSL: cannot initialise SHA-256");
}

Sha256::~Sha256() { EVP_MD_CTX_free(impl_->ctx); }

void Sha256::update(const void* data, size_t size) {
    if (impl_->done) throw Error(ErrorKind::Internal, "Sha256::update after hex_digest");
    // EVP_DigestUpdate takes size_t, but feed large mappings in chunks to stay friendly to page-in.
    const auto* p = static_cast<const uint8_t*>(data);
    constexpr size_t kChunk = size_t{1} << 26;
    while (size > 0) {
        size_t n = size < kChunk ? size : kChunk;
        EVP_DigestUpdate(impl_->ctx, p, n);
        p += n;
        size -= n;
    }
}

void Sha256::update_u64(uint64_t value) {
    uint8_t le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(value >> (8 * i));
    update(le, 8);
}

std::string Sha256::hex_digest() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(impl_->ctx, digest, &len);
    impl_->done = true;
    static const char* hex = "0123456789abcdef";
    std::string out;
    out.reserve(2 * len);
    for (unsigned i = 0; i < len; ++i) {
        out.push_back(hex[digest[i] >> 4]);
        out.push_back(hex[digest[i] & 15]);
    }
    return out;
}

std::string sha256_hex(const void* data, size_t size) {
    Sha256 h;
    h.update(data, size);
    return h.hex_digest();
}

}  // namespace engram
