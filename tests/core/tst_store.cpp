// The edit store: edits as values applied bit-deterministically, projects that replay, roll back,
// undo, redo and revert exactly, exports that load back identical, clear refusals that leave the
// file untouched, and the storage an edit costs. Synthetic low-rank edits stand in for ROME/MEMIT.
#include <QtTest>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <fstream>
#include <functional>
#include <sqlite3.h>
#include <sys/stat.h>

#include "engram/checkpoint.h"
#include "engram/edit.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"
#include "engram/store.h"
#include "test_util.h"

using namespace engram;
using engram::test::max_abs_diff;
using engram::test::reference_dir;
using engram::test::TempDir;
using engram::test::cli;
using engram::test::error_of;
using engram::test::file_sha;
using engram::test::q;
using engram::test::Run;
namespace fs = std::filesystem;

namespace {

fs::path copy_model(const fs::path& src, const fs::path& dst) {
    fs::create_directories(dst);
    for (const auto& e : fs::directory_iterator(src)) fs::copy_file(e.path(), dst / e.path().filename());
    return dst;
}

// A WordLevel tokenizer over w0..w{n-1}, so the exported folder has tokenizer files to carry.
void write_word_tokenizer(const fs::path& dir, int n) {
    nlohmann::json vocab = nlohmann::json::object();
    for (int i = 0; i < n; ++i) vocab["w" + std::to_string(i)] = i;
    nlohmann::json tok = {{"version", "1.0"},
                          {"added_tokens", nlohmann::json::array()},
                          {"normalizer", nullptr},
                          {"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
                          {"post_processor", nullptr},
                          {"decoder", nullptr},
                          {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "w0"}}}};
    std::ofstream(dir / "tokenizer.json") << tok.dump();
    std::ofstream(dir / "tokenizer_config.json") << R"({"model_max_length": 64})";
}

Edit synthetic(const Model& m, int layer, int64_t rank, uint64_t seed, int64_t artifact_kib = 0) {
    SyntheticEditOptions o;
    o.layer = layer;
    o.rank = rank;
    o.seed = seed;
    o.artifact_kib = artifact_kib;
    return make_synthetic_edit(m, o);
}

// The model a fresh process would build for edits `ids`: the base, then each stored edit applied
// in order. Independent of the store's transition logic.
std::unique_ptr<Model> fresh_replay(const Project& p, const fs::path& dir, const std::vector<int64_t>& ids) {
    auto m = Model::load(dir);
    for (int64_t id : ids) apply_edit(*m, p.edit(id));
    return m;
}

bool same_weights(const Model& a, const Model& b) {
    for (const auto& ref : a.weight_refs()) {
        const at::Tensor& x = a.weight(ref.slot, ref.layer);
        const at::Tensor& y = b.weight(ref.slot, ref.layer);
        if (x.sizes() != y.sizes() || x.scalar_type() != y.scalar_type() || !at::equal(x, y)) return false;
    }
    return true;
}

int64_t sqlite_int(const fs::path& file, const char* sql) {
    sqlite3* db = nullptr;
    sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    sqlite3_stmt* st = nullptr;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

std::string sqlite_text(const fs::path& file, const char* sql) {
    sqlite3* db = nullptr;
    sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
    sqlite3_stmt* st = nullptr;
    std::string v;
    if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

void sqlite_exec(const fs::path& file, const char* sql) {
    sqlite3* db = nullptr;
    QCOMPARE(sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr), SQLITE_OK);
    QCOMPARE(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
}

// A project with `k` synthetic edits on the given reference model, spread over layers.
struct Fixture {
    TempDir tmp{"store"};
    fs::path model_dir, db;
    std::unique_ptr<Model> model;
    std::unique_ptr<Project> project;
    std::vector<Edit> edits;

    Fixture(const std::string& reference, int k, int64_t rank = 3) {
        model_dir = reference_dir(reference);
        db = tmp.path / "p.engram";
        model = Model::load(model_dir);
        project = Project::create(db, *model);
        for (int i = 0; i < k; ++i) {
            Edit e = synthetic(*model, i % static_cast<int>(model->hparams().n_layer), rank + i % 2, 100 + i);
            project->record(*model, e);
            edits.push_back(e);
        }
    }
};

}  // namespace

class TestStore : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void deltaBlobsRoundTrip();
    void applyRuleIsTheDocumentedOne();
    void applyIsBitDeterministicAcrossThreads();
    void applyNeverWritesIntoTheBase();
    void schemaIsVersionedAndWal();
    void rollbackMatchesRecordedAndFreshReplay_data();
    void rollbackMatchesRecordedAndFreshReplay();
    void undoRedo();
    void revertOutOfOrder();
    void exportModelLoadsBackIdentical();
    void historyJsonRoundTrip();
    void tracesAndEvaluations();
    void restoreActiveUndoesRollbackAndRevert();
    void saveAsWritesAnIdenticalProject();
    void refusesAnotherModelsProject();
    void refusesCorruptedFiles();
    void refusesNewerSchema();
    void refusesReadOnlyFile();
    void fullDiskLeavesProjectUnchanged();
    void refusesAStaleModelAfterAnotherProcessChangedTheProject();
    void cliEndToEnd();
    void storageOfARankOneEdit();
};

void TestStore::deltaBlobsRoundTrip() {
    at::Generator gen = at::detail::createCPUGenerator(1);
    Delta lr{"w", DeltaKind::LowRank, {5, 7}};
    lr.u = at::normal(0, 1, {5, 2}, gen);
    lr.v = at::normal(0, 1, {7, 2}, gen);
    Delta rows{"w", DeltaKind::DenseRows, {5, 7}};
    rows.rows = at::tensor(std::vector<int64_t>{4, 0, 4}, at::kLong);
    rows.values = at::normal(0, 1, {3, 7}, gen).to(at::kDouble);
    Delta dense{"w", DeltaKind::Dense, {5, 7}};
    dense.values = at::normal(0, 1, {5, 7}, gen);
    for (const Delta* d : {&lr, &rows, &dense}) {
        const auto blob = delta_blob(*d);
        Delta back = delta_from_blob(d->tensor, d->kind, d->shape, d->dtype(), d->rank(), blob.data(), blob.size());
        QCOMPARE(back.rank(), d->rank());
        QCOMPARE(back.dtype(), d->dtype());
        for (auto [a, b] : {std::pair{&back.u, &d->u}, {&back.v, &d->v}, {&back.rows, &d->rows}, {&back.values, &d->values}}) {
            QCOMPARE(a->defined(), b->defined());
            if (a->defined()) QVERIFY(at::equal(*a, *b));
        }
        // One byte short is a format error, not a crash.
        QVERIFY(!error_of([&] { delta_from_blob(d->tensor, d->kind, d->shape, d->dtype(), d->rank(), blob.data(), blob.size() - 1); }).isEmpty());
    }
    // Sizes whose byte count wraps around 2^64 are refused before anything is allocated: F64 [2^61]
    // would need 2^64 bytes (0 after wrapping), a rank of 2^61 likewise.
    const std::vector<uint8_t> empty;
    QVERIFY(error_of([&] { tensor_from_blob(DType::F64, {int64_t(1) << 61}, empty.data(), 0, "t"); }).contains("do not hold"));
    const std::vector<uint8_t> small(64);
    for (DeltaKind kind : {DeltaKind::LowRank, DeltaKind::DenseRows})
        QVERIFY(!error_of([&] { delta_from_blob("w", kind, {int64_t(1) << 62, 2}, DType::F64, int64_t(1) << 61, small.data(), small.size()); })
                     .isEmpty());
    Delta bad = rows;
    bad.rows = at::tensor(std::vector<int64_t>{5}, at::kLong);
    bad.values = at::zeros({1, 7});
    QVERIFY(error_of([&] { bad.validate(); }).contains("outside"));
}

