#include "engram/checkpoint.h"

#include <ATen/ATen.h>

#include <fstream>
#include <set>
#include <sstream>

#include "engram/error.h"
#include "io/mmap_file.h"

namespace engram {

namespace fs = std::filesystem;

c10::ScalarType to_scalar_type(DType dtype) {
    switch (dtype) {
        case DType::F64: return at::kDouble;
        case DType::F32: return at::kFloat;
        case DType::F16: return at::kHalf;
        case DType::BF16: return at::kBFloat16;
        case DType::I64: return at::kLong;
        case DType::I32: return at::kInt;
        case DType::I16: return at::kShort;
        case DType::I8: return at::kChar;
        case DType::U8: return at::kByte;
        case DType::Bool: return at::kBool;
    }
    throw Error(ErrorKind::Internal, "unknown dtype");
}

DType dtype_from_scalar_type(c10::ScalarType type, const std::string& what) {
    for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16, DType::I8, DType::U8, DType::Bool})
        if (to_scalar_type(d) == type) return d;
    throw Error(ErrorKind::Unsupported, what + ": dtype " + std::string(c10::toString(type)) + " cannot be stored in safetensors");
}

nlohmann::json read_json_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(ErrorKind::Io, path.string() + ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    try {
        return nlohmann::json::parse(ss.str());
    } catch (const nlohmann::json::exception& e) {
        throw Error(ErrorKind::Format, path.string() + ": invalid JSON (" + e.what() + ")");
    }
}

void Checkpoint::add_file(const fs::path& path) {
    auto file = std::make_shared<MappedFile>(path);
    SafetensorsHeader header = parse_safetensors_header(file->data(), file->size(), path.string());
    const size_t index = files_.size();
    for (auto& info : header.tensors) {
        if (tensors_.count(info.name))
            throw Error(ErrorKind::Format, path.string() + ": tensor '" + info.name + "' also appears in " +
                                               paths_[tensors_[info.name].file].string());
        std::string name = info.name;
        tensors_[name] = CheckpointTensor{index, std::move(info)};
    }
    files_.push_back(std::move(file));
    paths_.push_back(path);
    data_offsets_.push_back(header.data_offset);
}

Checkpoint Checkpoint::open(const fs::path& dir) {
    Checkpoint ck;
    ck.dir_ = dir;
    if (!fs::is_directory(dir)) throw Error(ErrorKind::Io, dir.string() + ": not a checkpoint folder (no such directory)");
    const fs::path config = dir / "config.json";
    if (!fs::exists(config)) throw Error(ErrorKind::Io, config.string() + ": missing (a HF checkpoint folder needs config.json)");
    ck.config_ = read_json_file(config);
    if (!ck.config_.is_object()) throw Error(ErrorKind::Format, config.string() + ": not a JSON object");

    const fs::path single = dir / "model.safetensors";
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(single)) {
        ck.add_file(single);
    } else if (fs::exists(index)) {
        nlohmann::json idx = read_json_file(index);
        auto map_it = idx.find("weight_map");
        if (map_it == idx.end() || !map_it->is_object())
            throw Error(ErrorKind::Format, index.string() + ": no weight_map object");
        std::set<std::string> shards;
        for (const auto& [name, shard] : map_it->items()) {
            if (!shard.is_string()) throw Error(ErrorKind::Format, index.string() + ": weight_map['" + name + "'] is not a file name");
            const std::string s = shard.get<std::string>();
            if (s.find('/') != std::string::npos || s == "..")
                throw Error(ErrorKind::Format, index.string() + ": shard name '" + s + "' must be a plain file name");
            shards.insert(s);
        }
        for (const auto& s : shards) {
            if (!fs::exists(dir / s)) throw Error(ErrorKind::Io, (dir / s).string() + ": missing shard listed in " + index.string());
            ck.add_file(dir / s);
        }
        for (const auto& [name, shard] : map_it->items()) {
            auto it = ck.tensors_.find(name);
            if (it == ck.tensors_.end())
                throw Error(ErrorKind::Format, index.string() + ": tensor '" + name + "' is not in its shard " + shard.get<std::string>());
            if (ck.paths_[it->second.file].filename() != shard.get<std::string>())
                throw Error(ErrorKind::Format, index.string() + ": tensor '" + name + "' is listed in " + shard.get<std::string>() +
                                                   " but stored in " + ck.paths_[it->second.file].filename().string());
        }
    } else {
        throw Error(ErrorKind::Io, dir.string() + ": no model.safetensors or model.safetensors.index.json");
    }
    return ck;
}

Checkpoint Checkpoint::open_file(const fs::path& file) {
    Checkpoint ck;
    ck.dir_ = file.parent_path();
    ck.config_ = nlohmann::json::object();
    ck.add_file(file);
    return ck;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw Error(ErrorKind::Config, dir_.string() + ": tensor '" + name + "' not found in the checkpoint");
    return it->second.info;
}

std::pair<const uint8_t*, size_t> Checkpoint::bytes(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw Error(ErrorKind::Config, dir_.string() + ": tensor '" + name + "' not found in the checkpoint");
    const auto& entry = it->second;
    const uint8_t* base = files_[entry.file]->data() + data_offsets_[entry.file];
    return {base + entry.info.begin, entry.info.nbytes()};
}

at::Tensor Checkpoint::tensor(const std::string& name) const {
    const TensorInfo& ti = info(name);
    auto [ptr, n] = bytes(name);
    const auto options = at::TensorOptions().dtype(to_scalar_type(ti.dtype));
    if (n == 0) return at::empty(ti.shape, options);
    const bool aligned = reinterpret_cast<uintptr_t>(ptr) % dtype_size(ti.dtype) == 0;
    if (!aligned) {
        at::Tensor out = at::empty(ti.shape, options);
        std::memcpy(out.data_ptr(), ptr, n);
        return out;
    }
    // The deleter holds the mapping: the view stays valid even if the Checkpoint goes away.
    std::shared_ptr<MappedFile> keep = files_[tensors_.at(name).file];
    return at::from_blob(const_cast<uint8_t*>(ptr), ti.shape, [keep](void*) mutable { keep.reset(); }, options);
}

DType Checkpoint::stored_dtype() const {
    std::map<DType, uint64_t> bytes_by_dtype;
    for (const auto& [name, t] : tensors_)
        if (t.info.dtype == DType::F32 || t.info.dtype == DType::F16 || t.info.dtype == DType::BF16 || t.info.dtype == DType::F64)
            bytes_by_dtype[t.info.dtype] += t.info.nbytes();
    DType best = DType::F32;
    uint64_t most = 0;
    for (const auto& [dtype, n] : bytes_by_dtype)
        if (n > most) {
            most = n;
            best = dtype;
        }
    return best;
}

uint64_t Checkpoint::total_bytes() const {
    uint64_t n = 0;
    for (const auto& [name, t] : tensors_) n += t.info.nbytes();
    return n;
}

}  // namespace engram
