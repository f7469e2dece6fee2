// The editing session: ROME (§3), the MEMIT family — MEMIT, MEMIT_seq, AlphaEdit, PMET — with
// BLUE as a switch (§4-§6b), and FT-L. Every weight change is applied through apply_delta from the
// factors that are stored, so the bits seen while computing are the bits a replay gives.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <map>

#include "editing/internal.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram {

using editing::Row;

namespace {

// Restores the down-projection slots of the given layers when the computation ends, whatever
// happens (the caller applies the returned edit value).
class SlotRestore {
public:
    SlotRestore(Model& model, const std::vector<int>& layers) : model_(model) {
        for (int l : layers) saved_.emplace_back(l, model.weight(Slot::FfnDown, l));
    }
    ~SlotRestore() {
        for (auto& [l, t] : saved_) model_.weight(Slot::FfnDown, l) = t;
    }
    SlotRestore(const SlotRestore&) = delete;
    SlotRestore& operator=(const SlotRestore&) = delete;

private:
    Model& model_;
    std::vector<std::pair<int, at::Tensor>> saved_;
};

Delta low_rank_delta(const Model& model, int layer, const at::Tensor& u, const at::Tensor& v) {
    Delta d;
    d.tensor = model.tensor_name(Slot::FfnDown, layer);
    d.kind = DeltaKind::LowRank;
    const at::Tensor& w = model.weight(Slot::FfnDown, layer);
    d.shape = {w.size(0), w.size(1)};
    d.u = u.to(at::kCPU).to(at::kDouble).contiguous();  // [n_embd, r]
    d.v = v.to(at::kCPU).to(at::kDouble).contiguous();  // [n_ff, r]
    return d;
}

// Solves A X = B for a symmetric positive definite A by Cholesky (half the work of LU); an A that
// is not numerically positive definite is solved by LU as before.
at::Tensor spd_solve(const at::Tensor& A, const at::Tensor& B) {
    auto [L, info] = at::linalg_cholesky_ex(A);
    if (info.item<int64_t>() != 0) return at::linalg_solve(A, B);
    return at::cholesky_solve(B, L);
}

// Sets libtorch's intra-op thread count for a scope (n <= 0: leaves it).
class IntraOpThreads {
public:
    explicit IntraOpThreads(int n) : saved_(at::get_num_threads()) {
        if (n > 0 && n != saved_) at::set_num_threads(n);
    }
    ~IntraOpThreads() {
        if (at::get_num_threads() != saved_) at::set_num_threads(saved_);
    }
    IntraOpThreads(const IntraOpThreads&) = delete;
    IntraOpThreads& operator=(const IntraOpThreads&) = delete;

private:
    int saved_;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string method_label(const EditHParams& hp) {
    std::string m = edit_method_name(hp.method);
    return hp.blue ? m + "+blue" : m;
}

}  // namespace

EditSession::EditSession(Model& model, EditHParams hparams, StatsOptions stats)
    : model_(model), hp_(std::move(hparams)), stats_options_(std::move(stats)) {
    validate_edit_hparams(hp_, model_shape(model_));
    if (!model_.is_decoder()) throw Error(ErrorKind::Argument, "fact editing needs a language model, not " + model_.arch_name());
    if (!model_.tokenizer()) throw Error(ErrorKind::Argument, "editing needs the model's tokenizer");
    if (stats_options_.corpus.empty() && !hp_.mom2_dataset.empty()) stats_options_.corpus = hp_.mom2_dataset;
    if (hp_.mom2_n_samples > 0) stats_options_.n_samples = hp_.mom2_n_samples;
}

EditSession::~EditSession() = default;

void EditSession::report(const std::string& stage, int64_t done, int64_t total) const {
    if (progress_) progress_({stage, done, total});
}

void EditSession::check_cancel() const {
    if (cancel_ && cancel_->load()) throw Error(ErrorKind::Internal, "editing was cancelled");
}

const std::vector<std::vector<std::string>>& EditSession::context_templates() {
    if (!templates_) {
        report("templates", 0, 1);
        templates_ = hp_.method == EditMethod::Rome || hp_.method == EditMethod::Ft ? rome_context_templates(model_, hp_)
                                                                                     : memit_context_templates(model_, hp_);
        for (const auto& g : *templates_)
            for (const auto& t : g)
                if (t.find("{}") == std::string::npos || t.find("{}") != t.rfind("{}"))
                    throw Error(ErrorKind::Argument, "context template \"" + t + "\" must hold exactly one \"{}\"");
        report("templates", 1, 1);
    }
    return *templates_;
}

const LayerStats& EditSession::stats(int layer) {
    auto it = stats_.find(layer);
    if (it != stats_.end()) return it->second;
    std::vector<LayerStats> s = second_moments(model_, {layer}, stats_options_, [&](int64_t done, int64_t total) { report("stats", done, total); });
    return stats_.emplace(layer, std::move(s[0])).first->second;
}

const at::Tensor& EditSession::null_space_projection(int layer) {
    auto it = projection_.find(layer);
    if (it != projection_.end()) return it->second;
    const at::Tensor& c = stats(layer).mom2;  // [n_ff, n_ff] f64
    // C is symmetric PSD: its SVD is its eigendecomposition. Keep the directions whose eigenvalue is
    // below the threshold: the approximate null space of the preserved keys (spec §5).
    auto [evals, evecs] = at::linalg_eigh(c);
    at::Tensor keep = evals < hp_.nullspace_threshold;
    at::Tensor u = evecs.index({at::indexing::Slice(), keep});  // [n_ff, k]
    null_basis_[layer] = u;
    return projection_.emplace(layer, u.mm(u.t())).first->second;
}

at::Tensor EditSession::solve_c(int layer, const at::Tensor& rhs) {
    const at::Tensor& c = stats(layer).mom2;
    auto it = c_factor_.find(layer);
    if (it == c_factor_.end()) {
        auto [L, info] = at::linalg_cholesky_ex(c);
        it = c_factor_.emplace(layer, info.item<int64_t>() == 0 ? L : at::Tensor()).first;
    }
    return it->second.defined() ? at::cholesky_solve(rhs, it->second) : at::linalg_solve(c, rhs);
}

void EditSession::absorb_history(const std::vector<Edit>& applied) {
    if (hp_.method != EditMethod::AlphaEdit && hp_.method != EditMethod::MemitSeq) return;
    for (const Edit& e : applied) {
        for (const Artifact& a : e.artifacts) {
            if (a.kind != "keys" || !a.meta.contains("layer")) continue;
            const int l = a.meta["layer"].get<int>();
            at::Tensor k = a.tensor.to(at::kDouble);  // [n_ff, n]
            at::Tensor& c = cache_c_[l];
            if (!c.defined()) c = at::zeros({k.size(0), k.size(0)}, at::kDouble);
            c.add_(k.mm(k.t()));
        }
    }
}

Edit EditSession::compute(const std::vector<EditRequest>& requests) {
    if (requests.empty()) throw Error(ErrorKind::Argument, "no edit requests");
    for (size_t i = 0; i < requests.size(); ++i) {
        try {
            validate_request(model_, requests[i]);
        } catch (const Error& e) {
            throw e.with_context("request " + std::to_string(i));
        }
    }
    IntraOpThreads threads(threads_ != 0 ? threads_ : model_.hparams().n_embd <= 256 ? 1 : 0);
    const auto t0 = std::chrono::steady_clock::now();
    Edit e;
    switch (hp_.method) {
        case EditMethod::Rome: e = compute_rome(requests); break;
        case EditMethod::Ft: e = compute_ft(requests); break;
        case EditMethod::Grace: e = compute_grace(requests); break;
        default: e = compute_memit_family(requests); break;
    }
    e.method = method_label(hp_);
    e.requests = nlohmann::json::array();
    for (const auto& r : requests) e.requests.push_back(r.to_json());
    EditHParams pinned = hp_;
    const bool uses_templates = hp_.method != EditMethod::Ft && hp_.method != EditMethod::Grace;
    if (uses_templates) pinned.context_templates = context_templates();
    e.hparams = pinned.to_json();
    if (uses_templates && (hp_.method != EditMethod::Rome || hp_.mom2_adjustment)) {
        nlohmann::json st = nlohmann::json::array();
        for (const auto& [l, s] : stats_)
            st.push_back({{"layer", l}, {"corpus_hash", s.corpus_hash}, {"tokens", s.count}, {"documents", s.documents}});
        e.hparams["stats"] = st;
    }
    e.duration_s = seconds_since(t0);
    return e;
}

Edit EditSession::compute_rome(const std::vector<EditRequest>& requests) {
    const int layer = hp_.layers.at(0);
    const std::vector<std::string> templates = editing::flatten(context_templates());
    const Tokenizer& tok = *model_.tokenizer();
    SlotRestore restore(model_, {layer});
    Edit e;
    nlohmann::json per = nlohmann::json::array();
    for (size_t i = 0; i < requests.size(); ++i) {
        check_cancel();
        const EditRequest& r = requests[i];
        report("target", static_cast<int64_t>(i), static_cast<int64_t>(requests.size()));
        std::vector<Row> rows = editing::template_rows(tok, r, templates, hp_.fact_token);
        at::Tensor keys = editing::read_at_lookup(model_, rows, Site::MlpKey, layer).to(at::kDouble);  // [n_t, n_ff]
        at::Tensor kbar = keys.mean(0);
        at::Tensor u = kbar;
        if (hp_.mom2_adjustment)
            u = (reference_ ? at::linalg_solve(stats(layer).mom2, kbar.unsqueeze(1)) : solve_c(layer, kbar.unsqueeze(1))).squeeze(1);
        u = u / u.norm();
        editing::SiteTargets v = reference_ ? editing::optimize_targets_reference(model_, {r}, layer, {Site::MlpOut}, templates, hp_, false)
                                            : std::move(editing::optimize_targets(model_, {{r}}, layer, {Site::MlpOut}, templates, hp_, false).at(0));
        at::Tensor vstar = v.target[0].to(at::kDouble);
        at::Tensor k, vcur;
        if (hp_.rrome_fix) {
            // r-ROME: the prefix-averaged key and value in the denominator and the residual.
            k = kbar;
            vcur = editing::read_at_lookup(model_, rows, Site::MlpOut, layer).to(at::kDouble).mean(0);
        } else {
            // Original ROME: the plain prompt's key and value.
            LocatedPrompt p = locate_subject(tok, "{}", r.prompt, r.subject);
            std::vector<Row> plain = {{p.ids, lookup_index(p, hp_.fact_token)}};
            k = editing::read_at_lookup(model_, plain, Site::MlpKey, layer).to(at::kDouble)[0];
            vcur = editing::read_at_lookup(model_, plain, Site::MlpOut, layer).to(at::kDouble)[0];
        }
        const double denom = k.dot(u).item<double>();
        at::Tensor right = (vstar - vcur) / denom;  // [n_embd]
        Delta d = low_rank_delta(model_, layer, right.unsqueeze(1), u.unsqueeze(1));
        apply_delta(model_, d);
        e.deltas.push_back(std::move(d));
        per.push_back({{"layer", layer},
                       {"v_init_norm", v.summary.init.norm().item<double>()},
                       {"v_star_norm", vstar.norm().item<double>()},
                       {"key_dot_u", denom},
                       {"delta_norm", right.norm().item<double>()},
                       {"target_prob_before", v.summary.prob_first},
                       {"target_prob_optimised", v.summary.prob_last},
                       {"steps", v.summary.steps}});
    }
    e.metrics = {{"requests", per}};
    return e;
}

Edit EditSession::compute_memit_family(const std::vector<EditRequest>& requests) {
    const EditMethod method = hp_.method;
    const bool pmet = method == EditMethod::Pmet;
    const bool alpha = method == EditMethod::AlphaEdit;
    const bool sequential = alpha || method == EditMethod::MemitSeq;
    std::vector<int> layers = hp_.layers;
    const int n_layers = static_cast<int>(layers.size());
    const auto& groups = context_templates();
    const std::vector<std::string> flat = editing::flatten(groups);
    const Tokenizer& tok = *model_.tokenizer();
    const int64_t n = static_cast<int64_t>(requests.size());
    SlotRestore restore(model_, layers);

    // PMET optimises the attention and MLP outputs jointly and edits in MLP-output space; the MEMIT
    // family optimises the residual stream (block output).
    const std::vector<Site> z_sites = pmet ? std::vector<Site>{Site::AttnOut, Site::MlpOut} : std::vector<Site>{Site::BlockOut};
    const Site h_site = pmet ? Site::MlpOut : Site::BlockOut;
    std::vector<Row> plain_rows;
    for (const auto& r : requests) {
        LocatedPrompt p = locate_subject(tok, "{}", r.prompt, r.subject);
        plain_rows.push_back({p.ids, lookup_index(p, hp_.fact_token)});
    }

    // MEMIT's compute_ks, the whole batch in one pass. [n_ff, n]
    auto batch_keys = [&](int layer) { return mean_keys(model_, requests, layer, groups, true, hp_); };

    nlohmann::json z_info = nlohmann::json::array();
    // merge_same_subject: the requests on one subject (first occurrence order) share one target.
    std::vector<std::vector<int64_t>> target_groups;
    {
        std::map<std::string, size_t> group_of;
        for (int64_t i = 0; i < n; ++i) {
            const std::string& subject = requests[static_cast<size_t>(i)].subject;
            auto it = hp_.merge_same_subject ? group_of.find(subject) : group_of.end();
            if (it == group_of.end()) {
                if (hp_.merge_same_subject) group_of[subject] = target_groups.size();
                target_groups.push_back({i});
            } else {
                target_groups[it->second].push_back(i);
            }
        }
    }
    auto compute_zs = [&](int z_layer) {
        std::vector<at::Tensor> zs(static_cast<size_t>(n));
        std::vector<std::vector<EditRequest>> units;
        for (const auto& group : target_groups) {
            units.emplace_back();
            for (int64_t i : group) units.back().push_back(requests[static_cast<size_t>(i)]);
        }
        std::vector<editing::SiteTargets> targets;
        if (!reference_) {
            check_cancel();
            report("target", 0, n);
            targets = editing::optimize_targets(model_, units, z_layer, z_sites, flat, hp_, pmet);
        }
        int64_t done = 0;
        for (size_t u = 0; u < target_groups.size(); ++u) {
            const auto& group = target_groups[u];
            if (reference_) {
                check_cancel();
                report("target", done, n);
                targets.push_back(editing::optimize_targets_reference(model_, units[u], z_layer, z_sites, flat, hp_, pmet));
            }
            const editing::SiteTargets& t = targets[u];
            for (int64_t i : group) {
                zs[static_cast<size_t>(i)] = t.target.back().to(at::kDouble);  // the block output, or PMET's MLP output
                z_info.push_back({{"request", i}, {"layer", z_layer}, {"target_prob_before", t.summary.prob_first},
                                  {"target_prob_optimised", t.summary.prob_last}, {"steps", t.summary.steps},
                                  {"delta_norm", (t.target.back() - t.init.back()).norm().item<double>()}, {"merged", group.size()}});
            }
            done += static_cast<int64_t>(group.size());
        }
        return at::stack(zs, 1);  // [n_embd, n]
    };

    at::Tensor Z;
    if (!hp_.blue) Z = compute_zs(layers.back());
    Edit e;
    nlohmann::json per_layer = nlohmann::json::array();
    for (int i = 0; i < n_layers; ++i) {
        const int l = layers[static_cast<size_t>(i)];
        check_cancel();
        // BLUE: a target per boundary layer, optimised on the model the earlier layer's edit left.
        const int z_layer = hp_.blue ? l : layers.back();
        if (hp_.blue) Z = compute_zs(l);
        report("keys", i, n_layers);
        at::Tensor K = batch_keys(l);  // [n_ff, n]
        at::Tensor H = editing::read_at_lookup(model_, plain_rows, h_site, z_layer).to(at::kDouble).t();  // [n_embd, n]
        at::Tensor R = Z - H;
        if (!hp_.blue) R = pmet ? R / std::sqrt(static_cast<double>(n_layers - i)) : R / static_cast<double>(n_layers - i);
        report("solve", i, n_layers);
        at::Tensor V;  // [n_ff, n]: the delta is R V^T
        if (alpha) {
            const at::Tensor& P = null_space_projection(l);
            const at::Tensor& U = null_basis_.at(l);  // [n_ff, k]
            const int64_t m = K.size(0), k = U.size(1);
            at::Tensor M = K.mm(K.t());  // [n_ff, n_ff]
            if (cache_c_.count(l)) M = M + cache_c_[l];
            // (P M + L2 I) V = P K. Its solution lies in P's range (L2 V = P (K - M V)), so with
            // P = U U^T it is V = U Y where (U^T M U + L2 I) Y = U^T K: symmetric positive definite
            // and k x k. Used where that is less work than P M and LU.
            const double reduced = double(m) * m * k + double(m) * k * k + double(k) * k * k / 3, full = double(m) * m * m * 5 / 3;
            if (reference_ || k == 0 || reduced >= full) {
                V = at::linalg_solve(P.mm(M) + hp_.L2 * at::eye(m, at::kDouble), P.mm(K));
            } else {
                const at::Tensor Ut = U.t();
                V = U.mm(spd_solve(Ut.mm(M.mm(U)) + hp_.L2 * at::eye(k, at::kDouble), Ut.mm(K)));
            }
        } else {
            at::Tensor A = hp_.mom2_update_weight * stats(l).mom2 + K.mm(K.t());
            if (method == EditMethod::MemitSeq && cache_c_.count(l)) A = A + cache_c_[l];
            V = reference_ ? at::linalg_solve(A, K) : spd_solve(A, K);
        }
        Delta d = low_rank_delta(model_, l, R, V);
        apply_delta(model_, d);
        per_layer.push_back({{"layer", l}, {"residual_norm", R.norm().item<double>()}, {"delta_frobenius", R.mm(V.t()).norm().item<double>()}});
        e.deltas.push_back(std::move(d));
    }
    if (sequential) {
        // The keys of this batch on the edited model join the protected set (spec §5 step 4).
        for (int l : layers) {
            at::Tensor K = batch_keys(l);
            at::Tensor& c = cache_c_[l];
            if (!c.defined()) c = at::zeros({K.size(0), K.size(0)}, at::kDouble);
            c.add_(K.mm(K.t()));
            Artifact a;
            a.name = "keys_" + std::to_string(l);
            a.kind = "keys";
            a.tensor = K.to(at::kFloat).contiguous();
            a.meta = {{"layer", l}};
            e.artifacts.push_back(std::move(a));
        }
    }
    e.metrics = {{"targets", z_info}, {"layers", per_layer}};
    return e;
}

Edit EditSession::compute_ft(const std::vector<EditRequest>& requests) {
    // FT-L: Adam on one down-projection, each entry kept within +-ft_norm_constraint of its start,
    // minimising the target NLL on the plain prompts.
    const int layer = hp_.layers.at(0);
    const Tokenizer& tok = *model_.tokenizer();
    SlotRestore restore(model_, {layer});
    std::vector<Row> rows;
    std::vector<std::vector<int64_t>> targets;
    for (const auto& r : requests) {
        LocatedPrompt p = locate_subject(tok, "{}", r.prompt, r.subject);
        std::vector<int64_t> t = target_ids(tok, r.target_new);
        Row row{p.ids, 0};
        row.ids.insert(row.ids.end(), t.begin(), t.end() - 1);
        rows.push_back(row);
        targets.push_back(t);
    }
    editing::Batch b = editing::make_batch(rows, model_.device());
    const int64_t B = static_cast<int64_t>(rows.size()), T = b.ids.size(1);
    at::Tensor tgt = at::zeros({B, T}, at::kLong), tmask = at::zeros({B, T}, at::kFloat);
    for (int64_t i = 0; i < B; ++i) {
        const auto& t = targets[static_cast<size_t>(i)];
        const int64_t len = b.lengths[static_cast<size_t>(i)], nt = static_cast<int64_t>(t.size());
        for (int64_t j = 0; j < nt; ++j) {
            tgt[i][len - nt + j] = t[static_cast<size_t>(j)];
            tmask[i][len - nt + j] = 1.0f / static_cast<float>(nt);
        }
    }
    tgt = tgt.to(model_.device());
    tmask = tmask.to(model_.device());
    const at::Tensor w0 = model_.weight(Slot::FfnDown, layer).detach().to(at::kFloat);
    at::Tensor w = w0.clone().set_requires_grad(true);
    editing::Adam adam;
    model_.weight(Slot::FfnDown, layer) = w;
    double loss_first = 0, loss_last = 0;
    for (int step = 1; step <= hp_.ft_steps; ++step) {
        check_cancel();
        if (w.grad().defined()) w.mutable_grad().zero_();
        ForwardInput in;
        in.input_ids = b.ids;
        in.attention_mask = b.mask;
        at::Tensor lp = at::log_softmax(model_.forward(in).logits, 2);
        at::Tensor loss = -(lp.gather(2, tgt.unsqueeze(2)).squeeze(2) * tmask).sum() / static_cast<double>(B);
        loss_last = loss.item<double>();
        if (step == 1) loss_first = loss_last;
        loss.backward();
        at::NoGradGuard no_grad;
        adam.step(w, hp_.ft_lr);
        at::Tensor lo = w0 - hp_.ft_norm_constraint, hi = w0 + hp_.ft_norm_constraint;
        w.copy_(at::max(at::min(w, hi), lo));
    }
    Delta d;
    d.tensor = model_.tensor_name(Slot::FfnDown, layer);
    d.kind = DeltaKind::Dense;
    d.shape = {w0.size(0), w0.size(1)};
    d.values = (w.detach() - w0).to(at::kCPU).contiguous();
    Edit e;
    e.deltas.push_back(std::move(d));
    e.metrics = {{"loss_first", loss_first}, {"loss_last", loss_last}, {"layer", layer}};
    return e;
}

}  // namespace engram
