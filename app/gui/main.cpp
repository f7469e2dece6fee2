// engram: the workbench GUI. Without arguments it opens the Fact World demo model.
//   engram [--model DIR] [--project FILE.engram | FILE.engram] [--screenshot DIR] [--version]
// --screenshot opens each main view after a trace, a prediction and an edit on the demo model, saves one
// PNG per view into DIR and exits (for tests and for reviewing the interface).
#include <QApplication>
#include <QCommandLineParser>
#include <QComboBox>
#include <QListWidget>
#include <QTableView>
#include <QDir>
#include <QEventLoop>
#include <QFileInfo>
#include <QTimer>

#include <algorithm>
#include <cstring>
#include <iostream>

#include "views/main_window.h"

namespace {

// The installed demo worlds (<prefix>/share/engram/demo) come first; the source tree's resources/
// is used only by a binary that runs from the build tree, so an installed engram never reads it.
QString demo_dir(const QString& world) {
    const QString exe = QCoreApplication::applicationDirPath();
    QStringList bases;
    if (const QByteArray env = qgetenv("ENGRAM_RESOURCES"); !env.isEmpty()) bases << QString::fromLocal8Bit(env);
    bases << exe + QStringLiteral("/../share/engram");
    if (QDir::cleanPath(exe).startsWith(QDir::cleanPath(QStringLiteral(ENGRAM_BUILD_DIR)))) bases << QStringLiteral(ENGRAM_SOURCE_RESOURCES);
    for (const QString& base : bases) {
        const QString d = base + QStringLiteral("/demo/") + world;
        if (QFileInfo::exists(d + QStringLiteral("/config.json"))) return d;
    }
    return QString();
}

}  // namespace

