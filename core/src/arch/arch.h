// Architectures as data: each family is one table (HF names -> canonical slots, with the expected
// shape of each tensor) plus an hparams reader and a forward function. Model::load walks the table;
// there are no if-chains on architecture strings.
//
// To add a new architecture: write core/src/models/<family>.cpp with a `Family` value (copy the
// shape of llama.cpp), declare it below, and add it to kFamilies in arch.cpp.
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
    std::vector<const char*> hf_classes;  // config.json "architectures" values
    const char* prefix;                   // tried with and without (older checkpoints omit it)
    HParams (*read_hparams)(const nlohmann::json& config);
    std::vector<TensorSpec> tensors;
    ForwardFn forward;
    // The config.json that read_hparams turns back into the same HParams (for saving checkpoints).
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

const Family& family_of(Arch arch);
// nullptr if no family claims the class name.
const Family* family_for_class(std::string_view hf_class);
std::vector<std::string> supported_classes();

// config.json helpers that name the field at fault.
int64_t config_int(const nlohmann::json& c, const char* key);
int64_t config_int_or(const nlohmann::json& c, const char* key, int64_t fallback);
double config_double_or(const nlohmann::json& c, const char* key, double fallback);
bool config_bool_or(const nlohmann::json& c, const char* key, bool fallback);
std::string config_string_or(const nlohmann::json& c, const char* key, const std::string& fallback);
// Reads rope_theta and rope scaling from either dialect (rope_parameters, or rope_theta + rope_scaling).
void read_rope(const nlohmann::json& c, HParams& hp);

}  // namespace engram
