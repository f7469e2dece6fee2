// The workbench window under offscreen Qt, on the Fact World demo model: the history model passes
// QAbstractItemModelTester, applying an edit through the form adds a history row and changes the
// predicted token, Ctrl+Z restores the prediction and the state hash, Ctrl+Shift+Z redoes it, and
// reopening the project restores the same history.
#include <QtTest>

#include <QAbstractItemModelTester>
#include <QApplication>
#include <QCheckBox>
#include <QComboBox>
#include <QTimer>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLineEdit>
#include <QElapsedTimer>
#include <QLabel>
#include <QListWidget>
#include <QMenu>
#include <QMenuBar>
#include <QMessageBox>
#include <QProcess>
#include <QPushButton>
#include <QTableView>
#include <QTreeWidget>
#include <QDockWidget>
#include <QSpinBox>

#include "widgets/qcustomplot_include.h"
#include <QTableWidget>
#include <QUndoStack>
#include <QSettings>
#include <QTemporaryDir>

#include "widgets/vit_attribution_figure.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <filesystem>

#include "engram/demo.h"
#include "engram/vit.h"

#include "engram/trace.h"
#include "models/history_model.h"
#include "views/guide_panel.h"
#include "widgets/elided_label.h"
#include "widgets/heatmap_widget.h"
#include "views/main_window.h"

using engram::ui::HistoryModel;
using engram::ui::HistoryRow;
using engram::ui::MainWindow;

class TestWorkbench : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void initTestCase();
    void historyModelContract();
    void editUndoRedoReopen();
    void badRequestShowsError();
    void traceCellFillsEditForm();
    void visionAblationMatchesCore();
    void cancelTraceKeepsRows();
    void exportsAndPresentation();
    void historyRollbackRevertChart();
    void evaluateOverlaysRuns();
    void retraceShowsDifference();
    void hparamOverridesAndBaseSideBySide();
    void graceEditBesideTheWeights();
    void screenshotsEveryView();
    void saveAsRecentAndCachedTrace();
    void settingsApply();
    void visionFilesHeadClickAndReport();
    void responsivenessHeartbeat();
    void helpMenuAboutAndVersion();
    void modelPanelElides();
    void guidedWalk();

private:
    QTemporaryDir m_settings;  // QSettings go here, not into the user's configuration

private:
    static QString demo() { return QStringLiteral(ENGRAM_SOURCE_RESOURCES "/demo/factworld"); }
    static QString topToken(MainWindow& w) {
        auto* table = w.findChild<QTableWidget*>(QStringLiteral("topTable"));
        return table && table->rowCount() ? table->item(0, 0)->text().trimmed() : QString();
    }
};

void TestWorkbench::initTestCase() {
    QVERIFY(m_settings.isValid());
    QSettings::setDefaultFormat(QSettings::IniFormat);
    QSettings::setPath(QSettings::IniFormat, QSettings::UserScope, m_settings.path());
    QCoreApplication::setOrganizationName(QStringLiteral("EngramTest"));
    QCoreApplication::setApplicationName(QStringLiteral("tst_workbench"));
}

void TestWorkbench::historyModelContract() {
    HistoryModel model;
    QAbstractItemModelTester tester(&model, QAbstractItemModelTester::FailureReportingMode::QtTest);
    QVector<HistoryRow> rows;
    for (int i = 1; i <= 3; ++i) {
        HistoryRow r;
        r.id = i;
        r.time = QStringLiteral("2026-11-26T07:0%1:00Z").arg(i);
        r.method = QStringLiteral("rome");
        r.subject = QStringLiteral("S%1").arg(i);
        r.change = QStringLiteral("a → b");
        r.layers = QStringLiteral("0");
        r.status = i == 3 ? QStringLiteral("reverted") : QStringLiteral("active");
        r.norm = i == 2 ? -1 : 0.5 * i;
        rows.push_back(r);
    }
    model.setRows(rows);
    QCOMPARE(model.rowCount(), 3);
    QCOMPARE(model.columnCount(), int(HistoryModel::ColumnCount));
    QCOMPARE(model.data(model.index(1, HistoryModel::Id)).toLongLong(), 2LL);
    QCOMPARE(model.data(model.index(0, HistoryModel::Norm)).toString(), QStringLiteral("0.500"));
    QCOMPARE(model.data(model.index(1, HistoryModel::Norm)).toString(), QStringLiteral("—"));
    QCOMPARE(model.data(model.index(2, HistoryModel::Id), HistoryModel::EditIdRole).toLongLong(), 3LL);
    QVERIFY(model.data(model.index(2, HistoryModel::Status), Qt::ForegroundRole).isValid());  // reverted rows greyed
    QVERIFY(!model.data(model.index(0, HistoryModel::Status), Qt::ForegroundRole).isValid());
    model.setRows({});
    QCOMPARE(model.rowCount(), 0);
}

void TestWorkbench::editUndoRedoReopen() {
    QTemporaryDir tmp;
    const QString file = tmp.filePath(QStringLiteral("w.engram"));
    QString baseHash, editedHash;
    QVector<HistoryRow> recorded;
    {
        MainWindow w;
        w.openModelNow(demo());
        w.workbench().createProject(file);
        baseHash = w.workbench().stateHash();
        auto* prompt = w.findChild<QLineEdit*>(QStringLiteral("promptEdit"));
        prompt->setText(QStringLiteral("Peanaim Fosha competes in"));
        w.predict();
        const QString before = topToken(w);
        QCOMPARE(before, QStringLiteral("Loraifelball"));

        w.findChild<QLineEdit*>(QStringLiteral("editPrompt"))->setText(QStringLiteral("{} competes in"));
        w.findChild<QLineEdit*>(QStringLiteral("editSubject"))->setText(QStringLiteral("Peanaim Fosha"));
        w.findChild<QLineEdit*>(QStringLiteral("editTarget"))->setText(QStringLiteral("Zuluball"));
        w.findChild<QComboBox*>(QStringLiteral("methodCombo"))->setCurrentText(QStringLiteral("rome"));
        QSignalSpy applied(&w, &MainWindow::editApplied);
        QTest::mouseClick(w.findChild<QPushButton*>(QStringLiteral("applyButton")), Qt::LeftButton);
        QVERIFY(w.busy());  // the edit runs in a worker, not on the GUI thread
        QVERIFY(applied.wait(120000));
        QCOMPARE(w.historyModel()->rowCount(), 1);
        QCOMPARE(w.historyModel()->rows()[0].method, QStringLiteral("rome"));
        QCOMPARE(w.historyModel()->rows()[0].change, QStringLiteral("Loraifelball → Zuluball"));
        QVERIFY(w.historyModel()->rows()[0].norm > 0);
        editedHash = w.workbench().stateHash();
        QVERIFY(editedHash != baseHash);
        QCOMPARE(topToken(w), QStringLiteral("Zuluball"));
        // The blast radius: the prompt, then the dataset's paraphrases and neighbours for this rewrite.
        auto* blast = w.findChild<QTableWidget*>(QStringLiteral("resultTable"));
        QVERIFY(blast->rowCount() > 2);
        QCOMPARE(blast->item(0, 0)->text(), QStringLiteral("prompt"));
        QVERIFY(blast->item(0, 2)->text().startsWith(QStringLiteral("0.0000 → ")));
        bool paraphrase = false, neighbour = false;
        for (int r = 0; r < blast->rowCount(); ++r) {
            paraphrase = paraphrase || blast->item(r, 0)->text() == QLatin1String("paraphrase");
            neighbour = neighbour || blast->item(r, 0)->text() == QLatin1String("neighbour");
        }
        QVERIFY(paraphrase && neighbour);

        // Ctrl+Z: the prediction and the state hash come back; Ctrl+Shift+Z: the edit again.
        w.show();
        QVERIFY(QTest::qWaitForWindowExposed(&w));
        QTest::keyClick(&w, Qt::Key_Z, Qt::ControlModifier);
        QCOMPARE(w.workbench().stateHash(), baseHash);
        QCOMPARE(topToken(w), before);
        QCOMPARE(w.historyModel()->rows()[0].status, QStringLiteral("reverted"));
        QTest::keyClick(&w, Qt::Key_Z, Qt::ControlModifier | Qt::ShiftModifier);
        QCOMPARE(w.workbench().stateHash(), editedHash);
        QCOMPARE(topToken(w), QStringLiteral("Zuluball"));
        recorded = w.historyModel()->rows();
    }
    // Reopening the project restores the same history and the edited model.
    MainWindow again;
    again.openProjectNow(file);
    QCOMPARE(again.historyModel()->rowCount(), recorded.size());
    QCOMPARE(again.historyModel()->rows()[0].id, recorded[0].id);
    QCOMPARE(again.historyModel()->rows()[0].change, recorded[0].change);
    QCOMPARE(again.historyModel()->rows()[0].status, QStringLiteral("active"));
    QCOMPARE(again.workbench().stateHash(), editedHash);
    // The reopened edits are on the undo stack: Ctrl+Z steps back as before the restart.
    QCOMPARE(again.undoStack()->count(), 1);
    again.undoStack()->undo();
    QCOMPARE(again.workbench().stateHash(), baseHash);
    again.undoStack()->redo();
    QCOMPARE(again.workbench().stateHash(), editedHash);
}

