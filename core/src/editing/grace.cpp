// GRACE (Hartvigsen et al., NeurIPS 2023): edits as entries of a codebook adapter on one layer's
// MLP down-projection (adapters/kinds.h). Per request, on the codebook the previous request left:
//   1. The query q is the down-projection's input at the prompt's last token.
//   2. Codebook maintenance against the nearest entry j at distance d:
//      - none, or d > eps_init + eps_j: insert (q, v, eps_init, label);
//      - another label (token ids differ): insert (q, v, d/2) and shrink eps_j to d/2 - 1e-5 (split);
//        at d/2 <= 1e-5 (the same key) entry j takes the new label and is retrained instead;
//      - the same label: if d > eps_j, eps_j = d (coverage; moving_average also moves k_j halfway
//        to q), and entry j's value is retrained.
//   3. The value (new: U[0, 1) seeded, or the layer's current output with val_init warm) is
//      trained with Adam for n_iter steps on the target's cross-entropy, the layer's output at the
//      prompt's last token (or every prompt position, replacement all) replaced by it.
// Labels compare by exact token ids (the reference compares means of the ids). The edit is the
// list of codebook ops, each with absolute values, so a replay gives the same codebook bits.
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <random>

#include "adapters/kinds.h"
#include "editing/internal.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"
#include "engram/tokenizer.h"

