// GPT-J (GPTJForCausalLM).
//
// Parallel residual: attention and MLP both read the same ln_1 output and are added together.
// Rotary embeddings on the first rotary_dim dims of each head, in interleaved pairs
// (rotate_every_two), applied in [B, T, H, hd] layout. q/k/v/out have no bias; lm_head has one.
#include "arch/arch.h"
#include "engram/error.h"
#include "models/layers.h"

namespace engram {

namespace {

using V = std::vector<int64_t>;

at::Tensor gptj_embed(const Model& m, const at::Tensor& ids, int64_t, const at::Tensor&) {
    return at::embedding(m.globals[size_t(Slot::TokEmbd)], ids);
}

// Parallel attention and MLP on one layer norm (GPT-J), rotary in interleaved pairs.
layers::BlockOut gptj_block(const Model& m, int il, const layers::BlockIn& in) {
    const HParams& hp = m.hparams();
    const SlotTensors& L = m.layers[il];
    auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };
    Hooks* hooks = in.hooks;
    const int64_t B = in.h.size(0), Tn = in.h.size(1), Tq = Tn - in.q_from;

    at::Tensor x = layers::layer_norm(in.h, w(Slot::AttnNorm), w(Slot::AttnNormB), hp.norm_eps);
    at::Tensor xq = in.q_from == 0 ? x : x.narrow(1, in.q_from, Tq);
    at::Tensor q = at::linear(xq, w(Slot::AttnQ)).view({B, Tq, hp.n_head, hp.head_dim});
    at::Tensor k = at::linear(x, w(Slot::AttnK)).view({B, Tn, hp.n_head, hp.head_dim});
    at::Tensor v = at::linear(x, w(Slot::AttnV)).view({B, Tn, hp.n_head, hp.head_dim});
    q = layers::apply_rope_interleaved(q, layers::rotary_rows(in.rot, in.q_from, Tq)).transpose(1, 2);  // [B, H, Tq, hd]
    k = layers::apply_rope_interleaved(k, in.rot).transpose(1, 2);                                     // [B, H, Tn, hd]
    at::Tensor kc = layers::with_past(in.past_k, k), vc = layers::with_past(in.past_v, v.transpose(1, 2));
    at::Tensor heads = layers::attention(q, kc, vc, in.bias, 1.0 / std::sqrt(double(hp.head_dim)), hooks, il);
    at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut));
    hook(hooks, Site::AttnOut, il, attn_out);

    at::Tensor key = layers::activation(at::linear(xq, w(Slot::FfnUp), w(Slot::FfnUpB)), hp.activation);  // [B, Tq, n_ff]
    hook(hooks, Site::MlpKey, il, key);
    at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), in.route);
    hook(hooks, Site::MlpOut, il, mlp_out);
    at::Tensor h = (in.q_from == 0 ? in.h : in.h.narrow(1, in.q_from, Tq)) + attn_out + mlp_out;
    hook(hooks, Site::BlockOut, il, h);
    return {h, kc, vc};
}

at::Tensor gptj_final_norm(const Model& m, const at::Tensor& h) {
    const auto& g = m.globals;
    return layers::layer_norm(h, g[size_t(Slot::OutNorm)], g[size_t(Slot::OutNormB)], m.hparams().norm_eps);
}

bool untied(const HParams& h) { return !h.tied_output; }

nlohmann::json gptj_config(const HParams& hp) {
    return {{"architectures", {"GPTJForCausalLM"}}, {"model_type", "gptj"}, {"n_layer", hp.n_layer}, {"n_embd", hp.n_embd},
            {"n_head", hp.n_head}, {"n_inner", hp.n_ff}, {"vocab_size", hp.n_vocab}, {"n_positions", hp.n_ctx},
            {"rotary_dim", hp.rotary_dim}, {"layer_norm_epsilon", hp.norm_eps}, {"activation_function", hp.activation},
            {"tie_word_embeddings", hp.tied_output}};
}

}  // namespace

const Family kGptjFamily{
    Arch::GptJ,
    "transformer.",
    {
        {Slot::TokEmbd, false, "wte.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_vocab, h.n_embd}; }},
        {Slot::AttnNorm, true, "h.{L}.ln_1.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::AttnNormB, true, "h.{L}.ln_1.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::AttnQ, true, "h.{L}.attn.q_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::AttnK, true, "h.{L}.attn.k_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::AttnV, true, "h.{L}.attn.v_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::AttnOut, true, "h.{L}.attn.out_proj.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::FfnUp, true, "h.{L}.mlp.fc_in.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_ff, h.n_embd}; }},
        {Slot::FfnUpB, true, "h.{L}.mlp.fc_in.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_ff}; }},
        {Slot::FfnDown, true, "h.{L}.mlp.fc_out.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_ff}; }},
        {Slot::FfnDownB, true, "h.{L}.mlp.fc_out.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::OutNorm, false, "ln_f.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::OutNormB, false, "ln_f.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        // lm_head sits outside the "transformer." prefix: a leading '/' means "no prefix".
        {Slot::Output, false, "/lm_head.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_vocab, h.n_embd}; }, untied},
        {Slot::OutputB, false, "/lm_head.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_vocab}; }, untied},
    },
    layers::decoder_forward,
    gptj_config,
    gptj_embed,
    gptj_block,
    gptj_final_norm,
};

}  // namespace engram
