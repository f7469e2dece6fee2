// Helpers shared by the core tests.
#pragma once

#include <ATen/ATen.h>

#include <QString>
#include <filesystem>
#include <string>

namespace engram::test {

inline std::filesystem::path data_dir() { return std::filesystem::path(ENGRAM_TEST_DATA); }
inline std::filesystem::path reference_dir(const std::string& name) { return data_dir() / "reference" / name; }

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
    return (a.to(at::kCPU).to(at::kDouble) - b.to(at::kCPU).to(at::kDouble)).abs().max().item<double>();
}

// A fresh, empty folder under the system temp dir, removed by the destructor.
struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& tag) {
        path = std::filesystem::temp_directory_path() /
               ("engram-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    static int& counter() {
        static int c = 0;
        return c;
    }
};

}  // namespace engram::test
