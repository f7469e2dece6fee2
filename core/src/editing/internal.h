// Internal helpers shared by the editing methods (not part of the public surface).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "engram/editing.h"
#include "engram/hooks.h"
#include "engram/model.h"

namespace engram::editing {

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

// The low-rank delta u v^T of layer's down-projection, stored in float64.
Delta low_rank_delta(const Model& model, int layer, const at::Tensor& u, const at::Tensor& v);
// Solves A X = B for a symmetric positive definite A by Cholesky (half the work of LU); an A that
// is not numerically positive definite is solved by LU as before.
at::Tensor spd_solve(const at::Tensor& A, const at::Tensor& B);

// A token row with the position at which its site value is read or changed.
struct Row {
    std::vector<int64_t> ids;
    int64_t lookup = 0;
};

// Right-padded [B, T] ids and mask (1 = token) for token sequences: what every batched pass over
// prompts of different lengths uses (editing, statistics, metrics).
struct Batch {
    at::Tensor ids, mask;  // [B, T] int64
    std::vector<int64_t> lengths;
};
Batch pad_right(const std::vector<std::vector<int64_t>>& seqs, c10::Device device);
Batch make_batch(const std::vector<Row>& rows, c10::Device device);

// PyTorch's Adam (betas 0.9 / 0.999, eps 1e-8, no weight decay) for one tensor, written out so the
// editing methods need no optimiser module.
struct Adam {
    at::Tensor m1, m2;  // shaped like the parameter
    int64_t steps = 0;
    void step(at::Tensor& param, double lr);  // uses param.grad(); call under NoGradGuard
    // The same update for the rows `rows` of a [n, dim] parameter, each row at its `steps`-th step
    // (the other rows and their moments are left as they are).
    void step_rows(at::Tensor& param, const at::Tensor& rows, int64_t steps, double lr);
};

// Rows for every template (flattened) of a request, at fact_token.
std::vector<Row> template_rows(const Tokenizer& tok, const EditRequest& r, const std::vector<std::string>& templates,
                               const std::string& fact_token);

// The site's value at each row's lookup position: [rows, dim] float32 on the CPU (no grad).
at::Tensor read_at_lookup(const Model& model, const std::vector<Row>& rows, Site site, int layer);

std::vector<std::string> flatten(const std::vector<std::vector<std::string>>& groups);

// Target optimisation at one or more sites of one layer (compute_v / compute_z; PMET optimises the
// attention and MLP outputs jointly). `pmet` switches on PMET's loss. A unit is the requests that
// share one target: one request, or MEMIT-Merge's requests on one subject (the rewriting rows of
// every request in one loss, each row's NLL averaged over its own target's tokens).
struct SiteTargets {
    std::vector<at::Tensor> target, init;  // per site: [n_embd] float32
    TargetResult summary;
    // HSE (TargetExtras): the Fisher diagonal this unit adds ([n_embd] float32; undefined when not
    // recorded or when no step was taken), and the steps whose loss held the forgetting term.
    at::Tensor fisher;
    int forget_steps = 0;
    double forget_last = 0;  // the last forgetting term (f x mean unlikelihood), 0 without one
};
// HSE's additions to the target loss (specs: MAF and the Fisher penalty; docs/methods.md "HSE"). With
// extras the loss is (1 - f) NLL(new) + [f U(old) when that exceeds 1e-3] + KL + weight decay
// + 1/2 sum_j w_j delta_j^2, where U is the mean over the forgetting rows of -log(1 - p(old) + e^-20).
struct TargetExtras {
    // Per unit, per request: the old object's token ids; empty where the request forgets nothing
    // (no old object, or one that shares half its tokens with the new target).
    std::vector<std::vector<std::vector<int64_t>>> forget;
    double forget_factor = 0;  // f
    at::Tensor fisher_weight;  // [n_embd] float32 penalty weights w (undefined: no penalty)
    // empirical: each unit's mean over its steps of (d loss / d delta)^2 (the reference code);
    // score: (d log p(new) / d delta)^2 at the optimised delta (the paper's Fisher); "": none.
    std::string fisher;
};
// All units at once: one forward and backward per step over every unit's rows, run from the edited
// layer up on the cached residual below it, with logits only where the loss reads them. Each unit
// keeps its own delta, Adam state, clamp and early stop (a stopped unit is frozen and leaves the
// batch). The arithmetic is the reference's; one result per unit.
std::vector<SiteTargets> optimize_targets(const Model& model, const std::vector<std::vector<EditRequest>>& units, int layer,
                                          const std::vector<Site>& sites, const std::vector<std::string>& templates,
                                          const EditHParams& hp, bool pmet, const TargetExtras* extras = nullptr);
// The reference: one unit over the whole model, full-vocabulary logits at every position. Kept as
// the baseline the batched path is checked and timed against (EditSession::set_reference_path).
SiteTargets optimize_targets_reference(const Model& model, const std::vector<EditRequest>& unit, int layer, const std::vector<Site>& sites,
                                       const std::vector<std::string>& templates, const EditHParams& hp, bool pmet);

// HSE (hse.cpp). Forgetting applies when the new target and the old object share fewer than half of
// each other's tokens (as multisets).
bool hse_forget_condition(const std::vector<int64_t>& target, const std::vector<int64_t>& old);
// The weight of the replayed keys (Cov_sum) for the batch after `done` applied ones.
double hse_alpha(const EditHParams& hp, int64_t done);
struct HseTargets {
    std::vector<SiteTargets> targets;  // per unit
    at::Tensor fisher_edit;            // [n_embd] f64: what this batch adds to the Fisher sum (undefined: nothing)
    nlohmann::json forget;             // per request: the old object, where it came from, whether it was forgotten
};
// The units' targets one after another, each with the Fisher sum the earlier ones left (`fisher`,
// [n_embd] f64, updated in place; undefined: none yet).
HseTargets hse_targets(const Model& model, const std::vector<std::vector<EditRequest>>& units, int layer,
                       const std::vector<std::string>& templates, const EditHParams& hp, at::Tensor& fisher);

}  // namespace engram::editing
