#include "widgets/vit_attribution_figure.h"

#include <QHash>
#include <QPainter>
#include <QResizeEvent>
#include <QVBoxLayout>

#include "widgets/plot_export.h"
#include "widgets/qcustomplot_include.h"

#include <algorithm>
#include <cmath>
#include <functional>


namespace engram::ui {

namespace {

QFont paperFont(double pointSize, bool bold = false) {
    QFont f(QStringLiteral("Times New Roman"));
    f.setPointSizeF(pointSize);
    f.setStyleHint(QFont::Serif);
    f.setBold(bold);
    return f;
}

const QColor kInk(QStringLiteral("#222222"));
const QColor kMuted(QStringLiteral("#555555"));
const QColor kFrame(QStringLiteral("#9a9a9a"));

// "+0.42" / "−0.42" with a real minus sign, as in a typeset figure.
QString signedText(double v, int decimals = 2) {
    const QString digits = QString::number(std::abs(v), 'f', decimals);
    return (v < 0 ? QStringLiteral("\u2212") : QStringLiteral("+")) + digits;
}

// A cell annotation: a typeset minus, and no "−0.0" for a small negative value.
QString cellText(double v, int decimals) {
    const QString digits = QString::number(std::abs(v), 'f', decimals);
    const bool zero = digits.toDouble() == 0;
    return (v < 0 && !zero ? QStringLiteral("\u2212") : QString()) + digits;
}

// Enough decimals for the largest magnitude m to show two significant digits.
int decimalsFor(double m) { return m >= 10 ? 0 : m >= 1 ? 1 : 2; }

double maxAbs(double m, double v) { return std::isfinite(v) ? std::max(m, std::abs(v)) : m; }

// Small images (CIFAR-sized 32x32) are enlarged by an integer factor, nearest-neighbour, before they
// are drawn: a PDF or SVG viewer that smooths embedded images then still shows crisp pixels.
QImage crispCopy(const QImage& image) {
    QImage rgb = image.convertToFormat(QImage::Format_RGB32);
    const int side = std::max(rgb.width(), rgb.height());
    if (side <= 0 || side >= 256) return rgb;
    const int k = (256 + side - 1) / side;
    return rgb.scaled(rgb.width() * k, rgb.height() * k, Qt::IgnoreAspectRatio, Qt::FastTransformation);
}

// The image under a patch map: its own colours, faded halfway to white, so the object stays
// recognisable and the diverging overlay still reads on top of it.
QImage dimmedCopy(const QImage& rgb) {
    QImage out(rgb.size(), QImage::Format_RGB32);
    auto fade = [](int v) { return 255 - int(std::lround((255 - v) * 0.5)); };
    for (int y = 0; y < rgb.height(); ++y) {
        const QRgb* src = reinterpret_cast<const QRgb*>(rgb.constScanLine(y));
        QRgb* dst = reinterpret_cast<QRgb*>(out.scanLine(y));
        for (int x = 0; x < rgb.width(); ++x) dst[x] = qRgb(fade(qRed(src[x])), fade(qGreen(src[x])), fade(qBlue(src[x])));
    }
    return out;
}

QCPColorGradient divergingGradient(bool translucent) {
    QCPColorGradient gradient;
    gradient.clearColorStops();
    const QVector<QColor> stops = VitAttributionFigure::colorStops();
    const int mid = int(stops.size()) / 2;
    for (int i = 0; i < stops.size(); ++i) {
        QColor c = stops[i];
        if (translucent) {
            // Zero is fully transparent; the overlay grows opaque with |value| so weak patches
            // leave the image visible and strong ones cover it.
            const int d = std::abs(i - mid);
            c.setAlpha(int(std::lround(235 * std::pow(double(d) / mid, 0.8))));
        }
        gradient.setColorStopAt(double(i) / (stops.size() - 1), c);
    }
    gradient.setColorInterpolation(QCPColorGradient::ciRGB);
    gradient.setLevelCount(351);  // odd: 0 falls on the middle level, the white (or transparent) one
    gradient.setNanHandling(QCPColorGradient::nhTransparent);
    return gradient;
}

// Fills a colour map with cols x rows unit cells centred on (x0 + c, y0 + r). QCustomPlot spaces
// cells by range / (size - 1), so a single row or column is stored as two equal half-width ones.
void fillCells(QCPColorMap* map, int cols, int rows, double x0, double y0, const std::function<double(int, int)>& value) {
    const int kc = std::max(2, cols), kr = std::max(2, rows);
    QCPColorMapData* md = map->data();
    md->setSize(kc, kr);
    md->setRange(cols <= 1 ? QCPRange(x0 - 0.25, x0 + 0.25) : QCPRange(x0, x0 + cols - 1),
                 rows <= 1 ? QCPRange(y0 - 0.25, y0 + 0.25) : QCPRange(y0, y0 + rows - 1));
    for (int r = 0; r < kr; ++r)
        for (int c = 0; c < kc; ++c) {
            const int dc = cols <= 1 ? 0 : c, dr = rows <= 1 ? 0 : r;
            md->setCell(c, r, dc < cols && dr < rows ? value(dc, dr) : std::nan(""));
        }
    map->setInterpolate(false);  // crisp cells
    map->setTightBoundary(false);
}

// Writes each cell's value over it, white on the dark ends of the symmetric range [-m, m].
QVector<QCPItemText*> annotateCells(QCustomPlot* plot, QCPAxisRect* rect, QCPColorMap* map, int cols, int rows, double m) {
    QVector<QCPItemText*> out;
    const int decimals = decimalsFor(m);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const double v = map->data()->cell(c, r);
            if (!std::isfinite(v)) continue;
            auto* t = new QCPItemText(plot);
            t->position->setAxes(map->keyAxis(), map->valueAxis());
            t->position->setCoords(c, r);
            t->setClipAxisRect(rect);
            t->setText(cellText(v, decimals));
            t->setFont(paperFont(7.5));
            t->setColor(std::abs(v) / m > 0.55 ? QColor(Qt::white) : kInk);
            t->setSelectable(false);
            out.push_back(t);
        }
    return out;
}

// Draws a QImage into the rectangle spanned by two plot positions, without smoothing.
class ImageItem : public QCPAbstractItem {
public:
    ImageItem(QCustomPlot* plot, QCPAxisRect* rect, const QImage& image, double spanX, double spanY)
        : QCPAbstractItem(plot), m_image(image), m_topLeft(createPosition(QStringLiteral("topLeft"))),
          m_bottomRight(createPosition(QStringLiteral("bottomRight"))) {
        for (QCPItemPosition* p : {m_topLeft, m_bottomRight}) {
            p->setAxes(rect->axis(QCPAxis::atBottom), rect->axis(QCPAxis::atLeft));
            p->setAxisRect(rect);
        }
        m_topLeft->setCoords(0, 0);
        m_bottomRight->setCoords(spanX, spanY);
        setClipAxisRect(rect);
        setSelectable(false);
    }

