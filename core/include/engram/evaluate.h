// Evaluation of edits (specs/locate_then_edit.md §7): the ROME/MEMIT probability metrics (ES, PS,
// NS, their magnitudes, score S, fluency), the EasyEdit/KnowEdit token metrics (reliability,
// generalization, locality against the pre-edit model, portability), general ability (held-out
// perplexity, accuracy on facts that were not edited), and the sequential batch protocol.
//
// Names are kept apart on purpose: `es/ps/ns` are the probability comparisons of the ROME/MEMIT
// papers; `reliability/generalization/locality/portability` are EasyEdit's token fractions. The two
// families are not comparable (spec §7.3).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/datasets.h"
#include "engram/edit_hparams.h"
#include "engram/editing.h"

namespace engram {
class Model;
class Project;
}

namespace engram::eval {

// One prompt scored against one target under teacher forcing.
struct TargetScore {
    double nll = 0;                 // mean over target tokens of -log p
    double token_accuracy = 0;      // fraction of target tokens that are the argmax
    std::vector<int64_t> argmax;    // the argmax token at each target position
};
// Batched; the prompt is tokenized with special tokens, the target as the editing methods do.
std::vector<TargetScore> score_targets(const Model& model, const std::vector<std::pair<std::string, std::string>>& prompt_target);

// Per-case results of both families. Fields that a case cannot have (no paraphrases, no target_true)
// are NaN and are left out of the means.
struct CaseMetrics {
    double es = 0, ps = 0, ns = 0;        // probability metrics (fractions of prompts)
    double em = 0, pm = 0, nm = 0;        // magnitudes
    double reliability = 0, generalization = 0, locality = 0, portability = 0;  // token metrics
};

// The pre-edit model's argmax tokens on each case's locality probes (what locality compares to).
struct PreEdit {
    std::vector<std::vector<std::vector<int64_t>>> locality_argmax;  // [case][probe] -> tokens
};
PreEdit record_pre_edit(const Model& model, const std::vector<EditCase>& cases);

std::vector<CaseMetrics> score_cases(const Model& model, const std::vector<EditCase>& cases, const PreEdit& pre);

struct Summary {
    int64_t cases = 0;
    double es = 0, ps = 0, ns = 0, score = 0;  // x100, S = harmonic mean of ES, PS, NS
    double em = 0, pm = 0, nm = 0;             // x100
    double reliability = 0, generalization = 0, locality = 0, portability = 0;  // x100
    std::optional<double> fluency;             // mean n-gram entropy x100
    std::optional<double> consistency;         // RS: mean TF-IDF cosine of generations and target snippets x100
    std::optional<double> perplexity;          // held-out
    std::optional<double> unedited_accuracy;   // x100: top-1 on facts outside the edited set
    nlohmann::json to_json() const;
};
Summary summarize(const std::vector<CaseMetrics>& metrics);

// Fluency: each case's generation prompts completed with top-k 5 sampling to min(100, n_ctx)
// tokens, scored by n-gram entropy (x100).
double fluency(const Model& model, const std::vector<EditCase>& cases, uint64_t seed);
// The completions behind fluency, per case ([case][generation prompt]), same sampling and seeds.
std::vector<std::vector<std::string>> generations(const Model& model, const std::vector<EditCase>& cases, uint64_t seed);
double fluency_of(const std::vector<std::vector<std::string>>& generations);  // x100; NaN with no text
// Consistency RS (x100): per case, the TF-IDF cosine of its joined generations and the joined
// snippets about its new target (relation_id, target_new_id), averaged over the cases that have
// snippets; NaN when none has.
double consistency(const std::vector<EditCase>& cases, const std::vector<std::vector<std::string>>& generations,
                   const AttributeSnippets& snippets, const Tfidf& tfidf);
// The references for the Fact World demo model in `model_dir` (world.json of the generated world
// beside it): its attribute snippets, and a TF-IDF fitted on its corpus.txt. false elsewhere.
bool demo_consistency_refs(const std::filesystem::path& model_dir, AttributeSnippets* snippets, Tfidf* tfidf);
// exp(mean next-token NLL) over the lines of a text file (each line one document, truncated to
// the context).
double text_perplexity(const Model& model, const std::filesystem::path& file, int64_t max_lines = 0);
// Top-1 accuracy of the first token of target_true after each case's prompt (cases with a target_true).
double fact_accuracy(const Model& model, const std::vector<EditCase>& cases);

std::vector<EditRequest> requests_of(const EditCase& c);

// ---------------------------------------------------------------------------------------------
// The sequential batch protocol (spec §6 "Experimental protocol"): the first T cases, edited in
// batches of B without restoring, all evaluated after the last batch, and optionally at
// checkpoints along the way (curves).

// The measurements of the model before any edit (PreEdit and its summary), which no method changes:
// one `eval` over several methods computes them once. run_sequential fills it on first use and
// reuses it while the model's state (state_hash) and the number of edited cases are the ones it was
// filled for; share it only between runs with the same dataset and options.
struct Baseline {
    std::string state_hash;
    int64_t edits = -1;  // -1: not filled
    PreEdit pre;
    Summary summary;
};

struct SequentialOptions {
    int64_t edits = 1000;             // T
    int64_t batch = 100;              // B
    int64_t checkpoint_every = 0;     // > 0: evaluate the cases edited so far after every k batches
    int64_t fluency_cases = 50;       // cases whose generation prompts are completed (0: no fluency)
    int64_t unedited_cases = 200;     // cases after the first T used for the unedited-facts accuracy
    std::filesystem::path perplexity_file;  // empty: held_out.txt beside the model, when present
    uint64_t seed = 0;
    // Single-edit protocol (ROME/MEMIT papers' "restore after each edit"): each batch is applied,
    // its own cases are scored, and the weights are restored before the next batch. Post-edit
    // fluency, perplexity and unedited accuracy are then not measured (there is no one edited model).
    bool restore_between = false;
    // MCF-style selection (the MEMIT paper's multi_counterfact removes conflicting records): the first
    // T cases whose subjects are pairwise distinct, skipping later cases of a subject already chosen.
    // MEMIT's key depends only on the subject, so two requests on one subject in a batch ask one key
    // for two values. Off by default: the first T cases, as the reference scripts take them.
    bool distinct_subjects = false;
    // Consistency (RS) is measured with the fluency generations when both are given.
    std::shared_ptr<const AttributeSnippets> snippets;
    std::shared_ptr<const Tfidf> tfidf;
    // The pre-edit measurements shared by the runs of one evaluation (see Baseline); null: measured
    // by every run.
    std::shared_ptr<Baseline> baseline;
};

struct EvalProgress {
    std::string stage;   // "pre", "edit", "checkpoint", "post"
    int64_t done = 0, total = 0;
    std::string detail;
};

struct SequentialResult {
    std::string method;              // "memit", "alphaedit+blue", ...
    nlohmann::json hparams;
    Summary pre, post;
    struct Point {
        int64_t edits = 0;
        Summary summary;
    };
    std::vector<Point> curve;
    double edit_seconds = 0, eval_seconds = 0;
    int64_t skipped_same_subject = 0;  // cases passed over by distinct_subjects
    nlohmann::json to_json() const;
};

// Runs the protocol on `model` from its current state (normally the base) and leaves the model
// edited. Throws Error(Internal) when cancelled.
SequentialResult run_sequential(Model& model, const Dataset& dataset, const EditHParams& hparams, const StatsOptions& stats,
                                const SequentialOptions& options, const std::function<void(const EvalProgress&)>& progress = {},
                                const std::atomic<bool>* cancel = nullptr);

}  // namespace engram::eval
