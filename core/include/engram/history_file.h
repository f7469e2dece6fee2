// A history file (the engram-history JSON that `export-history` writes and `import-history`
// reads) as plain values. Reading checks everything a file can claim before any tensor exists:
// every field's presence and type, each blob's base64, its SHA-256 and its stated shape against
// its length, each delta's kind, dtype and rank against its bytes, unique edit ids, and bases that
// name only earlier edits of the file. What needs the model (the weight a delta names, its shape,
// the adapter attach point, the replayed state hashes) is checked by Project::import_history.
//
// Torch-free (engram_base), so that fuzz_history_json runs it without libtorch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/delta_kind.h"
#include "engram/safetensors.h"

namespace engram {

// The bytes of a tensor of `shape` at `element_size` bytes per element; nullopt when a dimension
// is negative or the count overflows.
std::optional<uint64_t> tensor_bytes(const std::vector<int64_t>& shape, uint64_t element_size);

// The bytes a stored delta must have: LowRank u [out, r] and v [in, r]; DenseRows r int64 row
// indices then values [r, in]; Dense values [out, in]. nullopt when the claim is impossible (a
// target that is not a positive matrix, a dtype other than F32/F64, a rank out of range, overflow).
std::optional<uint64_t> delta_blob_bytes(DeltaKind kind, const std::vector<int64_t>& shape, DType dtype, int64_t rank);

struct HistoryTensor {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;  // little-endian, exactly tensor_bytes(shape, dtype_size(dtype))
};

struct HistoryDelta {
    std::string tensor;  // HF tensor name
    DeltaKind kind = DeltaKind::Dense;
    std::vector<int64_t> shape;  // the target in slot orientation [out, in]
    DType dtype = DType::F32;
    int64_t rank = 0;
    std::vector<uint8_t> bytes;  // exactly delta_blob_bytes(kind, shape, dtype, rank)
};

struct HistoryArtifact {
    std::string name, kind;
    nlohmann::json meta = nlohmann::json::object();
    HistoryTensor tensor;
};

struct HistoryAdapterOp {
    std::string adapter, kind, attach, op;
    int layer = 0;
    nlohmann::json params = nlohmann::json::object();
    std::vector<HistoryTensor> tensors;
};

struct HistoryEdit {
    int64_t id = 0, seq = 0;
    std::string created_at, method;
    nlohmann::json requests = nlohmann::json::array(), hparams = nlohmann::json::object(), metrics = nlohmann::json::object();
    bool active = true;  // "active" or "reverted"
    double duration_s = 0;
    std::string state_hash_after;
    int64_t parent = 0;                                 // 0: the base model
    std::vector<std::pair<int64_t, bool>> exceptions;   // (edit, included)
    std::vector<HistoryDelta> deltas;
    std::vector<HistoryArtifact> artifacts;
    std::vector<HistoryAdapterOp> adapter_ops;
};

struct HistoryFile {
    int version = 2;
    std::string model_path, model_architecture, model_fingerprint, model_stored_dtype;
    std::string exported_at;
    std::optional<std::string> head_state_hash;
    std::vector<HistoryEdit> edits;  // in the file's seq order
};

// Throws Error(Format) naming `what` and the edit, delta or tensor at fault.
HistoryFile read_history(const nlohmann::json& h, const std::string& what);
// The same from the file's text; malformed JSON is an Error(Format) too.
HistoryFile read_history_text(std::string_view text, const std::string& what);

}  // namespace engram
