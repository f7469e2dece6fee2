// The causal-trace heatmap under offscreen Qt: the cells, the colour range, the ROME texts and
// colour maps, and the image exports.
#include <QtTest>

#include <QApplication>
#include <QFile>
#include <QImage>
#include <QTemporaryDir>

#include <cmath>

#include "widgets/heatmap_widget.h"

using engram::ui::HeatmapData;
using engram::ui::HeatmapKind;
using engram::ui::HeatmapWidget;

class TestHeatmap : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void holdsCellsAndRange();
    void rangeDefaultsToData();
    void noiseDrawsAsOneColour();
    void textsFollowRome_data();
    void textsFollowRome();
    void coloursRunLightToDark();
    void exportsImages_data();
    void exportsImages();
    void refusesUnknownFormat();
};

namespace {

HeatmapData sample() {
    HeatmapData d;
    // 4 tokens x 6 layers; the value encodes its cell so a transposed or flipped map shows.
    for (int r = 0; r < 4; ++r) {
        QVector<double> row;
        for (int c = 0; c < 6; ++c) row.push_back(0.1 + 0.01 * r + 0.001 * c);
        d.values.push_back(row);
    }
    d.values[2][3] = 0.9;
    d.rowLabels = {QStringLiteral("The"), QStringLiteral(" Space"), QStringLiteral(" Needle"), QStringLiteral(" is")};
    d.subjectBegin = 1;
    d.subjectEnd = 3;
    d.answer = QStringLiteral("Seattle");
    d.modelName = QStringLiteral("gpt2-xl");
    d.low = 0.05;
    return d;
}

}  // namespace

void TestHeatmap::holdsCellsAndRange() {
    HeatmapWidget w;
    const HeatmapData d = sample();
    w.setData(d);
    QCOMPARE(w.rowCount(), 4);
    QCOMPARE(w.columnCount(), 6);
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 6; ++c) QCOMPARE(w.cellValue(r, c), d.values[r][c]);
    QCOMPARE(w.rangeLower(), 0.05);  // the corrupted probability, not the data minimum
    QCOMPARE(w.rangeUpper(), 0.9);   // the data maximum, as pcolor's automatic vmax
    QVERIFY(!w.interpolates());
    QCOMPARE(w.rowLabel(0), QStringLiteral("The"));
    QCOMPARE(w.rowLabel(1), QStringLiteral(" Space*"));
    QCOMPARE(w.rowLabel(2), QStringLiteral(" Needle*"));
    QCOMPARE(w.rowLabel(3), QStringLiteral(" is"));
}

void TestHeatmap::rangeDefaultsToData() {
    HeatmapWidget w;
    HeatmapData d = sample();
    d.low = std::nan("");
    d.values[0][0] = std::nan("");  // a cell not computed (a cancelled trace): ignored by the range
    w.setData(d);
    QCOMPARE(w.rangeLower(), 0.101);
    QCOMPARE(w.rangeUpper(), 0.9);
    QVERIFY(std::isnan(w.cellValue(0, 0)));
}

// After an edit the traced answer can sit at one probability everywhere, give or take float
// rounding (0.0729536 to 0.0729537 on the demo model's attention map): that noise draws as the
// one lightest colour on a range of at least minSpan, not as the full scale.
void TestHeatmap::noiseDrawsAsOneColour() {
    HeatmapWidget w;
    HeatmapData d;
    d.kind = HeatmapKind::Attn;
    d.values = {{0.0729536, 0.0729537, 0.0729536}, {0.0729537, 0.0729536, 0.0729537}};
    d.low = 0.0729536;
    w.setData(d);
    QCOMPARE(w.rangeLower(), 0.0729536);
    QVERIFY(w.rangeUpper() - w.rangeLower() >= d.minSpan);
    const QColor lightest = HeatmapWidget::colorStops(HeatmapKind::Attn).first();
    for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 3; ++c) QCOMPARE(w.cellColor(r, c), lightest);
    // A real effect still spans the whole scale.
    d.values[1][2] = 0.5;
    w.setData(d);
    QCOMPARE(w.rangeUpper(), 0.5);
    QCOMPARE(w.cellColor(1, 2), HeatmapWidget::colorStops(HeatmapKind::Attn).last());
    // The difference map widens symmetrically about 0.
    HeatmapData diff;
    diff.kind = HeatmapKind::Difference;
    diff.values = {{1e-8, -2e-8}};
    diff.low = -2e-8;
    diff.high = 2e-8;
    w.setData(diff);
    QCOMPARE(w.rangeLower(), -w.rangeUpper());
    QVERIFY(w.rangeUpper() >= diff.minSpan / 2);
}

