#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>

#include "engram/checkpoint.h"
#include "engram/error.h"

namespace engram {

namespace fs = std::filesystem;

void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<at::Tensor> contiguous;
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
        at::Tensor c = t.detach().to(at::kCPU).contiguous();
        const uint64_t n = static_cast<uint64_t>(c.numel()) * c.element_size();
        header[name] = {{"dtype", dtype_name(dtype_from_scalar_type(c.scalar_type(), "tensor '" + name + "'"))}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
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
