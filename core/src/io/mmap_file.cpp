#include "io/mmap_file.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engram/error.h"

namespace engram {

namespace {
struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};
}  // namespace

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
    Fd f;
    f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) throw Error(ErrorKind::Io, path.string() + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) throw Error(ErrorKind::Io, path.string() + ": cannot stat (" + std::strerror(errno) + ")");
    if (!S_ISREG(st.st_mode)) throw Error(ErrorKind::Io, path.string() + ": not a regular file");
    size_ = static_cast<size_t>(st.st_size);
    if (size_ == 0) return;  // mmap of length 0 fails; an empty mapping is a valid (if useless) file
    // MAP_PRIVATE + PROT_READ: the checkpoint is immutable; edited tensors are always copies.
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, f.fd, 0);
    if (p == MAP_FAILED) throw Error(ErrorKind::Io, path.string() + ": cannot mmap (" + std::strerror(errno) + ")");
    data_ = static_cast<uint8_t*>(p);
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(data_, size_);
}

}  // namespace engram