    double selectTest(const QPointF&, bool, QVariant*) const override { return -1; }

protected:
    void draw(QCPPainter* painter) override {
        const QRectF target = QRectF(m_topLeft->pixelPosition(), m_bottomRight->pixelPosition()).normalized();
        if (m_image.isNull() || target.isEmpty()) return;
        painter->save();
        painter->setRenderHint(QPainter::SmoothPixmapTransform, false);
        painter->drawImage(target, m_image);
        painter->restore();
    }

private:
    QImage m_image;
    QCPItemPosition* m_topLeft;
    QCPItemPosition* m_bottomRight;
};

// An axis rect with no visible axes, for an image panel.
QCPAxisRect* bareRect(QCustomPlot* plot) {
    auto* rect = new QCPAxisRect(plot, true);
    for (QCPAxis* axis : rect->axes()) axis->setVisible(false);
    rect->axis(QCPAxis::atLeft)->setRangeReversed(true);  // image row 0 at the top
    rect->setAutoMargins(QCP::msNone);
    rect->setMargins(QMargins(2, 2, 2, 2));
    return rect;
}

// A frame around an image: a rectangle item over [0, spanX] x [0, spanY].
void addFrame(QCustomPlot* plot, QCPAxisRect* rect, double spanX, double spanY) {
    auto* frame = new QCPItemRect(plot);
    for (QCPItemPosition* p : {frame->topLeft, frame->bottomRight}) {
        p->setAxes(rect->axis(QCPAxis::atBottom), rect->axis(QCPAxis::atLeft));
        p->setAxisRect(rect);
    }
    frame->topLeft->setCoords(0, 0);
    frame->bottomRight->setCoords(spanX, spanY);
    frame->setPen(QPen(kFrame, 0.8));
    frame->setBrush(Qt::NoBrush);
    frame->setClipToAxisRect(false);  // a clipped frame would lose the edges that lie on the rect's border
    frame->setSelectable(false);
}

QCPTextElement* caption(QCustomPlot* plot, const QString& text, const QFont& font, const QColor& color = kInk) {
    auto* t = new QCPTextElement(plot, text, font);
    t->setTextColor(color);
    t->setMargins(QMargins(0, 2, 0, 2));
    return t;
}

void styleAxis(QCPAxis* axis) {
    axis->setTickLabelFont(paperFont(9));
    axis->setLabelFont(paperFont(10));
    axis->setTickLabelColor(kInk);
    axis->setLabelColor(kInk);
    axis->grid()->setVisible(false);
    axis->setSubTicks(false);
    axis->setTickLengthIn(0);
    axis->setTickLengthOut(3);
    axis->setBasePen(QPen(kFrame, 0.8));
    axis->setTickPen(QPen(kFrame, 0.8));
    axis->setLabelPadding(4);
}

// A closed box: the top and right axes show only their lines.
void boxAxes(QCPAxisRect* rect) {
    for (QCPAxis::AxisType t : {QCPAxis::atTop, QCPAxis::atRight}) {
        QCPAxis* a = rect->axis(t);
        a->setVisible(true);
        a->setTicks(false);
        a->setTickLabels(false);
        a->grid()->setVisible(false);
        a->setBasePen(QPen(kFrame, 0.8));
    }
}

QSharedPointer<QCPAxisTickerText> indexTicks(int count) {
    QSharedPointer<QCPAxisTickerText> ticks(new QCPAxisTickerText);
    const int step = count <= 16 ? 1 : count <= 32 ? 2 : 4;
    for (int i = 0; i < count; i += step) ticks->addTick(i, QString::number(i));
    return ticks;
}

// Colour-bar labels with the same typeset minus as the cell values.
class MinusTicker : public QCPAxisTicker {
protected:
    QString getTickLabel(double tick, const QLocale& locale, QChar formatChar, int precision) override {
        return QCPAxisTicker::getTickLabel(tick, locale, formatChar, precision).replace(QLatin1Char('-'), QStringLiteral("\u2212"));
    }
};

void styleScale(QCPColorScale* scale, const QString& label) {
    scale->setType(QCPAxis::atRight);
    scale->setBarWidth(10);
    scale->axis()->setLabel(label);
    scale->axis()->setTickLabelFont(paperFont(8));
    scale->axis()->setLabelFont(paperFont(9.5));
    scale->axis()->setTickLabelColor(kInk);
    scale->axis()->setLabelColor(kInk);
    scale->axis()->setBasePen(QPen(kFrame, 0.8));
    scale->axis()->setTickPen(QPen(kFrame, 0.8));
    scale->axis()->setSubTickPen(QPen(kFrame, 0.6));
    scale->axis()->setTicker(QSharedPointer<QCPAxisTicker>(new MinusTicker));
    scale->axis()->ticker()->setTickCount(4);
}

}  // namespace

