#include "trace/blocks.h"

#include <cmath>

#include "engram/error.h"
#include "models/layers.h"

namespace engram::trace_detail {

namespace {

double linear_flops(const at::Tensor& x, const at::Tensor& w) { return 2.0 * double(x.numel() / x.size(-1)) * double(w.numel()); }

// Scores and mixing: 2 matmuls of [Tq, hd] x [hd, Tk] per head and row.
double attention_flops(int64_t B, int64_t n_head, int64_t tq, int64_t tk, int64_t hd) { return 4.0 * double(B * n_head * tq * tk * hd); }

at::Tensor with_past(const at::Tensor& past, const at::Tensor& now) {
    if (!past.defined() || past.size(2) == 0) return now;
    return at::cat({past, now}, 2);
}

void apply(const BlockPatch& patch, Site site, at::Tensor& value, int64_t q_from) {
    if (patch) patch(site, value, q_from);
}

BlockResult gpt2_block(const Model& m, int il, const at::Tensor& h, int64_t p0, const at::Tensor& past_k,
                       const at::Tensor& past_v, int64_t q_from, const BlockPatch& patch, double& fl) {
    const HParams& hp = m.hparams();
    const SlotTensors& L = m.layers[il];
    auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };
    const int64_t B = h.size(0), Tn = h.size(1), Tq = Tn - q_from;
    at::Tensor x = layers::layer_norm(h, w(Slot::AttnNorm), w(Slot::AttnNormB), hp.norm_eps);
    at::Tensor qkv = at::linear(x, w(Slot::AttnQkv), w(Slot::AttnQkvB));  // [B, Tn, 3*n_embd]
    fl += linear_flops(x, w(Slot::AttnQkv));
    auto parts = qkv.view({B, Tn, 3, hp.n_head, hp.head_dim}).permute({2, 0, 3, 1, 4});  // [3, B, H, Tn, hd]
    at::Tensor k = with_past(past_k, parts[1]), v = with_past(past_v, parts[2]);
    at::Tensor q = parts[0].narrow(2, q_from, Tq);
    double scale = 1.0 / std::sqrt(double(hp.head_dim));
    if (hp.scale_attn_by_inverse_layer_idx) scale /= double(il + 1);
    at::Tensor bias = layers::attention_bias(B, Tq, p0 + q_from, at::Tensor(), true, 0, h.options());
    at::Tensor heads = layers::attention(q, k, v, bias, scale, nullptr, il);
    fl += attention_flops(B, hp.n_head, Tq, k.size(2), hp.head_dim);
    at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut), w(Slot::AttnOutB));
    fl += linear_flops(heads, w(Slot::AttnOut));
    apply(patch, Site::AttnOut, attn_out, q_from);
    at::Tensor hq = h.narrow(1, q_from, Tq) + attn_out;
    x = layers::layer_norm(hq, w(Slot::FfnNorm), w(Slot::FfnNormB), hp.norm_eps);
    at::Tensor key = layers::activation(at::linear(x, w(Slot::FfnUp), w(Slot::FfnUpB)), hp.activation);  // [B, Tq, n_ff]
    fl += linear_flops(x, w(Slot::FfnUp));
    // Adapters route on the prompt's last token, the last of the positions computed here.
    const at::Tensor route = m.adapters().empty() ? at::Tensor() : at::full({B}, Tq - 1, at::kLong);
    at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), route);
    fl += linear_flops(key, w(Slot::FfnDown));
    apply(patch, Site::MlpOut, mlp_out, q_from);
    return {hq + mlp_out, attn_out, mlp_out, parts[1], parts[2]};
}

