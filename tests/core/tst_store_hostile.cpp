// Projects from others: a catalogue of hostile project files, each made here from a valid project
// written by the store and then altered with plain SQLite the way an attacker could. Each must be
// refused with a clear engram::Error (never a crash, a huge allocation or a hang) and leave the
// file byte for byte as it was.
#include <QtTest>

#include <fstream>
#include <sqlite3.h>

#include "engram/edit.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"
#include "engram/store.h"
#include "test_util.h"

using namespace engram;
using engram::test::cli;
using engram::test::error_of;
using engram::test::file_sha;
using engram::test::q;
using engram::test::reference_dir;
using engram::test::Run;
using engram::test::TempDir;
namespace fs = std::filesystem;

namespace {

// What an attacker does to a file: any SQL, with SQLite's ordinary (non-defensive) settings.
void tamper(const fs::path& file, const std::string& sql) {
    sqlite3* db = nullptr;
    QCOMPARE(sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    char* message = nullptr;
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message);
    const std::string why = message ? message : "";
    sqlite3_free(message);
    sqlite3_close(db);
    QVERIFY2(rc == SQLITE_OK, (sql + ": " + why).c_str());
}

std::string sqlite_text(const fs::path& file, const char* sql) {
    sqlite3* db = nullptr;
    sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    sqlite3_stmt* st = nullptr;
    std::string v;
    if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

// Everything a user can do to a project without changing it: open it (for writing too), replay
// it onto the model, list, verify, show every edit, export the history.
void use_everything(const fs::path& db, const fs::path& model_dir) {
    ProjectOptions ro;
    ro.read_only = true;
    auto reader = Project::open(db, ro);
    reader->history();
    reader.reset();
    auto p = Project::open(db);
    auto m = p->open_model(model_dir);
    for (const auto& s : p->history()) p->edit(s.edit.id);
    p->verify(*m);
    p->export_history();
}

}  // namespace

class TestStoreHostile : public QObject {
    Q_OBJECT

    TempDir m_tmp{"hostile"};
    fs::path m_model, m_valid;
    std::vector<std::string> m_checksums;  // of edit 1's first delta, edit 2's first delta

