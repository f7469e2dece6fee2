#include "widgets/elided_label.h"

#include <QResizeEvent>

namespace engram::ui {

ElidedLabel::ElidedLabel(Qt::TextElideMode mode, QWidget* parent) : QLabel(parent), m_mode(mode) {
    setTextFormat(Qt::PlainText);
    setWordWrap(false);
    setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);  // the panel's width decides, not the text's
    setTextInteractionFlags(Qt::TextSelectableByMouse);
}

void ElidedLabel::setFullText(const QString& text, const QString& tip) {
    m_full = text;
    setToolTip(tip.isEmpty() ? text : tip);
    elide();
}

QSize ElidedLabel::minimumSizeHint() const { return QSize(fontMetrics().horizontalAdvance(QStringLiteral("xxxx…")), QLabel::minimumSizeHint().height()); }

QSize ElidedLabel::sizeHint() const { return QSize(fontMetrics().horizontalAdvance(m_full) + 4, QLabel::sizeHint().height()); }

void ElidedLabel::resizeEvent(QResizeEvent* event) {
    QLabel::resizeEvent(event);
    elide();
}

void ElidedLabel::elide() {
    const int room = contentsRect().width();
    QLabel::setText(room > 0 ? fontMetrics().elidedText(m_full, m_mode, room) : m_full);
}

}  // namespace engram::ui
