// Target-vector optimisation (ROME compute_v, MEMIT compute_z, PMET compute_zs) and key reading
// (specs/locate_then_edit.md §1.4, §1.6, §6b).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>

#include "editing/internal.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram::editing {

Batch pad_right(const std::vector<std::vector<int64_t>>& seqs, c10::Device device) {
    int64_t T = 0;
    for (const auto& s : seqs) T = std::max<int64_t>(T, static_cast<int64_t>(s.size()));
    const int64_t B = static_cast<int64_t>(seqs.size());
    Batch b;
    b.ids = at::zeros({B, T}, at::kLong);
    b.mask = at::zeros({B, T}, at::kLong);
    auto ia = b.ids.accessor<int64_t, 2>();
    auto ma = b.mask.accessor<int64_t, 2>();
    for (int64_t i = 0; i < B; ++i) {
        const auto& ids = seqs[static_cast<size_t>(i)];
        for (size_t t = 0; t < ids.size(); ++t) {
            ia[i][static_cast<int64_t>(t)] = ids[t];
            ma[i][static_cast<int64_t>(t)] = 1;
        }
        b.lengths.push_back(static_cast<int64_t>(ids.size()));
    }
    b.ids = b.ids.to(device);
    b.mask = b.mask.to(device);
    return b;
}

Batch make_batch(const std::vector<Row>& rows, c10::Device device) {
    std::vector<std::vector<int64_t>> seqs;
    seqs.reserve(rows.size());
    for (const Row& r : rows) seqs.push_back(r.ids);
    return pad_right(seqs, device);
}

void Adam::step(at::Tensor& param, double lr) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    if (!m1.defined()) {
        m1 = at::zeros_like(param);
        m2 = at::zeros_like(param);
    }
    ++steps;
    const double bc1 = 1.0 - std::pow(b1, steps), bc2 = 1.0 - std::pow(b2, steps);
    const at::Tensor g = param.grad();
    m1.mul_(b1).add_(g, 1.0 - b1);
    m2.mul_(b2).addcmul_(g, g, 1.0 - b2);
    param.addcdiv_(m1, (m2.sqrt() / std::sqrt(bc2)).add_(eps), -lr / bc1);
}

void Adam::step_rows(at::Tensor& param, const at::Tensor& rows, int64_t steps, double lr) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    if (!m1.defined()) {
        m1 = at::zeros_like(param);
        m2 = at::zeros_like(param);
    }
    const double bc1 = 1.0 - std::pow(b1, steps), bc2 = 1.0 - std::pow(b2, steps);
    const at::Tensor g = param.grad().index_select(0, rows);
    at::Tensor a = m1.index_select(0, rows), b = m2.index_select(0, rows), p = param.index_select(0, rows);
    a.mul_(b1).add_(g, 1.0 - b1);
    b.mul_(b2).addcmul_(g, g, 1.0 - b2);
    p.addcdiv_(a, (b.sqrt() / std::sqrt(bc2)).add_(eps), -lr / bc1);
    m1.index_copy_(0, rows, a);
    m2.index_copy_(0, rows, b);
    param.index_copy_(0, rows, p);
}

std::vector<std::string> flatten(const std::vector<std::vector<std::string>>& groups) {
    std::vector<std::string> flat;
    for (const auto& g : groups) flat.insert(flat.end(), g.begin(), g.end());
    return flat;
}

std::vector<Row> template_rows(const Tokenizer& tok, const EditRequest& r, const std::vector<std::string>& templates,
                               const std::string& fact_token) {
    std::vector<Row> rows;
    for (const std::string& t : templates) {
        LocatedPrompt p = locate_subject(tok, t, r.prompt, r.subject);
        rows.push_back({p.ids, lookup_index(p, fact_token)});
    }
    return rows;
}

at::Tensor read_at_lookup(const Model& model, const std::vector<Row>& rows, Site site, int layer) {
    c10::InferenceMode guard;
    Batch b = make_batch(rows, model.device());
    Hooks hooks;
    hooks.capture(site, layer);
    ForwardInput in;
    in.input_ids = b.ids;
    in.attention_mask = b.mask;
    in.last_logits_only = true;
    model.forward(in, &hooks);
    const at::Tensor& v = hooks.captured(site, layer);  // [B, T, dim]
    std::vector<int64_t> idx;
    for (const Row& r : rows) idx.push_back(r.lookup);
    at::Tensor rows_i = at::arange(static_cast<int64_t>(rows.size()), at::kLong).to(v.device());
    at::Tensor pos_i = at::tensor(idx, at::kLong).to(v.device());
    return v.index({rows_i, pos_i}).to(at::kCPU).to(at::kFloat).clone();
}