void TestWorkbench::badRequestShowsError() {
    MainWindow w;
    w.openModelNow(demo());
    w.fillEditForm(QStringLiteral("Someone else competes in"), QStringLiteral("Peanaim Fosha"), QStringLiteral("Zuluball"), QStringLiteral("rome"), -1);
    QSignalSpy errors(&w, &MainWindow::errorShown);
    QSignalSpy finished(&w, &MainWindow::jobFinished);
    w.applyEdit();
    QVERIFY(finished.wait(60000));
    QCOMPARE(finished.at(0).at(0).toBool(), false);
    QCOMPARE(errors.size(), 1);
    QVERIFY(errors.at(0).at(0).toString().contains(QStringLiteral("not in the prompt")));
    QCOMPARE(w.historyModel()->rowCount(), 0);  // nothing recorded, nothing lost
}

void TestWorkbench::traceCellFillsEditForm() {
    MainWindow w;
    w.openModelNow(demo());
    w.resize(1200, 700);
    w.show();
    QVERIFY(QTest::qWaitForWindowExposed(&w));
    w.tabs()->setCurrentIndex(1);
    // Selecting the subject in the prompt fills the subject field.
    auto* prompt = w.findChild<QLineEdit*>(QStringLiteral("tracePrompt"));
    prompt->setText(QStringLiteral("Peanaim Fosha competes in"));
    prompt->setSelection(0, 13);
    QCOMPARE(w.findChild<QLineEdit*>(QStringLiteral("traceSubject"))->text(), QStringLiteral("Peanaim Fosha"));
    QSignalSpy finished(&w, &MainWindow::jobFinished);
    QTest::mouseClick(w.findChild<QPushButton*>(QStringLiteral("traceButton")), Qt::LeftButton);
    QVERIFY(finished.wait(120000));
    QCOMPARE(finished.at(0).at(0).toBool(), true);
    engram::ui::HeatmapWidget* mlp = w.heatmap(1);
    QCOMPARE(mlp->rowCount(), int(w.lastTrace().tokens.size()));
    QCOMPARE(mlp->columnCount(), 6);
    QVERIFY(!std::isnan(mlp->cellValue(1, 2)));  // rows streamed in and stayed
    // The window: about a fifth of the depth (ROME: 10 of 48), so 1 of the demo model's 6 layers,
    // stated in the form and in the maps' axis labels; a number in the form overrides it.
    QCOMPARE(engram::default_trace_window(48), 10);
    QCOMPARE(engram::default_trace_window(12), 2);
    QCOMPARE(engram::default_trace_window(1), 1);
    auto* window = w.findChild<QSpinBox*>(QStringLiteral("traceWindow"));
    QCOMPARE(window->value(), 0);
    QCOMPARE(window->text(), QStringLiteral("auto: 1 of 6 layers"));
    QVERIFY(window->toolTip().contains(QStringLiteral("10 of GPT-2 XL's 48")));
    QCOMPARE(w.lastTrace().window, 1);
    QCOMPARE(mlp->xLabelText(), QStringLiteral("center of interval of 1 restored MLP layers"));
    QVERIFY(w.lastTrace().cleanProb > 0.9 && w.lastTrace().corruptedProb < w.lastTrace().cleanProb);
    // Hovering names the token and layer and gives p and the indirect effect (p - corrupted).
    const int row = w.lastTrace().subjectEnd - 1;
    const QString tip = mlp->toolTipAt(row, 2);
    QVERIFY2(tip.contains(QStringLiteral("Fosha")) && tip.contains(QStringLiteral("layer 2")), qPrintable(tip));
    QVERIFY2(tip.contains(QStringLiteral("indirect effect %1").arg(mlp->cellValue(row, 2) - w.lastTrace().corruptedProb, 0, 'f', 4)), qPrintable(tip));
    // Clicking the MLP cell (last subject token, layer 2) prepares a ROME edit at layer 2.
    QTest::mouseClick(mlp->plot(), Qt::LeftButton, {}, mlp->plot()->mapFrom(mlp, mlp->cellCenter(row, 2)));
    QCOMPARE(w.tabs()->currentIndex(), 2);
    QCOMPARE(w.findChild<QLineEdit*>(QStringLiteral("editPrompt"))->text(), QStringLiteral("{} competes in"));
    QCOMPARE(w.findChild<QLineEdit*>(QStringLiteral("editSubject"))->text(), QStringLiteral("Peanaim Fosha"));
    QCOMPARE(w.findChild<QComboBox*>(QStringLiteral("methodCombo"))->currentText(), QStringLiteral("rome"));
    QCOMPARE(w.findChild<QSpinBox*>(QStringLiteral("layerSpin"))->value(), 2);
    // With a window of 3 the MLP row of the last subject token changes (a 3-layer window around each layer).
    const QVector<double> single = w.traceScores(1)[row];
    window->setValue(3);
    w.runTrace();
    QVERIFY(finished.wait(120000));
    QCOMPARE(w.lastTrace().window, 3);
    QCOMPARE(w.heatmap(2)->xLabelText(), QStringLiteral("center of interval of 3 restored Attn layers"));
    QVERIFY(w.traceScores(1)[row] != single);
}

