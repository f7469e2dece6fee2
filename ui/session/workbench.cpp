#include "session/workbench.h"

#include <QDir>
#include <QFileInfo>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <unistd.h>

#include <cmath>

#include "engram/datasets.h"
#include "engram/demo.h"
#include "engram/edit.h"
#include "engram/edit_hparams.h"
#include "engram/editing.h"
#include "engram/error.h"
#include "engram/evaluate.h"
#include "engram/model.h"
#include "engram/store.h"
#include "engram/tokenizer.h"
#include "engram/trace.h"

namespace engram::ui {

namespace {

std::string s(const QString& q) { return q.toStdString(); }
QString q(const std::string& s) { return QString::fromStdString(s); }

// Frobenius norm of everything an edit adds to the weights.
double update_norm(const Edit& e) {
    double sq = 0;
    for (const Delta& d : e.deltas) {
        switch (d.kind) {
            case DeltaKind::LowRank: {
                at::Tensor u = d.u.to(at::kDouble), v = d.v.to(at::kDouble);
                sq += (u.t().mm(u) * v.t().mm(v)).sum().item<double>();
                break;
            }
            default: sq += d.values.to(at::kDouble).pow(2).sum().item<double>(); break;
        }
    }
    return std::sqrt(sq);
}

}  // namespace

Workbench::Workbench() = default;
Workbench::~Workbench() = default;

void Workbench::openModel(const QString& dir) {
    auto model = Model::load(s(dir));
    m_project.reset();
    m_model = std::move(model);
}

void Workbench::openProject(const QString& file, const QString& modelDir) {
    auto project = Project::open(s(file));
    auto model = project->open_model(modelDir.isEmpty() ? std::nullopt : std::optional<std::filesystem::path>(s(modelDir)));
    m_model = std::move(model);
    m_project = std::move(project);
}

void Workbench::createProject(const QString& file) {
    if (!m_model) throw Error(ErrorKind::Argument, "open a model before creating a project");
    if (QFileInfo::exists(file)) throw Error(ErrorKind::Argument, s(file) + " already exists");
    auto project = Project::create(s(file), *m_model);
    // Edits made before the project existed stay in the model: record them would need their values,
    // so a new project starts from the base weights.
    m_model->restore_all_base();
    m_project = std::move(project);
}

QString Workbench::projectFile() const { return m_project ? q(m_project->file().string()) : QString(); }

QString Workbench::modelName() const { return m_model ? q(m_model->dir().filename().string()) : QString(); }

QString Workbench::modelSummary() const {
    if (!m_model) return QString();
    const Model& m = *m_model;
    return QStringLiteral("%1 · %2 M parameters · %3 layers · stored %4 · fingerprint %5…")
        .arg(q(m.arch_name()))
        .arg(double(m.parameter_count()) / 1e6, 0, 'f', 2)
        .arg(m.hparams().n_layer)
        .arg(QString::fromLatin1(dtype_name(m.stored_dtype())))
        .arg(q(m.fingerprint().substr(0, 12)));
}

QString Workbench::stateHash() const { return m_model ? q(state_hash(*m_model)) : QString(); }

bool Workbench::isDecoder() const { return m_model && m_model->is_decoder(); }

QVector<TokenProb> Workbench::topTokens(const QString& prompt, int k) const {
    if (!m_model || !m_model->tokenizer()) throw Error(ErrorKind::Argument, "the model has no tokenizer");
    const Tokenizer& tok = *m_model->tokenizer();
    std::vector<int64_t> ids = tok.encode(s(prompt), true).ids;
    if (ids.empty()) throw Error(ErrorKind::Argument, "the prompt encodes to no tokens");
    c10::InferenceMode guard;
    ForwardInput in;
    in.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
    in.last_logits_only = true;
    at::Tensor probs = at::softmax(m_model->forward(in).logits[0].to(at::kCPU).to(at::kDouble), -1);
    auto [p, idx] = probs.topk(std::min<int64_t>(k, probs.size(0)));
    QVector<TokenProb> out;
    for (int64_t i = 0; i < p.size(0); ++i) {
        const int64_t id = idx[i].item<int64_t>();
        out.push_back({q(tok.decode({id}, false)), id, p[i].item<double>()});
    }
    return out;
}

double Workbench::probability(const QString& prompt, const QString& target) const {
    if (!m_model) return 0;
    const auto scores = eval::score_targets(*m_model, {{s(prompt), s(target)}});
    return std::exp(-scores.at(0).nll);
}

QString Workbench::templateAt(const QString& prompt, const QString& subject) const {
    if (prompt.contains(QStringLiteral("{}"))) return prompt;
    auto templ = eval::template_at_subject(s(prompt), s(subject));
    if (!templ) throw Error(ErrorKind::Argument, "the subject \"" + s(subject) + "\" is not in the prompt \"" + s(prompt) + "\"");
    return q(*templ);
}

TraceSummary Workbench::traceShape(const QString& prompt, const QString& subject) const {
    if (!m_model || !m_model->is_decoder()) throw Error(ErrorKind::Argument, "causal tracing needs a language model");
    const TraceInput input = make_trace_input(*m_model, eval::fill_placeholder(s(templateAt(prompt, subject)), s(subject)), s(subject));
    TraceSummary out;
    for (const auto& t : input.tokens) out.tokens << q(t);
    out.subjectBegin = int(input.subject_begin);
    out.subjectEnd = int(input.subject_end);
    out.nLayer = int(m_model->hparams().n_layer);
    return out;
}

TraceSummary Workbench::trace(const QString& prompt, const QString& subject, const TraceRowFn& onRow, const std::atomic<bool>* cancel,
                              int samples) const {
    if (!m_model || !m_model->is_decoder()) throw Error(ErrorKind::Argument, "causal tracing needs a language model");
    const std::string text = eval::fill_placeholder(s(templateAt(prompt, subject)), s(subject));
    const TraceInput input = make_trace_input(*m_model, text, s(subject));
    TraceOptions o;
    o.samples = samples;
    o.cancel = cancel;
    // The noise scale: 3x the std of subject-token embeddings. On the Fact World model over the
    // world's subjects (as engram-cli trace does), elsewhere over this subject alone.
    std::vector<std::string> subjects = {s(subject)};
    if (m_model->dir().filename() == "factworld") {
        subjects.clear();
        const demo::FactWorld world = demo::generate_fact_world();
        std::vector<bool> seen(world.entities.size(), false);
        for (const demo::Fact& f : world.facts)
            if (!seen[size_t(f.subject)]) {
                seen[size_t(f.subject)] = true;
                subjects.push_back(world.entities[size_t(f.subject)].name);
            }
    }
    o.embedding_std = subject_embedding_std(*m_model, subjects);
    o.on_row = [&](const TraceRow& row) {
        if (!onRow) return;
        QVector<double> scores(row.scores.begin(), row.scores.end());
        onRow(int(row.kind), int(row.token), scores);
    };
    const TraceResult r = causal_trace(*m_model, input, o);
    TraceSummary out;
    for (const auto& t : r.input.tokens) out.tokens << q(t);
    out.subjectBegin = int(r.input.subject_begin);
    out.subjectEnd = int(r.input.subject_end);
    out.nLayer = int(r.n_layer);
    out.window = o.window;
    out.answer = q(r.answer_token);
    out.cleanProb = r.clean_prob;
    out.corruptedProb = r.corrupted_prob;
    out.cancelled = r.cancelled;
    out.seconds = r.seconds;
    return out;
}

ComputedEdit Workbench::computeEdit(const EditForm& form, const std::atomic<bool>* cancel) {
    if (!m_model) throw Error(ErrorKind::Argument, "open a model first");
    if (!m_model->is_decoder()) throw Error(ErrorKind::Argument, "fact editing needs a language model; use the Vision view for ViTs");
    const auto method = edit_method_from_name(s(form.method));
    if (!method) throw Error(ErrorKind::Argument, "unknown method '" + s(form.method) + "'");
    EditRequest r;
    r.prompt = s(form.prompt.trimmed());
    r.subject = s(form.subject.trimmed());
    r.target_new = s(form.target.trimmed());
    if (r.prompt.find("{}") == std::string::npos) {
        auto templ = eval::template_at_subject(r.prompt, r.subject);
        if (!templ) throw Error(ErrorKind::Argument, "the subject \"" + r.subject + "\" is not in the prompt \"" + r.prompt + "\"");
        r.prompt = *templ;
    }
    validate_request(*m_model, r);
    // The model's current answer, for the history's "old -> new" column.
    {
        const auto top = topTokens(q(r.prompt_text()), 1);
        r.target_true = top.isEmpty() ? std::string() : s(top[0].token.trimmed());
    }
    EditHParams hp = default_edit_hparams(model_shape(*m_model), *method, form.blue);
    if (form.layer >= 0 && (*method == EditMethod::Rome || *method == EditMethod::Ft) && !form.blue) {
        if (form.layer >= m_model->hparams().n_layer) throw Error(ErrorKind::Argument, "layer " + std::to_string(form.layer) + " is outside the model");
        hp.layers = {form.layer};
    }
    EditSession session(*m_model, hp);
    session.set_cancel_flag(cancel);
    if (m_project) {
        std::vector<Edit> prior;
        for (int64_t id : m_project->active_ids()) {
            Edit e = m_project->edit(id);
            if (e.method.rfind(edit_method_name(*method), 0) == 0) prior.push_back(std::move(e));
        }
        session.absorb_history(prior);
    }
    auto edit = std::make_shared<Edit>(session.compute({r}));
    edit->metrics["update_norm"] = update_norm(*edit);
    return {edit, q(edit->method), q(r.prompt_text()), q(r.target_new), q(r.target_true)};
}

qint64 Workbench::record(const ComputedEdit& c) {
    if (!m_model || !c.edit) throw Error(ErrorKind::Argument, "nothing to record");
    if (!m_project) {
        static int counter = 0;
        const QString file = QDir::temp().filePath(QStringLiteral("engram-untitled-%1-%2.engram").arg(::getpid()).arg(++counter));
        QFile::remove(file);
        createProject(file);
    }
    Edit e = *c.edit;
    return m_project->record(*m_model, e);
}

qint64 Workbench::undo() {
    if (!m_project) return 0;
    return m_project->undo(*m_model).value_or(0);
}

qint64 Workbench::redo() {
    if (!m_project) return 0;
    return m_project->redo(*m_model).value_or(0);
}

QVector<HistoryRow> Workbench::history() const {
    QVector<HistoryRow> rows;
    if (!m_project) return rows;
    for (const EditSummary& sm : m_project->history()) {
        const Edit& e = sm.edit;
        HistoryRow r;
        r.id = e.id;
        r.time = q(e.created_at);
        r.method = q(e.method);
        if (e.requests.is_array() && !e.requests.empty() && e.requests[0].is_object()) {
            const auto& first = e.requests[0];
            r.subject = q(first.value("subject", std::string()));
            if (e.requests.size() > 1) r.subject += QStringLiteral(" +%1").arg(e.requests.size() - 1);
            r.change = q(first.value("target_true", std::string())) + QStringLiteral(" → ") + q(first.value("target_new", std::string()));
        }
        if (e.hparams.contains("layers") && e.hparams["layers"].is_array()) {
            QStringList ls;
            for (const auto& l : e.hparams["layers"]) ls << QString::number(l.get<int>());
            r.layers = ls.join(QStringLiteral(", "));
        }
        r.status = q(edit_status_name(e.status));
        r.norm = e.metrics.is_object() ? e.metrics.value("update_norm", -1.0) : -1.0;
        rows.push_back(r);
    }
    return rows;
}

}  // namespace engram::ui
