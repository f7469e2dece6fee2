// Locate-then-edit on the Fact World model: the identities each method must satisfy (ROME's
// W'k* = v*, MEMIT's normal equations, AlphaEdit's protected keys, BLUE's two layers), bit-exact
// re-application from stored factors, edit quality at reduced size, and clear refusals.
#include <QtTest>

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QElapsedTimer>
#include <QProcess>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <csignal>
#include <fstream>

#include <signal.h>

#include "engram/datasets.h"
#include "engram/edit.h"
#include "engram/edit_hparams.h"
#include "engram/editing.h"
#include "engram/error.h"
#include "engram/evaluate.h"
#include "engram/model.h"
#include "engram/store.h"
#include "engram/tokenizer.h"
#include "test_util.h"

using namespace engram;
using engram::test::TempDir;
using engram::test::cli;
using engram::test::q;
using engram::test::Run;
namespace fs = std::filesystem;

class TestEditing : public QObject {
    Q_OBJECT

private:
    fs::path demo_dir() const { return fs::path(ENGRAM_SOURCE_RESOURCES) / "demo" / "factworld"; }
    std::unique_ptr<Model> load() const { return Model::load(demo_dir()); }
    std::vector<EditRequest> requests(int n, int offset = 0) const {
        eval::DatasetOptions o;
        o.limit = n + offset;
        eval::Dataset ds = eval::load_dataset(demo_dir() / "counterfact.json", o);
        std::vector<EditRequest> out;
        for (int i = offset; i < n + offset; ++i) out.push_back(eval::requests_of(ds.cases[static_cast<size_t>(i)]).at(0));
        return out;
    }
    EditHParams hparams(const Model& m, EditMethod method, bool blue = false) const {
        return default_edit_hparams(model_shape(m), method, blue);
    }
    // Mean of the down projection's output over the templates at the subject's last token.
    at::Tensor mean_mlp_out(const Model& m, const EditRequest& r, int layer, const std::vector<std::string>& templates) const {
        c10::InferenceMode guard;
        std::vector<at::Tensor> outs;
        for (const std::string& t : templates) {
            LocatedPrompt p = locate_subject(*m.tokenizer(), t, r.prompt, r.subject);
            Hooks hooks;
            hooks.capture(Site::MlpOut, layer);
            ForwardInput in;
            in.input_ids = at::tensor(p.ids, at::kLong).unsqueeze(0);
            m.forward(in, &hooks);
            outs.push_back(hooks.captured(Site::MlpOut, layer)[0][p.subject_last].to(at::kDouble));
        }
        return at::stack(outs).mean(0);
    }

private Q_SLOTS:
    void initTestCase() {
        if (!fs::exists(demo_dir() / "model.safetensors")) QFAIL("the Fact World demo model is missing from resources/demo/factworld");
    }

    void subjectLocatedByOffsets() {
        auto m = load();
        LocatedPrompt p = locate_subject(*m->tokenizer(), "The Peanaim Fosha . {}", "{} competes in", "Peanaim Fosha");
        // The subject's span is where "{}" stood: the second "Peanaim Fosha", not the first.
        const auto& tok = *m->tokenizer();
        QCOMPARE(tok.decode({p.ids[static_cast<size_t>(p.subject_first)]}), std::string("Peanaim"));
        QCOMPARE(tok.decode({p.ids[static_cast<size_t>(p.subject_last)]}), std::string("Fosha"));
        QVERIFY(p.subject_first > 3);
        QCOMPARE(p.subject_last, p.subject_first + 1);
    }

