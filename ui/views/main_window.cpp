#include "views/main_window.h"

#include <QAction>
#include <QApplication>
#include <QCheckBox>
#include <QCloseEvent>
#include <QComboBox>
#include <QDialog>
#include <QDialogButtonBox>
#include <QDesktopServices>
#include <QDir>
#include <QDockWidget>
#include <QEventLoop>
#include <QFile>
#include <QFileDialog>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QFileInfo>
#include <QMenu>
#include <QTextStream>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QSplitter>
#include <QMenuBar>
#include <QMessageBox>
#include <QProgressBar>
#include <QPushButton>
#include <QSettings>
#include <QSpinBox>
#include <QStatusBar>
#include <QTabWidget>
#include <QTableView>
#include <QTableWidget>
#include <QThread>
#include <QTreeWidget>
#include <QToolButton>
#include <QUndoStack>
#include <QUrl>
#include <QVBoxLayout>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "engram/methods.h"
#include "engram/about.h"
#include "models/history_model.h"
#include "views/guide_panel.h"
#include "widgets/elided_label.h"
#include "widgets/heatmap_widget.h"
#include "widgets/plot_export.h"
#include "widgets/qcustomplot_include.h"
#include "widgets/vit_attribution_figure.h"

namespace engram::ui {

namespace {

const QColor kWarningRed(0xb0, 0x20, 0x20);  // a failing image, a regressed neighbour

// A table the user reads but does not edit: one column per header and no row numbers. With
// `stretch` >= 0 that column takes the spare width and the others fit their contents.
QTableWidget* readOnlyTable(QWidget* parent, const QString& name, const QStringList& headers, int stretch) {
    auto* t = new QTableWidget(0, int(headers.size()), parent);
    t->setObjectName(name);
    t->setHorizontalHeaderLabels(headers);
    if (stretch >= 0)
        for (int c = 0; c < headers.size(); ++c)
            t->horizontalHeader()->setSectionResizeMode(c, c == stretch ? QHeaderView::Stretch : QHeaderView::ResizeToContents);
    t->verticalHeader()->hide();
    t->setEditTriggers(QAbstractItemView::NoEditTriggers);
    return t;
}

// Fills row `row` with one text item per cell (in `color` when it is valid).
void setRowTexts(QTableWidget* table, int row, const QStringList& cells, const QColor& color = QColor()) {
    for (int c = 0; c < cells.size(); ++c) {
        auto* item = new QTableWidgetItem(cells[c]);
        if (color.isValid()) item->setForeground(color);
        table->setItem(row, c, item);
    }
}

// A change of the project's active edits on the undo stack: an applied edit, a rollback or a
// revert. It is done (computed, recorded) before it is pushed, so the first redo() (QUndoStack::push
// calls it) does nothing. Undo and redo restore the exact active sets seen before and after, so
// they stay right whatever else the stack holds. A failure (another process changed the project)
// is reported and the command dropped from the stack.
class ActiveSetCommand : public QUndoCommand {
public:
    ActiveSetCommand(Workbench& bench, const QString& text, QVector<qint64> before, QVector<qint64> after, std::function<void()> changed,
                     std::function<void(const QString&)> failed)
        : m_bench(bench), m_before(std::move(before)), m_after(std::move(after)), m_changed(std::move(changed)), m_failed(std::move(failed)) {
        setText(text);
    }
    void undo() override { set(m_before); }
    void redo() override {
        if (m_first) {
            m_first = false;
            return;
        }
        set(m_after);
    }

private:
    void set(const QVector<qint64>& ids) {
        try {
            m_bench.restoreActive(ids);
        } catch (const std::exception& e) {
            setObsolete(true);
            m_failed(QString::fromStdString(e.what()));
        }
        m_changed();
    }

    Workbench& m_bench;
    QVector<qint64> m_before, m_after;
    std::function<void()> m_changed;
    std::function<void(const QString&)> m_failed;
    bool m_first = true;
};

}  // namespace

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent), m_bench(std::make_unique<Workbench>()) {
    setWindowTitle(QStringLiteral("Engram"));
    m_undo = new QUndoStack(this);
    m_history = new HistoryModel(this);

    m_tabs = new QTabWidget(this);
    m_tabs->addTab(buildPromptView(), tr("Prompt"));
    m_tabs->addTab(buildTraceView(), tr("Causal trace"));
    m_tabs->addTab(buildEditView(), tr("Edit"));
    m_tabs->addTab(buildHistoryView(), tr("History"));
    m_tabs->addTab(buildVisionView(), tr("Vision"));
    m_tabs->addTab(buildEvaluateView(), tr("Evaluate"));
    setCentralWidget(m_tabs);

    auto* dock = new QDockWidget(tr("Model"), this);
    dock->setObjectName(QStringLiteral("modelDock"));
    auto* panel = new QWidget(dock);
    auto* pl = new QVBoxLayout(panel);
    m_modelLabel = new QLabel(tr("No model open"), panel);
    m_modelLabel->setObjectName(QStringLiteral("modelLabel"));
    m_modelLabel->setWordWrap(true);
    m_modelLabel->setTextInteractionFlags(Qt::TextSelectableByMouse);
    // Hashes and paths on one line each, shortened in the middle; the whole value in the tooltip.
    auto* facts = new QFormLayout;
    facts->setContentsMargins(0, 0, 0, 0);
    facts->setFieldGrowthPolicy(QFormLayout::AllNonFixedFieldsGrow);
    auto fact = [&](const QString& name, const QString& label) {
        auto* v = new ElidedLabel(Qt::ElideMiddle, panel);
        v->setObjectName(name);
        facts->addRow(label, v);
        return v;
    };
    m_fingerprintLabel = fact(QStringLiteral("fingerprintLabel"), tr("fingerprint"));
    m_projectLabel = fact(QStringLiteral("projectLabel"), tr("project"));
    m_stateLabel = fact(QStringLiteral("stateLabel"), tr("state"));
    auto* open = new QPushButton(tr("Open model…"), panel);
    connect(open, &QPushButton::clicked, this, &MainWindow::openModelDialog);
    pl->addWidget(m_modelLabel);
    pl->addLayout(facts);
    pl->addWidget(open);
    m_panelLayout = pl;  // the built-in models add their buttons below
    pl->addStretch();
    dock->setWidget(panel);
    addDockWidget(Qt::LeftDockWidgetArea, dock);

    m_status = new QLabel(this);
    m_progress = new QProgressBar(this);
    m_progress->setRange(0, 0);  // busy indicator: the core reports no fraction for these jobs
    m_progress->setMaximumWidth(160);
    m_progress->hide();
    m_cancel = new QToolButton(this);
    m_cancel->setText(tr("Cancel"));
    m_cancel->hide();
    connect(m_cancel, &QToolButton::clicked, this, &MainWindow::cancelJob);
    statusBar()->addWidget(m_status, 1);
    statusBar()->addPermanentWidget(m_progress);
    statusBar()->addPermanentWidget(m_cancel);

    buildMenus();
    QSettings settings;
    // Saved settings; a device this build lacks (a CUDA setting on a CPU build) falls back to the CPU.
    const QString device = settings.value(QStringLiteral("settings/device"), QStringLiteral("cpu")).toString();
    if (Workbench::availableDevices().contains(device)) m_bench->setDevice(device);
    const int threads = settings.value(QStringLiteral("settings/threads"), 0).toInt();
    if (threads > 0) Workbench::setThreads(threads);
    const QString method = settings.value(QStringLiteral("settings/defaultMethod")).toString();
    if (m_method->findText(method) >= 0) m_method->setCurrentText(method);
    if (m_evalMethod->findText(method) >= 0) m_evalMethod->setCurrentText(method);
    restoreGeometry(settings.value(QStringLiteral("window/geometry")).toByteArray());
    restoreState(settings.value(QStringLiteral("window/state")).toByteArray());
    if (!settings.contains(QStringLiteral("window/geometry"))) resize(1100, 700);
}

MainWindow::~MainWindow() = default;

void MainWindow::closeEvent(QCloseEvent* event) {
    if (m_busy) {
        cancelJob();
        event->ignore();
        m_status->setText(tr("Cancelling the running job; close again when it has stopped"));
        return;
    }
    QSettings settings;
    settings.setValue(QStringLiteral("window/geometry"), saveGeometry());
    settings.setValue(QStringLiteral("window/state"), saveState());
    QMainWindow::closeEvent(event);
}

void MainWindow::buildMenus() {
    QMenu* file = menuBar()->addMenu(tr("&File"));
    m_fileMenu = file;
    file->addAction(tr("Open &Model…"), this, &MainWindow::openModelDialog);
    QAction* openProject = file->addAction(tr("&Open Project…"), this, &MainWindow::openProjectDialog);
    openProject->setShortcut(QKeySequence::Open);
    QAction* newProject = file->addAction(tr("&New Project…"), this, &MainWindow::newProjectDialog);
    newProject->setShortcut(QKeySequence::New);
    m_recentMenu = file->addMenu(tr("Open &Recent"));
    connect(m_recentMenu, &QMenu::aboutToShow, this, &MainWindow::rebuildRecentMenu);
    rebuildRecentMenu();
    QAction* saveAs = file->addAction(tr("Save Project &As…"), this, &MainWindow::saveProjectAsDialog);
    saveAs->setShortcut(QKeySequence::SaveAs);
    file->addSeparator();
    QAction* settingsAction = file->addAction(tr("&Settings…"), this, &MainWindow::settingsDialog);
    settingsAction->setShortcut(QKeySequence::Preferences);
    file->addSeparator();
    QAction* quit = file->addAction(tr("&Quit"), this, &QWidget::close);
    quit->setShortcut(QKeySequence::Quit);

    QMenu* edit = menuBar()->addMenu(tr("&Edit"));
    m_undoAction = m_undo->createUndoAction(this, tr("&Undo"));
    m_undoAction->setShortcut(QKeySequence::Undo);
    m_redoAction = m_undo->createRedoAction(this, tr("&Redo"));
    m_redoAction->setShortcuts({QKeySequence::Redo, QKeySequence(Qt::CTRL | Qt::SHIFT | Qt::Key_Z)});
    edit->addAction(m_undoAction);
    edit->addAction(m_redoAction);
    addAction(m_undoAction);
    addAction(m_redoAction);

    QMenu* view = menuBar()->addMenu(tr("&View"));
    QAction* present = view->addAction(tr("&Presentation mode (large, high contrast)"));
    present->setCheckable(true);
    present->setShortcut(QKeySequence(Qt::Key_F11));
    connect(present, &QAction::toggled, this, &MainWindow::setPresentationMode);

    QMenu* help = menuBar()->addMenu(tr("&Help"));
    QAction* docs = help->addAction(tr("&Documentation"), this, &MainWindow::openDocumentation);
    docs->setShortcut(QKeySequence::HelpContents);
    QAction* walk = help->addAction(tr("Guided &Walk: Locate, Edit, Verify, Undo"), this, [this] { showGuide(); });
    walk->setObjectName(QStringLiteral("guideAction"));
    help->addAction(tr("&About Engram"), this, &MainWindow::showAbout);
}

// The installed documentation (<prefix>/share/doc/engram), else the source tree's docs/ for a
// binary run from the build tree.
QString MainWindow::documentationIndex() const {
    const QString exe = QCoreApplication::applicationDirPath();
    QStringList dirs{exe + QStringLiteral("/../share/doc/engram")};
    if (QDir::cleanPath(exe).startsWith(QDir::cleanPath(QStringLiteral(ENGRAM_BUILD_DIR)))) dirs << QStringLiteral(ENGRAM_SOURCE_DOCS);
    for (const QString& dir : dirs) {
        const QString index = QDir::cleanPath(dir + QStringLiteral("/index.md"));
        if (QFileInfo::exists(index)) return index;
    }
    return QString();
}

