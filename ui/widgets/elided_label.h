// A one-line label that shortens its text with "…" to the width it is given instead of wrapping
// mid-word, and shows the whole text as its tooltip. For hashes and paths in narrow panels.
#pragma once

#include <QLabel>

namespace engram::ui {

class ElidedLabel : public QLabel {
    Q_OBJECT

public:
    explicit ElidedLabel(Qt::TextElideMode mode = Qt::ElideMiddle, QWidget* parent = nullptr);

    // `tip`: the tooltip (empty: the full text).
    void setFullText(const QString& text, const QString& tip = QString());
    const QString& fullText() const { return m_full; }
    bool isElided() const { return text() != m_full; }

    QSize minimumSizeHint() const override;
    QSize sizeHint() const override;

protected:
    void resizeEvent(QResizeEvent* event) override;

private:
    void elide();

    QString m_full;
    Qt::TextElideMode m_mode;
};

}  // namespace engram::ui