    void statsStreamInWindows() {
        // C from a corpus streamed in many small windows equals C from one window holding it all
        // (the same tokens, batched differently: float rounding only), and a JSONL copy of the
        // corpus gives the very same bits as the text file.
        auto m = load();
        TempDir tmp("stats");
        std::vector<std::string> docs;
        {
            std::ifstream in(demo_dir() / "corpus.txt");
            for (std::string line; docs.size() < 300 && std::getline(in, line);) docs.push_back(line);
        }
        const fs::path text = tmp.path / "c.txt", jsonl = tmp.path / "c.jsonl";
        {
            std::ofstream t(text), j(jsonl);
            for (const std::string& d : docs) {
                t << d << "\n\n";  // blank lines are skipped
                j << nlohmann::json{{"text", d}}.dump() << "\n";
            }
        }
        StatsOptions whole;
        whole.corpus = text;
        whole.n_samples = 250;  // stops before the end of the file
        whole.use_cache = false;
        StatsOptions windows = whole;
        windows.window_tokens = 300;  // a few dozen windows
        StatsOptions as_jsonl = whole;
        as_jsonl.corpus = jsonl;
        std::vector<int64_t> progress;
        const LayerStats a = second_moments(*m, {1}, whole).at(0);
        const LayerStats b = second_moments(*m, {1}, windows, [&](int64_t done, int64_t total) {
                                 QCOMPARE(total, int64_t(250));
                                 progress.push_back(done);
                             }).at(0);
        const LayerStats c = second_moments(*m, {1}, as_jsonl).at(0);
        QCOMPARE(a.documents, int64_t(250));
        QCOMPARE(b.documents, a.documents);
        QCOMPARE(b.count, a.count);
        QVERIFY(a.count > 1000);
        QVERIFY(std::is_sorted(progress.begin(), progress.end()));
        QCOMPARE(progress.back(), int64_t(250));
        const double rel = engram::test::max_abs_diff(a.mom2, b.mom2) / a.mom2.abs().max().item<double>();
        QVERIFY2(rel <= 1e-5, qPrintable(QString("relative difference %1").arg(rel)));
        QCOMPARE(c.count, a.count);
        QVERIFY(at::equal(c.mom2, a.mom2));
        windows.window_tokens = 0;
        QVERIFY_THROWS_EXCEPTION(Error, second_moments(*m, {1}, windows));
    }

    void romeSatisfiesKeyValue() {
        // After ROME, W' k* + b = v* (k* the prefix-averaged key: the r-ROME form).
        auto m = load();
        const EditRequest r = requests(1)[0];
        EditHParams hp = hparams(*m, EditMethod::Rome);
        EditSession s(*m, hp);
        const std::vector<std::string> templates = s.context_templates().at(0);
        QCOMPARE(templates.size(), size_t(21));
        const int layer = hp.layers[0];
        TargetResult v = compute_target(*m, r, layer, TargetSite::MlpOut, templates, hp);
        Edit e = s.compute({r});
        QCOMPARE(e.deltas.size(), size_t(1));
        QCOMPARE(e.deltas[0].rank(), int64_t(1));
        apply_edit(*m, e);
        at::Tensor after = mean_mlp_out(*m, r, layer, templates);  // = W' k* + b, keys are upstream of the edit
        const double rel = (after - v.target.to(at::kDouble)).norm().item<double>() / v.target.norm().item<double>();
        QVERIFY2(rel <= 1e-4, qPrintable(QString("relative error %1").arg(rel)));
        // And the optimised target moved: v* is not the old value.
        QVERIFY((v.target - v.init).norm().item<double>() > 1e-3 * v.init.norm().item<double>());
    }

    void romeOriginalKeyHandling() {
        // rrome_fix=false: the plain prompt's key k satisfies W' k + b = v* instead.
        auto m = load();
        const EditRequest r = requests(1, 3)[0];
        EditHParams hp = hparams(*m, EditMethod::Rome);
        hp.rrome_fix = false;
        EditSession s(*m, hp);
        const int layer = hp.layers[0];
        TargetResult v = compute_target(*m, r, layer, TargetSite::MlpOut, s.context_templates().at(0), hp);
        apply_edit(*m, s.compute({r}));
        at::Tensor after = mean_mlp_out(*m, r, layer, {"{}"});
        const double rel = (after - v.target.to(at::kDouble)).norm().item<double>() / v.target.norm().item<double>();
        QVERIFY2(rel <= 1e-4, qPrintable(QString("relative error %1").arg(rel)));
    }