void MainWindow::setGuideModel(const QString& factWorld) { m_guideModel = factWorld; }

GuidePanel* MainWindow::showGuide() {
    if (!m_guide) {
        m_guide = new GuidePanel(this, m_guideModel);
        addDockWidget(Qt::RightDockWidgetArea, m_guide);
    }
    m_guide->showStep(0);
    m_guide->show();
    m_guide->raise();
    return m_guide;
}

bool MainWindow::showGuideIfFirstRun() {
    if (!GuidePanel::showAtStart()) return false;
    showGuide();
    return true;
}

void MainWindow::showPrediction(const QString& prompt) {
    m_prompt->setText(prompt);
    m_tabs->setCurrentIndex(0);
    predict();
}

void MainWindow::openDocumentation() {
    const QString index = documentationIndex();
    if (index.isEmpty()) {
        QMessageBox::information(this, tr("Documentation"), tr("The documentation is not installed. It is the docs/ folder of Engram's source."));
        return;
    }
    if (!QDesktopServices::openUrl(QUrl::fromLocalFile(index)))
        QMessageBox::information(this, tr("Documentation"), tr("Engram's documentation is in %1").arg(QFileInfo(index).absolutePath()));
}

void MainWindow::showAbout() {
    QString rows;
    auto row = [&rows](const QString& name, const QString& version, const QString& licence) {
        rows += QStringLiteral("<tr><td>%1</td><td>%2</td><td>%3</td></tr>").arg(name.toHtmlEscaped(), version.toHtmlEscaped(), licence.toHtmlEscaped());
    };
    row(QStringLiteral("Qt"), QString::fromLatin1(qVersion()), QStringLiteral("LGPL-3.0-only"));
    row(QStringLiteral("QCustomPlot"), QStringLiteral(QCUSTOMPLOT_VERSION_STR), QStringLiteral("GPL-3.0-or-later"));
    for (const engram::LibraryInfo& lib : engram::core_libraries())
        row(QString::fromStdString(lib.name), QString::fromStdString(lib.version), QString::fromStdString(lib.licence));
    QMessageBox box(this);
    box.setObjectName(QStringLiteral("aboutBox"));
    box.setWindowTitle(tr("About Engram"));
    box.setTextFormat(Qt::RichText);
    box.setText(tr("<h3>Engram %1</h3><p>A workbench for model editing: locate, edit, verify and undo what a transformer knows.</p>"
                   "<p>Built with:</p><table cellspacing=\"6\"><tr><th align=\"left\">Library</th><th align=\"left\">Version</th>"
                   "<th align=\"left\">Licence</th></tr>%2</table>")
                    .arg(QCoreApplication::applicationVersion().toHtmlEscaped(), rows));
    box.exec();
}

QWidget* MainWindow::buildPromptView() {
    auto* w = new QWidget(this);
    auto* l = new QVBoxLayout(w);
    auto* row = new QHBoxLayout;
    m_prompt = new QLineEdit(w);
    m_prompt->setObjectName(QStringLiteral("promptEdit"));
    m_prompt->setPlaceholderText(tr("A prompt, e.g. \"Peanaim Fosha was born in\""));
    auto* go = new QPushButton(tr("Predict"), w);
    connect(go, &QPushButton::clicked, this, &MainWindow::predict);
    connect(m_prompt, &QLineEdit::returnPressed, this, &MainWindow::predict);
    row->addWidget(m_prompt, 1);
    row->addWidget(go);
    l->addLayout(row);
    auto* gen = new QPushButton(tr("Generate"), w);
    connect(gen, &QPushButton::clicked, this, &MainWindow::generateText);
    row->addWidget(gen);
    m_tokens = new QLabel(w);
    m_tokens->setObjectName(QStringLiteral("promptTokens"));
    m_tokens->setTextFormat(Qt::RichText);
    m_tokens->setWordWrap(true);
    l->addWidget(m_tokens);
    // The current model beside the base model (shown when edits are active).
    auto* tables = new QHBoxLayout;
    auto makeTable = [&](const QString& name, const QString& title) {
        auto* t = readOnlyTable(w, name, {title, tr("probability"), QString()}, 2);
        tables->addWidget(t, 1);
        return t;
    };
    m_topTable = makeTable(QStringLiteral("topTable"), tr("next token (current model)"));
    m_baseTable = makeTable(QStringLiteral("baseTable"), tr("next token (base model)"));
    m_baseTable->hide();
    l->addLayout(tables, 1);
    m_generated = new QLabel(w);
    m_generated->setObjectName(QStringLiteral("generated"));
    m_generated->setWordWrap(true);
    m_generated->setTextInteractionFlags(Qt::TextSelectableByMouse);
    l->addWidget(m_generated);
    m_predictNote = new QLabel(w);
    m_predictNote->setObjectName(QStringLiteral("predictNote"));
    l->addWidget(m_predictNote);
    return w;
}

QWidget* MainWindow::buildEditView() {
    auto* w = new QWidget(this);
    auto* l = new QVBoxLayout(w);
    auto* form = new QFormLayout;
    m_editPrompt = new QLineEdit(w);
    m_editPrompt->setObjectName(QStringLiteral("editPrompt"));
    m_editPrompt->setPlaceholderText(tr("{} was born in  (or the full sentence containing the subject)"));
    m_editSubject = new QLineEdit(w);
    m_editSubject->setObjectName(QStringLiteral("editSubject"));
    m_editTarget = new QLineEdit(w);
    m_editTarget->setObjectName(QStringLiteral("editTarget"));
    m_method = new QComboBox(w);
    m_method->setObjectName(QStringLiteral("methodCombo"));
    for (const MethodInfo& m : edit_methods()) {  // the registry, in menu order
        m_method->addItem(QString::fromLatin1(edit_method_name(m.method)));
        m_method->setItemData(m_method->count() - 1, QStringLiteral("%1: %2").arg(QString::fromLatin1(m.title), QString::fromLatin1(m.summary)),
                              Qt::ToolTipRole);
    }
    m_blue = new QCheckBox(tr("BLUE (boundary layers; MEMIT, AlphaEdit, PMET)"), w);
    m_layer = new QSpinBox(w);
    m_layer->setObjectName(QStringLiteral("layerSpin"));
    m_layer->setRange(-1, 999);
    m_layer->setSpecialValueText(tr("default"));
    m_layer->setValue(-1);
    form->addRow(tr("Prompt"), m_editPrompt);
    form->addRow(tr("Subject"), m_editSubject);
    form->addRow(tr("New target"), m_editTarget);
    form->addRow(tr("Method"), m_method);
    form->addRow(QString(), m_blue);
    form->addRow(tr("Layer (ROME, FT)"), m_layer);
    l->addLayout(form);
    // The method's defaults for this model; edited cells are applied as --set overrides.
    m_hparams = new QTableWidget(0, 2, w);
    m_hparams->setObjectName(QStringLiteral("hparamTable"));
    m_hparams->setHorizontalHeaderLabels({tr("hyperparameter"), tr("value")});
    m_hparams->horizontalHeader()->setSectionResizeMode(0, QHeaderView::ResizeToContents);
    m_hparams->horizontalHeader()->setSectionResizeMode(1, QHeaderView::Stretch);
    m_hparams->verticalHeader()->hide();
    m_hparams->setMaximumHeight(170);
    l->addWidget(m_hparams);
    auto* reset = new QPushButton(tr("Reset to defaults"), w);
    connect(reset, &QPushButton::clicked, this, &MainWindow::resetHParams);
    connect(m_method, &QComboBox::currentTextChanged, this, [this] { resetHParams(); });
    connect(m_blue, &QCheckBox::toggled, this, [this] { resetHParams(); });
    l->addWidget(reset, 0, Qt::AlignLeft);
    m_apply = new QPushButton(tr("Apply edit"), w);
    m_apply->setObjectName(QStringLiteral("applyButton"));
    connect(m_apply, &QPushButton::clicked, this, &MainWindow::applyEdit);
    l->addWidget(m_apply, 0, Qt::AlignLeft);
    m_result = readOnlyTable(w, QStringLiteral("resultTable"),
                             {tr("kind"), tr("prompt"), tr("p(new): before → after"), tr("p(old): before → after"), QString()}, 1);
    l->addWidget(m_result, 1);
    return w;
}

QWidget* MainWindow::buildTraceView() {
    auto* w = new QWidget(this);
    auto* l = new QVBoxLayout(w);
    auto* form = new QFormLayout;
    m_tracePrompt = new QLineEdit(w);
    m_tracePrompt->setObjectName(QStringLiteral("tracePrompt"));
    m_tracePrompt->setPlaceholderText(tr("The full prompt; select the subject in it"));
    m_traceSubject = new QLineEdit(w);
    m_traceSubject->setObjectName(QStringLiteral("traceSubject"));
    // Selecting text in the prompt chooses the subject.
    connect(m_tracePrompt, &QLineEdit::selectionChanged, this, [this] {
        const QString sel = m_tracePrompt->selectedText().trimmed();
        if (!sel.isEmpty()) m_traceSubject->setText(sel);
    });
    m_traceSamples = new QSpinBox(w);
    m_traceSamples->setObjectName(QStringLiteral("traceSamples"));
    m_traceSamples->setRange(1, 100000);
    m_traceSamples->setValue(10);  // ROME's default
    // The MLP/attention window: "auto" is about a fifth of the depth (ROME's 10 of 48 layers), which
    // the model panel's refresh() writes into the special text; any number overrides it.
    m_traceWindow = new QSpinBox(w);
    m_traceWindow->setObjectName(QStringLiteral("traceWindow"));
    m_traceWindow->setRange(0, 999);
    m_traceWindow->setValue(0);
    m_traceWindow->setSpecialValueText(tr("auto"));
    m_traceWindow->setSuffix(tr(" layers"));
    m_traceWindow->setToolTip(tr("Layers restored together around each cell of the MLP and attention maps.\n"
                                 "Auto: about a fifth of the depth, as ROME's 10 of GPT-2 XL's 48 layers (round(layers / 5), at least 1).\n"
                                 "Set a number to override it."));
    form->addRow(tr("Prompt"), m_tracePrompt);
    form->addRow(tr("Subject"), m_traceSubject);
    form->addRow(tr("Noise samples"), m_traceSamples);
    form->addRow(tr("Window (MLP, attention)"), m_traceWindow);
    l->addLayout(form);
    auto* row = new QHBoxLayout;
    m_traceButton = new QPushButton(tr("Trace"), w);
    m_traceButton->setObjectName(QStringLiteral("traceButton"));
    connect(m_traceButton, &QPushButton::clicked, this, &MainWindow::runTrace);
    m_traceNote = new QLabel(tr("Click a cell of the MLP map to prepare a ROME edit at that layer."), w);
    m_traceNote->setObjectName(QStringLiteral("traceNote"));
    m_traceNote->setWordWrap(true);
    // After an edit the re-trace follows the answer from before it; this traces the model's new one.
    m_traceNewAnswer = new QPushButton(w);
    m_traceNewAnswer->setObjectName(QStringLiteral("traceNewAnswer"));
    m_traceNewAnswer->hide();
    connect(m_traceNewAnswer, &QPushButton::clicked, this, [this] { runTrace(); });
    m_retrace = new QCheckBox(tr("Re-trace after each edit"), w);
    m_retrace->setObjectName(QStringLiteral("retraceCheck"));
    m_retrace->setChecked(true);
    m_diffKind = new QComboBox(w);
    m_diffKind->addItems({tr("difference: states"), tr("difference: MLP"), tr("difference: attention")});
    m_diffKind->setCurrentIndex(1);
    connect(m_diffKind, &QComboBox::currentIndexChanged, this, [this] { showDifference(); });
    row->addWidget(m_traceButton);
    row->addWidget(m_traceNote, 1);
    row->addWidget(m_traceNewAnswer);
    row->addWidget(m_retrace);
    row->addWidget(m_diffKind);
    l->addLayout(row);
    auto* maps = new QHBoxLayout;
    const HeatmapKind kinds[3] = {HeatmapKind::Hidden, HeatmapKind::Mlp, HeatmapKind::Attn};
    for (int k = 0; k < 3; ++k) {
        m_heatmaps[k] = new HeatmapWidget(w);
        m_heatmaps[k]->setObjectName(QStringLiteral("heatmap%1").arg(k));
        maps->addWidget(m_heatmaps[k], 1);
        connect(m_heatmaps[k], &HeatmapWidget::cellClicked, this, [this, k](int r, int c) { traceCellClicked(k, r, c); });
        addExportMenu(m_heatmaps[k]->plot(), k);
        HeatmapData d;
        d.kind = kinds[k];
        m_heatmaps[k]->setData(d);
    }
    m_diffMap = new HeatmapWidget(w);
    m_diffMap->setObjectName(QStringLiteral("diffMap"));
    HeatmapData dd;
    dd.kind = HeatmapKind::Difference;
    dd.title = tr("After − before the last edit");
    m_diffMap->setData(dd);
    m_diffMap->hide();  // shown once there is an edit to compare
    addExportMenu(m_diffMap->plot(), -4);
    maps->addWidget(m_diffMap, 1);
    l->addLayout(maps, 1);
    return w;
}

