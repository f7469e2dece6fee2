// Crash safety: `engram-cli edit` is killed with SIGKILL at random moments, again and again. After
// every kill the project must open, pass PRAGMA integrity_check, hold either the whole edit or none
// of it, and replay every recorded state hash bit for bit.
#include <QtTest>

#include <ATen/ATen.h>

#include <QElapsedTimer>
#include <QProcess>
#include <random>
#include <sqlite3.h>

#include "engram/edit.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/store.h"
#include "test_util.h"

using namespace engram;
using engram::test::reference_dir;
using engram::test::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr int kKills = 60;
constexpr int64_t kRank = 16;
constexpr int64_t kArtifactKib = 3072;  // each edit writes ~3 MB, so kills land inside the transaction too

QStringList edit_args(const fs::path& db, const fs::path& model, int seed) {
    return {"edit",   "--db",   QString::fromStdString(db.string()), "--model",        QString::fromStdString(model.string()),
            "--method", "synthetic", "--layer", QString::number(seed % 3), "--rank", QString::number(kRank),
            "--seed", QString::number(seed), "--artifact-kib", QString::number(kArtifactKib)};
}

std::string integrity_check(const fs::path& db) {
    sqlite3* h = nullptr;
    if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
        sqlite3_close(h);
        return "cannot open";
    }
    sqlite3_stmt* st = nullptr;
    std::string result = "no result";
    if (sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        result = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(h);
    return result;
}

}  // namespace

class TestStoreCrash : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void killedEditsLeaveWholeEditsOrNone();
};

void TestStoreCrash::killedEditsLeaveWholeEditsOrNone() {
    TempDir tmp("store-crash");
    const fs::path model_dir = reference_dir("gpt2-tiny"), db = tmp.path / "crash.engram";
    const int64_t delta_bytes = kRank * (64 + 256) * 4, artifact_bytes = kArtifactKib * 1024;

    // One edit run to completion: creates the project and gives the time a whole run takes.
    QElapsedTimer timer;
    timer.start();
    {
        QProcess p;
        p.start(QString(ENGRAM_CLI_PATH), edit_args(db, model_dir, 0));
        QVERIFY(p.waitForFinished(60000));
        QVERIFY2(p.exitCode() == 0, p.readAllStandardError().constData());
    }
    const qint64 full_ms = std::max<qint64>(timer.elapsed(), 50);

    const unsigned seed = std::random_device{}();
    qInfo("a whole edit run takes %lld ms; killing %d runs at uniform random moments in [0, %lld] ms (seed %u)",
          static_cast<long long>(full_ms), kKills, static_cast<long long>(full_ms * 11 / 10), seed);
    std::mt19937 rng(seed);
    std::uniform_int_distribution<qint64> when(0, full_ms * 11 / 10);

    // Every other run is killed at a uniform random moment of its life; the others right after
    // the transaction starts spilling pages into the write-ahead log, so that kills also land
    // inside the transaction, where it matters most.
    std::uniform_int_distribution<int> in_transaction(0, 12);
    const fs::path wal = db.string() + "-wal";
    auto wal_bytes = [&] {
        std::error_code ec;
        const auto n = fs::file_size(wal, ec);
        return ec ? uintmax_t{0} : n;
    };
    auto model = Model::load(model_dir);
    size_t edits = 1;
    int committed = 0, absent = 0, finished = 0, mid_transaction = 0;
    for (int i = 1; i <= kKills; ++i) {
        QProcess p;
        p.start(QString(ENGRAM_CLI_PATH), edit_args(db, model_dir, i));
        QVERIFY(p.waitForStarted(10000));
        const bool targeted = i % 2 == 0;
        qint64 delay = 0;
        bool done = false;
        if (targeted) {
            QElapsedTimer t;
            t.start();
            while (!(done = p.waitForFinished(1)) && wal_bytes() == 0 && t.elapsed() < 20000) {
            }
            if (!done) done = p.waitForFinished(in_transaction(rng));
            delay = t.elapsed();
        } else {
            delay = when(rng);
            done = p.waitForFinished(static_cast<int>(delay));
        }
        if (done) {
            ++finished;  // it beat the kill
        } else {
            p.kill();  // SIGKILL
            QVERIFY(p.waitForFinished(10000));
        }
        const bool wal_left = wal_bytes() > 0;
        const QString ctx = QString("run %1, killed after %2 ms%3").arg(i).arg(delay).arg(targeted ? " (transaction-targeted)" : "");
        QVERIFY2(integrity_check(db) == "ok", qPrintable(ctx));
        std::unique_ptr<Project> project;
        try {
            project = Project::open(db);
        } catch (const Error& e) {
            QFAIL(qPrintable(ctx + ": " + e.what()));
        }
        const auto history = project->history();
        QVERIFY2(history.size() == edits || history.size() == edits + 1, qPrintable(ctx));
        if (history.size() == edits + 1) {
            // The whole edit: its row, its delta, its artifact, byte for byte (checksums verified).
            const EditSummary& s = history.back();
            QVERIFY2(s.n_deltas == 1 && s.n_artifacts == 1 && s.blob_bytes == delta_bytes + artifact_bytes, qPrintable(ctx));
            const Edit full = project->edit(s.edit.id);
            QCOMPARE(full.deltas.size(), size_t(1));
            QCOMPARE(full.artifacts.size(), size_t(1));
            QCOMPARE(full.hparams["seed"].get<int>(), i);
            ++edits;
            ++committed;
        } else {
            ++absent;
            if (wal_left) ++mid_transaction;  // pages of the edit had reached the log, uncommitted
        }
        QCOMPARE(project->operations().size(), edits + 1);  // "create" plus one "record" per edit: nothing half-logged
        // Replay reproduces every recorded hash, and the head.
        QCOMPARE(project->replay(*model), project->head_state_hash());
        for (const auto& c : project->verify(*model)) QVERIFY2(c.ok(), qPrintable(ctx + QString(": edit %1").arg(c.edit_id)));
    }
    qInfo("%d kills: %d runs had committed their edit, %d had not (%d of them killed inside the transaction, with uncommitted "
          "pages in the log); %d finished before the kill; the project holds %zu edits",
          kKills, committed, absent, mid_transaction, finished, edits);
    QVERIFY(absent > 0);  // some kills did land before the commit
    QVERIFY(mid_transaction > 0);  // and some inside the transaction
}

QTEST_GUILESS_MAIN(TestStoreCrash)
#include "tst_store_crash.moc"
