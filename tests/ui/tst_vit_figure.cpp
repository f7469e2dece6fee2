// The ViT head-attribution figure under offscreen Qt: the grid cells as drawn, the symmetric
// diverging range and its colours, the patch-map panels, the texts, and the image exports.
// Set ENGRAM_FIGURE_DIR to keep a sample PNG/PDF/SVG of the figure there for a look.
#include <QtTest>

#include <QApplication>
#include <QDir>
#include <QFile>
#include <QImage>
#include <QPainter>
#include <QSet>
#include <QTemporaryDir>

#include <algorithm>
#include <cmath>

#include "widgets/qcustomplot_include.h"
#include "widgets/vit_attribution_figure.h"

using engram::ui::VitAttributionData;
using engram::ui::VitAttributionFigure;

class TestVitFigure : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void holdsGridCells();
    void rangeIsSymmetric();
    void rangeCoversMlps();
    void coloursDiverge();
    void showsTopHeadPatchMaps();
    void patchMapsAreRowMajor();
    void patchMapsReadableOverImage();
    void textsNameTheScore();
    void exportsImages_data();
    void exportsImages();
    void refusesUnknownFormat();
};

namespace {

constexpr int kLayers = 6, kHeads = 4, kGrid = 8;

// A Shapes World input: an orange disc on a dark blue ground, 32 x 32.
QImage discImage() {
    QImage img(32, 32, QImage::Format_RGB32);
    img.fill(QColor(QStringLiteral("#1d2b4f")));
    QPainter p(&img);
    p.setRenderHint(QPainter::Antialiasing, false);
    p.setPen(Qt::NoPen);
    p.setBrush(QColor(QStringLiteral("#f28c28")));
    p.drawEllipse(QPoint(15, 17), 9, 9);
    return img;
}

// How much patch (r, c) of the 8 x 8 grid overlaps the disc: 1 inside, 0 far away.
double discWeight(int r, int c) {
    const double dy = (r + 0.5) * 4 - 17, dx = (c + 0.5) * 4 - 15;
    return std::clamp((11.0 - std::sqrt(dx * dx + dy * dy)) / 5.0, 0.0, 1.0);
}

// 6 layers x 4 heads; each small value encodes its cell (a transposed or flipped grid shows), plus
// a few strong heads: L4 H2 supports "circle", L3 H1 opposes it, L1 H3 is exactly 0.
VitAttributionData sample() {
    VitAttributionData d;
    d.image = discImage();
    for (int l = 0; l < kLayers; ++l) {
        QVector<double> row;
        for (int h = 0; h < kHeads; ++h) row.push_back(((l + h) % 2 ? -1 : 1) * 0.01 * (1 + l * kHeads + h));
        d.heads.push_back(row);
    }
    d.heads[4][2] = 2.4;
    d.heads[3][1] = -1.1;
    d.heads[5][0] = 0.85;
    d.heads[2][3] = 0.55;
    d.heads[1][3] = 0.0;
    d.mlps = {0.05, -0.12, 0.31, 0.22, -0.4, 0.6};
    d.embed = 0.08;
    d.bias = -0.03;
    d.className = QStringLiteral("circle");
    d.contrastName = QStringLiteral("square");
    d.patchGrid = kGrid;
    auto patchMap = [](int layer, int head, double inside, double outside) {
        VitAttributionData::HeadMap m{layer, head, {}};
        for (int r = 0; r < kGrid; ++r)
            for (int c = 0; c < kGrid; ++c) {
                const double w = discWeight(r, c);
                m.values.push_back(w * inside + (1 - w) * outside * ((r + c) % 3 == 0 ? 1 : 0.3));
            }
        return m;
    };
    d.topHeads = {patchMap(4, 2, 0.30, -0.02), patchMap(3, 1, -0.18, 0.03), patchMap(5, 0, 0.1, -0.08)};
    double sum = d.embed + d.bias;
    for (const auto& row : d.heads)
        for (double v : row) sum += v;
    for (double v : d.mlps) sum += v;
    d.logit = sum;
    return d;
}

double maxAbsOf(const VitAttributionData& d) {
    double m = 0;
    for (const auto& row : d.heads)
        for (double v : row) m = std::max(m, std::abs(v));
    for (double v : d.mlps) m = std::max(m, std::abs(v));
    return m;
}

}  // namespace

void TestVitFigure::holdsGridCells() {
    VitAttributionFigure w;
    const VitAttributionData d = sample();
    w.setData(d);
    QCOMPARE(w.layerCount(), kLayers);
    QCOMPARE(w.headCount(), kHeads);
    for (int l = 0; l < kLayers; ++l)
        for (int h = 0; h < kHeads; ++h) QCOMPARE(w.gridValue(l, h), d.heads[l][h]);
    for (int l = 0; l < kLayers; ++l) QCOMPARE(w.mlpValue(l), d.mlps[l]);
    QVERIFY(!w.gridInterpolates());

    // Without MLPs there is no MLP column; a second setData replaces the grid, not appends to it.
    VitAttributionData small;
    small.heads = {{0.5, -0.25}};
    w.setData(small);
    QCOMPARE(w.layerCount(), 1);
    QCOMPARE(w.headCount(), 2);
    QCOMPARE(w.gridValue(0, 1), -0.25);
    QVERIFY(std::isnan(w.mlpValue(0)));
}