void MainWindow::showDifference() {
    if (!m_haveDiff) return;
    // One symmetric scale shared by the three kinds, so switching kinds compares like with like.
    double top = 1e-9;
    QVector<QVector<double>> diff[3];
    for (int k = 0; k < 3; ++k) {
        diff[k] = m_traceScores[k];
        for (int t = 0; t < diff[k].size() && t < m_before[k].size(); ++t)
            for (int l = 0; l < diff[k][t].size() && l < m_before[k][t].size(); ++l) {
                diff[k][t][l] -= m_before[k][t][l];
                if (!std::isnan(diff[k][t][l])) top = std::max(top, std::abs(diff[k][t][l]));
            }
    }
    const int k = m_diffKind->currentIndex();
    HeatmapData d;
    d.kind = HeatmapKind::Difference;
    d.values = diff[k];
    d.rowLabels = m_trace.tokens;
    d.subjectBegin = m_trace.subjectBegin;
    d.subjectEnd = m_trace.subjectEnd;
    d.window = m_trace.window;
    d.low = -top;
    d.high = top;
    d.title = tr("After − before the last edit");
    d.xLabel = k == 0 ? tr("single restored layer") : tr("center of %1 restored layers").arg(m_trace.window);
    d.colorBarLabel = tr("Δ p(%1)").arg(m_trace.answer.trimmed());
    d.answer = m_trace.answer.trimmed();
    m_diffMap->setData(d);
    m_diffMap->show();
}

void MainWindow::addDemoModel(const QString& title, const QString& dir) {
    auto open = [this, dir] {
        if (m_busy) return;
        Workbench* bench = m_bench.get();
        runJob(tr("Opening %1").arg(dir), [bench, dir] { bench->openModel(dir); }, [this] {
            m_undo->clear();
            m_vitIndex = -1;
            m_imageList->clear();
            refresh();
            if (m_bench->isVit()) {
                m_tabs->setCurrentIndex(4);
                loadImages();
            }
        });
    };
    QAction* a = new QAction(title, this);
    connect(a, &QAction::triggered, this, open);
    m_fileMenu->insertAction(m_fileMenu->actions().value(1), a);
    // The same in the model panel, above its stretch.
    auto* button = new QPushButton(title, m_panelLayout->parentWidget());
    button->setToolTip(dir);
    connect(button, &QPushButton::clicked, this, open);
    m_panelLayout->insertWidget(m_panelLayout->count() - 1, button);
}

void MainWindow::setTraceRequest(const QString& prompt, const QString& subject, int samples) {
    m_tracePrompt->setText(prompt);
    m_traceSubject->setText(subject);
    m_traceSamples->setValue(samples);
}

bool MainWindow::exportPlot(int kind, const QString& path, QString* error) const {
    const QString suffix = QFileInfo(path).suffix().toLower();
    if (suffix == QLatin1String("csv") || suffix == QLatin1String("json")) {
        QFile f(path);
        if (!f.open(QIODevice::WriteOnly | QIODevice::Text)) {
            if (error) *error = tr("could not write %1").arg(path);
            return false;
        }
        QTextStream out(&f);
        if ((kind >= 0 && kind < 3) || kind == -4) {
            // Rows: tokens; columns: layers; p(answer) with the state or window restored (the
            // difference map: its change after the last edit).
            const auto& grid = kind == -4 ? m_diffMap->data().values : m_traceScores[kind];
            if (suffix == QLatin1String("csv")) {
                out << "token";
                for (int l = 0; l < m_trace.nLayer; ++l) out << ",layer" << l;
                out << "\n";
                for (int t = 0; t < grid.size(); ++t) {
                    out << '"' << QString(m_trace.tokens.value(t)).replace('"', QStringLiteral("\"\"")) << '"';
                    for (double v : grid[t]) out << "," << (std::isnan(v) ? QString() : QString::number(v, 'g', 10));
                    out << "\n";
                }
            } else {
                QJsonArray rows;
                for (const auto& r : grid) {
                    QJsonArray row;
                    for (double v : r) row.append(std::isnan(v) ? QJsonValue() : QJsonValue(v));
                    rows.append(row);
                }
                QJsonObject o{{QStringLiteral("kind"), kind == -4 ? QJsonValue(QStringLiteral("difference ") + m_diffKind->currentText().section(QLatin1Char(' '), -1)) : QJsonValue(kind)},
                              {QStringLiteral("answer"), m_trace.answer.trimmed()},
                              {QStringLiteral("clean"), m_trace.cleanProb}, {QStringLiteral("corrupted"), m_trace.corruptedProb},
                              {QStringLiteral("tokens"), QJsonArray::fromStringList(m_trace.tokens)}, {QStringLiteral("scores"), rows}};
                out << QJsonDocument(o).toJson();
            }
        } else if (kind == -3) {
            if (suffix == QLatin1String("csv")) {
                out << "run,edits,es,ps,ns,score,reliability,generalization,locality,unedited_accuracy,perplexity\n";
                auto opt = [](double v) { return v < 0 ? QString() : QString::number(v, 'g', 8); };
                for (const EvalRun& run : m_runs)
                    for (const EvalPoint& p : QVector<EvalPoint>{run.pre} + run.curve)
                        out << run.name << "," << p.edits << "," << p.es << "," << p.ps << "," << p.ns << "," << p.score << "," << p.reliability << ","
                            << p.generalization << "," << p.locality << "," << opt(p.unedited) << "," << opt(p.perplexity) << "\n";
            } else {
                QJsonArray runs;
                for (const EvalRun& run : m_runs) runs.append(QJsonDocument::fromJson(run.json.toUtf8()).object());
                out << QJsonDocument(runs).toJson();
            }
        } else if (kind == -2) {
            const QVector<double> drift = m_bench->driftByLayer();
            const qint64 id = selectedEditId();
            const QVector<double> sel = id > 0 ? m_bench->updateNormByLayer(id) : QVector<double>(drift.size(), 0.0);
            if (suffix == QLatin1String("csv")) {
                out << "layer,cumulative_drift,edit_" << id << "_norm\n";
                for (int l = 0; l < drift.size(); ++l) out << l << "," << QString::number(drift[l], 'g', 10) << "," << QString::number(sel.value(l), 'g', 10) << "\n";
            } else {
                QJsonArray d, e;
                for (int l = 0; l < drift.size(); ++l) d.append(drift[l]), e.append(sel.value(l));
                out << QJsonDocument(QJsonObject{{QStringLiteral("cumulative_drift"), d}, {QStringLiteral("edit"), id}, {QStringLiteral("edit_norm"), e}}).toJson();
            }
        } else {
            const auto& h = m_vitView.heads;
            if (suffix == QLatin1String("csv")) {
                out << "layer,head,direct_effect\n";
                for (int l = 0; l < h.size(); ++l)
                    for (int k = 0; k < h[l].size(); ++k) out << l << "," << k << "," << QString::number(h[l][k], 'g', 10) << "\n";
            } else {
                QJsonArray heads;
                for (const auto& r : h) {
                    QJsonArray row;
                    for (double v : r) row.append(v);
                    heads.append(row);
                }
                QJsonObject o{{QStringLiteral("class"), m_bench->labels().value(m_vitView.target)}, {QStringLiteral("logit"), m_vitView.score},
                              {QStringLiteral("sum_of_components"), m_vitView.sumOfComponents}, {QStringLiteral("heads"), heads}};
                out << QJsonDocument(o).toJson();
            }
        }
        return true;
    }
    if (kind >= 0 && kind < 3) return m_heatmaps[kind]->exportTo(path, QString(), error);
    if (kind == -2) return engram::ui::exportPlot(m_normPlot, path, QString(), tr("Update norms per layer"), m_normPlot->size(), error);
    if (kind == -3) return engram::ui::exportPlot(m_curves, path, QString(), tr("Editing curves"), m_curves->size(), error);
    if (kind == -4) return m_diffMap->exportTo(path, QString(), error);
    return m_figure->exportTo(path, QString(), error);
}

void MainWindow::addExportMenu(QWidget* plot, int kind) {
    plot->setContextMenuPolicy(Qt::CustomContextMenu);
    connect(plot, &QWidget::customContextMenuRequested, this, [this, plot, kind](const QPoint& pos) {
        QMenu menu;
        menu.addAction(tr("Export figure or data…"), this, [this, kind] {
            const QString path = QFileDialog::getSaveFileName(this, tr("Export"), QString(),
                                                              tr("PNG (*.png);;PDF (*.pdf);;SVG (*.svg);;CSV (*.csv);;JSON (*.json)"));
            if (path.isEmpty()) return;
            QString error;
            if (!exportPlot(kind, path, &error)) showError(tr("Export failed"), error);
            else m_status->setText(tr("Wrote %1").arg(path));
        });
        menu.exec(plot->mapToGlobal(pos));
    });
}

void MainWindow::setPresentationMode(bool on) {
    if (on == m_presenting) return;
    if (on) {
        m_normalFont = QApplication::font();
        m_normalPalette = QApplication::palette();
        QFont big = m_normalFont;
        big.setPointSizeF(m_normalFont.pointSizeF() * 1.6);
        QApplication::setFont(big);
        // High contrast: black on white, a strong selection colour.
        QPalette p;
        p.setColor(QPalette::Window, Qt::white);
        p.setColor(QPalette::WindowText, Qt::black);
        p.setColor(QPalette::Base, Qt::white);
        p.setColor(QPalette::Text, Qt::black);
        p.setColor(QPalette::Button, QColor(0xee, 0xee, 0xee));
        p.setColor(QPalette::ButtonText, Qt::black);
        p.setColor(QPalette::Highlight, QColor(0x00, 0x33, 0x99));
        p.setColor(QPalette::HighlightedText, Qt::white);
        QApplication::setPalette(p);
    } else {
        QApplication::setFont(m_normalFont);
        QApplication::setPalette(m_normalPalette);
    }
    m_presenting = on;
}