namespace engram {

namespace {

std::string replacement_of(const std::string& setting) {
    return setting == "all" || setting == "replace_all" ? "all" : "last";
}

at::Tensor cold_value(int64_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = static_cast<float>(rng() >> 40) * (1.0f / 16777216.0f);  // 24 random bits: exact in float
    return at::tensor(v, at::kFloat);
}

}  // namespace

Edit EditSession::compute_grace(const std::vector<EditRequest>& requests) {
    if (!model_.is_decoder()) throw Error(ErrorKind::Unsupported, "GRACE edits decoder language models, not " + model_.arch_name());
    const int L = hp_.layers.at(0);
    const std::string name = adapters::grace_codebook_name(L);
    const std::string replacement = replacement_of(hp_.grace_replacement);
    const Tokenizer& tok = *model_.tokenizer();
    const c10::Device dev = model_.device();

    // The ops are applied to the model as they are made (the next request sees them) and the
    // installed set is put back at the end: the caller applies the returned edit.
    struct RestoreAdapters {
        Model& m;
        AdapterSet saved;
        ~RestoreAdapters() { m.adapters() = saved; }
    } restore{model_, model_.adapters()};

    Edit e;
    nlohmann::json per = nlohmann::json::array();
    for (size_t i = 0; i < requests.size(); ++i) {
        check_cancel();
        report("target", static_cast<int64_t>(i), static_cast<int64_t>(requests.size()));
        const EditRequest& r = requests[i];
        std::vector<int64_t> ids = tok.encode(r.prompt_text(), /*add_special_tokens=*/true).ids;
        const std::vector<int64_t> target = target_ids(tok, r.target_new);
        if (ids.empty()) throw Error(ErrorKind::Argument, "request " + std::to_string(i) + ": the prompt tokenizes to nothing");
        const int64_t p = static_cast<int64_t>(ids.size()) - 1, n_t = static_cast<int64_t>(target.size());
        ids.insert(ids.end(), target.begin(), target.end() - 1);
        const int64_t T = static_cast<int64_t>(ids.size());
        if (T > model_.hparams().n_ctx)
            throw Error(ErrorKind::Argument, "request " + std::to_string(i) + ": prompt + target exceed the model's context");
        const at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0).to(dev);
        const at::Tensor route = at::full({1}, p, at::kLong);

        // The query, the layer's current output there, and the residual entering the layer.
        at::Tensor q, warm, h_in;
        {
            at::NoGradGuard no_grad;
            Hooks hooks;
            hooks.capture(Site::MlpKey, L);
            hooks.capture(Site::MlpOut, L);
            if (L == 0) hooks.capture(Site::Embed, 0);
            else hooks.capture(Site::BlockOut, L - 1);
            ForwardInput in;
            in.input_ids = input;
            in.route_position = route;
            in.stop_layer = L + 1 < model_.hparams().n_layer ? L + 1 : -1;
            in.logit_index = at::full({1}, T - 1, at::kLong);
            model_.forward(in, &hooks);
            q = hooks.captured(Site::MlpKey, L)[0][p].to(at::kFloat);
            warm = hooks.captured(Site::MlpOut, L)[0][p].to(at::kFloat);
            h_in = L == 0 ? hooks.captured(Site::Embed, 0) : hooks.captured(Site::BlockOut, L - 1);
        }

        // Codebook maintenance (step 2).
        const auto* cb = dynamic_cast<const adapters::GraceCodebook*>(model_.adapters().find(name));
        std::vector<AdapterOp> ops;
        std::string action = "insert";
        double distance = -1, nearest_eps = 0;
        int64_t j = -1;
        if (cb && !cb->empty()) {
            auto [idx, d] = cb->nearest(q.unsqueeze(0)).at(0);
            j = idx;
            distance = d;
            nearest_eps = cb->entries()[size_t(j)].eps;
        }
        std::string entry;  // the entry trained below
        at::Tensor v0;
        double new_eps = hp_.grace_eps;
        const bool far = j < 0 || distance > hp_.grace_eps + nearest_eps;
        const bool conflict = !far && cb->entries()[size_t(j)].label != target;
        if (far || (conflict && distance / 2 - 1e-5 > 0)) {
            if (conflict) {
                action = "split";
                ops.push_back(adapters::grace_op(L, "set_eps", {{"entry", cb->entries()[size_t(j)].id}, {"eps", distance / 2 - 1e-5}}));
                new_eps = distance / 2;
            }
            // A stable id: the request and its key.
            Sha256 h;
            const std::string text = r.prompt_text() + "\x1f" + nlohmann::json(target).dump();
            h.update(text);
            const at::Tensor qc = q.to(at::kCPU).contiguous();
            h.update(qc.data_ptr(), static_cast<size_t>(qc.numel()) * sizeof(float));
            entry = h.hex_digest().substr(0, 16);
            uint64_t seed = hp_.seed;
            for (char c : entry) seed = seed * 131 + static_cast<unsigned char>(c);
            v0 = hp_.grace_val_init == "warm" ? warm.to(at::kCPU) : cold_value(warm.size(0), seed);
        } else {
            const auto& ej = cb->entries()[size_t(j)];
            entry = ej.id;
            v0 = ej.value.to(at::kCPU);
            if (conflict) {
                action = "overwrite";
            } else if (distance > ej.eps) {
                action = "expand";
                if (hp_.grace_eps_expand == "moving_average") {
                    AdapterOp mv = adapters::grace_op(L, "set_key", {{"entry", entry}});
                    mv.tensors.emplace_back("key", ((ej.key.to(at::kCPU) + q.to(at::kCPU)) * 0.5).contiguous());
                    ops.push_back(std::move(mv));
                }
                ops.push_back(adapters::grace_op(L, "set_eps", {{"entry", entry}, {"eps", distance}}));
            } else {
                action = "retrain";
            }
        }

        // Value training (step 3): the run starts at layer L from the stored residual.
        at::Tensor v = v0.to(dev).clone().set_requires_grad(true);
        editing::Adam adam;
        const at::Tensor tgt = at::tensor(target, at::kLong).to(dev);
        at::Tensor logit_pos = at::arange(p, p + n_t, at::kLong);
        double loss_first = 0, loss_last = 0, prob_first = 0, prob_last = 0;
        for (int step = 1; step <= hp_.grace_n_iter; ++step) {
            check_cancel();
            if (v.grad().defined()) v.mutable_grad().zero_();
            Hooks hooks;
            hooks.on(Site::MlpOut, L, [&](at::Tensor& out) {
                if (replacement == "all") {
                    at::Tensor keep = out.narrow(1, p + 1, out.size(1) - p - 1);
                    out = at::cat({v.to(out.scalar_type()).view({1, 1, -1}).expand({out.size(0), p + 1, out.size(2)}), keep}, 1);
                } else {
                    out = out.clone();
                    out.select(0, 0).select(0, p).copy_(v.to(out.scalar_type()));
                }
            });
            ForwardInput in;
            in.input_ids = input;
            in.residual = h_in;
            in.start_layer = L;
            in.route_position = route;
            in.logit_index = logit_pos.to(dev);
            at::Tensor logp = at::log_softmax(model_.forward(in, &hooks).logits.to(at::kFloat), -1);  // [n_t, V]
            at::Tensor nll = -logp.gather(1, tgt.unsqueeze(1)).squeeze(1);
            at::Tensor loss = nll.mean();
            loss_last = loss.item<double>();
            prob_last = std::exp(-loss_last);
            if (step == 1) {
                loss_first = loss_last;
                prob_first = prob_last;
            }
            loss.backward();
            at::NoGradGuard no_grad;
            adam.step(v, hp_.grace_edit_lr);
        }
        const at::Tensor trained = v.detach().to(at::kCPU).to(at::kFloat).contiguous();
        if (action == "insert" || action == "split") {
            AdapterOp ins = adapters::grace_op(L, "insert", {{"entry", entry}, {"eps", new_eps}, {"label", target}, {"replacement", replacement}});
            ins.tensors.emplace_back("key", q.to(at::kCPU).contiguous());
            ins.tensors.emplace_back("value", trained);
            ops.push_back(std::move(ins));
        } else {
            nlohmann::json params = {{"entry", entry}};
            if (action == "overwrite") params["label"] = target;
            AdapterOp sv = adapters::grace_op(L, "set_value", params);
            sv.tensors.emplace_back("value", trained);
            ops.push_back(std::move(sv));
        }
        for (const AdapterOp& op : ops) model_.apply_adapter_op(op);
        const auto* after = dynamic_cast<const adapters::GraceCodebook*>(model_.adapters().find(name));
        per.push_back({{"action", action}, {"entry", entry}, {"distance", distance}, {"nearest_eps", nearest_eps},
                       {"loss_first", loss_first}, {"loss_last", loss_last}, {"prob_first", prob_first}, {"prob_last", prob_last},
                       {"codebook_entries", after ? after->entries().size() : 0}});
        for (AdapterOp& op : ops) e.adapter_ops.push_back(std::move(op));
    }
    const auto* final_cb = dynamic_cast<const adapters::GraceCodebook*>(model_.adapters().find(name));
    e.metrics = {{"layer", L}, {"adapter", name}, {"codebook_entries", final_cb ? final_cb->entries().size() : 0}, {"requests", per}};
    return e;
}

}  // namespace engram
