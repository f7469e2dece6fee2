// Adapters beside the weights and GRACE: codebook ops and their exact replay, routing (only the
// routed position of a matching query changes; generation equals the uncached forward), the state
// hash, the fast trace against the naive one with a codebook installed, GRACE edits on the Fact
// World model (insert, split on a label conflict), a project mixing ROME, MEMIT and GRACE through
// rollback, revert, replay and history export/import, a schema-1 project written before adapters
// existed, and the refusals.
#include <QtTest>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <fstream>
#include <set>

#include "engram/adapter.h"
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
#include "engram/trace.h"
#include "demo_requests.h"
#include "test_util.h"

using namespace engram;
using engram::test::TempDir;
using engram::test::counterfact;
using engram::test::demo_dir;
namespace fs = std::filesystem;

namespace {

AdapterOp grace_op(const std::string& what, const std::string& entry, int layer, nlohmann::json extra = nlohmann::json::object()) {
    AdapterOp op;
    op.adapter = "grace.L" + std::to_string(layer) + ".mlp.down";
    op.kind = "grace_codebook";
    op.slot = Slot::FfnDown;
    op.layer = layer;
    op.op = what;
    op.params = std::move(extra);
    op.params["entry"] = entry;
    return op;
}

std::unique_ptr<Model> small_gpt2() {
    HParams hp;
    hp.n_layer = 3;
    hp.n_embd = 32;
    hp.n_head = 4;
    hp.n_head_kv = 4;
    hp.head_dim = 8;
    hp.n_ff = 64;
    hp.n_vocab = 50;
    hp.n_ctx = 32;
    hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    return Model::random(Arch::Gpt2, hp, 7);
}

// Logits [T, V] of one sequence, routed at `route` (-2: the default).
at::Tensor logits_of(const Model& m, const std::vector<int64_t>& ids, int64_t route = -2, Hooks* hooks = nullptr) {
    c10::InferenceMode guard;
    ForwardInput in;
    in.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
    if (route != -2) in.route_position = at::full({1}, route, at::kLong);
    return m.forward(in, hooks).logits[0];
}

at::Tensor key_at(const Model& m, const std::vector<int64_t>& ids, int layer, int64_t pos) {
    Hooks hooks;
    hooks.capture(Site::MlpKey, layer);
    logits_of(m, ids, -2, &hooks);
    return hooks.captured(Site::MlpKey, layer)[0][pos].clone();
}

double p_target(const Model& m, const EditRequest& r) {
    return std::exp(-eval::score_targets(m, {{r.prompt_text(), r.target_new}}).at(0).nll);
}

}  // namespace

class TestGrace : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void codebookOpsAndRefusals() {
        auto m = small_gpt2();
        const int64_t n_ff = 64, n_embd = 32;
        AdapterOp ins = grace_op("insert", "a", 1, {{"eps", 2.0}, {"label", {3}}});
        ins.tensors = {{"key", at::ones({n_ff})}, {"value", at::zeros({n_embd})}};
        m->apply_adapter_op(ins);
        const auto list = m->adapters().list();
        QCOMPARE(list.size(), size_t(1));
        QCOMPARE(list[0].description["entries"].get<int>(), 1);
        const std::string h1 = state_hash(*m);
        QVERIFY(h1 != state_hash_of_base(m->fingerprint()));

        // An op on an entry that is not there changes nothing (its insert was reverted).
        AdapterOp ghost = grace_op("set_eps", "nobody", 1, {{"eps", 5.0}});
        m->apply_adapter_op(ghost);
        QCOMPARE(state_hash(*m), h1);

