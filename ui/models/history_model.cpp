#include "models/history_model.h"

#include <QBrush>
#include <QColor>

namespace engram::ui {

HistoryModel::HistoryModel(QObject* parent) : QAbstractTableModel(parent) {}

void HistoryModel::setRows(const QVector<HistoryRow>& rows) {
    beginResetModel();
    m_rows = rows;
    endResetModel();
}

int HistoryModel::rowCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : int(m_rows.size()); }

int HistoryModel::columnCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : ColumnCount; }

QVariant HistoryModel::data(const QModelIndex& index, int role) const {
    if (!index.isValid() || index.row() >= m_rows.size() || index.column() >= ColumnCount) return QVariant();
    const HistoryRow& r = m_rows[index.row()];
    if (role == EditIdRole) return r.id;
    if (role == Qt::ForegroundRole && r.status != QLatin1String("active")) return QBrush(QColor(0x88, 0x88, 0x88));
    if (role == Qt::TextAlignmentRole && (index.column() == Id || index.column() == Norm))
        return QVariant(Qt::AlignRight | Qt::AlignVCenter);
    if (role == Qt::ToolTipRole && index.column() == Time) return r.time;
    if (role != Qt::DisplayRole) return QVariant();
    switch (index.column()) {
        case Id: return r.id;
        case Time: return r.time.mid(11, 8);  // hh:mm:ss of the ISO time
        case Method: return r.method;
        case Subject: return r.subject;
        case Change: return r.change;
        case Layers: return r.layers;
        case Norm: return r.norm < 0 ? QStringLiteral("—") : QString::number(r.norm, 'f', 3);
        case Status: return r.status;
    }
    return QVariant();
}

QVariant HistoryModel::headerData(int section, Qt::Orientation orientation, int role) const {
    if (orientation != Qt::Horizontal || role != Qt::DisplayRole) return QAbstractTableModel::headerData(section, orientation, role);
    switch (section) {
        case Id: return QStringLiteral("#");
        case Time: return tr("time");
        case Method: return tr("method");
        case Subject: return tr("subject");
        case Change: return tr("old → new");
        case Layers: return tr("layers");
        case Norm: return tr("‖Δ‖");
        case Status: return tr("status");
    }
    return QVariant();
}

}  // namespace engram::ui