QVector<QColor> VitAttributionFigure::colorStops() {
    // ColorBrewer RdBu (11 classes), reversed so that positive values, which support the class, are blue.
    static const char* rdbu[] = {"#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7",
                                 "#d1e5f0", "#92c5de", "#4393c3", "#2166ac", "#053061"};
    QVector<QColor> out;
    for (const char* c : rdbu) out.push_back(QColor(QString::fromLatin1(c)));
    return out;
}

VitAttributionFigure::VitAttributionFigure(QWidget* parent) : QWidget(parent) {
    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    m_plot = new QCustomPlot(this);
    m_plot->setBackground(Qt::white);
    layout->addWidget(m_plot);
    connect(m_plot, &QCustomPlot::afterLayout, this, &VitAttributionFigure::fitToLayout);
    // Clicking a head cell selects it; hovering names it with its attribution.
    connect(m_plot, &QCustomPlot::mousePress, this, [this](QMouseEvent* event) {
        int layer = 0, head = 0;
        if (headAt(m_plot->mapTo(this, event->pos()), &layer, &head)) Q_EMIT headClicked(layer, head);
    });
    connect(m_plot, &QCustomPlot::mouseMove, this, [this](QMouseEvent* event) {
        int layer = 0, head = 0;
        if (!headAt(m_plot->mapTo(this, event->pos()), &layer, &head)) {
            m_plot->setToolTip(QString());
            return;
        }
        m_plot->setToolTip(QStringLiteral("layer %1, head %2\n%3: %4\nclick to show its patch map")
                               .arg(layer)
                               .arg(head)
                               .arg(scoreText())
                               .arg(gridValue(layer, head), 0, 'f', 4));
    });
    setMinimumSize(640, 260);
    rebuild();
}