void MainWindow::runTrace() {
    if (m_busy) return;
    const QString prompt = m_tracePrompt->text().trimmed(), subject = m_traceSubject->text().trimmed();
    if (prompt.isEmpty() || subject.isEmpty()) {
        showError(tr("Trace"), tr("Give a prompt and select the subject in it"));
        return;
    }
    Workbench* bench = m_bench.get();
    const std::atomic<bool>* cancel = &m_cancelFlag;
    auto summary = std::make_shared<TraceSummary>();
    // Rows stream in from the worker; the heatmaps are redrawn on the GUI thread.
    const TraceRowFn onRow = [this](int kind, int token, const QVector<double>& scores) {
        QMetaObject::invokeMethod(this, [this, kind, token, scores] { showTraceRow(kind, token, scores); }, Qt::QueuedConnection);
    };
    const QString answer = m_diffPending ? m_trace.answer : QString();  // after an edit: the same answer as before
    try {
        m_trace = bench->traceShape(prompt, subject);  // empty maps with the token labels, filled as rows arrive
    } catch (const std::exception& e) {
        showError(tr("Trace"), QString::fromStdString(e.what()));
        return;
    }
    for (int k = 0; k < 3; ++k) {
        m_traceScores[k] = QVector<QVector<double>>(m_trace.tokens.size(), QVector<double>(m_trace.nLayer, std::numeric_limits<double>::quiet_NaN()));
        showTraceRow(k, -1, {});  // empty maps with their token labels until the rows arrive
    }
    const int samples = m_traceSamples->value(), window = m_traceWindow->value();
    m_trace.window = window > 0 ? window : m_bench->defaultTraceWindow();
    const bool diff = m_diffPending;
    m_traceNewAnswer->hide();
    runJob(tr("Tracing"), [bench, prompt, subject, onRow, cancel, summary, samples, answer, window] {
               *summary = bench->trace(prompt, subject, onRow, cancel, samples, answer, window);
           },
           [this, summary, diff] {
               m_trace = *summary;
               for (int k = 0; k < 3; ++k) showTraceRow(k, -1, {});
               m_diffPending = false;
               m_haveDiff = diff && !m_trace.cancelled;  // a difference only between traces of one answer
               if (m_haveDiff) showDifference();
               else m_diffMap->hide();
               showTraceNote(diff);
           });
}

// Which answer the maps follow, and, when the model answers something else now (the re-trace after
// an edit follows the answer from before it), a button that traces the new answer.
void MainWindow::showTraceNote(bool afterEdit) {
    const QString traced = m_trace.answer.trimmed(), top = m_trace.topAnswer.trimmed();
    const QString figures = tr("clean %1, corrupted %2").arg(m_trace.cleanProb, 0, 'f', 4).arg(m_trace.corruptedProb, 0, 'f', 4);
    const QString state = m_trace.cancelled ? tr(" (cancelled; the finished rows are kept)")
                          : m_trace.fromCache ? tr(" (read from the project's cache)") : QString();
    const bool other = !top.isEmpty() && top != traced;
    if (other)
        m_traceNote->setText(tr("Tracing p(%1), %2: %3%4. The model now answers “%5”.")
                                 .arg(traced, afterEdit ? tr("the answer before the last edit") : tr("not the model's top answer"), figures, state, top));
    else
        m_traceNote->setText(tr("Tracing p(%1), the model's answer: %2%3 — click an MLP cell to prepare an edit").arg(traced, figures, state));
    m_traceNewAnswer->setText(tr("Trace “%1”").arg(top));
    m_traceNewAnswer->setToolTip(tr("Trace the model's current answer, “%1”, instead of “%2”").arg(top, traced));
    m_traceNewAnswer->setVisible(other && !m_trace.cancelled);
}

void MainWindow::showTraceRow(int kind, int token, const QVector<double>& scores) {
    if (kind < 0 || kind > 2) return;
    auto& grid = m_traceScores[kind];
    if (token >= 0 && token < grid.size()) {
        grid[token] = scores;
        if (m_busy) {  // rows done out of the three maps' rows
            int done = 0, total = 0;
            for (const auto& g : m_traceScores)
                for (const auto& row : g) {
                    ++total;
                    done += std::any_of(row.begin(), row.end(), [](double v) { return !std::isnan(v); });
                }
            m_progress->setRange(0, total);
            m_progress->setValue(done);
        }
    }
    HeatmapData d = m_heatmaps[kind]->data();
    d.values = grid;
    d.rowLabels = m_trace.tokens;
    d.subjectBegin = m_trace.subjectBegin;
    d.subjectEnd = m_trace.subjectEnd;
    d.window = m_trace.window;
    d.modelName = m_bench->modelName();
    d.answer = m_trace.answer.trimmed();
    if (m_trace.corruptedProb > 0) d.low = m_trace.corruptedProb;
    const QString titles[3] = {tr("Restoring hidden states"), tr("Restoring MLPs"), tr("Restoring attention")};
    d.title = titles[kind];  // ROME's full titles do not fit three maps side by side
    m_heatmaps[kind]->setData(d);
}

void MainWindow::traceCellClicked(int kind, int row, int column) {
    if (kind != 1) return;  // MLP cells locate facts for ROME-style edits
    try {
        const QString templ = m_bench->templateAt(m_tracePrompt->text().trimmed(), m_traceSubject->text().trimmed());
        fillEditForm(templ, m_traceSubject->text().trimmed(), QString(), QStringLiteral("rome"), column);
        m_status->setText(tr("Edit form filled from the MLP cell at token %1, layer %2").arg(row).arg(column));
    } catch (const std::exception& e) {
        showError(tr("Preparing the edit failed"), QString::fromStdString(e.what()));
    }
}

QWidget* MainWindow::buildVisionView() {
    auto* w = new QWidget(this);
    auto* l = new QVBoxLayout(w);
    auto* top = new QHBoxLayout;
    m_split = new QComboBox(w);
    m_split->addItems({QStringLiteral("counter"), QStringLiteral("test"), QStringLiteral("train")});
    m_imageCount = new QSpinBox(w);
    m_imageCount->setRange(1, 2000);
    m_imageCount->setValue(64);
    auto* load = new QPushButton(tr("Load Shapes World images"), w);
    load->setObjectName(QStringLiteral("loadImages"));
    connect(load, &QPushButton::clicked, this, &MainWindow::loadImages);
    auto* files = new QPushButton(tr("Open image files…"), w);
    files->setObjectName(QStringLiteral("openImages"));
    connect(files, &QPushButton::clicked, this, [this] {
        if (m_busy) return;
        const QStringList chosen = QFileDialog::getOpenFileNames(this, tr("Images to classify and explain"), QString(),
                                                                 tr("Images (*.png *.jpg *.jpeg)"));
        if (!chosen.isEmpty()) loadImageFiles(chosen);
    });
    top->addWidget(new QLabel(tr("Split"), w));
    top->addWidget(m_split);
    top->addWidget(m_imageCount);
    top->addWidget(load);
    top->addWidget(files);
    top->addStretch();
    l->addLayout(top);

    auto* split = new QSplitter(w);
    m_imageList = new QListWidget(split);
    m_imageList->setObjectName(QStringLiteral("imageList"));
    m_imageList->setSelectionMode(QAbstractItemView::ExtendedSelection);
    m_imageList->setIconSize(QSize(48, 48));
    connect(m_imageList, &QListWidget::currentRowChanged, this, &MainWindow::showImage);
    auto* right = new QWidget(split);
    auto* rl = new QVBoxLayout(right);
    m_figure = new VitAttributionFigure(right);
    m_figure->setObjectName(QStringLiteral("vitFigure"));
    addExportMenu(m_figure->plot(), -1);
    // Clicking a head in the figure selects it in the grid below, which shows its patch map first.
    connect(m_figure, &VitAttributionFigure::headClicked, this, [this](int layer, int head) {
        if (layer < m_headTable->rowCount() && head < m_headTable->columnCount()) m_headTable->setCurrentCell(layer, head);
    });
    rl->addWidget(m_figure, 3);
    auto* below = new QHBoxLayout;
    // The head grid: checked = the head is removed (zero ablation); selecting a head shows its patch map.
    m_headTable = new QTableWidget(right);
    m_headTable->setObjectName(QStringLiteral("headTable"));
    m_headTable->setToolTip(tr("Check a head to remove it; select one to see its patch map"));
    connect(m_headTable, &QTableWidget::itemChanged, this, [this](QTableWidgetItem*) {
        if (m_fillingHeads) return;
        updateVisionPredictions();
        m_vitSide->setCurrentIndex(0);
    });
    connect(m_headTable, &QTableWidget::currentCellChanged, this, [this](int row, int column) { showPatchMapOf(row, column); });
    m_vitPredictions = readOnlyTable(right, QStringLiteral("vitPredictions"), {tr("class"), tr("probability"), tr("logit")}, -1);
    // Beside the head grid: the predictions (watch them change as heads are toggled) and, after a
    // head-level edit, its before/after report.
    m_vitSide = new QTabWidget(right);
    m_vitSide->setObjectName(QStringLiteral("vitSide"));
    m_vitSide->addTab(m_vitPredictions, tr("Predictions"));
    below->addWidget(m_headTable, 1);
    below->addWidget(m_vitSide, 1);
    rl->addLayout(below, 2);
    auto* editRow = new QHBoxLayout;
    m_vitTarget = new QComboBox(right);
    m_vitTarget->setObjectName(QStringLiteral("vitTarget"));
    m_headEdit = new QPushButton(tr("Edit the selected images toward"), right);
    m_headEdit->setObjectName(QStringLiteral("headEditButton"));
    connect(m_headEdit, &QPushButton::clicked, this, &MainWindow::applyHeadEdit);
    editRow->addWidget(m_headEdit);
    editRow->addWidget(m_vitTarget);
    editRow->addStretch();
    rl->addLayout(editRow);
    // After a head-level edit: success, generalization, locality and accuracy over the listed images.
    m_vitReport = readOnlyTable(right, QStringLiteral("vitReport"), {tr("metric"), tr("images"), tr("before → after (%)"), tr("set")}, 3);
    m_vitReport->setWordWrap(true);
    m_vitSide->addTab(m_vitReport, tr("Edit report"));
    m_vitSide->setTabEnabled(1, false);  // until there is an edit to report
    split->addWidget(m_imageList);
    split->addWidget(right);
    split->setStretchFactor(1, 4);
    l->addWidget(split, 1);
    return w;
}

void MainWindow::loadImages() {
    if (m_busy) return;
    try {
        m_bench->loadShapes(m_split->currentText(), m_imageCount->value());
    } catch (const std::exception& e) {
        showError(tr("Loading images failed"), QString::fromStdString(e.what()));
        return;
    }
    fillImageList();
}

void MainWindow::loadImageFiles(const QStringList& files) {
    waitIdle();
    try {
        m_bench->loadImageFiles(files);
    } catch (const std::exception& e) {
        showError(tr("Loading images failed"), QString::fromStdString(e.what()));
        return;
    }
    fillImageList();
}

void MainWindow::fillImageList() {
    const QStringList labels = m_bench->labels();
    m_vitTarget->clear();
    m_vitTarget->addItems(labels);
    m_imageList->clear();
    m_vitReport->setRowCount(0);
    m_vitSide->setTabEnabled(1, false);
    m_vitSide->setCurrentIndex(0);
    for (const VitImage& img : m_bench->vitImages())
        m_imageList->addItem(new QListWidgetItem(QIcon(QPixmap::fromImage(img.image.scaled(48, 48))), img.name));
    updateImageListPredictions();
    if (m_imageList->count()) m_imageList->setCurrentRow(0);
}

// "name: true → predicted" on the current model, failures in red (after each edit, undo and redo).
void MainWindow::updateImageListPredictions() {
    const QStringList labels = m_bench->labels();
    const QVector<int> predicted = m_bench->vitPredictions();
    for (int i = 0; i < m_imageList->count() && i < m_bench->vitImages().size(); ++i) {
        const VitImage& img = m_bench->vitImages()[i];
        const int pred = predicted.value(i, -1);
        QListWidgetItem* item = m_imageList->item(i);
        item->setText(QStringLiteral("%1: %2 → %3").arg(img.name, img.label >= 0 ? labels.value(img.label) : QStringLiteral("?"), labels.value(pred)));
        item->setForeground(img.label >= 0 && img.label != pred ? QBrush(kWarningRed) : QBrush());
    }
}

