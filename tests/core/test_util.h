// Helpers shared by the core tests.
#pragma once

#include <ATen/ATen.h>

#include <QProcess>
#include <QString>
#include <QStringList>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "engram/error.h"
#include "engram/sha256.h"

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

#ifdef ENGRAM_CLI_PATH
// engram-cli run as a user would: exit code (-1 when it crashed), stdout, stderr.
struct Run {
    int code;
    QByteArray out, err;
};

inline Run cli(const QStringList& args, int timeout_ms = 300000) {
    QProcess p;
    p.start(QString(ENGRAM_CLI_PATH), args);
    p.waitForFinished(timeout_ms);
    return {p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1, p.readAllStandardOutput(), p.readAllStandardError()};
}
#endif

inline QString q(const std::filesystem::path& p) { return QString::fromStdString(p.string()); }

// SHA-256 of a file's bytes: "the file is unchanged" in one comparison.
inline std::string file_sha(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return sha256_hex(bytes.data(), bytes.size());
}

// The engram::Error message `f` throws; empty when it throws none.
template <typename F>
QString error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return QString::fromStdString(e.what());
    }
    return {};
}

}  // namespace engram::test
