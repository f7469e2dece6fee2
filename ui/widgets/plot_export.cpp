#include "widgets/plot_export.h"

#include <QFileInfo>

#include "widgets/qcustomplot_include.h"

#ifdef ENGRAM_UI_HAS_SVG
#include <QSvgGenerator>
#endif

namespace engram::ui {

bool exportPlot(QCustomPlot* plot, const QString& path, const QString& format, const QString& title, QSize size, QString* error) {
    const QString fmt = (format.isEmpty() ? QFileInfo(path).suffix() : format).toLower();
    const int width = size.width(), height = size.height();
    plot->resize(width, height);
    plot->replot(QCustomPlot::rpImmediateRefresh);
    bool ok = false;
    if (fmt == QLatin1String("png")) {
        ok = plot->savePng(path, width, height, 2.0, -1, 200);
    } else if (fmt == QLatin1String("pdf")) {
        ok = plot->savePdf(path, width, height, QCP::epNoCosmetic, QStringLiteral("Engram"), title);
    } else if (fmt == QLatin1String("svg")) {
#ifdef ENGRAM_UI_HAS_SVG
        QSvgGenerator svg;
        svg.setFileName(path);
        svg.setSize(QSize(width, height));
        svg.setViewBox(QRect(0, 0, width, height));
        svg.setTitle(title);
        QCPPainter painter;
        ok = painter.begin(&svg);
        if (ok) {
            plot->toPainter(&painter, width, height);
            ok = painter.end();
        }
#else
        if (error) *error = QStringLiteral("SVG export needs the Qt Svg module (qt6-svg-dev), which this build lacks");
        return false;
#endif
    } else {
        if (error) *error = QStringLiteral("unknown image format '%1' (use png, pdf or svg)").arg(fmt);
        return false;
    }
    if (!ok && error) *error = QStringLiteral("could not write %1").arg(path);
    return ok;
}

}  // namespace engram::ui