SiteTargets optimize_targets_reference(const Model& model, const std::vector<EditRequest>& requests, int layer, const std::vector<Site>& sites,
                                       const std::vector<std::string>& templates, const EditHParams& hp, bool pmet) {
    const Tokenizer& tok = *model.tokenizer();
    if (requests.empty()) throw Error(ErrorKind::Argument, "target optimisation needs a request");
    for (const EditRequest& r : requests)
        if (r.subject != requests[0].subject)
            throw Error(ErrorKind::Internal, "one target for several requests needs one subject, got \"" + requests[0].subject + "\" and \"" + r.subject + "\"");

    // Rewriting rows: template(prompt) + target[:-1] (teacher forcing) for each request, then one
    // KL row "{} is a". Each row's NLL is averaged over its own target's tokens.
    std::vector<Row> rows;
    std::vector<std::vector<int64_t>> row_target;
    for (const EditRequest& request : requests) {
        const std::vector<int64_t> target = target_ids(tok, request.target_new);
        for (const std::string& t : templates) {
            LocatedPrompt p = locate_subject(tok, t, request.prompt, request.subject);
            Row row{p.ids, lookup_index(p, hp.fact_token)};
            row.ids.insert(row.ids.end(), target.begin(), target.end() - 1);
            rows.push_back(std::move(row));
            row_target.push_back(target);
        }
    }
    const int64_t n_rewrite = static_cast<int64_t>(rows.size());
    {
        LocatedPrompt p = locate_subject(tok, "{}", "{} is a", requests[0].subject);
        rows.push_back({p.ids, lookup_index(p, hp.fact_token)});
    }
    for (const Row& r : rows)
        if (static_cast<int64_t>(r.ids.size()) > model.hparams().n_ctx)
            throw Error(ErrorKind::Argument, "a rewriting prompt is longer than the model's context (" + std::to_string(model.hparams().n_ctx) +
                                                 " tokens); shorten the context templates");
    const c10::Device dev = model.device();
    Batch b = make_batch(rows, dev);
    const int64_t B = static_cast<int64_t>(rows.size()), T = b.ids.size(1);

    // Targets at positions [len - n, len) of each rewriting row (the logit at p scores token p + 1).
    at::Tensor tgt = at::zeros({n_rewrite, T}, at::kLong), tmask = at::zeros({n_rewrite, T}, at::kFloat);
    at::Tensor tlen = at::zeros({n_rewrite}, at::kFloat);
    for (int64_t i = 0; i < n_rewrite; ++i) {
        const int64_t len = b.lengths[static_cast<size_t>(i)];
        const std::vector<int64_t>& target = row_target[static_cast<size_t>(i)];
        const int64_t n = static_cast<int64_t>(target.size());
        tlen[i] = float(n);
        for (int64_t j = 0; j < n; ++j) {
            tgt[i][len - n + j] = target[static_cast<size_t>(j)];
            tmask[i][len - n + j] = 1.0f;
        }
    }
    tgt = tgt.to(dev);
    tmask = tmask.to(dev);
    tlen = tlen.to(dev);
    at::Tensor lookup_mask = at::zeros({B, T, 1}, at::kFloat);
    for (int64_t i = 0; i < B; ++i) lookup_mask[i][rows[static_cast<size_t>(i)].lookup][0] = 1.0f;
    lookup_mask = lookup_mask.to(dev);
    const int64_t kl_row = B - 1, kl_pos = rows.back().lookup;

    const int64_t d = model.hparams().n_embd;
    const size_t S = sites.size();
    std::vector<at::Tensor> delta(S), init(S);
    std::vector<Adam> adam(S);
    for (size_t s = 0; s < S; ++s)
        delta[s] = at::zeros({d}, at::TensorOptions().dtype(at::kFloat).device(dev)).set_requires_grad(true);
    Hooks hooks;
    for (size_t s = 0; s < S; ++s) {
        hooks.on(sites[s], layer, [&, s](at::Tensor& value) {
            if (!init[s].defined()) init[s] = value.index({0, rows[0].lookup}).detach().clone();
            value = value + lookup_mask * delta[s];
        });
    }

    at::Tensor kl_init;
    SiteTargets out;
    TargetResult& sum = out.summary;
    double nll_factor = pmet ? hp.nll_loss_factor : 1.0;
    for (int it = 0; it < hp.v_num_grad_steps; ++it) {
        for (auto& t : delta)
            if (t.grad().defined()) t.mutable_grad().zero_();
        ForwardInput in;
        in.input_ids = b.ids;
        in.attention_mask = b.mask;
        at::Tensor logits = model.forward(in, &hooks).logits;  // [B, T, n_vocab]
        at::Tensor log_probs = at::log_softmax(logits.slice(0, 0, n_rewrite), 2);
        at::Tensor picked = log_probs.gather(2, tgt.unsqueeze(2)).squeeze(2);  // [n_rewrite, T]
        at::Tensor nll_each = -(picked * tmask).sum(1) / tlen;
        at::Tensor nll = nll_each.mean();
        at::Tensor kl_logp = at::log_softmax(logits.index({kl_row, kl_pos}), 0);  // [n_vocab]
        if (!kl_init.defined()) kl_init = kl_logp.detach().clone();
        at::Tensor kl = hp.kl_factor * (kl_logp.exp() * (kl_logp - kl_init)).sum();
        at::Tensor wd = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(dev));
        for (size_t s = 0; s < S; ++s) wd = wd + hp.v_weight_decay * delta[s].norm() / init[s].norm().pow(2);
        if (pmet) {
            // PMET: once the target is the argmax at every target position, weaken the NLL term and
            // stop when the distribution has barely moved (KL / kl_factor < 0.01).
            at::Tensor argmax_ok = (log_probs.argmax(2) == tgt).to(at::kFloat).mul(tmask).sum() == tmask.sum();
            if (argmax_ok.item<bool>()) {
                nll_factor = hp.nll_loss_factor * 0.1;
                if (hp.kl_factor > 0 && kl.item<double>() / hp.kl_factor < 0.01 && it > 0) break;
            } else {
                nll_factor = hp.nll_loss_factor;
            }
        }
        at::Tensor loss = nll_factor * nll + kl + wd;
        const double loss_v = loss.item<double>();
        if (it == 0) {
            sum.loss_first = loss_v;
            sum.prob_first = at::exp(-nll_each).mean().item<double>();
        }
        sum.loss_last = loss_v;
        sum.nll_last = nll.item<double>();
        sum.kl_last = kl.item<double>();
        sum.prob_last = at::exp(-nll_each).mean().item<double>();
        if (loss_v < 5e-2 || it == hp.v_num_grad_steps - 1) break;
        loss.backward();
        ++sum.steps;
        {
            at::NoGradGuard no_grad;
            for (size_t s = 0; s < S; ++s) {
                adam[s].step(delta[s], hp.v_lr);
                const double max_norm = hp.clamp_norm_factor * init[s].norm().item<double>();
                const double norm = delta[s].norm().item<double>();
                if (norm > max_norm) delta[s].mul_(max_norm / norm);
            }
        }
    }
    for (size_t s = 0; s < S; ++s) {
        out.init.push_back(init[s].to(at::kCPU));
        out.target.push_back((init[s] + delta[s].detach()).to(at::kCPU));
    }
    sum.init = out.init[0];
    sum.target = out.target[0];
    return out;
}


