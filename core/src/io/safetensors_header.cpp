#include "engram/safetensors.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "engram/error.h"

namespace engram {

namespace {

struct DTypeRow {
    DType dtype;
    const char* name;
    size_t size;
};

constexpr std::array<DTypeRow, 10> kDTypes = {{
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::I16, "I16", 2}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::Bool, "BOOL", 1},
}};

const DTypeRow& row_of(DType dtype) {
    for (const auto& row : kDTypes)
        if (row.dtype == dtype) return row;
    throw Error(ErrorKind::Internal, "unknown dtype enum value");
}

Error format_error(const std::string& source, const std::string& what) {
    return Error(ErrorKind::Format, source + ": " + what);
}

}  // namespace

size_t dtype_size(DType dtype) { return row_of(dtype).size; }
const char* dtype_name(DType dtype) { return row_of(dtype).name; }

std::optional<DType> dtype_from_name(std::string_view name) {
    for (const auto& row : kDTypes)
        if (name == row.name) return row.dtype;
    return std::nullopt;
}

int64_t TensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& source) {
    if (size < 8) throw format_error(source, "truncated safetensors file (" + std::to_string(size) + " bytes, no header length)");
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
    if (header_len > size - 8)
        throw format_error(source, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                                       std::to_string(size) + " bytes)");
    if (header_len > kMaxSafetensorsHeader)
        throw format_error(source, "header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
    if (header_len < 2) throw format_error(source, "header too short to be a JSON object");

    nlohmann::json header;
    try {
        header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len);
    } catch (const nlohmann::json::exception& e) {
        throw format_error(source, std::string("header is not valid JSON (") + e.what() + ")");
    }
    if (!header.is_object()) throw format_error(source, "header is not a JSON object");

    SafetensorsHeader out;
    out.data_offset = 8 + header_len;
    const uint64_t data_size = size - out.data_offset;

    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            if (!entry.is_object()) throw format_error(source, "__metadata__ is not an object");
            for (const auto& [key, value] : entry.items()) {
                if (!value.is_string()) throw format_error(source, "__metadata__." + key + " is not a string");
                out.metadata[key] = value.get<std::string>();
            }
            continue;
        }
        const std::string where = "tensor '" + name + "'";
        if (!entry.is_object()) throw format_error(source, where + ": entry is not an object");
        auto dtype_it = entry.find("dtype");
        auto shape_it = entry.find("shape");
        auto offsets_it = entry.find("data_offsets");
        if (dtype_it == entry.end() || !dtype_it->is_string())
            throw format_error(source, where + ": missing or non-string dtype");
        if (shape_it == entry.end() || !shape_it->is_array())
            throw format_error(source, where + ": missing or non-array shape");
        if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2)
            throw format_error(source, where + ": data_offsets must be [begin, end]");

        TensorInfo info;
        info.name = name;
        auto dtype = dtype_from_name(dtype_it->get<std::string>());
        if (!dtype) throw format_error(source, where + ": unsupported dtype " + dtype_it->get<std::string>());
        info.dtype = *dtype;

        // Byte size of the shape, computed with overflow checks.
        unsigned __int128 nbytes = dtype_size(info.dtype);
        for (const auto& dim : *shape_it) {
            if (!dim.is_number_integer() || dim.get<int64_t>() < 0)
                throw format_error(source, where + ": shape has a negative or non-integer dimension");
            info.shape.push_back(dim.get<int64_t>());
            nbytes *= static_cast<uint64_t>(info.shape.back());
            if (nbytes > std::numeric_limits<uint64_t>::max())
                throw format_error(source, where + ": shape is too large");
        }
        for (const auto& off : *offsets_it)
            if (!off.is_number_unsigned() && !(off.is_number_integer() && off.get<int64_t>() >= 0))
                throw format_error(source, where + ": data_offsets are not non-negative integers");
        info.begin = (*offsets_it)[0].get<uint64_t>();
        info.end = (*offsets_it)[1].get<uint64_t>();
        if (info.begin > info.end) throw format_error(source, where + ": data_offsets begin > end");
        if (info.end > data_size)
            throw format_error(source, where + ": data_offsets [" + std::to_string(info.begin) + ", " +
                                           std::to_string(info.end) + ") lie outside the data section (" +
                                           std::to_string(data_size) + " bytes); the file is truncated or corrupt");
        if (info.end - info.begin != static_cast<uint64_t>(nbytes))
            throw format_error(source, where + ": " + std::to_string(info.end - info.begin) +
                                           " bytes at data_offsets but dtype " + dtype_name(info.dtype) + " and shape need " +
                                           std::to_string(static_cast<uint64_t>(nbytes)));
        out.tensors.push_back(std::move(info));
    }

    std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (size_t i = 1; i < out.tensors.size(); ++i) {
        const auto& prev = out.tensors[i - 1];
        const auto& cur = out.tensors[i];
        if (cur.begin < prev.end && cur.nbytes() > 0 && prev.nbytes() > 0)
            throw format_error(source, "tensors '" + prev.name + "' and '" + cur.name + "' overlap in the data section");
    }
    return out;
}

}  // namespace engram