int main(int argc, char** argv) {
    // --version answers without a display (QApplication would need one).
    for (int i = 1; i < argc; ++i)
        if (std::strcmp(argv[i], "--version") == 0 || std::strcmp(argv[i], "-v") == 0) {
            std::cout << "engram " ENGRAM_VERSION " (commit " ENGRAM_GIT_COMMIT ")\n";
            return 0;
        }
    QApplication app(argc, argv);
    QCoreApplication::setOrganizationName(QStringLiteral("Engram"));
    QCoreApplication::setApplicationName(QStringLiteral("engram"));
    QCommandLineParser parser;
    parser.setApplicationDescription(QStringLiteral("Engram: locate, edit, verify and undo what a transformer knows"));
    QCoreApplication::setApplicationVersion(QStringLiteral(ENGRAM_VERSION " (commit " ENGRAM_GIT_COMMIT ")"));
    parser.addHelpOption();
    parser.addVersionOption();
    parser.addPositionalArgument(QStringLiteral("project"), QStringLiteral("An Engram project (*.engram) to open, as --project does."),
                                 QStringLiteral("[FILE.engram]"));
    QCommandLineOption model({QStringLiteral("model")}, QStringLiteral("A Hugging Face checkpoint folder."), QStringLiteral("DIR"));
    QCommandLineOption project({QStringLiteral("project")}, QStringLiteral("An Engram project to reopen."), QStringLiteral("FILE"));
    QCommandLineOption shots({QStringLiteral("screenshot")}, QStringLiteral("Save one PNG per view into DIR and exit."), QStringLiteral("DIR"));
    parser.addOption(model);
    parser.addOption(project);
    parser.addOption(shots);
    parser.process(app);
    if (parser.positionalArguments().size() > 1 || (parser.isSet(project) && !parser.positionalArguments().isEmpty())) {
        std::cerr << "engram: one project at a time (got " << (parser.positionalArguments().size() + (parser.isSet(project) ? 1 : 0))
                  << "); see engram --help\n";
        return 2;
    }
    const QString project_file = parser.isSet(project) ? parser.value(project) : parser.positionalArguments().value(0);

    engram::ui::MainWindow window;
    if (const QString d = demo_dir(QStringLiteral("factworld")); !d.isEmpty()) {
        window.addDemoModel(QStringLiteral("Open the Fact World model"), d);
        window.setGuideModel(d);
    }
    if (const QString d = demo_dir(QStringLiteral("shapes")); !d.isEmpty()) window.addDemoModel(QStringLiteral("Open the Shapes World ViT"), d);
    try {
        if (!project_file.isEmpty()) {
            window.openProjectNow(project_file);
        } else {
            const QString dir = parser.isSet(model) ? parser.value(model) : demo_dir(QStringLiteral("factworld"));
            if (dir.isEmpty()) throw std::runtime_error("the Fact World demo model is not installed; pass --model DIR");
            window.openModelNow(dir);
        }
    } catch (const std::exception& e) {
        std::cerr << "engram: " << e.what() << "\n";
        return 1;
    }
    window.show();
    if (!parser.isSet(shots)) {
        window.showGuideIfFirstRun();
        return app.exec();
    }

    // Screenshot mode: a trace, a prediction and an edit on a fact the demo model knows, then one PNG per view.
    QEventLoop loop;
    bool ok = false;
    QObject::connect(&window, &engram::ui::MainWindow::jobFinished, &loop, [&](bool good) {
        ok = good;
        loop.quit();
    });
    window.setTraceRequest(QStringLiteral("Peanaim Fosha competes in"), QStringLiteral("Peanaim Fosha"));
    window.runTrace();
    loop.exec();
    const bool traced = ok;
    window.fillEditForm(QStringLiteral("{} competes in"), QStringLiteral("Peanaim Fosha"), QStringLiteral("Zuluball"), QStringLiteral("rome"), -1);
    window.applyEdit();
    loop.exec();
    ok = ok && traced;
    window.waitIdle();  // the automatic re-trace after the edit
    // The Evaluate view with two overlaid runs: MEMIT against MEMIT+BLUE, 20 edits in batches of 10.
    for (bool blue : {false, true}) {
        const bool before = ok;
        window.setEvaluation(QStringLiteral("memit"), blue, 20, 10);
        window.runEvaluation();
        loop.exec();
        ok = ok && before;
    }
    // The History view with the edit selected: its detail panel and its ‖Δ‖ bars.
    if (auto* history = window.findChild<QTableView*>(QStringLiteral("historyView")); history && history->model()->rowCount())
        history->selectRow(history->model()->rowCount() - 1);
    if (!ok) std::cerr << "engram: the screenshot edit failed; the views are saved as they are\n";
    QString error;
    if (!window.saveScreenshots(parser.value(shots), &error)) {
        std::cerr << "engram: " << error.toStdString() << "\n";
        return 1;
    }
    // The Vision view on the Shapes World ViT: counter images, the first one attributed.
    if (const QString shapes = demo_dir(QStringLiteral("shapes")); !shapes.isEmpty()) {
        try {
            window.openModelNow(shapes);
            window.loadImages();
            // A head-level edit of the listed failures of the class failing most often, then the
            // first of them shown with the before/after report.
            const auto& images = window.workbench().vitImages();
            const QVector<int> predicted = window.workbench().vitPredictions();
            QVector<int> failures(window.workbench().labels().size(), 0);
            for (int i = 0; i < images.size(); ++i)
                if (images[i].label >= 0 && images[i].label != predicted[i]) ++failures[images[i].label];
            const int cls = int(std::max_element(failures.begin(), failures.end()) - failures.begin());
            auto* list = window.findChild<QListWidget*>(QStringLiteral("imageList"));
            if (failures.value(cls) > 0 && list) {
                int first = -1;
                list->clearSelection();
                for (int i = 0; i < images.size(); ++i)
                    if (images[i].label == cls && predicted[i] != cls) {
                        list->item(i)->setSelected(true);
                        if (first < 0) first = i;
                    }
                window.findChild<QComboBox*>(QStringLiteral("vitTarget"))->setCurrentIndex(cls);
                const bool before = ok;
                window.applyHeadEdit();
                loop.exec();
                ok = ok && before;
                list->setCurrentRow(first);
            }
            if (!window.saveScreenshots(parser.value(shots), &error, {4})) {
                std::cerr << "engram: " << error.toStdString() << "\n";
                return 1;
            }
        } catch (const std::exception& e) {
            std::cerr << "engram: the vision screenshot failed: " << e.what() << "\n";
            ok = false;
        }
    }
    std::cout << "saved the views to " << parser.value(shots).toStdString() << "\n";
    return ok ? 0 : 1;
}
