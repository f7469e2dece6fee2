#include "models/layers.h"

#include "arch/arch.h"

#include <cmath>
#include <limits>

#include "engram/error.h"

namespace engram::layers {

at::Tensor activation(const at::Tensor& x, const std::string& name) {
    if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return at::gelu(x, "tanh");
    if (name == "gelu") return at::gelu(x);
    if (name == "relu") return at::relu(x);
    if (name == "silu" || name == "swish") return at::silu(x);
    throw Error(ErrorKind::Unsupported, "activation '" + name + "' is not supported");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
    // As HF: normalise in fp32, then scale.
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
    return weight * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
    return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

at::Tensor attention_bias(int64_t batch, int64_t t_new, int64_t n_past, const at::Tensor& attention_mask, bool causal,
                          int64_t window, const at::TensorOptions& options) {
    const int64_t tk = n_past + t_new;
    const auto dev = options.device();
    at::Tensor q_pos = at::arange(n_past, tk, at::TensorOptions().dtype(at::kLong).device(dev)).unsqueeze(1);  // [T, 1]
    at::Tensor k_pos = at::arange(0, tk, at::TensorOptions().dtype(at::kLong).device(dev)).unsqueeze(0);       // [1, Tk]
    at::Tensor allowed = at::ones({t_new, tk}, at::TensorOptions().dtype(at::kBool).device(dev));
    if (causal) allowed = allowed & (k_pos <= q_pos);
    if (window > 0) allowed = allowed & (q_pos - k_pos < window);
    at::Tensor allowed_b = allowed.unsqueeze(0).unsqueeze(0).expand({batch, 1, t_new, tk});  // [B, 1, T, Tk]
    if (attention_mask.defined()) {
        at::Tensor m = attention_mask.to(dev).to(at::kBool);
        if (m.dim() != 2 || m.size(0) != batch)
            throw Error(ErrorKind::Argument, "attention_mask must be [batch, positions]");
        if (m.size(1) == t_new && n_past > 0)
            m = at::cat({at::ones({batch, n_past}, m.options()), m}, 1);
        if (m.size(1) != tk)
            throw Error(ErrorKind::Argument, "attention_mask has " + std::to_string(m.size(1)) + " positions, expected " +
                                                 std::to_string(tk));
        allowed_b = allowed_b & m.view({batch, 1, 1, tk});
    }
    // The most negative finite value, as HF does, so a fully masked (padding) row stays finite.
    const double neg = std::numeric_limits<float>::lowest();
    return at::where(allowed_b, at::zeros({}, options), at::full({}, neg, options));
}

Rotary rotary_tables(const HParams& hp, int64_t rotary_dim, int64_t n_past, int64_t t_new, const at::TensorOptions& options,
                     const at::Tensor& position_ids) {
    // Frequencies in fp64 on the CPU first, then cast, so every device sees the same tables.
    auto f64 = at::TensorOptions().dtype(at::kDouble);
    at::Tensor inv_freq = 1.0 / at::pow(hp.rope_theta, at::arange(0, rotary_dim, 2, f64) / static_cast<double>(rotary_dim));
    if (hp.rope_type == RopeType::Linear) {
        inv_freq = inv_freq / hp.rope_factor;
    } else if (hp.rope_type == RopeType::Llama3) {
        const double old_ctx = static_cast<double>(hp.rope_original_max_pos);
        const double low_wavelen = old_ctx / hp.rope_low_freq_factor;
        const double high_wavelen = old_ctx / hp.rope_high_freq_factor;
        at::Tensor wavelen = 2.0 * M_PI / inv_freq;
        at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / hp.rope_factor, inv_freq);
        at::Tensor smooth = (old_ctx / wavelen - hp.rope_low_freq_factor) / (hp.rope_high_freq_factor - hp.rope_low_freq_factor);
        at::Tensor smoothed = (1.0 - smooth) * scaled / hp.rope_factor + smooth * scaled;
        at::Tensor medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen);
        inv_freq = at::where(medium, smoothed, scaled);
    }
    // HF computes the angles in fp32 from fp32 inv_freq; match that to stay within 1e-6.
    at::Tensor inv32 = inv_freq.to(at::kFloat);
    at::Tensor angles;  // [T, rotary_dim/2] or [B, T, rotary_dim/2]: the same products either way
    if (position_ids.defined()) {
        angles = position_ids.to(at::kCPU).to(at::kFloat).unsqueeze(-1) * inv32;
    } else {
        at::Tensor pos = at::arange(n_past, n_past + t_new, at::TensorOptions().dtype(at::kFloat));
        angles = at::outer(pos, inv32);
    }
    return Rotary{angles.cos().to(options), angles.sin().to(options)};
}

