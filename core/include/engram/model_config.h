// A checkpoint's configuration as Engram reads it: the model class named by config.json, its
// family's hyperparameters and, for image classifiers, the labels and preprocessor_config.json.
// Torch-free (engram_base), so the parsers run under the fuzzers without the model code.
//
// Every size is checked against a bound before anything is computed or allocated from it, so a
// hostile config.json gets one clear Error (Config or Unsupported) naming the field.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace engram {

enum class Arch { Gpt2, GptJ, Llama, Vit };

enum class RopeType { None, Default, Linear, Llama3 };

struct HParams {
    int64_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
    int64_t n_vocab = 0, n_ctx = 0;
    double norm_eps = 1e-5;
    std::string activation = "gelu_new";  // gelu_new | gelu | gelu_pytorch_tanh | relu | silu
    bool tied_output = true;
    bool attn_qkv_bias = false, attn_out_bias = false, mlp_bias = false;
    bool scale_attn_by_inverse_layer_idx = false;  // GPT-2 option
    // Rotary embeddings (GPT-J: rotary_dim interleaved; LLaMA: full head_dim, rotate-half).
    RopeType rope_type = RopeType::None;
    int64_t rotary_dim = 0;
    double rope_theta = 10000.0;
    double rope_factor = 1.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
    int64_t rope_original_max_pos = 8192;
    int64_t sliding_window = 0;  // 0: none (Mistral sets it)
    // ViT
    int64_t image_size = 0, patch_size = 0, n_channels = 3, n_labels = 0;
};

struct ImagePreprocess {
    bool do_resize = true;
    int64_t height = 224, width = 224;
    int resample = 2;  // PIL code: 2 bilinear, 3 bicubic
    bool do_rescale = true;
    double rescale_factor = 1.0 / 255.0;
    bool do_normalize = true;
    std::array<double, 3> mean{0.5, 0.5, 0.5}, std{0.5, 0.5, 0.5};
};

// The HF class names (config.json "architectures") that Model::load accepts, and their family.
std::vector<std::string> supported_architectures();
std::optional<Arch> arch_for_class(std::string_view hf_class);
const char* default_class_name(Arch arch);  // the family's first class ("GPT2LMHeadModel", ...)

struct ModelConfig {
    Arch arch = Arch::Gpt2;
    std::string hf_class;             // architectures[0]
    HParams hparams;
    std::vector<std::string> labels;  // ViT: id2label by index, "LABEL_i" where it names none
};

// The content of a config.json. Throws Error(Config) for a missing, mistyped or out-of-range field
// and Error(Unsupported) for a class or option Engram does not run.
ModelConfig parse_model_config(const nlohmann::json& config);
// The content of a ViT's preprocessor_config.json (its defaults: the model's image size, bilinear,
// rescale by 1/255, normalise with 0.5).
ImagePreprocess parse_preprocessor_config(const nlohmann::json& config, const HParams& hp);

// The largest sizes a config may state (far above any released model; below what would overflow
// the arithmetic done with them).
inline constexpr int64_t kMaxConfigLayers = 1 << 16;
inline constexpr int64_t kMaxConfigWidth = 1 << 20;     // hidden size, MLP size, heads, head size
inline constexpr int64_t kMaxConfigVocab = 1 << 23;     // vocabulary or labels
inline constexpr int64_t kMaxConfigContext = 1 << 24;   // positions
inline constexpr int64_t kMaxConfigImageSide = 1 << 14; // pixels

}  // namespace engram
