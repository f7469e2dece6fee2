#include "views/guide_panel.h"

#include <QCheckBox>
#include <QCloseEvent>
#include <QHBoxLayout>
#include <QLabel>
#include <QPushButton>
#include <QSettings>
#include <QTabWidget>
#include <QUndoStack>
#include <QVBoxLayout>

#include <algorithm>

#include "views/main_window.h"

namespace engram::ui {

namespace {

// The fact the walk edits: the demo model knows Peanaim Fosha competes in Loraifelball.
const char* kPrompt = "Peanaim Fosha competes in";
const char* kTemplate = "{} competes in";
const char* kSubject = "Peanaim Fosha";
const char* kTarget = "Zuluball";

}  // namespace

GuidePanel::GuidePanel(MainWindow* window, const QString& factWorld)
    : QDockWidget(tr("Guided walk"), window), m_window(window), m_factWorld(factWorld) {
    setObjectName(QStringLiteral("guideDock"));
    const QString prompt = QString::fromLatin1(kPrompt), subject = QString::fromLatin1(kSubject), target = QString::fromLatin1(kTarget);
    m_steps = {
        {tr("1. Locate"),
         tr("<p>Where does the model keep a fact? The Fact World model (6 layers, trained on invented people and sports) answers "
            "<i>%1</i> with <b>Loraifelball</b>.</p>"
            "<p>Causal tracing blurs the subject's words with noise, then puts back one hidden state at a time from the clean run. "
            "Dark cells are where restoring it brings the answer back.</p>"
            "<p>Look at the MLP map (green): the dark cell at the subject's last token, in an early layer, is where ROME will write.</p>")
             .arg(prompt.toHtmlEscaped()),
         tr("Trace it"),
         [this, prompt, subject] {
             if (m_window->busy()) return;
             if (m_window->workbench().modelName() != QLatin1String("factworld") && !m_factWorld.isEmpty()) m_window->openModelNow(m_factWorld);
             m_window->setTraceRequest(prompt, subject);
             m_window->tabs()->setCurrentIndex(1);
             m_window->runTrace();
         }},
        {tr("2. Edit"),
         tr("<p>Now change the fact: ROME writes one rank-one update into that MLP so that <i>%1</i> answers <b>%2</b>.</p>"
            "<p>The table below the form is the edit's blast radius: the prompt, its paraphrases and neighbouring facts, before and after. "
            "A neighbour in red is a fact the edit broke.</p>")
             .arg(prompt.toHtmlEscaped(), target.toHtmlEscaped()),
         tr("Apply the edit"),
         [this, subject, target] {
             if (m_window->busy()) return;
             m_window->fillEditForm(QString::fromLatin1(kTemplate), subject, target, QStringLiteral("rome"), -1);
             m_window->applyEdit();
         }},
        {tr("3. Verify"),
         tr("<p>Ask the model again. The left table is the edited model, the right one the base model it started from: "
            "<b>%1</b> should now lead where <b>Loraifelball</b> did.</p>"
            "<p>Try a paraphrase in the prompt box, or another person's sport, to see what moved and what did not.</p>")
             .arg(target.toHtmlEscaped()),
         tr("Ask the model"),
         [this, prompt] {
             if (m_window->busy()) return;
             m_window->showPrediction(prompt);
         }},
        {tr("4. Undo"),
         tr("<p>Every edit is recorded in the project's history with its requests, settings and weight changes, and can be undone "
            "(Ctrl+Z), rolled back or reverted. Undoing restores the weights bit for bit: the state hash in the model panel "
            "returns to the base's.</p><p>The History view shows each edit and how much it changed each layer.</p>"),
         tr("Undo the edit"),
         [this, prompt] {
             if (m_window->busy()) return;
             m_window->undoStack()->undo();
             m_window->showPrediction(prompt);
         }},
    };

    auto* body = new QWidget(this);
    auto* l = new QVBoxLayout(body);
    m_title = new QLabel(body);
    m_title->setObjectName(QStringLiteral("guideTitle"));
    QFont big = m_title->font();
    big.setBold(true);
    big.setPointSizeF(big.pointSizeF() * 1.3);
    m_title->setFont(big);
    m_text = new QLabel(body);
    m_text->setObjectName(QStringLiteral("guideText"));
    m_text->setWordWrap(true);
    m_text->setTextFormat(Qt::RichText);
    m_text->setAlignment(Qt::AlignTop | Qt::AlignLeft);
    m_run = new QPushButton(body);
    m_run->setObjectName(QStringLiteral("guideRun"));
    connect(m_run, &QPushButton::clicked, this, &GuidePanel::runCurrentStep);
    auto* nav = new QHBoxLayout;
    m_back = new QPushButton(tr("Back"), body);
    m_next = new QPushButton(tr("Next"), body);
    m_next->setObjectName(QStringLiteral("guideNext"));
    connect(m_back, &QPushButton::clicked, this, [this] { showStep(m_step - 1); });
    connect(m_next, &QPushButton::clicked, this, [this] {
        if (m_step + 1 < stepCount()) showStep(m_step + 1);
        else dismiss();
    });
    nav->addWidget(m_back);
    nav->addStretch();
    nav->addWidget(m_next);
    m_atStart = new QCheckBox(tr("Show this walk at every start"), body);
    m_atStart->setObjectName(QStringLiteral("guideAtStart"));
    m_atStart->setChecked(QSettings().value(QStringLiteral("guide/everyStart"), false).toBool());
    l->addWidget(m_title);
    l->addWidget(m_text, 1);
    l->addWidget(m_run, 0, Qt::AlignLeft);
    l->addLayout(nav);
    l->addWidget(m_atStart);
    body->setMinimumWidth(260);
    setWidget(body);
    showStep(0);
}

void GuidePanel::showStep(int i) {
    m_step = std::clamp(i, 0, stepCount() - 1);
    const Step& s = m_steps[m_step];
    m_title->setText(s.title);
    m_text->setText(s.text);
    m_run->setText(s.action);
    m_back->setEnabled(m_step > 0);
    m_next->setText(m_step + 1 < stepCount() ? tr("Next") : tr("Finish"));
}

void GuidePanel::runCurrentStep() { m_steps[m_step].run(); }

bool GuidePanel::showAtStart() {
    const QSettings settings;
    return !settings.value(QStringLiteral("guide/seen"), false).toBool() || settings.value(QStringLiteral("guide/everyStart"), false).toBool();
}

void GuidePanel::remember() {
    QSettings settings;
    settings.setValue(QStringLiteral("guide/seen"), true);
    settings.setValue(QStringLiteral("guide/everyStart"), m_atStart->isChecked());
}

void GuidePanel::dismiss() {
    remember();
    hide();
}

void GuidePanel::closeEvent(QCloseEvent* event) {
    remember();
    QDockWidget::closeEvent(event);
}

}  // namespace engram::ui