    void memitSolvesNormalEquations() {
        auto m = load();
        const std::vector<EditRequest> reqs = requests(8);
        EditHParams hp = hparams(*m, EditMethod::Memit);
        EditSession s(*m, hp);
        const int l0 = hp.layers.front();
        const at::Tensor K = mean_keys(*m, reqs, l0, s.context_templates(), true, hp);  // [n_ff, n] on the unedited model
        Edit e = s.compute(reqs);
        QCOMPARE(e.deltas.size(), hp.layers.size());
        const Delta& d = e.deltas.front();
        QCOMPARE(d.tensor, m->tensor_name(Slot::FfnDown, l0));
        QCOMPARE(d.rank(), int64_t(reqs.size()));
        const at::Tensor C = s.stats(l0).mom2;
        const at::Tensor A = hp.mom2_update_weight * C + K.mm(K.t());
        const at::Tensor dW = d.u.mm(d.v.t());  // [n_embd, n_ff]
        // Delta (lambda C + K K^T) = R K^T.
        const double rel = (dW.mm(A) - d.u.mm(K.t())).norm().item<double>() / d.u.mm(K.t()).norm().item<double>();
        QVERIFY2(rel <= 1e-8, qPrintable(QString("normal equations residual %1").arg(rel)));
    }

    void alphaEditProtectsPreservedKeys() {
        // AlphaEdit's update lives in the null space of the preserved keys: Delta (I - P) = 0, so the
        // outputs of every key in the preserved subspace are unchanged. MEMIT has no such property.
        auto m = load();
        const std::vector<EditRequest> reqs = requests(10);
        EditHParams ha = hparams(*m, EditMethod::AlphaEdit), hm = hparams(*m, EditMethod::Memit);
        EditSession sa(*m, ha), sm(*m, hm);
        Edit ea = sa.compute(reqs), em = sm.compute(reqs);
        const int l = ha.layers.front();
        QCOMPARE(ea.deltas.front().tensor, m->tensor_name(Slot::FfnDown, l));
        const at::Tensor P = sa.null_space_projection(l);  // [n_ff, n_ff]
        const int64_t n_ff = P.size(0);
        QVERIFY(at::allclose(P.mm(P), P, 1e-9, 1e-9));     // a projection
        const at::Tensor keep = at::eye(n_ff, at::kDouble) - P;
        // Preserved keys: corpus sentences at layer l on the unedited model, projected onto the
        // preserved subspace (the complement of P's null space).
        std::vector<std::string> lines;
        {
            std::ifstream in(demo_dir() / "corpus.txt");
            for (std::string line; lines.size() < 200 && std::getline(in, line);) lines.push_back(line);
        }
        std::vector<at::Tensor> rows;
        {
            c10::InferenceMode guard;
            for (const auto& line : lines) {
                Hooks h;
                h.capture(Site::MlpKey, l);
                ForwardInput in;
                in.input_ids = at::tensor(m->tokenizer()->encode(line, true).ids, at::kLong).unsqueeze(0);
                m->forward(in, &h);
                rows.push_back(h.captured(Site::MlpKey, l)[0].to(at::kDouble));
            }
        }
        const at::Tensor K0 = keep.mm(at::cat(rows, 0).t());  // [n_ff, tokens]
        const at::Tensor W = m->weight(Slot::FfnDown, l).to(at::kDouble);
        auto moved = [&](const Delta& d) { return d.u.mm(d.v.t()).mm(K0).norm().item<double>() / W.mm(K0).norm().item<double>(); };
        const double alpha = moved(ea.deltas.front()), memit = moved(em.deltas.front());
        // And the whole corpus keys, unprojected, for the record.
        qInfo("layer %d: null space %lld of %lld dims; preserved outputs moved by AlphaEdit %.3g, by MEMIT %.3g", l,
              static_cast<long long>(at::trace(P).round().item<double>()), static_cast<long long>(n_ff), alpha, memit);
        QVERIFY2(alpha < 1e-8, qPrintable(QString("AlphaEdit moved preserved outputs by %1").arg(alpha)));
        QVERIFY(memit > 1e-4);
        // The edit itself still lands for most requests: the new target beats the old one.
        apply_edit(*m, ea);
        std::vector<std::pair<std::string, std::string>> pt;
        for (const auto& r : reqs) {
            pt.emplace_back(r.prompt_text(), r.target_new);
            pt.emplace_back(r.prompt_text(), r.target_true);
        }
        auto sc = eval::score_targets(*m, pt);
        int wins = 0;
        for (size_t i = 0; i < reqs.size(); ++i) wins += sc[2 * i].nll < sc[2 * i + 1].nll;
        qInfo("AlphaEdit: new target ahead on %d of 10 edited prompts", wins);
        QVERIFY2(wins >= 5, qPrintable(QString("AlphaEdit succeeded on %1 of 10").arg(wins)));
    }