at::Tensor apply_rope_half(const at::Tensor& x, const Rotary& rot) {
    const int64_t rd = rot.cos.size(-1) * 2;
    at::Tensor cos = at::cat({rot.cos, rot.cos}, -1);  // [T, rd] or, per row, [B, 1, T, rd]
    at::Tensor sin = at::cat({rot.sin, rot.sin}, -1);
    if (cos.dim() == 3) {
        cos = cos.unsqueeze(1);
        sin = sin.unsqueeze(1);
    }
    at::Tensor xr = x.narrow(-1, 0, rd);
    at::Tensor x1 = xr.narrow(-1, 0, rd / 2), x2 = xr.narrow(-1, rd / 2, rd / 2);
    at::Tensor rotated = xr * cos + at::cat({-x2, x1}, -1) * sin;
    if (rd == x.size(-1)) return rotated;
    return at::cat({rotated, x.narrow(-1, rd, x.size(-1) - rd)}, -1);
}

at::Tensor apply_rope_interleaved(const at::Tensor& x, const Rotary& rot) {
    const int64_t rd = rot.cos.size(-1) * 2;
    // [T, rd] with each frequency repeated for its pair, broadcast over [B, T, H, rd].
    const int64_t head_dim = rot.cos.dim() == 3 ? 2 : 1;  // [T, 1, rd] or, per row, [B, T, 1, rd]
    at::Tensor cos = rot.cos.repeat_interleave(2, -1).unsqueeze(head_dim);
    at::Tensor sin = rot.sin.repeat_interleave(2, -1).unsqueeze(head_dim);
    at::Tensor xr = x.narrow(-1, 0, rd);
    at::Tensor even = xr.slice(-1, 0, rd, 2), odd = xr.slice(-1, 1, rd, 2);
    at::Tensor rotate_pairs = at::stack({-odd, even}, -1).flatten(-2);
    at::Tensor rotated = xr * cos + rotate_pairs * sin;
    if (rd == x.size(-1)) return rotated;
    return at::cat({rotated, x.narrow(-1, rd, x.size(-1) - rd)}, -1);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias, double scale,
                     Hooks* hooks, int layer) {
    const int64_t n_head = q.size(1), n_head_kv = k.size(1);
    at::Tensor kk = k, vv = v;
    if (n_head_kv != n_head) {
        kk = k.repeat_interleave(n_head / n_head_kv, 1);
        vv = v.repeat_interleave(n_head / n_head_kv, 1);
    }
    at::Tensor scores = at::matmul(q, kk.transpose(-1, -2)) * scale + bias;  // [B, H, T, Tk]
    at::Tensor probs = at::softmax(scores, -1);
    hook(hooks, Site::AttnProbs, layer, probs);
    at::Tensor heads = at::matmul(probs, vv).transpose(1, 2);  // [B, T, H, hd]
    if (hooks && hooks->wants(Site::HeadOut, layer)) {
        heads = heads.contiguous();
        hooks->run(Site::HeadOut, layer, heads);
    }
    return heads.reshape({heads.size(0), heads.size(1), -1});
}

std::pair<at::Tensor, at::Tensor> update_cache(KvCache* cache, int layer, int64_t n_layer, at::Tensor k, at::Tensor v) {
    if (!cache) return {k, v};
    if (cache->k.empty()) {
        cache->k.resize(n_layer);
        cache->v.resize(n_layer);
    }
    if (cache->k[layer].defined()) {
        k = at::cat({cache->k[layer], k}, 2);
        v = at::cat({cache->v[layer], v}, 2);
    }
    cache->k[layer] = k;
    cache->v[layer] = v;
    return {k, v};
}

int64_t past_length(const KvCache* cache) { return cache ? cache->n_past() : 0; }

LayerRange layer_range(const ForwardInput& input, int64_t n_layer, int64_t batch, int64_t t_new, int64_t n_embd) {
    LayerRange r;
    r.end = static_cast<int>(n_layer);
    const at::Tensor& pos = input.position_ids;
    if (pos.defined() && (pos.dim() != 2 || pos.size(0) != batch || pos.size(1) != t_new))
        throw Error(ErrorKind::Argument, "position_ids must be [batch, positions]");
    if (input.residual.defined()) {
        if (input.start_layer < 0 || input.start_layer > n_layer)
            throw Error(ErrorKind::Argument, "start_layer " + std::to_string(input.start_layer) + " is outside the model's " +
                                                 std::to_string(n_layer) + " layers");
        if (input.residual.dim() != 3 || input.residual.size(0) != batch || input.residual.size(1) != t_new || input.residual.size(2) != n_embd)
            throw Error(ErrorKind::Argument, "the starting residual must be [batch, positions, n_embd]");
        r.begin = input.start_layer;
    } else if (input.start_layer != 0) {
        throw Error(ErrorKind::Argument, "start_layer needs the residual entering that layer");
    }
    if (input.stop_layer >= 0 && input.stop_layer < n_layer) {
        r.end = input.stop_layer;
        r.logits = false;
    }
    return r;
}