void TestWorkbench::visionAblationMatchesCore() {
    MainWindow w;
    w.openModelNow(QStringLiteral(ENGRAM_SOURCE_RESOURCES "/demo/shapes"));
    w.tabs()->setCurrentIndex(4);
    w.loadImages();  // 64 counter images
    auto* list = w.findChild<QListWidget*>(QStringLiteral("imageList"));
    QCOMPARE(list->count(), 64);
    list->setCurrentRow(3);
    const QVector<double> before = w.visionLogits();
    QCOMPARE(before.size(), 8);
    // Toggle head L4 H1 off in the grid: the logits shown are the core's with that head removed.
    w.headTable()->item(4, 1)->setCheckState(Qt::Checked);
    const QVector<double> after = w.visionLogits();
    std::vector<engram::demo::ShapeSample> sample = {engram::demo::render_shape_sample(777, engram::demo::ShapesSplit::Counter, 3)};
    c10::InferenceMode guard;
    engram::vit::HeadIntervention iv;
    iv.keep = at::ones({6, 4});
    iv.keep[4][1] = 0.0f;
    engram::vit::RunOptions o;
    o.intervention = &iv;
    const at::Tensor core = engram::vit::run(*w.workbench().model(), engram::demo::shape_pixels(sample, 32), o).logits[0].to(at::kDouble);
    double diff = 0, moved = 0;
    for (int k = 0; k < 8; ++k) {
        diff = std::max(diff, std::abs(after[k] - core[k].item<double>()));
        moved = std::max(moved, std::abs(after[k] - before[k]));
    }
    QCOMPARE(diff, 0.0);
    QVERIFY(moved > 1e-3);
    // Unchecking restores the clean logits exactly.
    w.headTable()->item(4, 1)->setCheckState(Qt::Unchecked);
    QCOMPARE(w.visionLogits(), before);

    // Select the crosses the model gets wrong and edit them toward cross: a History row, fixed predictions.
    QVector<int> failing;
    for (int i = 0; i < list->count(); ++i) {
        const auto& img = w.workbench().vitImages()[i];
        const QVector<double> l = w.workbench().logitsWithout(i, {});
        if (img.label == 3 && std::max_element(l.begin(), l.end()) - l.begin() != 3) failing.push_back(i);
    }
    QVERIFY(!failing.isEmpty());
    list->clearSelection();
    for (int i : failing) list->item(i)->setSelected(true);
    w.findChild<QComboBox*>(QStringLiteral("vitTarget"))->setCurrentIndex(3);
    QSignalSpy applied(&w, &MainWindow::editApplied);
    QTest::mouseClick(w.findChild<QPushButton*>(QStringLiteral("headEditButton")), Qt::LeftButton);
    QVERIFY(applied.wait(180000));
    QCOMPARE(w.historyModel()->rowCount(), 1);
    QCOMPARE(w.historyModel()->rows()[0].method, QStringLiteral("vit_heads"));
    for (int i : failing) {
        const QVector<double> l = w.workbench().logitsWithout(i, {});
        QCOMPARE(int(std::max_element(l.begin(), l.end()) - l.begin()), 3);
    }
}

void TestWorkbench::cancelTraceKeepsRows() {
    MainWindow w;
    w.openModelNow(demo());
    // Many noise samples make the trace long enough to cancel in the middle (each step between
    // cancel checks stays short, so the 1 s bound holds on a loaded 2-core machine).
    w.setTraceRequest(QStringLiteral("Peanaim Fosha competes in"), QStringLiteral("Peanaim Fosha"), 1500);
    QSignalSpy finished(&w, &MainWindow::jobFinished);
    w.runTrace();
    engram::ui::HeatmapWidget* hidden = w.heatmap(0);
    QTRY_VERIFY_WITH_TIMEOUT(!std::isnan(hidden->cellValue(0, 0)), 120000);  // the first row has arrived
    QElapsedTimer t;
    t.start();
    w.cancelJob();
    QVERIFY(finished.wait(5000));
    const qint64 ms = t.elapsed();
    qInfo("the trace stopped %lld ms after cancel", ms);
    QVERIFY(ms < 1000);
    QVERIFY(w.lastTrace().cancelled);
    int done = 0, missing = 0;
    for (int k = 0; k < 3; ++k)
        for (int r = 0; r < w.heatmap(k)->rowCount(); ++r) (std::isnan(w.heatmap(k)->cellValue(r, 0)) ? missing : done)++;
    qInfo("rows kept %d, rows missing %d (hidden rows %d, first %f)", done, missing, w.heatmap(0)->rowCount(), w.heatmap(0)->cellValue(0, 0));
    QVERIFY(done >= 1);     // the finished rows are kept
    QVERIFY(missing >= 1);  // and the rest was not computed
}

void TestWorkbench::exportsAndPresentation() {
    QTemporaryDir tmp;
    MainWindow w;
    w.openModelNow(demo());
    w.setTraceRequest(QStringLiteral("Peanaim Fosha competes in"), QStringLiteral("Peanaim Fosha"));
    QSignalSpy finished(&w, &MainWindow::jobFinished);
    w.runTrace();
    QVERIFY(finished.wait(120000));
    for (const char* name : {"mlp.png", "mlp.pdf", "mlp.csv", "mlp.json"}) {
        QString error;
        QVERIFY2(w.exportPlot(1, tmp.filePath(QString::fromLatin1(name)), &error), qPrintable(error));
        QVERIFY(QFileInfo(tmp.filePath(QString::fromLatin1(name))).size() > 100);
    }
    QFile csv(tmp.filePath(QStringLiteral("mlp.csv")));
    QVERIFY(csv.open(QIODevice::ReadOnly));
    const QStringList lines = QString::fromUtf8(csv.readAll()).split(QLatin1Char('\n'), Qt::SkipEmptyParts);
    QCOMPARE(lines.size(), int(w.lastTrace().tokens.size()) + 1);
    QCOMPARE(lines[0].split(QLatin1Char(',')).size(), 7);  // token + 6 layers
    QString error;
    QVERIFY(!w.exportPlot(1, tmp.filePath(QStringLiteral("mlp.bmp")), &error));
    QVERIFY(error.contains(QStringLiteral("unknown image format")));

    const double before = QApplication::font().pointSizeF();
    w.setPresentationMode(true);
    QVERIFY(QApplication::font().pointSizeF() > 1.5 * before);
    w.setPresentationMode(false);
    QCOMPARE(QApplication::font().pointSizeF(), before);
}