    void fastPathMatchesReference_data() {
        QTest::addColumn<int>("method");
        QTest::addColumn<bool>("blue");
        QTest::addColumn<int>("n");
        QTest::newRow("rome, two in sequence") << int(EditMethod::Rome) << false << 2;
        QTest::newRow("memit") << int(EditMethod::Memit) << false << 6;
        QTest::newRow("alphaedit") << int(EditMethod::AlphaEdit) << false << 6;
        QTest::newRow("memit_seq") << int(EditMethod::MemitSeq) << false << 4;
        QTest::newRow("pmet") << int(EditMethod::Pmet) << false << 4;
        QTest::newRow("memit+blue") << int(EditMethod::Memit) << true << 4;
    }
    void fastPathMatchesReference() {
        // The batched target optimisation and the Cholesky solves change where and how often the
        // arithmetic runs, not the arithmetic: the same hparams, templates and C give the reference
        // path's weight changes within float rounding.
        QFETCH(int, method);
        QFETCH(bool, blue);
        QFETCH(int, n);
        auto m = load();
        const EditHParams hp = hparams(*m, EditMethod(method), blue);
        const std::vector<EditRequest> reqs = requests(n, 20);
        EditSession ref(*m, hp), fast(*m, hp);
        ref.set_reference_path(true);
        const Edit a = ref.compute(reqs), b = fast.compute(reqs);
        QCOMPARE(b.deltas.size(), a.deltas.size());
        // Relative to the edit's largest weight change: BLUE's second target can start satisfied,
        // leaving a change at its layer that is float rounding itself.
        double scale = 0;
        for (const Delta& d : a.deltas) scale = std::max(scale, d.u.mm(d.v.t()).norm().item<double>());
        QVERIFY(scale > 0);
        for (size_t i = 0; i < a.deltas.size(); ++i) {
            QCOMPARE(b.deltas[i].tensor, a.deltas[i].tensor);
            const at::Tensor wa = a.deltas[i].u.mm(a.deltas[i].v.t()), wb = b.deltas[i].u.mm(b.deltas[i].v.t());
            const double rel = (wb - wa).norm().item<double>() / scale;
            qInfo("%s: delta %zu (|dW| %.3g) differs by %.3g of the largest", QTest::currentDataTag(), i, wa.norm().item<double>(), rel);
            QVERIFY2(rel <= 1e-5, qPrintable(QString("delta %1 differs by %2").arg(i).arg(rel)));
        }
    }

    void blueTouchesExactlyTwoLayers_data() {
        QTest::addColumn<int>("method");
        QTest::newRow("memit") << int(EditMethod::Memit);
        QTest::newRow("alphaedit") << int(EditMethod::AlphaEdit);
        QTest::newRow("pmet") << int(EditMethod::Pmet);
    }
    void blueTouchesExactlyTwoLayers() {
        QFETCH(int, method);
        auto m = load();
        EditHParams hp = hparams(*m, EditMethod(method), true);
        QCOMPARE(hp.layers.size(), size_t(2));
        EditSession s(*m, hp);
        Edit e = s.compute(requests(4));
        const std::vector<std::string> expected = {m->tensor_name(Slot::FfnDown, hp.layers[0]), m->tensor_name(Slot::FfnDown, hp.layers[1])};
        QCOMPARE(e.touched_tensors(), expected);
        QVERIFY(e.method.find("+blue") != std::string::npos);
        // Every other weight is bit-for-bit the base.
        apply_edit(*m, e);
        int changed = 0;
        for (const auto& ref : m->weight_refs()) changed += !at::equal(m->weight(ref.slot, ref.layer), m->base_weight(ref.slot, ref.layer));
        QCOMPARE(changed, 2);
    }

    void storedFactorsReapplyBitForBit() {
        auto m = load();
        EditHParams hp = hparams(*m, EditMethod::Memit);
        EditSession s(*m, hp);
        Edit e = s.compute(requests(5));
        apply_edit(*m, e);
        const std::string h1 = state_hash(*m);
        // Through the store: record on a fresh model, reopen, replay on another fresh model.
        TempDir dir("editing");
        auto a = load();
        {
            auto p = Project::create(dir.path / "p.engram", *a);
            Edit copy = e;
            p->record(*a, copy);
        }
        QCOMPARE(state_hash(*a), h1);
        auto p = Project::open(dir.path / "p.engram");
        auto b = p->open_model(std::nullopt);
        QCOMPARE(state_hash(*b), h1);
        for (int l : hp.layers) QVERIFY(at::equal(b->weight(Slot::FfnDown, l), m->weight(Slot::FfnDown, l)));
        // The stored hparams pin the templates, so the computation itself can be repeated.
        QVERIFY(p->edit(p->active_ids().at(0)).hparams.at("context_templates").size() == 2);
    }