void TestStore::applyRuleIsTheDocumentedOne() {
    auto model = Model::load(reference_dir("gpt2-tiny"));
    const std::string name = model->tensor_name(Slot::FfnDown, 1);
    const at::Tensor w0 = model->weight(Slot::FfnDown, 1).clone();  // [64, 256]
    at::Generator gen = at::detail::createCPUGenerator(7);
    // Dense and dense rows: one double addition per element, rounded once, so libtorch's own
    // elementwise double arithmetic gives the very same bits.
    Delta dense{name, DeltaKind::Dense, {64, 256}};
    dense.values = at::normal(0, 0.01, {64, 256}, gen);
    apply_delta(*model, dense);
    const at::Tensor expected_dense = (w0.to(at::kDouble) + dense.values.to(at::kDouble)).to(at::kFloat);
    QVERIFY(at::equal(model->weight(Slot::FfnDown, 1), expected_dense));

    Delta rows{name, DeltaKind::DenseRows, {64, 256}};
    rows.rows = at::tensor(std::vector<int64_t>{3, 10, 3}, at::kLong);
    rows.values = at::normal(0, 0.01, {3, 256}, gen);
    apply_delta(*model, rows);
    at::Tensor expected_rows = expected_dense.clone();
    for (int t = 0; t < 3; ++t) {
        const int64_t r = rows.rows[t].item<int64_t>();
        expected_rows[r] = (expected_rows[r].to(at::kDouble) + rows.values[t].to(at::kDouble)).to(at::kFloat);
    }
    QVERIFY(at::equal(model->weight(Slot::FfnDown, 1), expected_rows));
    QVERIFY(!at::equal(expected_rows, expected_dense));

    // Low rank: D = u v^T in float64. BLAS may sum in another order, so allow one float ulp.
    Delta lr{name, DeltaKind::LowRank, {64, 256}};
    lr.u = at::normal(0, 0.1, {64, 4}, gen);
    lr.v = at::normal(0, 0.1, {256, 4}, gen);
    apply_delta(*model, lr);
    const at::Tensor reference = (expected_rows.to(at::kDouble) + at::matmul(lr.u.to(at::kDouble), lr.v.to(at::kDouble).t()));
    const at::Tensor got = model->weight(Slot::FfnDown, 1).to(at::kDouble);
    const at::Tensor ulp = at::abs(reference).to(at::kFloat).to(at::kDouble) * std::ldexp(1.0, -23) + 1e-30;
    QVERIFY(((got - reference).abs() <= ulp).all().item<bool>());
    QVERIFY(max_abs_diff(got, expected_rows) > 1e-4);  // it did change
    // And bit for bit the rule as edit.h words it, written out naively here.
    const at::Tensor w = expected_rows.contiguous(), u = lr.u.contiguous(), v = lr.v.contiguous();
    at::Tensor literal = at::empty({64, 256}, at::kFloat);
    for (int64_t i = 0; i < 64; ++i)
        for (int64_t j = 0; j < 256; ++j) {
            double d = 0.0;
            for (int64_t k = 0; k < 4; ++k) {
                volatile double p = double(u.data_ptr<float>()[i * 4 + k]) * double(v.data_ptr<float>()[j * 4 + k]);  // no FMA
                d += p;
            }
            literal.data_ptr<float>()[i * 256 + j] = static_cast<float>(double(w.data_ptr<float>()[i * 256 + j]) + d);
        }
    QVERIFY(at::equal(model->weight(Slot::FfnDown, 1), literal));
}

void TestStore::applyIsBitDeterministicAcrossThreads() {
    // Applied from its stored form, twice, with different thread counts: identical bits.
    Fixture f("gpt2-tiny", 1, 64);
    const Edit stored = f.project->edit(f.edits[0].id);
    QCOMPARE(stored.deltas.size(), size_t(1));
    QCOMPARE(stored.deltas[0].rank(), int64_t(64));
    const int threads = at::get_num_threads();
    std::vector<at::Tensor> results;
    for (int n : {1, 4, 3}) {
        at::set_num_threads(n);
        auto m = Model::load(f.model_dir);
        apply_edit(*m, stored);
        results.push_back(m->weight(Slot::FfnDown, 0));
        QCOMPARE(state_hash(*m), f.edits[0].state_hash_after);
    }
    at::set_num_threads(threads);
    QVERIFY(at::equal(results[0], results[1]));
    QVERIFY(at::equal(results[0], results[2]));
    // Bitwise equal, not just close: compare the raw bytes too.
    QCOMPARE(std::memcmp(results[0].contiguous().data_ptr(), results[1].contiguous().data_ptr(), results[0].numel() * 4), 0);
    // And the in-memory model the edit was recorded on holds the same bits.
    QVERIFY(at::equal(results[0], f.model->weight(Slot::FfnDown, 0)));
}

