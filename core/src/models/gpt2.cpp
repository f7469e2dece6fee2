// GPT-2 (GPT2LMHeadModel).
//
// Layout note: HF stores GPT-2's c_attn, c_proj and c_fc weights as Conv1D, i.e. [in, out], the
// transpose of nn.Linear. The table marks them Layout::Conv1D and the loader transposes them once
// (as a view) so every slot holds [out, in]. Pre-LN blocks, fused qkv, gelu_new, tied head.
#include "arch/arch.h"
#include "engram/error.h"
#include "models/layers.h"

namespace engram {

namespace {

using V = std::vector<int64_t>;

at::Tensor gpt2_embed(const Model& m, const at::Tensor& ids, int64_t n_past, const at::Tensor& position_ids) {
    const int64_t T = ids.size(1);
    if (n_past + T > m.hparams().n_ctx)
        throw Error(ErrorKind::Argument, "sequence of " + std::to_string(n_past + T) + " tokens exceeds n_positions " +
                                             std::to_string(m.hparams().n_ctx));
    const auto& g = m.globals;
    at::Tensor pos = position_ids.defined() ? position_ids.to(m.device()) : at::arange(n_past, n_past + T, ids.options());
    return at::embedding(g[size_t(Slot::TokEmbd)], ids) + at::embedding(g[size_t(Slot::PosEmbd)], pos);
}

layers::BlockOut gpt2_block(const Model& m, int il, const layers::BlockIn& in) {
    const HParams& hp = m.hparams();
    const SlotTensors& L = m.layers[il];
    auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };
    Hooks* hooks = in.hooks;
    const int64_t B = in.h.size(0), Tn = in.h.size(1), Tq = Tn - in.q_from;

    at::Tensor x = layers::layer_norm(in.h, w(Slot::AttnNorm), w(Slot::AttnNormB), hp.norm_eps);
    at::Tensor qkv = at::linear(x, w(Slot::AttnQkv), w(Slot::AttnQkvB));  // [B, Tn, 3*n_embd]
    auto parts = qkv.view({B, Tn, 3, hp.n_head, hp.head_dim}).permute({2, 0, 3, 1, 4});  // [3, B, H, Tn, hd]
    at::Tensor k = layers::with_past(in.past_k, parts[1]), v = layers::with_past(in.past_v, parts[2]);
    at::Tensor q = in.q_from == 0 ? parts[0] : parts[0].narrow(2, in.q_from, Tq);
    double scale = 1.0 / std::sqrt(double(hp.head_dim));
    if (hp.scale_attn_by_inverse_layer_idx) scale /= double(il + 1);
    at::Tensor heads = layers::attention(q, k, v, in.bias, scale, hooks, il);
    at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut), w(Slot::AttnOutB));
    hook(hooks, Site::AttnOut, il, attn_out);
    at::Tensor h = (in.q_from == 0 ? in.h : in.h.narrow(1, in.q_from, Tq)) + attn_out;

    x = layers::layer_norm(h, w(Slot::FfnNorm), w(Slot::FfnNormB), hp.norm_eps);
    at::Tensor key = layers::activation(at::linear(x, w(Slot::FfnUp), w(Slot::FfnUpB)), hp.activation);  // [B, Tq, n_ff]
    hook(hooks, Site::MlpKey, il, key);
    at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), in.route);
    hook(hooks, Site::MlpOut, il, mlp_out);
    h = h + mlp_out;
    hook(hooks, Site::BlockOut, il, h);
    return {h, k, v};
}

at::Tensor gpt2_final_norm(const Model& m, const at::Tensor& h) {
    const auto& g = m.globals;
    return layers::layer_norm(h, g[size_t(Slot::OutNorm)], g[size_t(Slot::OutNormB)], m.hparams().norm_eps);
}

nlohmann::json gpt2_config(const HParams& hp) {
    return {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"n_layer", hp.n_layer}, {"n_embd", hp.n_embd},
            {"n_head", hp.n_head}, {"n_inner", hp.n_ff}, {"vocab_size", hp.n_vocab}, {"n_positions", hp.n_ctx},
            {"layer_norm_epsilon", hp.norm_eps}, {"activation_function", hp.activation},
            {"scale_attn_by_inverse_layer_idx", hp.scale_attn_by_inverse_layer_idx}, {"tie_word_embeddings", true}};
}

}  // namespace

const Family kGpt2Family{
    Arch::Gpt2,
    "transformer.",
    {
        {Slot::TokEmbd, false, "wte.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_vocab, h.n_embd}; }},
        {Slot::PosEmbd, false, "wpe.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_ctx, h.n_embd}; }},
        {Slot::AttnNorm, true, "h.{L}.ln_1.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::AttnNormB, true, "h.{L}.ln_1.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::AttnQkv, true, "h.{L}.attn.c_attn.weight", Layout::Conv1D, [](const HParams& h) { return V{h.n_embd, 3 * h.n_embd}; }},
        {Slot::AttnQkvB, true, "h.{L}.attn.c_attn.bias", Layout::AsIs, [](const HParams& h) { return V{3 * h.n_embd}; }},
        {Slot::AttnOut, true, "h.{L}.attn.c_proj.weight", Layout::Conv1D, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::AttnOutB, true, "h.{L}.attn.c_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::FfnNorm, true, "h.{L}.ln_2.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::FfnNormB, true, "h.{L}.ln_2.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::FfnUp, true, "h.{L}.mlp.c_fc.weight", Layout::Conv1D, [](const HParams& h) { return V{h.n_embd, h.n_ff}; }},
        {Slot::FfnUpB, true, "h.{L}.mlp.c_fc.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_ff}; }},
        {Slot::FfnDown, true, "h.{L}.mlp.c_proj.weight", Layout::Conv1D, [](const HParams& h) { return V{h.n_ff, h.n_embd}; }},
        {Slot::FfnDownB, true, "h.{L}.mlp.c_proj.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::OutNorm, false, "ln_f.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::OutNormB, false, "ln_f.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
    },
    layers::decoder_forward,
    gpt2_config,
    gpt2_embed,
    gpt2_block,
    gpt2_final_norm,
};

}  // namespace engram