bool VitAttributionFigure::headAt(const QPoint& pos, int* layer, int* head) const {
    if (!m_grid) return false;
    const QPoint p = m_plot->mapFrom(this, pos);
    if (!m_grid->keyAxis()->axisRect()->rect().contains(p)) return false;
    const int h = int(std::lround(m_grid->keyAxis()->pixelToCoord(p.x())));
    const int l = int(std::lround(m_grid->valueAxis()->pixelToCoord(p.y())));
    if (l < 0 || l >= layerCount() || h < 0 || h >= headCount()) return false;
    *layer = l;
    *head = h;
    return true;
}

QPoint VitAttributionFigure::headCenter(int layer, int head) const {
    if (!m_grid) return {};
    return m_plot->mapTo(this, QPoint(int(m_grid->keyAxis()->coordToPixel(head)), int(m_grid->valueAxis()->coordToPixel(layer))));
}

void VitAttributionFigure::setData(const VitAttributionData& data) {
    m_data = data;
    rebuild();
}

// Builds the whole figure anew: the number of panels and columns follows the data.
void VitAttributionFigure::rebuild() {
    m_plot->clearItems();
    m_plot->clearPlottables();
    m_plot->plotLayout()->clear();
    qDeleteAll(m_plot->findChildren<QCPMarginGroup*>(QString(), Qt::FindDirectChildrenOnly));
    m_grid = m_mlp = nullptr;
    m_patchMaps.clear();
    m_patchTitles.clear();
    m_imagePanels.clear();
    m_cellTexts.clear();

    const int nLayer = int(m_data.heads.size());
    int nHead = 0;
    for (const auto& row : m_data.heads) nHead = std::max(nHead, int(row.size()));
    const bool haveMlp = !m_data.mlps.isEmpty();
    double m = 0;
    for (const auto& row : m_data.heads)
        for (double v : row) m = maxAbs(m, v);
    for (double v : m_data.mlps) m = maxAbs(m, v);
    if (!(m > 0)) m = 1;  // an all-zero grid still gets a valid, symmetric range

    QCPLayoutGrid* top = m_plot->plotLayout();
    top->setRowSpacing(0);
    top->setMargins(QMargins(12, 6, 12, 8));
    m_title = caption(m_plot, titleText(), paperFont(12.5, true));
    top->addElement(0, 0, m_title);
    top->addElement(1, 0, caption(m_plot, [&] {
        QStringList parts;
        if (std::isfinite(m_data.logit)) parts << QStringLiteral("%1 = %2").arg(scoreText(), cellText(m_data.logit, 2));
        QStringList terms;
        double headSum = 0, mlpSum = 0;
        for (const auto& row : m_data.heads)
            for (double v : row) headSum += std::isfinite(v) ? v : 0;
        for (double v : m_data.mlps) mlpSum += std::isfinite(v) ? v : 0;
        if (nLayer > 0) terms << QStringLiteral("heads %1").arg(signedText(headSum));
        if (haveMlp) terms << QStringLiteral("MLPs %1").arg(signedText(mlpSum));
        if (std::isfinite(m_data.embed)) terms << QStringLiteral("embed %1").arg(signedText(m_data.embed));
        if (std::isfinite(m_data.bias)) terms << QStringLiteral("bias %1").arg(signedText(m_data.bias));
        if (!terms.isEmpty()) parts << QStringLiteral("direct effects: ") + terms.join(QStringLiteral(",  "));
        return parts.join(QStringLiteral("     "));
    }(), paperFont(9.5), kMuted));

    auto* body = new QCPLayoutGrid;
    top->addElement(2, 0, body);
    top->setRowStretchFactors({0.001, 0.001, 1});
    body->setColumnSpacing(4);
    body->setRowSpacing(0);
    auto* align = new QCPMarginGroup(m_plot);
    int col = 0;
    const QFont headFont = paperFont(10.5);
    const bool annotate = nLayer * nHead > 0 && nLayer <= 32 && nHead <= 32;  // fitToLayout() hides them where cells are too small

    // The input image.
    const QImage image = crispCopy(m_data.image);
    {
        QCPAxisRect* rect = bareRect(m_plot);
        body->addElement(1, col, rect);  // in the layout before any item refers to it
        const double sx = image.isNull() ? 1 : image.width(), sy = image.isNull() ? 1 : image.height();
        if (!image.isNull()) {
            new ImageItem(m_plot, rect, image, sx, sy);
            addFrame(m_plot, rect, sx, sy);
        }
        m_imagePanels.push_back({rect, sx, sy, sx / sy});
        rect->setMarginGroup(QCP::msTop | QCP::msBottom, align);
        rect->setAutoMargins(QCP::msTop | QCP::msBottom);
        body->addElement(0, col, caption(m_plot, m_data.className.isEmpty() ? QStringLiteral("input")
                                                                              : QStringLiteral("input (class \u201c%1\u201d)").arg(m_data.className),
                                         headFont));
        body->setColumnStretchFactor(col, 1.0);
        ++col;
    }

    // The layer x head grid and its MLP column, on one symmetric diverging scale.
    const QCPColorGradient diverging = divergingGradient(false);
    auto* gridScale = new QCPColorScale(m_plot);
    styleScale(gridScale, colorBarText());
    {
        auto* rect = new QCPAxisRect(m_plot, true);
        body->addElement(1, col, rect);
        QCPAxis* x = rect->axis(QCPAxis::atBottom);
        QCPAxis* y = rect->axis(QCPAxis::atLeft);
        styleAxis(x);
        styleAxis(y);
        boxAxes(rect);
        x->setLabel(QStringLiteral("head"));
        y->setLabel(QStringLiteral("layer"));
        y->setRangeReversed(true);  // layer 0 at the top, as the forward pass reads
        x->setTicker(indexTicks(nHead));
        y->setTicker(indexTicks(nLayer));
        x->setRange(-0.5, std::max(1, nHead) - 0.5);
        y->setRange(-0.5, std::max(1, nLayer) - 0.5);
        m_grid = new QCPColorMap(x, y);
        fillCells(m_grid, nHead, nLayer, 0, 0, [&](int h, int l) { return h < m_data.heads[l].size() ? m_data.heads[l][h] : std::nan(""); });
        m_grid->setColorScale(gridScale);

        if (annotate) m_cellTexts += annotateCells(m_plot, rect, m_grid, nHead, nLayer, m);
        // The heads shown on the right, outlined.
        for (int i = 0; i < std::min<int>(kMaxPatchMaps, int(m_data.topHeads.size())); ++i) {
            const auto& hm = m_data.topHeads[i];
            auto* box = new QCPItemRect(m_plot);
            for (QCPItemPosition* p : {box->topLeft, box->bottomRight}) p->setAxes(x, y);
            box->topLeft->setCoords(hm.head - 0.5, hm.layer - 0.5);
            box->bottomRight->setCoords(hm.head + 0.5, hm.layer + 0.5);
            box->setPen(QPen(Qt::black, 1.6));
            box->setBrush(Qt::NoBrush);
            box->setClipAxisRect(rect);
            box->setSelectable(false);
        }
        rect->setMarginGroup(QCP::msTop | QCP::msBottom, align);
        body->addElement(0, col, caption(m_plot, QStringLiteral("attention heads"), headFont));
        body->setColumnStretchFactor(col, 0.35 + 0.65 * std::clamp(double(nHead) / std::max(1, nLayer), 0.5, 1.6));
        ++col;
    }
    if (haveMlp) {
        auto* rect = new QCPAxisRect(m_plot, true);
        body->addElement(1, col, rect);
        QCPAxis* x = rect->axis(QCPAxis::atBottom);
        QCPAxis* y = rect->axis(QCPAxis::atLeft);
        styleAxis(x);
        styleAxis(y);
        boxAxes(rect);
        y->setRangeReversed(true);
        y->setTicker(indexTicks(nLayer));
        y->setTickLabels(false);
        y->setRange(-0.5, std::max(1, nLayer) - 0.5);
        QSharedPointer<QCPAxisTickerText> xt(new QCPAxisTickerText);
        xt->addTick(0, QStringLiteral("MLP"));
        x->setTicker(xt);
        x->setTickLength(0, 0);
        x->setLabel(QStringLiteral(" "));  // keeps the bottom margin level with the grid's "head" label
        x->setRange(-0.5, 0.5);
        m_mlp = new QCPColorMap(x, y);
        fillCells(m_mlp, 1, nLayer, 0, 0, [&](int, int l) { return l < m_data.mlps.size() ? m_data.mlps[l] : std::nan(""); });
        m_mlp->setColorScale(gridScale);
        if (annotate) m_cellTexts += annotateCells(m_plot, rect, m_mlp, 1, nLayer, m);
        rect->setAutoMargins(QCP::msTop | QCP::msBottom);
        rect->setMargins(QMargins(2, 0, 2, 0));
        rect->setSizeConstraintRect(QCPLayoutElement::scrInnerRect);
        rect->setMinimumSize(32, 10);
        rect->setMaximumSize(32, QWIDGETSIZE_MAX);
        rect->setMarginGroup(QCP::msTop | QCP::msBottom, align);
        body->setColumnStretchFactor(col, 0.001);
        ++col;
    }
    gridScale->setGradient(diverging);
    gridScale->setDataRange(QCPRange(-m, m));
    gridScale->setMarginGroup(QCP::msTop | QCP::msBottom, align);
    body->addElement(1, col, gridScale);
    body->setColumnStretchFactor(col, 0.001);
    ++col;

    // The top heads' patch maps over the dimmed image, on a second symmetric scale shared by all panels.
    const int nPanels = std::min<int>(kMaxPatchMaps, int(m_data.topHeads.size()));
    if (nPanels > 0) {
        int grid = m_data.patchGrid;
        if (grid <= 0) grid = int(std::lround(std::sqrt(double(m_data.topHeads[0].values.size()))));
        grid = std::max(1, grid);
        double pm = 0;
        for (int i = 0; i < nPanels; ++i)
            for (double v : m_data.topHeads[i].values) pm = maxAbs(pm, v);
        if (!(pm > 0)) pm = 1;

        const QImage dimmed = image.isNull() ? QImage() : dimmedCopy(image);
        const double aspect = image.isNull() ? 1.0 : double(image.width()) / image.height();
        // A nested layout joins its parent before it gets elements (QCustomPlot hands them the plot then).
        auto* panels = new QCPLayoutGrid;
        body->addElement(1, col, panels);
        panels->setMarginGroup(QCP::msTop | QCP::msBottom, align);  // level with the grid's cells
        panels->setColumnSpacing(8);
        panels->setRowSpacing(2);
        auto* patchScale = new QCPColorScale(m_plot);
        styleScale(patchScale, QStringLiteral("patch contribution"));
        const int perRow = panelsPerRow(nPanels, size());
        m_perRow = perRow;
        for (int i = 0; i < nPanels; ++i) {
            const auto& hm = m_data.topHeads[i];
            const double score = hm.layer >= 0 && hm.layer < nLayer && hm.head >= 0 && hm.head < m_data.heads[hm.layer].size()
                                     ? m_data.heads[hm.layer][hm.head]
                                     : std::nan("");
            QString title = QStringLiteral("L%1 H%2").arg(hm.layer).arg(hm.head);
            if (std::isfinite(score)) title += QStringLiteral("  (%1)").arg(signedText(score, decimalsFor(m)));
            m_patchTitles.push_back(title);

            auto* cell = new QCPLayoutGrid;
            panels->addElement(i / perRow, i % perRow, cell);
            cell->setRowSpacing(0);
            cell->addElement(0, 0, caption(m_plot, title, paperFont(9.5)));
            QCPAxisRect* rect = bareRect(m_plot);
            cell->addElement(1, 0, rect);
            cell->setRowStretchFactors({0.001, 1});
            if (!dimmed.isNull()) new ImageItem(m_plot, rect, dimmed, grid, grid);
            QCPAxis* x = rect->axis(QCPAxis::atBottom);
            QCPAxis* y = rect->axis(QCPAxis::atLeft);
            auto* map = new QCPColorMap(x, y);  // one crisp block per patch, aligned with the image
            fillCells(map, grid, grid, 0.5, 0.5, [&](int c, int r) {
                const int k = r * grid + c;
                return k < hm.values.size() ? hm.values[k] : std::nan("");
            });
            map->setColorScale(patchScale);
            addFrame(m_plot, rect, grid, grid);
            m_patchMaps.push_back(map);
            m_imagePanels.push_back({rect, double(grid), double(grid), aspect});
        }
        patchScale->setGradient(divergingGradient(true));
        patchScale->setDataRange(QCPRange(-pm, pm));
        patchScale->setMarginGroup(QCP::msTop | QCP::msBottom, align);
        body->addElement(0, col, caption(m_plot, nPanels == 1 ? QStringLiteral("top head by |effect|")
                                                              : QStringLiteral("top %1 heads by |effect|").arg(nPanels),
                                         headFont));
        // Room for each panel to be about as large as the input image: a panel must show its
        // patches, not a thumbnail.
        body->setColumnStretchFactor(col, perRow == 1 ? 0.8 : perRow == 2 ? 1.8 : 0.6 * perRow);
        ++col;
        body->addElement(1, col, patchScale);
        body->setColumnStretchFactor(col, 0.001);
        ++col;
    }
    body->setRowStretchFactors({0.001, 1});
    m_plot->replot(QCustomPlot::rpImmediateRefresh);
}

