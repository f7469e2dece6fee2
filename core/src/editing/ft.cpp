// FT-L: constrained fine-tuning of one MLP down-projection (docs/methods.md "FT-L").
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