void TestStore::applyNeverWritesIntoTheBase() {
    auto m = Model::load(reference_dir("llama-tiny"));
    const at::Tensor base = m->base_weight(Slot::FfnDown, 2);
    const at::Tensor before = base.clone();
    apply_edit(*m, synthetic(*m, 2, 2, 5));
    QVERIFY(!m->is_base(Slot::FfnDown, 2));
    QVERIFY(at::equal(m->base_weight(Slot::FfnDown, 2), before));
    QVERIFY(m->base_weight(Slot::FfnDown, 2).is_same(base));
    // A shape mismatch is refused before anything changes.
    Edit bad = synthetic(*m, 1, 1, 1);
    bad.deltas.push_back(bad.deltas[0]);
    bad.deltas[1].tensor = m->tensor_name(Slot::AttnQ, 0);  // [64, 64], not [64, 176]
    const at::Tensor layer1 = m->weight(Slot::FfnDown, 1);
    QVERIFY(error_of([&] { apply_edit(*m, bad); }).contains("shape"));
    QVERIFY(m->weight(Slot::FfnDown, 1).is_same(layer1));
}

void TestStore::schemaIsVersionedAndWal() {
    Fixture f("gpt2-tiny", 1);
    f.project.reset();
    QCOMPARE(sqlite_int(f.db, "PRAGMA user_version"), int64_t(kProjectSchemaVersion));
    QCOMPARE(sqlite_int(f.db, "PRAGMA application_id"), int64_t(0x456E4752));
    QCOMPARE(sqlite_text(f.db, "PRAGMA journal_mode"), std::string("wal"));
    QCOMPARE(sqlite_text(f.db, "PRAGMA integrity_check"), std::string("ok"));
    for (const char* table : {"models", "edits", "edit_basis", "deltas", "artifacts", "traces", "evaluations", "operations", "redo_stack"}) {
        const std::string sql = std::string("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '") + table + "'";
        QVERIFY2(sqlite_int(f.db, sql.c_str()) == 1, table);
    }
    QCOMPARE(sqlite_int(f.db, "SELECT count(*) FROM deltas"), int64_t(1));
    // The recorded model is this one.
    auto p = Project::open(f.db);
    QCOMPARE(p->model_record().fingerprint, f.model->fingerprint());
    QCOMPARE(p->model_record().architecture, std::string("GPT2LMHeadModel"));
}

void TestStore::rollbackMatchesRecordedAndFreshReplay_data() {
    QTest::addColumn<QString>("reference");
    QTest::newRow("gpt2-tiny") << "gpt2-tiny";
    QTest::newRow("llama-tiny") << "llama-tiny";
}

void TestStore::rollbackMatchesRecordedAndFreshReplay() {
    QFETCH(QString, reference);
    const int k = 5;
    Fixture f(reference.toStdString(), k);
    const std::string base_hash = state_hash_of_base(f.model->fingerprint());
    QCOMPARE(state_hash(*Model::load(f.model_dir)), base_hash);  // an unedited model hashes to the base hash
    std::set<std::string> distinct;
    for (const Edit& e : f.edits) distinct.insert(e.state_hash_after);
    QCOMPARE(distinct.size(), size_t(k));  // every edit changed the state
    // Jump around: down, up, down to the base, back to the end.
    for (int j : {3, 1, 4, 0, 5, 2}) {
        f.project->rollback(*f.model, j);
        const std::string hash = state_hash(*f.model);
        std::vector<int64_t> ids;
        for (int i = 0; i < j; ++i) ids.push_back(f.edits[i].id);
        auto fresh = fresh_replay(*f.project, f.model_dir, ids);
        QCOMPARE(hash, j == 0 ? base_hash : f.edits[j - 1].state_hash_after);
        QCOMPARE(state_hash(*fresh), hash);
        QVERIFY(same_weights(*f.model, *fresh));
        QCOMPARE(f.project->active_ids(), ids);
        QCOMPARE(f.project->head_state_hash(), hash);
        // Later edits are reverted but kept.
        const auto history = f.project->history();
        QCOMPARE(history.size(), size_t(k));
        for (int i = 0; i < k; ++i) QCOMPARE(history[i].edit.status, i < j ? EditStatus::Active : EditStatus::Reverted);
        if (j == 0)
            for (const auto& ref : f.model->weight_refs()) QVERIFY(f.model->is_base(ref.slot, ref.layer));
    }
    // Reopening the project replays to the same state in a new model.
    f.project.reset();
    auto p = Project::open(f.db);
    auto reopened = p->open_model(std::nullopt);
    QCOMPARE(state_hash(*reopened), f.edits[1].state_hash_after);
    for (const auto& c : p->verify(*reopened)) QVERIFY2(c.ok(), qPrintable(QString("edit %1").arg(c.edit_id)));
    QCOMPARE(state_hash(*reopened), f.edits[1].state_hash_after);  // verify leaves the model where it was
}

void TestStore::undoRedo() {
    Fixture f("gpt2-tiny", 3);
    QCOMPARE(*f.project->undo(*f.model), f.edits[2].id);
    QCOMPARE(state_hash(*f.model), f.edits[1].state_hash_after);
    QCOMPARE(*f.project->undo(*f.model), f.edits[1].id);
    QCOMPARE(state_hash(*f.model), f.edits[0].state_hash_after);
    QCOMPARE(*f.project->redo(*f.model), f.edits[1].id);
    QCOMPARE(state_hash(*f.model), f.edits[1].state_hash_after);
    QCOMPARE(*f.project->redo(*f.model), f.edits[2].id);
    QCOMPARE(state_hash(*f.model), f.edits[2].state_hash_after);
    QVERIFY(!f.project->redo(*f.model));
    // A new edit clears what can be redone.
    f.project->undo(*f.model);
    Edit e = synthetic(*f.model, 2, 1, 9);
    f.project->record(*f.model, e);
    QVERIFY(f.project->redo_ids().empty());
    QVERIFY(!f.project->redo(*f.model));
    QCOMPARE(f.project->active_ids(), (std::vector<int64_t>{f.edits[0].id, f.edits[1].id, e.id}));
    QCOMPARE(e.computed_on, (std::vector<int64_t>{f.edits[0].id, f.edits[1].id}));
    // Undo everything: the base.
    while (f.project->undo(*f.model)) {
    }
    QCOMPARE(state_hash(*f.model), state_hash_of_base(f.model->fingerprint()));
    QVERIFY(f.project->active_ids().empty());
}

