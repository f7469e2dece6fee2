// config.json and preprocessor_config.json (engram/model_config.h). Each family's reader takes the
// fields its Hugging Face class writes; sizes are range-checked before any arithmetic with them.
#include "engram/model_config.h"

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "engram/error.h"

namespace engram {

namespace {

struct ClassName {
    const char* name;
    Arch arch;
};
// The first class of each family is the one a saved checkpoint names.
const ClassName kClasses[] = {
    {"GPT2LMHeadModel", Arch::Gpt2},  {"GPT2Model", Arch::Gpt2},          {"GPTJForCausalLM", Arch::GptJ},
    {"GPTJModel", Arch::GptJ},        {"LlamaForCausalLM", Arch::Llama},  {"MistralForCausalLM", Arch::Llama},
    {"Qwen2ForCausalLM", Arch::Llama}, {"ViTForImageClassification", Arch::Vit},
};

using json = nlohmann::json;

const json* find_non_null(const json& c, const char* key) {
    auto it = c.find(key);
    if (it == c.end() || it->is_null()) return nullptr;
    return &*it;
}

Error bad_field(const char* key, const std::string& expected) {
    return Error(ErrorKind::Config, std::string("config.json: field '") + key + "' must be " + expected);
}

int64_t checked(const char* key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) throw bad_field(key, "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v));
    return v;
}

int64_t int_of(const json& v, const char* key) {
    if (!v.is_number_integer()) throw bad_field(key, "an integer");
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) throw bad_field(key, "an integer in range");
    return v.get<int64_t>();
}

// A required integer in [lo, hi].
int64_t int_in(const json& c, const char* key, int64_t lo, int64_t hi) {
    const json* v = find_non_null(c, key);
    if (!v) throw Error(ErrorKind::Config, std::string("config.json: missing required field '") + key + "'");
    return checked(key, int_of(*v, key), lo, hi);
}

// An optional integer in [lo, hi]; the fallback is not checked.
int64_t int_in_or(const json& c, const char* key, int64_t lo, int64_t hi, int64_t fallback) {
    const json* v = find_non_null(c, key);
    return v ? checked(key, int_of(*v, key), lo, hi) : fallback;
}

double double_or(const json& c, const char* key, double fallback) {
    const json* v = find_non_null(c, key);
    if (!v) return fallback;
    if (!v->is_number() || !std::isfinite(v->get<double>())) throw bad_field(key, "a finite number");
    return v->get<double>();
}

bool bool_or(const json& c, const char* key, bool fallback) {
    const json* v = find_non_null(c, key);
    if (!v) return fallback;
    if (!v->is_boolean()) throw bad_field(key, "true or false");
    return v->get<bool>();
}

std::string string_or(const json& c, const char* key, const std::string& fallback) {
    const json* v = find_non_null(c, key);
    if (!v) return fallback;
    if (!v->is_string()) throw bad_field(key, "a string");
    return v->get<std::string>();
}

void require_object(const json& c) {
    if (!c.is_object()) throw Error(ErrorKind::Config, "config.json: expected a JSON object");
}

constexpr int64_t W = kMaxConfigWidth;

// Reads rope_theta and rope scaling from either dialect (rope_parameters, or rope_theta + rope_scaling).
void read_rope(const json& c, HParams& hp) {
    hp.rope_type = RopeType::Default;
    // transformers 5 writes rope_parameters; transformers 4 writes rope_theta + rope_scaling.
    const json* params = find_non_null(c, "rope_parameters");
    const json* scaling = params ? params : find_non_null(c, "rope_scaling");
    if (params && !params->is_object()) throw bad_field("rope_parameters", "an object");
    hp.rope_theta = double_or(params ? *params : c, "rope_theta", double_or(c, "rope_theta", 10000.0));
    if (!(hp.rope_theta > 0)) throw bad_field("rope_theta", "positive");
    if (!scaling) return;
    if (!scaling->is_object()) throw bad_field(params ? "rope_parameters" : "rope_scaling", "an object");
    std::string type = string_or(*scaling, "rope_type", string_or(*scaling, "type", "default"));
    if (type == "default") return;
    hp.rope_factor = double_or(*scaling, "factor", 1.0);
    if (!(hp.rope_factor > 0)) throw bad_field("factor", "positive");
    if (type == "linear") {
        hp.rope_type = RopeType::Linear;
    } else if (type == "llama3") {
        hp.rope_type = RopeType::Llama3;
        hp.rope_low_freq_factor = double_or(*scaling, "low_freq_factor", 1.0);
        hp.rope_high_freq_factor = double_or(*scaling, "high_freq_factor", 4.0);
        if (!(hp.rope_low_freq_factor > 0) || !(hp.rope_high_freq_factor > hp.rope_low_freq_factor))
            throw bad_field("high_freq_factor", "above low_freq_factor, both positive");
        hp.rope_original_max_pos = int_in_or(*scaling, "original_max_position_embeddings", 1, kMaxConfigContext, 8192);
    } else {
        throw Error(ErrorKind::Unsupported, "config.json: rope scaling type '" + type +
                                                "' is not supported (supported: default, linear, llama3)");
    }
}

HParams gpt2_hparams(const json& c) {
    HParams hp;
    hp.n_layer = int_in(c, "n_layer", 1, kMaxConfigLayers);
    hp.n_embd = int_in(c, "n_embd", 1, W);
    hp.n_head = int_in(c, "n_head", 1, W);
    hp.n_head_kv = hp.n_head;
    hp.n_ff = int_in_or(c, "n_inner", 1, W, 4 * hp.n_embd);
    hp.n_vocab = int_in(c, "vocab_size", 1, kMaxConfigVocab);
    hp.n_ctx = int_in_or(c, "n_positions", 1, kMaxConfigContext, 1024);
    hp.norm_eps = double_or(c, "layer_norm_epsilon", 1e-5);
    hp.activation = string_or(c, "activation_function", "gelu_new");
    hp.scale_attn_by_inverse_layer_idx = bool_or(c, "scale_attn_by_inverse_layer_idx", false);
    if (!bool_or(c, "scale_attn_weights", true))
        throw Error(ErrorKind::Unsupported, "config.json: scale_attn_weights=false is not supported");
    hp.tied_output = true;  // GPT2LMHeadModel always ties lm_head to wte
    hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    if (hp.n_embd % hp.n_head != 0) throw Error(ErrorKind::Config, "config.json: n_embd must be a multiple of n_head");
    hp.head_dim = hp.n_embd / hp.n_head;
    return hp;
}

HParams gptj_hparams(const json& c) {
    HParams hp;
    hp.n_layer = int_in(c, "n_layer", 1, kMaxConfigLayers);
    hp.n_embd = int_in(c, "n_embd", 1, W);
    hp.n_head = int_in(c, "n_head", 1, W);
    hp.n_head_kv = hp.n_head;
    if (hp.n_embd % hp.n_head != 0) throw Error(ErrorKind::Config, "config.json: n_embd must be a multiple of n_head");
    hp.head_dim = hp.n_embd / hp.n_head;
    hp.n_ff = int_in_or(c, "n_inner", 1, W, 4 * hp.n_embd);
    hp.n_vocab = int_in(c, "vocab_size", 1, kMaxConfigVocab);
    hp.n_ctx = int_in_or(c, "n_positions", 1, kMaxConfigContext, 2048);
    hp.norm_eps = double_or(c, "layer_norm_epsilon", 1e-5);
    hp.activation = string_or(c, "activation_function", "gelu_new");
    hp.rope_type = RopeType::Default;
    hp.rope_theta = 10000.0;
    hp.rotary_dim = int_in_or(c, "rotary_dim", 1, W, hp.head_dim);
    if (hp.rotary_dim > hp.head_dim || hp.rotary_dim % 2 != 0)
        throw Error(ErrorKind::Config, "config.json: rotary_dim must be even and at most the head size");
    hp.tied_output = bool_or(c, "tie_word_embeddings", false);
    hp.mlp_bias = true;
    return hp;
}

HParams llama_hparams(const json& c) {
    HParams hp;
    const std::string model_type = string_or(c, "model_type", "llama");
    hp.n_layer = int_in(c, "num_hidden_layers", 1, kMaxConfigLayers);
    hp.n_embd = int_in(c, "hidden_size", 1, W);
    hp.n_head = int_in(c, "num_attention_heads", 1, W);
    hp.n_head_kv = int_in_or(c, "num_key_value_heads", 1, W, hp.n_head);
    if (hp.n_head % hp.n_head_kv != 0)
        throw Error(ErrorKind::Config, "config.json: num_attention_heads must be a multiple of num_key_value_heads");
    hp.head_dim = int_in_or(c, "head_dim", 1, W, hp.n_embd / hp.n_head);
    if (hp.head_dim < 1) throw bad_field("head_dim", "positive (hidden_size / num_attention_heads is 0)");
    hp.n_ff = int_in(c, "intermediate_size", 1, W);
    hp.n_vocab = int_in(c, "vocab_size", 1, kMaxConfigVocab);
    hp.n_ctx = int_in_or(c, "max_position_embeddings", 1, kMaxConfigContext, 2048);
    hp.norm_eps = double_or(c, "rms_norm_eps", 1e-6);
    hp.activation = string_or(c, "hidden_act", "silu");
    hp.tied_output = bool_or(c, "tie_word_embeddings", false);
    const bool is_qwen2 = model_type == "qwen2";
    hp.attn_qkv_bias = is_qwen2 || bool_or(c, "attention_bias", false);
    hp.attn_out_bias = !is_qwen2 && bool_or(c, "attention_bias", false);
    hp.mlp_bias = bool_or(c, "mlp_bias", false);
    read_rope(c, hp);
    const double partial = double_or(c, "partial_rotary_factor", 1.0);
    if (!(partial > 0 && partial <= 1)) throw bad_field("partial_rotary_factor", "in (0, 1]");
    hp.rotary_dim = static_cast<int64_t>(double(hp.head_dim) * partial);
    // Mistral applies its window always; Qwen2 only with use_sliding_window.
    const bool window_on = model_type == "qwen2" ? bool_or(c, "use_sliding_window", false) : true;
    hp.sliding_window = window_on ? int_in_or(c, "sliding_window", 0, kMaxConfigContext, 0) : 0;
    return hp;
}

HParams vit_hparams(const json& c) {
    HParams hp;
    hp.n_layer = int_in(c, "num_hidden_layers", 1, kMaxConfigLayers);
    hp.n_embd = int_in(c, "hidden_size", 1, W);
    hp.n_head = int_in(c, "num_attention_heads", 1, W);
    hp.n_head_kv = hp.n_head;
    if (hp.n_embd % hp.n_head != 0) throw Error(ErrorKind::Config, "config.json: hidden_size must be a multiple of num_attention_heads");
    hp.head_dim = hp.n_embd / hp.n_head;
    hp.n_ff = int_in(c, "intermediate_size", 1, W);
    hp.norm_eps = double_or(c, "layer_norm_eps", 1e-12);
    hp.activation = string_or(c, "hidden_act", "gelu");
    hp.image_size = int_in_or(c, "image_size", 1, kMaxConfigImageSide, 224);
    hp.patch_size = int_in_or(c, "patch_size", 1, kMaxConfigImageSide, 16);
    hp.n_channels = int_in_or(c, "num_channels", 1, 64, 3);
    if (hp.image_size % hp.patch_size != 0) throw Error(ErrorKind::Config, "config.json: image_size must be a multiple of patch_size");
    const int64_t side = hp.image_size / hp.patch_size;
    hp.n_ctx = side * side + 1;
    hp.attn_qkv_bias = bool_or(c, "qkv_bias", true);
    hp.attn_out_bias = hp.mlp_bias = true;
    auto labels = c.find("id2label");
    hp.n_labels = labels != c.end() && labels->is_object() ? static_cast<int64_t>(labels->size())
                                                           : int_in_or(c, "num_labels", 1, kMaxConfigVocab, 2);
    if (hp.n_labels < 1 || hp.n_labels > kMaxConfigVocab) throw bad_field("id2label", "between 1 and " + std::to_string(kMaxConfigVocab) + " labels");
    hp.n_vocab = hp.n_labels;
    hp.tied_output = false;
    return hp;
}

std::vector<std::string> vit_labels(const json& c, int64_t n) {
    std::vector<std::string> labels(static_cast<size_t>(n));
    if (auto it = c.find("id2label"); it != c.end() && it->is_object())
        for (const auto& [key, value] : it->items()) {
            size_t idx = 0, used = 0;
            try {
                idx = std::stoul(key, &used);
            } catch (...) {
                used = 0;
            }
            if (used == 0 || used != key.size()) throw Error(ErrorKind::Config, "config.json: id2label key '" + key + "' is not a number");
            if (idx < labels.size() && value.is_string()) labels[idx] = value.get<std::string>();
        }
    for (size_t i = 0; i < labels.size(); ++i)
        if (labels[i].empty()) labels[i] = "LABEL_" + std::to_string(i);
    return labels;
}

}  // namespace

