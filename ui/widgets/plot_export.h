// One export path for every plot widget: PNG (at 2x), PDF or SVG, drawn offscreen at a given size.
#pragma once

#include <QSize>
#include <QString>

class QCustomPlot;

namespace engram::ui {

// format: "png", "pdf" or "svg" (empty: from the file suffix). Returns false with a message in
// *error for an unknown format, a build without Qt Svg, or a file that could not be written.
bool exportPlot(QCustomPlot* plot, const QString& path, const QString& format, const QString& title, QSize size, QString* error);

}  // namespace engram::ui