void TestStore::revertOutOfOrder() {
    // Edits 1 and 3 touch layer 0, edit 2 touches layer 1.
    TempDir tmp("store");
    const fs::path dir = reference_dir("gpt2-tiny"), db = tmp.path / "p.engram";
    auto model = Model::load(dir);
    auto project = Project::create(db, *model);
    std::vector<Edit> e = {synthetic(*model, 0, 2, 1), synthetic(*model, 1, 2, 2), synthetic(*model, 0, 3, 3)};
    for (auto& x : e) project->record(*model, x);
    const std::vector<int64_t> dependents = project->revert(*model, e[0].id);
    QCOMPARE(dependents, (std::vector<int64_t>{e[1].id, e[2].id}));
    auto fresh = fresh_replay(*project, dir, {e[1].id, e[2].id});
    QVERIFY(same_weights(*model, *fresh));
    QCOMPARE(state_hash(*model), state_hash(*fresh));
    QVERIFY(state_hash(*model) != e[2].state_hash_after);
    // The dependency is recorded: in the history and in the operations log.
    const auto history = project->history();
    QCOMPARE(history[0].edit.status, EditStatus::Reverted);
    QCOMPARE(history[1].reverted_basis, std::vector<int64_t>{e[0].id});
    QCOMPARE(history[2].reverted_basis, std::vector<int64_t>{e[0].id});
    const auto ops = project->operations();
    QCOMPARE(ops.back()["op"].get<std::string>(), std::string("revert"));
    QCOMPARE(ops.back()["detail"]["dependents"].get<std::vector<int64_t>>(), dependents);
    // Every operation names the version that wrote it: the one engram-cli --version reports.
    const QByteArray cli_version = engram::test::cli({"--version"}).out.split(' ').value(1);
    QVERIFY(!cli_version.isEmpty());
    for (const auto& op : ops) QCOMPARE(op["detail"].value("engram_version", std::string()), cli_version.toStdString());
    // Reverting a reverted edit is refused; redo brings it back, in sequence order.
    QVERIFY(error_of([&] { project->revert(*model, e[0].id); }).contains("already reverted"));
    QCOMPARE(*project->redo(*model), e[0].id);
    QCOMPARE(state_hash(*model), e[2].state_hash_after);
    // Revert the middle one: only layer 1 is rebuilt, layer 0 keeps its tensor object.
    const at::Tensor layer0 = model->weight(Slot::FfnDown, 0);
    QCOMPARE(project->revert(*model, e[1].id), std::vector<int64_t>{e[2].id});
    QVERIFY(model->weight(Slot::FfnDown, 0).is_same(layer0));
    QVERIFY(model->is_base(Slot::FfnDown, 1));
    // Rolling back to edit 3 restores the state it was computed in.
    project->rollback(*model, e[2].id);
    QCOMPARE(state_hash(*model), e[2].state_hash_after);
    // Verify replays every recorded state on any copy, a fresh base included, and ends at the head.
    project->revert(*model, e[0].id);
    auto another = Model::load(dir);
    const auto checks = project->verify(*another);
    QCOMPARE(checks.size(), size_t(3));
    for (const auto& c : checks) QVERIFY2(c.ok(), qPrintable(QString("edit %1").arg(c.edit_id)));
    QCOMPARE(state_hash(*another), state_hash(*model));
    QVERIFY(same_weights(*another, *model));
}

void TestStore::exportModelLoadsBackIdentical() {
    TempDir tmp("store");
    const fs::path dir = copy_model(reference_dir("gpt2-tiny"), tmp.path / "gpt2-words");
    write_word_tokenizer(dir, 1000);
    auto model = Model::load(dir);
    auto project = Project::create(tmp.path / "p.engram", *model);
    for (int i = 0; i < 3; ++i) {
        Edit e = synthetic(*model, i, 2, 40 + i);
        project->record(*model, e);
    }
    const fs::path out = tmp.path / "exported";
    export_model(*model, out, dir, DType::F32, {{"state_hash", state_hash(*model)}});
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "engram_provenance.json"})
        QVERIFY2(fs::exists(out / f), f);
    auto back = Model::load(out);
    QVERIFY(back->tokenizer() != nullptr);
    QVERIFY(same_weights(*model, *back));
    for (int i = 0; i < 3; ++i) QVERIFY(!at::equal(back->weight(Slot::FfnDown, i), model->base_weight(Slot::FfnDown, i)));
    c10::InferenceMode guard;
    ForwardInput in;
    in.input_ids = at::tensor(std::vector<int64_t>{5, 17, 300, 2, 999, 41}, at::kLong).unsqueeze(0);
    const at::Tensor a = model->forward(in).logits, b = back->forward(in).logits;
    QVERIFY2(max_abs_diff(a, b) <= 1e-5, qPrintable(QString::number(max_abs_diff(a, b))));
    const at::Tensor base_logits = Model::load(dir)->forward(in).logits;
    QVERIFY(max_abs_diff(a, base_logits) > 1e-3);  // the edits are in the export
    // Exporting over the base folder is refused.
    QVERIFY(error_of([&] { export_model(*model, dir, dir, DType::F32, {}); }).contains("refusing"));
}