std::vector<std::string> supported_architectures() {
    std::vector<std::string> out;
    for (const ClassName& c : kClasses) out.emplace_back(c.name);
    return out;
}

std::optional<Arch> arch_for_class(std::string_view hf_class) {
    for (const ClassName& c : kClasses)
        if (hf_class == c.name) return c.arch;
    return std::nullopt;
}

const char* default_class_name(Arch arch) {
    for (const ClassName& c : kClasses)
        if (c.arch == arch) return c.name;
    return "?";
}

ModelConfig parse_model_config(const json& config) {
    require_object(config);
    auto arch_it = config.find("architectures");
    if (arch_it == config.end() || !arch_it->is_array() || arch_it->empty() || !(*arch_it)[0].is_string())
        throw Error(ErrorKind::Config, "config.json: no \"architectures\" list naming the model class");
    ModelConfig out;
    out.hf_class = (*arch_it)[0].get<std::string>();
    const auto arch = arch_for_class(out.hf_class);
    if (!arch) {
        std::string known;
        for (const auto& c : supported_architectures()) known += (known.empty() ? "" : ", ") + c;
        throw Error(ErrorKind::Unsupported, "config.json: unknown architecture '" + out.hf_class + "' (supported: " + known + ")");
    }
    out.arch = *arch;
    switch (out.arch) {
        case Arch::Gpt2: out.hparams = gpt2_hparams(config); break;
        case Arch::GptJ: out.hparams = gptj_hparams(config); break;
        case Arch::Llama: out.hparams = llama_hparams(config); break;
        case Arch::Vit:
            out.hparams = vit_hparams(config);
            out.labels = vit_labels(config, out.hparams.n_labels);
            break;
    }
    return out;
}

