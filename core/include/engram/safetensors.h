// The safetensors format, torch-free: header parsing with every bound checked, and dtypes.
//
// Layout of a file: [u64 little-endian header_len][header_len bytes of JSON][data section].
// The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
// to the data section) plus an optional "__metadata__" string map.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, Bool };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // the safetensors spelling: "F32", "BF16", ...
std::optional<DType> dtype_from_name(std::string_view name);

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    uint64_t begin = 0;  // byte offsets into the data section, [begin, end)
    uint64_t end = 0;

    int64_t numel() const;
    uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
    uint64_t data_offset = 0;  // where the data section starts in the file: 8 + header_len
    std::vector<TensorInfo> tensors;  // sorted by begin offset
    std::map<std::string, std::string> metadata;
};

// Largest header we accept; the format's reference implementation uses the same 100 MB cap.
inline constexpr uint64_t kMaxSafetensorsHeader = 100ull * 1024 * 1024;

// Parses and validates the header of a whole file held in memory (`bytes` covers the full file,
// so data offsets can be checked against its size). Checks: the length prefix fits in the file,
// the JSON is an object of well-formed entries, dtypes are known, shapes are non-negative and
// their byte size matches the offsets (without overflow), offsets lie inside the data section, and
// no two tensors overlap. Throws engram::Error(Format) naming `source` and the tensor at fault.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& source);

}  // namespace engram