void TestStore::historyJsonRoundTrip() {
    Fixture f("llama-tiny", 4);
    f.project->revert(*f.model, f.edits[1].id);
    const std::string head = state_hash(*f.model);
    const nlohmann::json h = f.project->export_history();
    QCOMPARE(h["edits"].size(), size_t(4));
    // Into a new project on another copy of the model.
    TempDir tmp("store");
    const fs::path copy = copy_model(f.model_dir, tmp.path / "copy");
    auto model2 = Model::load(copy);
    auto p2 = Project::create(tmp.path / "q.engram", *model2);
    const auto ids = p2->import_history(*model2, h);
    QCOMPARE(ids.size(), size_t(4));
    QCOMPARE(state_hash(*model2), head);
    QCOMPARE(p2->head_state_hash(), head);
    QVERIFY(same_weights(*f.model, *model2));
    const auto h1 = f.project->history(), h2 = p2->history();
    for (size_t i = 0; i < h1.size(); ++i) {
        QCOMPARE(h2[i].edit.status, h1[i].edit.status);
        QCOMPARE(h2[i].edit.state_hash_after, h1[i].edit.state_hash_after);
        QCOMPARE(h2[i].edit.hparams, h1[i].edit.hparams);
        QCOMPARE(h2[i].blob_bytes, h1[i].blob_bytes);
    }
    // A damaged blob is refused and nothing is imported.
    nlohmann::json bad = h;
    std::string data = bad["edits"][2]["deltas"][0]["data"];
    data[10] = data[10] == 'A' ? 'B' : 'A';
    bad["edits"][2]["deltas"][0]["data"] = data;
    auto model3 = Model::load(copy);
    auto p3 = Project::create(tmp.path / "r.engram", *model3);
    QVERIFY(error_of([&] { p3->import_history(*model3, bad); }).contains("checksum"));
    QVERIFY(p3->history().empty());
    QCOMPARE(state_hash(*model3), state_hash_of_base(model3->fingerprint()));
    // A recorded hash that does not reproduce is refused too.
    bad = h;
    bad["edits"][3]["state_hash_after"] = std::string(64, '0');
    QVERIFY(error_of([&] { p3->import_history(*model3, bad); }).contains("does not reproduce"));
    QVERIFY(p3->history().empty());
    // Hostile claims: each refused with its reason before anything is allocated or written.
    using Mutate = std::function<void(nlohmann::json&)>;
    const std::vector<std::pair<Mutate, QString>> hostile = {
        {[](nlohmann::json& j) { j["edits"][0]["deltas"][0]["shape"] = {int64_t{1} << 62, int64_t{1} << 62}; }, "is impossible"},
        {[](nlohmann::json& j) { j["edits"][0]["deltas"][0]["rank"] = -3; }, "is impossible"},
        {[](nlohmann::json& j) { j["edits"][0]["deltas"][0]["rank"] = 2; }, "does not fit its"},
        {[](nlohmann::json& j) { j["edits"][0]["deltas"][0]["tensor"] = "model.layers.99.mlp.down_proj.weight"; }, "has no such weight"},
        {[](nlohmann::json& j) { j["edits"][0]["parent"] = j["edits"][3]["id"]; }, "not an earlier edit"},
        {[](nlohmann::json& j) { j["edits"][1]["id"] = j["edits"][0]["id"]; }, "appears twice"},
        {[](nlohmann::json& j) { j["edits"][0]["seq"] = "first"; }, "is not an integer"},
        {[](nlohmann::json& j) { j["edits"][0].erase("deltas"); }, "has no \"deltas\""},
    };
    for (const auto& [mutate, expected] : hostile) {
        bad = h;
        mutate(bad);
        const QString err = error_of([&] { p3->import_history(*model3, bad); });
        QVERIFY2(err.contains(expected), qPrintable(err));
        QVERIFY(p3->history().empty());
        QCOMPARE(state_hash(*model3), state_hash_of_base(model3->fingerprint()));
    }
    // Another model's history.
    auto gpt2 = Model::load(reference_dir("gpt2-tiny"));
    auto p4 = Project::create(tmp.path / "s.engram", *gpt2);
    const QString err = error_of([&] { p4->import_history(*gpt2, h); });
    QVERIFY2(err.contains("another model") && err.contains("llama-tiny"), qPrintable(err));
}

void TestStore::tracesAndEvaluations() {
    Fixture f("gpt2-tiny", 1);
    const std::string hash = state_hash(*f.model);
    const nlohmann::json params = {{"prompt", "w1 w2"}, {"subject", "w1"}, {"noise", 0.1}};
    QVERIFY(!f.project->find_trace(hash, params));
    const at::Tensor scores = at::arange(12, at::kFloat).reshape({3, 4});
    f.project->put_trace(hash, params, scores);
    auto got = f.project->find_trace(hash, params);
    QVERIFY(got && at::equal(*got, scores));
    QVERIFY(!f.project->find_trace(state_hash_of_base(f.model->fingerprint()), params));  // keyed by state
    QVERIFY(!f.project->find_trace(hash, {{"prompt", "w1 w2"}}));
    // A summary is stored beside the parameters, listed newest first, and is not part of the key.
    const nlohmann::json params2 = {{"prompt", "w2 w1"}, {"subject", "w1"}, {"noise", 0.1}};
    f.project->put_trace(hash, params2, scores * 2, {{"answer", " w3"}, {"clean_prob", 0.5}});
    nlohmann::json summary;
    const auto got2 = f.project->find_trace(hash, params2, &summary);
    QVERIFY(got2 && at::equal(*got2, scores * 2));
    QCOMPARE(summary["clean_prob"].get<double>(), 0.5);  // read back with the result
    const auto listed = f.project->traces();
    QCOMPARE(listed.size(), size_t(2));
    QCOMPARE(listed[0].params, params2);
    QCOMPARE(listed[0].summary["answer"].get<std::string>(), std::string(" w3"));
    QCOMPARE(listed[0].state_hash, hash);
    QCOMPARE(listed[1].params, params);
    QVERIFY(listed[1].summary.empty());
    Evaluation ev;
    ev.state_hash = hash;
    ev.edit_id = f.edits[0].id;
    ev.kind = "counterfact";
    ev.results = {{"es", 0.97}};
    const int64_t id = f.project->add_evaluation(ev);
    const auto all = f.project->evaluations();
    QCOMPARE(all.size(), size_t(1));
    QCOMPARE(all[0].id, id);
    QCOMPARE(all[0].results["es"].get<double>(), 0.97);
    QCOMPARE(*all[0].edit_id, f.edits[0].id);
    ev.edit_id = 999;
    QVERIFY(!error_of([&] { f.project->add_evaluation(ev); }).isEmpty());
}

void TestStore::restoreActiveUndoesRollbackAndRevert() {
    Fixture f("gpt2-tiny", 4);
    const std::vector<int64_t> before = f.project->active_ids();
    const std::string head = state_hash(*f.model);
    f.project->rollback(*f.model, f.edits[1].id);
    QCOMPARE(state_hash(*f.model), f.edits[1].state_hash_after);
    // Undoing the rollback: the saved active set comes back, bit for bit.
    QCOMPARE(f.project->restore_active(*f.model, before), head);
    QCOMPARE(state_hash(*f.model), head);
    QCOMPARE(f.project->active_ids(), before);
    QVERIFY(f.project->redo_ids().empty());
    f.project->revert(*f.model, f.edits[0].id);
    QVERIFY(state_hash(*f.model) != head);
    QCOMPARE(f.project->restore_active(*f.model, before), head);
    QCOMPARE(f.project->operations().back()["op"].get<std::string>(), std::string("restore"));
    // A fresh replay of the restored project reaches the same state.
    auto fresh = fresh_replay(*f.project, f.model_dir, before);
    QCOMPARE(state_hash(*fresh), head);
    // An empty set is the base; an unknown edit is refused and nothing changes.
    QCOMPARE(f.project->restore_active(*f.model, {}), state_hash_of_base(f.model->fingerprint()));
    QVERIFY(f.project->active_ids().empty());
    QVERIFY(error_of([&] { f.project->restore_active(*f.model, {999}); }).contains("no edit 999"));
    QVERIFY(f.project->active_ids().empty());
}