// A wide, short figure (the Vision view's) puts the panels in one row, where each gets the body's
// full height; a squarer one stacks them two by two.
int VitAttributionFigure::panelsPerRow(int nPanels, const QSize& size) {
    if (nPanels <= 1) return 1;
    if (size.height() > 0 && size.width() > 2.6 * size.height()) return nPanels;
    return 2;
}

void VitAttributionFigure::resizeEvent(QResizeEvent* event) {
    QWidget::resizeEvent(event);
    const int n = std::min<int>(kMaxPatchMaps, int(m_data.topHeads.size()));
    if (n > 0 && panelsPerRow(n, size()) != m_perRow) rebuild();
}

// After each layout pass: images keep their aspect ratio, and cell values show only where they fit.
void VitAttributionFigure::fitToLayout() {
    // All of a map's values or none: a grid with gaps where the text is wider reads as missing data.
    QHash<const QCPAxis*, bool> fits;
    for (QCPItemText* t : m_cellTexts) {
        const QCPAxis* x = t->position->keyAxis();
        const QCPAxis* y = t->position->valueAxis();
        const double w = std::abs(x->coordToPixel(1) - x->coordToPixel(0)), h = std::abs(y->coordToPixel(1) - y->coordToPixel(0));
        const QFontMetrics fm(t->font());
        const bool fit = fm.horizontalAdvance(t->text()) + 4 <= w && fm.height() <= h;
        fits[x] = fits.value(x, true) && fit;
    }
    for (QCPItemText* t : m_cellTexts) t->setVisible(fits.value(t->position->keyAxis()));
    for (const ImagePanel& p : m_imagePanels) {
        const QRect r = p.rect->rect();
        if (r.width() <= 0 || r.height() <= 0) continue;
        // Widen whichever range has room to spare, keeping the image centred.
        double spanX = p.spanX, spanY = p.spanY;
        if (double(r.width()) / r.height() > p.aspect)
            spanX = p.spanX * r.width() / (r.height() * p.aspect);
        else
            spanY = p.spanY * r.height() * p.aspect / r.width();
        p.rect->axis(QCPAxis::atBottom)->setRange(p.spanX / 2 - spanX / 2, p.spanX / 2 + spanX / 2);
        p.rect->axis(QCPAxis::atLeft)->setRange(p.spanY / 2 - spanY / 2, p.spanY / 2 + spanY / 2);
    }
}

