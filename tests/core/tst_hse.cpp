// HSE on the Fact World model: the forgetting rule and the alpha schedules against their formulas,
// the first loss of the target optimisation against a plain forward pass (MAF's unlikelihood term),
// HSE with its three mechanisms off equal to MEMIT_seq, the Fisher sum and the replayed keys carried
// to a new session through the history, a project's rollback and replay, the sequential protocol
// setting the horizon, and the refusals.
#include <QtTest>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <fstream>
#include <set>

#include "engram/datasets.h"
#include "engram/edit.h"
#include "engram/edit_hparams.h"
#include "engram/editing.h"
#include "engram/error.h"
#include "engram/evaluate.h"
#include "engram/methods.h"
#include "engram/model.h"
#include "engram/store.h"
#include "engram/tokenizer.h"
#include "demo_requests.h"
#include "test_util.h"

using namespace engram;
using engram::test::TempDir;
using engram::test::counterfact;
using engram::test::demo_dir;
namespace fs = std::filesystem;

namespace engram::editing {
bool hse_forget_condition(const std::vector<int64_t>& target, const std::vector<int64_t>& old);
double hse_alpha(const EditHParams& hp, int64_t done);
}  // namespace engram::editing

namespace {

// HSE on the demo model with pinned templates (no sampling) and few steps, for speed.
EditHParams hse_hparams(const Model& m) {
    EditHParams hp = default_edit_hparams(model_shape(m), EditMethod::Hse, false);
    hp.context_templates = {{"{}"}, {"The city . {}", "Because of this . {}"}};
    hp.v_num_grad_steps = 12;
    return hp;
}

// The dense change of every edited tensor.
std::map<std::string, at::Tensor> dense(const Edit& e) {
    std::map<std::string, at::Tensor> out;
    for (const Delta& d : e.deltas) {
        at::Tensor w = d.u.mm(d.v.t());
        out[d.tensor] = out.count(d.tensor) ? out[d.tensor] + w : w;
    }
    return out;
}

double max_rel_diff(const Edit& a, const Edit& b) {
    const auto da = dense(a), db = dense(b);
    if (da.size() != db.size()) return INFINITY;
    double worst = 0;
    for (const auto& [name, w] : da) {
        if (!db.count(name)) return INFINITY;
        worst = std::max(worst, (w - db.at(name)).norm().item<double>() / std::max(1e-30, w.norm().item<double>()));
    }
    return worst;
}

// Mean over the row's target tokens of -log p (or of -log(1 - p + e^-20) with `unlikely`), one plain
// forward pass of prompt + target[:-1].
double row_loss(const Model& m, const EditRequest& r, const std::vector<int64_t>& target, bool unlikely) {
    c10::InferenceMode guard;
    const Tokenizer& tok = *m.tokenizer();
    LocatedPrompt p = locate_subject(tok, "{}", r.prompt, r.subject);
    std::vector<int64_t> ids = p.ids;
    ids.insert(ids.end(), target.begin(), target.end() - 1);
    ForwardInput in;
    in.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
    const at::Tensor logp = at::log_softmax(m.forward(in).logits[0].to(at::kDouble), -1);
    const int64_t n = static_cast<int64_t>(target.size()), start = static_cast<int64_t>(p.ids.size()) - 1;
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
        const double lp = logp[start + j][target[size_t(j)]].item<double>();
        sum += unlikely ? -std::log(1.0 - std::exp(lp) + std::exp(-20.0)) : -lp;
    }
    return sum / double(n);
}

void expect_error(const std::function<void()>& f, ErrorKind kind, const char* needle) {
    try {
        f();
    } catch (const Error& e) {
        QVERIFY2(e.kind() == kind, e.what());
        QVERIFY2(std::string(e.what()).find(needle) != std::string::npos, e.what());
        return;
    }
    QFAIL(qPrintable(QString("no error; expected one naming ") + needle));
}

}  // namespace