// ---------------------------------------------------------------------------------------------
// Batched target optimisation (specs/locate_then_edit.md §1.6): the reference's loss, Adam and clamp
// (optimize_targets_reference above), run for every unit of a batch at once and only where
// the result can change. The residual below the edited layer is computed once; each step runs the
// layers above it, and the vocabulary projection only at the target positions and the KL rows' last
// position. Units are independent: each has its own delta, Adam state, clamp and early stop, and
// the summed loss gives each delta exactly its own unit's gradient.


namespace {

// One unit's rows: its rewriting rows (request-major, template-minor, each template(prompt) +
// target[:-1]), HSE's forgetting rows (the same with the old object), and then its KL row "{} is a",
// in the reference's order.
struct UnitRows {
    std::vector<Row> rows;
    std::vector<std::vector<int64_t>> targets;  // per rewriting row, then per forgetting row
    int64_t n_rewrite = 0, n_forget = 0;
};

UnitRows unit_rows(const Tokenizer& tok, const std::vector<EditRequest>& unit, const std::vector<std::string>& templates,
                   const EditHParams& hp, const std::vector<std::vector<int64_t>>* forget) {
    if (unit.empty()) throw Error(ErrorKind::Argument, "target optimisation needs a request");
    UnitRows u;
    for (const EditRequest& r : unit) {
        if (r.subject != unit[0].subject)
            throw Error(ErrorKind::Internal, "one target for several requests needs one subject, got \"" + unit[0].subject + "\" and \"" + r.subject + "\"");
        const std::vector<int64_t> target = target_ids(tok, r.target_new);
        for (const std::string& t : templates) {
            LocatedPrompt p = locate_subject(tok, t, r.prompt, r.subject);
            Row row{p.ids, lookup_index(p, hp.fact_token)};
            row.ids.insert(row.ids.end(), target.begin(), target.end() - 1);
            u.rows.push_back(std::move(row));
            u.targets.push_back(target);
        }
    }
    u.n_rewrite = static_cast<int64_t>(u.rows.size());
    for (size_t i = 0; forget && i < forget->size() && i < unit.size(); ++i) {
        const std::vector<int64_t>& old = (*forget)[i];
        if (old.empty()) continue;
        for (const std::string& t : templates) {
            LocatedPrompt p = locate_subject(tok, t, unit[i].prompt, unit[i].subject);
            Row row{p.ids, lookup_index(p, hp.fact_token)};
            row.ids.insert(row.ids.end(), old.begin(), old.end() - 1);
            u.rows.push_back(std::move(row));
            u.targets.push_back(old);
        }
    }
    u.n_forget = static_cast<int64_t>(u.rows.size()) - u.n_rewrite;
    LocatedPrompt p = locate_subject(tok, "{}", "{} is a", unit[0].subject);
    u.rows.push_back({p.ids, lookup_index(p, hp.fact_token)});
    return u;
}

int64_t max_length(const UnitRows& u) {
    int64_t t = 0;
    for (const Row& r : u.rows) t = std::max<int64_t>(t, static_cast<int64_t>(r.ids.size()));
    return t;
}

// [n, m] int64 indices (padding 0) and their float mask, from ragged lists.
std::pair<at::Tensor, at::Tensor> padded(const std::vector<std::vector<int64_t>>& lists, c10::Device dev) {
    int64_t m = 1;
    for (const auto& l : lists) m = std::max<int64_t>(m, static_cast<int64_t>(l.size()));
    const int64_t n = static_cast<int64_t>(lists.size());
    at::Tensor idx = at::zeros({n, m}, at::kLong), mask = at::zeros({n, m}, at::kFloat);
    auto ia = idx.accessor<int64_t, 2>();
    auto ma = mask.accessor<float, 2>();
    for (int64_t i = 0; i < n; ++i)
        for (size_t j = 0; j < lists[static_cast<size_t>(i)].size(); ++j) {
            ia[i][static_cast<int64_t>(j)] = lists[static_cast<size_t>(i)][j];
            ma[i][static_cast<int64_t>(j)] = 1.0f;
        }
    return {idx.to(dev), mask.to(dev)};
}

at::Tensor long_tensor(const std::vector<int64_t>& v, c10::Device dev) { return at::tensor(v, at::kLong).to(dev); }

// The rows, logit positions and reductions of the units still being optimised.
struct View {
    std::vector<int64_t> units;      // global unit indices, in order
    at::Tensor units_t;              // [G'] the same
    at::Tensor rows;                 // [R'] chunk rows: each unit's rewriting rows, then its KL row
    at::Tensor row_unit;             // [R'] global unit of each row (selects its delta)
    at::Tensor logit_index;          // [n_tok + G'] flat view row * T + position: target positions, then KL positions
    at::Tensor tgt;                  // [n_tok] the target token scored at each target position
    at::Tensor tok_unit;             // [n_tok] view unit of each target position
    at::Tensor tok_forget;           // [n_tok] 1 where the position scores an old object (HSE), else 0
    at::Tensor tok_slot, tok_mask;   // [Rw', max_n] the target positions of each scored row (rewriting and forgetting)
    at::Tensor tlen;                 // [Rw'] target lengths
    at::Tensor unit_slot, unit_mask; // [G', max_rows] the rewriting rows of each unit
    at::Tensor unit_count;           // [G'] rewriting rows per unit
    at::Tensor forget_slot, forget_mask, forget_count;  // the same for the forgetting rows (count >= 1)
    bool any_forget = false;
    int64_t n_tok = 0;
    // Cached slices of the chunk's fixed tensors, over the suffix positions.
    at::Tensor ids, mask, position_ids, lookup_mask, below, site_value;  // [R', suffix] / [R', prefix + suffix] / [R', suffix, ...]
    KvCache prefix;  // [R', n_head_kv, prefix, head_dim] from the start layer up
};

// Each row is run from its lookup position on (the positions before it see no delta, so their keys
// and values are computed once): a suffix of `suffix` positions after a prefix of at most `prefix`.
struct Chunk {
    std::vector<Row> rows;
    std::vector<std::vector<int64_t>> targets;  // per row; empty for KL rows
    std::vector<int64_t> first, n_rewrite, n_forget;  // per unit
    Batch batch;
    int64_t prefix = 0, suffix = 0;
};

View make_view(const Chunk& c, const std::vector<int64_t>& active, c10::Device dev) {
    View v;
    v.units = active;
    const int64_t W = c.suffix;
    std::vector<int64_t> rows, row_unit, lidx, tgt, tok_unit, tok_forget, tlen, unit_count, forget_count, kl_rows;
    std::vector<std::vector<int64_t>> tok_slots, unit_slots, forget_slots;
    int64_t rw = 0;
    for (size_t k = 0; k < active.size(); ++k) {
        const int64_t g = active[k];
        const int64_t first = c.first[static_cast<size_t>(g)], n_rw = c.n_rewrite[static_cast<size_t>(g)];
        const int64_t n_fg = c.n_forget[static_cast<size_t>(g)];
        std::vector<int64_t> mine, mine_forget;
        for (int64_t i = first; i < first + n_rw + n_fg; ++i) {
            const bool forgetting = i >= first + n_rw;
            const int64_t r = static_cast<int64_t>(rows.size());
            rows.push_back(i);
            row_unit.push_back(g);
            const std::vector<int64_t>& target = c.targets[static_cast<size_t>(i)];
            const int64_t len = c.batch.lengths[static_cast<size_t>(i)], n = static_cast<int64_t>(target.size());
            std::vector<int64_t> slots;
            for (int64_t j = 0; j < n; ++j) {
                slots.push_back(static_cast<int64_t>(lidx.size()));
                lidx.push_back(r * W + len - n + j - c.rows[static_cast<size_t>(i)].lookup);  // the logit at p scores token p + 1
                tgt.push_back(target[static_cast<size_t>(j)]);
                tok_unit.push_back(static_cast<int64_t>(k));
                tok_forget.push_back(forgetting ? 1 : 0);
            }
            tok_slots.push_back(std::move(slots));
            tlen.push_back(n);
            (forgetting ? mine_forget : mine).push_back(rw++);
        }
        unit_count.push_back(static_cast<int64_t>(mine.size()));
        unit_slots.push_back(std::move(mine));
        forget_count.push_back(std::max<int64_t>(1, static_cast<int64_t>(mine_forget.size())));
        if (!mine_forget.empty()) v.any_forget = true;
        forget_slots.push_back(std::move(mine_forget));
        const int64_t kl = first + n_rw + n_fg;
        kl_rows.push_back(static_cast<int64_t>(rows.size()) * W);  // its lookup, the last position, starts its suffix
        rows.push_back(kl);
        row_unit.push_back(g);
    }
    v.n_tok = static_cast<int64_t>(lidx.size());
    lidx.insert(lidx.end(), kl_rows.begin(), kl_rows.end());
    v.units_t = long_tensor(active, dev);
    v.rows = long_tensor(rows, dev);
    v.row_unit = long_tensor(row_unit, dev);
    v.logit_index = long_tensor(lidx, dev);
    v.tgt = long_tensor(tgt, dev);
    v.tok_unit = long_tensor(tok_unit, dev);
    std::tie(v.tok_slot, v.tok_mask) = padded(tok_slots, dev);
    v.tlen = at::tensor(tlen, at::kLong).to(at::kFloat).to(dev);
    std::tie(v.unit_slot, v.unit_mask) = padded(unit_slots, dev);
    v.unit_count = at::tensor(unit_count, at::kLong).to(at::kFloat).to(dev);
    v.tok_forget = at::tensor(tok_forget, at::kLong).to(at::kFloat).to(dev);
    std::tie(v.forget_slot, v.forget_mask) = padded(forget_slots, dev);
    v.forget_count = at::tensor(forget_count, at::kLong).to(at::kFloat).to(dev);
    return v;
}

// Per row of `values` [n], the masked sum over its slots divided by `count`: [rows].
at::Tensor slot_mean(const at::Tensor& values, const at::Tensor& slot, const at::Tensor& mask, const at::Tensor& count) {
    return (values.index_select(0, slot.flatten()).view(slot.sizes()) * mask).sum(1) / count;
}

std::vector<SiteTargets> optimize_chunk(const Model& model, const Chunk& c, int layer, const std::vector<Site>& sites,
                                        const EditHParams& hp, bool pmet, const TargetExtras* extras) {
    const c10::Device dev = model.device();
    const int64_t G = static_cast<int64_t>(c.first.size()), R = static_cast<int64_t>(c.rows.size());
    const int64_t T = c.batch.ids.size(1), d = model.hparams().n_embd, P = c.prefix, W = c.suffix;
    const size_t S = sites.size();

    // Once, without a delta: the pass up to the edited layer (the residual entering it and the site
    // values), then the layers above it for the keys and values of every position. A single
    // MLP-output or block-output site is added to the residual the layer hands on, so each step
    // starts at the next layer; other sites (PMET's attention output feeds the MLP) start at the
    // edited layer with hooks.
    const bool from_next = S == 1 && (sites[0] == Site::MlpOut || sites[0] == Site::BlockOut);
    const bool mlp_site = from_next && sites[0] == Site::MlpOut;
    const int start = from_next ? layer + 1 : layer;
    const bool use_prefix = P > 0 && start < model.hparams().n_layer;  // otherwise every pass runs without a cache
    const SiteKey below_key = layer == 0 ? SiteKey{Site::Embed, 0} : SiteKey{Site::BlockOut, layer - 1};
    at::Tensor residual_in, attn_out, block_out;  // [R, T, n_embd]
    std::vector<at::Tensor> site_value(S);  // [R, T, n_embd]
    KvCache kv;
    {
        at::NoGradGuard no_grad;
        Hooks prep;
        prep.capture(below_key.site, below_key.layer);
        for (Site s : sites) prep.capture(s, layer);
        if (mlp_site) prep.capture(Site::AttnOut, layer);
        if (from_next) prep.capture(Site::BlockOut, layer);
        ForwardInput in;
        in.input_ids = c.batch.ids;
        in.attention_mask = c.batch.mask;
        in.stop_layer = layer + 1;
        in.logit_index = at::zeros({0}, at::TensorOptions().dtype(at::kLong).device(dev));
        model.forward(in, &prep);
        residual_in = prep.captured(below_key.site, below_key.layer);
        for (size_t s = 0; s < S; ++s) site_value[s] = prep.captured(sites[s], layer);
        if (mlp_site) attn_out = prep.captured(Site::AttnOut, layer);
        if (from_next) block_out = prep.captured(Site::BlockOut, layer);
        if (use_prefix) {
            ForwardInput up = in;
            up.stop_layer = -1;
            up.start_layer = start;
            up.residual = from_next ? block_out : residual_in;
            model.forward(up, nullptr, &kv);
        }
    }
    // The suffix of each row: positions lookup .. length - 1 (padding repeats the last position).
    at::Tensor sfx_pos = at::zeros({R, W}, at::kLong);  // [R, W]
    at::Tensor mask = at::zeros({R, P + W}, at::kLong);  // [R, P + W]: the kept prefix, then the suffix
    {
        auto pa = sfx_pos.accessor<int64_t, 2>();
        auto ma = mask.accessor<int64_t, 2>();
        for (int64_t i = 0; i < R; ++i) {
            const int64_t p = c.rows[static_cast<size_t>(i)].lookup, len = c.batch.lengths[static_cast<size_t>(i)];
            for (int64_t t = 0; t < p; ++t) ma[i][t] = 1;
            for (int64_t j = 0; j < W; ++j) {
                pa[i][j] = std::min(p + j, T - 1);
                ma[i][P + j] = p + j < len ? 1 : 0;
            }
        }
    }
    sfx_pos = sfx_pos.to(dev);
    mask = mask.to(dev);
    const at::Tensor sfx_ids = c.batch.ids.gather(1, sfx_pos);  // [R, W]
    auto suffix_of = [&](const at::Tensor& x) { return x.gather(1, sfx_pos.unsqueeze(2).expand({R, W, x.size(2)})); };  // [R, W, dim]
    at::Tensor lookup_mask = at::zeros({R, W, 1}, at::TensorOptions().dtype(at::kFloat).device(dev));  // [R, W, 1]: 1 at the lookup
    lookup_mask.select(1, 0).fill_(1.0f);
    // What the site's value is added to: the block adds the MLP output to the residual after attention
    // (h + attn_out, the same float operation as in the forward pass).
    const at::Tensor below = mlp_site ? suffix_of(residual_in + attn_out) : from_next ? at::Tensor() : suffix_of(residual_in);
    const at::Tensor changed_site = from_next ? suffix_of(site_value[0]) : at::Tensor();

    // The site's value at each unit's first rewriting row, before any delta: [G, n_embd] per site.
    std::vector<at::Tensor> init(S), init_norm_sq(S);
    std::vector<std::vector<double>> init_norm(S);
    {
        std::vector<int64_t> first_pos;
        for (int64_t g = 0; g < G; ++g) first_pos.push_back(c.rows[static_cast<size_t>(c.first[static_cast<size_t>(g)])].lookup);
        const at::Tensor fr = long_tensor(c.first, dev), fp = long_tensor(first_pos, dev);
        for (size_t s = 0; s < S; ++s) {
            init[s] = site_value[s].index({fr, fp}).clone();
            const at::Tensor norms = init[s].norm(2, {1});  // [G]
            init_norm_sq[s] = norms.pow(2);
            const at::Tensor nc = norms.to(at::kCPU).to(at::kDouble).contiguous();
            init_norm[s].assign(nc.data_ptr<double>(), nc.data_ptr<double>() + G);
        }
    }
    residual_in = attn_out = block_out = at::Tensor();
    site_value.clear();

    std::vector<at::Tensor> delta(S);  // [G, n_embd] leaves
    std::vector<Adam> adam(S);
    for (size_t s = 0; s < S; ++s) delta[s] = at::zeros({G, d}, at::TensorOptions().dtype(at::kFloat).device(dev)).set_requires_grad(true);
    std::vector<at::Tensor> drows(S);  // [R', 1, n_embd]: each row's unit's delta, this step
    View v;
    Hooks hooks;
    if (!from_next)
        for (size_t s = 0; s < S; ++s)
            hooks.on(sites[s], layer, [&, s](at::Tensor& value) { value = value + v.lookup_mask * drows[s]; });

    std::vector<SiteTargets> out(static_cast<size_t>(G));
    std::vector<int64_t> active(static_cast<size_t>(G));
    for (int64_t g = 0; g < G; ++g) active[static_cast<size_t>(g)] = g;
    at::Tensor kl_init;  // [G, n_vocab]
    // HSE: the forgetting factor scales the NLL whether or not a unit forgets (as the reference does).
    const bool hse = extras != nullptr;
    const double f = hse ? extras->forget_factor : 0.0;
    const at::Tensor fisher_w = hse && extras->fisher_weight.defined() ? extras->fisher_weight.to(dev).to(at::kFloat) : at::Tensor();
    const bool empirical_fisher = hse && extras->fisher == "empirical", score_fisher = hse && extras->fisher == "score";
    at::Tensor fisher_sum;  // [G, n_embd] sum over steps of grad^2 (empirical)
    if (empirical_fisher) fisher_sum = at::zeros({G, d}, at::TensorOptions().dtype(at::kFloat).device(dev));
    // The rows, logits and loss terms of the units in `act`, at the current deltas.
    struct Pass {
        at::Tensor log_probs, nll_each, nll, forget, kl, wd, fisher;  // [n_tok, V], [Rw'], then [G'] each
    };
    auto run_pass = [&](const std::vector<int64_t>& act) {
        if (v.units != act) {
            v = make_view(c, act, dev);
            v.ids = sfx_ids.index_select(0, v.rows);
            v.mask = mask.index_select(0, v.rows);
            v.position_ids = sfx_pos.index_select(0, v.rows);
            v.lookup_mask = lookup_mask.index_select(0, v.rows);
            if (changed_site.defined()) v.site_value = changed_site.index_select(0, v.rows);
            if (below.defined()) v.below = below.index_select(0, v.rows);
            v.prefix.k.assign(kv.k.size(), at::Tensor());
            v.prefix.v.assign(kv.v.size(), at::Tensor());
            for (size_t l = static_cast<size_t>(start); l < kv.k.size(); ++l) {
                v.prefix.k[l] = kv.k[l].narrow(2, 0, P).index_select(0, v.rows);
                v.prefix.v[l] = kv.v[l].narrow(2, 0, P).index_select(0, v.rows);
            }
        }
        for (size_t s = 0; s < S; ++s) drows[s] = delta[s].index_select(0, v.row_unit).unsqueeze(1);
        ForwardInput in;
        in.input_ids = v.ids;
        in.attention_mask = use_prefix ? v.mask : v.mask.narrow(1, P, W);
        in.position_ids = v.position_ids;
        in.logit_index = v.logit_index;
        in.start_layer = start;
        if (from_next) {
            const at::Tensor changed = v.site_value + v.lookup_mask * drows[0];
            in.residual = mlp_site ? v.below + changed : changed;
        } else {
            in.residual = v.below;
        }
        KvCache prefix = v.prefix;  // the pass appends the suffix's keys and values to its own copy
        at::Tensor logits = model.forward(in, from_next ? nullptr : &hooks, use_prefix ? &prefix : nullptr).logits;  // [n_tok + G', n_vocab]
        Pass ps;
        ps.log_probs = at::log_softmax(logits.slice(0, 0, v.n_tok), 1);  // [n_tok, n_vocab]
        at::Tensor picked = ps.log_probs.gather(1, v.tgt.unsqueeze(1)).squeeze(1);  // [n_tok]
        at::Tensor per_token = -picked;
        // HSE's unlikelihood at the forgetting positions: -log(1 - p(old token) + e^-20).
        if (v.any_forget) per_token = at::where(v.tok_forget > 0, -at::log(1.0 - picked.exp() + std::exp(-20.0)), per_token);
        ps.nll_each = slot_mean(per_token, v.tok_slot, v.tok_mask, v.tlen);  // [Rw']
        ps.nll = slot_mean(ps.nll_each, v.unit_slot, v.unit_mask, v.unit_count);  // [G']
        const int64_t Ga = static_cast<int64_t>(v.units.size());
        const auto zeros_g = [&] { return at::zeros({Ga}, at::TensorOptions().dtype(at::kFloat).device(dev)); };
        ps.forget = v.any_forget ? f * slot_mean(ps.nll_each, v.forget_slot, v.forget_mask, v.forget_count) : zeros_g();
        at::Tensor kl_logp = at::log_softmax(logits.slice(0, v.n_tok), 1);  // [G', n_vocab]
        if (!kl_init.defined()) kl_init = kl_logp.detach().clone();  // every unit is active at the first step
        ps.kl = hp.kl_factor * (kl_logp.exp() * (kl_logp - kl_init.index_select(0, v.units_t))).sum(1);  // [G']
        ps.wd = zeros_g();
        for (size_t s = 0; s < S; ++s)
            ps.wd = ps.wd + hp.v_weight_decay * delta[s].index_select(0, v.units_t).norm(2, {1}) / init_norm_sq[s].index_select(0, v.units_t);
        ps.fisher = fisher_w.defined() ? 0.5 * (delta[0].index_select(0, v.units_t).pow(2) * fisher_w).sum(1) : zeros_g();
        return ps;
    };
    for (int it = 0; it < hp.v_num_grad_steps && !active.empty(); ++it) {
        Pass ps = run_pass(active);
        const at::Tensor& log_probs = ps.log_probs;
        const at::Tensor& nll_each = ps.nll_each;
        const at::Tensor& nll = ps.nll;
        const at::Tensor& kl = ps.kl;
        const int64_t Ga = static_cast<int64_t>(v.units.size());
        std::vector<float> nll_factor(static_cast<size_t>(Ga), pmet ? static_cast<float>(hp.nll_loss_factor) : hse ? static_cast<float>(1.0 - f) : 1.0f);
        std::vector<char> pmet_done(static_cast<size_t>(Ga), 0);
        if (pmet) {
            // PMET: once the target is the argmax at every target position of a unit, weaken its
            // NLL term, and stop it when its distribution has barely moved (KL / kl_factor < 0.01).
            const at::Tensor wrong = (log_probs.argmax(1) != v.tgt).to(at::kFloat);
            const at::Tensor n_wrong = at::zeros({Ga}, wrong.options()).index_add_(0, v.tok_unit, wrong).to(at::kCPU);
            const at::Tensor kl_c = kl.detach().to(at::kCPU).to(at::kDouble);
            for (int64_t k = 0; k < Ga; ++k) {
                if (n_wrong[k].item<float>() != 0.0f) continue;
                nll_factor[static_cast<size_t>(k)] = static_cast<float>(hp.nll_loss_factor * 0.1);
                if (hp.kl_factor > 0 && kl_c[k].item<double>() / hp.kl_factor < 0.01 && it > 0) pmet_done[static_cast<size_t>(k)] = 1;
            }
        }
        // The forgetting term counts only while it exceeds 1e-3 (reference compute_z).
        const at::Tensor forget_on = (ps.forget.detach() > 1e-3).to(at::kFloat);
        at::Tensor loss = at::tensor(nll_factor, at::kFloat).to(dev) * nll + forget_on * ps.forget + kl + ps.wd + ps.fisher;  // [G']
        const at::Tensor prob = slot_mean(at::exp(-nll_each.detach()), v.unit_slot, v.unit_mask, v.unit_count).to(at::kCPU).to(at::kDouble);
        const at::Tensor loss_c = loss.detach().to(at::kCPU).to(at::kDouble), nll_c = nll.detach().to(at::kCPU).to(at::kDouble);
        const at::Tensor kl_c = kl.detach().to(at::kCPU).to(at::kDouble);
        const at::Tensor forget_c = (forget_on * ps.forget.detach()).to(at::kCPU).to(at::kDouble);
        std::vector<int64_t> keep, keep_view;
        for (int64_t k = 0; k < Ga; ++k) {
            if (pmet_done[static_cast<size_t>(k)]) continue;
            SiteTargets& o = out[static_cast<size_t>(v.units[static_cast<size_t>(k)])];
            TargetResult& sum = o.summary;
            const double loss_v = loss_c[k].item<double>();
            if (it == 0) {
                sum.loss_first = loss_v;
                sum.prob_first = prob[k].item<double>();
            }
            sum.loss_last = loss_v;
            sum.nll_last = nll_c[k].item<double>();
            sum.kl_last = kl_c[k].item<double>();
            sum.prob_last = prob[k].item<double>();
            o.forget_last = forget_c[k].item<double>();
            if (o.forget_last > 0) ++o.forget_steps;
            if (loss_v < 5e-2 || it == hp.v_num_grad_steps - 1) continue;
            keep.push_back(v.units[static_cast<size_t>(k)]);
            keep_view.push_back(k);
        }
        active = keep;
        if (keep.empty()) break;
        for (auto& t : delta)
            if (t.grad().defined()) t.mutable_grad().zero_();
        loss.index_select(0, long_tensor(keep_view, dev)).sum().backward();
        {
            at::NoGradGuard no_grad;
            const at::Tensor idx = long_tensor(keep, dev);
            // The empirical Fisher reads the gradient of each unit's whole loss before the step.
            if (empirical_fisher) fisher_sum.index_add_(0, idx, delta[0].grad().index_select(0, idx).pow(2));
            for (size_t s = 0; s < S; ++s) {
                adam[s].step_rows(delta[s], idx, it + 1, hp.v_lr);
                const at::Tensor norms = delta[s].index_select(0, idx).norm(2, {1}).to(at::kCPU).to(at::kDouble);
                for (size_t k = 0; k < keep.size(); ++k) {
                    const double max_norm = hp.clamp_norm_factor * init_norm[s][static_cast<size_t>(keep[k])];
                    const double norm = norms[static_cast<int64_t>(k)].item<double>();
                    if (norm > max_norm) delta[s][keep[k]].mul_(max_norm / norm);
                }
            }
        }
        for (int64_t g : keep) ++out[static_cast<size_t>(g)].summary.steps;
    }
    if (empirical_fisher) {
        for (int64_t g = 0; g < G; ++g) {
            SiteTargets& o = out[static_cast<size_t>(g)];
            if (o.summary.steps > 0) o.fisher = (fisher_sum[g] / double(o.summary.steps)).to(at::kCPU).clone();
        }
    } else if (score_fisher) {
        // The paper's Fisher at the optimum: the squared gradient of each unit's log-likelihood of its
        // new target (the mean NLL over its rewriting rows) with respect to its delta.
        std::vector<int64_t> all(static_cast<size_t>(G));
        for (int64_t g = 0; g < G; ++g) all[static_cast<size_t>(g)] = g;
        for (auto& t : delta)
            if (t.grad().defined()) t.mutable_grad().zero_();
        run_pass(all).nll.sum().backward();
        for (int64_t g = 0; g < G; ++g) out[static_cast<size_t>(g)].fisher = delta[0].grad()[g].detach().pow(2).to(at::kCPU).clone();
    }
    for (int64_t g = 0; g < G; ++g) {
        SiteTargets& o = out[static_cast<size_t>(g)];
        for (size_t s = 0; s < S; ++s) {
            o.init.push_back(init[s][g].detach().to(at::kCPU).clone());
            o.target.push_back((init[s][g] + delta[s][g].detach()).to(at::kCPU));
        }
        o.summary.init = o.init[0];
        o.summary.target = o.target[0];
    }
    return out;
}

}  // namespace