int VitAttributionFigure::layerCount() const { return int(m_data.heads.size()); }
int VitAttributionFigure::headCount() const {
    int n = 0;
    for (const auto& row : m_data.heads) n = std::max(n, int(row.size()));
    return n;
}
double VitAttributionFigure::gridValue(int layer, int head) const { return m_grid->data()->cell(head, layer); }
double VitAttributionFigure::mlpValue(int layer) const { return m_mlp ? m_mlp->data()->cell(0, layer) : std::nan(""); }
double VitAttributionFigure::gridRangeLower() const { return m_grid->dataRange().lower; }
double VitAttributionFigure::gridRangeUpper() const { return m_grid->dataRange().upper; }
bool VitAttributionFigure::gridInterpolates() const { return m_grid->interpolate(); }
int VitAttributionFigure::patchMapCount() const { return int(m_patchMaps.size()); }
double VitAttributionFigure::patchMapValue(int index, int row, int column) const { return m_patchMaps[index]->data()->cell(column, row); }
double VitAttributionFigure::patchRangeUpper() const { return m_patchMaps.isEmpty() ? std::nan("") : m_patchMaps[0]->dataRange().upper; }
QString VitAttributionFigure::patchMapTitle(int index) const { return m_patchTitles.value(index); }

QRect VitAttributionFigure::patchPanelRect(int index) const {
    if (index < 0 || index >= m_patchMaps.size()) return {};
    const QCPAxis* x = m_patchMaps[index]->keyAxis();
    const QCPAxis* y = m_patchMaps[index]->valueAxis();
    const double grid = m_imagePanels.value(index + 1).spanX;  // panel 0 is the input image
    const QRectF r = QRectF(QPointF(x->coordToPixel(0), y->coordToPixel(0)), QPointF(x->coordToPixel(grid), y->coordToPixel(grid))).normalized();
    return QRect(m_plot->mapTo(this, r.topLeft().toPoint()), r.size().toSize());
}

