// Target-vector optimisation (ROME compute_v, MEMIT compute_z, PMET compute_zs) and key reading
// (specs/locate_then_edit.md §1.4, §1.6, §6b).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

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
