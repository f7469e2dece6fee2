// The workbench window: a model panel; the Prompt, Causal trace, Edit, History, Vision and
// Evaluate views; undo/redo of edits, rollbacks and reverts through a QUndoStack; long work
// (opening a model, tracing, computing an edit, evaluating) as one cancellable job at a time in a
// worker thread; projects with Save As and recent files; settings (device, threads, default method).
#pragma once

#include <QFont>
#include <QMainWindow>
#include <QPalette>

#include <atomic>
#include <functional>
#include <memory>

#include "session/workbench.h"

class QCheckBox;
class QComboBox;
class QCustomPlot;
class QLabel;
class QLineEdit;
class QMenu;
class QListWidget;
class QProgressBar;
class QPushButton;
class QSpinBox;
class QTabWidget;
class QTableView;
class QTableWidget;
class QToolButton;
class QTreeWidget;
class QUndoStack;
class QVBoxLayout;

namespace engram::ui {

class ElidedLabel;
class GuidePanel;
class HeatmapWidget;
class HistoryModel;
class VitAttributionFigure;

class MainWindow : public QMainWindow {
    Q_OBJECT

public:
    explicit MainWindow(QWidget* parent = nullptr);
    ~MainWindow() override;

    Workbench& workbench() { return *m_bench; }
    QUndoStack* undoStack() const { return m_undo; }
    HistoryModel* historyModel() const { return m_history; }
    QTabWidget* tabs() const { return m_tabs; }
    // The trace view's heatmaps: 0 hidden states, 1 MLP, 2 attention.
    HeatmapWidget* heatmap(int kind) const { return m_heatmaps[kind]; }
    const QVector<EvalRun>& evaluationRuns() const { return m_runs; }
    QCustomPlot* curvePlot() const { return m_curves; }
    QTableWidget* hparamTable() const { return m_hparams; }
    void setEvaluation(const QString& method, bool blue, int edits, int batch);
    const TraceSummary& lastTrace() const { return m_trace; }
    // After an edit with re-tracing on: (after - before) of the chosen kind, on one scale for all kinds.
    HeatmapWidget* differenceMap() const { return m_diffMap; }
    const QVector<QVector<double>>& traceScores(int kind) const { return m_traceScores[kind]; }
    const QVector<QVector<double>>& traceBefore(int kind) const { return m_before[kind]; }
    // Vision view: the logits shown for the current image (with the toggled heads removed).
    const QVector<double>& visionLogits() const { return m_vitLogits; }
    QTableWidget* headTable() const { return m_headTable; }
    VitAttributionFigure* attributionFigure() const { return m_figure; }
    bool busy() const { return m_busy; }
    // Runs the event loop until the current job (if any) has finished.
    void waitIdle();

    // Synchronous opening (startup, tests); the menu actions run these as jobs.
    void openModelNow(const QString& dir);
    void openProjectNow(const QString& file);
    // File > Save Project As: the project is copied to `file` and work goes on in the copy.
    bool saveProjectAs(const QString& file);
    // The recent projects, newest first (File > Open Recent), kept in QSettings.
    QStringList recentProjects() const;
    // Applies and saves the settings (what the Settings dialog does on OK).
    void applySettings(const QString& device, int threads, const QString& defaultMethod);
    // Vision view: image files instead of rendered Shapes World images.
    void loadImageFiles(const QStringList& files);
    // The before/after report of the last head-level edit.
    QTableWidget* vitReportTable() const { return m_vitReport; }

    // Fills the edit form (what clicking a heatmap cell will do).
    void fillEditForm(const QString& prompt, const QString& subject, const QString& target, const QString& method, int layer);
    void setTraceRequest(const QString& prompt, const QString& subject, int samples = 10);
    // Exports a trace heatmap (kind 0-2) or the vision figure (kind -1): PNG, PDF or SVG draws
    // the figure, CSV or JSON writes its data. false with *error when it could not be written.
    bool exportPlot(int kind, const QString& path, QString* error = nullptr) const;
    void setPresentationMode(bool on);
    // A File menu entry that opens a built-in demo model.
    void addDemoModel(const QString& title, const QString& dir);
    // The prompt view asking `prompt` (the current model beside the base when edits are active).
    void showPrediction(const QString& prompt);
    // The guided walk (Help > Guided Walk) on the Fact World model at `factWorld`.
    void setGuideModel(const QString& factWorld);
    GuidePanel* showGuide();
    // Shows the walk on a first start (and on every start when asked to); true when it was shown.
    bool showGuideIfFirstRun();
    GuidePanel* guide() const { return m_guide; }
    // Saves one PNG per main view into `dir`.
    // `only`: the tab indexes to save (empty: all).
    bool saveScreenshots(const QString& dir, QString* error = nullptr, const QVector<int>& only = {});

public Q_SLOTS:
    void predict();
    void generateText();
    void resetHParams();
    void applyEdit();
    void runTrace();
    void loadImages();
    void showImage(int index);
    void applyHeadEdit();
    void rollbackToSelected();
    void revertSelected();
    void exportModelDialog();
    void runEvaluation();
    void cancelJob();

Q_SIGNALS:
    void editApplied(qint64 id);
    void jobFinished(bool ok);
    void errorShown(const QString& message);

protected:
    void closeEvent(QCloseEvent* event) override;

private:
    void pushActiveChange(const QString& text, const QVector<qint64>& before);
    void showVitReport(const QVector<VitMetricRow>& rows);
    void fillImageList();
    void updateImageListPredictions();
    void addRecentProject(const QString& file);
    void rebuildRecentMenu();
    void saveProjectAsDialog();
    void settingsDialog();
    void restoreCachedTrace();
    void projectOpened(const QString& file);
    void showStoredTrace(const StoredTrace& trace);
    void buildMenus();
    QString documentationIndex() const;
    void openDocumentation();
    void showAbout();
    QWidget* buildPromptView();
    void fillTopTable(QTableWidget* table, const QVector<TokenProb>& top);
    QWidget* buildEditView();
    QWidget* buildTraceView();
    QWidget* buildVisionView();
    void updateVisionPredictions();
    void showPatchMapOf(int layer, int head);
    void addExportMenu(QWidget* plot, int kind);
    void updateNormChart();
    void showEditDetail();
    QWidget* buildEvaluateView();
    void drawCurves();
    qint64 selectedEditId() const;
    void showTraceRow(int kind, int token, const QVector<double>& scores);
    void showDifference();
    void showTraceNote(bool afterEdit);
    void traceCellClicked(int kind, int row, int column);
    QWidget* buildHistoryView();
    void refresh();  // model panel, history, prediction
    void runJob(const QString& what, std::function<void()> work, std::function<void()> done);
    void showError(const QString& what, const QString& message);
    void openModelDialog();
    void openProjectDialog();
    void newProjectDialog();