class TestHse : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void forgetConditionAndAlphaSchedules() {
        using editing::hse_forget_condition;
        QVERIFY(hse_forget_condition({1, 2}, {3, 4}));
        QVERIFY(!hse_forget_condition({1, 2}, {1, 2}));
        QVERIFY(!hse_forget_condition({1, 2}, {2, 5}));      // one of two shared: not fewer than half
        QVERIFY(hse_forget_condition({1, 2, 3}, {3, 4, 5}));  // one of three on each side
        QVERIFY(!hse_forget_condition({7, 7, 8}, {7, 7, 9, 9, 9, 9, 9}));  // two 7s shared: 2 >= 3/2
        QVERIFY(hse_forget_condition({7, 8, 9}, {7, 7, 1, 2, 3, 4, 5}));   // multisets: one 7 shared

        EditHParams hp;
        hp.method = EditMethod::Hse;
        hp.hse_horizon = 10;
        const std::pair<const char*, double> at3[] = {{"inverse", 10.0 / 3}, {"constant", 1}, {"half_inverse", 10.0 / 6},
                                                      {"double_inverse", 20.0 / 3}, {"linear", 10 - 4 + 2}};
        for (const auto& [name, want] : at3) {
            hp.hse_alpha_schedule = name;
            QCOMPARE(editing::hse_alpha(hp, 0), 1.0);  // batch 1 has nothing to replay
            QVERIFY2(std::abs(editing::hse_alpha(hp, 3) - want) < 1e-12, name);  // batch i = 4
        }
        hp.hse_alpha_schedule = "inverse";
        hp.hse_horizon = 0;
        QCOMPARE(editing::hse_alpha(hp, 5), 1.0);
    }

    void firstLossIsTheUnlikelihoodFormula() {
        auto m = Model::load(demo_dir());
        const EditRequest r = counterfact(1)[0];
        QVERIFY(!r.target_true.empty());
        const Tokenizer& tok = *m->tokenizer();
        for (bool space : {true, false}) {
            EditHParams hp = hse_hparams(*m);
            hp.context_templates = {{"{}"}};
            hp.hse_forget_space = space;
            EditSession s(*m, hp);
            const Edit e = s.compute({r});
            std::vector<int64_t> old = space ? target_ids(tok, r.target_true) : tok.encode(r.target_true).ids;
            const double nll = row_loss(*m, r, target_ids(tok, r.target_new), false);
            const double unlikely = row_loss(*m, r, old, true);
            const auto& f = e.metrics["hse"]["forget"][0];
            QCOMPARE(f["source"].get<std::string>(), std::string("target_true"));
            QVERIFY(f["forget_cond"].get<bool>());
            const double f_term = hp.forget_factor * unlikely;
            const double want = (1 - hp.forget_factor) * nll + (f_term > 1e-3 ? f_term : 0.0);  // delta = 0: no KL, decay or Fisher
            const double got = e.metrics["targets"][0]["loss_first"].get<double>();
            qInfo("space %d: nll %.6f, unlikelihood %.6f, loss %.6f (plain forward %.6f)", int(space), nll, unlikely, got, want);
            QVERIFY2(std::abs(got - want) <= 1e-4 * std::max(1.0, std::abs(want)), qPrintable(QString("%1 vs %2").arg(got).arg(want)));
            QVERIFY(f["forget_steps"].get<int>() > 0);
        }
    }

    void withItsMechanismsOffItIsMemitSeq() {
        auto m = Model::load(demo_dir());
        const auto reqs = counterfact(4);
        EditHParams h = hse_hparams(*m);
        h.forget_factor = 0;
        h.fisher_factor = 0;
        h.hse_alpha_schedule = "constant";
        EditHParams q = h;
        q.method = EditMethod::MemitSeq;
        EditSession hs(*m, h), qs(*m, q);
        // One request per batch: both optimise each target alone, so the arithmetic is the same.
        for (int b = 0; b < 3; ++b) {
            const std::vector<EditRequest> batch = {reqs[size_t(b)]};
            const Edit eh = hs.compute(batch);
            const Edit eq = qs.compute(batch);
            const double d = max_rel_diff(eh, eq);
            qInfo("batch %d: |dW_hse - dW_memit_seq| / |dW| = %.3g", b + 1, d);
            QVERIFY(d < 1e-5);
            apply_edit(*m, eh);
        }
        // Without the replayed keys the second batch is plain MEMIT on the edited model.
        m->restore_all_base();
        h.hse_replay = false;
        q.method = EditMethod::Memit;
        EditSession hs2(*m, h), ms(*m, q);
        apply_edit(*m, hs2.compute({reqs[0], reqs[1]}));
        const double d = max_rel_diff(hs2.compute({reqs[2], reqs[3]}), ms.compute({reqs[2], reqs[3]}));
        QVERIFY2(d < 1e-5, qPrintable(QString::number(d)));
    }

    void fisherAndReplayCarryOverThroughHistory() {
        auto m = Model::load(demo_dir());
        const auto reqs = counterfact(3);
        EditHParams hp = hse_hparams(*m);
        hp.hse_horizon = 3;
        EditSession s(*m, hp);
        const Edit e1 = s.compute({reqs[0]});
        apply_edit(*m, e1);
        const Edit e2 = s.compute({reqs[1]});
        apply_edit(*m, e2);
        // Stored state: the Fisher this edit added (one value per hidden unit), the targets, the keys.
        const Artifact* f1 = nullptr;
        for (const Artifact& a : e1.artifacts)
            if (a.kind == "fisher") f1 = &a;
        QVERIFY(f1);
        QCOMPARE(f1->tensor.numel(), m->hparams().n_embd);
        QVERIFY(f1->tensor.min().item<double>() >= 0 && f1->tensor.max().item<double>() > 0);
        QCOMPARE(e1.metrics["hse"]["batch"].get<int>(), 1);
        QCOMPARE(e2.metrics["hse"]["batch"].get<int>(), 2);
        QCOMPARE(e1.metrics["hse"]["alpha"].get<double>(), 1.0);
        QCOMPARE(e2.metrics["hse"]["alpha"].get<double>(), 3.0);  // n / (i - 1) = 3 / 1
        QVERIFY(e2.metrics["hse"]["fisher_norm"].get<double>() > e1.metrics["hse"]["fisher_norm"].get<double>());
        const Edit e3 = s.compute({reqs[2]});

        // A new session that reads the first two edits computes the same third edit.
        EditSession fresh(*m, hp);
        fresh.absorb_history({e1, e2});
        const Edit again = fresh.compute({reqs[2]});
        QCOMPARE(again.metrics["hse"]["alpha"].get<double>(), 1.5);
        const double d = max_rel_diff(e3, again);
        qInfo("third edit, same session vs rebuilt from history: %.3g", d);
        QVERIFY(d < 1e-5);  // the history stores the keys and the Fisher in float32
        // Without the history the Fisher penalty and the replayed keys are missing, and the edit differs.
        EditSession blank(*m, hp);
        const Edit without = blank.compute({reqs[2]});
        QVERIFY(max_rel_diff(e3, without) > 1e-3);
        // Another method's edits are not part of the sequence: a session given only those starts afresh.
        Edit other1 = e1, other2 = e2;
        other1.method = other2.method = "memit_seq";
        EditSession skipping(*m, hp);
        skipping.absorb_history({other1, other2});
        QCOMPARE(max_rel_diff(skipping.compute({reqs[2]}), without), 0.0);
        // The planned horizon is spent: a fourth batch is refused and the session is unchanged.
        apply_edit(*m, e3);
        const std::string before = state_hash(*m);
        expect_error([&] { s.compute({reqs[0]}); }, ErrorKind::Argument, "hse_horizon");
        QCOMPARE(state_hash(*m), before);
    }

    void projectRollbackAndReplay() {
        TempDir tmp("hse");
        auto m = Model::load(demo_dir());
        auto project = Project::create(tmp.path / "hse.engram", *m);
        const auto reqs = counterfact(3);
        EditSession s(*m, hse_hparams(*m));
        std::vector<int64_t> ids;
        for (const auto& r : reqs) {
            Edit e = s.compute({r});
            ids.push_back(project->record(*m, e));
        }
        const std::string head = state_hash(*m);
        const auto hist = project->history();
        QCOMPARE(hist.size(), size_t(3));
        QVERIFY(hist[2].edit.metrics["hse"].contains("alpha"));
        // The stored edit brings back what a new session needs: the Fisher it added and the keys.
        std::set<std::string> kinds;
        for (const Artifact& a : project->edit(ids[2]).artifacts) kinds.insert(a.kind);
        QVERIFY(kinds.count("fisher") && kinds.count("keys") && kinds.count("targets"));
        for (const HashCheck& c : project->verify(*m)) QVERIFY(c.ok());
        for (size_t i = 0; i < ids.size(); ++i) {
            project->rollback(*m, ids[i]);
            QCOMPARE(state_hash(*m), hist[i].edit.state_hash_after);
        }
        project->rollback(*m, 0);
        QCOMPARE(state_hash(*m), state_hash_of_base(m->fingerprint()));
        project->restore_active(*m, ids);
        QCOMPARE(state_hash(*m), head);
    }

    void sequentialProtocolPlansTheHorizon() {
        auto m = Model::load(demo_dir());
        eval::DatasetOptions dopt;
        dopt.limit = 12;
        const eval::Dataset ds = eval::load_dataset(demo_dir() / "counterfact.json", dopt);
        eval::SequentialOptions so;
        so.edits = 8;
        so.batch = 2;
        so.fluency_cases = 0;
        so.unedited_cases = 4;
        EditHParams hp = hse_hparams(*m);
        hp.v_num_grad_steps = default_edit_hparams(model_shape(*m), EditMethod::Hse, false).v_num_grad_steps;
        const auto r = eval::run_sequential(*m, ds, hp, {}, so);
        QCOMPARE(r.hparams["hse_horizon"].get<int>(), 4);
        qInfo("HSE, 8 edits in 4 batches: ES %.1f PS %.1f NS %.1f", r.post.es, r.post.ps, r.post.ns);
        QVERIFY(r.post.es >= 75.0);
    }

    void zsreForgetsThePredictionOrTheGreedyAnswer() {
        auto m = Model::load(demo_dir());
        eval::DatasetOptions dopt;
        dopt.limit = 2;
        dopt.zsre_target = eval::ZsreTarget::Answer;
        const eval::Dataset ds = eval::load_dataset(demo_dir() / "zsre.json", dopt);
        EditRequest r = eval::requests_of(ds.cases[0]).at(0);
        QVERIFY(r.target_true.empty());
        QVERIFY(!r.prediction.empty());
        r.target_new = "Zuluball";
        EditHParams hp = hse_hparams(*m);
        {
            EditSession s(*m, hp);
            const Edit e = s.compute({r});
            QCOMPARE(e.metrics["hse"]["forget"][0]["source"].get<std::string>(), std::string("prediction"));
            QCOMPARE(EditRequest::from_json(e.requests[0]).prediction, r.prediction);
        }
        r.prediction.clear();
        {
            EditSession s(*m, hp);
            const Edit e = s.compute({r});
            const auto& f = e.metrics["hse"]["forget"][0];
            QCOMPARE(f["source"].get<std::string>(), std::string("greedy"));
            QCOMPARE(f["old"].get<std::string>(), greedy_answer(*m, r));
        }
        hp.hse_forget_fallback = "none";
        EditSession s(*m, hp);
        const std::string before = state_hash(*m);
        expect_error([&] { s.compute({r}); }, ErrorKind::Argument, "names none");
        QCOMPARE(state_hash(*m), before);
        hp.forget_factor = 0;  // nothing to forget: no old object needed
        EditSession s0(*m, hp);
        QVERIFY(s0.compute({r}).metrics["hse"]["forget"][0].count("source") == 0);
    }

    void badSettingsAreRefused() {
        auto m = Model::load(demo_dir());
        const ModelShape shape = model_shape(*m);
        auto refused = [&](const char* setting, const char* needle) {
            EditHParams hp = default_edit_hparams(shape, EditMethod::Hse, false);
            apply_hparam_setting(hp, setting);
            expect_error([&] { validate_edit_hparams(hp, shape); }, ErrorKind::Argument, needle);
        };
        refused("forget_factor=1", "forget_factor");
        refused("forget_factor=-0.1", "forget_factor");
        refused("fisher_factor=-1", "fisher_factor");
        refused("hse_horizon=-2", "hse_horizon");
        refused("hse_alpha_schedule=cubic", "hse_alpha_schedule");
        refused("hse_fisher_form=exact", "hse_fisher_form");
        refused("hse_forget_fallback=ask", "hse_forget_fallback");
        expect_error([&] { (void)default_edit_hparams(shape, EditMethod::Hse, true); }, ErrorKind::Argument, "BLUE");
        // The registry lists it with its settings.
        QCOMPARE(method_info(EditMethod::Hse).produces, Produces::Deltas);
        QCOMPARE(edit_method_from_name("HSE").value(), EditMethod::Hse);
    }

    void readsTheAuthorsHparamsFiles() {
        // The keys of the HSE repository's hparams/HSE/<model>.json files (module paths and dtype are
        // accepted and ignored).
        TempDir tmp("hse-hparams");
        const fs::path file = tmp.path / "hse.json";
        std::ofstream(file) << R"({"model_name": "gpt2-xl", "layers": [13, 14, 15, 16, 17], "clamp_norm_factor": 0.75,
            "layer_selection": "all", "fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": 5e-1, "v_loss_layer": 47,
            "v_weight_decay": 0.5, "kl_factor": 0.0625, "forget_factor": 0.3, "fisher_factor": 2e-4, "mom2_adjustment": true,
            "mom2_update_weight": 20000, "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
            "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn", "ln_f_module": "transformer.ln_f",
            "lm_head_module": "lm_head", "mom2_n_samples": 100000, "mom2_dtype": "float32"})";
        EditHParams hp = default_edit_hparams({"gpt2", 48, 1600, 6400, 50257}, EditMethod::Hse, false);
        apply_hparams_file(hp, file);
        QCOMPARE(hp.method, EditMethod::Hse);
        QCOMPARE(hp.forget_factor, 0.3);
        QCOMPARE(hp.fisher_factor, 2e-4);
        QCOMPARE(hp.layers, (std::vector<int>{13, 14, 15, 16, 17}));
        std::ofstream(file) << R"({"alg_name": "HSE", "forget_factor": 0.1})";
        apply_hparams_file(hp, file);
        QCOMPARE(hp.forget_factor, 0.1);
        std::ofstream(file) << R"({"alg_name": "MEMIT", "forget_factor": 0.1})";
        expect_error([&] { apply_hparams_file(hp, file); }, ErrorKind::Format, "alg_name");
    }

    void defaultsPerModel() {
        auto row = [](std::string family, int64_t n_layer, int64_t n_embd, int64_t n_ff, int64_t n_vocab) {
            return default_edit_hparams({family, n_layer, n_embd, n_ff, n_vocab}, EditMethod::Hse, false);
        };
        const EditHParams llama3 = row("llama", 32, 4096, 14336, 128256), mistral = row("llama", 32, 4096, 14336, 32768);
        QCOMPARE(llama3.layers, (std::vector<int>{4, 5, 6, 7, 8}));
        QCOMPARE(llama3.fisher_factor, 0.1);
        QCOMPARE(llama3.v_weight_decay, 0.1);
        QCOMPARE(mistral.fisher_factor, 0.5);
        QCOMPARE(mistral.kl_factor, 0.0875);
        const EditHParams gptj = row("gptj", 28, 4096, 16384, 50400), xl = row("gpt2", 48, 1600, 6400, 50257);
        QCOMPARE(gptj.layers, (std::vector<int>{3, 4, 5, 6, 7, 8}));
        QCOMPARE(gptj.fisher_factor, 1e-4);
        QCOMPARE(xl.layers, (std::vector<int>{13, 14, 15, 16, 17}));
        QCOMPARE(xl.mom2_update_weight, 20000.0);
        QCOMPARE(xl.forget_factor, 0.2);
    }
};

QTEST_APPLESS_MAIN(TestHse)
#include "tst_hse.moc"