    void editsChangeFactsAtReducedSize() {
        // CI size: 10 single ROME edits and one MEMIT batch of 20 (the README's eval command runs the
        // full 100 of each).
        auto m = load();
        eval::DatasetOptions o;
        o.limit = 20;
        eval::Dataset ds = eval::load_dataset(demo_dir() / "counterfact.json", o);
        eval::SequentialOptions so;
        so.fluency_cases = 0;
        so.unedited_cases = 0;
        so.edits = 10;
        so.batch = 1;
        so.restore_between = true;
        eval::SequentialResult rome = eval::run_sequential(*m, ds, hparams(*m, EditMethod::Rome), {}, so);
        qInfo("ROME x10 single: ES %.1f PS %.1f NS %.1f (pre: %.1f %.1f %.1f)", rome.post.es, rome.post.ps, rome.post.ns, rome.pre.es, rome.pre.ps,
              rome.pre.ns);
        QVERIFY(rome.pre.es < 20);
        QVERIFY(rome.post.es >= 90);
        QVERIFY(rome.post.ps >= 70);
        QVERIFY(rome.post.ns >= 70);
        m->restore_all_base();
        so.edits = 20;
        so.batch = 20;
        so.restore_between = false;
        eval::SequentialResult memit = eval::run_sequential(*m, ds, hparams(*m, EditMethod::Memit), {}, so);
        qInfo("MEMIT batch of 20: ES %.1f PS %.1f NS %.1f", memit.post.es, memit.post.ps, memit.post.ns);
        // Measured with the demo defaults: ES 95, PS 62.5, NS 93 (and 98 / 62 / 86 on a batch of 50).
        // MEMIT generalises to paraphrases less well than ROME on this small model; the editing
        // issue's note has the figures for a batch of 100.
        QVERIFY(memit.post.es >= 85);
        QVERIFY(memit.post.ps >= 50);
        QVERIFY(memit.post.ns >= 80);
        QVERIFY(memit.post.ps > memit.pre.ps + 40);
    }

    void demoConsistencyReferences() {
        // The Fact World brings its own RS references: snippets of every (relation, object) and a
        // TF-IDF fitted on its corpus. A sentence stating the new fact is closer to the new
        // target's snippets than one stating the old fact.
        eval::AttributeSnippets snippets;
        eval::Tfidf tfidf;
        QVERIFY(eval::demo_consistency_refs(demo_dir(), &snippets, &tfidf));
        QVERIFY(tfidf.size() > 100);
        eval::DatasetOptions o;
        o.limit = 5;
        const eval::Dataset ds = eval::load_dataset(demo_dir() / "counterfact.json", o);
        for (const auto& c : ds.cases) {
            const eval::Rewrite& r = c.rewrites[0];
            const std::vector<std::string>* refs = snippets.find(r.relation_id, r.target_new_id);
            QVERIFY2(refs && !refs->empty(), r.target_new_id.c_str());
            std::string joined;
            for (const auto& t : *refs) {
                QVERIFY2(t.find(r.target_new) != std::string::npos, t.c_str());
                joined += t + " ";
            }
            QVERIFY(tfidf.similarity(r.prompt_text() + " " + r.target_new + " .", joined) >
                    tfidf.similarity(r.prompt_text() + " " + r.target_true + " .", joined));
        }
        // Not the demo model: no references (the CLI then needs --snippets and --tfidf).
        QVERIFY(!eval::demo_consistency_refs(fs::path(ENGRAM_SOURCE_RESOURCES) / "demo" / "shapes", &snippets, &tfidf));
    }