void TestStore::saveAsWritesAnIdenticalProject() {
    Fixture f("gpt2-tiny", 3);
    f.project->undo(*f.model);
    const fs::path copy = f.tmp.path / "copy.engram";
    f.project->save_as(copy);
    auto p = Project::open(copy);
    QCOMPARE(p->active_ids(), f.project->active_ids());
    QCOMPARE(p->redo_ids(), f.project->redo_ids());
    QCOMPARE(p->history().size(), f.project->history().size());
    auto m = p->open_model(f.model_dir);
    QCOMPARE(state_hash(*m), state_hash(*f.model));
    for (const auto& c : p->verify(*m)) QVERIFY(c.ok());
    // The original stays usable and independent; saving over an existing copy replaces it whole.
    f.project->redo(*f.model);
    QVERIFY(p->active_ids() != f.project->active_ids());
    p.reset();
    f.project->save_as(copy);
    QCOMPARE(Project::open(copy)->active_ids(), f.project->active_ids());
    QVERIFY(error_of([&] { f.project->save_as(f.db); }).contains("own file"));
    QVERIFY(error_of([&] { f.project->save_as(f.tmp.path / "no-such-dir" / "x.engram"); }).contains("does not exist"));
}

void TestStore::refusesAnotherModelsProject() {
    Fixture f("gpt2-tiny", 2);
    f.project.reset();
    const std::string before = file_sha(f.db);
    auto p = Project::open(f.db);
    const QString err = error_of([&] { p->open_model(reference_dir("llama-tiny")); });
    QVERIFY2(err.contains("another model") && err.contains("gpt2-tiny") && err.contains("llama-tiny") &&
                 err.contains(QString::fromStdString(f.model->fingerprint().substr(0, 12))),
             qPrintable(err));
    auto llama = Model::load(reference_dir("llama-tiny"));
    QVERIFY(error_of([&] { p->undo(*llama); }).contains("another model"));
    p.reset();
    QCOMPARE(file_sha(f.db), before);
    // Through the CLI: one line, non-zero exit, nothing changed.
    Run r = cli({"undo", "--db", q(f.db), "--model", q(reference_dir("llama-tiny"))});
    QVERIFY(r.code != 0);
    QVERIFY2(r.err.contains("another model") && r.err.trimmed().count('\n') == 0, r.err.constData());
    QCOMPARE(file_sha(f.db), before);
}

void TestStore::refusesCorruptedFiles() {
    TempDir tmp("store");
    // Garbage bytes.
    const fs::path garbage = tmp.path / "garbage.engram";
    {
        std::ofstream out(garbage, std::ios::binary);
        for (int i = 0; i < 20000; ++i) out.put(static_cast<char>((i * 7919 + 13) % 251));
    }
    const std::string before = file_sha(garbage);
    QString err = error_of([&] { Project::open(garbage); });
    QVERIFY2(err.contains("not an Engram project"), qPrintable(err));
    QCOMPARE(file_sha(garbage), before);
    Run r = cli({"history", "--db", q(garbage)});
    QVERIFY(r.code != 0);
    QVERIFY2(r.err.contains("not an Engram project"), r.err.constData());
    Run e = cli({"edit", "--db", q(garbage), "--model", q(reference_dir("gpt2-tiny")), "--method", "synthetic", "--layer", "0"});
    QVERIFY(e.code != 0);
    QCOMPARE(file_sha(garbage), before);
    // Another SQLite database.
    const fs::path other = tmp.path / "other.engram";
    sqlite_exec(other, "CREATE TABLE t (x)");
    QVERIFY(error_of([&] { Project::open(other); }).contains("not an Engram project"));
    // A real project whose pages were overwritten after the header.
    Fixture f("gpt2-tiny", 3, 200);
    f.project.reset();
    {
        std::fstream io(f.db, std::ios::in | std::ios::out | std::ios::binary);
        io.seekp(4096 * 3);
        for (int i = 0; i < 4096 * 8; ++i) io.put(static_cast<char>((i * 31 + 7) % 253));
    }
    const std::string damaged = file_sha(f.db);
    err = error_of([&] {
        auto p = Project::open(f.db);
        auto m = p->open_model(std::nullopt);
        p->history();
        p->verify(*m);
        for (const auto& s : p->history()) p->edit(s.edit.id);
    });
    QVERIFY2(err.contains("corrupt") || err.contains("damaged") || err.contains("malformed"), qPrintable(err));
    QCOMPARE(file_sha(f.db), damaged);
}

void TestStore::refusesNewerSchema() {
    Fixture f("gpt2-tiny", 1);
    f.project.reset();
    sqlite_exec(f.db, "PRAGMA user_version = 99");
    const std::string before = file_sha(f.db);
    const QString err = error_of([&] { Project::open(f.db); });
    QVERIFY2(err.contains("newer") && err.contains("99") && err.contains("nothing was changed"), qPrintable(err));
    ProjectOptions ro;
    ro.read_only = true;
    QVERIFY(error_of([&] { Project::open(f.db, ro); }).contains("newer"));
    Run r = cli({"edit", "--db", q(f.db), "--method", "synthetic", "--layer", "0"});
    QVERIFY(r.code != 0);
    QVERIFY2(r.err.contains("newer"), r.err.constData());
    QCOMPARE(file_sha(f.db), before);
}

