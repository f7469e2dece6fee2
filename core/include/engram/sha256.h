// Incremental SHA-256 (OpenSSL's EVP underneath), for fingerprints, checksums and state hashes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace engram {

class Sha256 {
public:
    Sha256();
    ~Sha256();
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;

    void update(const void* data, size_t size);
    void update(std::string_view text) { update(text.data(), text.size()); }
    void update_u64(uint64_t value);  // little-endian, so hashes agree across machines
    std::string hex_digest();         // finalises; the object is spent afterwards

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

std::string sha256_hex(const void* data, size_t size);

}  // namespace engram