    std::unique_ptr<Workbench> m_bench;
    QUndoStack* m_undo = nullptr;
    HistoryModel* m_history = nullptr;
    QTabWidget* m_tabs = nullptr;
    QLabel* m_modelLabel = nullptr;
    ElidedLabel* m_fingerprintLabel = nullptr;
    ElidedLabel* m_projectLabel = nullptr;
    ElidedLabel* m_stateLabel = nullptr;
    QLineEdit* m_prompt = nullptr;
    QTableWidget* m_topTable = nullptr;
    QLabel* m_predictNote = nullptr;
    QLabel* m_tokens = nullptr;
    QLabel* m_generated = nullptr;
    QTableWidget* m_baseTable = nullptr;
    QTableWidget* m_hparams = nullptr;
    QVector<QPair<QString, QString>> m_hparamDefaults;
    QString m_hparamsFor;  // the model the table was filled for
    QLineEdit* m_editPrompt = nullptr;
    QLineEdit* m_editSubject = nullptr;
    QLineEdit* m_editTarget = nullptr;
    QComboBox* m_method = nullptr;
    QCheckBox* m_blue = nullptr;
    QSpinBox* m_layer = nullptr;
    QPushButton* m_apply = nullptr;
    QTableWidget* m_result = nullptr;
    QTableView* m_historyView = nullptr;
    QCustomPlot* m_normPlot = nullptr;
    QTreeWidget* m_editDetail = nullptr;
    QComboBox* m_evalMethod = nullptr;
    QCheckBox* m_evalBlue = nullptr;
    QCheckBox* m_evalDistinct = nullptr;
    QSpinBox* m_evalEdits = nullptr;
    QSpinBox* m_evalBatch = nullptr;
    QComboBox* m_evalFamily = nullptr;
    QLineEdit* m_evalDataset = nullptr;
    QPushButton* m_evalRun = nullptr;
    QCustomPlot* m_curves = nullptr;
    QTableWidget* m_evalTable = nullptr;
    QVector<EvalRun> m_runs;
    QLineEdit* m_tracePrompt = nullptr;
    QLineEdit* m_traceSubject = nullptr;
    QPushButton* m_traceButton = nullptr;
    QLabel* m_traceNote = nullptr;
    QSpinBox* m_traceSamples = nullptr;
    QSpinBox* m_traceWindow = nullptr;  // 0: auto (Workbench::defaultTraceWindow)
    QPushButton* m_traceNewAnswer = nullptr;
    QFont m_normalFont;
    QPalette m_normalPalette;
    bool m_presenting = false;
    HeatmapWidget* m_heatmaps[3] = {nullptr, nullptr, nullptr};
    HeatmapWidget* m_diffMap = nullptr;
    QComboBox* m_diffKind = nullptr;
    QCheckBox* m_retrace = nullptr;
    QVector<QVector<double>> m_before[3];  // the trace before the last edit
    bool m_diffPending = false, m_haveDiff = false;
    QVector<QVector<double>> m_traceScores[3];  // [kind][token][layer], NaN until the row arrives
    TraceSummary m_trace;
    QListWidget* m_imageList = nullptr;
    QComboBox* m_split = nullptr;
    QSpinBox* m_imageCount = nullptr;
    VitAttributionFigure* m_figure = nullptr;
    QTableWidget* m_headTable = nullptr;
    QTableWidget* m_vitPredictions = nullptr;
    QComboBox* m_vitTarget = nullptr;
    QPushButton* m_headEdit = nullptr;
    QVector<double> m_vitLogits;
    VitAttributionView m_vitView;
    int m_vitIndex = -1;
    bool m_fillingHeads = false;
    QMenu* m_fileMenu = nullptr;
    GuidePanel* m_guide = nullptr;
    QString m_guideModel;
    QMenu* m_recentMenu = nullptr;
    QVBoxLayout* m_panelLayout = nullptr;
    QAction* m_undoAction = nullptr;
    QAction* m_redoAction = nullptr;
    QTableWidget* m_vitReport = nullptr;
    QTabWidget* m_vitSide = nullptr;
    QProgressBar* m_progress = nullptr;
    QToolButton* m_cancel = nullptr;
    QLabel* m_status = nullptr;
    bool m_busy = false;
    std::atomic<bool> m_cancelFlag{false};
};

}  // namespace engram::ui