void TestStore::refusesReadOnlyFile() {
    Fixture f("gpt2-tiny", 2);
    f.project.reset();
    fs::permissions(f.db, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
    const std::string before = file_sha(f.db);
    const QString err = error_of([&] { Project::open(f.db); });
    QVERIFY2(err.contains("read-only") && err.contains("nothing was changed"), qPrintable(err));
    // Reading still works.
    ProjectOptions ro;
    ro.read_only = true;
    {
        auto p = Project::open(f.db, ro);
        QCOMPARE(p->history().size(), size_t(2));
        auto m = p->open_model(std::nullopt);
        QCOMPARE(state_hash(*m), f.edits[1].state_hash_after);
        QVERIFY(error_of([&] { p->undo(*m); }).contains("read-only"));
    }
    Run u = cli({"undo", "--db", q(f.db)});
    QVERIFY(u.code != 0);
    QVERIFY2(u.err.contains("read-only"), u.err.constData());
    Run h = cli({"history", "--db", q(f.db), "--json"});
    QVERIFY2(h.code == 0, h.err.constData());
    QCOMPARE(QJsonDocument::fromJson(h.out).object()["edits"].toArray().size(), 2);
    QCOMPARE(file_sha(f.db), before);
    fs::permissions(f.db, fs::perms::owner_read | fs::perms::owner_write);
}

void TestStore::fullDiskLeavesProjectUnchanged() {
    Fixture f("gpt2-tiny", 2);
    f.project.reset();
    const int64_t pages = sqlite_int(f.db, "PRAGMA page_count");
    QVERIFY(pages > 0);
    ProjectOptions capped;
    capped.max_page_count = pages + 8;  // room for a small edit, not for a 256 KiB artifact
    auto p = Project::open(f.db, capped);
    auto model = p->open_model(std::nullopt);
    const std::string hash_before = state_hash(*model);
    const auto ops_before = p->operations().size();
    Edit big = synthetic(*model, 1, 2, 77, 256);
    const QString err = error_of([&] { p->record(*model, big); });
    QVERIFY2(err.contains("full"), qPrintable(err));
    QCOMPARE(state_hash(*model), hash_before);  // the model is as it was
    QCOMPARE(p->history().size(), size_t(2));
    QCOMPARE(p->operations().size(), ops_before);
    QCOMPARE(big.id, int64_t(0));
    // The connection is still usable and the project still consistent.
    QCOMPARE(p->head_state_hash(), f.edits[1].state_hash_after);
    Edit small = synthetic(*model, 1, 1, 78);
    p->record(*model, small);
    QCOMPARE(p->history().size(), size_t(3));
    p.reset();
    QCOMPARE(sqlite_text(f.db, "PRAGMA integrity_check"), std::string("ok"));
    auto reopened = Project::open(f.db);
    auto m2 = reopened->open_model(std::nullopt);
    for (const auto& c : reopened->verify(*m2)) QVERIFY(c.ok());
}

void TestStore::refusesAStaleModelAfterAnotherProcessChangedTheProject() {
    Fixture f("gpt2-tiny", 2);
    auto other = Project::open(f.db);  // a second connection, as another process would hold
    auto other_model = other->open_model(std::nullopt);
    Edit theirs = synthetic(*other_model, 2, 1, 50);
    other->record(*other_model, theirs);
    // This handle's model no longer shows the project's state: every change is refused.
    const std::string before = state_hash(*f.model);
    Edit mine = synthetic(*f.model, 1, 1, 51);
    QVERIFY(error_of([&] { f.project->record(*f.model, mine); }).contains("another process"));
    QVERIFY(error_of([&] { f.project->undo(*f.model); }).contains("another process"));
    QCOMPARE(state_hash(*f.model), before);
    QCOMPARE(f.project->history().size(), size_t(3));
    // Replaying brings it up to date, and then it may change the project again.
    QCOMPARE(f.project->replay(*f.model), theirs.state_hash_after);
    QCOMPARE(*f.project->undo(*f.model), theirs.id);
    QCOMPARE(state_hash(*f.model), f.edits[1].state_hash_after);
}

void TestStore::cliEndToEnd() {
    TempDir tmp("store");
    const fs::path dir = copy_model(reference_dir("gpt2-tiny"), tmp.path / "gpt2-words");
    write_word_tokenizer(dir, 1000);
    const fs::path db = tmp.path / "cli.engram";
    std::vector<std::string> hashes;
    for (int i = 0; i < 3; ++i) {
        QStringList args = {"edit", "--db", q(db), "--method", "synthetic", "--layer", QString::number(i % 3), "--rank", "2", "--seed",
                            QString::number(i), "--json"};
        if (i == 0) args << "--model" << q(dir);  // the first edit creates the project
        Run r = cli(args);
        QVERIFY2(r.code == 0, r.err.constData());
        const QJsonObject j = QJsonDocument::fromJson(r.out.trimmed()).object();
        QCOMPARE(j["id"].toInt(), i + 1);
        hashes.push_back(j["state_hash"].toString().toStdString());
    }
    auto last_line = [](const QByteArray& out) { return out.trimmed().split('\n').last().trimmed().toStdString(); };
    Run h = cli({"hash", "--model", q(dir), "--db", q(db)});
    QVERIFY2(h.code == 0, h.err.constData());
    QCOMPARE(last_line(h.out), hashes[2]);
    // The CLI's hashes are the core's.
    {
        auto p = Project::open(db);
        auto m = p->open_model(std::nullopt);
        QCOMPARE(state_hash(*m), hashes[2]);
        QCOMPARE(p->history()[0].edit.state_hash_after, hashes[0]);
    }
    Run base = cli({"hash", "--model", q(dir)});
    QCOMPARE(last_line(base.out), state_hash_of_base(Model::load(dir)->fingerprint()));

    Run hist = cli({"history", "--db", q(db), "--json", "--verify"});
    QVERIFY2(hist.code == 0, hist.err.constData());
    const QJsonObject hj = QJsonDocument::fromJson(hist.out).object();
    QCOMPARE(hj["edits"].toArray().size(), 3);
    for (const auto& v : hj["verify"].toArray()) QVERIFY(v.toObject()["ok"].toBool());

    Run show = cli({"history", "--db", q(db), "--edit", "2", "--json"});
    QVERIFY2(show.code == 0, show.err.constData());
    const QJsonObject sj = QJsonDocument::fromJson(show.out).object();
    QCOMPARE(sj["deltas"].toArray()[0].toObject()["rank"].toInt(), 2);
    QCOMPARE(sj["computed_on"].toArray().size(), 1);
    QCOMPARE(sj["state_hash_after"].toString().toStdString(), hashes[1]);

    // --db works on every --model command: predictions differ from the base model's.
    Run pb = cli({"predict", "--model", q(dir), "--prompt", "w5 w17 w300", "--json"});
    Run pe = cli({"predict", "--db", q(db), "--prompt", "w5 w17 w300", "--json"});
    QVERIFY2(pb.code == 0 && pe.code == 0, (pb.err + pe.err).constData());
    QVERIFY(pb.out != pe.out);

    QCOMPARE(cli({"rollback", "--db", q(db), "--to", "1"}).code, 0);
    QCOMPARE(last_line(cli({"hash", "--model", q(dir), "--db", q(db)}).out), hashes[0]);
    QCOMPARE(cli({"redo", "--db", q(db)}).code, 0);
    QCOMPARE(last_line(cli({"hash", "--db", q(db)}).out), hashes[1]);
    QCOMPARE(cli({"undo", "--db", q(db)}).code, 0);
    QCOMPARE(last_line(cli({"hash", "--db", q(db)}).out), hashes[0]);
    QCOMPARE(cli({"rollback", "--db", q(db), "--to", "0"}).code, 0);
    QCOMPARE(last_line(cli({"hash", "--db", q(db)}).out), last_line(base.out));
    QCOMPARE(cli({"rollback", "--db", q(db), "--to", "3"}).code, 0);
    Run rv = cli({"revert", "--db", q(db), "--edit", "2"});
    QVERIFY2(rv.code == 0 && rv.out.contains("computed on a model that contained edit 2"), rv.out.constData());
    QCOMPARE(cli({"redo", "--db", q(db)}).code, 0);
    QCOMPARE(last_line(cli({"hash", "--db", q(db)}).out), hashes[2]);

    // Replay onto another copy; export the model and the history; import into a new project.
    const fs::path copy = copy_model(dir, tmp.path / "copy");
    Run rp = cli({"replay", "--db", q(db), "--model", q(copy)});
    QVERIFY2(rp.code == 0 && rp.out.contains("reproduces bit for bit"), rp.out.constData());
    Run ex = cli({"export-model", "--db", q(db), "--out", q(tmp.path / "exported")});
    QVERIFY2(ex.code == 0, ex.err.constData());
    QVERIFY(fs::exists(tmp.path / "exported" / "tokenizer.json"));
    // The export predicts what the edited model predicts (weights are bit-identical; the layout of
    // GPT-2's transposed weights may change the last bits of a matmul, hence the tolerance).
    Run pe2 = cli({"predict", "--model", q(tmp.path / "exported"), "--prompt", "w5 w17 w300", "--json"});
    const QJsonArray top_edited = QJsonDocument::fromJson(pe.out).object()["top"].toArray();
    const QJsonArray top_exported = QJsonDocument::fromJson(pe2.out).object()["top"].toArray();
    QCOMPARE(top_exported.size(), top_edited.size());
    for (int k = 0; k < top_edited.size(); ++k) {
        QCOMPARE(top_exported[k].toObject()["id"].toInteger(), top_edited[k].toObject()["id"].toInteger());
        QVERIFY(std::abs(top_exported[k].toObject()["prob"].toDouble() - top_edited[k].toObject()["prob"].toDouble()) < 1e-6);
    }
    Run eh = cli({"export-history", "--db", q(db), "--out", q(tmp.path / "h.json")});
    QVERIFY2(eh.code == 0, eh.err.constData());
    Run ih = cli({"import-history", "--db", q(tmp.path / "imported.engram"), "--in", q(tmp.path / "h.json"), "--model", q(copy)});
    QVERIFY2(ih.code == 0, ih.err.constData());
    QCOMPARE(last_line(cli({"hash", "--db", q(tmp.path / "imported.engram")}).out), hashes[2]);
    // Importing another model's history is refused and leaves no project behind.
    Run bad = cli({"import-history", "--db", q(tmp.path / "bad.engram"), "--in", q(tmp.path / "h.json"), "--model",
                   q(reference_dir("llama-tiny"))});
    QVERIFY(bad.code != 0);
    QVERIFY2(bad.err.contains("another model"), bad.err.constData());
    QVERIFY(!fs::exists(tmp.path / "bad.engram"));
    // Errors: one line, non-zero.
    for (const QStringList& args : {QStringList{"rollback", "--db", q(db), "--to", "9"}, QStringList{"revert", "--db", q(db)},
                                    QStringList{"history", "--db", q(tmp.path / "missing.engram")},
                                    QStringList{"edit", "--db", q(db), "--method", "rome", "--layer", "0"},
                                    QStringList{"edit", "--db", q(db), "--method", "synthetic", "--layer", "7"}}) {
        Run r = cli(args);
        QVERIFY2(r.code != 0 && r.err.trimmed().count('\n') == 0 && r.err.contains("error"), qPrintable(args.join(' ') + ": " + r.err));
    }
    QCOMPARE(last_line(cli({"hash", "--db", q(db)}).out), hashes[2]);  // none of them changed anything
}

void TestStore::storageOfARankOneEdit() {
    // Only the edited matrix's shape matters for the delta: one GPT-2 block of GPT-2-small width.
    TempDir tmp("store");
    HParams hp;
    hp.n_layer = 1;
    hp.n_embd = 768;
    hp.n_ff = 3072;
    hp.n_head = hp.n_head_kv = 12;
    hp.head_dim = 64;
    hp.n_vocab = 16;
    hp.n_ctx = 8;
    hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    const fs::path dir = tmp.path / "gpt2-small-block";
    save_checkpoint(*Model::random(Arch::Gpt2, hp, 3), dir);
    auto model = Model::load(dir);
    QCOMPARE(model->weight(Slot::FfnDown, 0).sizes().vec(), (std::vector<int64_t>{768, 3072}));
    const double payload = (768 + 3072) * 4.0;  // u [768, 1] + v [3072, 1] in F32
    const double budget = 1.2 * payload + 4096;
    // The first edit fills pages the schema already allocated, so measure the steady state: the
    // file growth over several further edits (each recorded and committed on its own), per edit.
    constexpr int kMeasured = 4;
    for (int64_t rank : {1, 10, 100}) {
        const fs::path db = tmp.path / ("r" + std::to_string(rank) + ".engram");
        Project::create(db, *model);  // closed again at once: the WAL is checkpointed into the file
        const auto empty = fs::file_size(db);
        auto record = [&](uint64_t seed) {
            auto p = Project::open(db);
            Edit e = synthetic(*model, 0, rank, seed);
            p->record(*model, e);
            QCOMPARE(p->history().back().blob_bytes, static_cast<int64_t>(rank * payload));  // exactly the factors
        };
        record(1);
        const auto after_first = fs::file_size(db);
        for (int i = 0; i < kMeasured; ++i) record(2 + i);
        QVERIFY(!fs::exists(db.string() + "-wal"));  // everything is in the file being measured
        const double per_edit = (static_cast<double>(fs::file_size(db)) - static_cast<double>(after_first)) / kMeasured;
        model->restore_all_base();
        qInfo("rank-%lld edit of a [768, 3072] down-projection (GPT-2-small shape): %.0f bytes per edit in the project "
              "(factors %.0f bytes, ratio %.3f; the first edit grew the file by %.0f bytes)%s",
              static_cast<long long>(rank), per_edit, rank * payload, per_edit / (rank * payload),
              static_cast<double>(after_first) - static_cast<double>(empty),
              rank == 1 ? qPrintable(QString("; budget %1 bytes").arg(budget)) : "");
        if (rank == 1) QVERIFY2(per_edit <= budget, qPrintable(QString("%1 bytes > %2").arg(per_edit).arg(budget)));
        // Batched methods (MEMIT: rank = batch size per layer) scale the same way.
        QVERIFY(per_edit <= 1.2 * rank * payload + 4096);
        QVERIFY(per_edit >= rank * payload * 0.9);  // the factors really are in the file
    }
}

QTEST_GUILESS_MAIN(TestStore)
#include "tst_store.moc"