        // Refusals leave the set as it was.
        auto refused = [&](AdapterOp op, const char* needle) {
            try {
                m->apply_adapter_op(op);
            } catch (const Error& e) {
                QVERIFY2(std::string(e.what()).find(needle) != std::string::npos, e.what());
                QCOMPARE(state_hash(*m), h1);
                return;
            }
            QFAIL(qPrintable(QString("accepted an op that should fail: ") + needle));
        };
        refused(grace_op("set_eps", "a", 1, {{"eps", 0.0}}), "must be > 0");
        refused(grace_op("set_eps", "a", 1, {{"eps", -1.0}}), "must be > 0");
        AdapterOp far_layer = ins;
        far_layer.layer = 3;
        far_layer.adapter = "grace.L3.mlp.down";
        refused(far_layer, "out of range");
        AdapterOp bad_attach = ins;
        bad_attach.slot = Slot::AttnQkv;
        bad_attach.adapter = "x";
        refused(bad_attach, "mlp.down");
        AdapterOp bad_shape = grace_op("insert", "b", 1, {{"eps", 1.0}});
        bad_shape.tensors = {{"key", at::ones({n_ff + 1})}, {"value", at::zeros({n_embd})}};
        refused(bad_shape, "needs a key of 64");
        refused(grace_op("grow", "a", 1), "unknown GRACE op");
        AdapterOp twice = ins;
        refused(twice, "inserted twice");

