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

HParams gptj_hparams(const nlohmann::json& c) {
    HParams hp;
    hp.n_layer = config_int(c, "n_layer");
    hp.n_embd = config_int(c, "n_embd");
    hp.n_head = config_int(c, "n_head");
    hp.n_head_kv = hp.n_head;
    if (hp.n_head <= 0 || hp.n_embd % hp.n_head != 0)
        throw Error(ErrorKind::Config, "config.json: n_embd must be a multiple of n_head");
    hp.head_dim = hp.n_embd / hp.n_head;
    hp.n_ff = config_int_or(c, "n_inner", 4 * hp.n_embd);
    hp.n_vocab = config_int(c, "vocab_size");
    hp.n_ctx = config_int_or(c, "n_positions", 2048);
    hp.norm_eps = config_double_or(c, "layer_norm_epsilon", 1e-5);
    hp.activation = config_string_or(c, "activation_function", "gelu_new");
    hp.rope_type = RopeType::Default;
    hp.rope_theta = 10000.0;
    hp.rotary_dim = config_int_or(c, "rotary_dim", hp.head_dim);
    if (hp.rotary_dim <= 0 || hp.rotary_dim > hp.head_dim || hp.rotary_dim % 2 != 0)
        throw Error(ErrorKind::Config, "config.json: rotary_dim must be even and at most the head size");
    hp.tied_output = config_bool_or(c, "tie_word_embeddings", false);
    hp.mlp_bias = true;
    return hp;
}

using V = std::vector<int64_t>;

ForwardOutput gptj_forward(const Model& m, const ForwardInput& in, Hooks* hooks, KvCache* cache) {
    const HParams& hp = m.hparams();
    const at::Tensor ids = in.input_ids.to(m.device());
    const int64_t B = ids.size(0), T = ids.size(1), n_past = layers::past_length(cache);
    const auto& g = m.globals;
    const layers::LayerRange range = layers::layer_range(in, hp.n_layer, B, T, hp.n_embd);
    const at::Tensor route = layers::route_positions(m, in, B, T);
    at::Tensor h = layers::start_residual(in, hooks, [&] { return at::embedding(g[size_t(Slot::TokEmbd)], ids); });  // [B, T, n_embd]
    at::Tensor bias = layers::attention_bias(B, T, n_past, in.attention_mask, true, 0, h.options());
    layers::Rotary rot = layers::rotary_tables(hp, hp.rotary_dim, n_past, T, h.options(), in.position_ids);

    for (int il = range.begin; il < range.end; ++il) {
        const SlotTensors& L = m.layers[il];
        auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };

        at::Tensor x = layers::layer_norm(h, w(Slot::AttnNorm), w(Slot::AttnNormB), hp.norm_eps);
        at::Tensor q = at::linear(x, w(Slot::AttnQ)).view({B, T, hp.n_head, hp.head_dim});
        at::Tensor k = at::linear(x, w(Slot::AttnK)).view({B, T, hp.n_head, hp.head_dim});
        at::Tensor v = at::linear(x, w(Slot::AttnV)).view({B, T, hp.n_head, hp.head_dim});
        q = layers::apply_rope_interleaved(q, rot).transpose(1, 2);  // [B, H, T, hd]
        k = layers::apply_rope_interleaved(k, rot).transpose(1, 2);
        auto [kc, vc] = layers::update_cache(cache, il, hp.n_layer, k, v.transpose(1, 2));
        at::Tensor heads = layers::attention(q, kc, vc, bias, 1.0 / std::sqrt(double(hp.head_dim)), hooks, il);
        at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut));
        hook(hooks, Site::AttnOut, il, attn_out);

        at::Tensor key = layers::activation(at::linear(x, w(Slot::FfnUp), w(Slot::FfnUpB)), hp.activation);  // [B, T, n_ff]
        hook(hooks, Site::MlpKey, il, key);
        at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), route);
        hook(hooks, Site::MlpOut, il, mlp_out);
        h = h + attn_out + mlp_out;
        hook(hooks, Site::BlockOut, il, h);
    }
    if (!range.logits) return {};
    h = layers::layer_norm(h, g[size_t(Slot::OutNorm)], g[size_t(Slot::OutNormB)], hp.norm_eps);
    return {layers::project_logits(h, in, g[size_t(Slot::Output)], g[size_t(Slot::OutputB)])};
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
    {"GPTJForCausalLM", "GPTJModel"},
    "transformer.",
    gptj_hparams,
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
    gptj_forward,
    gptj_config,
};

}  // namespace engram