std::vector<SiteTargets> optimize_targets(const Model& model, const std::vector<std::vector<EditRequest>>& units, int layer,
                                          const std::vector<Site>& sites, const std::vector<std::string>& templates,
                                          const EditHParams& hp, bool pmet, const TargetExtras* extras) {
    const Tokenizer& tok = *model.tokenizer();
    const HParams& mh = model.hparams();
    if (extras && (sites.size() != 1 || pmet))
        throw Error(ErrorKind::Internal, "HSE's target terms apply to one block-output or MLP-output site");
    std::vector<UnitRows> all;
    all.reserve(units.size());
    for (const auto& u : units) {
        const size_t i = all.size();
        all.push_back(unit_rows(tok, u, templates, hp, extras && i < extras->forget.size() ? &extras->forget[i] : nullptr));
        for (const Row& r : all.back().rows)
            if (static_cast<int64_t>(r.ids.size()) > mh.n_ctx)
                throw Error(ErrorKind::Argument, "a rewriting prompt is longer than the model's context (" + std::to_string(mh.n_ctx) +
                                                     " tokens); shorten the context templates");
    }
    // Chunks of units whose tensors stay within about 1 GiB: a rough count of the floats each suffix
    // position keeps for the backward pass in each layer run, the prefix keys and values, and the
    // site values of the first pass.
    const double layers_run = double(std::max<int64_t>(1, mh.n_layer - layer));
    std::vector<SiteTargets> out;
    size_t next = 0;
    while (next < all.size()) {
        Chunk c;
        int64_t T = 0;
        while (next < all.size()) {
            const UnitRows& u = all[next];
            int64_t pre = c.prefix, suf = c.suffix;
            for (const Row& r : u.rows) {
                pre = std::max(pre, r.lookup);
                suf = std::max<int64_t>(suf, static_cast<int64_t>(r.ids.size()) - r.lookup);
            }
            const int64_t t = std::max(T, max_length(u));
            const double rows = double(c.rows.size() + u.rows.size());
            const double per_row = layers_run * (double(suf) * double(12 * mh.n_embd + 4 * mh.n_ff + 2 * mh.n_head * (pre + suf)) +
                                                 4.0 * double(pre * mh.n_embd)) +
                                   6.0 * double(t * mh.n_embd);
            if (!c.first.empty() && 4.0 * rows * per_row > double(1ll << 30)) break;
            T = t;
            c.prefix = pre;
            c.suffix = suf;
            c.first.push_back(static_cast<int64_t>(c.rows.size()));
            c.n_rewrite.push_back(u.n_rewrite);
            c.n_forget.push_back(u.n_forget);
            c.rows.insert(c.rows.end(), u.rows.begin(), u.rows.end());
            c.targets.insert(c.targets.end(), u.targets.begin(), u.targets.end());
            c.targets.emplace_back();  // the KL row
            ++next;
        }
        c.batch = make_batch(c.rows, model.device());
        std::vector<SiteTargets> part = optimize_chunk(model, c, layer, sites, hp, pmet, extras);
        for (auto& p : part) out.push_back(std::move(p));
    }
    return out;
}

}  // namespace engram::editing