    void mergeSameSubjectSharesOneTarget() {
        // Two rewrites of one subject in one MEMIT batch: with merge_same_subject they get one target,
        // optimised on both prompts (MEMIT-Merge), and both edits take.
        auto m = load();
        eval::DatasetOptions o;
        o.limit = 200;
        const eval::Dataset ds = eval::load_dataset(demo_dir() / "counterfact.json", o);
        std::vector<EditRequest> pair;
        for (size_t i = 0; i < ds.cases.size() && pair.empty(); ++i)
            for (size_t j = i + 1; j < ds.cases.size(); ++j)
                if (ds.cases[i].rewrites[0].subject == ds.cases[j].rewrites[0].subject &&
                    ds.cases[i].rewrites[0].relation_id != ds.cases[j].rewrites[0].relation_id) {
                    pair = {eval::requests_of(ds.cases[i]).at(0), eval::requests_of(ds.cases[j]).at(0)};
                    break;
                }
        QVERIFY2(pair.size() == 2, "no subject with two rewrites among the first 200 records");
        EditHParams hp = hparams(*m, EditMethod::Memit);
        hp.merge_same_subject = true;
        EditSession session(*m, hp);
        const Edit e = session.compute(pair);
        const auto& targets = e.metrics.at("targets");
        QCOMPARE(targets.size(), size_t(2));
        for (const auto& t : targets) QCOMPARE(t.at("merged").get<int>(), 2);
        // One target: both requests' residuals (the update's left factor, R = Z - H at each layer; H
        // is the same at the shared subject) are the same column.
        auto same_residual = [](const Edit& x) {
            for (const Delta& d : x.deltas)
                if (!at::allclose(d.u.select(1, 0), d.u.select(1, 1), 1e-9, 1e-12)) return false;
            return true;
        };
        QVERIFY(same_residual(e));
        QCOMPARE(e.hparams.at("merge_same_subject").get<bool>(), true);  // stored with the edit
        apply_edit(*m, e);
        for (const EditRequest& r : pair) {
            const auto s = eval::score_targets(*m, {{r.prompt_text(), r.target_new}, {r.prompt_text(), r.target_true}});
            QVERIFY2(s[0].nll < s[1].nll, (r.subject + ": " + r.target_new + " is not ahead of " + r.target_true).c_str());
        }
        // Off (the reference behaviour): one target per request.
        m->restore_all_base();
        hp.merge_same_subject = false;
        EditSession plain(*m, hp);
        const Edit separate = plain.compute(pair);
        for (const auto& t : separate.metrics.at("targets")) QCOMPARE(t.at("merged").get<int>(), 1);
        QVERIFY(!same_residual(separate));
    }

    void baselineMeasuredOncePerState() {
        // The pre-edit measurements are shared by the runs of one evaluation while the model is in the
        // state they were measured on, and measured again on any other state.
        auto m = load();
        eval::DatasetOptions o;
        o.limit = 4;
        const eval::Dataset ds = eval::load_dataset(demo_dir() / "counterfact.json", o);
        eval::SequentialOptions so;
        so.fluency_cases = so.unedited_cases = 0;
        so.edits = so.batch = 2;
        so.baseline = std::make_shared<eval::Baseline>();
        const eval::SequentialResult first = eval::run_sequential(*m, ds, hparams(*m, EditMethod::Memit), {}, so);
        QCOMPARE(so.baseline->edits, int64_t(2));
        QCOMPARE(so.baseline->summary.es, first.pre.es);
        // Left edited: its "pre" is the edited model's, where the edited facts now hold.
        const eval::SequentialResult second = eval::run_sequential(*m, ds, hparams(*m, EditMethod::Memit), {}, so);
        QVERIFY2(second.pre.es > first.pre.es, qPrintable(QString("pre ES %1 then %2").arg(first.pre.es).arg(second.pre.es)));
        // Back on the base: a baseline recorded for this state is taken as it stands.
        m->restore_all_base();
        so.baseline->state_hash = state_hash(*m);
        so.baseline->edits = 2;
        so.baseline->summary.es = -1;
        QCOMPARE(eval::run_sequential(*m, ds, hparams(*m, EditMethod::Memit), {}, so).pre.es, -1.0);
    }

