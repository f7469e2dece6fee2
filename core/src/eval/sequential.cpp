// The sequential batch protocol: T cases edited in batches of B without restoring, evaluated after
// the last batch (and optionally at checkpoints), as AlphaEdit and BLUE run it.
#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <set>

#include "engram/edit.h"
#include "engram/error.h"
#include "engram/evaluate.h"
#include "engram/model.h"

namespace engram::eval {

namespace {

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

nlohmann::json SequentialResult::to_json() const {
    nlohmann::json c = nlohmann::json::array();
    for (const Point& p : curve) c.push_back({{"edits", p.edits}, {"summary", p.summary.to_json()}});
    return {{"method", method},       {"hparams", hparams},           {"pre", pre.to_json()},
            {"post", post.to_json()}, {"curve", c},                   {"edit_seconds", edit_seconds},
            {"eval_seconds", eval_seconds}, {"skipped_same_subject", skipped_same_subject}};
}

SequentialResult run_sequential(Model& model, const Dataset& dataset, const EditHParams& hparams, const StatsOptions& stats,
                                const SequentialOptions& o, const std::function<void(const EvalProgress&)>& progress,
                                const std::atomic<bool>* cancel) {
    if (o.edits <= 0 || o.batch <= 0) throw Error(ErrorKind::Argument, "--edits and --batch must be positive");
    const int64_t T = o.edits;
    const int64_t N = static_cast<int64_t>(dataset.cases.size());
    std::vector<EditCase> cases;
    int64_t next = 0, skipped = 0;  // next: the first dataset case after the chosen ones
    if (o.distinct_subjects) {
        std::set<std::string> seen;
        for (; next < N && static_cast<int64_t>(cases.size()) < T; ++next) {
            const EditCase& c = dataset.cases[static_cast<size_t>(next)];
            if (!seen.insert(c.rewrites.empty() ? std::string() : c.rewrites[0].subject).second) {
                ++skipped;
                continue;
            }
            cases.push_back(c);
        }
    } else if (N >= T) {
        cases.assign(dataset.cases.begin(), dataset.cases.begin() + T);
        next = T;
    }
    if (static_cast<int64_t>(cases.size()) < T)
        throw Error(ErrorKind::Argument, dataset.file.string() + " has " + std::to_string(o.distinct_subjects ? cases.size() : dataset.cases.size()) +
                                             (o.distinct_subjects ? " cases with distinct subjects; " : " cases; ") + std::to_string(T) +
                                             " edits were asked for");
    auto report = [&](const std::string& stage, int64_t done, int64_t total, const std::string& detail = {}) {
        if (progress) progress({stage, done, total, detail});
    };
    auto check_cancel = [&] {
        if (cancel && cancel->load()) throw Error(ErrorKind::Internal, "evaluation was cancelled");
    };
    const int64_t u_end = std::min<int64_t>(N, next + o.unedited_cases);
    const std::vector<EditCase> unedited(dataset.cases.begin() + next, dataset.cases.begin() + u_end);
    const std::vector<EditCase> flu_cases(cases.begin(), cases.begin() + std::min<int64_t>(T, o.fluency_cases));
    std::filesystem::path ppl_file = o.perplexity_file;
    if (ppl_file.empty() && !model.dir().empty() && std::filesystem::exists(model.dir() / "held_out.txt")) ppl_file = model.dir() / "held_out.txt";

    SequentialResult res;
    res.method = std::string(edit_method_name(hparams.method)) + (hparams.blue ? "+blue" : "");
    res.skipped_same_subject = skipped;
    auto general = [&](Summary& s) {
        if (!flu_cases.empty()) {
            const auto gens = generations(model, flu_cases, o.seed);
            const double f = fluency_of(gens);
            if (!std::isnan(f)) s.fluency = f;
            if (o.snippets && o.tfidf) {
                const double rs = consistency(flu_cases, gens, *o.snippets, *o.tfidf);
                if (!std::isnan(rs)) s.consistency = rs;
            }
        }
        if (!ppl_file.empty()) s.perplexity = text_perplexity(model, ppl_file);
        if (!unedited.empty()) {
            const double a = fact_accuracy(model, unedited);
            if (!std::isnan(a)) s.unedited_accuracy = a;
        }
    };

    auto t_eval = std::chrono::steady_clock::now();
    report("pre", 0, 1);
    PreEdit pre;
    const std::string hash = o.baseline ? state_hash(model) : std::string();
    if (o.baseline && o.baseline->edits == T && o.baseline->state_hash == hash) {
        pre = o.baseline->pre;
        res.pre = o.baseline->summary;
    } else {
        pre = record_pre_edit(model, cases);
        res.pre = summarize(score_cases(model, cases, pre));
        general(res.pre);
        if (o.baseline) *o.baseline = {hash, T, pre, res.pre};
    }
    res.eval_seconds += since(t_eval);

    const int64_t n_batches = (T + o.batch - 1) / o.batch;
    EditHParams hp = hparams;
    // HSE's alpha = n/(i-1) needs the planned number of batches: this run's, unless one was set.
    if (hp.method == EditMethod::Hse && hp.hse_horizon == 0 && !o.restore_between) hp.hse_horizon = n_batches;
    // HSE forgets the old object; where a case names none (zsRE without pred), the unedited model's
    // greedy answer, read here before any edit.
    std::vector<std::string> greedy(cases.size());
    if (hp.method == EditMethod::Hse && hp.forget_factor > 0 && hp.hse_forget_fallback == "greedy") {
        for (size_t i = 0; i < cases.size(); ++i) {
            const auto reqs = requests_of(cases[i]);
            if (!reqs.empty() && reqs[0].target_true.empty() && reqs[0].prediction.empty()) greedy[i] = greedy_answer(model, reqs[0]);
        }
    }
    EditSession session(model, hp, stats);
    std::vector<CaseMetrics> single_metrics;
    session.set_cancel_flag(cancel);
    for (int64_t b = 0; b < n_batches; ++b) {
        check_cancel();
        const int64_t lo = b * o.batch, hi = std::min(T, lo + o.batch);
        std::vector<EditRequest> reqs;
        for (int64_t i = lo; i < hi; ++i)
            for (auto& r : requests_of(cases[static_cast<size_t>(i)])) {
                if (r.prediction.empty()) r.prediction = greedy[static_cast<size_t>(i)];
                reqs.push_back(std::move(r));
            }
        session.set_progress([&](const EditProgress& p) {
            report("edit", lo + (p.stage == "target" ? std::min<int64_t>(p.done, hi - lo) : 0), T, p.stage);
        });
        const auto t_edit = std::chrono::steady_clock::now();
        Edit e = session.compute(reqs);
        // Single-edit protocol: keep the touched tensors to put back after scoring this batch.
        std::vector<std::pair<Model::WeightRef, at::Tensor>> saved;
        const AdapterSet saved_adapters = model.adapters();  // GRACE's codebook is restored too
        if (o.restore_between)
            for (const Delta& d : e.deltas)
                if (auto ref = model.find_weight(d.tensor)) saved.emplace_back(*ref, model.weight(ref->slot, ref->layer));
        apply_edit(model, e);
        res.edit_seconds += since(t_edit);
        if (o.restore_between) {
            t_eval = std::chrono::steady_clock::now();
            const std::vector<EditCase> mine(cases.begin() + lo, cases.begin() + hi);
            PreEdit pre_mine;
            pre_mine.locality_argmax.assign(pre.locality_argmax.begin() + lo, pre.locality_argmax.begin() + hi);
            std::vector<CaseMetrics> m = score_cases(model, mine, pre_mine);
            single_metrics.insert(single_metrics.end(), m.begin(), m.end());
            for (auto it = saved.rbegin(); it != saved.rend(); ++it) model.weight(it->first.slot, it->first.layer) = it->second;
            model.adapters() = saved_adapters;
            res.eval_seconds += since(t_eval);
        }
        report("edit", hi, T, "batch " + std::to_string(b + 1) + "/" + std::to_string(n_batches));
        if (b == 0) res.hparams = e.hparams;
        if (!o.restore_between && o.checkpoint_every > 0 && (b + 1) % o.checkpoint_every == 0 && b + 1 < n_batches) {
            t_eval = std::chrono::steady_clock::now();
            report("checkpoint", hi, T);
            const std::vector<EditCase> done(cases.begin(), cases.begin() + hi);
            PreEdit pre_done;
            pre_done.locality_argmax.assign(pre.locality_argmax.begin(), pre.locality_argmax.begin() + hi);
            SequentialResult::Point p;
            p.edits = hi;
            p.summary = summarize(score_cases(model, done, pre_done));
            if (!ppl_file.empty()) p.summary.perplexity = text_perplexity(model, ppl_file);
            if (!unedited.empty()) {
                const double a = fact_accuracy(model, unedited);
                if (!std::isnan(a)) p.summary.unedited_accuracy = a;
            }
            res.curve.push_back(p);
            res.eval_seconds += since(t_eval);
        }
    }
    t_eval = std::chrono::steady_clock::now();
    report("post", 0, 1);
    if (o.restore_between) {
        res.post = summarize(single_metrics);
    } else {
        res.post = summarize(score_cases(model, cases, pre));
        general(res.post);
    }
    res.curve.push_back({T, res.post});
    res.eval_seconds += since(t_eval);
    return res;
}

}  // namespace engram::eval
