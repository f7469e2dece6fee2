// HSE, hippocampal-like sequential editing (Fang et al., NeurIPS 2025; docs/methods.md "HSE"): MEMIT
// run one batch at a time (the per-layer solve lives in memit.cpp) with three changes, each of which
// can be switched off for the paper's ablations:
//   - memory-directed active forgetting (MAF): the target optimisation also pushes the old object's
//     probability down, f x -log(1 - p(old) + e^-20), with the new target's NLL scaled by 1 - f;
//   - a Fisher penalty 1/2 sum_j w_j delta_j^2 on the target's change, w from the Fisher diagonal
//     accumulated over every earlier edit;
//   - the long-term editing memory ("parameter replay"): the solve adds alpha x Cov_sum, the second
//     moment of every earlier batch's post-edit keys, to MEMIT's lambda C + K K^T.
// The arithmetic follows the authors' code (compute_z with its fisher_matrix, memit_seq_main with
// cov_sum and time_list); where the paper says otherwise the paper's reading is a setting.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "editing/internal.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram {

namespace editing {

bool hse_forget_condition(const std::vector<int64_t>& target, const std::vector<int64_t>& old) {
    // Shared tokens as multisets (Counter & Counter); forgetting applies when they are fewer than
    // half of each side.
    std::map<int64_t, int64_t> a, b;
    for (int64_t t : target) ++a[t];
    for (int64_t t : old) ++b[t];
    int64_t both = 0;
    for (const auto& [tok, n] : a)
        if (auto it = b.find(tok); it != b.end()) both += std::min(n, it->second);
    return double(both) < double(target.size()) / 2 && double(both) < double(old.size()) / 2;
}

double hse_alpha(const EditHParams& hp, int64_t done) {
    // Batch i = done + 1 of a planned n. The first batch has no earlier keys (the reference sets 1).
    if (done <= 0) return 1.0;
    const double n = double(hp.hse_horizon), k = double(done);
    if (hp.hse_horizon <= 0 || hp.hse_alpha_schedule == "constant") return 1.0;  // not planned: MEMIT_seq's weight
    if (hp.hse_alpha_schedule == "half_inverse") return n / (2 * k);
    if (hp.hse_alpha_schedule == "double_inverse") return 2 * n / k;
    if (hp.hse_alpha_schedule == "linear") return n - k + 1;  // n - i + 2
    return n / k;                                             // inverse: n / (i - 1)
}

HseTargets hse_targets(const Model& model, const std::vector<std::vector<EditRequest>>& units, int layer,
                       const std::vector<std::string>& templates, const EditHParams& hp, at::Tensor& fisher) {
    const Tokenizer& tok = *model.tokenizer();
    HseTargets out;
    out.forget = nlohmann::json::array();
    const int64_t d = model.hparams().n_embd;
    int64_t index = 0;  // the request's index in the batch
    for (const auto& unit : units) {
        TargetExtras extras;
        extras.forget_factor = hp.forget_factor;
        extras.fisher = hp.hse_fisher_form;
        extras.forget.emplace_back();
        for (const EditRequest& r : unit) {
            std::vector<int64_t> old;
            nlohmann::json info = {{"request", index}};
            if (hp.forget_factor > 0) {
                std::string text, source;
                if (!r.target_true.empty()) {
                    text = r.target_true, source = "target_true";
                } else if (!r.prediction.empty()) {
                    text = r.prediction, source = "prediction";
                } else if (hp.hse_forget_fallback == "greedy") {
                    text = greedy_answer(model, r), source = "greedy";
                } else {
                    throw Error(ErrorKind::Argument,
                                "request " + std::to_string(index) + " (\"" + r.prompt_text() +
                                    "\"): HSE forgets the old object, but the request names none (no target_true and no recorded "
                                    "prediction); set hse_forget_fallback=greedy to forget the model's own answer, or forget_factor=0");
                }
                if (source == "target_true" && !hp.hse_forget_space) {
                    // The reference code's CounterFact tokenization: the old object without the leading space.
                    old = tok.encode(text, /*add_special_tokens=*/false).ids;
                    const auto bos = tok.bos_id();
                    while (!old.empty() && bos && old.front() == *bos) old.erase(old.begin());
                } else {
                    old = text.find_first_not_of(" \t\n") == std::string::npos ? std::vector<int64_t>{} : target_ids(tok, text);
                }
                const bool cond = !old.empty() && hse_forget_condition(target_ids(tok, r.target_new), old);
                info["old"] = text;
                info["source"] = source;
                info["forget_cond"] = cond;
                if (!cond) old.clear();
            }
            extras.forget.back().push_back(std::move(old));
            out.forget.push_back(std::move(info));
            ++index;
        }
        if (fisher.defined() && hp.fisher_factor > 0) {
            if (hp.hse_fisher_form == "score") {
                extras.fisher_weight = fisher.to(at::kFloat);  // already the sum of lambda_i F_i
            } else {
                // The code's min-max normalised form. A constant F (max = min) would divide by zero
                // there; here it gives no penalty.
                const at::Tensor f = fisher.to(at::kFloat);
                const double lo = f.min().item<double>(), hi = f.max().item<double>();
                extras.fisher_weight = hi > lo ? (hp.fisher_factor * (f - lo) / (hi - lo)).to(at::kFloat) : at::zeros({d}, at::kFloat);
            }
        }
        SiteTargets t = std::move(optimize_targets(model, {unit}, layer, {Site::BlockOut}, templates, hp, false, &extras).at(0));
        if (t.fisher.defined()) {
            at::Tensor add = t.fisher.to(at::kDouble);
            if (hp.hse_fisher_form == "score") add = add * hp.fisher_factor;  // lambda_i F_i
            fisher = fisher.defined() ? fisher + add : add;
            out.fisher_edit = out.fisher_edit.defined() ? out.fisher_edit + add : add;
        }
        for (size_t k = out.forget.size() - unit.size(); k < out.forget.size(); ++k) {
            out.forget[k]["forget_steps"] = t.forget_steps;
            out.forget[k]["forget_last"] = t.forget_last;
        }
        out.targets.push_back(std::move(t));
    }
    return out;
}

}  // namespace editing

std::string greedy_answer(const Model& model, const EditRequest& request) {
    c10::InferenceMode guard;
    const Tokenizer& tok = *model.tokenizer();
    std::vector<int64_t> prompt = tok.encode(request.prompt_text(), /*add_special_tokens=*/true).ids;
    GenerateOptions o;
    o.max_new_tokens = std::max<int64_t>(1, static_cast<int64_t>(target_ids(tok, request.target_new).size()));
    const std::vector<int64_t> all = generate(model, prompt, o);
    return tok.decode(std::vector<int64_t>(all.begin() + static_cast<int64_t>(prompt.size()), all.end()), /*skip_special_tokens=*/true);
}

Edit EditSession::compute_hse(const std::vector<EditRequest>& requests) {
    if (hp_.hse_horizon > 0 && hp_.hse_horizon <= batches_)
        throw Error(ErrorKind::Argument, "hse_horizon: " + std::to_string(batches_) + " HSE batches are already applied, so this would be batch " +
                                             std::to_string(batches_ + 1) + " of a planned " + std::to_string(hp_.hse_horizon) +
                                             "; raise the horizon (or set 0 for none)");
    Edit e = compute_memit_family(requests);
    ++batches_;
    return e;
}

}  // namespace engram
