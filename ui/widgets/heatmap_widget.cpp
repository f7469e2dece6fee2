#include "widgets/heatmap_widget.h"

#include <QMouseEvent>
#include <QPainter>
#include <QVBoxLayout>

#include "widgets/plot_export.h"
#include "widgets/qcustomplot_include.h"

#include <cmath>

namespace engram::ui {

namespace {

QString kindWord(HeatmapKind kind) {
    switch (kind) {
        case HeatmapKind::Hidden: return QStringLiteral("state");
        case HeatmapKind::Mlp: return QStringLiteral("MLP");
        case HeatmapKind::Attn: return QStringLiteral("Attn");
        case HeatmapKind::Difference: return QStringLiteral("difference");
    }
    return {};
}

QFont paperFont(int pointSize) {
    QFont f(QStringLiteral("Times New Roman"), pointSize);
    f.setStyleHint(QFont::Serif);
    return f;
}

}  // namespace

QVector<QColor> HeatmapWidget::colorStops(HeatmapKind kind) {
    static const char* purples[] = {"#fcfbfd", "#efedf5", "#dadaeb", "#bcbddc", "#9e9ac8", "#807dba", "#6a51a3", "#54278f", "#3f007d"};
    static const char* greens[] = {"#f7fcf5", "#e5f5e0", "#c7e9c0", "#a1d99b", "#74c476", "#41ab5d", "#238b45", "#006d2c", "#00441b"};
    static const char* reds[] = {"#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15", "#67000d"};
    // ColorBrewer RdBu, reversed: negative red, 0 white, positive blue.
    static const char* rdbu[] = {"#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7",
                                 "#d1e5f0", "#92c5de", "#4393c3", "#2166ac", "#053061"};
    QVector<QColor> out;
    if (kind == HeatmapKind::Difference) {
        for (const char* c : rdbu) out.push_back(QColor(QString::fromLatin1(c)));
        return out;
    }
    const char** stops = kind == HeatmapKind::Hidden ? purples : kind == HeatmapKind::Mlp ? greens : reds;
    for (int i = 0; i < 9; ++i) out.push_back(QColor(QString::fromLatin1(stops[i])));
    return out;
}

HeatmapWidget::HeatmapWidget(QWidget* parent) : QWidget(parent) {
    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    m_plot = new QCustomPlot(this);
    layout->addWidget(m_plot);
    m_map = new QCPColorMap(m_plot->xAxis, m_plot->yAxis);
    m_map->setInterpolate(false);  // crisp cells, as pcolor
    m_map->setTightBoundary(false);
    m_scale = new QCPColorScale(m_plot);
    m_plot->plotLayout()->addElement(0, 1, m_scale);
    m_scale->setType(QCPAxis::atRight);
    m_map->setColorScale(m_scale);
    auto* group = new QCPMarginGroup(m_plot);
    m_plot->axisRect()->setMarginGroup(QCP::msBottom | QCP::msTop, group);
    m_scale->setMarginGroup(QCP::msBottom | QCP::msTop, group);
    m_plot->plotLayout()->insertRow(0);
    m_title = new QCPTextElement(m_plot, QString(), paperFont(11));
    m_plot->plotLayout()->addElement(0, 0, m_title);
    m_plot->yAxis->setRangeReversed(true);  // the first token at the top
    for (QCPAxis* axis : {m_plot->xAxis, m_plot->yAxis}) {
        axis->setTickLabelFont(paperFont(9));
        axis->setLabelFont(paperFont(10));
        axis->grid()->setVisible(false);
        axis->setSubTicks(false);
    }
    m_scale->axis()->setTickLabelFont(paperFont(8));
    m_scale->axis()->setLabelFont(paperFont(10));
    setMinimumSize(320, 200);
    setMouseTracking(true);
    connect(m_plot, &QCustomPlot::mousePress, this, [this](QMouseEvent* event) {
        int row = 0, column = 0;
        if (cellAt(m_plot->mapTo(this, event->pos()), &row, &column)) Q_EMIT cellClicked(row, column);
    });
    // Hover: the token, the layer and the cell's value.
    connect(m_plot, &QCustomPlot::mouseMove, this, [this](QMouseEvent* event) {
        int row = 0, column = 0;
        if (!cellAt(m_plot->mapTo(this, event->pos()), &row, &column)) {
            m_plot->setToolTip(QString());
            return;
        }
        m_plot->setToolTip(toolTipAt(row, column));
    });
}

QString HeatmapWidget::toolTipAt(int row, int column) const {
    const double v = cellValue(row, column);
    QString text = QStringLiteral("%1\nlayer %2\n%3 %4")
                       .arg(rowLabel(row))
                       .arg(column)
                       .arg(m_data.kind == HeatmapKind::Difference ? QStringLiteral("Δ p(%1)").arg(m_data.answer)
                            : m_data.answer.isEmpty()               ? QStringLiteral("value")
                                                                    : QStringLiteral("p(%1)").arg(m_data.answer))
                       .arg(std::isnan(v) ? QStringLiteral("—") : QString::number(v, 'f', 4));
    if (m_data.kind != HeatmapKind::Difference && !std::isnan(m_data.low) && !std::isnan(v))
        text += QStringLiteral("\nindirect effect %1").arg(v - m_data.low, 0, 'f', 4);
    return text;
}

QPoint HeatmapWidget::cellCenter(int row, int column) const {
    return m_plot->mapTo(this, QPoint(int(m_plot->xAxis->coordToPixel(column)), int(m_plot->yAxis->coordToPixel(row))));
}

bool HeatmapWidget::cellAt(const QPoint& pos, int* row, int* column) const {
    const QPoint p = m_plot->mapFrom(this, pos);
    if (!m_plot->axisRect()->rect().contains(p)) return false;
    const int c = int(std::lround(m_plot->xAxis->pixelToCoord(p.x())));
    const int r = int(std::lround(m_plot->yAxis->pixelToCoord(p.y())));
    if (r < 0 || r >= rowCount() || c < 0 || c >= columnCount()) return false;
    *row = r;
    *column = c;
    return true;
}

void HeatmapWidget::setData(const HeatmapData& data) {
    m_data = data;
    const int rows = int(data.values.size());
    const int cols = rows > 0 ? int(data.values[0].size()) : 0;
    QCPColorMapData* md = m_map->data();
    md->setSize(cols, rows);
    md->setRange(QCPRange(0, std::max(0, cols - 1)), QCPRange(0, std::max(0, rows - 1)));
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const double v = c < data.values[r].size() ? data.values[r][c] : std::nan("");
            md->setCell(c, r, v);
            if (!std::isnan(v)) {
                lo = std::min(lo, v);
                hi = std::max(hi, v);
            }
        }
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    double low = std::isnan(data.low) ? lo : data.low;
    double high = std::isnan(data.high) ? hi : data.high;
    if (data.kind == HeatmapKind::Difference && std::isnan(data.low) && std::isnan(data.high)) {
        high = std::max(std::abs(lo), std::abs(hi));  // symmetric about 0
        low = -high;
    }
    const double span = std::max(data.minSpan, 1e-12);
    if (!(high - low >= span)) {
        if (data.kind == HeatmapKind::Difference) {
            high = std::max(high, span / 2);
            low = std::min(low, -span / 2);
        } else {
            high = low + span;
        }
    }
    QCPColorGradient gradient;
    gradient.clearColorStops();
    const QVector<QColor> stops = colorStops(data.kind);
    for (int i = 0; i < stops.size(); ++i) gradient.setColorStopAt(double(i) / (stops.size() - 1), stops[i]);
    gradient.setColorInterpolation(QCPColorGradient::ciRGB);
    gradient.setLevelCount(350);
    gradient.setNanHandling(QCPColorGradient::nhTransparent);
    m_map->setGradient(gradient);
    m_map->setDataRange(QCPRange(low, high));  // values below the corrupted probability draw as the lightest colour