BlockResult gptj_block(const Model& m, int il, const at::Tensor& h, int64_t p0, const at::Tensor& past_k,
                       const at::Tensor& past_v, int64_t q_from, const BlockPatch& patch, double& fl) {
    const HParams& hp = m.hparams();
    const SlotTensors& L = m.layers[il];
    auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };
    const int64_t B = h.size(0), Tn = h.size(1), Tq = Tn - q_from;
    layers::Rotary rot = layers::rotary_tables(hp, hp.rotary_dim, p0, Tn, h.options());
    layers::Rotary rot_q{rot.cos.narrow(0, q_from, Tq), rot.sin.narrow(0, q_from, Tq)};
    at::Tensor x = layers::layer_norm(h, w(Slot::AttnNorm), w(Slot::AttnNormB), hp.norm_eps);
    at::Tensor xq = x.narrow(1, q_from, Tq);
    at::Tensor q = at::linear(xq, w(Slot::AttnQ)).view({B, Tq, hp.n_head, hp.head_dim});
    at::Tensor k = at::linear(x, w(Slot::AttnK)).view({B, Tn, hp.n_head, hp.head_dim});
    at::Tensor v = at::linear(x, w(Slot::AttnV)).view({B, Tn, hp.n_head, hp.head_dim});
    fl += linear_flops(xq, w(Slot::AttnQ)) + 2 * linear_flops(x, w(Slot::AttnK));
    q = layers::apply_rope_interleaved(q, rot_q).transpose(1, 2);  // [B, H, Tq, hd]
    k = layers::apply_rope_interleaved(k, rot).transpose(1, 2);    // [B, H, Tn, hd]
    v = v.transpose(1, 2);
    at::Tensor kc = with_past(past_k, k), vc = with_past(past_v, v);
    at::Tensor bias = layers::attention_bias(B, Tq, p0 + q_from, at::Tensor(), true, 0, h.options());
    at::Tensor heads = layers::attention(q, kc, vc, bias, 1.0 / std::sqrt(double(hp.head_dim)), nullptr, il);
    fl += attention_flops(B, hp.n_head, Tq, kc.size(2), hp.head_dim);
    at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut));
    fl += linear_flops(heads, w(Slot::AttnOut));
    apply(patch, Site::AttnOut, attn_out, q_from);
    at::Tensor key = layers::activation(at::linear(xq, w(Slot::FfnUp), w(Slot::FfnUpB)), hp.activation);  // [B, Tq, n_ff]
    fl += linear_flops(xq, w(Slot::FfnUp));
    // Adapters route on the prompt's last token, the last of the positions computed here.
    const at::Tensor route = m.adapters().empty() ? at::Tensor() : at::full({B}, Tq - 1, at::kLong);
    at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), route);
    fl += linear_flops(key, w(Slot::FfnDown));
    apply(patch, Site::MlpOut, mlp_out, q_from);
    return {h.narrow(1, q_from, Tq) + attn_out + mlp_out, attn_out, mlp_out, k, v};
}