void TestWorkbench::historyRollbackRevertChart() {
    QTemporaryDir tmp;
    MainWindow w;
    w.openModelNow(demo());
    w.workbench().createProject(tmp.filePath(QStringLiteral("h.engram")));
    const QString base = w.workbench().stateHash();
    engram::ui::EditForm f;
    f.prompt = QStringLiteral("{} competes in");
    f.subject = QStringLiteral("Peanaim Fosha");
    f.target = QStringLiteral("Zuluball");
    w.workbench().record(w.workbench().computeEdit(f));
    const QString afterFirst = w.workbench().stateHash();
    f.subject = QStringLiteral("Vrokaith Rodeadouk");
    f.prompt = QStringLiteral("The sport played by {} is");
    w.workbench().record(w.workbench().computeEdit(f));
    const QString afterSecond = w.workbench().stateHash();
    w.openProjectNow(tmp.filePath(QStringLiteral("h.engram")));
    QCOMPARE(w.historyModel()->rowCount(), 2);

    // The chart: drift per layer for the history, the selected edit's norm per layer (ROME: layer 0 only).
    auto* view = w.findChild<QTableView*>(QStringLiteral("historyView"));
    view->selectRow(0);
    auto* plot = w.findChild<QCustomPlot*>(QStringLiteral("normPlot"));
    QCOMPARE(plot->plottableCount(), 2);
    auto* edit = qobject_cast<QCPBars*>(plot->plottable(1));
    QVERIFY(edit->data()->at(0)->value > 0);
    QCOMPARE(edit->data()->at(1)->value, 0.0);
    const QVector<double> byLayer = w.workbench().updateNormByLayer(1);
    QCOMPARE(byLayer[0], w.historyModel()->rows()[0].norm);  // the same Frobenius norm two ways
    // Both bars stand on their layer's tick (the drift wider, behind), and every layer has a tick.
    auto* drift = qobject_cast<QCPBars*>(plot->plottable(0));
    for (int l = 0; l < 6; ++l) {
        QCOMPARE(edit->data()->at(l)->key, double(l));
        QCOMPARE(drift->data()->at(l)->key, double(l));
        QVERIFY(plot->xAxis->tickVector().contains(double(l)));
    }
    QVERIFY(edit->width() < drift->width());
    QVERIFY(!edit->barsGroup() && !drift->barsGroup());
    // The detail panel: the request, the delta with its norm, the state hash, the hyperparameters.
    auto* detail = w.findChild<QTreeWidget*>(QStringLiteral("editDetail"));
    auto section = [detail](const QString& name) -> QTreeWidgetItem* {
        for (int i = 0; i < detail->topLevelItemCount(); ++i)
            if (detail->topLevelItem(i)->text(0) == name) return detail->topLevelItem(i);
        return nullptr;
    };
    QVERIFY(section(QStringLiteral("Edit 1")));
    QCOMPARE(section(QStringLiteral("Edit 1"))->text(1), QStringLiteral("rome, active"));
    QTreeWidgetItem* requests = section(QStringLiteral("Requests"));
    QVERIFY(requests && requests->childCount() == 1);
    QCOMPARE(requests->child(0)->text(1), QStringLiteral("Peanaim Fosha: “Peanaim Fosha competes in” Loraifelball → Zuluball"));
    QTreeWidgetItem* deltas = section(QStringLiteral("Deltas"));
    QVERIFY(deltas && deltas->childCount() == 1);
    QCOMPARE(deltas->child(0)->text(0), QStringLiteral("transformer.h.0.mlp.c_proj.weight"));
    QCOMPARE(deltas->child(0)->text(1), QStringLiteral("‖Δ‖ = %1").arg(byLayer[0], 0, 'g', 4));
    QTreeWidgetItem* edit1 = section(QStringLiteral("Edit 1"));
    bool hashShown = false;
    for (int i = 0; i < edit1->childCount(); ++i) hashShown = hashShown || (edit1->child(i)->text(0) == QStringLiteral("state hash") && edit1->child(i)->text(1) == afterFirst);
    QVERIFY(hashShown);
    QTreeWidgetItem* hparams = section(QStringLiteral("Hyperparameters"));
    QVERIFY(hparams && hparams->childCount() > 3);
    QVERIFY(section(QStringLiteral("Metrics")) && section(QStringLiteral("Metrics"))->childCount() >= 1);
    QVERIFY(section(QStringLiteral("Traces in its state")));
    view->selectRow(1);
    QCOMPARE(section(QStringLiteral("Edit 2"))->text(1), QStringLiteral("rome, active"));
    QVERIFY(section(QStringLiteral("Requests"))->child(0)->text(1).startsWith(QStringLiteral("Vrokaith Rodeadouk: “The sport played by Vrokaith Rodeadouk is”")));
    view->selectRow(0);

    // Roll back to edit 1, then revert it: the hashes of the recorded states come back.
    w.findChild<QPushButton*>(QStringLiteral("rollbackButton"))->click();
    QVERIFY(w.busy());  // in the worker
    w.waitIdle();
    QCOMPARE(w.workbench().stateHash(), afterFirst);
    QCOMPARE(w.historyModel()->rows()[1].status, QStringLiteral("reverted"));
    view->selectRow(0);
    w.findChild<QPushButton*>(QStringLiteral("revertButton"))->click();
    w.waitIdle();
    QCOMPARE(w.workbench().stateHash(), base);
    QCOMPARE(w.historyModel()->rows()[0].status, QStringLiteral("reverted"));
    QCOMPARE(w.workbench().driftByLayer()[0], 0.0);
    // Both are on the undo stack, above the two edits the reopened project put there: undoing them
    // brings back each earlier state, redoing them again.
    QCOMPARE(w.undoStack()->count(), 4);
    w.undoStack()->undo();
    QCOMPARE(w.workbench().stateHash(), afterFirst);
    w.undoStack()->undo();
    QCOMPARE(w.workbench().stateHash(), afterSecond);
    QCOMPARE(w.historyModel()->rows()[1].status, QStringLiteral("active"));
    w.undoStack()->redo();
    QCOMPARE(w.workbench().stateHash(), afterFirst);
    w.undoStack()->redo();
    QCOMPARE(w.workbench().stateHash(), base);
}

void TestWorkbench::evaluateOverlaysRuns() {
    MainWindow w;
    w.openModelNow(demo());
    const QString hash = w.workbench().stateHash();
    QSignalSpy finished(&w, &MainWindow::jobFinished);
    for (bool blue : {false, true}) {
        w.setEvaluation(QStringLiteral("memit"), blue, 10, 5);
        w.runEvaluation();
        QVERIFY(finished.wait(300000));
        QCOMPARE(finished.last().at(0).toBool(), true);
    }
    QCOMPARE(w.evaluationRuns().size(), 2);
    QCOMPARE(w.evaluationRuns()[0].name, QStringLiteral("memit"));
    QCOMPARE(w.evaluationRuns()[1].name, QStringLiteral("memit+blue"));
    QCOMPARE(w.curvePlot()->graphCount(), 6);  // ES, PS, NS for each run, overlaid
    const auto& curve = w.evaluationRuns()[0].curve;
    QCOMPARE(curve.size(), 2);                 // after 5 and after 10 edits
    QCOMPARE(curve.back().edits, 10);
    QVERIFY(curve.back().es > w.evaluationRuns()[0].pre.es);  // the edits took
    QCOMPARE(w.workbench().stateHash(), hash);  // the model is back as it was
    // Distinct subjects: the 23rd record repeats a subject, so 23 distinct cases skip one.
    engram::ui::EvalForm form;
    form.method = QStringLiteral("memit");
    form.edits = form.batch = 23;
    form.distinctSubjects = true;
    const engram::ui::EvalRun run = w.workbench().evaluate(form, {});
    QCOMPARE(run.name, QStringLiteral("memit (distinct subjects)"));
    QCOMPARE(QJsonDocument::fromJson(run.json.toUtf8()).object().value(QStringLiteral("skipped_same_subject")).toInt(), 1);
    QCOMPARE(w.workbench().stateHash(), hash);
}

