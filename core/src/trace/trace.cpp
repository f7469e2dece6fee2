// Causal tracing: noise, inputs, the naive (reference) and fast implementations. See trace.h.
#include "engram/trace.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "engram/error.h"
#include "engram/hooks.h"
#include "engram/model.h"
#include "engram/tokenizer.h"
#include "arch/arch.h"
#include "models/layers.h"

namespace engram {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// numpy.random.RandomState: MT19937 seeded by init_genrand, doubles from two draws (53 bits),
// Gaussians by the polar method with one value kept for the next call. Reproducing it exactly
// gives the same noise as ROME for the same seed.
class NumpyRandomState {
public:
    explicit NumpyRandomState(uint32_t seed) : mt_(seed) {}
    double random_sample() {
        const uint32_t a = mt_() >> 5, b = mt_() >> 6;
        return (double(a) * 67108864.0 + double(b)) / 9007199254740992.0;
    }
    double gauss() {
        if (has_gauss_) {
            has_gauss_ = false;
            return gauss_;
        }
        double x1, x2, r2;
        do {
            x1 = 2.0 * random_sample() - 1.0;
            x2 = 2.0 * random_sample() - 1.0;
            r2 = x1 * x1 + x2 * x2;
        } while (r2 >= 1.0 || r2 == 0.0);
        const double f = std::sqrt(-2.0 * std::log(r2) / r2);
        gauss_ = f * x1;
        has_gauss_ = true;
        return f * x2;
    }

private:
    std::mt19937 mt_;
    bool has_gauss_ = false;
    double gauss_ = 0;
};

// [samples, n, n_embd] noise in the model's dtype.
at::Tensor make_noise(const TraceOptions& o, double level, int64_t n, int64_t d) {
    const int64_t S = o.samples;
    at::Tensor noise = at::empty({S, n, d}, at::TensorOptions().dtype(at::kDouble));
    double* p = noise.data_ptr<double>();
    NumpyRandomState rs(static_cast<uint32_t>(o.seed));
    const int64_t count = S * n * d;
    switch (o.noise.type) {
        case NoiseRule::Type::Gaussian:
            for (int64_t i = 0; i < count; ++i) p[i] = level * rs.gauss();
            break;
        case NoiseRule::Type::Uniform:
            for (int64_t i = 0; i < count; ++i) p[i] = level * (-1.0 + 2.0 * rs.random_sample());
            break;
        case NoiseRule::Type::StudentT: {
            // sqrt((nu - 2) / u) z with u ~ chi2(nu): a Student-t vector whose variance matches level^2.
            std::mt19937_64 chi_rng(o.seed + 0x9e3779b97f4a7c15ULL);
            std::chi_squared_distribution<double> chi(o.noise.degrees);
            for (int64_t v = 0; v < S * n; ++v) {
                const double factor = std::sqrt((o.noise.degrees - 2.0) / chi(chi_rng));
                for (int64_t j = 0; j < d; ++j) p[v * d + j] = level * factor * rs.gauss();
            }
            break;
        }
    }
    return noise.to(at::kFloat);
}

// rows: [S, T, n_embd] embeddings of the corrupted copies (modified in place).
void corrupt_rows(const at::Tensor& rows, const at::Tensor& noise, int64_t b, bool replace, const at::Tensor& pos_rows) {
    if (noise.size(1) == 0) return;
    at::Tensor span = rows.narrow(1, b, noise.size(1));
    at::Tensor nz = noise.to(rows.device()).to(rows.scalar_type());
    if (replace) {
        // ROME replaces the token embeddings; GPT-2 adds its position embeddings afterwards.
        span.copy_(pos_rows.defined() ? nz + pos_rows : nz);
    } else {
        span.add_(nz);
    }
}

double resolved_level(const TraceOptions& o) {
    if (!o.noise.relative) return o.noise.level;
    if (!(o.embedding_std > 0))
        throw Error(ErrorKind::Argument, "noise " + noise_rule_text(o.noise) + " is relative to the subject embedding std, which was not given");
    return o.noise.level * o.embedding_std;
}

std::pair<int64_t, int64_t> window_of(int64_t l, int w, int64_t n_layer) {
    const int64_t lo = std::max<int64_t>(0, l - w / 2);
    const int64_t hi = std::min<int64_t>(n_layer, l + (w + 1) / 2);
    return {lo, hi};
}

// 2 x multiply-adds of one full Model::forward of B rows and T positions with all logits.
double full_forward_flops(const Model& m, int64_t B, int64_t T) {
    const HParams& hp = m.hparams();
    double per_token = 0;
    for (int64_t l = 0; l < hp.n_layer; ++l)
        for (Slot s : {Slot::AttnQkv, Slot::AttnQ, Slot::AttnK, Slot::AttnV, Slot::AttnOut, Slot::FfnUp, Slot::FfnGate, Slot::FfnDown}) {
            const at::Tensor& w = m.layers[size_t(l)][size_t(s)];
            if (w.defined()) per_token += 2.0 * double(w.numel());
        }
    per_token += 2.0 * double(hp.n_vocab * hp.n_embd);
    const double attn = 4.0 * double(hp.n_layer * hp.n_head * T * T * hp.head_dim);
    return double(B) * (double(T) * per_token + attn);
}

bool cancelled(const TraceOptions& o) { return o.cancel && o.cancel->load(std::memory_order_relaxed); }

struct Prepared {
    int64_t T = 0, L = 0, S = 0, b = 0, e = 0;
    at::Tensor ids;    // [1, T]
    at::Tensor noise;  // [S, e - b, n_embd]
    at::Tensor pos_rows;
    double level = 0;
};

void finish_row(TraceResult& result, const TraceOptions& o, size_t kind_index, int64_t t, std::vector<double> scores) {
    TraceKindResult& k = result.kinds[kind_index];
    k.scores[size_t(t)] = std::move(scores);
    k.row_done[size_t(t)] = true;
    if (o.on_row) o.on_row(TraceRow{k.kind, t, k.scores[size_t(t)]});
}

int64_t answer_from_target(const Model& model, const TraceInput& input, const std::string& prompt_text, const TraceOptions& o,
                           const at::Tensor& clean_last_logits) {
    if (o.target_id) {
        if (*o.target_id < 0 || *o.target_id >= model.hparams().n_vocab)
            throw Error(ErrorKind::Argument, "target id " + std::to_string(*o.target_id) + " is outside the vocabulary");
        return *o.target_id;
    }
    if (o.target) {
        const Tokenizer* tok = model.tokenizer();
        if (!tok) throw Error(ErrorKind::Argument, "a target string needs the model's tokenizer");
        const std::string& target = *o.target;
        if (target.empty()) throw Error(ErrorKind::Argument, "the target is empty");
        const bool joined = std::isspace(static_cast<unsigned char>(target.front())) ||
                            (!prompt_text.empty() && std::isspace(static_cast<unsigned char>(prompt_text.back())));
        const std::string text = prompt_text + (joined ? "" : " ") + target;
        Encoding enc = tok->encode(text, true);
        for (size_t i = 0; i < enc.ids.size(); ++i)
            if (enc.offsets[i].second > prompt_text.size() && enc.offsets[i].second > enc.offsets[i].first) return enc.ids[i];
        throw Error(ErrorKind::Argument, "the target '" + target + "' encodes to no token after the prompt");
    }
    (void)input;
    return clean_last_logits.argmax(-1).item<int64_t>();
}

// ----------------------------------------------------------------------------------------------
// Naive: ROME's trace_with_patch, one forward of samples+1 rows per (kind, token, layer).

double naive_score(const Model& model, const Prepared& P, const TraceOptions& o, int64_t answer,
                   const std::function<void(Hooks&)>& restore, TraceResult& result) {
    Hooks hooks;
    hooks.on(Site::Embed, 0, [&](at::Tensor& x) { corrupt_rows(x.narrow(0, 1, P.S), P.noise, P.b, o.replace, P.pos_rows); });
    if (restore) restore(hooks);
    ForwardInput in;
    in.input_ids = P.ids.expand({P.S + 1, P.T}).contiguous();
    at::Tensor logits = model.forward(in, &hooks).logits;  // [S+1, T, n_vocab]
    result.flops += full_forward_flops(model, P.S + 1, P.T);
    at::Tensor probs = at::softmax(logits.select(1, P.T - 1).narrow(0, 1, P.S).to(at::kFloat), -1);  // [S, n_vocab]
    return probs.select(1, answer).mean().item<double>();
}

void naive_trace(const Model& model, const Prepared& P, const TraceOptions& o, int64_t answer, TraceResult& result) {
    // Pass 1 of the severed variant: the corrupted run's MLP / attention outputs (row 0 clean).
    std::vector<at::Tensor> frozen(size_t(P.L));
    const Site sever_site = o.sever == Sever::Mlp ? Site::MlpOut : Site::AttnOut;
    if (o.sever != Sever::None) {
        Hooks hooks;
        hooks.on(Site::Embed, 0, [&](at::Tensor& x) { corrupt_rows(x.narrow(0, 1, P.S), P.noise, P.b, o.replace, P.pos_rows); });
        hooks.capture(sever_site);
        ForwardInput in;
        in.input_ids = P.ids.expand({P.S + 1, P.T}).contiguous();
        model.forward(in, &hooks);
        result.flops += full_forward_flops(model, P.S + 1, P.T);
        for (int64_t l = 0; l < P.L; ++l) frozen[size_t(l)] = hooks.captured(sever_site, int(l));
    }
    auto copy_clean = [&](int64_t t) {
        return [&P, t](at::Tensor& v) { v.narrow(0, 1, P.S).select(1, t).copy_(v.select(0, 0).select(0, t)); };
    };
    for (size_t ki = 0; ki < result.kinds.size(); ++ki) {
        const TraceKind kind = result.kinds[ki].kind;
        for (int64_t t = 0; t < P.T; ++t) {
            std::vector<double> row(size_t(P.L), kNaN);
            for (int64_t l = 0; l < P.L; ++l) {
                if (cancelled(o)) {
                    result.cancelled = true;
                    return;
                }
                auto restore = [&](Hooks& hooks) {
                    if (kind == TraceKind::Hidden) {
                        hooks.on(Site::BlockOut, int(l), copy_clean(t));
                        if (o.sever != Sever::None)
                            for (int64_t l2 = 0; l2 < P.L; ++l2) {
                                const at::Tensor& f = frozen[size_t(l2)];
                                hooks.on(sever_site, int(l2), [&P, &f, t](at::Tensor& v) {
                                    v.narrow(0, 1, P.S).select(1, t).copy_(f.narrow(0, 1, P.S).select(1, t));
                                });
                            }
                    } else {
                        auto [lo, hi] = window_of(l, o.window, P.L);
                        const Site site = kind == TraceKind::Mlp ? Site::MlpOut : Site::AttnOut;
                        for (int64_t l2 = lo; l2 < hi; ++l2) hooks.on(site, int(l2), copy_clean(t));
                    }
                };
                row[size_t(l)] = naive_score(model, P, o, answer, restore, result);
            }
            finish_row(result, o, ki, t, std::move(row));
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Fast: see trace.h for the ideas; the numbers are the naive ones up to float rounding.

// The fast path runs the families' own blocks (the code Model::forward runs, arch.h), starting at
// any layer from a stored residual, reusing the keys/values of positions before p0 and computing
// outputs only from q_from on. Restorations patch the attention and MLP outputs through hooks.

using BlockPatch = std::function<void(Site site, at::Tensor& value, int64_t q_from)>;

struct BlockRun {
    at::Tensor h;         // [B, Tn - q_from, n_embd] the residual after the block
    at::Tensor attn_out;  // [B, Tn - q_from, n_embd]
    at::Tensor mlp_out;   // [B, Tn - q_from, n_embd]
    at::Tensor k, v;      // [B, n_head_kv, p0 + Tn, head_dim]
};

// 2 x the multiply-adds of one block's matmuls (a weight a family lacks counts nothing).
double block_flops(const Model& m, int layer, int64_t B, int64_t Tn, int64_t Tq, int64_t Tk) {
    auto n = [&](Slot s) {
        const at::Tensor& t = m.weight(s, layer);
        return t.defined() ? double(t.numel()) : 0.0;
    };
    const HParams& hp = m.hparams();
    const double all = double(B * Tn), rows = double(B * Tq);
    double f = m.arch() == Arch::Gpt2 ? 2 * all * n(Slot::AttnQkv) : 2 * rows * n(Slot::AttnQ) + 2 * all * (n(Slot::AttnK) + n(Slot::AttnV));
    f += 2 * rows * (n(Slot::AttnOut) + n(Slot::FfnUp) + n(Slot::FfnGate) + n(Slot::FfnDown));
    return f + 4.0 * double(B * hp.n_head * Tq * Tk * hp.head_dim);  // scores and mixing
}

// h: [B, Tn, n_embd], the residual entering `layer` at positions [p0, p0 + Tn); past_k/past_v:
// [B, n_head_kv, p0, head_dim] (undefined when p0 == 0).
BlockRun run_block(const Model& model, int layer, const at::Tensor& h, int64_t p0, const at::Tensor& past_k, const at::Tensor& past_v,
                   int64_t q_from, const BlockPatch& patch, double* flops) {
    const Family& fam = family_of(model.arch());
    if (!fam.block)
        throw Error(ErrorKind::Unsupported, "causal tracing needs a decoder (GPT-2, GPT-J or LLaMA family), not " + model.arch_name());
    const HParams& hp = model.hparams();
    const int64_t B = h.size(0), Tn = h.size(1), Tq = Tn - q_from;
    layers::BlockIn in;
    in.h = h;
    in.past_k = past_k;
    in.past_v = past_v;
    in.q_from = q_from;
    in.bias = layers::attention_bias(B, Tq, p0 + q_from, at::Tensor(), true, hp.sliding_window, h.options());
    if (hp.rotary_dim > 0) in.rot = layers::rotary_tables(hp, hp.rotary_dim, p0, Tn, h.options());
    // Adapters route on the prompt's last token: the last of the rows computed here.
    if (!model.adapters().empty()) in.route = at::full({B}, Tq - 1, at::kLong);
    BlockRun out;
    Hooks hooks;
    for (Site site : {Site::AttnOut, Site::MlpOut})
        hooks.on(site, layer, [&, site](at::Tensor& value) {
            if (patch) patch(site, value, q_from);
            (site == Site::AttnOut ? out.attn_out : out.mlp_out) = value;
        });
    in.hooks = &hooks;
    layers::BlockOut b = fam.block(model, layer, in);
    out.h = b.h;
    out.k = b.k;
    out.v = b.v;
    if (flops) *flops += block_flops(model, layer, B, Tn, Tq, p0 + Tn);
    return out;
}

// The residual stream entering layer 0. ids: [B, T].
at::Tensor embed(const Model& model, const at::Tensor& ids) {
    const Family& fam = family_of(model.arch());
    if (!fam.embed) throw Error(ErrorKind::Unsupported, "causal tracing needs a decoder, not " + model.arch_name());
    return fam.embed(model, ids, 0, at::Tensor());
}

// Logits from final residual states h: [B, n_embd] -> [B, n_vocab].
at::Tensor final_logits(const Model& model, const at::Tensor& h, double* flops) {
    const auto& g = model.globals;
    const at::Tensor& out_w = g[size_t(Slot::Output)];
    if (flops) *flops += 2.0 * double(h.numel() / h.size(-1)) * double(out_w.numel());
    return at::linear(family_of(model.arch()).final_norm(model, h), out_w, g[size_t(Slot::OutputB)]);
}

struct BaseRun {
    std::vector<at::Tensor> h_in;  // [L + 1] of [R, T, n_embd]: the residual entering each layer (h_in[L]: after the last)
    std::vector<at::Tensor> attn, mlp, k, v;  // [L] of [R, T, n_embd] / [R, n_head_kv, T, head_dim]
};

BaseRun run_base(const Model& model, at::Tensor h, int64_t L, double* flops) {
    BaseRun r;
    r.h_in.push_back(h);
    for (int64_t l = 0; l < L; ++l) {
        BlockRun b = run_block(model, int(l), h, 0, at::Tensor(), at::Tensor(), 0, nullptr, flops);
        r.attn.push_back(b.attn_out);
        r.mlp.push_back(b.mlp_out);
        r.k.push_back(b.k);
        r.v.push_back(b.v);
        h = b.h;
        r.h_in.push_back(h);
    }
    return r;
}

enum Action : unsigned { kRestoreAttn = 1, kRestoreMlp = 2, kFreezeAttn = 4, kFreezeMlp = 8 };

struct Job {
    size_t kind_index;
    TraceKind kind;
    int64_t layer;  // the cell's layer
    int64_t start;  // the first layer to compute
    int64_t lo = 0, hi = 0;
};

unsigned action_of(const Job& j, int64_t layer, Sever sever) {
    switch (j.kind) {
        case TraceKind::Hidden:
            if (layer <= j.layer) return 0;
            return sever == Sever::Mlp ? kFreezeMlp : sever == Sever::Attn ? kFreezeAttn : 0;
        case TraceKind::Mlp: return layer >= j.lo && layer < j.hi ? kRestoreMlp : 0;
        case TraceKind::Attn: return layer >= j.lo && layer < j.hi ? kRestoreAttn : 0;
    }
    return 0;
}

struct Group {
    at::Tensor state;  // [S, Tn, n_embd]
    std::vector<size_t> jobs;
    unsigned action = 0;
};

void fast_trace(const Model& model, const Prepared& P, const TraceOptions& o, const BaseRun& clean, const BaseRun& corrupt,
                int64_t answer, TraceResult& result) {
    const int64_t S = P.S, T = P.T, L = P.L;
    // Positions before the subject are never corrupted: restoring them changes nothing.
    for (int64_t t = 0; t < std::min(P.b, T); ++t)
        for (size_t ki = 0; ki < result.kinds.size(); ++ki) finish_row(result, o, ki, t, std::vector<double>(size_t(L), result.corrupted_prob));

    for (int64_t t = P.b; t < T; ++t) {
        const int64_t Tn = T - t;
        std::vector<Job> jobs;
        for (size_t ki = 0; ki < result.kinds.size(); ++ki) {
            const TraceKind kind = result.kinds[ki].kind;
            for (int64_t l = 0; l < L; ++l) {
                Job j{ki, kind, l, l + 1};
                if (kind != TraceKind::Hidden) {
                    std::tie(j.lo, j.hi) = window_of(l, o.window, L);
                    j.start = j.lo;
                }
                jobs.push_back(j);
            }
        }
        std::vector<Group> active;
        for (int64_t s = 0; s <= L; ++s) {
            if (cancelled(o)) {
                result.cancelled = true;
                return;
            }
            // Start the jobs whose first computed layer is s. Window jobs with the same start share a state.
            Group window_group;
            for (size_t ji = 0; ji < jobs.size(); ++ji) {
                const Job& j = jobs[ji];
                if (j.start != s) continue;
                if (j.kind == TraceKind::Hidden) {
                    at::Tensor st = corrupt.h_in[size_t(s)].narrow(1, t, Tn).clone();  // [S, Tn, n_embd]
                    st.select(1, 0).copy_(clean.h_in[size_t(s)].select(0, 0).select(0, t));
                    active.push_back(Group{st, {ji}, 0});
                } else {
                    window_group.jobs.push_back(ji);
                }
            }
            if (!window_group.jobs.empty()) {
                window_group.state = corrupt.h_in[size_t(s)].narrow(1, t, Tn);
                active.push_back(std::move(window_group));
            }
            if (s == L) break;
            // Split the groups whose jobs act differently at this layer.
            std::vector<Group> split;
            for (Group& g : active) {
                std::map<unsigned, std::vector<size_t>> by_action;
                for (size_t ji : g.jobs) by_action[action_of(jobs[ji], s, o.sever)].push_back(ji);
                for (auto& [action, js] : by_action) split.push_back(Group{g.state, std::move(js), action});
            }
            active = std::move(split);
            if (active.empty()) continue;

            const int64_t G = int64_t(active.size());
            std::vector<at::Tensor> states;
            for (const Group& g : active) states.push_back(g.state);
            at::Tensor h = G == 1 ? active[0].state : at::cat(states, 0);  // [G*S, Tn', n_embd]
            at::Tensor pk, pv;
            if (t > 0) {
                pk = corrupt.k[size_t(s)].narrow(2, 0, t).repeat({G, 1, 1, 1});  // [G*S, n_head_kv, t, head_dim]
                pv = corrupt.v[size_t(s)].narrow(2, 0, t).repeat({G, 1, 1, 1});
            }
            // The last layer only feeds the last position's logits.
            const int64_t q_from = s == L - 1 ? h.size(1) - 1 : 0;
            auto patch = [&](Site site, at::Tensor& value, int64_t qf) {
                if (qf > 0) return;  // the restored token's own output no longer reaches the last position
                const bool attn = site == Site::AttnOut;
                const at::Tensor& clean_v = attn ? clean.attn[size_t(s)] : clean.mlp[size_t(s)];
                const at::Tensor& corrupt_v = attn ? corrupt.attn[size_t(s)] : corrupt.mlp[size_t(s)];
                for (int64_t g = 0; g < G; ++g) {
                    const unsigned a = active[size_t(g)].action;
                    at::Tensor rows = value.narrow(0, g * S, S).select(1, 0);  // [S, n_embd]
                    if (a & (attn ? kRestoreAttn : kRestoreMlp)) rows.copy_(clean_v.select(0, 0).select(0, t));
                    if (a & (attn ? kFreezeAttn : kFreezeMlp)) rows.copy_(corrupt_v.select(1, t));
                }
            };
            BlockRun r = run_block(model, int(s), h, t, pk, pv, q_from, patch, &result.flops);
            for (int64_t g = 0; g < G; ++g) active[size_t(g)].state = r.h.narrow(0, g * S, S);
        }
        // Logits at the last position of every group.
        std::vector<at::Tensor> lasts;
        for (const Group& g : active) lasts.push_back(g.state.select(1, g.state.size(1) - 1));
        at::Tensor logits = final_logits(model, at::cat(lasts, 0), &result.flops);  // [G*S, n_vocab]
        at::Tensor p = at::softmax(logits.to(at::kFloat), -1).select(1, answer).view({int64_t(active.size()), S}).mean(1).to(at::kDouble).cpu();
        auto pa = p.accessor<double, 1>();
        std::vector<std::vector<double>> rows(result.kinds.size(), std::vector<double>(size_t(L), kNaN));
        for (size_t g = 0; g < active.size(); ++g)
            for (size_t ji : active[g].jobs) rows[jobs[ji].kind_index][size_t(jobs[ji].layer)] = pa[int64_t(g)];
        for (size_t ki = 0; ki < result.kinds.size(); ++ki) finish_row(result, o, ki, t, std::move(rows[ki]));
    }
}

}  // namespace

const char* trace_kind_name(TraceKind kind) {
    switch (kind) {
        case TraceKind::Hidden: return "hidden";
        case TraceKind::Mlp: return "mlp";
        case TraceKind::Attn: return "attn";
    }
    return "?";
}

std::optional<TraceKind> trace_kind_from_name(std::string_view name) {
    if (name == "hidden") return TraceKind::Hidden;
    if (name == "mlp") return TraceKind::Mlp;
    if (name == "attn") return TraceKind::Attn;
    return std::nullopt;
}

NoiseRule parse_noise_rule(std::string_view text) {
    auto number = [&](std::string_view s, double fallback) {
        if (s.empty()) return fallback;
        std::string str(s);
        size_t used = 0;
        double v = 0;
        try {
            v = std::stod(str, &used);
        } catch (...) {
            used = 0;
        }
        if (used == 0 || used != str.size() || !std::isfinite(v) || v < 0)
            throw Error(ErrorKind::Argument, "noise '" + std::string(text) + "': expected s<k>, a non-negative number, u<x> or t<nu>");
        return v;
    };
    NoiseRule r;
    if (text.empty()) throw Error(ErrorKind::Argument, "the noise rule is empty");
    if (text[0] == 's') {
        r.type = NoiseRule::Type::Gaussian;
        r.relative = true;
        r.level = number(text.substr(1), 1.0);
    } else if (text[0] == 'u') {
        r.type = NoiseRule::Type::Uniform;
        r.relative = false;
        r.level = number(text.substr(1), 1.0);
    } else if (text[0] == 't') {
        r.type = NoiseRule::Type::StudentT;
        r.relative = true;
        r.level = 1.0;
        r.degrees = number(text.substr(1), 3.0);
        if (!(r.degrees > 2.0)) throw Error(ErrorKind::Argument, "noise '" + std::string(text) + "': Student-t needs more than 2 degrees of freedom");
    } else {
        r.type = NoiseRule::Type::Gaussian;
        r.relative = false;
        r.level = number(text, 0.0);
    }
    return r;
}

std::string noise_rule_text(const NoiseRule& rule) {
    auto num = [](double v) {
        std::string s = std::to_string(v);
        while (s.size() > 1 && s.back() == '0') s.pop_back();
        if (!s.empty() && s.back() == '.') s.pop_back();
        return s;
    };
    switch (rule.type) {
        case NoiseRule::Type::Gaussian: return rule.relative ? "s" + num(rule.level) : num(rule.level);
        case NoiseRule::Type::Uniform: return "u" + num(rule.level);
        case NoiseRule::Type::StudentT: return "t" + num(rule.degrees);
    }
    return "?";
}

std::vector<double> numpy_randn(uint32_t seed, size_t n) {
    NumpyRandomState rs(seed);
    std::vector<double> out(n);
    for (double& v : out) v = rs.gauss();
    return out;
}

double token_embedding_std(const Model& model, const std::vector<int64_t>& ids) {
    if (ids.empty()) throw Error(ErrorKind::Argument, "no tokens to measure the embedding std over");
    c10::InferenceMode guard;
    const at::Tensor& wte = model.weight(Slot::TokEmbd);
    at::Tensor idx = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).to(wte.device());
    return at::embedding(wte, idx).to(at::kDouble).std().item<double>();
}

double subject_embedding_std(const Model& model, const std::vector<std::string>& subjects) {
    const Tokenizer* tok = model.tokenizer();
    if (!tok) throw Error(ErrorKind::Argument, "measuring the subject embedding std needs the model's tokenizer");
    std::vector<int64_t> ids;
    for (const std::string& s : subjects) {
        Encoding enc = tok->encode(s, false);
        ids.insert(ids.end(), enc.ids.begin(), enc.ids.end());
    }
    return token_embedding_std(model, ids);
}

TraceInput make_trace_input(const Model& model, std::string_view prompt, std::string_view subject) {
    const Tokenizer* tok = model.tokenizer();
    if (!tok) throw Error(ErrorKind::Argument, "tracing a text prompt needs the model's tokenizer");
    if (subject.empty()) throw Error(ErrorKind::Argument, "the subject is empty");
    const size_t c0 = prompt.find(subject);
    if (c0 == std::string_view::npos)
        throw Error(ErrorKind::Argument, "the subject '" + std::string(subject) + "' does not occur in the prompt '" + std::string(prompt) + "'");
    const size_t c1 = c0 + subject.size();
    Encoding enc = tok->encode(prompt, true);
    TraceInput in;
    in.ids = enc.ids;
    int64_t b = -1, e = -1;
    for (size_t i = 0; i < enc.ids.size(); ++i) {
        in.tokens.push_back(tok->decode({enc.ids[i]}));
        const auto [ob, oe] = enc.offsets[i];
        if (oe <= ob) continue;  // special tokens (BOS) have empty spans and are never corrupted
        if (ob < c1 && oe > c0) {
            if (b < 0) b = int64_t(i);
            e = int64_t(i) + 1;
        }
    }
    if (b < 0) throw Error(ErrorKind::Argument, "no token of the prompt covers the subject '" + std::string(subject) + "'");
    in.subject_begin = b;
    in.subject_end = e;
    return in;
}

const TraceKindResult* TraceResult::kind(TraceKind k) const {
    for (const auto& r : kinds)
        if (r.kind == k) return &r;
    return nullptr;
}

double TraceResult::indirect_effect(TraceKind k, int64_t token, int64_t layer) const {
    const TraceKindResult* r = kind(k);
    if (!r) throw Error(ErrorKind::Argument, std::string("the trace has no ") + trace_kind_name(k) + " scores");
    return r->scores.at(size_t(token)).at(size_t(layer)) - corrupted_prob;
}

TraceResult causal_trace(const Model& model, const TraceInput& input, const TraceOptions& o) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!model.is_decoder()) throw Error(ErrorKind::Unsupported, "causal tracing needs a language model, not " + model.arch_name());
    if (model.arch() != Arch::Gpt2 && model.arch() != Arch::GptJ && model.arch() != Arch::Llama)
        throw Error(ErrorKind::Unsupported, "causal tracing supports the GPT-2, GPT-J and LLaMA families");
    const HParams& hp = model.hparams();
    const int64_t T = int64_t(input.ids.size());
    if (T == 0) throw Error(ErrorKind::Argument, "the prompt has no tokens");
    if (input.subject_begin < 0 || input.subject_end > T || input.subject_begin >= input.subject_end)
        throw Error(ErrorKind::Argument, "subject range [" + std::to_string(input.subject_begin) + ", " + std::to_string(input.subject_end) +
                                             ") is not inside the " + std::to_string(T) + "-token prompt");
    if (o.samples < 1) throw Error(ErrorKind::Argument, "samples must be at least 1");
    if (o.window < 1) throw Error(ErrorKind::Argument, "the window must be at least 1 layer");
    if (o.kinds.empty()) throw Error(ErrorKind::Argument, "no trace kind was asked for");
    for (int64_t id : input.ids)
        if (id < 0 || id >= hp.n_vocab) throw Error(ErrorKind::Argument, "token id " + std::to_string(id) + " is outside the vocabulary");