void MainWindow::showVitReport(const QVector<VitMetricRow>& rows) {
    m_vitReport->setRowCount(int(rows.size()));
    for (int i = 0; i < rows.size(); ++i) {
        const VitMetricRow& r = rows[i];
        const QString figures = r.count ? QStringLiteral("%1 → %2").arg(r.before, 0, 'f', 1).arg(r.after, 0, 'f', 1) : QStringLiteral("—");
        setRowTexts(m_vitReport, i, {r.name, QString::number(r.count), figures, r.what});
    }
    m_vitSide->setTabEnabled(1, !rows.isEmpty());
    if (!rows.isEmpty()) m_vitSide->setCurrentIndex(1);
}

void MainWindow::showImage(int index) {
    if (index < 0 || index >= m_bench->vitImages().size()) return;
    try {
        m_vitIndex = index;
        m_vitView = m_bench->attributeImage(index);
        const int L = int(m_vitView.heads.size()), H = L ? int(m_vitView.heads[0].size()) : 0;
        m_fillingHeads = true;
        m_headTable->setRowCount(L);
        m_headTable->setColumnCount(H);
        QStringList rows, cols;
        for (int r = 0; r < L; ++r) rows << QStringLiteral("L%1").arg(r);
        for (int c = 0; c < H; ++c) cols << QStringLiteral("H%1").arg(c);
        m_headTable->setVerticalHeaderLabels(rows);
        m_headTable->setHorizontalHeaderLabels(cols);
        for (int r = 0; r < L; ++r)
            for (int c = 0; c < H; ++c) {
                auto* it = new QTableWidgetItem(QString::number(m_vitView.heads[r][c], 'f', 3));
                it->setFlags(Qt::ItemIsEnabled | Qt::ItemIsSelectable | Qt::ItemIsUserCheckable);
                it->setCheckState(Qt::Unchecked);
                m_headTable->setItem(r, c, it);
            }
        m_fillingHeads = false;
        showPatchMapOf(-1, -1);
        updateVisionPredictions();
    } catch (const std::exception& e) {
        m_fillingHeads = false;
        showError(tr("Attribution failed"), QString::fromStdString(e.what()));
    }
}

void MainWindow::showPatchMapOf(int layer, int head) {
    if (m_vitIndex < 0 || m_vitView.heads.isEmpty()) return;
    const VitImage& img = m_bench->vitImages()[m_vitIndex];
    VitAttributionData d;
    d.image = img.image;
    d.heads = m_vitView.heads;
    d.mlps = m_vitView.mlps;
    d.embed = m_vitView.embed;
    d.bias = m_vitView.bias;
    d.className = m_bench->labels().value(m_vitView.target);
    d.logit = m_vitView.score;
    d.patchGrid = m_vitView.patchGrid;
    // The chosen head first, then the strongest others.
    QVector<QPair<double, QPair<int, int>>> order;
    for (int l = 0; l < m_vitView.heads.size(); ++l)
        for (int h = 0; h < m_vitView.heads[l].size(); ++h) order.push_back({std::abs(m_vitView.heads[l][h]), {l, h}});
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    if (layer >= 0 && head >= 0) order.prepend({0.0, {layer, head}});
    for (const auto& [score, lh] : order) {
        if (d.topHeads.size() >= VitAttributionFigure::kMaxPatchMaps) break;
        bool dup = false;
        for (const auto& t : d.topHeads) dup = dup || (t.layer == lh.first && t.head == lh.second);
        if (!dup) d.topHeads.push_back({lh.first, lh.second, m_vitView.patchMaps[lh.first][lh.second]});
    }
    d.title = QStringLiteral("%1: true %2, predicted %3").arg(img.name, img.label >= 0 ? m_bench->labels().value(img.label) : QStringLiteral("?"),
                                                               m_bench->labels().value(m_vitView.predicted));
    m_figure->setData(d);
}

void MainWindow::updateVisionPredictions() {
    if (m_vitIndex < 0) return;
    HeadList removed;
    for (int r = 0; r < m_headTable->rowCount(); ++r)
        for (int c = 0; c < m_headTable->columnCount(); ++c)
            if (m_headTable->item(r, c) && m_headTable->item(r, c)->checkState() == Qt::Checked) removed.push_back({r, c});
    try {
        m_vitLogits = m_bench->logitsWithout(m_vitIndex, removed);
    } catch (const std::exception& e) {
        showError(tr("Running the ViT failed"), QString::fromStdString(e.what()));
        return;
    }
    double mx = -std::numeric_limits<double>::infinity(), z = 0;
    for (double v : m_vitLogits) mx = std::max(mx, v);
    for (double v : m_vitLogits) z += std::exp(v - mx);
    QVector<int> order(m_vitLogits.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return m_vitLogits[a] > m_vitLogits[b]; });
    const int shown = std::min<int>(5, int(order.size()));
    m_vitPredictions->setRowCount(shown);
    for (int i = 0; i < shown; ++i) {
        const int k = order[i];
        setRowTexts(m_vitPredictions, i,
                    {m_bench->labels().value(k), QString::number(std::exp(m_vitLogits[k] - mx) / z, 'f', 4), QString::number(m_vitLogits[k], 'f', 4)});
    }
    m_status->setText(removed.isEmpty() ? QString() : tr("%n head(s) removed", nullptr, int(removed.size())));
}

void MainWindow::applyHeadEdit() {
    if (m_busy) return;
    QVector<int> indices;
    for (const QModelIndex& i : m_imageList->selectionModel()->selectedRows()) indices.push_back(i.row());
    std::sort(indices.begin(), indices.end());
    const int target = m_vitTarget->currentIndex();
    auto computed = std::make_shared<ComputedEdit>();
    Workbench* bench = m_bench.get();
    const std::atomic<bool>* cancel = &m_cancelFlag;
    runJob(tr("Computing a head-level edit"), [bench, indices, target, computed, cancel] { *computed = bench->computeHeadEdit(indices, target, cancel); },
           [this, computed] {
               try {
                   const QVector<qint64> before = m_bench->activeIds();
                   const qint64 id = m_bench->record(*computed);
                   pushActiveChange(QStringLiteral("%1: %2 → %3").arg(computed->method, computed->promptText, computed->targetNew), before);
                   showVitReport(m_bench->vitEditReport(*computed));
                   refresh();
                   m_status->setText(tr("Recorded edit %1").arg(id));
                   Q_EMIT editApplied(id);
               } catch (const std::exception& e) {
                   showError(tr("Recording the edit failed"), QString::fromStdString(e.what()));
               }
           });
}

QWidget* MainWindow::buildEvaluateView() {
    auto* w = new QWidget(this);
    auto* l = new QVBoxLayout(w);
    auto* row = new QHBoxLayout;
    m_evalMethod = new QComboBox(w);
    m_evalMethod->setObjectName(QStringLiteral("evalMethod"));
    for (const MethodInfo& m : edit_methods()) {
        m_evalMethod->addItem(QString::fromLatin1(edit_method_name(m.method)));
        m_evalMethod->setItemData(m_evalMethod->count() - 1, QString::fromLatin1(m.summary), Qt::ToolTipRole);
    }
    m_evalMethod->setCurrentText(QStringLiteral("memit"));
    m_evalBlue = new QCheckBox(tr("BLUE"), w);
    m_evalDistinct = new QCheckBox(tr("distinct subjects"), w);
    m_evalDistinct->setObjectName(QStringLiteral("evalDistinct"));
    m_evalDistinct->setToolTip(tr("The first cases whose subjects are pairwise distinct, as MEMIT's multi_counterfact"));
    m_evalEdits = new QSpinBox(w);
    m_evalEdits->setRange(1, 100000);
    m_evalEdits->setValue(100);
    m_evalEdits->setPrefix(tr("edits "));
    m_evalBatch = new QSpinBox(w);
    m_evalBatch->setRange(1, 10000);
    m_evalBatch->setValue(10);
    m_evalBatch->setPrefix(tr("batch "));
    m_evalDataset = new QLineEdit(w);
    m_evalDataset->setPlaceholderText(tr("dataset (default: counterfact.json beside the model)"));
    auto* browse = new QPushButton(tr("…"), w);
    connect(browse, &QPushButton::clicked, this, [this] {
        const QString f = QFileDialog::getOpenFileName(this, tr("A CounterFact, zsRE or MQuAKE file"), QString(), tr("JSON (*.json *.jsonl)"));
        if (!f.isEmpty()) m_evalDataset->setText(f);
    });
    m_evalRun = new QPushButton(tr("Run"), w);
    m_evalRun->setObjectName(QStringLiteral("evalRun"));
    connect(m_evalRun, &QPushButton::clicked, this, &MainWindow::runEvaluation);
    m_evalFamily = new QComboBox(w);
    m_evalFamily->addItems({tr("ES / PS / NS"), tr("reliability / generalization / locality"), tr("unedited facts / perplexity")});
    connect(m_evalFamily, &QComboBox::currentIndexChanged, this, [this] { drawCurves(); });
    for (QWidget* x : std::initializer_list<QWidget*>{m_evalMethod, m_evalBlue, m_evalDistinct, m_evalEdits, m_evalBatch}) row->addWidget(x);
    row->addWidget(m_evalDataset, 1);
    row->addWidget(browse);
    row->addWidget(m_evalRun);
    row->addWidget(m_evalFamily);
    l->addLayout(row);
    m_curves = new QCustomPlot(w);
    m_curves->setObjectName(QStringLiteral("curvePlot"));
    m_curves->xAxis->setLabel(tr("edits"));
    m_curves->yAxis->setLabel(tr("score (%)"));
    m_curves->yAxis->setRange(0, 100);
    // The legend beside the plot, where it never covers a curve that ends near 100.
    m_curves->legend->setVisible(true);
    m_curves->axisRect()->insetLayout()->take(m_curves->legend);
    auto* side = new QCPLayoutGrid;
    m_curves->plotLayout()->addElement(0, 1, side);
    m_curves->plotLayout()->setColumnStretchFactor(1, 0.001);
    side->addElement(0, 0, m_curves->legend);
    side->addElement(1, 0, new QCPLayoutElement(m_curves));  // takes the height below the legend
    side->setRowStretchFactor(0, 0.001);
    m_curves->legend->setBorderPen(Qt::NoPen);
    l->addWidget(m_curves, 3);
    addExportMenu(m_curves, -3);
    m_evalTable = readOnlyTable(w, QStringLiteral("evalTable"),
                                {tr("run"), QStringLiteral("ES"), QStringLiteral("PS"), QStringLiteral("NS"), QStringLiteral("S"), tr("perplexity"), tr("time")}, -1);
    l->addWidget(m_evalTable, 1);
    return w;
}

void MainWindow::setEvaluation(const QString& method, bool blue, int edits, int batch) {
    m_evalMethod->setCurrentText(method);
    m_evalBlue->setChecked(blue);
    m_evalEdits->setValue(edits);
    m_evalBatch->setValue(batch);
}

