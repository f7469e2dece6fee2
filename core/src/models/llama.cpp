// The LLaMA family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
//
// RMSNorm pre-norm blocks, rotary embeddings (rotate-half) with default, linear or llama3
// frequency scaling, grouped-query attention (n_head_kv <= n_head, MQA when 1), SwiGLU MLP.
// Differences between members are data: Qwen2 always has q/k/v bias, Llama has it when
// attention_bias is set, Mistral may have a sliding window.
#include "arch/arch.h"
#include "engram/error.h"
#include "models/layers.h"

namespace engram {

namespace {

HParams llama_hparams(const nlohmann::json& c) {
    HParams hp;
    const std::string model_type = config_string_or(c, "model_type", "llama");
    hp.n_layer = config_int(c, "num_hidden_layers");
    hp.n_embd = config_int(c, "hidden_size");
    hp.n_head = config_int(c, "num_attention_heads");
    hp.n_head_kv = config_int_or(c, "num_key_value_heads", hp.n_head);
    if (hp.n_head <= 0 || hp.n_head_kv <= 0 || hp.n_head % hp.n_head_kv != 0)
        throw Error(ErrorKind::Config, "config.json: num_attention_heads must be a multiple of num_key_value_heads");
    hp.head_dim = config_int_or(c, "head_dim", hp.n_embd / hp.n_head);
    hp.n_ff = config_int(c, "intermediate_size");
    hp.n_vocab = config_int(c, "vocab_size");
    hp.n_ctx = config_int_or(c, "max_position_embeddings", 2048);
    hp.norm_eps = config_double_or(c, "rms_norm_eps", 1e-6);
    hp.activation = config_string_or(c, "hidden_act", "silu");
    hp.tied_output = config_bool_or(c, "tie_word_embeddings", false);
    const bool is_qwen2 = model_type == "qwen2";
    hp.attn_qkv_bias = is_qwen2 || config_bool_or(c, "attention_bias", false);
    hp.attn_out_bias = !is_qwen2 && config_bool_or(c, "attention_bias", false);
    hp.mlp_bias = config_bool_or(c, "mlp_bias", false);
    read_rope(c, hp);
    const double partial = config_double_or(c, "partial_rotary_factor", 1.0);
    hp.rotary_dim = static_cast<int64_t>(double(hp.head_dim) * partial);
    // Mistral applies its window always; Qwen2 only with use_sliding_window.
    const bool window_on = model_type == "qwen2" ? config_bool_or(c, "use_sliding_window", false) : true;
    hp.sliding_window = window_on ? config_int_or(c, "sliding_window", 0) : 0;
    return hp;
}

using V = std::vector<int64_t>;

ForwardOutput llama_forward(const Model& m, const ForwardInput& in, Hooks* hooks, KvCache* cache) {
    const HParams& hp = m.hparams();
    const at::Tensor ids = in.input_ids.to(m.device());
    const int64_t B = ids.size(0), T = ids.size(1), n_past = layers::past_length(cache);
    const auto& g = m.globals;
    const layers::LayerRange range = layers::layer_range(in, hp.n_layer, B, T, hp.n_embd);
    const at::Tensor route = layers::route_positions(m, in, B, T);
    at::Tensor h = layers::start_residual(in, hooks, [&] { return at::embedding(g[size_t(Slot::TokEmbd)], ids); });  // [B, T, n_embd]
    at::Tensor bias = layers::attention_bias(B, T, n_past, in.attention_mask, true, hp.sliding_window, h.options());
    layers::Rotary rot = layers::rotary_tables(hp, hp.rotary_dim, n_past, T, h.options(), in.position_ids);

    for (int il = range.begin; il < range.end; ++il) {
        const SlotTensors& L = m.layers[il];
        auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };

        at::Tensor x = layers::rms_norm(h, w(Slot::AttnNorm), hp.norm_eps);
        at::Tensor q = at::linear(x, w(Slot::AttnQ), w(Slot::AttnQB)).view({B, T, hp.n_head, hp.head_dim}).transpose(1, 2);
        at::Tensor k = at::linear(x, w(Slot::AttnK), w(Slot::AttnKB)).view({B, T, hp.n_head_kv, hp.head_dim}).transpose(1, 2);
        at::Tensor v = at::linear(x, w(Slot::AttnV), w(Slot::AttnVB)).view({B, T, hp.n_head_kv, hp.head_dim}).transpose(1, 2);
        q = layers::apply_rope_half(q, rot);  // [B, H, T, hd]
        k = layers::apply_rope_half(k, rot);  // [B, Hkv, T, hd]
        auto [kc, vc] = layers::update_cache(cache, il, hp.n_layer, k, v);
        at::Tensor heads = layers::attention(q, kc, vc, bias, 1.0 / std::sqrt(double(hp.head_dim)), hooks, il);
        at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut), w(Slot::AttnOutB));
        hook(hooks, Site::AttnOut, il, attn_out);
        h = h + attn_out;

