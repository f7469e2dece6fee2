// The MEMIT family: MEMIT, MEMIT_seq, AlphaEdit, PMET and HSE, with BLUE as a switch (docs/methods.md):
// targets at the last edited layer (or one per layer with BLUE), the residual spread over the
// layers, least squares against the key statistics C.
#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "editing/internal.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram {

using editing::Row;
using editing::SlotRestore;
using editing::low_rank_delta;
using editing::spd_solve;

Edit EditSession::compute_memit_family(const std::vector<EditRequest>& requests) {
    const EditMethod method = hp_.method;
    const bool pmet = method == EditMethod::Pmet;
    const bool alpha = method == EditMethod::AlphaEdit;
    const bool hse = method == EditMethod::Hse;
    const bool sequential = alpha || hse || method == EditMethod::MemitSeq;
    // HSE threads its Fisher sum through the batch's targets; the session keeps it only when the
    // whole batch is computed.
    at::Tensor fisher = hse && fisher_.defined() ? fisher_.clone() : at::Tensor();
    at::Tensor fisher_edit;
    nlohmann::json forget_info;
    const double hse_weight = hse ? editing::hse_alpha(hp_, batches_) : 0.0;
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
        if (hse) {
            check_cancel();
            report("target", 0, n);
            editing::HseTargets h = editing::hse_targets(model_, units, z_layer, flat, hp_, fisher);
            targets = std::move(h.targets);
            fisher_edit = h.fisher_edit;
            forget_info = std::move(h.forget);
        } else if (!reference_) {
            check_cancel();
            report("target", 0, n);
            targets = editing::optimize_targets(model_, units, z_layer, z_sites, flat, hp_, pmet);
        }
        int64_t done = 0;
        for (size_t u = 0; u < target_groups.size(); ++u) {
            const auto& group = target_groups[u];
            if (reference_ && !hse) {
                check_cancel();
                report("target", done, n);
                targets.push_back(editing::optimize_targets_reference(model_, units[u], z_layer, z_sites, flat, hp_, pmet));
            }
            const editing::SiteTargets& t = targets[u];
            for (int64_t i : group) {
                zs[static_cast<size_t>(i)] = t.target.back().to(at::kDouble);  // the block output, or PMET's MLP output
                z_info.push_back({{"request", i}, {"layer", z_layer}, {"target_prob_before", t.summary.prob_first},
                                  {"target_prob_optimised", t.summary.prob_last}, {"steps", t.summary.steps},
                                  {"delta_norm", (t.target.back() - t.init.back()).norm().item<double>()}, {"merged", group.size()},
                                  {"loss_first", t.summary.loss_first}, {"loss_last", t.summary.loss_last}});
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
            // HSE: the earlier batches' post-edit keys, weighted by the schedule's alpha.
            if (hse && hp_.hse_replay && cache_c_.count(l)) A = A + hse_weight * cache_c_[l];
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
    if (hse) {
        fisher_ = fisher;
        if (fisher_edit.defined()) {
            Artifact a;
            a.name = "fisher";
            a.kind = "fisher";
            a.tensor = fisher_edit.to(at::kFloat).contiguous();
            a.meta = {{"form", hp_.hse_fisher_form}};
            e.artifacts.push_back(std::move(a));
        }
        {
            Artifact a;  // z: the targets the solve wrote (the block output at the last layer)
            a.name = "targets";
            a.kind = "targets";
            a.tensor = Z.to(at::kFloat).contiguous();
            a.meta = {{"layer", layers.back()}};
            e.artifacts.push_back(std::move(a));
        }
        e.metrics["hse"] = {{"batch", batches_ + 1},
                            {"horizon", hp_.hse_horizon},
                            {"alpha", hse_weight},
                            {"alpha_schedule", hp_.hse_horizon > 0 ? hp_.hse_alpha_schedule : std::string("constant (no horizon)")},
                            {"replay", hp_.hse_replay},
                            {"fisher_norm", fisher.defined() ? fisher.norm().item<double>() : 0.0},
                            {"fisher_edit_norm", fisher_edit.defined() ? fisher_edit.norm().item<double>() : 0.0},
                            {"forget", forget_info}};
    }
    return e;
}

}  // namespace engram
