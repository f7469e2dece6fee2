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

HParams gpt2_hparams(const nlohmann::json& c) {
    HParams hp;
    hp.n_layer = config_int(c, "n_layer");
    hp.n_embd = config_int(c, "n_embd");
    hp.n_head = config_int(c, "n_head");
    hp.n_head_kv = hp.n_head;
    hp.n_ff = config_int_or(c, "n_inner", 4 * hp.n_embd);
    hp.n_vocab = config_int(c, "vocab_size");
    hp.n_ctx = config_int_or(c, "n_positions", 1024);
    hp.norm_eps = config_double_or(c, "layer_norm_epsilon", 1e-5);
    hp.activation = config_string_or(c, "activation_function", "gelu_new");
    hp.scale_attn_by_inverse_layer_idx = config_bool_or(c, "scale_attn_by_inverse_layer_idx", false);
    if (!config_bool_or(c, "scale_attn_weights", true))
        throw Error(ErrorKind::Unsupported, "config.json: scale_attn_weights=false is not supported");
    hp.tied_output = true;  // GPT2LMHeadModel always ties lm_head to wte
    hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    if (hp.n_head <= 0 || hp.n_embd % hp.n_head != 0)
        throw Error(ErrorKind::Config, "config.json: n_embd must be a multiple of n_head");
    hp.head_dim = hp.n_embd / hp.n_head;
    return hp;
}

using V = std::vector<int64_t>;

ForwardOutput gpt2_forward(const Model& m, const ForwardInput& in, Hooks* hooks, KvCache* cache) {
    const HParams& hp = m.hparams();
    const at::Tensor ids = in.input_ids.to(m.device());
    const int64_t B = ids.size(0), T = ids.size(1), n_past = layers::past_length(cache);
    if (n_past + T > hp.n_ctx)
        throw Error(ErrorKind::Argument, "sequence of " + std::to_string(n_past + T) + " tokens exceeds n_positions " + std::to_string(hp.n_ctx));
    const auto& g = m.globals;
    const layers::LayerRange range = layers::layer_range(in, hp.n_layer, B, T, hp.n_embd);
    const at::Tensor route = layers::route_positions(m, in, B, T);
    at::Tensor h = layers::start_residual(in, hooks, [&] {
        at::Tensor pos = in.position_ids.defined() ? in.position_ids.to(m.device()) : at::arange(n_past, n_past + T, ids.options());
        return at::embedding(g[size_t(Slot::TokEmbd)], ids) + at::embedding(g[size_t(Slot::PosEmbd)], pos);
    });  // [B, T, n_embd]
    at::Tensor bias = layers::attention_bias(B, T, n_past, in.attention_mask, true, 0, h.options());

    for (int il = range.begin; il < range.end; ++il) {
        const SlotTensors& L = m.layers[il];
        auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };

        at::Tensor x = layers::layer_norm(h, w(Slot::AttnNorm), w(Slot::AttnNormB), hp.norm_eps);
        at::Tensor qkv = at::linear(x, w(Slot::AttnQkv), w(Slot::AttnQkvB));  // [B, T, 3*n_embd]
        auto parts = qkv.view({B, T, 3, hp.n_head, hp.head_dim}).permute({2, 0, 3, 1, 4});  // [3, B, H, T, hd]
        auto [k, v] = layers::update_cache(cache, il, hp.n_layer, parts[1], parts[2]);
        double scale = 1.0 / std::sqrt(double(hp.head_dim));
        if (hp.scale_attn_by_inverse_layer_idx) scale /= double(il + 1);
        at::Tensor heads = layers::attention(parts[0], k, v, bias, scale, hooks, il);
        at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut), w(Slot::AttnOutB));
        hook(hooks, Site::AttnOut, il, attn_out);
        h = h + attn_out;

        x = layers::layer_norm(h, w(Slot::FfnNorm), w(Slot::FfnNormB), hp.norm_eps);
        at::Tensor key = layers::activation(at::linear(x, w(Slot::FfnUp), w(Slot::FfnUpB)), hp.activation);  // [B, T, n_ff]
        hook(hooks, Site::MlpKey, il, key);
        at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), route);
        hook(hooks, Site::MlpOut, il, mlp_out);
        h = h + mlp_out;
        hook(hooks, Site::BlockOut, il, h);
    }
    if (!range.logits) return {};
    h = layers::layer_norm(h, g[size_t(Slot::OutNorm)], g[size_t(Slot::OutNormB)], hp.norm_eps);
    return {layers::project_logits(h, in, g[size_t(Slot::Output)], at::Tensor())};
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
    {"GPT2LMHeadModel", "GPT2Model"},
    "transformer.",
    gpt2_hparams,
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
    gpt2_forward,
    gpt2_config,
};

}  // namespace engram
