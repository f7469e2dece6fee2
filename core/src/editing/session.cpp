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
#include "engram/methods.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram {

using editing::Row;

namespace {

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
    if (hp_.method != EditMethod::AlphaEdit && hp_.method != EditMethod::MemitSeq && hp_.method != EditMethod::Hse) return;
    const std::string label = method_label(hp_);
    for (const Edit& e : applied) {
        // Only this method's own sequence: a MEMIT or MEMIT+BLUE edit is not part of MEMIT_seq's.
        if (e.method != label) continue;
        if (hp_.method == EditMethod::Hse) {
            ++batches_;
            for (const Artifact& a : e.artifacts) {
                if (a.kind != "fisher") continue;
                const at::Tensor f = a.tensor.to(at::kDouble);
                fisher_ = fisher_.defined() ? fisher_ + f : f;
            }
        }
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
    const MethodInfo& info = method_info(hp_.method);
    e = (this->*info.compute)(requests);
    e.method = method_label(hp_);
    e.requests = nlohmann::json::array();
    for (const auto& r : requests) e.requests.push_back(r.to_json());
    EditHParams pinned = hp_;
    const bool uses_templates = info.templates;
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

}  // namespace engram
