// ViT (ViTForImageClassification).
//
// Patch embedding (a strided convolution), a CLS token, learned position embeddings, pre-LN
// encoder blocks with exact GELU, a final layernorm, and a classifier on the CLS position.
// The encoder is not causal and has no padding; hook sites are the decoders' (MlpKey is the
// input of output.dense).
#include "arch/arch.h"
#include "engram/error.h"
#include "models/layers.h"
#include "models/vit_blocks.h"

namespace engram {


namespace vit_blocks {

at::Tensor embed(const Model& m, const at::Tensor& pixel_values) {
    const HParams& hp = m.hparams();
    const auto& g = m.globals;
    at::Tensor px = pixel_values.to(m.device()).to(g[size_t(Slot::PatchEmbd)].scalar_type());
    if (px.dim() != 4 || px.size(1) != hp.n_channels || px.size(2) != hp.image_size || px.size(3) != hp.image_size)
        throw Error(ErrorKind::Argument, "pixel_values must be [batch, " + std::to_string(hp.n_channels) + ", " +
                                             std::to_string(hp.image_size) + ", " + std::to_string(hp.image_size) + "]");
    const int64_t B = px.size(0);
    at::Tensor patches = at::conv2d(px, g[size_t(Slot::PatchEmbd)], g[size_t(Slot::PatchEmbdB)], {hp.patch_size, hp.patch_size});
    patches = patches.flatten(2).transpose(1, 2);  // [B, n_patches, n_embd], patch j = row * side + col
    return at::cat({g[size_t(Slot::ClsToken)].expand({B, 1, hp.n_embd}), patches}, 1) + g[size_t(Slot::PosEmbd)];
}

at::Tensor block(const Model& m, int il, const at::Tensor& h_in, Hooks* hooks) {
    const HParams& hp = m.hparams();
    const SlotTensors& L = m.layers[il];
    auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };
    const int64_t B = h_in.size(0), T = h_in.size(1);
    at::Tensor x = layers::layer_norm(h_in, w(Slot::AttnNorm), w(Slot::AttnNormB), hp.norm_eps);
    at::Tensor q = at::linear(x, w(Slot::AttnQ), w(Slot::AttnQB)).view({B, T, hp.n_head, hp.head_dim}).transpose(1, 2);
    at::Tensor k = at::linear(x, w(Slot::AttnK), w(Slot::AttnKB)).view({B, T, hp.n_head, hp.head_dim}).transpose(1, 2);
    at::Tensor v = at::linear(x, w(Slot::AttnV), w(Slot::AttnVB)).view({B, T, hp.n_head, hp.head_dim}).transpose(1, 2);
    // Not causal, no padding: a zero bias.
    at::Tensor bias = at::zeros({1, 1, T, T}, h_in.options());
    at::Tensor heads = layers::attention(q, k, v, bias, 1.0 / std::sqrt(double(hp.head_dim)), hooks, il);
    at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut), w(Slot::AttnOutB));
    hook(hooks, Site::AttnOut, il, attn_out);
    at::Tensor h = h_in + attn_out;

    x = layers::layer_norm(h, w(Slot::FfnNorm), w(Slot::FfnNormB), hp.norm_eps);
    at::Tensor key = layers::activation(at::linear(x, w(Slot::FfnUp), w(Slot::FfnUpB)), hp.activation);  // [B, T, n_ff]
    hook(hooks, Site::MlpKey, il, key);
    at::Tensor mlp_out = at::linear(key, w(Slot::FfnDown), w(Slot::FfnDownB));
    hook(hooks, Site::MlpOut, il, mlp_out);
    h = h + mlp_out;
    hook(hooks, Site::BlockOut, il, h);
    return h;
}

at::Tensor values(const Model& m, int il, const at::Tensor& h_in) {
    const HParams& hp = m.hparams();
    const SlotTensors& L = m.layers[il];
    at::Tensor x = layers::layer_norm(h_in, L[size_t(Slot::AttnNorm)], L[size_t(Slot::AttnNormB)], hp.norm_eps);
    return at::linear(x, L[size_t(Slot::AttnV)], L[size_t(Slot::AttnVB)])
        .view({h_in.size(0), h_in.size(1), hp.n_head, hp.head_dim})
        .transpose(1, 2);
}

at::Tensor final_norm(const Model& m, const at::Tensor& h) {
    return layers::layer_norm(h, m.globals[size_t(Slot::OutNorm)], m.globals[size_t(Slot::OutNormB)], m.hparams().norm_eps);
}