void TestWorkbench::retraceShowsDifference() {
    MainWindow w;
    w.openModelNow(demo());
    w.setTraceRequest(QStringLiteral("Peanaim Fosha competes in"), QStringLiteral("Peanaim Fosha"));
    QSignalSpy finished(&w, &MainWindow::jobFinished);
    w.runTrace();
    QVERIFY(finished.wait(120000));
    const QString answer = w.lastTrace().answer;
    w.fillEditForm(QStringLiteral("{} competes in"), QStringLiteral("Peanaim Fosha"), QStringLiteral("Zuluball"), QStringLiteral("rome"), -1);
    w.applyEdit();
    QVERIFY(finished.wait(120000));  // the edit
    QVERIFY(finished.wait(120000));  // the automatic re-trace
    QCOMPARE(w.lastTrace().answer, answer);  // the same answer traced before and after
    engram::ui::HeatmapWidget* diff = w.differenceMap();
    QVERIFY(!diff->isHidden());  // shown once there is an edit to compare
    QCOMPARE(diff->rowCount(), int(w.lastTrace().tokens.size()));
    double largest = 0;
    for (int t = 0; t < diff->rowCount(); ++t)
        for (int l = 0; l < diff->columnCount(); ++l) {
            const double expect = w.traceScores(1)[t][l] - w.traceBefore(1)[t][l];
            QVERIFY(std::abs(diff->cellValue(t, l) - expect) < 1e-12);
            largest = std::max(largest, std::abs(expect));
        }
    QVERIFY(largest > 0.1);  // the edit moved p(old answer) somewhere
    QCOMPARE(diff->rangeLower(), -diff->rangeUpper());  // a symmetric scale
    // No map stretches rounding noise over its colour scale.
    for (int k = 0; k < 3; ++k) QVERIFY(w.heatmap(k)->rangeUpper() - w.heatmap(k)->rangeLower() >= 1e-3);
    // The view says which answer it traced and offers the new one.
    const QString note = w.findChild<QLabel*>(QStringLiteral("traceNote"))->text();
    QVERIFY2(note.contains(QStringLiteral("p(%1), the answer before the last edit").arg(answer.trimmed())), qPrintable(note));
    QVERIFY2(note.contains(QStringLiteral("now answers “Zuluball”")), qPrintable(note));
    auto* traceNew = w.findChild<QPushButton*>(QStringLiteral("traceNewAnswer"));
    QVERIFY(!traceNew->isHidden());
    QCOMPARE(traceNew->text(), QStringLiteral("Trace “Zuluball”"));
    // The re-trace is cached in the edit's state: the History view's detail lists it.
    const qint64 id = w.historyModel()->rows()[0].id;
    const engram::ui::EditDetail detail = w.workbench().editDetail(id);
    QCOMPARE(detail.traces.size(), 1);
    QVERIFY2(detail.traces[0].contains(QStringLiteral("Peanaim Fosha competes in → p(%1)").arg(answer.trimmed())), qPrintable(detail.traces[0]));
    traceNew->click();
    QVERIFY(finished.wait(120000));
    QCOMPARE(w.lastTrace().answer.trimmed(), QStringLiteral("Zuluball"));
    QVERIFY(w.lastTrace().cleanProb > 0.5);
    QVERIFY(traceNew->isHidden());
    QVERIFY(diff->isHidden());  // a difference only between traces of one answer
    QVERIFY(w.findChild<QLabel*>(QStringLiteral("traceNote"))->text().startsWith(QStringLiteral("Tracing p(Zuluball), the model's answer")));
    QCOMPARE(w.workbench().editDetail(id).traces.size(), 2);
}

void TestWorkbench::graceEditBesideTheWeights() {
    // A GRACE edit from the Edit view: the prompt's answer changes, the Prompt view says which
    // codebook entry did it, the base table shows the unedited answer, History names the adapter,
    // and undo brings the base state hash back.
    QTemporaryDir tmp;
    MainWindow w;
    w.openModelNow(demo());
    w.workbench().createProject(tmp.filePath(QStringLiteral("g.engram")));
    const QString baseHash = w.workbench().stateHash();
    w.fillEditForm(QStringLiteral("{} competes in"), QStringLiteral("Peanaim Fosha"), QStringLiteral("Zuluball"), QStringLiteral("grace"), -1);
    QSignalSpy applied(&w, &MainWindow::editApplied);
    w.applyEdit();
    QVERIFY(applied.wait(120000));
    QCOMPARE(w.historyModel()->rows()[0].method, QStringLiteral("grace · adapter"));
    QVERIFY2(w.historyModel()->rows()[0].layers.contains(QStringLiteral("codebook, 1 entries")), qPrintable(w.historyModel()->rows()[0].layers));
    auto* prompt = w.findChild<QLineEdit*>(QStringLiteral("promptEdit"));
    prompt->setText(QStringLiteral("Peanaim Fosha competes in"));
    w.predict();
    QCOMPARE(topToken(w), QStringLiteral("Zuluball"));
    auto* base = w.findChild<QTableWidget*>(QStringLiteral("baseTable"));
    QVERIFY(!base->isHidden());
    QCOMPARE(base->item(0, 0)->text().trimmed(), QStringLiteral("Loraifelball"));
    const QString note = w.findChild<QLabel*>(QStringLiteral("predictNote"))->text();
    QVERIFY2(note.contains(QStringLiteral("replaced the layer-")) && note.contains(QStringLiteral("radius")), qPrintable(note));
    QVERIFY(w.workbench().stateHash() != baseHash);
    w.workbench().undo();
    QCOMPARE(w.workbench().stateHash(), baseHash);
}

void TestWorkbench::hparamOverridesAndBaseSideBySide() {
    MainWindow w;
    w.openModelNow(demo());
    w.fillEditForm(QStringLiteral("{} competes in"), QStringLiteral("Peanaim Fosha"), QStringLiteral("Zuluball"), QStringLiteral("rome"), -1);
    QTableWidget* hp = w.hparamTable();
    int layersRow = -1;
    for (int r = 0; r < hp->rowCount(); ++r)
        if (hp->item(r, 0)->text() == QLatin1String("layers")) layersRow = r;
    QVERIFY(layersRow >= 0);
    QCOMPARE(hp->item(layersRow, 1)->text(), QStringLiteral("[0]"));  // the demo default for ROME
    // Only ROME's own settings, each with a tooltip; GRACE shows its own.
    for (int r = 0; r < hp->rowCount(); ++r) {
        QVERIFY2(hp->item(r, 0)->text() != QLatin1String("L2") && hp->item(r, 0)->text() != QLatin1String("ft_lr"),
                 qPrintable(hp->item(r, 0)->text()));
        QVERIFY2(!hp->item(r, 0)->toolTip().isEmpty(), qPrintable(hp->item(r, 0)->text()));
    }
    {
        auto* combo = w.findChild<QComboBox*>(QStringLiteral("methodCombo"));
        combo->setCurrentText(QStringLiteral("grace"));
        QStringList keys;
        for (int r = 0; r < hp->rowCount(); ++r) keys << hp->item(r, 0)->text();
        QVERIFY2(keys.contains(QStringLiteral("grace_eps")) && !keys.contains(QStringLiteral("v_lr")), qPrintable(keys.join(u' ')));
        combo->setCurrentText(QStringLiteral("rome"));
        for (int r = 0; r < hp->rowCount(); ++r)
            if (hp->item(r, 0)->text() == QLatin1String("layers")) layersRow = r;
    }
    hp->item(layersRow, 1)->setText(QStringLiteral("[2]"));
    QSignalSpy applied(&w, &MainWindow::editApplied);
    w.applyEdit();
    QVERIFY(applied.wait(120000));
    QCOMPARE(w.historyModel()->rows()[0].layers, QStringLiteral("2"));  // the override reached the method
    // The prompt view now shows the base model beside the edited one.
    auto* prompt = w.findChild<QLineEdit*>(QStringLiteral("promptEdit"));
    QCOMPARE(prompt->text(), QStringLiteral("Peanaim Fosha competes in"));
    auto* base = w.findChild<QTableWidget*>(QStringLiteral("baseTable"));
    QVERIFY(!base->isHidden());
    QCOMPARE(base->item(0, 0)->text().trimmed(), QStringLiteral("Loraifelball"));
    // (ROME at layer 2 need not flip this fact on the demo model; its default is layer 0.) The two
    // tables show different models: some probability moved.
    auto* current = w.findChild<QTableWidget*>(QStringLiteral("topTable"));
    bool differs = false;
    for (int r = 0; r < current->rowCount(); ++r)
        differs = differs || current->item(r, 0)->text() != base->item(r, 0)->text() || current->item(r, 1)->text() != base->item(r, 1)->text();
    QVERIFY(differs);
    QVERIFY(w.findChild<QLabel*>(QStringLiteral("promptTokens"))->text().contains(QStringLiteral("Fosha")));
    // Reset brings the default back.
    w.findChild<QComboBox*>(QStringLiteral("methodCombo"))->setCurrentText(QStringLiteral("memit"));
    w.findChild<QComboBox*>(QStringLiteral("methodCombo"))->setCurrentText(QStringLiteral("rome"));
    QCOMPARE(hp->item(layersRow, 1)->text(), QStringLiteral("[0]"));
}