        x = layers::rms_norm(h, w(Slot::FfnNorm), hp.norm_eps);
        at::Tensor gate = layers::activation(at::linear(x, w(Slot::FfnGate), w(Slot::FfnGateB)), hp.activation);
        at::Tensor key = gate * at::linear(x, w(Slot::FfnUp), w(Slot::FfnUpB));  // [B, T, n_ff]
        hook(hooks, Site::MlpKey, il, key);
        at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), route);
        hook(hooks, Site::MlpOut, il, mlp_out);
        h = h + mlp_out;
        hook(hooks, Site::BlockOut, il, h);
    }
    if (!range.logits) return {};
    h = layers::rms_norm(h, g[size_t(Slot::OutNorm)], hp.norm_eps);
    return {layers::project_logits(h, in, g[size_t(Slot::Output)], at::Tensor())};
}

bool qkv_bias(const HParams& h) { return h.attn_qkv_bias; }
bool out_bias(const HParams& h) { return h.attn_out_bias; }
bool mlp_bias(const HParams& h) { return h.mlp_bias; }
bool untied(const HParams& h) { return !h.tied_output; }

nlohmann::json llama_config(const HParams& hp) {
    nlohmann::json c = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"num_hidden_layers", hp.n_layer},
                        {"hidden_size", hp.n_embd}, {"num_attention_heads", hp.n_head}, {"num_key_value_heads", hp.n_head_kv},
                        {"head_dim", hp.head_dim}, {"intermediate_size", hp.n_ff}, {"vocab_size", hp.n_vocab},
                        {"max_position_embeddings", hp.n_ctx}, {"rms_norm_eps", hp.norm_eps}, {"hidden_act", hp.activation},
                        {"tie_word_embeddings", hp.tied_output}, {"attention_bias", hp.attn_qkv_bias}, {"mlp_bias", hp.mlp_bias},
                        {"rope_theta", hp.rope_theta}};
    if (hp.rope_type == RopeType::Linear) c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", hp.rope_factor}};
    if (hp.rope_type == RopeType::Llama3)
        c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", hp.rope_factor}, {"low_freq_factor", hp.rope_low_freq_factor},
                             {"high_freq_factor", hp.rope_high_freq_factor}, {"original_max_position_embeddings", hp.rope_original_max_pos}};
    if (hp.sliding_window > 0) c["sliding_window"] = hp.sliding_window;
    return c;
}

}  // namespace

const Family kLlamaFamily{
    Arch::Llama,
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"},
    "model.",
    llama_hparams,
    {
        {Slot::TokEmbd, false, "embed_tokens.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_vocab, h.n_embd}; }},
        {Slot::AttnNorm, true, "layers.{L}.input_layernorm.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::AttnQ, true, "layers.{L}.self_attn.q_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_head * h.head_dim, h.n_embd}; }},
        {Slot::AttnQB, true, "layers.{L}.self_attn.q_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_head * h.head_dim}; }, qkv_bias},
        {Slot::AttnK, true, "layers.{L}.self_attn.k_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_head_kv * h.head_dim, h.n_embd}; }},
        {Slot::AttnKB, true, "layers.{L}.self_attn.k_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_head_kv * h.head_dim}; }, qkv_bias},
        {Slot::AttnV, true, "layers.{L}.self_attn.v_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_head_kv * h.head_dim, h.n_embd}; }},
        {Slot::AttnVB, true, "layers.{L}.self_attn.v_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_head_kv * h.head_dim}; }, qkv_bias},
        {Slot::AttnOut, true, "layers.{L}.self_attn.o_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_head * h.head_dim}; }},
        {Slot::AttnOutB, true, "layers.{L}.self_attn.o_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }, out_bias},
        {Slot::FfnNorm, true, "layers.{L}.post_attention_layernorm.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::FfnGate, true, "layers.{L}.mlp.gate_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_ff, h.n_embd}; }},
        {Slot::FfnGateB, true, "layers.{L}.mlp.gate_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_ff}; }, mlp_bias},
        {Slot::FfnUp, true, "layers.{L}.mlp.up_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_ff, h.n_embd}; }},
        {Slot::FfnUpB, true, "layers.{L}.mlp.up_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_ff}; }, mlp_bias},
        {Slot::FfnDown, true, "layers.{L}.mlp.down_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_ff}; }},
        {Slot::FfnDownB, true, "layers.{L}.mlp.down_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }, mlp_bias},
        {Slot::OutNorm, false, "norm.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::Output, false, "/lm_head.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_vocab, h.n_embd}; }, untied},
    },
    llama_forward,
    llama_config,
};

}  // namespace engram
