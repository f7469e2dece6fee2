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

using V = std::vector<int64_t>;

at::Tensor llama_embed(const Model& m, const at::Tensor& ids, int64_t, const at::Tensor&) {
    return at::embedding(m.globals[size_t(Slot::TokEmbd)], ids);
}

// RMSNorm, rotary in halves, grouped-query attention, a gated MLP (SwiGLU).
layers::BlockOut llama_block(const Model& m, int il, const layers::BlockIn& in) {
    const HParams& hp = m.hparams();
    const SlotTensors& L = m.layers[il];
    auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };
    Hooks* hooks = in.hooks;
    const int64_t B = in.h.size(0), Tn = in.h.size(1), Tq = Tn - in.q_from;

    at::Tensor x = layers::rms_norm(in.h, w(Slot::AttnNorm), hp.norm_eps);
    at::Tensor xq = in.q_from == 0 ? x : x.narrow(1, in.q_from, Tq);
    at::Tensor q = at::linear(xq, w(Slot::AttnQ), w(Slot::AttnQB)).view({B, Tq, hp.n_head, hp.head_dim}).transpose(1, 2);
    at::Tensor k = at::linear(x, w(Slot::AttnK), w(Slot::AttnKB)).view({B, Tn, hp.n_head_kv, hp.head_dim}).transpose(1, 2);
    at::Tensor v = at::linear(x, w(Slot::AttnV), w(Slot::AttnVB)).view({B, Tn, hp.n_head_kv, hp.head_dim}).transpose(1, 2);
    q = layers::apply_rope_half(q, layers::rotary_rows(in.rot, in.q_from, Tq));  // [B, H, Tq, hd]
    k = layers::apply_rope_half(k, in.rot);                                       // [B, Hkv, Tn, hd]
    at::Tensor kc = layers::with_past(in.past_k, k), vc = layers::with_past(in.past_v, v);
    at::Tensor heads = layers::attention(q, kc, vc, in.bias, 1.0 / std::sqrt(double(hp.head_dim)), hooks, il);
    at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut), w(Slot::AttnOutB));
    hook(hooks, Site::AttnOut, il, attn_out);
    at::Tensor h = (in.q_from == 0 ? in.h : in.h.narrow(1, in.q_from, Tq)) + attn_out;

    x = layers::rms_norm(h, w(Slot::FfnNorm), hp.norm_eps);
    at::Tensor gate = layers::activation(at::linear(x, w(Slot::FfnGate), w(Slot::FfnGateB)), hp.activation);
    at::Tensor key = gate * at::linear(x, w(Slot::FfnUp), w(Slot::FfnUpB));  // [B, Tq, n_ff]
    hook(hooks, Site::MlpKey, il, key);
    at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), in.route);
    hook(hooks, Site::MlpOut, il, mlp_out);
    h = h + mlp_out;
    hook(hooks, Site::BlockOut, il, h);
    return {h, kc, vc};
}

at::Tensor llama_final_norm(const Model& m, const at::Tensor& h) {
    return layers::rms_norm(h, m.globals[size_t(Slot::OutNorm)], m.hparams().norm_eps);
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
    "model.",
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
    layers::decoder_forward,
    llama_config,
    llama_embed,
    llama_block,
    llama_final_norm,
};

}  // namespace engram