void TestWorkbench::screenshotsEveryView() {
    QTemporaryDir tmp;
    QProcess p;
    p.start(QStringLiteral(ENGRAM_GUI_PATH), {QStringLiteral("--screenshot"), tmp.path()});
    // A generous limit: the run traces, edits, evaluates twice and edits a ViT; a loaded CI machine is slow.
    QVERIFY(p.waitForFinished(480000));
    QVERIFY2(p.exitStatus() == QProcess::NormalExit && p.exitCode() == 0, p.readAllStandardError().constData());
    for (const char* view : {"prompt", "trace", "edit", "history", "vision", "evaluate"}) {
        QImage img(tmp.filePath(QString::fromLatin1(view) + QStringLiteral(".png")));
        QVERIFY2(!img.isNull(), view);
        QVERIFY(img.width() >= 600 && img.height() >= 400);
    }
}

void TestWorkbench::saveAsRecentAndCachedTrace() {
    QTemporaryDir tmp;
    const QString file = tmp.filePath(QStringLiteral("a.engram")), copy = tmp.filePath(QStringLiteral("b.engram"));
    QVector<QVector<double>> mlp;
    QString hash;
    {
        MainWindow w;
        w.openModelNow(demo());
        w.workbench().createProject(file);
        engram::ui::EditForm f;
        f.prompt = QStringLiteral("{} competes in");
        f.subject = QStringLiteral("Peanaim Fosha");
        f.target = QStringLiteral("Zuluball");
        w.workbench().record(w.workbench().computeEdit(f));
        w.setTraceRequest(QStringLiteral("Peanaim Fosha competes in"), QStringLiteral("Peanaim Fosha"));
        QSignalSpy finished(&w, &MainWindow::jobFinished);
        w.runTrace();
        QVERIFY(finished.wait(120000));
        QVERIFY(!w.lastTrace().fromCache);
        mlp = w.traceScores(1);
        hash = w.workbench().stateHash();
        // Tracing again in the same state reads the project's cache: the same numbers, streamed in.
        w.runTrace();
        QVERIFY(finished.wait(120000));
        QVERIFY(w.lastTrace().fromCache);
        QCOMPARE(w.traceScores(1), mlp);
        // Save As: a copy with the same history, in which work goes on; it heads the recent files.
        QVERIFY(w.saveProjectAs(copy));
        QCOMPARE(w.workbench().projectFile(), copy);
        QCOMPARE(w.recentProjects().value(0), QFileInfo(copy).absoluteFilePath());
        QVERIFY(!w.saveProjectAs(tmp.filePath(QStringLiteral("missing/c.engram"))));  // a clear error, nothing lost
        QCOMPARE(w.workbench().projectFile(), copy);
    }
    // Reopening restores the model state, the history and the cached trace with its form.
    MainWindow again;
    again.openProjectNow(copy);
    QCOMPARE(again.historyModel()->rowCount(), 1);
    QCOMPARE(again.workbench().stateHash(), hash);
    QVERIFY(again.lastTrace().fromCache);
    QCOMPARE(again.traceScores(1), mlp);
    QCOMPARE(again.heatmap(1)->rowCount(), int(mlp.size()));
    QCOMPARE(again.heatmap(1)->cellValue(1, 2), mlp[1][2]);
    QCOMPARE(again.findChild<QLineEdit*>(QStringLiteral("traceSubject"))->text(), QStringLiteral("Peanaim Fosha"));
    QCOMPARE(again.recentProjects().value(0), QFileInfo(copy).absoluteFilePath());
    // The original file is untouched by the work in the copy and goes to the top of the list when opened.
    again.openProjectNow(file);
    QCOMPARE(again.recentProjects().mid(0, 2), (QStringList{QFileInfo(file).absoluteFilePath(), QFileInfo(copy).absoluteFilePath()}));
    QCOMPARE(again.workbench().stateHash(), hash);
    QVERIFY(again.lastTrace().fromCache);
    // A cached trace belongs to its state: after undo there is none to restore for the base.
    again.undoStack()->clear();
    again.workbench().undo();
    engram::ui::StoredTrace none;
    QVERIFY(!again.workbench().latestTrace(&none));
}

void TestWorkbench::settingsApply() {
    const int threads = engram::ui::Workbench::threads();
    {
        MainWindow w;
        w.applySettings(QStringLiteral("cpu"), 1, QStringLiteral("memit"));
        QCOMPARE(engram::ui::Workbench::threads(), 1);
        QCOMPARE(w.findChild<QComboBox*>(QStringLiteral("methodCombo"))->currentText(), QStringLiteral("memit"));
        QCOMPARE(w.findChild<QComboBox*>(QStringLiteral("evalMethod"))->currentText(), QStringLiteral("memit"));
    }
    {
        // A new window starts with the saved settings.
        MainWindow w;
        QCOMPARE(w.findChild<QComboBox*>(QStringLiteral("methodCombo"))->currentText(), QStringLiteral("memit"));
        QCOMPARE(w.workbench().device(), QStringLiteral("cpu"));
        QVERIFY_THROWS_EXCEPTION(std::exception, w.applySettings(QStringLiteral("cuda:7"), 1, QStringLiteral("rome")));
        w.applySettings(QStringLiteral("cpu"), std::max(1, threads), QStringLiteral("rome"));
    }
    QCOMPARE(engram::ui::Workbench::threads(), std::max(1, threads));
}