        // Removing the adapter brings back the base hash: no weight changed.
        m->adapters().clear();
        QCOMPARE(state_hash(*m), state_hash_of_base(m->fingerprint()));
    }

    void routingChangesOnlyAMatchingQuery() {
        auto m = small_gpt2();
        const std::vector<int64_t> prompt{1, 5, 9, 11}, other{2, 30, 44, 17, 8};
        const at::Tensor base_prompt = logits_of(*m, prompt), base_other = logits_of(*m, other);
        AdapterOp ins = grace_op("insert", "a", 1, {{"eps", 1e-3}, {"label", {3}}});
        ins.tensors = {{"key", key_at(*m, prompt, 1, 3).to(at::kFloat)}, {"value", at::full({32}, 0.5)}};
        m->apply_adapter_op(ins);
        const at::Tensor edited = logits_of(*m, prompt);
        // Positions before the routed one are untouched (causal), the routed one changes.
        QVERIFY(at::equal(edited.narrow(0, 0, 3), base_prompt.narrow(0, 0, 3)));
        QVERIFY((edited[3] - base_prompt[3]).abs().max().item<double>() > 1e-3);
        // Another sequence's key is far outside the radius: bit for bit the base model.
        QVERIFY(at::equal(logits_of(*m, other), base_other));
        // Routed nowhere: the base model.
        QVERIFY(at::equal(logits_of(*m, prompt, -1), base_prompt));
        // Teacher forcing routed on the prompt's last token equals the prompt's own forward there.
        std::vector<int64_t> longer = prompt;
        longer.push_back(7);
        QVERIFY((logits_of(*m, longer, 3)[3] - edited[3]).abs().max().item<double>() < 1e-5);

        // Generation routes on the prefill: the same tokens as uncached forwards routed on the prompt.
        GenerateOptions g;
        g.max_new_tokens = 6;
        const std::vector<int64_t> gen = generate(*m, prompt, g);
        std::vector<int64_t> seq = prompt;
        while (seq.size() < gen.size()) {
            const at::Tensor l = logits_of(*m, seq, int64_t(prompt.size()) - 1);
            seq.push_back(l[int64_t(seq.size()) - 1].argmax().item<int64_t>());
        }
        QCOMPARE(seq, gen);

        // A copy of the set is a snapshot: an op on the model does not reach it.
        const AdapterSet snapshot = m->adapters();
        m->apply_adapter_op(grace_op("set_eps", "a", 1, {{"eps", 3.0}}));
        QCOMPARE(dynamic_cast<const Adapter*>(snapshot.find(ins.adapter))->describe()["eps_max"].get<double>(), 1e-3);
    }

    void graceEditsAFactAndSplitsOnConflict() {
        auto m = Model::load(demo_dir());
        const auto reqs = counterfact(2);
        EditHParams hp = default_edit_hparams(model_shape(*m), EditMethod::Grace, false);
        QCOMPARE(hp.layers.size(), size_t(1));
        const double before = p_target(*m, reqs[0]);
        const at::Tensor unrelated = logits_of(*m, m->tokenizer()->encode(reqs[1].prompt_text(), true).ids);
        Edit e;
        {
            EditSession s(*m, hp);
            e = s.compute({reqs[0]});
        }
        QVERIFY(m->adapters().empty());  // computing leaves the model as it was
        QCOMPARE(e.adapter_ops.size(), size_t(1));
        QCOMPARE(e.adapter_ops[0].op, std::string("insert"));
        QVERIFY(e.deltas.empty());
        apply_edit(*m, e);
        const double after = p_target(*m, reqs[0]);
        qInfo("GRACE on \"%s\" -> %s: p %.4f -> %.4f", reqs[0].prompt_text().c_str(), reqs[0].target_new.c_str(), before, after);
        QVERIFY(after > 0.5);
        QVERIFY(after > before);
        QVERIFY(at::equal(logits_of(*m, m->tokenizer()->encode(reqs[1].prompt_text(), true).ids), unrelated));

        // The second request with a radius so large that it falls inside the first entry's: another
        // label, so the first entry's radius is halved and a new entry is inserted.
        hp.grace_eps = 1e4;
        auto m2 = Model::load(demo_dir());
        EditSession s2(*m2, hp);
        Edit first = s2.compute({reqs[0]});
        apply_edit(*m2, first);
        Edit second = s2.compute({reqs[1]});
        QCOMPARE(second.adapter_ops.size(), size_t(2));
        QCOMPARE(second.adapter_ops[0].op, std::string("set_eps"));
        QCOMPARE(second.adapter_ops[1].op, std::string("insert"));
        const double d = second.metrics["requests"][0]["distance"].get<double>();
        QCOMPARE(second.adapter_ops[0].params["eps"].get<double>(), d / 2 - 1e-5);
        QCOMPARE(second.adapter_ops[1].params["eps"].get<double>(), d / 2);
        apply_edit(*m2, second);
        QCOMPARE(second.metrics["codebook_entries"].get<int>(), 2);
        QVERIFY(p_target(*m2, reqs[0]) > 0.5);
        QVERIFY(p_target(*m2, reqs[1]) > 0.5);
    }

    void fastTraceEqualsNaiveWithACodebook() {
        auto m = Model::load(demo_dir());
        const auto reqs = counterfact(1);
        const EditRequest& r = reqs[0];
        TraceInput in = make_trace_input(*m, r.prompt_text(), r.subject);
        TraceOptions o;
        o.samples = 3;
        o.window = 2;
        o.noise.relative = true;
        o.noise.level = 3.0;
        o.embedding_std = subject_embedding_std(*m, {r.subject});
        o.target = r.target_new;
        const TraceResult plain = causal_trace(*m, in, o);
        EditSession s(*m, default_edit_hparams(model_shape(*m), EditMethod::Grace, false));
        apply_edit(*m, s.compute({r}));
        o.naive = true;
        const TraceResult naive = causal_trace(*m, in, o);
        o.naive = false;
        const TraceResult fast = causal_trace(*m, in, o);
        qInfo("p(%s): clean %.4f without the codebook, %.4f with it", r.target_new.c_str(), plain.clean_prob, fast.clean_prob);
        QVERIFY(fast.clean_prob > plain.clean_prob + 0.1);
        QVERIFY(std::abs(fast.clean_prob - naive.clean_prob) < 1e-5);
        QVERIFY(std::abs(fast.corrupted_prob - naive.corrupted_prob) < 1e-5);
        double max_diff = 0;
        for (const TraceKindResult& k : fast.kinds)
            for (size_t t = 0; t < k.scores.size(); ++t)
                for (size_t l = 0; l < k.scores[t].size(); ++l)
                    max_diff = std::max(max_diff, std::abs(k.scores[t][l] - naive.kind(k.kind)->scores[t][l]));
        qInfo("max |fast - naive| %.3g", max_diff);
        QVERIFY(max_diff < 1e-5);
    }

    void projectWithRomeMemitAndGraceReplays() {
        TempDir tmp("grace");
        const fs::path file = tmp.path / "mixed.engram";
        auto m = Model::load(demo_dir());
        auto project = Project::create(file, *m);
        const auto reqs = counterfact(4);
        const ModelShape shape = model_shape(*m);
        std::vector<int64_t> ids;
        auto record = [&](EditMethod method, const EditRequest& r) {
            EditSession s(*m, default_edit_hparams(shape, method, false));
            Edit e = s.compute({r});
            ids.push_back(project->record(*m, e));
        };
        record(EditMethod::Rome, reqs[0]);
        record(EditMethod::Grace, reqs[1]);
        record(EditMethod::Memit, reqs[2]);
        record(EditMethod::Grace, reqs[3]);
        const std::string head = state_hash(*m);
        const auto hist = project->history();
        QCOMPARE(hist[1].n_adapter_ops, int64_t(1));
        QVERIFY(std::find(hist[1].tensors.begin(), hist[1].tensors.end(), adapter_touch_name(hist[1].edit.metrics["adapter"])) !=
                hist[1].tensors.end());

        for (const HashCheck& c : project->verify(*m)) QVERIFY2(c.ok(), qPrintable(QString("edit %1").arg(c.edit_id)));
        QCOMPARE(state_hash(*m), head);
        // Rollback to every point gives the hash recorded there.
        for (size_t i = 0; i < ids.size(); ++i) {
            project->rollback(*m, ids[i]);
            QCOMPARE(state_hash(*m), hist[i].edit.state_hash_after);
        }
        project->rollback(*m, 0);
        QCOMPARE(state_hash(*m), state_hash_of_base(m->fingerprint()));
        QVERIFY(m->adapters().empty());
        project->restore_active(*m, ids);
        QCOMPARE(state_hash(*m), head);

        // Revert the first GRACE edit: the model equals a fresh load replaying the remaining edits.
        project->revert(*m, ids[1]);
        const std::string reverted = state_hash(*m);
        QVERIFY(reverted != head);
        auto fresh = project->open_model(demo_dir());
        QCOMPARE(state_hash(*fresh), reverted);
        QCOMPARE(project->head_state_hash(), reverted);
        // Undo the revert (redo) and the head returns.
        project->redo(*m);
        QCOMPARE(state_hash(*m), head);

        // Export and import into a new project reproduce every recorded state.
        const nlohmann::json h = project->export_history();
        QCOMPARE(h["version"].get<int>(), 2);
        auto other = Model::load(demo_dir());
        auto copy = Project::create(tmp.path / "copy.engram", *other);
        copy->import_history(*other, h);
        QCOMPARE(state_hash(*other), head);
        // A damaged adapter tensor in the history is refused and nothing is imported.
        nlohmann::json bad = h;
        for (auto& e : bad["edits"])
            if (!e["adapter_ops"].empty()) e["adapter_ops"][0]["tensors"][0]["sha256"] = std::string(64, '0');
        auto third = Model::load(demo_dir());
        auto target = Project::create(tmp.path / "bad.engram", *third);
        QVERIFY_THROWS_EXCEPTION(Error, target->import_history(*third, bad));
        QVERIFY(target->history().empty());
        QVERIFY(third->adapters().empty());
        // Exporting a model with adapters installed is refused with a clear message.
        try {
            export_model(*m, tmp.path / "out", demo_dir(), DType::F32, nlohmann::json::object());
            QFAIL("export-model accepted a model with a GRACE codebook");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("adapter edits installed") != std::string::npos, e.what());
        }
        QVERIFY(!fs::exists(tmp.path / "out" / "model.safetensors"));
    }

    void schemaOneProjectKeepsItsHashes() {
        TempDir tmp("grace-v1");
        const fs::path file = tmp.path / "v1.engram";
        fs::copy_file(fs::path(ENGRAM_TEST_DATA) / "projects" / "schema_v1.engram", file);
        {
            ProjectOptions ro;
            ro.read_only = true;
            auto p = Project::open(file, ro);  // read as it is, not migrated
            QCOMPARE(p->history().size(), size_t(3));
            auto m = p->open_model(demo_dir());
            for (const HashCheck& c : p->verify(*m)) QVERIFY(c.ok());
            QCOMPARE(state_hash(*m), p->head_state_hash());
        }
        auto p = Project::open(file);  // migrated to schema 2 in place
        auto m = p->open_model(demo_dir());
        const std::string head = p->head_state_hash();
        QCOMPARE(state_hash(*m), head);
        for (const HashCheck& c : p->verify(*m)) QVERIFY(c.ok());
        // A GRACE edit joins the old history and undoes like any other.
        EditSession s(*m, default_edit_hparams(model_shape(*m), EditMethod::Grace, false));
        Edit e = s.compute(counterfact(1, 5));
        p->record(*m, e);
        QVERIFY(!m->adapters().empty());
        p->undo(*m);
        QCOMPARE(state_hash(*m), head);
        QVERIFY(m->adapters().empty());
    }

    void registryListsEveryMethodAndSetting() {
        // Every method the names parse to is in the registry, with a compute function, and every
        // setting a method reads is a real hyperparameter with a line of help.
        const nlohmann::json keys = EditHParams().to_json();
        std::set<std::string> listed;
        for (const MethodInfo& m : edit_methods()) {
            QVERIFY(m.compute != nullptr);
            listed.insert(edit_method_name(m.method));
            for (const char* k : m.settings) {
                QVERIFY2(keys.contains(k), k);
                QVERIFY2(std::string(setting_help(k)).size() > 10, k);
            }
        }
        for (const char* name : {"rome", "memit", "memit_seq", "alphaedit", "pmet", "ft", "grace"}) QVERIFY2(listed.count(name), name);
        for (const auto& [k, v] : keys.items())
            if (k != "method") QVERIFY2(std::string(setting_help(k)).size() > 10, k.c_str());
        QCOMPARE(method_info(EditMethod::Grace).produces, Produces::Adapters);
        // A form shows the method's own settings only: ROME has no L2 or ft_lr.
        const nlohmann::ordered_json rome = method_settings(default_edit_hparams({"gpt2", 6, 128, 512}, EditMethod::Rome, false));
        QVERIFY(rome.contains("v_lr") && rome.contains("layers"));
        QVERIFY(!rome.contains("L2") && !rome.contains("ft_lr") && !rome.contains("grace_eps"));
        QVERIFY(method_name_list().find("grace") != std::string::npos);
    }

    void singleEditProtocolRestoresTheCodebook() {
        // eval --single: each edit is scored on its own and taken back, the codebook included.
        auto m = Model::load(demo_dir());
        eval::DatasetOptions dopt;
        dopt.limit = 3;
        dopt.zsre_target = eval::ZsreTarget::Alt;
        const eval::Dataset ds = eval::load_dataset(demo_dir() / "zsre.json", dopt);
        eval::SequentialOptions so;
        so.edits = 3;
        so.batch = 1;
        so.restore_between = true;
        so.fluency_cases = 0;
        so.unedited_cases = 0;
        so.perplexity_file = demo_dir() / "held_out.txt";
        const auto r = eval::run_sequential(*m, ds, default_edit_hparams(model_shape(*m), EditMethod::Grace, false), {}, so);
        QVERIFY(m->adapters().empty());
        QCOMPARE(state_hash(*m), state_hash_of_base(m->fingerprint()));
        qInfo("single GRACE edits: reliability %.1f -> %.1f, locality %.1f", r.pre.reliability, r.post.reliability, r.post.locality);
        QVERIFY(r.post.reliability >= 90);
        QVERIFY(r.post.locality >= 90);
    }

    void badSettingsAreRefused() {
        auto m = Model::load(demo_dir());
        EditHParams hp = default_edit_hparams(model_shape(*m), EditMethod::Grace, false);
        auto refused = [&](const char* setting, const char* needle) {
            EditHParams h = hp;
            try {
                apply_hparam_setting(h, setting);
                validate_edit_hparams(h, model_shape(*m));
            } catch (const Error& e) {
                QVERIFY2(std::string(e.what()).find(needle) != std::string::npos, e.what());
                return;
            }
            QFAIL(qPrintable(QString("accepted ") + setting));
        };
        refused("grace_eps=0", "grace_eps");
        refused("grace_eps=-2", "grace_eps");
        refused("layers=6", "out of range");
        refused("layers=1,2", "one layer");
        refused("grace_val_init=hot", "cold or warm");
        refused("grace_replacement=some", "last or all");
    }
};

QTEST_APPLESS_MAIN(TestGrace)
#include "tst_grace.moc"