BlockResult llama_block(const Model& m, int il, const at::Tensor& h, int64_t p0, const at::Tensor& past_k,
                        const at::Tensor& past_v, int64_t q_from, const BlockPatch& patch, double& fl) {
    const HParams& hp = m.hparams();
    const SlotTensors& L = m.layers[il];
    auto w = [&](Slot s) -> const at::Tensor& { return L[size_t(s)]; };
    const int64_t B = h.size(0), Tn = h.size(1), Tq = Tn - q_from;
    layers::Rotary rot = layers::rotary_tables(hp, hp.rotary_dim, p0, Tn, h.options());
    layers::Rotary rot_q{rot.cos.narrow(0, q_from, Tq), rot.sin.narrow(0, q_from, Tq)};
    at::Tensor x = layers::rms_norm(h, w(Slot::AttnNorm), hp.norm_eps);
    at::Tensor xq = x.narrow(1, q_from, Tq);
    at::Tensor q = at::linear(xq, w(Slot::AttnQ), w(Slot::AttnQB)).view({B, Tq, hp.n_head, hp.head_dim}).transpose(1, 2);
    at::Tensor k = at::linear(x, w(Slot::AttnK), w(Slot::AttnKB)).view({B, Tn, hp.n_head_kv, hp.head_dim}).transpose(1, 2);
    at::Tensor v = at::linear(x, w(Slot::AttnV), w(Slot::AttnVB)).view({B, Tn, hp.n_head_kv, hp.head_dim}).transpose(1, 2);
    fl += linear_flops(xq, w(Slot::AttnQ)) + 2 * linear_flops(x, w(Slot::AttnK));
    q = layers::apply_rope_half(q, rot_q);  // [B, H, Tq, hd]
    k = layers::apply_rope_half(k, rot);    // [B, Hkv, Tn, hd]
    at::Tensor kc = with_past(past_k, k), vc = with_past(past_v, v);
    at::Tensor bias = layers::attention_bias(B, Tq, p0 + q_from, at::Tensor(), true, hp.sliding_window, h.options());
    at::Tensor heads = layers::attention(q, kc, vc, bias, 1.0 / std::sqrt(double(hp.head_dim)), nullptr, il);
    fl += attention_flops(B, hp.n_head, Tq, kc.size(2), hp.head_dim);
    at::Tensor attn_out = at::linear(heads, w(Slot::AttnOut), w(Slot::AttnOutB));
    fl += linear_flops(heads, w(Slot::AttnOut));
    apply(patch, Site::AttnOut, attn_out, q_from);
    at::Tensor hq = h.narrow(1, q_from, Tq) + attn_out;
    x = layers::rms_norm(hq, w(Slot::FfnNorm), hp.norm_eps);
    at::Tensor gate = layers::activation(at::linear(x, w(Slot::FfnGate), w(Slot::FfnGateB)), hp.activation);
    at::Tensor key = gate * at::linear(x, w(Slot::FfnUp), w(Slot::FfnUpB));  // [B, Tq, n_ff]
    fl += 2 * linear_flops(x, w(Slot::FfnUp));
    // Adapters route on the prompt's last token, the last of the positions computed here.
    const at::Tensor route = m.adapters().empty() ? at::Tensor() : at::full({B}, Tq - 1, at::kLong);
    at::Tensor mlp_out = layers::adapted_linear(m, Slot::FfnDown, il, key, w(Slot::FfnDown), w(Slot::FfnDownB), route);
    fl += linear_flops(key, w(Slot::FfnDown));
    apply(patch, Site::MlpOut, mlp_out, q_from);
    return {hq + mlp_out, attn_out, mlp_out, k, v};
}

}  // namespace

BlockResult run_block(const Model& model, int layer, const at::Tensor& h, int64_t p0, const at::Tensor& past_k,
                      const at::Tensor& past_v, int64_t q_from, const BlockPatch& patch, double* flops) {
    double fl = 0;
    BlockResult r;
    switch (model.arch()) {
        case Arch::Gpt2: r = gpt2_block(model, layer, h, p0, past_k, past_v, q_from, patch, fl); break;
        case Arch::GptJ: r = gptj_block(model, layer, h, p0, past_k, past_v, q_from, patch, fl); break;
        case Arch::Llama: r = llama_block(model, layer, h, p0, past_k, past_v, q_from, patch, fl); break;
        default: throw Error(ErrorKind::Unsupported, "causal tracing needs a decoder (GPT-2, GPT-J or LLaMA family), not " + model.arch_name());
    }
    if (flops) *flops += fl;
    return r;
}

at::Tensor embed(const Model& model, const at::Tensor& ids) {
    const auto& g = model.globals;
    at::Tensor h = at::embedding(g[size_t(Slot::TokEmbd)], ids);  // [B, T, n_embd]
    if (model.arch() == Arch::Gpt2) {
        at::Tensor pos = at::arange(0, ids.size(1), ids.options());
        h = h + at::embedding(g[size_t(Slot::PosEmbd)], pos);
    }
    return h;
}

at::Tensor final_logits(const Model& model, const at::Tensor& h, double* flops) {
    const HParams& hp = model.hparams();
    const auto& g = model.globals;
    at::Tensor x = model.arch() == Arch::Llama ? layers::rms_norm(h, g[size_t(Slot::OutNorm)], hp.norm_eps)
                                               : layers::layer_norm(h, g[size_t(Slot::OutNorm)], g[size_t(Slot::OutNormB)], hp.norm_eps);
    const at::Tensor& out_b = model.arch() == Arch::GptJ ? g[size_t(Slot::OutputB)] : at::Tensor();
    if (flops) *flops += linear_flops(x, g[size_t(Slot::Output)]);
    return at::linear(x, g[size_t(Slot::Output)], out_b.defined() ? out_b : at::Tensor());
}

}  // namespace engram::trace_detail