namespace engram {

TargetResult compute_target(const Model& model, const EditRequest& request, int layer, TargetSite site,
                            const std::vector<std::string>& templates, const EditHParams& hp) {
    validate_request(model, request);
    const Site s = site == TargetSite::MlpOut ? Site::MlpOut : Site::BlockOut;
    return editing::optimize_targets(model, {{request}}, layer, {s}, templates, hp, false).at(0).summary;
}

at::Tensor mean_keys(const Model& model, const std::vector<EditRequest>& requests, int layer,
                     const std::vector<std::vector<std::string>>& templates, bool mean_of_group_means, const EditHParams& hp) {
    const Tokenizer& tok = *model.tokenizer();
    const std::vector<std::string> flat = editing::flatten(templates);
    std::vector<editing::Row> rows;
    for (const auto& r : requests) {
        std::vector<editing::Row> mine = editing::template_rows(tok, r, flat, hp.fact_token);
        rows.insert(rows.end(), mine.begin(), mine.end());
    }
    const at::Tensor keys = editing::read_at_lookup(model, rows, Site::MlpKey, layer).to(at::kDouble);  // [n * n_t, n_ff]
    const int64_t n_t = static_cast<int64_t>(flat.size());
    std::vector<at::Tensor> out;
    for (int64_t i = 0; i < static_cast<int64_t>(requests.size()); ++i) {
        const at::Tensor mine = keys.slice(0, i * n_t, (i + 1) * n_t);
        if (!mean_of_group_means) {
            out.push_back(mine.mean(0));
            continue;
        }
        std::vector<at::Tensor> means;
        int64_t at_row = 0;
        for (const auto& g : templates) {
            const int64_t k = static_cast<int64_t>(g.size());
            if (k > 0) means.push_back(mine.slice(0, at_row, at_row + k).mean(0));
            at_row += k;
        }
        out.push_back(at::stack(means).mean(0));
    }
    return at::stack(out, 1);
}

}  // namespace engram