at::Tensor start_residual(const ForwardInput& input, Hooks* hooks, const std::function<at::Tensor()>& embed) {
    if (input.residual.defined()) return input.residual;
    at::Tensor h = embed();
    hook(hooks, Site::Embed, 0, h);
    return h;
}

at::Tensor project_logits(const at::Tensor& h, const ForwardInput& input, const at::Tensor& out_w, const at::Tensor& out_b) {
    at::Tensor x = h;
    if (input.logit_index.defined()) {
        x = h.reshape({h.size(0) * h.size(1), h.size(2)}).index_select(0, input.logit_index.to(h.device()));  // [N, n_embd]
    } else if (input.last_logits_only) {
        const int64_t B = h.size(0), T = h.size(1);
        at::Tensor last;
        if (input.attention_mask.defined() && input.attention_mask.size(1) == T)
            last = input.attention_mask.to(h.device()).to(at::kLong).sum(1).sub(1).clamp_min(0);
        else
            last = at::full({B}, T - 1, at::TensorOptions().dtype(at::kLong).device(h.device()));
        x = h.index({at::arange(B, last.options()), last});  // [B, n_embd]
    }
    return at::linear(x, out_w, out_b.defined() ? out_b : at::Tensor());
}

at::Tensor route_positions(const Model& model, const ForwardInput& input, int64_t batch, int64_t t_new) {
    if (model.adapters().empty()) return {};
    if (input.route_position.defined()) {
        if (input.route_position.dim() != 1 || input.route_position.size(0) != batch)
            throw Error(ErrorKind::Argument, "route_position must be [batch] = [" + std::to_string(batch) + "]");
        return input.route_position.to(at::kCPU).to(at::kLong);
    }
    if (!input.attention_mask.defined()) return at::full({batch}, t_new - 1, at::kLong);
    const at::Tensor m = input.attention_mask.to(at::kCPU);
    return m.narrow(1, m.size(1) - t_new, t_new).to(at::kLong).sum(1) - 1;  // right padding: the last 1
}

at::Tensor adapted_linear(const Model& model, Slot slot, int layer, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                          const at::Tensor& route) {
    at::Tensor y = at::linear(x, w, b);
    if (route.defined()) model.adapters().on_linear(slot, layer, x, y, route);
    return y;
}

at::Tensor with_past(const at::Tensor& past, const at::Tensor& now) {
    if (!past.defined() || past.size(2) == 0) return now;
    return at::cat({past, now}, 2);
}

Rotary rotary_rows(const Rotary& rot, int64_t q_from, int64_t t_query) {
    if (!rot.cos.defined() || q_from == 0) return rot;
    const int64_t dim = rot.cos.dim() - 2;  // [T, r] or, per row, [B, T, r]
    return {rot.cos.narrow(dim, q_from, t_query), rot.sin.narrow(dim, q_from, t_query)};
}

ForwardOutput decoder_forward(const Model& m, const ForwardInput& in, Hooks* hooks, KvCache* cache) {
    const Family& fam = family_of(m.arch());
    const HParams& hp = m.hparams();
    const at::Tensor ids = in.input_ids.to(m.device());
    const int64_t B = ids.size(0), T = ids.size(1), n_past = past_length(cache);
    const LayerRange range = layer_range(in, hp.n_layer, B, T, hp.n_embd);
    BlockIn bi;
    bi.route = route_positions(m, in, B, T);
    bi.hooks = hooks;
    bi.h = start_residual(in, hooks, [&] { return fam.embed(m, ids, n_past, in.position_ids); });  // [B, T, n_embd]
    bi.bias = attention_bias(B, T, n_past, in.attention_mask, true, hp.sliding_window, bi.h.options());
    if (hp.rotary_dim > 0) bi.rot = rotary_tables(hp, hp.rotary_dim, n_past, T, bi.h.options(), in.position_ids);
    if (cache && cache->k.empty()) {
        cache->k.resize(size_t(hp.n_layer));
        cache->v.resize(size_t(hp.n_layer));
    }
    for (int il = range.begin; il < range.end; ++il) {
        if (cache) {
            bi.past_k = cache->k[size_t(il)];
            bi.past_v = cache->v[size_t(il)];
        }
        BlockOut out = fam.block(m, il, bi);
        if (cache) {
            cache->k[size_t(il)] = out.k;
            cache->v[size_t(il)] = out.v;
        }
        bi.h = out.h;
    }
    if (!range.logits) return {};
    const auto& g = m.globals;
    return {project_logits(fam.final_norm(m, bi.h), in, g[size_t(Slot::Output)], g[size_t(Slot::OutputB)])};
}

}  // namespace engram::layers