ImagePreprocess parse_preprocessor_config(const json& j, const HParams& hp) {
    ImagePreprocess pre;
    pre.height = pre.width = hp.image_size;
    if (!j.is_object()) throw Error(ErrorKind::Config, "preprocessor_config.json: expected a JSON object");
    const int64_t side = kMaxConfigImageSide;
    try {
        pre.do_resize = bool_or(j, "do_resize", true);
        if (auto s = j.find("size"); s != j.end() && !s->is_null()) {
            if (s->is_object()) {
                const int64_t edge = int_in_or(*s, "shortest_edge", 1, side, -1);
                pre.height = int_in_or(*s, "height", 1, side, edge > 0 ? edge : pre.height);
                pre.width = int_in_or(*s, "width", 1, side, edge > 0 ? edge : pre.width);
            } else if (s->is_number_integer()) {
                pre.height = pre.width = checked("size", int_of(*s, "size"), 1, side);
            } else {
                throw bad_field("size", "an object or an integer");
            }
        }
        pre.resample = static_cast<int>(int_in_or(j, "resample", 0, 5, 2));
        pre.do_rescale = bool_or(j, "do_rescale", true);
        pre.rescale_factor = double_or(j, "rescale_factor", 1.0 / 255.0);
        pre.do_normalize = bool_or(j, "do_normalize", true);
        for (auto [key, dst] : {std::pair{"image_mean", &pre.mean}, std::pair{"image_std", &pre.std}}) {
            auto it = j.find(key);
            if (it == j.end() || it->is_null()) continue;
            if (!it->is_array() || it->size() != 3) throw bad_field(key, "3 numbers");
            for (size_t i = 0; i < 3; ++i) {
                if (!(*it)[i].is_number() || !std::isfinite((*it)[i].get<double>())) throw bad_field(key, "3 finite numbers");
                (*dst)[i] = (*it)[i].get<double>();
            }
        }
        for (double s : pre.std)
            if (s == 0) throw bad_field("image_std", "non-zero");
    } catch (const Error& e) {
        // The field helpers name config.json; say which file it is.
        std::string what = e.what();
        const std::string from = "config.json: ";
        if (what.rfind(from, 0) == 0) what = "preprocessor_config.json: " + what.substr(from.size());
        throw Error(e.kind(), what);
    }
    return pre;
}

}  // namespace engram