    // Tokens as rows, the subject marked.
    QSharedPointer<QCPAxisTickerText> yTicks(new QCPAxisTickerText);
    for (int r = 0; r < rows; ++r) yTicks->addTick(r, rowLabel(r));
    m_plot->yAxis->setTicker(yTicks);
    m_plot->yAxis->setRange(-0.5, rows - 0.5);
    // Layers as columns: a tick every 5 layers at the cell centres (ROME: range(0, L - 6, 5)); all of them when few.
    QSharedPointer<QCPAxisTickerText> xTicks(new QCPAxisTickerText);
    const int step = cols <= 8 ? 1 : 5;
    for (int c = 0; c < cols; c += step) xTicks->addTick(c, QString::number(c));
    m_plot->xAxis->setTicker(xTicks);
    m_plot->xAxis->setRange(-0.5, cols - 0.5);

    m_title->setText(titleText());
    m_plot->xAxis->setLabel(xLabelText());
    m_scale->axis()->setLabel(colorBarText());
    m_plot->replot(QCustomPlot::rpImmediateRefresh);
}

int HeatmapWidget::rowCount() const { return m_map->data()->valueSize(); }
int HeatmapWidget::columnCount() const { return m_map->data()->keySize(); }
double HeatmapWidget::cellValue(int row, int column) const { return m_map->data()->cell(column, row); }
double HeatmapWidget::rangeLower() const { return m_map->dataRange().lower; }
double HeatmapWidget::rangeUpper() const { return m_map->dataRange().upper; }
bool HeatmapWidget::interpolates() const { return m_map->interpolate(); }