    try {
        c10::InferenceMode guard;
        Prepared P;
        P.T = T;
        P.L = hp.n_layer;
        P.S = o.samples;
        P.b = input.subject_begin;
        P.e = input.subject_end;
        P.level = resolved_level(o);
        P.ids = at::tensor(input.ids, at::TensorOptions().dtype(at::kLong)).view({1, T}).to(model.device());
        P.noise = make_noise(o, P.level, P.e - P.b, hp.n_embd);
        if (o.replace && model.arch() == Arch::Gpt2)
            P.pos_rows = model.weight(Slot::PosEmbd).narrow(0, P.b, P.e - P.b);

        TraceResult result;
        result.input = input;
        result.n_layer = P.L;
        result.noise_level = P.level;
        for (TraceKind k : o.kinds) {
            TraceKindResult kr;
            kr.kind = k;
            kr.window = k == TraceKind::Hidden ? 1 : o.window;
            kr.scores.assign(size_t(T), std::vector<double>(size_t(P.L), kNaN));
            kr.row_done.assign(size_t(T), false);
            result.kinds.push_back(std::move(kr));
        }

        if (o.naive) {
            // Clean prediction and low score: the unrestored batch (ROME's predict_from_input, then
            // trace_with_patch with nothing to patch).
            Hooks hooks;
            hooks.on(Site::Embed, 0, [&](at::Tensor& x) { corrupt_rows(x.narrow(0, 1, P.S), P.noise, P.b, o.replace, P.pos_rows); });
            ForwardInput in;
            in.input_ids = P.ids.expand({P.S + 1, T}).contiguous();
            at::Tensor logits = model.forward(in, &hooks).logits.select(1, T - 1).to(at::kFloat);  // [S+1, n_vocab]
            result.flops += full_forward_flops(model, P.S + 1, T);
            const std::string prompt_text = model.tokenizer() ? model.tokenizer()->decode(input.ids, true) : "";
            result.answer_id = answer_from_target(model, input, prompt_text, o, logits.select(0, 0));
            at::Tensor probs = at::softmax(logits, -1).select(1, result.answer_id);
            result.clean_prob = probs[0].item<double>();
            result.corrupted_prob = probs.narrow(0, 1, P.S).mean().item<double>();
            if (model.tokenizer()) result.answer_token = model.tokenizer()->decode({result.answer_id});
            naive_trace(model, P, o, result.answer_id, result);
        } else {
            BaseRun clean = run_base(model, embed(model, P.ids), P.L, &result.flops);
            at::Tensor h0 = embed(model, P.ids).expand({P.S, T, hp.n_embd}).contiguous();
            corrupt_rows(h0, P.noise, P.b, o.replace, P.pos_rows);
            BaseRun corrupt = run_base(model, h0, P.L, &result.flops);
            at::Tensor clean_logits = final_logits(model, clean.h_in.back().select(1, T - 1), &result.flops);  // [1, n_vocab]
            at::Tensor corrupt_logits = final_logits(model, corrupt.h_in.back().select(1, T - 1), &result.flops);
            const std::string prompt_text = model.tokenizer() ? model.tokenizer()->decode(input.ids, true) : "";
            result.answer_id = answer_from_target(model, input, prompt_text, o, clean_logits.select(0, 0).to(at::kFloat));
            result.clean_prob = at::softmax(clean_logits.to(at::kFloat), -1)[0][result.answer_id].item<double>();
            result.corrupted_prob = at::softmax(corrupt_logits.to(at::kFloat), -1).select(1, result.answer_id).mean().item<double>();
            if (model.tokenizer()) result.answer_token = model.tokenizer()->decode({result.answer_id});
            fast_trace(model, P, o, clean, corrupt, result.answer_id, result);
        }
        result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return result;
    } catch (const Error& e) {
        throw e.with_context("causal trace");
    } catch (const c10::Error& e) {
        throw Error(ErrorKind::Internal, std::string("causal trace: libtorch: ") + e.what_without_backtrace());
    }
}