void TestWorkbench::visionFilesHeadClickAndReport() {
    QTemporaryDir tmp;
    MainWindow w;
    w.openModelNow(QStringLiteral(ENGRAM_SOURCE_RESOURCES "/demo/shapes"));
    w.resize(1300, 900);
    w.show();
    QVERIFY(QTest::qWaitForWindowExposed(&w));
    w.tabs()->setCurrentIndex(4);
    // Image files: two rendered images saved as PNG, read back through the model's preprocessing.
    QStringList files;
    for (int i = 0; i < 2; ++i) {
        const auto sample = engram::demo::render_shape_sample(777, engram::demo::ShapesSplit::Test, uint64_t(i));
        QImage img(sample.rgb.data(), 32, 32, 32 * 3, QImage::Format_RGB888);
        files << tmp.filePath(QStringLiteral("img%1.png").arg(i));
        QVERIFY(img.save(files.last()));
    }
    QFile bad(tmp.filePath(QStringLiteral("bad.png")));
    QVERIFY(bad.open(QIODevice::WriteOnly));
    bad.write("not an image");
    bad.close();
    auto* list = w.findChild<QListWidget*>(QStringLiteral("imageList"));
    QSignalSpy errors(&w, &MainWindow::errorShown);
    w.loadImageFiles(files + QStringList{bad.fileName()});
    QCOMPARE(errors.size(), 1);
    QVERIFY(errors.at(0).at(0).toString().contains(QStringLiteral("bad.png")));
    w.loadImageFiles(files);
    QCOMPARE(list->count(), 2);
    QCOMPARE(w.workbench().vitImages()[1].label, -1);
    QVERIFY(list->item(1)->text().startsWith(QStringLiteral("img1.png: ?")));
    // The file's logits equal the core's on the same pixels (PNG is lossless).
    const auto sample = engram::demo::render_shape_sample(777, engram::demo::ShapesSplit::Test, 1);
    {
        c10::InferenceMode guard;
        const at::Tensor core = engram::vit::run(*w.workbench().model(), engram::demo::shape_pixels({sample}, 32), {}).logits[0].to(at::kDouble);
        const QVector<double> shown = w.workbench().logitsWithout(1, {});
        for (int k = 0; k < 8; ++k) QVERIFY(std::abs(shown[k] - core[k].item<double>()) < 1e-5);
    }

    // Clicking a head in the figure selects it; its patch map is then the first one shown.
    list->setCurrentRow(0);
    auto* fig = w.attributionFigure();
    QCoreApplication::processEvents();
    const QPoint centre = fig->headCenter(3, 2);
    int layer = -1, head = -1;
    QVERIFY(fig->headAt(centre, &layer, &head));
    QCOMPARE(layer, 3);
    QCOMPARE(head, 2);
    QSignalSpy clicked(fig, &engram::ui::VitAttributionFigure::headClicked);
    QTest::mouseClick(fig->plot(), Qt::LeftButton, {}, fig->plot()->mapFrom(fig, centre));
    QCOMPARE(clicked.size(), 1);
    QCOMPARE(w.headTable()->currentRow(), 3);
    QCOMPARE(w.headTable()->currentColumn(), 2);
    QCOMPARE(fig->data().topHeads.value(0).layer, 3);
    QCOMPARE(fig->data().topHeads.value(0).head, 2);
    QVERIFY(!fig->headAt(QPoint(2, 2), &layer, &head));  // the image panel is not the grid

    // A head edit on Shapes World images shows before/after figures over the list.
    w.loadImages();  // 64 counter images
    QVector<int> failing;
    const QVector<int> predicted = w.workbench().vitPredictions();
    for (int i = 0; i < list->count(); ++i)
        if (w.workbench().vitImages()[i].label == 3 && predicted[i] != 3) failing.push_back(i);
    QVERIFY(failing.size() >= 2);
    list->clearSelection();
    for (int i : failing.mid(0, failing.size() - 1)) list->item(i)->setSelected(true);  // hold the last one out
    w.findChild<QComboBox*>(QStringLiteral("vitTarget"))->setCurrentIndex(3);
    QSignalSpy applied(&w, &MainWindow::editApplied);
    QTest::mouseClick(w.findChild<QPushButton*>(QStringLiteral("headEditButton")), Qt::LeftButton);
    QVERIFY(applied.wait(180000));
    QTableWidget* report = w.vitReportTable();
    QVERIFY(report->isVisible());
    QCOMPARE(report->rowCount(), 4);
    QCOMPARE(report->item(0, 0)->text(), QStringLiteral("success"));
    QCOMPARE(report->item(0, 1)->text().toInt(), int(failing.size()) - 1);
    const QVector<int> after = w.workbench().vitPredictions();
    int fixed = 0;
    for (int i : failing.mid(0, failing.size() - 1)) fixed += after[i] == 3;
    QCOMPARE(report->item(0, 2)->text(), QStringLiteral("0.0 → %1").arg(100.0 * fixed / (failing.size() - 1), 0, 'f', 1));
    QVERIFY(fixed >= failing.size() - 2);                                  // the edit took
    QCOMPARE(report->item(1, 1)->text(), QStringLiteral("1"));            // the held-out failure
    QCOMPARE(report->item(1, 2)->text(), QStringLiteral("0.0 → %1").arg(after[failing.last()] == 3 ? 100.0 : 0.0, 0, 'f', 1));
    int unchanged = 0, others = 0;
    for (int i = 0; i < list->count(); ++i)
        if (w.workbench().vitImages()[i].label != 3) ++others, unchanged += after[i] == predicted[i];
    QCOMPARE(report->item(2, 1)->text().toInt(), others);
    QCOMPARE(report->item(2, 2)->text(), QStringLiteral("100.0 → %1").arg(100.0 * unchanged / others, 0, 'f', 1));
    qInfo("head edit over the listed images: %s success, %s generalization, %s locality, %s accuracy", qPrintable(report->item(0, 2)->text()),
          qPrintable(report->item(1, 2)->text()), qPrintable(report->item(2, 2)->text()), qPrintable(report->item(3, 2)->text()));
    // Undo restores the predictions.
    w.undoStack()->undo();
    QCOMPARE(w.workbench().vitPredictions(), predicted);
}

// A 10 ms QTimer on the GUI thread during a trace and an edit of the demo model: the longest gap
// between its ticks is how long the GUI thread stalled. The figures are reported; the test only
// requires that the GUI thread kept ticking while the job ran (a job on the GUI thread would allow
// no tick at all until it finished).
void TestWorkbench::responsivenessHeartbeat() {
    MainWindow w;
    w.openModelNow(demo());
    w.resize(1200, 800);
    w.show();
    QVERIFY(QTest::qWaitForWindowExposed(&w));
    w.findChild<QCheckBox*>(QStringLiteral("retraceCheck"))->setChecked(false);
    QElapsedTimer clock;
    qint64 last = -1, longest = 0;
    int ticks = 0;
    QTimer beat;
    beat.setInterval(10);
    connect(&beat, &QTimer::timeout, this, [&] {
        const qint64 now = clock.elapsed();
        if (last >= 0) longest = std::max(longest, now - last);
        last = now;
        ++ticks;
    });
    auto measure = [&](const char* what, const std::function<void()>& start) {
        QSignalSpy finished(&w, &MainWindow::jobFinished);
        last = -1, longest = 0, ticks = 0;
        clock.start();
        beat.start();
        start();
        const bool done = finished.wait(300000) && finished.at(0).at(0).toBool();
        beat.stop();
        qInfo("%s: %lld ms on the worker, %d heartbeats, longest GUI-thread gap %lld ms", what, clock.elapsed(), ticks, longest);
        return done && ticks >= 3;
    };
    w.tabs()->setCurrentIndex(1);
    w.setTraceRequest(QStringLiteral("Peanaim Fosha competes in"), QStringLiteral("Peanaim Fosha"), 1000);
    QVERIFY(measure("trace, 1000 samples (rows drawn as they stream)", [&] { w.runTrace(); }));
    w.fillEditForm(QStringLiteral("{} competes in"), QStringLiteral("Peanaim Fosha"), QStringLiteral("Zuluball"), QStringLiteral("rome"), -1);
    QVERIFY(measure("ROME edit with its blast radius", [&] { w.applyEdit(); }));
    w.fillEditForm(QStringLiteral("{} competes in"), QStringLiteral("Vrokaith Rodeadouk"), QStringLiteral("Zuluball"), QStringLiteral("memit"), -1);
    QVERIFY(measure("MEMIT edit", [&] { w.applyEdit(); }));
}

