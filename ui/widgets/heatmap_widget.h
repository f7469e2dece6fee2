// A causal-trace heatmap in the ROME style (kmeng01/rome plot_trace_heatmap; see
// docs/methods.md, "Locating: causal tracing"): tokens as rows (first at the top, subject tokens marked with
// "*"), layers as columns, crisp cells, a ColorBrewer map per kind (Purples: hidden states, Greens:
// MLP, Reds: attention), and a p(answer) colour bar that starts at the corrupted probability.
//
// The widget only draws: it takes a plain value matrix, so the GUI, the CLI and the tests share it
// without any torch types. exportTo() renders PNG, PDF or SVG without showing a window.
#pragma once

#include <QStringList>
#include <QVector>
#include <QWidget>

#include <limits>

class QCustomPlot;
class QCPColorMap;
class QCPColorScale;
class QCPTextElement;
class QCPColorGradient;

namespace engram::ui {

// Difference: a signed map (after - before) on a diverging scale centred on 0.
enum class HeatmapKind { Hidden, Mlp, Attn, Difference };

struct HeatmapData {
    QVector<QVector<double>> values;  // [rows][columns]: rows are tokens, columns layers; NaN cells stay empty
    QStringList rowLabels;            // one per row, without the subject mark
    int subjectBegin = -1, subjectEnd = -1;  // [begin, end) rows get "*" appended
    HeatmapKind kind = HeatmapKind::Hidden;
    int window = 10;                  // restored layers per cell for the MLP / attention kinds
    QString modelName;                // in the hidden kind's axis label
    QString answer;                   // the colour bar reads p(answer)
    double low = std::numeric_limits<double>::quiet_NaN();   // colour range start (the corrupted probability); NaN: data min
    double high = std::numeric_limits<double>::quiet_NaN();  // colour range end; NaN: data max (as ROME's pcolor)
    // The narrowest colour range drawn. A map whose values differ by less (float rounding after an
    // edit left the answer at one probability everywhere) draws as one colour instead of
    // stretching that noise over the whole scale. Trace maps widen upwards from `low`, the
    // difference map symmetrically about 0.
    double minSpan = 1e-3;
    QString title, xLabel, colorBarLabel;  // overrides of the ROME texts when non-empty
};

class HeatmapWidget : public QWidget {
    Q_OBJECT

public:
    explicit HeatmapWidget(QWidget* parent = nullptr);

    void setData(const HeatmapData& data);
    const HeatmapData& data() const { return m_data; }

    // What is drawn, for tests and tooltips.
    int rowCount() const;
    int columnCount() const;
    double cellValue(int row, int column) const;  // from the plot's own colour map data
    double rangeLower() const;
    double rangeUpper() const;
    QString rowLabel(int row) const;  // with the subject mark
    // What hovering over a cell shows: the token, the layer, the value and, for a trace map whose
    // corrupted probability is known (low), the indirect effect value - low.
    QString toolTipAt(int row, int column) const;
    QString titleText() const;
    QString xLabelText() const;
    QString colorBarText() const;
    bool interpolates() const;
    QColor cellColor(int row, int column) const;
    QCustomPlot* plot() const { return m_plot; }

    // The ColorBrewer 9-class stops of each kind's map (Purples, Greens, Reds).
    static QVector<QColor> colorStops(HeatmapKind kind);

    // format: "png", "pdf" or "svg" (default: from the file suffix). Size in pixels at 1x; 0 picks
    // ROME's 3.5 x 2 in at 200 dpi, grown with the number of rows.
    bool exportTo(const QString& path, const QString& format = QString(), QString* error = nullptr, int width = 0, int height = 0);
    QSize exportSize() const;

    // The widget position of a cell's centre (for tests and keyboard navigation).
    QPoint cellCenter(int row, int column) const;
    // The cell under a widget position; false outside the map.
    bool cellAt(const QPoint& pos, int* row, int* column) const;

Q_SIGNALS:
    void cellClicked(int row, int column);

private:
    HeatmapData m_data;
    QCustomPlot* m_plot = nullptr;
    QCPColorMap* m_map = nullptr;
    QCPColorScale* m_scale = nullptr;
    QCPTextElement* m_title = nullptr;
};

}  // namespace engram::ui