    // A fresh copy of the valid project.
    fs::path copy(const QString& name) {
        const fs::path p = m_tmp.path / (name.toStdString() + ".engram");
        fs::remove(p);
        fs::copy_file(m_valid, p);
        return p;
    }

private Q_SLOTS:
    void initTestCase();
    void catalogue_data();
    void catalogue();
    void recomputedChecksumIsCaughtByVerify();
    void truncatedWalOpensAsTheLastCommittedState();
};

void TestStoreHostile::initTestCase() {
    // Three edits: ranks 3 and 4 on layers 0 and 1 (so their blobs differ in size), then an edit
    // with an artifact; one is undone, so the redo stack has a row.
    m_model = reference_dir("gpt2-tiny");
    m_valid = m_tmp.path / "valid.engram";
    auto model = Model::load(m_model);
    auto p = Project::create(m_valid, *model);
    for (int i = 0; i < 3; ++i) {
        SyntheticEditOptions o;
        o.layer = i % static_cast<int>(model->hparams().n_layer);
        o.rank = 3 + i % 2;
        o.seed = 7 + i;
        o.artifact_kib = i == 2 ? 4 : 0;
        Edit e = make_synthetic_edit(*model, o);
        p->record(*model, e);
    }
    p->undo(*model);
    p.reset();
    QVERIFY(!fs::exists(m_valid.string() + "-wal"));
    // The valid project passes everything the hostile ones fail.
    use_everything(m_valid, m_model);
}

void TestStoreHostile::catalogue_data() {
    QTest::addColumn<QString>("sql");
    QTest::addColumn<QString>("error");
    const char* e1 = "UPDATE deltas SET %1 WHERE edit_id = 1";
    auto delta = [&](const char* set) { return QString(e1).arg(set); };
    // Claims about sizes: checked against the blob and the model before anything is allocated.
    QTest::newRow("huge claimed rank") << delta("rank = 1099511627776") << "does not fit its";
    QTest::newRow("rank that overflows") << delta("rank = 9223372036854775807") << "does not fit its";
    QTest::newRow("negative rank") << delta("rank = -3") << "does not fit its";
    QTest::newRow("negative shape") << delta("shape = '[-64, 16]'") << "bad target shape";
    QTest::newRow("shape that overflows") << delta("shape = '[4611686018427387904, 4611686018427387904]'") << "does not fit its";
    QTest::newRow("shape not the weight's") << delta("shape = json_array(json_extract(shape, '$[1]'), json_extract(shape, '$[0]'))")
                                            << "but the weight is";
    QTest::newRow("three dimensions") << delta("shape = '[2, 32, 16]'") << "bad target shape";
    QTest::newRow("shape not a list") << delta("shape = '{\"a\": 1}'") << "shape is not a list";
    QTest::newRow("shape not JSON") << delta("shape = '[64, 16'") << "malformed JSON";
    QTest::newRow("integer dtype") << delta("dtype = 'I64'") << "F32 or F64 expected";
    QTest::newRow("unknown dtype") << delta("dtype = 'F128'") << "unknown dtype";
    QTest::newRow("another kind") << delta("kind = 'dense_rows'") << "does not fit its";
    QTest::newRow("tensor the model lacks") << delta("tensor = 'h.99.mlp.c_proj.weight'") << "has no such weight";
    QTest::newRow("artifact shape that wraps to 0 bytes")
        << "UPDATE artifacts SET dtype = 'F64', shape = '[2305843009213693952]', blob = zeroblob(0), "
           "checksum = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'"
        << "does not match its 0-byte blob";
    QTest::newRow("artifact negative shape") << "UPDATE artifacts SET shape = '[-1024]'" << "does not match its";
    // Checksums: the bytes must hash to what the row says.
    QTest::newRow("blob altered, checksum kept") << delta("blob = zeroblob(length(blob))") << "checksum mismatch";
    QTest::newRow("checksum in upper case") << delta("checksum = upper(checksum)") << "checksum mismatch";
    QTest::newRow("blob truncated") << delta("blob = substr(blob, 1, length(blob) - 8)") << "does not fit its";
    // Blobs moved between edits of different ranks, with and without their checksums.
    QTest::newRow("blobs swapped between edits")
        << "UPDATE deltas SET blob = (SELECT d.blob FROM deltas d WHERE d.edit_id = 3 - deltas.edit_id AND d.ord = 0) "
           "WHERE edit_id IN (1, 2) AND ord = 0"
        << "does not fit its";  // sizes are checked first
    QTest::newRow("blobs and checksums swapped between edits")
        << "UPDATE deltas SET (blob, checksum) = (SELECT d.blob, d.checksum FROM deltas d WHERE d.edit_id = 3 - deltas.edit_id AND d.ord = 0) "
           "WHERE edit_id IN (1, 2) AND ord = 0"
        << "does not fit its";
    // The history's structure: every walk over parents must end, every row name a real edit.
    QTest::newRow("edit its own parent") << "UPDATE edits SET parent_id = id WHERE id = 2" << "as its parent, which is not an earlier edit";
    QTest::newRow("parent cycle") << "PRAGMA foreign_keys = OFF; UPDATE edits SET parent_id = 3 WHERE id = 1"
                                  << "as its parent, which is not an earlier edit";
    QTest::newRow("parent that does not exist") << "PRAGMA foreign_keys = OFF; UPDATE edits SET parent_id = 77 WHERE id = 2"
                                                << "which is not an earlier edit";
    QTest::newRow("basis naming a later edit") << "INSERT INTO edit_basis (edit_id, basis_id, included) VALUES (1, 3, 1)"
                                               << "in its basis, which is not an earlier edit";
    QTest::newRow("deltas of no edit") << "PRAGMA foreign_keys = OFF; UPDATE deltas SET edit_id = 99 WHERE edit_id = 1"
                                       << "has deltas but does not exist";
    QTest::newRow("redo stack naming no edit") << "PRAGMA foreign_keys = OFF; UPDATE redo_stack SET edit_id = 42" << "redo stack names edit 42";
    QTest::newRow("artifact of no edit") << "PRAGMA foreign_keys = OFF; UPDATE artifacts SET edit_id = 41" << "artifact names edit 41";
    // SQL in the schema: refused before anything runs or is written.
    QTest::newRow("trigger that writes elsewhere")
        << "CREATE TRIGGER t AFTER INSERT ON operations BEGIN UPDATE models SET path = '/tmp/elsewhere'; "
           "INSERT INTO evaluations (created_at, state_hash, kind, params, results) VALUES ('', '', 'x', '{}', '{}'); END"
        << "extra trigger 't'";
    QTest::newRow("trigger on undo") << "CREATE TRIGGER r BEFORE DELETE ON redo_stack BEGIN SELECT 1; END"
                                     << "extra trigger 'r'";
    QTest::newRow("view") << "CREATE VIEW v AS SELECT * FROM edits" << "extra view 'v'";
    QTest::newRow("index") << "CREATE INDEX i ON deltas (tensor)" << "extra index 'i'";
    QTest::newRow("table") << "CREATE TABLE extra (x)" << "extra table 'extra'";
    QTest::newRow("table defined differently")
        << "PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = replace(sql, '''reverted''))', '''reverted'', ''x''))') "
           "WHERE name = 'edits'"
        << "table 'edits' is defined differently";
    QTest::newRow("table missing") << "DROP TABLE traces" << "table 'traces' is missing";
}

void TestStoreHostile::catalogue() {
    QFETCH(QString, sql);
    QFETCH(QString, error);
    const fs::path db = copy(QTest::currentDataTag());
    tamper(db, sql.toStdString());
    const std::string before = file_sha(db);
    const QString err = error_of([&] { use_everything(db, m_model); });
    QVERIFY2(err.contains(error), qPrintable("expected '" + error + "', got '" + err + "'"));
    QVERIFY2(!err.contains('\n'), qPrintable(err));
    QCOMPARE(file_sha(db), before);
    // A read-only connection may leave an empty WAL beside the file; nothing is ever written to it.
    const fs::path wal = db.string() + "-wal";
    QVERIFY(!fs::exists(wal) || fs::file_size(wal) == 0);
    // The command line's read-only commands say the same, with a non-zero exit, and change nothing.
    QByteArray said;
    for (const QStringList& args : {QStringList{"history", "--verify", "--model", q(m_model)}, QStringList{"history", "--edit", "3"}}) {
        const Run r = cli(args + QStringList{"--db", q(db)});
        QVERIFY2(r.code >= 0, r.err.constData());  // -1: it crashed
        if (r.code > 0) said += r.err;
    }
    QVERIFY2(said.contains(error.toUtf8()), said.constData());
    QCOMPARE(file_sha(db), before);
}

// Bytes and checksum replaced together make a consistent row: nothing in the row can tell. The
// recorded state hashes can, and verify reports every edit from the altered one on.
void TestStoreHostile::recomputedChecksumIsCaughtByVerify() {
    const fs::path db = copy("recomputed");
    const std::string length = sqlite_text(db, "SELECT length(blob) FROM deltas WHERE edit_id = 1 AND ord = 0");
    const std::vector<uint8_t> zeros(std::stoul(length), 0);
    tamper(db, "UPDATE deltas SET blob = zeroblob(" + length + "), checksum = '" + sha256_hex(zeros.data(), zeros.size()) +
                   "' WHERE edit_id = 1 AND ord = 0");
    const std::string before = file_sha(db);
    ProjectOptions ro;
    ro.read_only = true;
    auto p = Project::open(db, ro);
    auto m = p->open_model(m_model);
    const auto checks = p->verify(*m);
    QCOMPARE(checks.size(), size_t{3});
    QVERIFY(!checks[0].ok());
    p.reset();
    const Run r = cli({"history", "--verify", "--db", q(db), "--model", q(m_model)});
    QCOMPARE(r.code, 1);
    QVERIFY2(r.out.contains("verify edit 1: DIFFERS"), r.out.constData());
    QCOMPARE(file_sha(db), before);
}

// A WAL cut short is what a crash leaves; SQLite keeps the transactions whose commit frame
// survived and drops the rest, so the project opens in an earlier state that is consistent: every
// edit it has still reproduces. Opening it read-only changes neither file.
void TestStoreHostile::truncatedWalOpensAsTheLastCommittedState() {
    const fs::path dir = m_tmp.path / "wal";
    fs::create_directories(dir);
    const fs::path live = dir / "live.engram", db = dir / "cut.engram";
    auto model = Model::load(m_model);
    auto p = Project::create(live, *model);
    for (int i = 0; i < 4; ++i) {
        if (i == 1) {  // closing checkpoints: the file holds the project and its first edit
            p.reset();
            p = Project::open(live);
        }
        SyntheticEditOptions o;
        o.layer = i % 2;
        o.rank = 2;
        o.seed = 50 + i;
        Edit e = make_synthetic_edit(*model, o);
        p->record(*model, e);
    }
    // Copied while the project is open: the edits are still in the WAL, not yet in the file.
    fs::copy_file(live, db);
    fs::copy_file(live.string() + "-wal", db.string() + "-wal");
    p.reset();
    const fs::path wal = db.string() + "-wal";
    const auto full = fs::file_size(wal);
    QVERIFY(full > 4096 * 4);
    fs::resize_file(wal, full / 2 + 100);  // mid-frame
    const std::string before = file_sha(db), wal_before = file_sha(wal);
    ProjectOptions ro;
    ro.read_only = true;
    auto cut = Project::open(db, ro);
    const auto history = cut->history();
    QVERIFY2(history.size() >= 1 && history.size() < 4, qPrintable(QString::number(history.size())));
    auto m = cut->open_model(m_model);
    for (const auto& c : cut->verify(*m)) QVERIFY(c.ok());
    QCOMPARE(cut->active_ids().size(), history.size());
    cut.reset();
    QCOMPARE(file_sha(db), before);
    QCOMPARE(file_sha(wal), wal_before);
}

QTEST_GUILESS_MAIN(TestStoreHostile)
#include "tst_store_hostile.moc"
