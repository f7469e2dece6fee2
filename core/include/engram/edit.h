// An edit as a value: what was asked (requests), how (method + hyperparameters), what changed
// (weight deltas, kept as low-rank factors where the method is low-rank) and what a method keeps
// beside the weights (artifacts). The project store (store.h) persists these values; the model a
// user sees is always the base checkpoint plus the active edits, applied in order from their
// stored form.
//
// Application rule (bit-determinism). A delta is applied to a weight W held in slot orientation
// [out, in] (GPT-2's Conv1D weights included) as follows, element by element:
//     W'[i, j] = round_to(dtype(W), double(W[i, j]) + D[i, j])
// where D[i, j] is evaluated in float64:
//   - LowRank  (u [out, r], v [in, r]):  D[i, j] = sum_{k = 0..r-1} double(u[i, k]) * double(v[j, k]),
//     accumulated in ascending k, one element at a time (no BLAS, no tree reduction);
//   - DenseRows (rows [k] int64, values [k, in]): D[rows[t], j] = double(values[t, j]); the rows are
//     applied in the order stored (a repeated row is added twice, rounding after each);
//   - Dense    (values [out, in]):          D[i, j] = double(values[i, j]).
// Each delta rounds once; the deltas of an edit, and edits, apply in their stored order. Work is
// split over rows only, and every element is computed by exactly one thread in a fixed order, so
// the bits do not depend on the libtorch thread count, the BLAS in use or the machine. The result
// is always a fresh tensor assigned to the slot: base weights (possibly read-only mmap views) are
// never written.
//
// State hash. SHA-256 over the string "engram-state-v1", the base fingerprint, and then, for every
// weight whose current value differs from the base (compared by value), in ascending order of HF
// tensor name: the name, the dtype name of the tensor as held ("F32" by default), its shape in
// slot orientation [out, in] and its contiguous little-endian bytes in that orientation (strings
// and integers are framed as u64 little-endian lengths/values, as in the model fingerprint).
// Tensors equal to the base contribute nothing, so hashing an edited 8B model reads only the few
// tensors the edits touched, and the base alone hashes to state_hash_of_base(fingerprint).
// When adapters are installed (adapter.h), the string "adapters" and AdapterSet::hash_into follow
// the weights; without any, the hash is the weight-only hash above, so every older hash holds.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/adapter.h"
#include "engram/delta_kind.h"
#include "engram/safetensors.h"

namespace engram {

class Model;

// One change to one weight tensor. Parts are CPU tensors of dtype F32 or F64 (`rows`: I64).
struct Delta {
    std::string tensor;            // HF tensor name (Model::tensor_name)
    DeltaKind kind = DeltaKind::Dense;
    std::vector<int64_t> shape;    // the target weight in slot orientation: [out, in]; a bias [n] is [n, 1]
    at::Tensor u, v;               // LowRank: [out, r], [in, r]; W += u v^T
    at::Tensor rows;               // DenseRows: [k] int64 row indices into [out]
    at::Tensor values;             // DenseRows: [k, in]; Dense: [out, in]

    int64_t rank() const;          // r (LowRank), k (DenseRows), 0 (Dense)
    DType dtype() const;           // of the factors / values (F32 or F64)
    // Checks part shapes, dtypes and row indices against `shape`; throws Error(Argument) naming the tensor.
    void validate() const;
};

// What a method keeps beside the weights: codebooks, side memories, projections, head masks.
// Typed, named tensors for now; the method that wrote one is the one that reads it back.
struct Artifact {
    std::string name;              // unique within an edit
    std::string kind;              // "codebook", "side_memory", "projection", "head_mask", ...
    at::Tensor tensor;             // CPU, any safetensors dtype
    nlohmann::json meta = nlohmann::json::object();
};

enum class EditStatus { Active, Reverted };
const char* edit_status_name(EditStatus status);  // "active", "reverted"

struct Edit {
    // Filled by the store when the edit is recorded.
    int64_t id = 0;                // stable identifier (what --edit N names)
    int64_t seq = 0;               // application order
    std::string created_at;        // ISO 8601 UTC
    EditStatus status = EditStatus::Active;
    std::string state_hash_after;  // the model's state hash right after this edit was recorded
    std::vector<int64_t> computed_on;  // ids of the edits active in the model it was computed on,
                                       // in sequence order (filled by record() and Project::edit())

    // Filled by the method that made it.
    std::string method;            // "synthetic", "rome", "memit", ...
    nlohmann::json requests = nlohmann::json::array();
    nlohmann::json hparams = nlohmann::json::object();
    std::vector<Delta> deltas;
    std::vector<Artifact> artifacts;
    std::vector<AdapterOp> adapter_ops;  // applied after the deltas, in order (adapter.h)
    nlohmann::json metrics = nlohmann::json::object();
    double duration_s = 0.0;

    // Sorted, unique: the weight tensors of the deltas and "adapter:<name>" for each adapter changed.
    std::vector<std::string> touched_tensors() const;
};

// Applies one delta / every delta and adapter op of an edit to the model by the rule above. Shapes
// and names are checked before anything changes; on error the model is left as it was.
void apply_delta(Model& model, const Delta& delta);
void apply_edit(Model& model, const Edit& edit);

// The state hash defined above, and what it is for the unedited base.
std::string state_hash(const Model& model);
std::string state_hash_of_base(const std::string& base_fingerprint);
// The name touched_tensors() gives an adapter, and back ("" when `name` is a weight).
std::string adapter_touch_name(const std::string& adapter);
std::string adapter_of_touch_name(const std::string& name);

// Serialisation of a delta's parts into one blob, as the store and history JSON keep it:
//   LowRank:   u bytes ([out, r] row-major) then v bytes ([in, r] row-major), in dtype();
//   DenseRows: rows as int64 little-endian ([k]) then values ([k, in] row-major), in dtype();
//   Dense:     values ([out, in] row-major), in dtype().
std::vector<uint8_t> delta_blob(const Delta& delta);
Delta delta_from_blob(const std::string& tensor, DeltaKind kind, const std::vector<int64_t>& shape, DType dtype, int64_t rank,
                      const uint8_t* data, size_t size);
std::vector<uint8_t> tensor_blob(const at::Tensor& t);  // contiguous little-endian bytes
at::Tensor tensor_from_blob(DType dtype, const std::vector<int64_t>& shape, const uint8_t* data, size_t size, const std::string& what);

// A clearly-labelled synthetic edit, until the real methods exist and for store tests: a seeded
// low-rank delta on the MLP down-projection (Slot::FfnDown) of `layer`, with entries of standard
// deviation about `scale`; optionally an artifact of `artifact_kib` KiB of seeded floats (so tests
// can make an edit write megabytes). Method name "synthetic". It changes no fact on purpose.
struct SyntheticEditOptions {
    int layer = 0;
    int64_t rank = 1;
    uint64_t seed = 0;
    double scale = 0.02;
    int64_t artifact_kib = 0;
};
Edit make_synthetic_edit(const Model& model, const SyntheticEditOptions& options);

}  // namespace engram
