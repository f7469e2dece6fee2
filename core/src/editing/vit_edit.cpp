// Head-level ViT editing ("RefineViT-style"; docs/methods.md, "Vision transformers: head-level
// editing") and the MLP fine-tuning baseline of "Learning Where to Edit Vision Transformers".
//
// The paper's code and full text could not be read: the head utility (exact single-head ablation
// of the fixed-class margin by default), the aggregation (mean, ties by flips), the greedy
// selection, P's site (the final CLS features) and its loss are our reconstruction from the public
// clues, and each is a setting recorded in the edit's hparams.
#include "engram/vit.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "editing/internal.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"
#include "trace/vit_internal.h"

namespace engram::vit {

namespace {

void check_edit_set(const Model& m, const at::Tensor& pixels, const std::vector<int64_t>& targets) {
    if (m.arch() != Arch::Vit) throw Error(ErrorKind::Argument, m.arch_name() + " is not a vision transformer");
    if (!pixels.defined() || pixels.dim() != 4 || pixels.size(0) == 0) throw Error(ErrorKind::Argument, "an edit needs at least one image");
    if (int64_t(targets.size()) != pixels.size(0)) throw Error(ErrorKind::Argument, "an edit needs one target class per image");
    for (int64_t t : targets)
        if (t < 0 || t >= m.hparams().n_labels)
            throw Error(ErrorKind::Argument, "target class " + std::to_string(t) + " is outside the model's " +
                                                 std::to_string(m.hparams().n_labels) + " labels");
}

double share_correct(const at::Tensor& logits, const at::Tensor& y) {
    return (logits.argmax(1).to(at::kCPU) == y).to(at::kDouble).mean().item<double>();
}

// The requests of an image edit: per image its pixel hash, target and prediction before.
nlohmann::json image_requests(const at::Tensor& pixels, const std::vector<int64_t>& targets, const at::Tensor& before) {
    nlohmann::json out = nlohmann::json::array();
    at::Tensor px = pixels.to(at::kCPU).to(at::kFloat).contiguous();
    for (int64_t i = 0; i < px.size(0); ++i) {
        at::Tensor one = px[i].contiguous();
        out.push_back({{"image_sha256", sha256_hex(one.data_ptr(), size_t(one.numel()) * sizeof(float))},
                       {"target", targets[size_t(i)]},
                       {"predicted_before", before[i].item<int64_t>()}});
    }
    return out;
}

// Zeroing head h's columns of W_O as a rank-head_dim delta: u = -W_O[:, cols], v = the identity on
// those columns. Every element of D is one product plus exact zeros, so W + D is exactly 0 there
// and exactly W elsewhere.
Delta zero_head_delta(const Model& m, int layer, int head) {
    const int64_t hd = m.hparams().head_dim;
    const at::Tensor& w = m.weight(Slot::AttnOut, layer);  // [n_embd, n_head*hd]
    Delta d;
    d.tensor = m.tensor_name(Slot::AttnOut, layer);
    d.kind = DeltaKind::LowRank;
    d.shape = w.sizes().vec();
    d.u = -w.narrow(1, head * hd, hd).to(at::kCPU).to(at::kFloat).contiguous();  // [n_embd, hd]
    d.v = at::zeros({w.size(1), hd}, at::kFloat);
    d.v.narrow(0, head * hd, hd).copy_(at::eye(hd, at::kFloat));
    return d;
}

}  // namespace

const char* head_score_name(HeadScore score) { return score == HeadScore::Ablation ? "ablation" : "dla"; }

HeadEditResult edit_heads(const Model& m, const at::Tensor& edit_px, const std::vector<int64_t>& targets,
                          const at::Tensor& ref_px, const HeadEditOptions& o) {
    check_edit_set(m, edit_px, targets);
    const auto t0 = std::chrono::steady_clock::now();
    const HParams& hp = m.hparams();
    const int64_t n = edit_px.size(0), n_layer = hp.n_layer, n_head = hp.n_head, d = hp.n_embd;
    const bool have_ref = ref_px.defined() && ref_px.size(0) > 0;
    if (o.use_projection && !have_ref) throw Error(ErrorKind::Argument, "fitting P needs reference images (unrelated, correctly classified)");
    if (o.use_heads && o.ablation == AblationKind::Mean && !have_ref)
        throw Error(ErrorKind::Argument, "mean ablation needs reference images to take the head means over");
    if (!o.use_heads && !o.use_projection) throw Error(ErrorKind::Argument, "an edit with neither heads nor P changes nothing");
    if (o.align != "features" && o.align != "kl") throw Error(ErrorKind::Argument, "align must be features or kl, got '" + o.align + "'");
    const int k_max = o.k_max >= 0 ? o.k_max : std::max<int>(1, int(std::lround(0.05 * double(n_layer * n_head))));
    if (o.k_max < -1 || o.lambda < 0 || o.mu < 0 || o.steps < 0 || o.lr <= 0)
        throw Error(ErrorKind::Argument, "k_max, lambda, mu and steps must be >= 0 and lr > 0");
    at::Tensor y = at::tensor(targets, at::kLong);

    HeadEditResult res;
    res.scores = at::zeros({n_layer, n_head}, at::kDouble);
    res.flips = at::zeros({n_layer, n_head}, at::kLong);
    HeadIntervention iv;
    iv.keep = at::ones({n_layer, n_head}, at::kFloat);
    at::Tensor before, mean;
    {
        c10::InferenceMode guard;
        at::Tensor base_logits = run(m, edit_px).logits.to(at::kCPU);
        before = base_logits.argmax(1);
        // The margin is taken against the wrong class the model predicts (fixed), or the runner-up
        // for an image that is already right.
        std::vector<int64_t> contrast(n);
        for (int64_t i = 0; i < n; ++i) {
            at::Tensor l = base_logits[i].clone();
            l[targets[i]] = -std::numeric_limits<float>::infinity();
            contrast[i] = l.argmax().item<int64_t>();
        }
        if (o.use_heads && o.ablation == AblationKind::Mean) {
            mean = mean_head_outputs(m, ref_px);
            iv.mean = mean;
        }
        if (o.use_heads && k_max > 0) {
            // Stage 1: per-image head utilities A_i (positive: removing the head moves toward y_i).
            at::Tensor A;
            if (o.score == HeadScore::Ablation) {
                detail::AblationScan scan = detail::ablation_scan(m, edit_px, targets, contrast, o.ablation, mean);
                A = scan.effects;                                                       // [n, L, H]
                res.flips = (scan.predictions == y.view({n, 1, 1})).to(at::kLong).sum(0);  // [L, H]
            } else {
                A = at::empty({n, n_layer, n_head}, at::kDouble);
                for (int64_t i = 0; i < n; ++i) {
                    AttributionOptions ao;
                    ao.target = targets[i];
                    ao.contrast = contrast[i];
                    ao.ablation = false;
                    A[i] = -attribute(m, edit_px.narrow(0, i, 1), ao).heads;  // removal estimate: minus the direct effect
                }
            }
            res.scores = A.mean(0);
            // Candidates: positive mean utility, by utility then flips.
            std::vector<Head> cand;
            for (int l = 0; l < n_layer; ++l)
                for (int h = 0; h < n_head; ++h)
                    if (res.scores[l][h].item<double>() > 0) cand.emplace_back(l, h);
            auto sc = res.scores.accessor<double, 2>();
            auto fl = res.flips.accessor<int64_t, 2>();
            std::stable_sort(cand.begin(), cand.end(), [&](const Head& a, const Head& b) {
                if (sc[a.first][a.second] != sc[b.first][b.second]) return sc[a.first][a.second] > sc[b.first][b.second];
                return fl[a.first][a.second] > fl[b.first][b.second];
            });
            // Stage 1b: greedy selection; joint removal is not additive, so each step is measured.
            auto evaluate = [&](const at::Tensor& keep) {
                HeadIntervention trial{keep, mean};
                RunOptions ro;
                ro.intervention = &trial;
                at::Tensor logits = run(m, edit_px, ro).logits.to(at::kCPU).to(at::kDouble);
                at::Tensor margin = logits.gather(1, y.unsqueeze(1)).squeeze(1) -
                                    logits.gather(1, at::tensor(contrast, at::kLong).unsqueeze(1)).squeeze(1);
                return std::pair<double, double>{share_correct(logits, y), margin.sum().item<double>()};
            };
            at::Tensor ref_pred;  // the base predictions on the reference images (for max_reference_change)
            auto reference_change = [&](const at::Tensor& keep) {
                HeadIntervention trial{keep, mean};
                RunOptions ro;
                ro.intervention = &trial;
                std::vector<at::Tensor> changed;
                for (int64_t s = 0; s < ref_px.size(0); s += 256) {
                    at::Tensor chunk = ref_px.narrow(0, s, std::min<int64_t>(256, ref_px.size(0) - s));
                    changed.push_back(run(m, chunk, ro).logits.argmax(1).to(at::kCPU));
                }
                return (at::cat(changed) != ref_pred).to(at::kDouble).mean().item<double>();
            };
            const bool limit_change = o.max_reference_change < 1.0 && have_ref;  // without reference images: the spec's rule
            if (limit_change) ref_pred = predict(m, ref_px);
            auto [succ, margin] = evaluate(iv.keep);
            for (const Head& c : cand) {
                if (int(res.heads.size()) >= k_max || succ >= o.tau) break;
                if (o.cancel && o.cancel->load()) throw Error(ErrorKind::Internal, "the head edit was cancelled");
                at::Tensor keep = iv.keep.clone();
                keep[c.first][c.second] = 0.0f;
                auto [s2, m2] = evaluate(keep);
                if ((s2 > succ || m2 > margin) && limit_change && reference_change(keep) > o.max_reference_change) continue;
                if (s2 > succ || m2 > margin) {
                    iv.keep = keep;
                    res.heads.push_back(c);
                    succ = s2;
                    margin = m2;
                }
            }
            res.success_heads_only = succ;
        }
    }

    // Stage 2: P on cached final CLS features (P sits after every non-linearity, so the ViT is not
    // differentiated through).
    at::Tensor W = m.weight(Slot::Output).to(at::kCPU).to(at::kFloat).detach();   // [n_labels, d]
    at::Tensor b = m.weight(Slot::OutputB).to(at::kCPU).to(at::kFloat).detach();  // [n_labels]
    at::Tensor zs_edit, zs_ref, z_ref;
    {
        at::NoGradGuard no_grad;
        RunOptions ro;
        ro.intervention = &iv;
        zs_edit = run(m, edit_px, ro).features.to(at::kCPU).to(at::kFloat);  // [n, d]
        if (have_ref && o.use_projection) {
            std::vector<at::Tensor> zs, z0;
            for (int64_t s = 0; s < ref_px.size(0); s += 256) {
                at::Tensor chunk = ref_px.narrow(0, s, std::min<int64_t>(256, ref_px.size(0) - s));
                zs.push_back(run(m, chunk, ro).features.to(at::kCPU).to(at::kFloat));
                z0.push_back(run(m, chunk).features.to(at::kCPU).to(at::kFloat));
            }
            zs_ref = at::cat(zs);
            z_ref = at::cat(z0);
        }
    }
    at::Tensor P = at::eye(d, at::kFloat);
    if (o.use_projection) {
        at::Tensor I = at::eye(d, at::kFloat);
        const bool kl_align = o.align == "kl";
        at::Tensor lp_ref, p_ref;  // the base model's log-probabilities on the reference images
        if (kl_align) {
            at::NoGradGuard no_grad;
            lp_ref = at::log_softmax(at::linear(z_ref, W, b), -1);
            p_ref = lp_ref.exp();
        }
        P = P.clone().requires_grad_(true);
        editing::Adam adam;
        for (int step = 0; step < o.steps; ++step) {
            if (o.cancel && o.cancel->load()) throw Error(ErrorKind::Internal, "the head edit was cancelled");
            at::Tensor logits = at::linear(at::matmul(zs_edit, P.t()), W, b);
            at::Tensor ce = at::cross_entropy_loss(logits, y);
            at::Tensor align;
            if (kl_align) {
                at::Tensor lp = at::log_softmax(at::linear(at::matmul(zs_ref, P.t()), W, b), -1);
                align = (p_ref * (lp_ref - lp)).sum(1).mean();
            } else {
                align = (at::matmul(zs_ref, P.t()) - z_ref).pow(2).sum(1).mean() / double(d);
            }
            at::Tensor loss = ce + o.lambda * align + o.mu * (P - I).pow(2).sum();
            if (P.grad().defined()) P.mutable_grad().zero_();
            loss.backward();
            {
                at::NoGradGuard no_grad;
                adam.step(P, o.lr);
            }
            res.loss_ce = ce.item<double>();
            res.loss_align = align.item<double>();
        }
        P = P.detach();
    }
    res.projection = P;
    {
        at::NoGradGuard no_grad;
        res.success = share_correct(at::linear(at::matmul(zs_edit, P.t()), W, b), y);
    }

    // The edit value: zeroed W_O columns (plus, for mean ablation, the head means folded into
    // b_O), and P folded into the classifier: W' = W P, stored as D = W (P - I) in float64.
    Edit& e = res.edit;
    e.method = "vit_heads";
    e.requests = image_requests(edit_px, targets, before);
    for (const Head& h : res.heads) {
        e.deltas.push_back(zero_head_delta(m, h.first, h.second));
        if (o.ablation == AblationKind::Mean) {
            const int64_t hd = hp.head_dim;
            at::Tensor w_o = m.weight(Slot::AttnOut, h.first).to(at::kCPU).to(at::kDouble).narrow(1, h.second * hd, hd);
            Delta bias;
            bias.tensor = m.tensor_name(Slot::AttnOutB, h.first);
            bias.kind = DeltaKind::Dense;
            bias.shape = {hp.n_embd, 1};
            bias.values = at::matmul(w_o, mean[h.first][h.second].to(at::kDouble)).view({hp.n_embd, 1}).contiguous();
            e.deltas.push_back(bias);
        }
    }
    if (o.use_projection) {
        Delta cls;
        cls.tensor = m.tensor_name(Slot::Output);
        cls.kind = DeltaKind::Dense;
        cls.shape = W.sizes().vec();
        cls.values = at::matmul(W.to(at::kDouble), P.to(at::kDouble) - at::eye(d, at::kDouble)).contiguous();
        e.deltas.push_back(cls);
        e.artifacts.push_back({"projection", "projection", P.clone(), {{"site", "post_final_ln_cls"}}});
    }
    nlohmann::json heads = nlohmann::json::array();
    for (const Head& h : res.heads) heads.push_back({h.first, h.second});
    e.artifacts.push_back({"head_mask", "head_mask", iv.keep.clone(), {{"heads", heads}, {"mode", ablation_kind_name(o.ablation)}}});
    e.artifacts.push_back({"head_scores", "head_scores", res.scores.clone(), {{"score", head_score_name(o.score)}}});
    e.hparams = {{"use_heads", o.use_heads}, {"use_projection", o.use_projection}, {"score", head_score_name(o.score)},
                 {"ablation", ablation_kind_name(o.ablation)}, {"k_max", k_max}, {"tau", o.tau}, {"max_reference_change", o.max_reference_change}, {"lambda", o.lambda},
                 {"mu", o.mu}, {"lr", o.lr}, {"steps", o.steps}, {"align", o.align}, {"margin", "fixed_predicted_class"},
                 {"selection", "greedy_by_mean_utility"}, {"reference_images", have_ref ? ref_px.size(0) : 0}};
    e.metrics = {{"heads", heads}, {"success_heads_only", res.success_heads_only}, {"success", res.success},
                 {"loss_ce", res.loss_ce}, {"loss_align", res.loss_align},
                 {"projection_distance", (P - at::eye(d, at::kFloat)).norm().item<double>()}};
    e.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return res;
}

std::vector<int> default_ft_layers(int n_layer) {
    // Where-to-Edit tunes blocks 7-9 of 12 (0-based); the same share of a deeper or shallower model.
    std::vector<int> out;
    const int lo = 7 * n_layer / 12, hi = std::max(lo, 9 * n_layer / 12);
    for (int l = lo; l <= hi && l < n_layer; ++l) out.push_back(l);
    return out;
}

namespace {

// Puts trainable copies of fc1/fc2 into the model for the duration and restores the originals.
class FtWeights {
public:
    FtWeights(Model& m, const std::vector<int>& layers) : m_(m) {
        for (int l : layers)
            for (Slot s : {Slot::FfnUp, Slot::FfnDown}) {
                at::Tensor& w = m.weight(s, l);
                saved_.push_back({s, l, w});
                w = w.detach().clone().requires_grad_(true);
                params_.push_back(w);
            }
    }
    ~FtWeights() {
        for (auto& [s, l, t] : saved_) m_.weight(s, l) = t;
    }
    std::vector<at::Tensor>& params() { return params_; }
    const at::Tensor& original(size_t i) const { return std::get<2>(saved_[i]); }
    Slot slot(size_t i) const { return std::get<0>(saved_[i]); }
    int layer(size_t i) const { return std::get<1>(saved_[i]); }

private:
    Model& m_;
    std::vector<std::tuple<Slot, int, at::Tensor>> saved_;
    std::vector<at::Tensor> params_;
};

}  // namespace

FtEditResult edit_ft(Model& m, const at::Tensor& edit_px, const std::vector<int64_t>& targets, const FtEditOptions& o) {
    check_edit_set(m, edit_px, targets);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<int> layers = o.layers.empty() ? default_ft_layers(int(m.hparams().n_layer)) : o.layers;
    for (int l : layers)
        if (l < 0 || l >= m.hparams().n_layer) throw Error(ErrorKind::Argument, "layer " + std::to_string(l) + " is outside the model");
    if (o.lr <= 0 || o.max_steps < 0 || o.l1 < 0) throw Error(ErrorKind::Argument, "lr must be > 0, max_steps and l1 >= 0");
    at::Tensor y = at::tensor(targets, at::kLong).to(m.device());
    at::Tensor before;
    {
        c10::InferenceMode guard;
        before = predict(m, edit_px).to(at::kCPU);
    }
    FtEditResult res;
    FtWeights ft(m, layers);
    std::vector<at::Tensor> sq;  // RMSprop square averages
    for (auto& p : ft.params()) sq.push_back(at::zeros_like(p).detach());
    int64_t n_tuned = 0;
    for (auto& p : ft.params()) n_tuned += p.numel();
    for (int step = 0; step <= o.max_steps; ++step) {
        if (o.cancel && o.cancel->load()) throw Error(ErrorKind::Internal, "the fine-tuning edit was cancelled");
        ForwardInput in;
        in.pixel_values = edit_px;
        at::Tensor logits = m.forward(in).logits;
        at::Tensor ce = at::cross_entropy_loss(logits, y);
        res.loss = ce.item<double>();
        res.success = share_correct(logits.detach(), y.to(at::kCPU));
        res.steps = step;
        if ((res.success >= 1.0 && res.loss <= o.ce_stop) || step == o.max_steps) break;
        at::Tensor loss = ce;
        if (o.l1 > 0) {
            at::Tensor l1 = at::zeros({}, logits.options());
            for (size_t i = 0; i < ft.params().size(); ++i) l1 = l1 + (ft.params()[i] - ft.original(i)).abs().sum();
            loss = loss + o.l1 * l1 / double(n_tuned);
        }
        for (auto& p : ft.params())
            if (p.grad().defined()) p.mutable_grad().zero_();
        loss.backward();
        at::NoGradGuard no_grad;
        for (size_t i = 0; i < ft.params().size(); ++i) {
            at::Tensor& p = ft.params()[i];
            const at::Tensor g = p.grad();
            if (step == 0) {
                p.sub_(g, o.lr);  // the reference's first step is plain SGD
            } else {
                sq[i].mul_(0.99).addcmul_(g, g, 0.01);  // RMSprop, alpha 0.99, eps 1e-8 (PyTorch's defaults)
                p.addcdiv_(g, sq[i].sqrt().add_(1e-8), -o.lr);
            }
        }
    }
    Edit& e = res.edit;
    e.method = "vit_ft";
    e.requests = image_requests(edit_px, targets, before);
    for (size_t i = 0; i < ft.params().size(); ++i) {
        Delta d;
        d.tensor = m.tensor_name(ft.slot(i), ft.layer(i));
        d.kind = DeltaKind::Dense;
        d.shape = ft.original(i).sizes().vec();
        // Two floats' difference is exact in float64, so W + D rounds back to the tuned value.
        d.values = (ft.params()[i].detach().to(at::kCPU).to(at::kDouble) - ft.original(i).to(at::kCPU).to(at::kDouble)).contiguous();
        e.deltas.push_back(d);
    }
    e.hparams = {{"layers", layers}, {"lr", o.lr}, {"max_steps", o.max_steps}, {"l1", o.l1}, {"ce_stop", o.ce_stop},
                 {"optimizer", "sgd_then_rmsprop"}, {"weights", "fc1_fc2"}};
    e.metrics = {{"steps", res.steps}, {"success", res.success}, {"loss", res.loss}};
    e.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return res;
}

nlohmann::json VitEditMetrics::to_json() const {
    return {{"success", success}, {"generalization", generalization}, {"locality", locality},
            {"accuracy_before", accuracy_before}, {"accuracy_after", accuracy_after}, {"n_edit", n_edit},
            {"n_general", n_general}, {"n_local", n_local}, {"n_accuracy", n_accuracy}};
}

}  // namespace engram::vit

