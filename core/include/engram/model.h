// Models: a loaded checkpoint turned into weights in canonical slots, and one forward pass per
// family (GPT-2, GPT-J, the LLaMA family, ViT) with hook sites built in.
//
// Conventions: every linear weight is held in nn.Linear orientation [out, in] (GPT-2's Conv1D
// weights are stored [in, out] and are transposed once, as a view, at load). Compute runs in fp32
// by default whatever the stored dtype; the stored dtype is recorded.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/adapter.h"
#include "engram/hooks.h"
#include "engram/model_config.h"
#include "engram/safetensors.h"

namespace engram {

class Checkpoint;
class Tokenizer;

// Canonical weight slots. Per-layer slots live in Model::layer(i); the rest in Model::global().
enum class Slot {
    TokEmbd, PosEmbd,                                   // [n_vocab, n_embd], [n_ctx, n_embd]
    PatchEmbd, PatchEmbdB, ClsToken,                    // ViT: [n_embd, C, P, P], [n_embd], [1, 1, n_embd]
    AttnNorm, AttnNormB,                                // [n_embd]
    AttnQkv, AttnQkvB,                                  // fused (GPT-2): [3*n_embd, n_embd], [3*n_embd]
    AttnQ, AttnQB, AttnK, AttnKB, AttnV, AttnVB,        // [n_head*head_dim | n_head_kv*head_dim, n_embd]
    AttnOut, AttnOutB,                                  // [n_embd, n_head*head_dim], [n_embd]
    FfnNorm, FfnNormB,                                  // [n_embd]
    FfnUp, FfnUpB, FfnGate, FfnGateB, FfnDown, FfnDownB,// [n_ff, n_embd], [n_ff], [n_ff, n_embd], [n_embd, n_ff], [n_embd]
    OutNorm, OutNormB,                                  // [n_embd]
    Output, OutputB,                                    // [n_vocab | n_labels, n_embd], [n_vocab | n_labels]
    Count
};
inline constexpr size_t kSlotCount = static_cast<size_t>(Slot::Count);
const char* slot_name(Slot slot);

using SlotTensors = std::array<at::Tensor, kSlotCount>;

struct LoadOptions {
    c10::Device device = c10::Device(c10::kCPU);
    c10::ScalarType compute_dtype = c10::ScalarType::Float;
    bool load_tokenizer = true;  // from the same folder when it has one
};

struct ForwardInput {
    at::Tensor input_ids;       // [B, T] int64 (decoders)
    at::Tensor attention_mask;  // [B, T] or [B, n_past + T]; 1 = token, 0 = right padding. Optional.
    at::Tensor pixel_values;    // [B, C, H, W] float (ViT)
    bool last_logits_only = false;  // logits only at each row's last unmasked position: [B, n_vocab]
    // Partial runs (the editing methods' target optimisation). With `residual` ([B, T, n_embd], the
    // residual stream entering layer start_layer) the pass starts there instead of the embeddings
    // (input_ids then only give the shape). A stop_layer in [0, n_layer) stops before that layer and
    // returns no logits (the hooks of the layers run still fire). `logit_index` ([N] int64, flat
    // row * T + position) computes the logits at those positions only: [N, n_vocab].
    // `position_ids` ([B, T] int64) gives each new token's position where rows differ (rows resumed
    // after prefixes of different lengths held in a KvCache); default n_past + t.
    int start_layer = 0;
    at::Tensor residual;
    at::Tensor position_ids;
    int stop_layer = -1;
    at::Tensor logit_index;
    // Where adapters that route once per sequence look (adapter.h): [B] int64, per row the index
    // among this call's new positions of the last prompt token, -1 for none. Undefined: each row's
    // last real token.
    at::Tensor route_position;
};

struct ForwardOutput {
    at::Tensor logits;  // [B, T, n_vocab], or [B, n_vocab] with last_logits_only, or [B, n_labels] (ViT)
};

// Keys/values of earlier positions, per layer, for incremental decoding (and for resuming at a
// later layer: layers below it may be left undefined).
struct KvCache {
    std::vector<at::Tensor> k, v;  // per layer: [B, n_head_kv, n_past, head_dim]
    int64_t n_past() const {
        for (const at::Tensor& t : k)
            if (t.defined()) return t.size(2);
        return 0;
    }
};

class Model {
public:
    static std::unique_ptr<Model> load(const std::filesystem::path& dir, const LoadOptions& options = {});
    // Random weights for a given shape (benchmarks, demo training). Normal(0, 0.02), norms at 1.
    // trainable: every weight is a leaf that requires grad (created outside InferenceMode).
    static std::unique_ptr<Model> random(Arch arch, const HParams& hparams, uint64_t seed, bool trainable = false);
    // The distinct weight tensors (a tied head once): what an optimiser updates.
    std::vector<at::Tensor> parameters() const;
    ~Model();