// ----------------------------------------------------------------------------------------------
// Averages over many traces.

const char* trace_bucket_name(int bucket) {
    static const char* names[kTraceBuckets] = {"first subject token", "middle subject tokens", "last subject token",
                                               "first subsequent token", "further tokens", "last token"};
    return bucket >= 0 && bucket < kTraceBuckets ? names[bucket] : "?";
}

std::vector<int> trace_buckets_of(int64_t t, int64_t b, int64_t e, int64_t n) {
    // As average_causal_effects.ipynb: first_e = b, last_e = e - 1, first_a = e, last_a = n - 1.
    std::vector<int> out;
    if (t == b) out.push_back(0);
    if (t > b && t < e - 1) out.push_back(1);
    if (t == e - 1) out.push_back(2);
    if (t == e) out.push_back(3);
    if (t > e && t < n - 1) out.push_back(4);
    if (t == n - 1) out.push_back(5);
    return out;
}

void TraceAverage::add(const TraceResult& r) {
    const TraceKindResult* k = r.kind(kind);
    if (!k) return;
    if (n_layer == 0) {
        n_layer = r.n_layer;
        for (auto& v : ie_sum) v.assign(size_t(n_layer), 0.0);
    }
    if (r.n_layer != n_layer) throw Error(ErrorKind::Argument, "averaging traces of models with different depths");
    ++count;
    clean_sum += r.clean_prob;
    corrupted_sum += r.corrupted_prob;
    const int64_t T = int64_t(r.input.ids.size());
    for (int64_t t = 0; t < T; ++t) {
        if (!k->row_done[size_t(t)]) continue;
        for (int bucket : trace_buckets_of(t, r.input.subject_begin, r.input.subject_end, T)) {
            ++n[size_t(bucket)];
            for (int64_t l = 0; l < n_layer; ++l) ie_sum[size_t(bucket)][size_t(l)] += k->scores[size_t(t)][size_t(l)] - r.corrupted_prob;
        }
    }
}

double TraceAverage::mean_ie(int bucket, int64_t layer) const {
    const int64_t c = n[size_t(bucket)];
    return c == 0 ? kNaN : ie_sum[size_t(bucket)][size_t(layer)] / double(c);
}

}  // namespace engram
