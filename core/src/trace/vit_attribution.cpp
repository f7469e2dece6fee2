// ViT attribution: the encoder run with head interventions, direct logit attribution through the
// final LayerNorm with σ frozen, exact single-head ablation effects, per-head patch maps, attention
// rollout and the attention-versus-MLP sensitivity diagnostic (docs/methods.md,
// "Locating in a ViT: per-head attribution").
#include "engram/vit.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "engram/error.h"
#include "engram/hooks.h"
#include "engram/model.h"
#include "models/vit_blocks.h"
#include "trace/vit_internal.h"

namespace engram::vit {

namespace {

void require_vit(const Model& model) {
    if (model.arch() != Arch::Vit) throw Error(ErrorKind::Argument, model.arch_name() + " is not a vision transformer");
}

const at::Tensor& global(const Model& m, Slot s) { return m.weight(s); }

// The gate of layer l as [rows or 1, n_head] from a [n_layer, n_head] or [B, n_layer, n_head] keep tensor.
at::Tensor layer_gate(const at::Tensor& keep, int l) {
    return keep.dim() == 2 ? keep.select(0, l).unsqueeze(0) : keep.select(1, l);
}

}  // namespace

const char* ablation_kind_name(AblationKind kind) { return kind == AblationKind::Zero ? "zero" : "mean"; }

AblationKind ablation_kind_from_name(const std::string& name) {
    if (name == "zero") return AblationKind::Zero;
    if (name == "mean") return AblationKind::Mean;
    throw Error(ErrorKind::Argument, "unknown ablation '" + name + "' (zero, mean)");
}

RunResult run(const Model& m, const at::Tensor& pixels, const RunOptions& o) {
    require_vit(m);
    const HParams& hp = m.hparams();
    const int64_t n_layer = hp.n_layer, n_head = hp.n_head, hd = hp.head_dim;
    if (o.from_layer < 0 || o.from_layer >= n_layer) throw Error(ErrorKind::Argument, "from_layer is outside the model");
    if (o.from_layer > 0 && o.keep_components)
        throw Error(ErrorKind::Argument, "the components need a run from the pixels (from_layer 0)");
    at::Tensor h = o.from_layer > 0 ? o.start : vit_blocks::embed(m, pixels);  // [B, T, n_embd]
    const int64_t B = h.size(0);
    const HeadIntervention* iv = o.intervention;
    if (iv && iv->keep.defined()) {
        const auto& k = iv->keep;
        const bool ok = (k.dim() == 2 && k.size(0) == n_layer && k.size(1) == n_head) ||
                        (k.dim() == 3 && k.size(0) == B && k.size(1) == n_layer && k.size(2) == n_head);
        if (!ok) throw Error(ErrorKind::Argument, "a head gate must be [n_layer, n_head] or [batch, n_layer, n_head]");
    }
    if (iv && iv->mean.defined() && iv->mean.sizes().vec() != std::vector<int64_t>{n_layer, n_head, hd})
        throw Error(ErrorKind::Argument, "head means must be [n_layer, n_head, head_dim]");

    RunResult r;
    std::vector<at::Tensor> head_cls, mlp_cls;
    if (o.keep_components) r.embed = h.select(1, 0).clone();
    for (int l = o.from_layer; l < n_layer; ++l) {
        Hooks hooks;
        if (iv && iv->keep.defined()) {
            at::Tensor gate = layer_gate(iv->keep, l).to(h.options()).view({-1, 1, n_head, 1});  // [rows, 1, H, 1]
            at::Tensor mean;
            if (iv->mean.defined()) mean = iv->mean.select(0, l).to(h.options()).view({1, 1, n_head, hd});
            hooks.on(Site::HeadOut, l, [gate, mean](at::Tensor& v) {  // v [B, T, H, hd]
                v = mean.defined() ? v * gate + (1 - gate) * mean : v * gate;
            });
        }
        if (o.keep_components) {
            hooks.capture(Site::HeadOut, l);
            hooks.capture(Site::MlpOut, l);
        }
        if (o.keep_attention) hooks.capture(Site::AttnProbs, l);
        if (o.keep_layer_inputs) r.layer_inputs.push_back(h);
        h = vit_blocks::block(m, l, h, &hooks);
        if (o.keep_components) {
            const at::Tensor& w_o = m.weight(Slot::AttnOut, l);                                   // [n_embd, n_head*hd]
            at::Tensor ho = hooks.captured(Site::HeadOut, l).select(1, 0);                        // [B, H, hd]
            head_cls.push_back(at::einsum("bhk,dhk->bhd", {ho, w_o.view({hp.n_embd, n_head, hd})}));  // [B, H, n_embd]
            mlp_cls.push_back(hooks.captured(Site::MlpOut, l).select(1, 0));                      // [B, n_embd]
        }
        if (o.keep_attention) r.attention.push_back(hooks.captured(Site::AttnProbs, l));
    }
    r.residual = h.select(1, 0);
    r.features = vit_blocks::final_norm(m, h).select(1, 0);
    r.logits = vit_blocks::classify(m, r.features);
    if (o.keep_components) {
        r.heads = at::stack(head_cls, 1);  // [B, n_layer, n_head, n_embd]
        r.mlps = at::stack(mlp_cls, 1);    // [B, n_layer, n_embd]
    }
    return r;
}

namespace detail {

AblationScan ablation_scan(const Model& m, const at::Tensor& pixels, const std::vector<int64_t>& target,
                           const std::vector<int64_t>& contrast, AblationKind kind, const at::Tensor& mean) {
    require_vit(m);
    const HParams& hp = m.hparams();
    const int64_t n_layer = hp.n_layer, n_head = hp.n_head, n = pixels.size(0);
    if (int64_t(target.size()) != n || int64_t(contrast.size()) != n)
        throw Error(ErrorKind::Argument, "ablation needs one target and one contrast per image");
    if (kind == AblationKind::Mean && !mean.defined()) throw Error(ErrorKind::Argument, "mean ablation needs the head means");
    auto score = [&](const at::Tensor& logits, int64_t image) {  // logits [rows, n_labels] -> [rows]
        at::Tensor s = logits.select(1, target[image]).to(at::kDouble);
        if (contrast[image] >= 0) s = s - logits.select(1, contrast[image]).to(at::kDouble);
        return s;
    };
    AblationScan out;
    out.effects = at::zeros({n, n_layer, n_head}, at::kDouble);
    out.predictions = at::zeros({n, n_layer, n_head}, at::kLong);
    out.base_logits = at::empty({n, hp.n_labels}, at::kFloat);
    // Images one at a time: each layer's n_head variants are one batch from the cached input.
    for (int64_t i = 0; i < n; ++i) {
        RunOptions base_opts;
        base_opts.keep_layer_inputs = true;
        RunResult base = run(m, pixels.narrow(0, i, 1), base_opts);
        const double s0 = score(base.logits, i).item<double>();
        out.base_logits[i] = base.logits[0].to(at::kCPU).to(at::kFloat);
        for (int l = 0; l < n_layer; ++l) {
            HeadIntervention iv;
            iv.keep = at::ones({n_head, n_layer, n_head}, at::kFloat);
            for (int64_t h = 0; h < n_head; ++h) iv.keep[h][l][h] = 0.0f;
            if (kind == AblationKind::Mean) iv.mean = mean;
            RunOptions opts;
            opts.intervention = &iv;
            at::Tensor logits;
            if (l == 0) {
                logits = run(m, pixels.narrow(0, i, 1).expand({n_head, -1, -1, -1}), opts).logits;
            } else {
                opts.from_layer = l;
                opts.start = base.layer_inputs[l].expand({n_head, -1, -1}).contiguous();
                logits = run(m, {}, opts).logits;
            }
            out.effects[i][l] = (score(logits, i) - s0).to(at::kCPU);
            out.predictions[i][l] = logits.argmax(1).to(at::kCPU);
        }
    }
    return out;
}

}  // namespace detail

at::Tensor ablation_effects(const Model& m, const at::Tensor& pixels, const std::vector<int64_t>& target,
                            const std::vector<int64_t>& contrast, AblationKind kind, const at::Tensor& mean) {
    c10::InferenceMode guard;
    return detail::ablation_scan(m, pixels, target, contrast, kind, mean).effects;
}

at::Tensor mean_head_outputs(const Model& m, const at::Tensor& pixels, int64_t batch) {
    require_vit(m);
    if (pixels.size(0) == 0) throw Error(ErrorKind::Argument, "mean ablation needs reference images");
    c10::InferenceMode guard;
    const HParams& hp = m.hparams();
    at::Tensor sum = at::zeros({hp.n_layer, hp.n_head, hp.head_dim}, at::kDouble);
    int64_t count = 0;
    for (int64_t b = 0; b < pixels.size(0); b += batch) {
        const int64_t nb = std::min(batch, pixels.size(0) - b);
        Hooks hooks;
        hooks.capture(Site::HeadOut, kAnyLayer);
        ForwardInput in;
        in.pixel_values = pixels.narrow(0, b, nb);
        m.forward(in, &hooks);
        for (int l = 0; l < hp.n_layer; ++l) {
            const at::Tensor& ho = hooks.captured(Site::HeadOut, l);  // [nb, T, H, hd]
            sum[l] += ho.to(at::kCPU).to(at::kDouble).sum(at::IntArrayRef{0, 1});
            if (l == 0) count += ho.size(0) * ho.size(1);
        }
    }
    return (sum / double(count)).to(at::kFloat);
}

at::Tensor attention_rollout(const std::vector<at::Tensor>& attention) {
    if (attention.empty()) throw Error(ErrorKind::Argument, "rollout needs the attention of every layer");
    at::Tensor joint;
    for (const at::Tensor& a : attention) {                  // [1, H, T, T] or [H, T, T]
        at::Tensor mean = (a.dim() == 4 ? a[0] : a).to(at::kCPU).to(at::kDouble).mean(0);  // [T, T]
        at::Tensor hat = mean + at::eye(mean.size(0), mean.options());
        hat = hat / hat.sum(-1, true);
        joint = joint.defined() ? at::matmul(hat, joint) : hat;  // later layers multiply on the left
    }
    return joint[0].narrow(0, 1, joint.size(1) - 1);
}

Attribution attribute(const Model& m, const at::Tensor& pixel, const AttributionOptions& o) {
    require_vit(m);
    if (pixel.dim() != 4 || pixel.size(0) != 1) throw Error(ErrorKind::Argument, "attribute takes one image [1, C, H, W]");
    c10::InferenceMode guard;
    const HParams& hp = m.hparams();
    const int64_t n_labels = hp.n_labels, n_head = hp.n_head, hd = hp.head_dim;
    RunOptions ro;
    ro.keep_components = true;
    ro.keep_attention = o.patch_maps || o.attention;
    ro.keep_layer_inputs = o.patch_maps;
    RunResult r = run(m, pixel, ro);

    Attribution a;
    a.logits = r.logits[0].to(at::kCPU).to(at::kDouble);
    a.predicted = r.logits[0].argmax().item<int64_t>();
    a.target = o.target < 0 ? a.predicted : o.target;
    if (a.target >= n_labels) throw Error(ErrorKind::Argument, "class " + std::to_string(a.target) + " is outside the model's " +
                                                                   std::to_string(n_labels) + " labels");
    if (o.contrast == -1) {
        at::Tensor l = a.logits.clone();
        l[a.target] = -std::numeric_limits<double>::infinity();
        a.contrast = l.argmax().item<int64_t>();
    } else if (o.contrast >= 0) {
        if (o.contrast >= n_labels || o.contrast == a.target)
            throw Error(ErrorKind::Argument, "the contrast class must be another of the model's labels");
        a.contrast = o.contrast;
    } else {
        a.contrast = -1;
    }
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    at::Tensor W = global(m, Slot::Output).to(at::kCPU).to(at::kDouble);   // [n_labels, n_embd]
    at::Tensor b = global(m, Slot::OutputB).to(at::kCPU).to(at::kDouble);  // [n_labels]
    at::Tensor dir = W[a.target].clone();
    double b_dir = b[a.target].item<double>();
    a.score = r.logits[0][a.target].item<double>();
    if (a.contrast >= 0) {
        dir -= W[a.contrast];
        b_dir -= b[a.contrast].item<double>();
        a.score -= r.logits[0][a.contrast].item<double>();
    }
    // Final LayerNorm with σ frozen: dir · LN(c) = c · w_eff for every component c, where
    // w_eff = (g - mean(g)) / σ and g = dir ⊙ γ (the mean subtraction moved onto the weights).
    at::Tensor res = r.residual[0].to(at::kCPU).to(at::kDouble);  // [n_embd]
    const double sigma = std::sqrt(res.var(/*unbiased=*/false).item<double>() + hp.norm_eps);
    at::Tensor gamma = global(m, Slot::OutNorm).to(at::kCPU).to(at::kDouble);
    at::Tensor beta = global(m, Slot::OutNormB).to(at::kCPU).to(at::kDouble);
    at::Tensor g = dir * gamma;
    at::Tensor w_eff = (g - g.mean()) / sigma;  // [n_embd]

    a.heads = at::matmul(r.heads[0].to(at::kCPU).to(at::kDouble), w_eff);  // [n_layer, n_head]
    a.mlps = at::matmul(r.mlps[0].to(at::kCPU).to(at::kDouble), w_eff);    // [n_layer]
    a.embed = at::dot(r.embed[0].to(at::kCPU).to(at::kDouble), w_eff).item<double>();
    a.attn_bias = at::empty({hp.n_layer}, f64);
    for (int l = 0; l < hp.n_layer; ++l)
        a.attn_bias[l] = at::dot(m.weight(Slot::AttnOutB, l).to(at::kCPU).to(at::kDouble), w_eff).item<double>();
    a.bias = a.attn_bias.sum().item<double>() + at::dot(dir, beta).item<double>() + b_dir;
    a.sum_of_components = a.embed + a.heads.sum().item<double>() + a.mlps.sum().item<double>() + a.bias;

    if (o.ablation) {
        at::Tensor mean = o.mean;
        if (o.ablation_kind == AblationKind::Mean && !mean.defined())
            throw Error(ErrorKind::Argument, "mean ablation needs the head means (mean_head_outputs over reference images)");
        a.ablation = detail::ablation_scan(m, pixel, {a.target}, {a.contrast}, o.ablation_kind, mean).effects[0];
    }
    if (o.patch_maps) {
        // s[l, h, j] = a_{l,h}[CLS, j] · (W_O^h v_{l,h,j}) · w_eff; the sum over j is the head's score.
        const int64_t T = r.attention[0].size(-1);
        a.patch_maps = at::empty({hp.n_layer, n_head, T - 1}, f64);
        a.cls_share = at::empty({hp.n_layer, n_head}, f64);
        for (int l = 0; l < hp.n_layer; ++l) {
            at::Tensor v = vit_blocks::values(m, l, r.layer_inputs[l])[0].to(at::kCPU).to(at::kDouble);  // [H, T, hd]
            at::Tensor cls_row = r.attention[l][0].select(1, 0).to(at::kCPU).to(at::kDouble);           // [H, T]
            at::Tensor w_o = m.weight(Slot::AttnOut, l).to(at::kCPU).to(at::kDouble).view({hp.n_embd, n_head, hd});
            at::Tensor u = at::einsum("dhk,d->hk", {w_o, w_eff});                                        // [H, hd]
            at::Tensor per_token = cls_row * at::einsum("htk,hk->ht", {v, u});                          // [H, T]
            a.cls_share[l] = per_token.select(1, 0);
            a.patch_maps[l] = per_token.narrow(1, 1, T - 1);
        }
    }
    if (o.attention) {
        a.rollout = attention_rollout(r.attention);
        const int64_t T = r.attention[0].size(-1);
        a.cls_attention = at::empty({hp.n_layer, n_head, T - 1}, f64);
        for (int l = 0; l < hp.n_layer; ++l)
            a.cls_attention[l] = r.attention[l][0].select(1, 0).narrow(1, 1, T - 1).to(at::kCPU).to(at::kDouble);
    }
    return a;
}

ComponentSensitivity component_sensitivity(const Model& m, const at::Tensor& pixels, const std::vector<int64_t>& labels) {
    require_vit(m);
    if (int64_t(labels.size()) != pixels.size(0)) throw Error(ErrorKind::Argument, "one label per image");
    c10::InferenceMode guard;
    const int n_layer = int(m.hparams().n_layer);
    at::Tensor y = at::tensor(labels, at::kLong);
    auto log_probs = [&](Hooks* hooks) {
        std::vector<at::Tensor> out;
        for (int64_t b = 0; b < pixels.size(0); b += 256) {
            ForwardInput in;
            in.pixel_values = pixels.narrow(0, b, std::min<int64_t>(256, pixels.size(0) - b));
            out.push_back(at::log_softmax(m.forward(in, hooks).logits.to(at::kCPU).to(at::kDouble), -1));
        }
        return at::cat(out);  // [n, n_labels]
    };
    at::Tensor base = log_probs(nullptr);
    at::Tensor base_pred = base.argmax(1);
    at::Tensor base_lp = base.gather(1, y.unsqueeze(1)).squeeze(1);
    ComponentSensitivity s;
    s.images = pixels.size(0);
    for (int l = 0; l < n_layer; ++l) {
        for (Site site : {Site::AttnOut, Site::MlpOut}) {
            Hooks hooks;
            hooks.on(site, l, [](at::Tensor& v) { v = at::zeros_like(v); });
            at::Tensor lp = log_probs(&hooks);
            const double flip = (lp.argmax(1) != base_pred).to(at::kDouble).mean().item<double>();
            const double dlogp = (lp.gather(1, y.unsqueeze(1)).squeeze(1) - base_lp).mean().item<double>();
            (site == Site::AttnOut ? s.attn_flip : s.mlp_flip).push_back(flip);
            (site == Site::AttnOut ? s.attn_dlogp : s.mlp_dlogp).push_back(dlogp);
        }
    }
    return s;
}

at::Tensor predict(const Model& m, const at::Tensor& pixels, int64_t batch) {
    require_vit(m);
    c10::InferenceMode guard;
    std::vector<at::Tensor> out;
    for (int64_t b = 0; b < pixels.size(0); b += batch) {
        ForwardInput in;
        in.pixel_values = pixels.narrow(0, b, std::min(batch, pixels.size(0) - b));
        out.push_back(m.forward(in).logits.argmax(1).to(at::kCPU));
    }
    return out.empty() ? at::empty({0}, at::kLong) : at::cat(out);
}

}  // namespace engram::vit