    Arch arch() const { return arch_; }
    const std::string& arch_name() const { return arch_name_; }  // the HF class name
    const HParams& hparams() const { return hparams_; }
    bool is_decoder() const { return arch_ != Arch::Vit; }
    DType stored_dtype() const { return stored_dtype_; }
    int64_t parameter_count() const;
    std::string fingerprint() const;  // SHA-256 of the checkpoint (cached); "" for random models
    const std::filesystem::path& dir() const { return dir_; }
    const Checkpoint* checkpoint() const { return checkpoint_.get(); }

    c10::Device device() const { return device_; }
    void to(c10::Device device);

    const Tokenizer* tokenizer() const { return tokenizer_.get(); }
    void set_tokenizer(std::unique_ptr<Tokenizer> tokenizer);
    const std::vector<std::string>& labels() const { return labels_; }  // ViT id2label
    const ImagePreprocess& preprocess() const { return preprocess_; }

    // Weights by canonical slot. Undefined tensors are slots the family does not use.
    at::Tensor& weight(Slot slot, int layer = -1);
    const at::Tensor& weight(Slot slot, int layer = -1) const;
    // The HF tensor name of a slot (for exports and the edit store).
    std::string tensor_name(Slot slot, int layer = -1) const;

    // Every weight the family uses, in table order (tied heads listed once, under the embedding).
    struct WeightRef {
        Slot slot;
        int layer;  // -1 for global slots
        std::string name;
    };
    std::vector<WeightRef> weight_refs() const;
    // The slot holding an HF tensor name; nullopt if the model has no such weight.
    std::optional<WeightRef> find_weight(const std::string& tensor_name) const;

    // The immutable base: weights exactly as loaded (or as made by random()). Edits replace slot
    // tensors with new ones and never write into these, so the base can always be restored.
    const at::Tensor& base_weight(Slot slot, int layer = -1) const;
    bool is_base(Slot slot, int layer = -1) const;  // still the very tensor that was loaded
    void restore_base(Slot slot, int layer = -1);
    void restore_all_base();

    ForwardOutput forward(const ForwardInput& input, Hooks* hooks = nullptr, KvCache* cache = nullptr) const;

    // The adapters installed by adapter edits (adapter.h); run inside every forward.
    const AdapterSet& adapters() const { return adapters_; }
    AdapterSet& adapters() { return adapters_; }
    // Applies one adapter op, checking its attach point against this model.
    void apply_adapter_op(const AdapterOp& op);

    // Internal: the family tables fill these.
    SlotTensors globals;
    std::vector<SlotTensors> layers;
    SlotTensors base_globals;  // snapshots of the above at load time (shared storage, no copies)
    std::vector<SlotTensors> base_layers;

private:
    friend struct ModelLoader;
    friend void save_checkpoint(const Model&, const std::filesystem::path&, DType);
    Model() = default;
    Arch arch_ = Arch::Gpt2;
    std::string arch_name_;
    HParams hparams_;
    DType stored_dtype_ = DType::F32;
    std::filesystem::path dir_;
    std::unique_ptr<Checkpoint> checkpoint_;
    mutable std::string fingerprint_;
    c10::Device device_ = c10::Device(c10::kCPU);
    std::unique_ptr<Tokenizer> tokenizer_;
    std::vector<std::string> labels_;
    ImagePreprocess preprocess_;
    AdapterSet adapters_;
};


struct GenerateOptions {
    int64_t max_new_tokens = 20;
    int64_t top_k = 0;  // 0 or 1: greedy; otherwise sample from the k most likely (temperature 1)
    uint64_t seed = 0;
    std::optional<int64_t> stop_token;  // usually EOS
};

// Prompt ids in, prompt + new ids out; uses a KV cache so each new token costs one position.
std::vector<int64_t> generate(const Model& model, const std::vector<int64_t>& prompt, const GenerateOptions& options);

// Writes the model as a HF checkpoint folder: config.json plus model.safetensors in the family's
// own tensor names and layout (GPT-2's Conv1D weights transposed back), stored as `storage`
// (F32, F16 or BF16). The folder is created; existing files of those names are replaced.
void save_checkpoint(const Model& model, const std::filesystem::path& dir, DType storage = DType::F32);

// Loads an image file (PNG/JPEG/BMP/...) and applies the model's preprocessing: [1, C, H, W].
at::Tensor load_image(const std::filesystem::path& path, const ImagePreprocess& pre);
// The same with the model's own preprocessing, resized to the only size the model accepts.
at::Tensor load_model_image(const Model& model, const std::filesystem::path& path);

}  // namespace engram