void TestHeatmap::textsFollowRome_data() {
    QTest::addColumn<int>("kind");
    QTest::addColumn<QString>("title");
    QTest::addColumn<QString>("xlabel");
    QTest::newRow("hidden") << int(HeatmapKind::Hidden) << "Impact of restoring state after corrupted input"
                            << "single restored layer within gpt2-xl";
    QTest::newRow("mlp") << int(HeatmapKind::Mlp) << "Impact of restoring MLP after corrupted input"
                         << "center of interval of 10 restored MLP layers";
    QTest::newRow("attn") << int(HeatmapKind::Attn) << "Impact of restoring Attn after corrupted input"
                          << "center of interval of 10 restored Attn layers";
}

void TestHeatmap::textsFollowRome() {
    QFETCH(int, kind);
    QFETCH(QString, title);
    QFETCH(QString, xlabel);
    HeatmapWidget w;
    HeatmapData d = sample();
    d.kind = HeatmapKind(kind);
    w.setData(d);
    QCOMPARE(w.titleText(), title);
    QCOMPARE(w.xLabelText(), xlabel);
    QCOMPARE(w.colorBarText(), QStringLiteral("p(Seattle)"));
}

void TestHeatmap::coloursRunLightToDark() {
    for (HeatmapKind kind : {HeatmapKind::Hidden, HeatmapKind::Mlp, HeatmapKind::Attn}) {
        HeatmapWidget w;
        HeatmapData d = sample();
        d.kind = kind;
        w.setData(d);
        const QVector<QColor> stops = HeatmapWidget::colorStops(kind);
        QCOMPARE(stops.size(), 9);
        // The maximum cell gets the darkest stop; a cell at the corrupted probability the lightest.
        const QColor top = w.cellColor(2, 3);
        QVERIFY2(std::abs(top.red() - stops.last().red()) <= 2 && std::abs(top.green() - stops.last().green()) <= 2 &&
                     std::abs(top.blue() - stops.last().blue()) <= 2,
                 qPrintable(top.name()));
        QVERIFY(w.cellColor(0, 0).lightness() > top.lightness());
    }
    QCOMPARE(HeatmapWidget::colorStops(HeatmapKind::Hidden).last(), QColor(QStringLiteral("#3f007d")));
    QCOMPARE(HeatmapWidget::colorStops(HeatmapKind::Mlp).last(), QColor(QStringLiteral("#00441b")));
    QCOMPARE(HeatmapWidget::colorStops(HeatmapKind::Attn).last(), QColor(QStringLiteral("#67000d")));
}

void TestHeatmap::exportsImages_data() {
    QTest::addColumn<QString>("format");
    QTest::newRow("png") << "png";
    QTest::newRow("pdf") << "pdf";
    QTest::newRow("svg") << "svg";
}

void TestHeatmap::exportsImages() {
    QFETCH(QString, format);
    QTemporaryDir dir;
    QVERIFY(dir.isValid());
    HeatmapWidget w;
    w.setData(sample());
    const QString path = dir.filePath(QStringLiteral("trace.") + format);
    QString error;
    QVERIFY2(w.exportTo(path, QString(), &error), qPrintable(error));
    QFile f(path);
    QVERIFY(f.open(QIODevice::ReadOnly));
    const QByteArray head = f.read(64);
    if (format == QLatin1String("png")) {
        QVERIFY(head.startsWith("\x89PNG"));
        QImage img(path);
        QCOMPARE(img.width(), 2 * w.exportSize().width());  // rendered at 2x
        // The darkest cell's colour is somewhere in the picture.
        const QColor dark(QStringLiteral("#3f007d"));
        bool found = false;
        for (int y = 0; y < img.height() && !found; y += 2)
            for (int x = 0; x < img.width() && !found; x += 2) {
                const QColor c = img.pixelColor(x, y);
                found = std::abs(c.red() - dark.red()) <= 3 && std::abs(c.green() - dark.green()) <= 3 && std::abs(c.blue() - dark.blue()) <= 3;
            }
        QVERIFY(found);
    } else if (format == QLatin1String("pdf")) {
        QVERIFY(head.startsWith("%PDF"));
    } else {
        QVERIFY(head.contains("<?xml") || head.contains("<svg"));
        f.seek(0);
        QVERIFY(f.readAll().contains("Impact of restoring state"));
    }
}

void TestHeatmap::refusesUnknownFormat() {
    HeatmapWidget w;
    w.setData(sample());
    QString error;
    QVERIFY(!w.exportTo(QStringLiteral("/tmp/x.bmpx"), QString(), &error));
    QVERIFY(error.contains(QStringLiteral("unknown image format")));
}

QTEST_MAIN(TestHeatmap)
#include "tst_heatmap.moc"