    void distinctSubjectsSkipsRepeats() {
        // MCF-style selection: a case whose subject was already chosen is passed over, counted, and
        // the next case takes its place; too few distinct subjects is a clear error.
        auto m = load();
        eval::DatasetOptions o;
        o.limit = 3;
        eval::Dataset ds = eval::load_dataset(demo_dir() / "counterfact.json", o);
        QVERIFY(ds.cases[0].rewrites[0].subject != ds.cases[1].rewrites[0].subject);
        eval::Dataset dup = ds;
        dup.cases = {ds.cases[0], ds.cases[0], ds.cases[1]};
        eval::SequentialOptions so;
        so.fluency_cases = so.unedited_cases = 0;
        so.edits = so.batch = 2;
        so.distinct_subjects = true;
        const eval::SequentialResult r = eval::run_sequential(*m, dup, hparams(*m, EditMethod::Memit), {}, so);
        QCOMPARE(r.skipped_same_subject, int64_t(1));
        QCOMPARE(r.to_json()["skipped_same_subject"].get<int64_t>(), int64_t(1));
        m->restore_all_base();
        // Without the option the repeat is edited as it comes.
        so.distinct_subjects = false;
        QCOMPARE(eval::run_sequential(*m, dup, hparams(*m, EditMethod::Memit), {}, so).skipped_same_subject, int64_t(0));
        m->restore_all_base();
        dup.cases = {ds.cases[0], ds.cases[0]};
        so.distinct_subjects = true;
        try {
            eval::run_sequential(*m, dup, hparams(*m, EditMethod::Memit), {}, so);
            QFAIL("two edits were run from one distinct subject");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("1 cases with distinct subjects; 2 edits") != std::string::npos, e.what());
        }
    }

    void cliEditRecordsAndRefuses() {
        TempDir tmp("editing-cli");
        const fs::path db = tmp.path / "facts.engram";
        Run base = cli({"hash", "--model", q(demo_dir())});
        QVERIFY2(base.code == 0, base.err.constData());
        Run r = cli({"edit", "--method", "rome", "--prompt", "Peanaim Fosha competes in", "--subject", "Peanaim Fosha", "--target", "Zuluball",
                     "--db", q(db), "--json"});
        QVERIFY2(r.code == 0, r.err.constData());
        const QJsonObject o = QJsonDocument::fromJson(r.out).object();
        QCOMPARE(o["id"].toInt(), 1);
        QCOMPARE(o["method"].toString(), QString("rome"));
        const QJsonObject res = o["results"].toArray().at(0).toObject();
        QCOMPARE(res["request"].toObject()["prompt"].toString(), QString("{} competes in"));  // templated at the subject
        QVERIFY(res["p_new_after"].toDouble() > res["p_old_after"].toDouble());
        QVERIFY(res["p_new_before"].toDouble() < 0.01);
        Run h = cli({"history", "--db", q(db), "--json"});
        QVERIFY2(h.code == 0 && h.out.contains("rome"), h.err.constData());
        QVERIFY(cli({"undo", "--db", q(db)}).code == 0);
        Run after_undo = cli({"hash", "--db", q(db)});
        QCOMPARE(after_undo.out.trimmed().split('\n').last(), base.out.trimmed().split('\n').last());
        // Refusals: one line, non-zero, nothing recorded.
        const QStringList common = {"--db", q(db), "--subject", "Peanaim Fosha"};
        const std::vector<std::pair<QStringList, const char*>> bad = {
            {{"edit", "--method", "rome", "--prompt", "Somebody competes in", "--target", "Zuluball"}, "not in the prompt"},
            {{"edit", "--method", "rome", "--prompt", "{} competes in", "--target", ""}, "target is empty"},
            {{"edit", "--method", "rome", "--prompt", "{} competes in", "--target", "Zuluball", "--set", "layers=[9]"}, "layer"},
            {{"edit", "--method", "memit", "--prompt", "{} competes in", "--target", "Zuluball", "--set", "context_templates=[[\"{}\"],[\"no placeholder\"]]"},
             "{}"},
            {{"edit", "--method", "rome", "--blue", "--prompt", "{} competes in", "--target", "Zuluball"}, "blue"},
            {{"edit", "--method", "teleport", "--prompt", "{} competes in", "--target", "Zuluball"}, "teleport"},
        };
        for (const auto& [args, needle] : bad) {
            Run e = cli(args + common);
            QVERIFY2(e.code != 0 && e.err.trimmed().count('\n') == 0 && e.err.contains(needle), qPrintable(args.join(' ') + ": " + e.err));
        }
        QCOMPARE(cli({"hash", "--db", q(db)}).out.trimmed().split('\n').last(), base.out.trimmed().split('\n').last());
        // A malformed dataset record is named by its index.
        {
            std::ofstream f(tmp.path / "bad.json");
            f << R"([{"case_id": 0, "requested_rewrite": {"prompt": "{} competes in", "subject": "Peanaim Fosha", "relation_id": "P641",
                     "target_new": {"str": "Zuluball"}, "target_true": {"str": "Loraifelball"}}},
                    {"case_id": 1, "requested_rewrite": {"prompt": "{} competes in", "relation_id": "P641"}}])";
        }
        Run e = cli({"eval", "--method", "rome", "--dataset", q(tmp.path / "bad.json"), "--edits", "1"});
        QVERIFY2(e.code != 0 && e.err.contains("record 1"), e.err.constData());
    }

    void cliEvalCanBeInterrupted() {
        // Ctrl-C during the second method: the first is still reported, the exit code says so.
        QProcess p;
        p.start(QString(ENGRAM_CLI_PATH), {"eval", "--method", "memit,memit+blue", "--edits", "30", "--batch", "30", "--fluency-cases", "0"});
        QVERIFY(p.waitForStarted());
        QByteArray err;
        QElapsedTimer timer;
        timer.start();
        while (!err.contains("== memit+blue") && timer.elapsed() < 240000) {
            p.waitForReadyRead(1000);
            err += p.readAllStandardError();
        }
        QVERIFY2(err.contains("== memit+blue"), err.constData());
        ::kill(static_cast<pid_t>(p.processId()), SIGINT);
        QVERIFY(p.waitForFinished(240000));
        err += p.readAllStandardError();
        const QByteArray out = p.readAllStandardOutput();
        QCOMPARE(p.exitCode(), 130);
        QVERIFY2(out.contains("interrupted: 1 of 2 methods finished"), out.constData());
        QVERIFY2(out.contains("\nmemit "), out.constData());
        QVERIFY(!out.contains("memit+blue "));
        QVERIFY2(err.contains("interrupted during memit+blue"), err.constData());
    }

    void refusesBadInput() {
        auto m = load();
        EditRequest r = requests(1)[0];
        auto expect = [&](const EditRequest& q, const char* needle) {
            try {
                validate_request(*m, q);
                QFAIL(qPrintable(QString("accepted a bad request (%1)").arg(needle)));
            } catch (const Error& e) {
                QVERIFY2(std::string(e.what()).find(needle) != std::string::npos, e.what());
                QCOMPARE(e.kind(), ErrorKind::Argument);
            }
        };
        EditRequest q = r;
        q.prompt = "Peanaim Fosha competes in";  // no "{}"
        expect(q, "exactly one \"{}\"");
        q = r;
        q.target_new = "  ";
        expect(q, "target is empty");
        q = r;
        q.subject = "";
        expect(q, "subject is empty");
        // A context template without "{}".
        EditHParams hp = hparams(*m, EditMethod::Memit);
        QVERIFY_THROWS_EXCEPTION(Error, apply_hparam_setting(hp, "context_templates=[[\"{}\"],[\"no placeholder\"]]"); validate_edit_hparams(hp, model_shape(*m)));
        // A layer out of range.
        hp = hparams(*m, EditMethod::Rome);
        apply_hparam_setting(hp, "layers=[9]");
        QVERIFY_THROWS_EXCEPTION(Error, validate_edit_hparams(hp, model_shape(*m)));
        QVERIFY_THROWS_EXCEPTION(Error, EditSession(*m, hp));
        // Statistics computed for another model.
        StatsOptions so;
        so.n_samples = 50;
        std::vector<LayerStats> st = second_moments(*m, {1}, so);
        const fs::path file = stats_cache_path(*m, 1, st[0].corpus_hash, 50);
        QVERIFY(fs::exists(file));
        HParams small = m->hparams();
        auto other = Model::random(Arch::Gpt2, small, 3);
        try {
            read_layer_stats(file, *other, 1);
            QFAIL("accepted statistics of another model");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("another model") != std::string::npos, e.what());
        }
        try {
            read_layer_stats(file, *m, 2);
            QFAIL("accepted statistics of another layer");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("layer") != std::string::npos, e.what());
        }
    }
};

QTEST_APPLESS_MAIN(TestEditing)
#include "tst_editing.moc"
