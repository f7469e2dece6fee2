#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>

#include "engram/checkpoint.h"
#include "engram/error.h"

namespace engram {

namespace fs = std::filesystem;

namespace {
DType dtype_of(const at::Tensor& t, const std::string& name) {
    switch (t.scalar_type()) {
        case at::kDouble: return DType::F64;
        case at::kFloat: return DType::F32;
        case at::kHalf: return DType::F16;
        case at::kBFloat16: return DType::BF16;
        case at::kLong: return DType::I64;
        case at::kInt: return DType::I32;
        case at::kShort: return DType::I16;
        case at::kChar: return DType::I8;
        case at::kByte: return DType::U8;
        case at::kBool: return DType::Bool;
        default: throw Error(ErrorKind::Unsupported, "tensor '" + name + "': dtype cannot be stored in safetensors");
    }
}
}  // namespace

void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<at::Tensor> contiguous;
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
        at::Tensor c = t.detach().to(at::kCPU).contiguous();
        const uint64_t n = static_cast<uint64_t>(c.numel()) * c.element_size();
        header[name] = {{"dtype", dtype_name(dtype_of(c, name))}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
        offset += n;
        contiguous.push_back(std::move(c));
    }
    std::string text = header.dump();
    while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // keep the data section 8-byte aligned

    const fs::path tmp = path.string() + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw Error(ErrorKind::Io, tmp.string() + ": cannot create");
        uint8_t len[8];
        for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
        out.write(reinterpret_cast<const char*>(len), 8);
        out.write(text.data(), static_cast<std::streamsize>(text.size()));
        for (const auto& c : contiguous)
            out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
        out.flush();
        if (!out) throw Error(ErrorKind::Io, tmp.string() + ": write failed (disk full?)");
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    if (ec) {
        fs::remove(tmp, ec);
        throw Error(ErrorKind::Io, path.string() + ": cannot move the written file into place");
    }
}

}  // namespace engram