void MainWindow::runEvaluation() {
    if (m_busy) return;
    EvalForm form;
    form.dataset = m_evalDataset->text().trimmed();
    form.method = m_evalMethod->currentText();
    form.blue = m_evalBlue->isChecked();
    form.distinctSubjects = m_evalDistinct->isChecked();
    form.edits = m_evalEdits->value();
    form.batch = m_evalBatch->value();
    auto run = std::make_shared<EvalRun>();
    Workbench* bench = m_bench.get();
    const std::atomic<bool>* cancel = &m_cancelFlag;
    const EvalProgressFn progress = [this](int done, int total, const QString& stage) {
        QMetaObject::invokeMethod(this, [this, done, total, stage] {
            m_progress->setRange(0, std::max(1, total));
            m_progress->setValue(done);
            m_status->setText(tr("Evaluating: %1 %2/%3").arg(stage).arg(done).arg(total));
        }, Qt::QueuedConnection);
    };
    runJob(tr("Evaluating %1").arg(form.method), [bench, form, run, progress, cancel] { *run = bench->evaluate(form, progress, cancel); },
           [this, run] {
               m_progress->setRange(0, 0);
               m_runs.push_back(*run);
               const EvalPoint& p = run->curve.isEmpty() ? run->pre : run->curve.back();
               const int r = m_evalTable->rowCount();
               m_evalTable->setRowCount(r + 1);
               setRowTexts(m_evalTable, r,
                           {QStringLiteral("%1 (%2 edits)").arg(run->name).arg(p.edits), QString::number(p.es, 'f', 1), QString::number(p.ps, 'f', 1),
                            QString::number(p.ns, 'f', 1), QString::number(p.score, 'f', 1),
                            run->perplexity < 0 ? QStringLiteral("—") : QString::number(run->perplexity, 'f', 2),
                            QStringLiteral("%1 s").arg(run->seconds, 0, 'f', 1)});
               drawCurves();
               m_status->setText(tr("Evaluated %1; the model is back as it was").arg(run->name));
           });
}

void MainWindow::drawCurves() {
    m_curves->clearGraphs();
    m_curves->legend->setVisible(!m_runs.isEmpty());  // an empty legend box otherwise
    const int family = m_evalFamily->currentIndex();
    const bool token = family == 1, general = family == 2;
    // General ability: top-1 on facts outside the edited set (left axis, %) and held-out perplexity
    // (right axis), both measured at every checkpoint.
    const QString names[3] = {general ? tr("unedited facts") : token ? tr("reliability") : QStringLiteral("ES"),
                              general ? tr("perplexity") : token ? tr("generalization") : QStringLiteral("PS"),
                              token ? tr("locality") : QStringLiteral("NS")};
    const int n_metrics = general ? 2 : 3;
    m_curves->yAxis2->setVisible(general);
    m_curves->yAxis2->setLabel(general ? tr("perplexity") : QString());
    const Qt::PenStyle styles[3] = {Qt::SolidLine, Qt::DashLine, Qt::DotLine};
    // One colour per run (overlaid runs, e.g. MEMIT against MEMIT+BLUE), one line style per metric.
    const QColor colors[] = {QColor(0x1b, 0x9e, 0x77), QColor(0xd9, 0x5f, 0x02), QColor(0x75, 0x70, 0xb3), QColor(0xe7, 0x29, 0x8a)};
    double maxEdits = 1, maxPpl = 0;
    for (int r = 0; r < m_runs.size(); ++r) {
        const EvalRun& run = m_runs[r];
        for (int m = 0; m < n_metrics; ++m) {
            const bool ppl = general && m == 1;
            QCPGraph* g = m_curves->addGraph(m_curves->xAxis, ppl ? m_curves->yAxis2 : m_curves->yAxis);
            g->setName(QStringLiteral("%1 %2").arg(run.name, names[m]));
            g->setPen(QPen(colors[r % 4], 2, styles[m]));
            g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, 4));
            QVector<double> x, y;
            const QVector<EvalPoint> pts = QVector<EvalPoint>{run.pre} + run.curve;
            for (const EvalPoint& p : pts) {
                double v = 0;
                if (general) v = m == 0 ? p.unedited : p.perplexity;
                else v = m == 0 ? (token ? p.reliability : p.es) : m == 1 ? (token ? p.generalization : p.ps) : (token ? p.locality : p.ns);
                maxEdits = std::max(maxEdits, double(p.edits));
                if (v < 0) continue;  // not measured at this point
                if (ppl) maxPpl = std::max(maxPpl, v);
                x.push_back(p.edits);
                y.push_back(v);
            }
            g->setData(x, y);
        }
    }
    if (general) m_curves->yAxis2->setRange(0, maxPpl > 0 ? maxPpl * 1.1 : 1);
    m_curves->xAxis->setRange(0, maxEdits);
    m_curves->replot();
}

QWidget* MainWindow::buildHistoryView() {
    auto* w = new QWidget(this);
    auto* l = new QVBoxLayout(w);
    m_historyView = new QTableView(w);
    m_historyView->setObjectName(QStringLiteral("historyView"));
    m_historyView->setModel(m_history);
    m_historyView->setSelectionBehavior(QAbstractItemView::SelectRows);
    m_historyView->horizontalHeader()->setSectionResizeMode(HistoryModel::Change, QHeaderView::Stretch);
    m_historyView->verticalHeader()->hide();
    // Beside the table: everything recorded about the selected edit.
    m_editDetail = new QTreeWidget(w);
    m_editDetail->setObjectName(QStringLiteral("editDetail"));
    m_editDetail->setHeaderLabels({tr("selected edit"), tr("value")});
    m_editDetail->setColumnCount(2);
    m_editDetail->header()->setSectionResizeMode(0, QHeaderView::ResizeToContents);
    m_editDetail->setWordWrap(false);
    m_editDetail->setTextElideMode(Qt::ElideMiddle);
    auto* tableAndDetail = new QSplitter(w);
    tableAndDetail->addWidget(m_historyView);
    tableAndDetail->addWidget(m_editDetail);
    tableAndDetail->setStretchFactor(0, 1);
    tableAndDetail->setStretchFactor(1, 1);
    l->addWidget(tableAndDetail, 1);
    auto* row = new QHBoxLayout;
    auto* undo = new QPushButton(tr("Undo"), w);
    auto* redo = new QPushButton(tr("Redo"), w);
    connect(undo, &QPushButton::clicked, m_undo, &QUndoStack::undo);
    connect(redo, &QPushButton::clicked, m_undo, &QUndoStack::redo);
    connect(m_undo, &QUndoStack::canUndoChanged, undo, &QWidget::setEnabled);
    connect(m_undo, &QUndoStack::canRedoChanged, redo, &QWidget::setEnabled);
    undo->setEnabled(false);
    redo->setEnabled(false);
    row->addWidget(undo);
    row->addWidget(redo);
    auto* rollback = new QPushButton(tr("Roll back to selected"), w);
    rollback->setObjectName(QStringLiteral("rollbackButton"));
    auto* revert = new QPushButton(tr("Revert selected"), w);
    revert->setObjectName(QStringLiteral("revertButton"));
    auto* exportModel = new QPushButton(tr("Export edited model…"), w);
    connect(rollback, &QPushButton::clicked, this, &MainWindow::rollbackToSelected);
    connect(revert, &QPushButton::clicked, this, &MainWindow::revertSelected);
    connect(exportModel, &QPushButton::clicked, this, &MainWindow::exportModelDialog);
    row->addWidget(rollback);
    row->addWidget(revert);
    row->addWidget(exportModel);
    row->addStretch();
    l->addLayout(row);
    // ‖Δ‖ per layer of the selected edit beside the cumulative drift ‖W - W_base‖ of the whole history.
    m_normPlot = new QCustomPlot(w);
    m_normPlot->setObjectName(QStringLiteral("normPlot"));
    m_normPlot->setMinimumHeight(180);
    m_normPlot->xAxis->setLabel(tr("layer"));
    m_normPlot->yAxis->setLabel(tr("Frobenius norm"));
    m_normPlot->legend->setVisible(true);
    l->addWidget(m_normPlot);
    addExportMenu(m_normPlot, -2);
    connect(m_historyView->selectionModel(), &QItemSelectionModel::selectionChanged, this, [this] {
        updateNormChart();
        showEditDetail();
    });
    showEditDetail();
    return w;
}

void MainWindow::showEditDetail() {
    m_editDetail->clear();
    const qint64 id = selectedEditId();
    if (!id) {
        m_editDetail->addTopLevelItem(new QTreeWidgetItem({tr("Select an edit to see what was recorded")}));
        return;
    }
    EditDetail d;
    try {
        d = m_bench->editDetail(id);
    } catch (const std::exception& e) {
        m_editDetail->addTopLevelItem(new QTreeWidgetItem({tr("Edit %1 could not be read").arg(id), QString::fromStdString(e.what())}));
        return;
    }
    auto section = [this](const QString& name, const QString& summary = QString()) {
        auto* item = new QTreeWidgetItem({name, summary});
        QFont bold = item->font(0);
        bold.setBold(true);
        item->setFont(0, bold);
        m_editDetail->addTopLevelItem(item);
        item->setExpanded(true);
        return item;
    };
    auto add = [](QTreeWidgetItem* parent, const QString& key, const QString& value) {
        auto* item = new QTreeWidgetItem(parent, {key, value});
        item->setToolTip(1, value);
        return item;
    };
    QTreeWidgetItem* edit = section(tr("Edit %1").arg(d.id), QStringLiteral("%1, %2").arg(d.method, d.status));
    add(edit, tr("recorded"), d.created);
    add(edit, tr("computed in"), tr("%1 s").arg(d.seconds, 0, 'f', 2));
    QStringList basis;
    for (qint64 c : d.computedOn) basis << QString::number(c);
    add(edit, tr("computed on edits"), basis.isEmpty() ? tr("none (the base model)") : basis.join(QStringLiteral(", ")));
    add(edit, tr("state hash"), d.stateHash);
    QTreeWidgetItem* requests = section(tr("Requests"), QString::number(d.requests.size()));
    for (int i = 0; i < d.requests.size(); ++i) add(requests, QString::number(i + 1), d.requests[i]);
    QTreeWidgetItem* deltas = section(tr("Deltas"), tr("%n tensor(s)", nullptr, int(d.deltas.size())));
    for (const EditDetail::Tensor& t : d.deltas) {
        QTreeWidgetItem* item = add(deltas, t.name, tr("‖Δ‖ = %1").arg(t.norm, 0, 'g', 4));
        add(item, tr("kind"), t.kind + (t.rank > 0 ? QStringLiteral(" (%1 %2)").arg(t.kind == QLatin1String("dense_rows") ? tr("rows") : tr("rank")).arg(t.rank) : QString()));
        add(item, tr("shape"), t.shape);
    }
    QTreeWidgetItem* metrics = section(tr("Metrics"), QString::number(d.metrics.size()));
    for (const auto& [k, v] : d.metrics) add(metrics, k, v);
    QTreeWidgetItem* hparams = section(tr("Hyperparameters"), QString::number(d.hparams.size()));
    for (const auto& [k, v] : d.hparams) add(hparams, k, v);
    hparams->setExpanded(false);  // long; the rest fits above the fold
    if (!d.artifacts.isEmpty()) {
        QTreeWidgetItem* artifacts = section(tr("Artifacts"), QString::number(d.artifacts.size()));
        for (const QString& a : d.artifacts) add(artifacts, QString(), a);
    }
    QTreeWidgetItem* traces = section(tr("Traces in its state"), QString::number(d.traces.size()));
    for (const QString& t : d.traces) add(traces, QString(), t);
    if (d.traces.isEmpty()) add(traces, QString(), tr("none cached (trace with this edit's state active)"));
}

qint64 MainWindow::selectedEditId() const {
    const QModelIndexList rows = m_historyView->selectionModel()->selectedRows();
    if (rows.isEmpty()) return 0;
    return m_history->data(m_history->index(rows.first().row(), 0), HistoryModel::EditIdRole).toLongLong();
}

