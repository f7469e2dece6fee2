// RAII read-only memory mapping of a whole file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace engram {

class MappedFile {
public:
    explicit MappedFile(const std::filesystem::path& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
    uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

}  // namespace engram