QRect VitAttributionFigure::imagePanelRect() const {
    if (m_imagePanels.isEmpty()) return {};
    const ImagePanel& p = m_imagePanels[0];
    const QCPAxis* x = p.rect->axis(QCPAxis::atBottom);
    const QCPAxis* y = p.rect->axis(QCPAxis::atLeft);
    const QRectF r = QRectF(QPointF(x->coordToPixel(0), y->coordToPixel(0)), QPointF(x->coordToPixel(p.spanX), y->coordToPixel(p.spanY))).normalized();
    return QRect(m_plot->mapTo(this, r.topLeft().toPoint()), r.size().toSize());
}

QColor VitAttributionFigure::gridCellColor(int layer, int head) const {
    const double v = gridValue(layer, head);
    QRgb rgb = 0;
    QCPColorGradient g = m_grid->gradient();
    g.colorize(&v, m_grid->dataRange(), &rgb, 1);
    return QColor::fromRgba(rgb);
}

QString VitAttributionFigure::titleText() const {
    if (!m_data.title.isEmpty()) return m_data.title;
    return QStringLiteral("Direct logit attribution of attention heads");
}

QString VitAttributionFigure::scoreText() const {
    const QString cls = m_data.className.isEmpty() ? QStringLiteral("class") : m_data.className;
    if (m_data.contrastName.isEmpty()) return QStringLiteral("logit(%1)").arg(cls);
    return QStringLiteral("logit(%1) \u2212 logit(%2)").arg(cls, m_data.contrastName);
}

QString VitAttributionFigure::colorBarText() const { return QStringLiteral("direct effect on %1").arg(scoreText()); }

QSize VitAttributionFigure::exportSize() const {
    // Taller with many layers so the grid's rows and labels never crowd; wider with many heads.
    const int nLayer = layerCount(), nHead = headCount();
    const int height = std::max(440, 150 + 20 * nLayer);
    const int width = 820 + std::clamp(int(300.0 * nHead / std::max(1, nLayer)), 200, 480) + (m_patchMaps.isEmpty() ? -300 : 0);
    return QSize(width, height);
}

bool VitAttributionFigure::exportTo(const QString& path, const QString& format, QString* error, int width, int height) {
    const QSize size = exportSize();
    return exportPlot(m_plot, path, format, titleText(), QSize(width > 0 ? width : size.width(), height > 0 ? height : size.height()), error);
}

}  // namespace engram::ui