void MainWindow::updateNormChart() {
    m_normPlot->clearPlottables();
    const QVector<double> drift = m_bench->driftByLayer();
    const qint64 id = selectedEditId();
    QVector<double> selected;
    try {
        if (id > 0) selected = m_bench->updateNormByLayer(id);
    } catch (const std::exception&) {
        selected.clear();
    }
    QVector<double> keys(drift.size());
    std::iota(keys.begin(), keys.end(), 0.0);
    double top = 1e-9;
    // Both bars stand on their layer's tick: the drift wide and light behind, the edit's ‖Δ‖ narrow in front.
    auto addBars = [&](const QVector<double>& values, double width, const QColor& color, const QString& name) {
        if (values.isEmpty()) return;
        auto* bars = new QCPBars(m_normPlot->xAxis, m_normPlot->yAxis);
        bars->setData(keys, values);
        bars->setWidth(width);
        bars->setPen(Qt::NoPen);
        bars->setBrush(color);
        bars->setName(name);
        for (double v : values) top = std::max(top, v);
    };
    addBars(drift, 0.8, QColor(0xcb, 0xc9, 0xe2), tr("cumulative drift ‖W − W_base‖"));
    addBars(selected, 0.4, QColor(0x31, 0xa3, 0x54), tr("edit %1: ‖Δ‖").arg(id));
    QSharedPointer<QCPAxisTickerFixed> ticker(new QCPAxisTickerFixed);
    ticker->setTickStep(1.0);  // layers are whole numbers; more than a dozen thin out to 2, 5, 10...
    ticker->setScaleStrategy(QCPAxisTickerFixed::ssMultiples);
    m_normPlot->xAxis->setTicker(ticker);
    m_normPlot->xAxis->setSubTicks(false);
    m_normPlot->xAxis->setRange(-0.6, std::max<int>(1, int(drift.size())) - 0.4);
    m_normPlot->yAxis->setRange(0, top * 1.1);
    m_normPlot->replot();
}

void MainWindow::pushActiveChange(const QString& text, const QVector<qint64>& before) {
    m_undo->push(new ActiveSetCommand(*m_bench, text, before, m_bench->activeIds(), [this] { refresh(); },
                                      [this](const QString& message) { showError(tr("Undo/redo failed"), message); }));
}

// Both replay the touched tensors from the base, which takes a while on a large model: they run in
// the worker like an edit, and go on the undo stack when they have finished.
void MainWindow::rollbackToSelected() {
    if (m_busy) return;
    const qint64 id = selectedEditId();
    const QVector<qint64> before = m_bench->activeIds();
    Workbench* bench = m_bench.get();
    runJob(id ? tr("Rolling back to edit %1").arg(id) : tr("Rolling back to the base model"), [bench, id] { bench->rollback(id); },
           [this, id, before] {
               pushActiveChange(id ? tr("roll back to edit %1").arg(id) : tr("roll back to the base model"), before);
               refresh();
               m_status->setText(id ? tr("Rolled back to edit %1").arg(id) : tr("Rolled back to the base model"));
           });
}

void MainWindow::revertSelected() {
    if (m_busy) return;
    const qint64 id = selectedEditId();
    if (!id) return;
    const QVector<qint64> before = m_bench->activeIds();
    auto deps = std::make_shared<QVector<qint64>>();
    Workbench* bench = m_bench.get();
    runJob(tr("Reverting edit %1").arg(id), [bench, id, deps] { *deps = bench->revert(id); }, [this, id, before, deps] {
        pushActiveChange(tr("revert edit %1").arg(id), before);
        refresh();
        QStringList ds;
        for (qint64 d : *deps) ds << QString::number(d);
        m_status->setText(deps->isEmpty() ? tr("Reverted edit %1").arg(id)
                                          : tr("Reverted edit %1; edits %2 were computed on it and were replayed without it").arg(id).arg(ds.join(QStringLiteral(", "))));
    });
}

void MainWindow::exportModelDialog() {
    if (m_busy || !m_bench->hasModel()) return;
    const QString dir = QFileDialog::getExistingDirectory(this, tr("Export the edited model into an empty folder"));
    if (dir.isEmpty()) return;
    Workbench* bench = m_bench.get();
    runJob(tr("Exporting the model"), [bench, dir] { bench->exportModel(dir); }, [this, dir] { m_status->setText(tr("Exported to %1").arg(dir)); });
}

void MainWindow::refresh() {
    if (m_bench->hasModel()) {
        m_modelLabel->setText(QStringLiteral("<b>%1</b><br>%2").arg(m_bench->modelName().toHtmlEscaped(), m_bench->modelShape().toHtmlEscaped()));
        m_fingerprintLabel->setFullText(m_bench->fingerprint(), tr("SHA-256 of the base weights: %1").arg(m_bench->fingerprint()));
        m_projectLabel->setFullText(m_bench->hasProject() ? m_bench->projectFile() : tr("none (an edit starts one)"));
        m_stateLabel->setFullText(m_bench->stateHash(), tr("The state hash of the weights as they are now: %1").arg(m_bench->stateHash()));
        // The causal trace's automatic window, for this model.
        m_traceWindow->setMaximum(std::max(1, m_bench->layerCount()));
        m_traceWindow->setSpecialValueText(tr("auto: %1 of %2 layers").arg(m_bench->defaultTraceWindow()).arg(m_bench->layerCount()));
    } else {
        m_modelLabel->setText(tr("No model open"));
        for (ElidedLabel* l : {m_fingerprintLabel, m_projectLabel, m_stateLabel}) l->setFullText(QString());
    }
    for (ElidedLabel* l : {m_fingerprintLabel, m_projectLabel, m_stateLabel}) l->setVisible(m_bench->hasModel());
    m_history->setRows(m_bench->history());
    updateNormChart();
    showEditDetail();
    if (m_bench->modelSummary() != m_hparamsFor) {
        m_hparamsFor = m_bench->modelSummary();
        resetHParams();
    }
    if (!m_prompt->text().isEmpty()) predict();
    if (m_bench->isVit() && m_imageList->count()) updateImageListPredictions();
    if (m_bench->isVit() && m_vitIndex >= 0) showImage(m_vitIndex);
}

void MainWindow::predict() {
    if (m_busy || !m_bench->hasModel() || !m_bench->isDecoder() || m_prompt->text().trimmed().isEmpty()) return;
    try {
        fillTopTable(m_topTable, m_bench->topTokens(m_prompt->text(), 10));
        QStringList chips;
        for (const QString& t : m_bench->promptTokens(m_prompt->text()))
            chips << QStringLiteral("<span style='background:#e8eef7; padding:2px'>%1</span>").arg(t.toHtmlEscaped().replace(QLatin1Char(' '), QStringLiteral("&middot;")));
        m_tokens->setText(tr("tokens: ") + chips.join(QStringLiteral(" ")));
        const bool edited = m_bench->edited();
        m_baseTable->setVisible(edited);
        if (edited) fillTopTable(m_baseTable, m_bench->topTokensOfBase(m_prompt->text(), 10));
        int active = 0;
        for (const auto& r : m_history->rows()) active += r.status == QLatin1String("active");
        QString note = active ? tr("%n edit(s) active", nullptr, active) : tr("the base model");
        // Adapter edits: which one changed this prompt's output, and why.
        for (const QString& line : m_bench->adapterNotes(m_prompt->text())) note += QStringLiteral("\n") + line;
        m_predictNote->setText(note);
    } catch (const std::exception& e) {
        showError(tr("Prediction failed"), QString::fromStdString(e.what()));
    }
}

void MainWindow::fillTopTable(QTableWidget* table, const QVector<TokenProb>& top) {
    table->setRowCount(int(top.size()));
    for (int i = 0; i < top.size(); ++i) {
        table->setItem(i, 0, new QTableWidgetItem(top[i].token));
        table->setItem(i, 1, new QTableWidgetItem(QString::number(top[i].prob, 'f', 4)));
        auto* bar = new QProgressBar(table);
        bar->setRange(0, 1000);
        bar->setValue(int(top[i].prob * 1000));
        bar->setTextVisible(false);
        table->setCellWidget(i, 2, bar);
    }
}

void MainWindow::generateText() {
    if (m_busy || !m_bench->hasModel() || !m_bench->isDecoder() || m_prompt->text().trimmed().isEmpty()) return;
    try {
        m_generated->setText(QStringLiteral("<b>%1</b>%2").arg(m_prompt->text().toHtmlEscaped(), m_bench->generate(m_prompt->text(), 20).toHtmlEscaped()));
    } catch (const std::exception& e) {
        showError(tr("Generation failed"), QString::fromStdString(e.what()));
    }
}

void MainWindow::resetHParams() {
    m_hparamDefaults = m_bench->defaultHParams(m_method->currentText(), m_blue->isChecked());
    m_hparams->setRowCount(int(m_hparamDefaults.size()));
    for (int i = 0; i < m_hparamDefaults.size(); ++i) {
        auto* key = new QTableWidgetItem(m_hparamDefaults[i].first);
        key->setFlags(Qt::ItemIsEnabled);
        key->setToolTip(QString::fromLatin1(setting_help(m_hparamDefaults[i].first.toStdString())));
        m_hparams->setItem(i, 0, key);
        m_hparams->setItem(i, 1, new QTableWidgetItem(m_hparamDefaults[i].second));
    }
}

void MainWindow::fillEditForm(const QString& prompt, const QString& subject, const QString& target, const QString& method, int layer) {
    m_editPrompt->setText(prompt);
    m_editSubject->setText(subject);
    m_editTarget->setText(target);
    const int i = m_method->findText(method);
    if (i >= 0) m_method->setCurrentIndex(i);
    m_layer->setValue(layer);
    m_tabs->setCurrentIndex(2);
}

void MainWindow::applyEdit() {
    if (m_busy) return;
    EditForm form;
    form.prompt = m_editPrompt->text();
    form.subject = m_editSubject->text();
    form.target = m_editTarget->text();
    form.method = m_method->currentText();
    form.blue = m_blue->isChecked();
    form.layer = m_layer->value();
    for (int i = 0; i < m_hparams->rowCount() && i < m_hparamDefaults.size(); ++i) {
        const QString v = m_hparams->item(i, 1) ? m_hparams->item(i, 1)->text().trimmed() : QString();
        if (v != m_hparamDefaults[i].second) form.overrides.push_back({m_hparamDefaults[i].first, v});
    }
    auto computed = std::make_shared<ComputedEdit>();
    Workbench* bench = m_bench.get();
    const std::atomic<bool>* cancel = &m_cancelFlag;
    runJob(tr("Computing a %1 edit").arg(form.method), [bench, form, computed, cancel] { *computed = bench->computeEdit(form, cancel); },
           [this, computed] {
        try {
            const QVector<qint64> before = m_bench->activeIds();
            const qint64 id = m_bench->record(*computed);
            pushActiveChange(QStringLiteral("%1: %2 → %3").arg(computed->method, computed->targetTrue, computed->targetNew), before);
            // The blast radius: the prompt, its paraphrases and neighbours, before and after; regressions in red.
            m_bench->blastAfter(*computed);
            m_result->setRowCount(int(computed->blast.size()));
            for (int r = 0; r < computed->blast.size(); ++r) {
                const BlastRow& b = computed->blast[r];
                setRowTexts(m_result, r,
                            {b.kind, b.prompt, QString::number(b.newBefore, 'f', 4) + QStringLiteral(" → ") + QString::number(b.newAfter, 'f', 4),
                             QString::number(b.oldBefore, 'f', 4) + QStringLiteral(" → ") + QString::number(b.oldAfter, 'f', 4),
                             b.regression ? tr("regression") : QString()},
                            b.regression ? kWarningRed : QColor());
            }
            m_prompt->setText(computed->promptText);
            refresh();
            m_status->setText(tr("Recorded edit %1").arg(id));
            Q_EMIT editApplied(id);
            // Re-trace the current prompt on the edited model and show what changed.
            if (m_retrace->isChecked() && !m_trace.tokens.isEmpty() && !m_tracePrompt->text().trimmed().isEmpty()) {
                for (int k = 0; k < 3; ++k) m_before[k] = m_traceScores[k];
                m_diffPending = true;
                runTrace();
            }
        } catch (const std::exception& e) {
            showError(tr("Recording the edit failed"), QString::fromStdString(e.what()));
        }
    });
}

