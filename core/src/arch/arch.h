// Architectures as data: each family is one table (HF names -> canonical slots, with the expected
// shape of each tensor) plus its forward functions. Model::load walks the table; there are no
// if-chains on architecture strings. The class names and the config.json readers are torch-free, in
// engram/model_config.h (core/src/io/model_config.cpp).
//
// To add a new architecture: write core/src/models/<family>.cpp with a `Family` value (copy the
// shape of llama.cpp), declare it below, add it to kFamilies in arch.cpp, and give it its class
// names and config reader in io/model_config.cpp.
#pragma once

#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/model.h"
#include "models/layers.h"

namespace engram {

enum class Layout {
    AsIs,    // stored exactly as the slot holds it
    Conv1D,  // HF Conv1D (GPT-2): stored [in, out]; the slot holds the transposed view [out, in]
};

struct TensorSpec {
    Slot slot;
    bool per_layer;
    const char* name;  // after the family prefix; "{L}" stands for the layer index
    Layout layout;
    std::vector<int64_t> (*shape)(const HParams&);  // as stored in the file
    bool (*present)(const HParams&) = nullptr;      // nullptr: always present
};

using ForwardFn = ForwardOutput (*)(const Model&, const ForwardInput&, Hooks*, KvCache*);

struct Family {
    Arch arch;
    const char* prefix;                   // tried with and without (older checkpoints omit it)
    std::vector<TensorSpec> tensors;
    ForwardFn forward;
    // The config.json that parse_model_config (engram/model_config.h) reads back as the same HParams
    // (for saving checkpoints).
    nlohmann::json (*write_config)(const HParams&);
    // Decoders: the pieces layers::decoder_forward and the fast causal trace run (nullptr for ViT).
    // embed: ids [B, T] at positions n_past + t (or position_ids [B, T]) -> the residual [B, T, n_embd].
    at::Tensor (*embed)(const Model&, const at::Tensor& ids, int64_t n_past, const at::Tensor& position_ids) = nullptr;
    layers::BlockFn block = nullptr;
    at::Tensor (*final_norm)(const Model&, const at::Tensor& h) = nullptr;
};

extern const Family kGpt2Family;
extern const Family kGptjFamily;
extern const Family kLlamaFamily;
extern const Family kVitFamily;

// The class names and config.json parsing live in engram/model_config.h (torch-free).
const Family& family_of(Arch arch);

}  // namespace engram