// ---------------------------------------------------------------------------------------------
// The Shapes World protocol.

#include "engram/demo.h"

namespace engram::vit {

namespace {

at::Tensor render(uint64_t seed, demo::ShapesSplit split, int64_t first, int64_t n, int64_t image_size, std::vector<int64_t>* labels) {
    demo::ShapesOptions so;
    so.image_size = int(image_size);
    std::vector<demo::ShapeSample> samples;
    samples.reserve(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
        samples.push_back(demo::render_shape_sample(seed, split, uint64_t(first + i), so));
        if (labels) labels->push_back(samples.back().label);
    }
    return demo::shape_pixels(samples, int(image_size));
}

double percent(const at::Tensor& hits) { return hits.numel() ? 100.0 * hits.to(at::kDouble).mean().item<double>() : 0.0; }

}  // namespace

at::Tensor shapes_reference(const Model& m, int64_t n, uint64_t seed) {
    if (m.arch() != Arch::Vit || m.labels() != demo::shape_class_names())
        throw Error(ErrorKind::Argument, "fitting P needs reference images the model gets right; rendered ones exist only for the "
                                         "Shapes World classes (give your own unrelated images instead)");
    std::vector<int64_t> labels;
    at::Tensor px = render(seed, demo::ShapesSplit::Test, 0, n, m.hparams().image_size, &labels);
    return px.index_select(0, (predict(m, px) == at::tensor(labels, at::kLong)).nonzero().squeeze(1));
}

ShapesProtocolSets shapes_protocol_sets(const Model& m, const ShapesProtocolOptions& o) {
    if (m.arch() != Arch::Vit) throw Error(ErrorKind::Argument, m.arch_name() + " is not a vision transformer");
    const int64_t n_labels = m.hparams().n_labels;
    if (n_labels != int64_t(demo::shape_class_names().size()) || m.hparams().image_size != o.image_size)
        throw Error(ErrorKind::Argument, "the Shapes World protocol needs a model of its " + std::to_string(demo::shape_class_names().size()) +
                                             " classes at " + std::to_string(o.image_size) + " px (the demo ViT)");
    ShapesProtocolSets s;
    std::vector<int64_t> labels;
    at::Tensor counter = render(o.seed, demo::ShapesSplit::Counter, 0, o.counter_images, o.image_size, &labels);
    at::Tensor pred = predict(m, counter);
    at::Tensor y = at::tensor(labels, at::kLong);
    at::Tensor wrong = pred != y;
    if (o.target_class >= 0) {
        if (o.target_class >= n_labels) throw Error(ErrorKind::Argument, "class " + std::to_string(o.target_class) + " is not a Shapes World class");
        s.target_class = o.target_class;
    } else {
        at::Tensor per_class = at::zeros({n_labels}, at::kLong);
        per_class.index_add_(0, y.masked_select(wrong), at::ones({wrong.sum().item<int64_t>()}, at::kLong));
        s.target_class = per_class.argmax().item<int64_t>();
    }
    at::Tensor idx = (wrong & (y == s.target_class)).nonzero().squeeze(1);
    s.failures = idx.numel();
    if (s.failures < o.n_edit + 1)
        throw Error(ErrorKind::Argument, "only " + std::to_string(s.failures) + " failures of class " + demo::shape_class_names()[size_t(s.target_class)] +
                                             " among " + std::to_string(o.counter_images) + " counter images; need more than " +
                                             std::to_string(o.n_edit) + " (scan more images or edit fewer)");
    s.edit = counter.index_select(0, idx.narrow(0, 0, o.n_edit));
    s.general = counter.index_select(0, idx.narrow(0, o.n_edit, s.failures - o.n_edit));

    // Index ranges of the test split that do not overlap: reference [0, ...), locality [1e6, ...), accuracy [2e6, ...).
    s.reference = shapes_reference(m, o.n_reference, o.seed);
    std::vector<int64_t> loc_labels;
    at::Tensor loc = render(o.seed, demo::ShapesSplit::Test, 1000000, 2 * o.n_locality, o.image_size, &loc_labels);
    at::Tensor unrelated = (at::tensor(loc_labels, at::kLong) != s.target_class).nonzero().squeeze(1);
    s.locality = loc.index_select(0, unrelated.narrow(0, 0, std::min<int64_t>(o.n_locality, unrelated.numel())));
    s.locality_before = predict(m, s.locality);
    std::vector<int64_t> acc_labels;
    s.accuracy = render(o.seed, demo::ShapesSplit::Test, 2000000, o.n_accuracy, o.image_size, &acc_labels);
    s.accuracy_labels = at::tensor(acc_labels, at::kLong);
    s.accuracy_before = percent(predict(m, s.accuracy) == s.accuracy_labels);
    return s;
}

VitEditMetrics measure_edit(const Model& m, const ShapesProtocolSets& s) {
    VitEditMetrics r;
    r.success = percent(predict(m, s.edit) == s.target_class);
    r.generalization = percent(predict(m, s.general) == s.target_class);
    r.locality = percent(predict(m, s.locality) == s.locality_before);
    r.accuracy_before = s.accuracy_before;
    r.accuracy_after = percent(predict(m, s.accuracy) == s.accuracy_labels);
    r.n_edit = s.edit.size(0);
    r.n_general = s.general.size(0);
    r.n_local = s.locality.size(0);
    r.n_accuracy = s.accuracy.size(0);
    return r;
}

}  // namespace engram::vit