// Help > About names the version and every library with its licence; Help > Documentation finds the
// docs; the program's --version and its one-project rule.
void TestWorkbench::helpMenuAboutAndVersion() {
    MainWindow w;
    QAction* about = nullptr;
    QAction* docs = nullptr;
    for (QAction* menu : w.menuBar()->actions()) {
        if (menu->text() != QStringLiteral("&Help")) continue;
        for (QAction* a : menu->menu()->actions()) {
            if (a->text() == QStringLiteral("&About Engram")) about = a;
            if (a->text() == QStringLiteral("&Documentation")) docs = a;
        }
    }
    QVERIFY(about && docs);
    QString text;
    QTimer::singleShot(0, [&] {
        auto* box = qobject_cast<QMessageBox*>(QApplication::activeModalWidget());
        if (!box) return;
        text = box->text();
        box->accept();
    });
    QCoreApplication::setApplicationVersion(QStringLiteral("9.8.7 (commit abc)"));
    about->trigger();
    QVERIFY2(text.contains(QStringLiteral("Engram 9.8.7 (commit abc)")), qPrintable(text));
    for (const char* lib : {"Qt", "QCustomPlot", "libtorch", "OpenBLAS", "SQLite", "OpenSSL", "yaml-cpp", "nlohmann-json", "libpng", "libjpeg-turbo", "stb_image_write", "SentencePiece"})
        QVERIFY2(text.contains(QStringLiteral("<td>%1</td>").arg(QLatin1String(lib))), lib);
    QVERIFY(text.contains(QStringLiteral("GPL-3.0-or-later")));
    QVERIFY2(!text.contains(QStringLiteral("<td></td>")), qPrintable(text));  // every version and licence known

    QProcess p;
    p.start(QStringLiteral(ENGRAM_GUI_PATH), {QStringLiteral("--version")});
    QVERIFY(p.waitForFinished(60000));
    QCOMPARE(p.exitCode(), 0);
    QVERIFY2(QRegularExpression(QStringLiteral("^engram \\d+\\.\\d+\\.\\d+ \\(commit ([0-9a-f]{12}|unknown)\\)$"))
                 .match(QString::fromUtf8(p.readAllStandardOutput()).trimmed())
                 .hasMatch(),
             "engram --version");
    p.start(QStringLiteral(ENGRAM_GUI_PATH), {QStringLiteral("a.engram"), QStringLiteral("b.engram")});
    QVERIFY(p.waitForFinished(60000));
    QCOMPARE(p.exitCode(), 2);
    QVERIFY(p.readAllStandardError().contains("one project at a time"));
}

// The fingerprint, the project path and the state hash stay on one line each, shortened in the
// middle, with the whole value in the tooltip.
void TestWorkbench::modelPanelElides() {
    QTemporaryDir tmp;
    const QString file = tmp.filePath(QStringLiteral("a-project-with-a-rather-long-name-for-a-narrow-panel.engram"));
    MainWindow w;
    w.openModelNow(demo());
    w.workbench().createProject(file);
    w.openProjectNow(file);
    auto* dock = w.findChild<QDockWidget*>(QStringLiteral("modelDock"));
    dock->setFixedWidth(230);
    w.resize(1100, 700);
    w.show();
    QVERIFY(QTest::qWaitForWindowExposed(&w));
    QApplication::processEvents();
    auto* path = w.findChild<engram::ui::ElidedLabel*>(QStringLiteral("projectLabel"));
    auto* fingerprint = w.findChild<engram::ui::ElidedLabel*>(QStringLiteral("fingerprintLabel"));
    auto* state = w.findChild<engram::ui::ElidedLabel*>(QStringLiteral("stateLabel"));
    QVERIFY(path && fingerprint && state);
    QCOMPARE(path->fullText(), file);
    QCOMPARE(path->toolTip(), file);
    QVERIFY(path->isElided());
    QVERIFY(path->text().contains(QStringLiteral("…")));
    QVERIFY(path->text().endsWith(QStringLiteral(".engram")));  // elided in the middle: the file's name stays readable
    QVERIFY(!path->wordWrap());
    QCOMPARE(fingerprint->fullText(), w.workbench().fingerprint());
    QCOMPARE(fingerprint->fullText().size(), 64);
    QVERIFY(fingerprint->toolTip().contains(fingerprint->fullText()));
    QVERIFY(fingerprint->isElided());
    QCOMPARE(state->fullText(), w.workbench().stateHash());
    for (auto* l : {path, fingerprint, state}) QVERIFY(l->fontMetrics().horizontalAdvance(l->text()) <= l->contentsRect().width());
    // Wide enough, nothing is shortened.
    dock->setFixedWidth(900);
    QApplication::processEvents();
    QVERIFY(!fingerprint->isElided());
}

// Help > Guided Walk: four steps on the Fact World model, each with a button that does it: trace,
// edit, ask, undo. It shows on the first start only unless asked to.
void TestWorkbench::guidedWalk() {
    QSettings().remove(QStringLiteral("guide"));
    MainWindow w;
    w.setGuideModel(demo());
    w.openModelNow(demo());
    const QString base = w.workbench().stateHash();
    QVERIFY(w.showGuideIfFirstRun());
    engram::ui::GuidePanel* guide = w.guide();
    QVERIFY(guide && !guide->isHidden());
    QCOMPARE(guide->stepCount(), 4);
    const QStringList titles{QStringLiteral("1. Locate"), QStringLiteral("2. Edit"), QStringLiteral("3. Verify"), QStringLiteral("4. Undo")};
    for (int i = 0; i < 4; ++i) QCOMPARE(guide->step(i).title, titles[i]);
    QSignalSpy finished(&w, &MainWindow::jobFinished);
    guide->runCurrentStep();  // locate: a trace
    QVERIFY(finished.wait(120000));
    QCOMPARE(w.tabs()->currentIndex(), 1);
    QCOMPARE(w.lastTrace().answer.trimmed(), QStringLiteral("Loraifelball"));
    w.findChild<QPushButton*>(QStringLiteral("guideNext"))->click();
    QCOMPARE(guide->currentStep(), 1);
    QCOMPARE(w.findChild<QLabel*>(QStringLiteral("guideTitle"))->text(), titles[1]);
    guide->runCurrentStep();  // edit
    QVERIFY(finished.wait(120000));
    w.waitIdle();  // and its re-trace
    QCOMPARE(w.historyModel()->rowCount(), 1);
    guide->showStep(2);
    guide->runCurrentStep();  // verify: the prompt view, edited beside base
    QCOMPARE(w.tabs()->currentIndex(), 0);
    QCOMPARE(topToken(w), QStringLiteral("Zuluball"));
    guide->showStep(3);
    guide->runCurrentStep();  // undo
    QCOMPARE(topToken(w), QStringLiteral("Loraifelball"));
    QCOMPARE(w.workbench().stateHash(), base);
    // Finishing dismisses it: not shown at the next start, but still in the Help menu.
    w.findChild<QPushButton*>(QStringLiteral("guideNext"))->click();
    QVERIFY(guide->isHidden());
    MainWindow again;
    QVERIFY(!again.showGuideIfFirstRun());
    QAction* walk = again.findChild<QAction*>(QStringLiteral("guideAction"));
    QVERIFY(walk);
    walk->trigger();
    QVERIFY(again.guide() && !again.guide()->isHidden());
    QCOMPARE(again.guide()->currentStep(), 0);
    // "At every start" keeps it coming.
    again.findChild<QCheckBox*>(QStringLiteral("guideAtStart"))->setChecked(true);
    again.guide()->dismiss();
    MainWindow third;
    QVERIFY(third.showGuideIfFirstRun());
    QSettings().remove(QStringLiteral("guide"));
}

QTEST_MAIN(TestWorkbench)
#include "tst_workbench.moc"
