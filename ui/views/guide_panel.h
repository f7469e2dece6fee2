// A short guided walk for teaching: locate -> edit -> verify -> undo on the Fact World model, one
// step at a time in a panel beside the views. Each step says what to look at and has a button that
// does the step (so a teacher in front of a class can follow it without typing). Shown on the first
// start (and on every start when asked to); Help > Guided Walk brings it back.
#pragma once

#include <QDockWidget>
#include <QVector>

#include <functional>

class QLabel;
class QPushButton;
class QCheckBox;

namespace engram::ui {

class MainWindow;

class GuidePanel : public QDockWidget {
    Q_OBJECT

public:
    struct Step {
        QString title, text, action;  // action: the button's text
        std::function<void()> run;    // does the step through the window's public actions
    };

    // `factWorld`: the Fact World checkpoint folder the walk opens when another model is loaded.
    GuidePanel(MainWindow* window, const QString& factWorld);

    int stepCount() const { return int(m_steps.size()); }
    int currentStep() const { return m_step; }
    const Step& step(int i) const { return m_steps[i]; }
    void showStep(int i);
    void runCurrentStep();
    // Hides the panel; unless "at every start" is checked it is not shown at start again.
    void dismiss();

    // On the first start, and on every start once the user asked for it (QSettings guide/*).
    static bool showAtStart();

protected:
    void closeEvent(QCloseEvent* event) override;

private:
    void remember();

    MainWindow* m_window;
    QString m_factWorld;
    QVector<Step> m_steps;
    int m_step = 0;
    QLabel* m_title = nullptr;
    QLabel* m_text = nullptr;
    QPushButton* m_run = nullptr;
    QPushButton* m_back = nullptr;
    QPushButton* m_next = nullptr;
    QCheckBox* m_atStart = nullptr;
};

}  // namespace engram::ui