QString HeatmapWidget::rowLabel(int row) const {
    QString label = row < m_data.rowLabels.size() ? m_data.rowLabels[row] : QString::number(row);
    if (row >= m_data.subjectBegin && row < m_data.subjectEnd) label += QLatin1Char('*');
    return label;
}

QString HeatmapWidget::titleText() const {
    if (!m_data.title.isEmpty()) return m_data.title;
    return QStringLiteral("Impact of restoring %1 after corrupted input").arg(kindWord(m_data.kind));
}

QString HeatmapWidget::xLabelText() const {
    if (!m_data.xLabel.isEmpty()) return m_data.xLabel;
    if (m_data.kind == HeatmapKind::Hidden)
        return QStringLiteral("single restored layer within %1").arg(m_data.modelName.isEmpty() ? QStringLiteral("the model") : m_data.modelName);
    return QStringLiteral("center of interval of %1 restored %2 layers").arg(m_data.window).arg(kindWord(m_data.kind));
}

QString HeatmapWidget::colorBarText() const {
    if (!m_data.colorBarLabel.isEmpty()) return m_data.colorBarLabel;
    return QStringLiteral("p(%1)").arg(m_data.answer.isEmpty() ? QStringLiteral("answer") : m_data.answer);
}

QColor HeatmapWidget::cellColor(int row, int column) const {
    const double v = cellValue(row, column);
    QRgb rgb = 0;
    QCPColorGradient g = m_map->gradient();
    g.colorize(&v, m_map->dataRange(), &rgb, 1);
    return QColor::fromRgba(rgb);
}

QSize HeatmapWidget::exportSize() const {
    // ROME: 3.5 x 2 in at 200 dpi. Taller when there are many tokens so labels never overlap.
    const int rows = rowCount();
    return QSize(700, std::max(400, 110 + 24 * rows));
}

bool HeatmapWidget::exportTo(const QString& path, const QString& format, QString* error, int width, int height) {
    const QSize size = exportSize();
    return exportPlot(m_plot, path, format, titleText(), QSize(width > 0 ? width : size.width(), height > 0 ? height : size.height()), error);
}

}  // namespace engram::ui
