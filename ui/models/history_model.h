// The project's edits as a table: #, time, method, subject, old → new, layers, ‖Δ‖, status.
// A thin adapter over plain HistoryRow values (the Workbench reads them from the store).
#pragma once

#include <QAbstractTableModel>
#include <QVector>

#include "session/workbench.h"

namespace engram::ui {

class HistoryModel : public QAbstractTableModel {
    Q_OBJECT

public:
    enum Column { Id, Time, Method, Subject, Change, Layers, Norm, Status, ColumnCount };
    static constexpr int EditIdRole = Qt::UserRole + 1;

    explicit HistoryModel(QObject* parent = nullptr);

    void setRows(const QVector<HistoryRow>& rows);
    const QVector<HistoryRow>& rows() const { return m_rows; }

    int rowCount(const QModelIndex& parent = QModelIndex()) const override;
    int columnCount(const QModelIndex& parent = QModelIndex()) const override;
    QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
    QVariant headerData(int section, Qt::Orientation orientation, int role = Qt::DisplayRole) const override;

private:
    QVector<HistoryRow> m_rows;
};

}  // namespace engram::ui