at::Tensor classify(const Model& m, const at::Tensor& features) {
    return at::linear(features, m.globals[size_t(Slot::Output)], m.globals[size_t(Slot::OutputB)]);
}

}  // namespace vit_blocks

namespace {

using V = std::vector<int64_t>;

ForwardOutput vit_forward(const Model& m, const ForwardInput& in, Hooks* hooks, KvCache*) {
    if (!in.pixel_values.defined()) throw Error(ErrorKind::Argument, "ViT forward needs pixel_values");
    at::Tensor h = vit_blocks::embed(m, in.pixel_values);
    hook(hooks, Site::Embed, 0, h);  // [B, T, n_embd], T = n_patches + 1
    for (int il = 0; il < m.hparams().n_layer; ++il) h = vit_blocks::block(m, il, h, hooks);
    return {vit_blocks::classify(m, vit_blocks::final_norm(m, h).select(1, 0))};
}

bool qkv_bias(const HParams& h) { return h.attn_qkv_bias; }

nlohmann::json vit_config(const HParams& hp) {
    nlohmann::json labels = nlohmann::json::object();
    for (int64_t i = 0; i < hp.n_labels; ++i) labels[std::to_string(i)] = "LABEL_" + std::to_string(i);
    return {{"architectures", {"ViTForImageClassification"}}, {"model_type", "vit"}, {"num_hidden_layers", hp.n_layer},
            {"hidden_size", hp.n_embd}, {"num_attention_heads", hp.n_head}, {"intermediate_size", hp.n_ff},
            {"layer_norm_eps", hp.norm_eps}, {"hidden_act", hp.activation}, {"image_size", hp.image_size},
            {"patch_size", hp.patch_size}, {"num_channels", hp.n_channels}, {"qkv_bias", hp.attn_qkv_bias}, {"id2label", labels}};
}

}  // namespace

const Family kVitFamily{
    Arch::Vit,
    "vit.",
    {
        {Slot::PatchEmbd, false, "embeddings.patch_embeddings.projection.weight", Layout::AsIs,
         [](const HParams& h) { return V{h.n_embd, h.n_channels, h.patch_size, h.patch_size}; }},
        {Slot::PatchEmbdB, false, "embeddings.patch_embeddings.projection.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::ClsToken, false, "embeddings.cls_token", Layout::AsIs, [](const HParams& h) { return V{1, 1, h.n_embd}; }},
        {Slot::PosEmbd, false, "embeddings.position_embeddings", Layout::AsIs, [](const HParams& h) { return V{1, h.n_ctx, h.n_embd}; }},
        {Slot::AttnNorm, true, "encoder.layer.{L}.layernorm_before.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::AttnNormB, true, "encoder.layer.{L}.layernorm_before.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::AttnQ, true, "encoder.layer.{L}.attention.attention.query.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::AttnQB, true, "encoder.layer.{L}.attention.attention.query.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }, qkv_bias},
        {Slot::AttnK, true, "encoder.layer.{L}.attention.attention.key.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::AttnKB, true, "encoder.layer.{L}.attention.attention.key.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }, qkv_bias},
        {Slot::AttnV, true, "encoder.layer.{L}.attention.attention.value.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::AttnVB, true, "encoder.layer.{L}.attention.attention.value.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }, qkv_bias},
        {Slot::AttnOut, true, "encoder.layer.{L}.attention.output.dense.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_embd}; }},
        {Slot::AttnOutB, true, "encoder.layer.{L}.attention.output.dense.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::FfnNorm, true, "encoder.layer.{L}.layernorm_after.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::FfnNormB, true, "encoder.layer.{L}.layernorm_after.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::FfnUp, true, "encoder.layer.{L}.intermediate.dense.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_ff, h.n_embd}; }},
        {Slot::FfnUpB, true, "encoder.layer.{L}.intermediate.dense.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_ff}; }},
        {Slot::FfnDown, true, "encoder.layer.{L}.output.dense.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd, h.n_ff}; }},
        {Slot::FfnDownB, true, "encoder.layer.{L}.output.dense.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::OutNorm, false, "layernorm.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::OutNormB, false, "layernorm.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_embd}; }},
        {Slot::Output, false, "/classifier.weight", Layout::AsIs, [](const HParams& h) { return V{h.n_labels, h.n_embd}; }},
        {Slot::OutputB, false, "/classifier.bias", Layout::AsIs, [](const HParams& h) { return V{h.n_labels}; }},
    },
    vit_forward,
    vit_config,
};

}  // namespace engram