void TestVitFigure::rangeIsSymmetric() {
    VitAttributionFigure w;
    VitAttributionData d = sample();
    d.mlps.clear();
    w.setData(d);
    QCOMPARE(w.gridRangeUpper(), 2.4);  // the largest |value|, here a positive head
    QCOMPARE(w.gridRangeLower(), -2.4);

    // A grid that is mostly negative is still centred on 0.
    for (auto& row : d.heads)
        for (double& v : row) v = -std::abs(v) - 0.1;
    d.heads[0][0] = 0.2;
    w.setData(d);
    QCOMPARE(w.gridRangeLower(), -2.5);
    QCOMPARE(w.gridRangeUpper(), 2.5);
}

void TestVitFigure::rangeCoversMlps() {
    VitAttributionFigure w;
    VitAttributionData d = sample();
    d.mlps[2] = -3.5;  // the MLP column shares the heads' scale, so it sets the range here
    w.setData(d);
    QCOMPARE(w.gridRangeUpper(), maxAbsOf(d));
    QCOMPARE(w.gridRangeUpper(), 3.5);
    QCOMPARE(w.gridRangeLower(), -3.5);
}

void TestVitFigure::coloursDiverge() {
    VitAttributionFigure w;
    w.setData(sample());
    const QColor positive = w.gridCellColor(4, 2);  // +2.4, the range's upper end
    const QColor negative = w.gridCellColor(3, 1);  // -1.1
    const QColor zero = w.gridCellColor(1, 3);      // 0
    QVERIFY2(positive.blue() > positive.red() + 80, qPrintable(positive.name()));
    QVERIFY2(negative.red() > negative.blue() + 80, qPrintable(negative.name()));
    QVERIFY2(zero.red() >= 235 && zero.green() >= 235 && zero.blue() >= 235, qPrintable(zero.name()));
    // The upper end of the range is the darkest blue stop.
    const QColor darkest = VitAttributionFigure::colorStops().last();
    QVERIFY2(std::abs(positive.red() - darkest.red()) <= 3 && std::abs(positive.green() - darkest.green()) <= 3 &&
                 std::abs(positive.blue() - darkest.blue()) <= 3,
             qPrintable(positive.name()));
    QCOMPARE(VitAttributionFigure::colorStops().size(), 11);
    QCOMPARE(VitAttributionFigure::colorStops().first(), QColor(QStringLiteral("#67001f")));
}

void TestVitFigure::showsTopHeadPatchMaps() {
    VitAttributionFigure w;
    VitAttributionData d = sample();
    w.setData(d);
    QCOMPARE(w.patchMapCount(), 3);
    QVERIFY2(w.patchMapTitle(0).startsWith(QStringLiteral("L4 H2")), qPrintable(w.patchMapTitle(0)));
    QVERIFY2(w.patchMapTitle(1).startsWith(QStringLiteral("L3 H1")), qPrintable(w.patchMapTitle(1)));
    QVERIFY2(w.patchMapTitle(2).startsWith(QStringLiteral("L5 H0")), qPrintable(w.patchMapTitle(2)));
    // All panels share one symmetric range: the largest |value| over the maps shown.
    double pm = 0;
    for (const auto& hm : d.topHeads)
        for (double v : hm.values) pm = std::max(pm, std::abs(v));
    QCOMPARE(w.patchRangeUpper(), pm);

    // At most four panels; none without top heads.
    d.topHeads += d.topHeads;
    w.setData(d);
    QCOMPARE(w.patchMapCount(), VitAttributionFigure::kMaxPatchMaps);
    d.topHeads.clear();
    w.setData(d);
    QCOMPARE(w.patchMapCount(), 0);
}

// In a figure the size of the Vision view's (about 1000 x 330 px), the top heads' maps are drawn
// over the image in its own colours at a readable size: each panel at least 100 px a side and
// at least half the input image's side, not a thumbnail.
void TestVitFigure::patchMapsReadableOverImage() {
    VitAttributionFigure w;
    VitAttributionData d = sample();
    d.topHeads.push_back(d.topHeads[0]);
    d.topHeads.back().layer = 2;
    d.topHeads.back().head = 3;
    w.setData(d);
    w.resize(1000, 330);
    w.show();
    QVERIFY(QTest::qWaitForWindowExposed(&w));
    w.plot()->replot(QCustomPlot::rpImmediateRefresh);
    QCOMPARE(w.patchMapCount(), 4);
    const QRect input = w.imagePanelRect();
    QVERIFY(input.width() > 0);
    for (int i = 0; i < 4; ++i) {
        const QRect r = w.patchPanelRect(i);
        QVERIFY2(r.width() >= 100 && r.height() >= 100, qPrintable(QStringLiteral("panel %1: %2 x %3").arg(i).arg(r.width()).arg(r.height())));
        QVERIFY(r.width() * 2 >= input.width());
    }
    // Where a map is near 0 the image shows through in its own colours: patch (0, 1) of the first
    // map (|value| 0.006 of 0.30) is the dark blue ground, faded, so blue leads red (a grey
    // underlay under the map's faint red would not).
    const QImage shot = w.grab().toImage();
    const QRect p0 = w.patchPanelRect(0);
    const QColor ground = shot.pixelColor(p0.left() + p0.width() * 3 / 16, p0.top() + p0.height() / 16);
    QVERIFY2(ground.blue() > ground.red() + 10, qPrintable(ground.name()));
}