void MainWindow::runJob(const QString& what, std::function<void()> work, std::function<void()> done) {
    m_busy = true;
    m_cancelFlag = false;
    m_apply->setEnabled(false);
    m_traceButton->setEnabled(false);
    m_headEdit->setEnabled(false);
    m_evalRun->setEnabled(false);
    m_undoAction->setEnabled(false);  // the model belongs to the worker until it finishes
    m_redoAction->setEnabled(false);
    m_progress->setRange(0, 0);  // a busy indicator until the job reports a fraction
    m_progress->show();
    m_cancel->show();
    m_status->setText(what + QStringLiteral("…"));
    auto error = std::make_shared<QString>();
    QThread* thread = QThread::create([work, error] {
        try {
            work();
        } catch (const std::exception& e) {
            *error = QString::fromStdString(e.what());
        }
    });
    connect(thread, &QThread::finished, this, [this, thread, what, error, done] {
        thread->deleteLater();
        m_busy = false;
        m_apply->setEnabled(true);
        m_traceButton->setEnabled(true);
        m_headEdit->setEnabled(true);
        m_evalRun->setEnabled(true);
        m_undoAction->setEnabled(m_undo->canUndo());
        m_redoAction->setEnabled(m_undo->canRedo());
        m_progress->hide();
        m_cancel->hide();
        if (!error->isEmpty()) {
            showError(what + tr(" failed"), *error);
            Q_EMIT jobFinished(false);
            return;
        }
        m_status->clear();
        done();
        Q_EMIT jobFinished(true);
    });
    thread->start();
}

void MainWindow::cancelJob() { m_cancelFlag = true; }

void MainWindow::showError(const QString& what, const QString& message) {
    m_status->setText(what + QStringLiteral(": ") + message);
    Q_EMIT errorShown(message);
    if (QApplication::platformName() == QLatin1String("offscreen")) return;  // no one to click OK
    auto* box = new QMessageBox(QMessageBox::Critical, what, message, QMessageBox::Ok, this);
    box->setAttribute(Qt::WA_DeleteOnClose);
    box->open();
}

void MainWindow::waitIdle() {
    while (m_busy) QCoreApplication::processEvents(QEventLoop::WaitForMoreEvents);
}

void MainWindow::openModelNow(const QString& dir) {
    waitIdle();  // a worker may still hold the model
    m_bench->openModel(dir);
    m_undo->clear();
    refresh();
}

void MainWindow::openProjectNow(const QString& file) {
    waitIdle();
    m_bench->openProject(file);
    projectOpened(file);
}

void MainWindow::projectOpened(const QString& file) {
    m_undo->clear();
    m_vitIndex = -1;
    m_imageList->clear();
    addRecentProject(file);
    refresh();
    // The active edits of the reopened project go on the undo stack in their order, so that Ctrl+Z
    // steps back through them as it did before the restart.
    const QVector<qint64> active = m_bench->activeIds();
    QVector<qint64> before;
    for (qint64 id : active) {
        QString text = tr("edit %1").arg(id);
        for (const HistoryRow& r : m_history->rows())
            if (r.id == id) text = QStringLiteral("%1: %2 %3").arg(r.method, r.subject, r.change);
        const QVector<qint64> prior = before;
        before.push_back(id);
        m_undo->push(new ActiveSetCommand(*m_bench, text, prior, before, [this] { refresh(); },
                                          [this](const QString& message) { showError(tr("Undo/redo failed"), message); }));
    }
    restoreCachedTrace();
}

void MainWindow::restoreCachedTrace() {
    StoredTrace t;
    try {
        if (!m_bench->latestTrace(&t)) return;
    } catch (const std::exception& e) {
        m_status->setText(tr("The project's cached trace could not be read: %1").arg(QString::fromStdString(e.what())));
        return;
    }
    showStoredTrace(t);
}

void MainWindow::showStoredTrace(const StoredTrace& t) {
    m_trace = t.summary;
    for (int k = 0; k < 3; ++k) m_traceScores[k] = t.scores[k];
    m_tracePrompt->setText(t.summary.prompt);
    m_traceSubject->setText(t.summary.subject);
    m_traceSamples->setValue(t.summary.samples);
    for (int k = 0; k < 3; ++k) showTraceRow(k, -1, {});
    m_traceWindow->setValue(t.summary.window == m_bench->defaultTraceWindow() ? 0 : t.summary.window);
    m_haveDiff = false;
    m_diffMap->hide();
    showTraceNote(false);
}

bool MainWindow::saveProjectAs(const QString& file) {
    waitIdle();
    try {
        m_bench->saveProjectAs(file);
    } catch (const std::exception& e) {
        showError(tr("Saving the project failed"), QString::fromStdString(e.what()));
        return false;
    }
    addRecentProject(file);
    refresh();
    m_status->setText(tr("Saved as %1").arg(file));
    return true;
}

void MainWindow::saveProjectAsDialog() {
    if (m_busy) return;
    if (!m_bench->hasProject()) {
        showError(tr("Save As"), tr("There is no project yet: apply an edit or create one with File > New Project"));
        return;
    }
    QString file = QFileDialog::getSaveFileName(this, tr("Save the project as"), QString(), tr("Engram projects (*.engram)"));
    if (file.isEmpty()) return;
    if (!file.endsWith(QLatin1String(".engram"))) file += QStringLiteral(".engram");
    saveProjectAs(file);
}

QStringList MainWindow::recentProjects() const { return QSettings().value(QStringLiteral("recentProjects")).toStringList(); }

void MainWindow::addRecentProject(const QString& file) {
    const QString path = QFileInfo(file).absoluteFilePath();
    QStringList list = recentProjects();
    list.removeAll(path);
    list.prepend(path);
    while (list.size() > 8) list.removeLast();
    QSettings().setValue(QStringLiteral("recentProjects"), list);
    rebuildRecentMenu();
}

void MainWindow::rebuildRecentMenu() {
    m_recentMenu->clear();
    const QStringList list = recentProjects();
    for (int i = 0; i < list.size(); ++i) {
        const QString file = list[i];
        QAction* a = m_recentMenu->addAction(QStringLiteral("&%1 %2").arg(i + 1).arg(QFileInfo(file).fileName()));
        a->setToolTip(file);
        a->setStatusTip(file);
        connect(a, &QAction::triggered, this, [this, file] {
            if (m_busy) return;
            if (!QFileInfo::exists(file)) {
                showError(tr("Open Recent"), tr("%1 no longer exists").arg(file));
                QStringList l = recentProjects();
                l.removeAll(file);
                QSettings().setValue(QStringLiteral("recentProjects"), l);
                return;
            }
            Workbench* bench = m_bench.get();
            runJob(tr("Opening %1").arg(file), [bench, file] { bench->openProject(file); }, [this, file] { projectOpened(file); });
        });
    }
    if (list.isEmpty()) m_recentMenu->addAction(tr("(none)"))->setEnabled(false);
}

void MainWindow::applySettings(const QString& device, int threads, const QString& defaultMethod) {
    waitIdle();
    m_bench->setDevice(device);
    Workbench::setThreads(threads);
    if (m_method->findText(defaultMethod) >= 0) m_method->setCurrentText(defaultMethod);
    if (m_evalMethod->findText(defaultMethod) >= 0) m_evalMethod->setCurrentText(defaultMethod);
    QSettings settings;
    settings.setValue(QStringLiteral("settings/device"), device);
    settings.setValue(QStringLiteral("settings/threads"), threads);
    settings.setValue(QStringLiteral("settings/defaultMethod"), defaultMethod);
    m_status->setText(tr("Settings: %1, %n thread(s), default method %2", nullptr, threads).arg(device, defaultMethod));
}

void MainWindow::settingsDialog() {
    if (m_busy) return;
    QDialog dialog(this);
    dialog.setWindowTitle(tr("Settings"));
    auto* form = new QFormLayout(&dialog);
    auto* device = new QComboBox(&dialog);
    device->addItems(Workbench::availableDevices());
    device->setCurrentText(m_bench->device());
    device->setToolTip(tr("Where the model runs. CUDA devices are listed when libtorch was built with CUDA."));
    auto* threads = new QSpinBox(&dialog);
    threads->setRange(1, std::max(1, QThread::idealThreadCount()) * 2);
    threads->setValue(Workbench::threads());
    threads->setToolTip(tr("libtorch intra-op threads (OpenBLAS and element-wise work)"));
    auto* method = new QComboBox(&dialog);
    for (int i = 0; i < m_method->count(); ++i) method->addItem(m_method->itemText(i));
    method->setCurrentText(QSettings().value(QStringLiteral("settings/defaultMethod"), m_method->currentText()).toString());
    form->addRow(tr("Device"), device);
    form->addRow(tr("Threads"), threads);
    form->addRow(tr("Default edit method"), method);
    auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel, &dialog);
    connect(buttons, &QDialogButtonBox::accepted, &dialog, &QDialog::accept);
    connect(buttons, &QDialogButtonBox::rejected, &dialog, &QDialog::reject);
    form->addRow(buttons);
    if (dialog.exec() != QDialog::Accepted) return;
    try {
        applySettings(device->currentText(), threads->value(), method->currentText());
    } catch (const std::exception& e) {
        showError(tr("Settings"), QString::fromStdString(e.what()));
    }
}

void MainWindow::openModelDialog() {
    if (m_busy) return;
    const QString dir = QFileDialog::getExistingDirectory(this, tr("Open a Hugging Face checkpoint folder"));
    if (dir.isEmpty()) return;
    Workbench* bench = m_bench.get();
    runJob(tr("Opening %1").arg(dir), [bench, dir] { bench->openModel(dir); }, [this] {
        m_undo->clear();
        refresh();
    });
}

void MainWindow::openProjectDialog() {
    if (m_busy) return;
    const QString file = QFileDialog::getOpenFileName(this, tr("Open a project"), QString(), tr("Engram projects (*.engram)"));
    if (file.isEmpty()) return;
    Workbench* bench = m_bench.get();
    runJob(tr("Opening %1").arg(file), [bench, file] { bench->openProject(file); }, [this, file] { projectOpened(file); });
}

void MainWindow::newProjectDialog() {
    if (m_busy) return;
    QString file = QFileDialog::getSaveFileName(this, tr("New project"), QString(), tr("Engram projects (*.engram)"));
    if (file.isEmpty()) return;
    if (!file.endsWith(QLatin1String(".engram"))) file += QStringLiteral(".engram");
    try {
        m_bench->createProject(file);
        m_undo->clear();
        addRecentProject(file);
        refresh();
    } catch (const std::exception& e) {
        showError(tr("Creating the project failed"), QString::fromStdString(e.what()));
    }
}

bool MainWindow::saveScreenshots(const QString& dir, QString* error, const QVector<int>& only) {
    QDir().mkpath(dir);
    const char* names[] = {"prompt", "trace", "edit", "history", "vision", "evaluate"};
    for (int i = 0; i < m_tabs->count() && i < 6; ++i) {
        if (!only.isEmpty() && !only.contains(i)) continue;
        m_tabs->setCurrentIndex(i);
        QApplication::processEvents();
        const QString path = QDir(dir).filePath(QString::fromLatin1(names[i]) + QStringLiteral(".png"));
        if (!grab().save(path)) {
            if (error) *error = tr("could not write %1").arg(path);
            return false;
        }
    }
    return true;
}

}  // namespace engram::ui
