// A Hugging Face checkpoint folder: config.json plus model.safetensors, or shards listed in
// model.safetensors.index.json. Files are memory-mapped read-only; tensors are handed out as
// zero-copy views that keep their mapping alive.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/safetensors.h"

namespace engram {

class MappedFile;

struct CheckpointTensor {
    size_t file = 0;  // index into Checkpoint::files()
    TensorInfo info;
};

class Checkpoint {
public:
    // Opens and validates every shard header. Throws engram::Error naming the file at fault.
    static Checkpoint open(const std::filesystem::path& dir);
    // A single .safetensors file without a config (used by `forward --inputs`).
    static Checkpoint open_file(const std::filesystem::path& file);

    const std::filesystem::path& dir() const { return dir_; }
    const nlohmann::json& config() const { return config_; }
    const std::map<std::string, CheckpointTensor>& tensors() const { return tensors_; }
    const std::vector<std::filesystem::path>& file_paths() const { return paths_; }

    bool has(const std::string& name) const { return tensors_.count(name) != 0; }
    const TensorInfo& info(const std::string& name) const;
    // A view of the stored bytes in the stored dtype: no copy when the data is suitably aligned.
    at::Tensor tensor(const std::string& name) const;
    // The raw stored bytes of a tensor (for fingerprints).
    std::pair<const uint8_t*, size_t> bytes(const std::string& name) const;

    // The dtype most parameters are stored in ("F32", "F16", "BF16").
    DType stored_dtype() const;
    uint64_t total_bytes() const;

private:
    std::filesystem::path dir_;
    nlohmann::json config_;
    std::vector<std::filesystem::path> paths_;
    std::vector<std::shared_ptr<MappedFile>> files_;
    std::vector<uint64_t> data_offsets_;
    std::map<std::string, CheckpointTensor> tensors_;

    void add_file(const std::filesystem::path& path);
};

// at::ScalarType for a safetensors dtype, and back. The reverse throws Error(Unsupported) naming
// `what` for a type safetensors cannot hold.
c10::ScalarType to_scalar_type(DType dtype);
DType dtype_from_scalar_type(c10::ScalarType type, const std::string& what);

// Reads a JSON file, naming it in errors.
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace engram

namespace engram {

// Writes tensors (any dtype libtorch holds that safetensors names) to a .safetensors file, via a
// temporary file and an atomic rename so a crash never leaves half a file behind.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The model fingerprint: SHA-256 over every tensor in canonical (name) order, each contributing
// its name, dtype, shape and stored bytes. Cached under the engram cache folder keyed by the
// folder's path and each file's size and modification time, so it is computed once per checkpoint.
std::string checkpoint_fingerprint(const Checkpoint& ck, bool use_cache = true);

// $ENGRAM_CACHE_DIR, else $XDG_CACHE_HOME/engram, else ~/.cache/engram (created on demand).
std::filesystem::path engram_cache_dir();

}  // namespace engram