void TestVitFigure::patchMapsAreRowMajor() {
    VitAttributionFigure w;
    VitAttributionData d = sample();
    // A map whose value encodes its patch: row-major, row 0 at the top.
    VitAttributionData::HeadMap m{0, 0, {}};
    for (int k = 0; k < kGrid * kGrid; ++k) m.values.push_back(0.001 * k);
    d.topHeads = {m};
    d.patchGrid = 0;  // derived from the map's size
    w.setData(d);
    QCOMPARE(w.patchMapCount(), 1);
    for (int r = 0; r < kGrid; ++r)
        for (int c = 0; c < kGrid; ++c) QCOMPARE(w.patchMapValue(0, r, c), 0.001 * (r * kGrid + c));
}

void TestVitFigure::textsNameTheScore() {
    VitAttributionFigure w;
    VitAttributionData d = sample();
    w.setData(d);
    QCOMPARE(w.scoreText(), QStringLiteral("logit(circle) \u2212 logit(square)"));
    QCOMPARE(w.colorBarText(), QStringLiteral("direct effect on logit(circle) \u2212 logit(square)"));
    QCOMPARE(w.titleText(), QStringLiteral("Direct logit attribution of attention heads"));
    d.contrastName.clear();
    d.title = QStringLiteral("ViT heads on Shapes World");
    w.setData(d);
    QCOMPARE(w.colorBarText(), QStringLiteral("direct effect on logit(circle)"));
    QCOMPARE(w.titleText(), QStringLiteral("ViT heads on Shapes World"));
}

void TestVitFigure::exportsImages_data() {
    QTest::addColumn<QString>("format");
    QTest::newRow("png") << "png";
    QTest::newRow("pdf") << "pdf";
    QTest::newRow("svg") << "svg";
}

void TestVitFigure::exportsImages() {
    QFETCH(QString, format);
    QTemporaryDir dir;
    QVERIFY(dir.isValid());
    VitAttributionFigure w;
    w.setData(sample());
    const QString path = dir.filePath(QStringLiteral("vit.") + format);
    QString error;
    QVERIFY2(w.exportTo(path, QString(), &error), qPrintable(error));
    QFile f(path);
    QVERIFY(f.open(QIODevice::ReadOnly));
    QVERIFY(f.size() > 1000);
    const QByteArray head = f.read(64);
    if (format == QLatin1String("png")) {
        QVERIFY(head.startsWith("\x89PNG"));
        QImage img(path);
        QCOMPARE(img.size(), 2 * w.exportSize());  // rendered at 2x
        // Not a blank page: many colours, among them the grid's darkest blue (the +2.4 head).
        QSet<QRgb> colours;
        bool darkBlue = false;
        const QColor dark = VitAttributionFigure::colorStops().last();
        for (int y = 0; y < img.height(); y += 3)
            for (int x = 0; x < img.width(); x += 3) {
                const QColor c = img.pixelColor(x, y);
                colours.insert(c.rgb());
                darkBlue = darkBlue || (std::abs(c.red() - dark.red()) <= 3 && std::abs(c.green() - dark.green()) <= 3 &&
                                        std::abs(c.blue() - dark.blue()) <= 3);
            }
        QVERIFY2(colours.size() > 50, qPrintable(QString::number(colours.size())));
        QVERIFY(darkBlue);
    } else if (format == QLatin1String("pdf")) {
        QVERIFY(head.startsWith("%PDF"));
    } else {
        QVERIFY(head.contains("<?xml") || head.contains("<svg"));
        f.seek(0);
        QVERIFY(f.readAll().contains("Direct logit attribution"));
    }

    const QString keep = qEnvironmentVariable("ENGRAM_FIGURE_DIR");
    if (!keep.isEmpty()) QVERIFY(w.exportTo(QDir(keep).filePath(QStringLiteral("vit_figure.") + format)));
}

void TestVitFigure::refusesUnknownFormat() {
    VitAttributionFigure w;
    w.setData(sample());
    QString error;
    QVERIFY(!w.exportTo(QStringLiteral("/tmp/x.bmpx"), QString(), &error));
    QVERIFY(error.contains(QStringLiteral("unknown image format")));
    QVERIFY(!QFile::exists(QStringLiteral("/tmp/x.bmpx")));
}

QTEST_MAIN(TestVitFigure)
#include "tst_vit_figure.moc"
