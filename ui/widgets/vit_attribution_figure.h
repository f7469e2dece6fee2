// A Vision-Transformer attention-head attribution figure (a
// head x layer grid linked to an image/patch overlay). Left, the input image; middle, the direct
// logit attribution of every head as a layer x head grid (layer 0 at the top, crisp cells) with an
// optional MLP column beside it; right, up to four panels, one per top head, each showing the
// image (faded) under that head's per-patch map, at about the input image's size. Both maps are diverging (ColorBrewer RdBu
// reversed: blue supports the class, white is 0, red opposes it) on a range symmetric about 0, so
// the colour of 0 never moves.
//
// The widget only draws: it takes plain values, so the GUI, the CLI and the tests share it
// without any torch types. exportTo() renders PNG, PDF or SVG without showing a window.
#pragma once

#include <QImage>
#include <QString>
#include <QVector>
#include <QWidget>

#include <limits>

class QCustomPlot;
class QCPAxisRect;
class QCPColorMap;
class QCPItemText;
class QCPTextElement;

namespace engram::ui {

struct VitAttributionData {
    static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

    QImage image;                    // the input image (any format; shown as RGB, nearest-neighbour when upscaled)
    QVector<QVector<double>> heads;  // [n_layer][n_head] direct logit attribution of each head (signed)
    QVector<double> mlps;            // [n_layer] direct logit attribution of each MLP (signed); may be empty
    double embed = kNaN, bias = kNaN;  // optional further components of the logit, shown in the subtitle
    QString className;               // the class explained (e.g. "circle")
    QString contrastName;            // when non-empty the score is logit(className) - logit(contrastName)
    double logit = kNaN;             // the explained logit (or logit difference)
    int patchGrid = 0;               // patches per side (image_size / patch_size); 0: from the first map's size

    struct HeadMap {
        int layer = 0, head = 0;
        QVector<double> values;      // [patchGrid * patchGrid] row-major (patch row 0 at the top), signed
    };
    QVector<HeadMap> topHeads;       // the heads whose patch maps are shown (the first kMaxPatchMaps of them)
    QString title;                   // empty: "Direct logit attribution of attention heads"
};

class VitAttributionFigure : public QWidget {
    Q_OBJECT

public:
    static constexpr int kMaxPatchMaps = 4;

    explicit VitAttributionFigure(QWidget* parent = nullptr);

    void setData(const VitAttributionData& data);
    const VitAttributionData& data() const { return m_data; }

    // What is drawn, for tests and tooltips: values and ranges are read back from the plot's own colour maps.
    int layerCount() const;
    int headCount() const;
    double gridValue(int layer, int head) const;
    double mlpValue(int layer) const;        // NaN when there is no MLP column
    double gridRangeLower() const;           // == -gridRangeUpper(): the max |value| over heads and MLPs
    double gridRangeUpper() const;
    QColor gridCellColor(int layer, int head) const;
    bool gridInterpolates() const;
    int patchMapCount() const;
    double patchMapValue(int index, int row, int column) const;
    double patchRangeUpper() const;          // the patch maps share one symmetric range [-upper, upper]
    QString patchMapTitle(int index) const;  // "L{layer} H{head}" and the head's score
    // Where the input image and a patch map's image are drawn, in this widget's pixels (after a replot).
    QRect imagePanelRect() const;
    QRect patchPanelRect(int index) const;
    QString titleText() const;
    QString scoreText() const;               // "logit(circle)" or "logit(circle) − logit(square)"
    QString colorBarText() const;
    QCustomPlot* plot() const { return m_plot; }
    // The grid cell under a point of this widget (false outside the grid), and a cell's centre.
    bool headAt(const QPoint& pos, int* layer, int* head) const;
    QPoint headCenter(int layer, int head) const;

Q_SIGNALS:
    void headClicked(int layer, int head);

public:

    // The 11 ColorBrewer RdBu stops, reversed: negative (dark red) first, positive (dark blue) last.
    static QVector<QColor> colorStops();

    // format: "png", "pdf" or "svg" (default: from the file suffix). Size in pixels at 1x (PNG is
    // written at 2x); 0 picks exportSize().
    bool exportTo(const QString& path, const QString& format = QString(), QString* error = nullptr, int width = 0, int height = 0);
    QSize exportSize() const;

protected:
    void resizeEvent(QResizeEvent* event) override;

private:
    static int panelsPerRow(int nPanels, const QSize& size);

    // An axis rect that shows an image spanning [0, spanX] x [0, spanY] in plot coordinates; its
    // ranges are widened after each layout so the image keeps its aspect ratio.
    struct ImagePanel {
        QCPAxisRect* rect = nullptr;
        double spanX = 1, spanY = 1, aspect = 1;  // aspect: displayed width / height
    };

    void rebuild();
    void fitToLayout();

    VitAttributionData m_data;
    QCustomPlot* m_plot = nullptr;
    QCPTextElement* m_title = nullptr;
    QCPColorMap* m_grid = nullptr;
    QCPColorMap* m_mlp = nullptr;
    QVector<QCPColorMap*> m_patchMaps;
    QVector<QString> m_patchTitles;
    QVector<ImagePanel> m_imagePanels;
    QVector<QCPItemText*> m_cellTexts;  // the values written in the cells, shown while they fit
    int m_perRow = 0;                   // patch panels per row in the current layout
};

}  // namespace engram::ui
