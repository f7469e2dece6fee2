// ROME (Meng et al. 2022): one rank-1 change of one MLP down-projection per request, each on the
// model the previous request left (docs/methods.md "ROME").
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

}  // namespace engram
