#include "session/workbench.h"

#include <QDir>
#include <QFileInfo>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "engram/datasets.h"
#include "engram/demo.h"
#include "engram/edit.h"
#include "engram/edit_hparams.h"
#include "engram/editing.h"
#include "engram/methods.h"
#include "engram/error.h"
#include "engram/evaluate.h"
#include "engram/model.h"
#include "engram/store.h"
#include "engram/tokenizer.h"
#include "engram/trace.h"
#include "engram/vit.h"

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

struct Workbench::Pixels {
    at::Tensor values;  // [n, C, H, W] as the model reads them
};

Workbench::Workbench() = default;
Workbench::~Workbench() = default;

void Workbench::openModel(const QString& dir) {
    LoadOptions lo;
    lo.device = c10::Device(s(m_device));
    auto model = Model::load(s(dir), lo);
    // The fingerprint (SHA-256 over every weight on a first open; cached after) is computed here, in
    // the worker, rather than on the GUI thread when the model panel first shows it.
    model->fingerprint();
    m_project.reset();
    m_model = std::move(model);
    m_images.clear();
    m_pixels.reset();
}

void Workbench::openProject(const QString& file, const QString& modelDir) {
    auto project = Project::open(s(file));
    LoadOptions lo;
    lo.device = c10::Device(s(m_device));
    auto model = project->open_model(modelDir.isEmpty() ? std::nullopt : std::optional<std::filesystem::path>(s(modelDir)), lo);
    m_model = std::move(model);
    m_project = std::move(project);
    m_images.clear();
    m_pixels.reset();
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

void Workbench::saveProjectAs(const QString& file) {
    if (!m_project) throw Error(ErrorKind::Argument, "no project is open (an edit creates one)");
    m_project->save_as(s(file));
    auto copy = Project::open(s(file));
    copy->check_model(*m_model);
    m_project = std::move(copy);
}

QString Workbench::projectFile() const { return m_project ? q(m_project->file().string()) : QString(); }

QString Workbench::modelName() const { return m_model ? q(m_model->dir().filename().string()) : QString(); }

QString Workbench::modelShape() const {
    if (!m_model) return QString();
    const Model& m = *m_model;
    return QStringLiteral("%1 · %2 M parameters · %3 layers · stored %4")
        .arg(q(m.arch_name()))
        .arg(double(m.parameter_count()) / 1e6, 0, 'f', 2)
        .arg(m.hparams().n_layer)
        .arg(QString::fromLatin1(dtype_name(m.stored_dtype())));
}

QString Workbench::fingerprint() const { return m_model ? q(m_model->fingerprint()) : QString(); }

QString Workbench::modelSummary() const {
    if (!m_model) return QString();
    return modelShape() + QStringLiteral(" · fingerprint %1…").arg(fingerprint().left(12));
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

QVector<TokenProb> Workbench::topTokensOfBase(const QString& prompt, int k) {
    if (!m_model) return {};
    // Swap the edited tensors for the base ones, read, and put them back (no copies of weights).
    std::vector<std::pair<Model::WeightRef, at::Tensor>> saved;
    for (const auto& ref : m_model->weight_refs())
        if (!m_model->is_base(ref.slot, ref.layer)) saved.emplace_back(ref, m_model->weight(ref.slot, ref.layer));
    for (auto& [ref, t] : saved) m_model->restore_base(ref.slot, ref.layer);
    const AdapterSet adapters = m_model->adapters();  // and the adapters (a copy is a snapshot)
    m_model->adapters().clear();
    QVector<TokenProb> out;
    try {
        out = topTokens(prompt, k);
    } catch (...) {
        for (auto& [ref, t] : saved) m_model->weight(ref.slot, ref.layer) = t;
        m_model->adapters() = adapters;
        throw;
    }
    for (auto& [ref, t] : saved) m_model->weight(ref.slot, ref.layer) = t;
    m_model->adapters() = adapters;
    return out;
}

QStringList Workbench::adapterNotes(const QString& prompt) const {
    QStringList out;
    if (!m_model || m_model->adapters().empty() || !m_model->tokenizer()) return out;
    for (const AdapterRoute& r : explain_adapters(*m_model, m_model->tokenizer()->encode(s(prompt), true).ids))
        out << q(describe_route(r));
    return out;
}

bool Workbench::edited() const {
    if (!m_model) return false;
    if (!m_model->adapters().empty()) return true;
    for (const auto& ref : m_model->weight_refs())
        if (!m_model->is_base(ref.slot, ref.layer)) return true;
    return false;
}

QStringList Workbench::promptTokens(const QString& prompt) const {
    QStringList out;
    if (!m_model || !m_model->tokenizer()) return out;
    const Tokenizer& tok = *m_model->tokenizer();
    for (int64_t id : tok.encode(s(prompt), true).ids) out << q(tok.decode({id}, false));
    return out;
}

QString Workbench::generate(const QString& prompt, int maxNewTokens) const {
    if (!m_model || !m_model->tokenizer()) throw Error(ErrorKind::Argument, "the model has no tokenizer");
    const Tokenizer& tok = *m_model->tokenizer();
    std::vector<int64_t> ids = tok.encode(s(prompt), true).ids;
    if (ids.empty()) throw Error(ErrorKind::Argument, "the prompt encodes to no tokens");
    GenerateOptions g;
    g.max_new_tokens = maxNewTokens;
    const std::vector<int64_t> all = engram::generate(*m_model, ids, g);
    return q(tok.decode(std::vector<int64_t>(all.begin() + long(ids.size()), all.end()), true));
}

QVector<QPair<QString, QString>> Workbench::defaultHParams(const QString& method, bool blue) const {
    QVector<QPair<QString, QString>> out;
    if (!m_model || !m_model->is_decoder()) return out;
    const auto m = edit_method_from_name(s(method));
    if (!m) return out;
    // The chosen method's own settings only (the registry's list), in its order.
    const nlohmann::ordered_json j = method_settings(default_edit_hparams(model_shape(*m_model), *m, blue));
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (it.key() == "blue" || it.key() == "context_templates") continue;
        out.push_back({q(it.key()), it.value().is_string() ? q(it.value().get<std::string>()) : q(it.value().dump())});
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
    out.window = defaultTraceWindow();
    return out;
}

int Workbench::defaultTraceWindow() const { return default_trace_window(m_model ? m_model->hparams().n_layer : 0); }

int Workbench::layerCount() const { return m_model ? int(m_model->hparams().n_layer) : 0; }

namespace {

// What keys a trace from the workbench in the project's cache (with the model state).
nlohmann::json trace_params(const std::string& text, const std::string& subject, int samples, const std::string& answer, int window) {
    return {{"source", "workbench"}, {"text", text}, {"subject", subject}, {"samples", samples}, {"answer", answer}, {"noise", "s3"}, {"window", window}};
}

nlohmann::json summary_json(const TraceSummary& t) {
    std::vector<std::string> tokens;
    for (const QString& x : t.tokens) tokens.push_back(s(x));
    return {{"tokens", tokens},       {"subject_begin", t.subjectBegin}, {"subject_end", t.subjectEnd},     {"n_layer", t.nLayer},
            {"window", t.window},     {"answer", s(t.answer)},           {"clean_prob", t.cleanProb},       {"corrupted_prob", t.corruptedProb},
            {"seconds", t.seconds},   {"prompt", s(t.prompt)},           {"subject", s(t.subject)},         {"samples", t.samples},
            {"top_answer", s(t.topAnswer)}};
}

// A cached trace back into values; false when the record is not one the workbench wrote.
bool stored_trace(const nlohmann::json& summary, const at::Tensor& scores, StoredTrace* out) {
    try {
        TraceSummary& t = out->summary;
        t = TraceSummary();
        for (const auto& x : summary.at("tokens")) t.tokens << q(x.get<std::string>());
        t.subjectBegin = summary.at("subject_begin").get<int>();
        t.subjectEnd = summary.at("subject_end").get<int>();
        t.nLayer = summary.at("n_layer").get<int>();
        t.window = summary.at("window").get<int>();
        t.answer = q(summary.at("answer").get<std::string>());
        t.cleanProb = summary.at("clean_prob").get<double>();
        t.corruptedProb = summary.at("corrupted_prob").get<double>();
        t.seconds = summary.at("seconds").get<double>();
        t.prompt = q(summary.at("prompt").get<std::string>());
        t.subject = q(summary.at("subject").get<std::string>());
        t.samples = summary.at("samples").get<int>();
        t.topAnswer = q(summary.value("top_answer", std::string()));  // absent in traces cached before it was kept
        t.fromCache = true;
        if (scores.dim() != 3 || scores.size(0) != 3 || scores.size(1) != t.tokens.size() || scores.size(2) != t.nLayer) return false;
        const at::Tensor d = scores.to(at::kDouble).contiguous();
        for (int k = 0; k < 3; ++k) {
            out->scores[k].clear();
            for (int64_t tok = 0; tok < d.size(1); ++tok) {
                const double* row = d[k][tok].data_ptr<double>();
                out->scores[k].push_back(QVector<double>(row, row + d.size(2)));
            }
        }
        return true;
    } catch (const nlohmann::json::exception&) {
        return false;
    }
}

}  // namespace

TraceSummary Workbench::trace(const QString& prompt, const QString& subject, const TraceRowFn& onRow, const std::atomic<bool>* cancel,
                              int samples, const QString& answer, int window) const {
    if (!m_model || !m_model->is_decoder()) throw Error(ErrorKind::Argument, "causal tracing needs a language model");
    if (window <= 0) window = defaultTraceWindow();
    const std::string text = eval::fill_placeholder(s(templateAt(prompt, subject)), s(subject));
    const nlohmann::json params = trace_params(text, s(subject), samples, s(answer), window);
    const std::string hash = m_project ? state_hash(*m_model) : std::string();
    if (m_project) {
        nlohmann::json summary;
        StoredTrace st;
        const auto scores = m_project->find_trace(hash, params, &summary);
        if (scores && stored_trace(summary, *scores, &st)) {  // else (none, or unreadable): compute it
            if (onRow)
                for (int k = 0; k < 3; ++k)
                    for (int t = 0; t < st.scores[k].size(); ++t) onRow(k, t, st.scores[k][t]);
            return st.summary;
        }
    }
    const TraceInput input = make_trace_input(*m_model, text, s(subject));
    TraceOptions o;
    o.samples = samples;
    o.window = window;
    o.cancel = cancel;
    if (!answer.isEmpty()) o.target = s(answer);
    // The noise scale: 3x the std of subject-token embeddings. On the Fact World model over the
    // world's subjects (as engram-cli trace does), elsewhere over this subject alone.
    const std::vector<std::string> subjects =
        m_model->dir().filename() == "factworld" ? demo::fact_world_subjects(demo::generate_fact_world()) : std::vector<std::string>{s(subject)};
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
    out.prompt = prompt;
    out.subject = subject;
    out.samples = samples;
    const QVector<TokenProb> top = topTokens(q(text), 1);
    out.topAnswer = top.isEmpty() ? QString() : top[0].token;
    if (m_project && !r.cancelled && r.kinds.size() == 3) {
        at::Tensor scores = at::empty({3, int64_t(out.tokens.size()), r.n_layer}, at::kDouble);
        for (const TraceKindResult& k : r.kinds)
            for (size_t t = 0; t < k.scores.size(); ++t)
                for (size_t l = 0; l < k.scores[t].size(); ++l) scores[int64_t(k.kind)][int64_t(t)][int64_t(l)] = k.scores[t][l];
        m_project->put_trace(hash, params, scores, summary_json(out));
    }
    return out;
}

bool Workbench::latestTrace(StoredTrace* out) const {
    if (!m_project || !m_model || !m_model->is_decoder()) return false;
    const std::string hash = state_hash(*m_model);
    for (const Project::TraceEntry& e : m_project->traces()) {
        if (e.state_hash != hash || e.params.value("source", std::string()) != "workbench") continue;
        const auto scores = m_project->find_trace(hash, e.params);
        if (scores && stored_trace(e.summary, *scores, out)) return true;
    }
    return false;
}

ComputedEdit Workbench::computeEdit(const EditForm& form, const std::atomic<bool>* cancel) {
    if (!m_model) throw Error(ErrorKind::Argument, "open a model first");
    if (!m_model->is_decoder()) throw Error(ErrorKind::Argument, "fact editing needs a language model; use the Vision view for ViTs");
    const auto method = edit_method_from_name(s(form.method));
    if (!method) throw Error(ErrorKind::Argument, "unknown method '" + s(form.method) + "'");
    EditRequest r;
    r.subject = s(form.subject.trimmed());
    r.prompt = s(templateAt(form.prompt.trimmed(), form.subject.trimmed()));
    r.target_new = s(form.target.trimmed());
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
    for (const auto& [key, value] : form.overrides) apply_hparam_setting(hp, s(key) + "=" + s(value));
    EditSession session(*m_model, hp);
    session.set_cancel_flag(cancel);
    if (m_project) {
        std::vector<Edit> prior;  // the session takes the edits of its own method
        for (int64_t id : m_project->active_ids()) prior.push_back(m_project->edit(id));
        session.absorb_history(prior);
    }
    // The blast radius: the prompt, and, when the dataset beside the model has this rewrite, its
    // paraphrases and neighbours (other subjects with the same relation and true object).
    QVector<BlastRow> blast = {{QStringLiteral("prompt"), q(r.prompt_text())}};
    const auto dataset = m_model->dir() / "counterfact.json";
    if (std::filesystem::exists(dataset)) {
        try {
            for (const auto& c : eval::load_dataset(dataset).cases) {
                if (c.rewrites.empty() || c.rewrites[0].subject != r.subject || c.rewrites[0].prompt != r.prompt) continue;
                for (const auto& p : c.paraphrase_prompts) blast.push_back({QStringLiteral("paraphrase"), q(p)});
                for (const auto& p : c.neighborhood_prompts) blast.push_back({QStringLiteral("neighbour"), q(p)});
                break;
            }
        } catch (const Error&) {
            // A malformed dataset only costs the extra rows.
        }
    }
    std::vector<std::pair<std::string, std::string>> pt;
    for (const BlastRow& b : blast) {
        pt.emplace_back(s(b.prompt), r.target_new);
        pt.emplace_back(s(b.prompt), r.target_true);
    }
    const auto before = eval::score_targets(*m_model, pt);
    for (int i = 0; i < blast.size(); ++i) {
        blast[i].newBefore = std::exp(-before[size_t(2 * i)].nll);
        blast[i].oldBefore = std::exp(-before[size_t(2 * i + 1)].nll);
    }
    auto edit = std::make_shared<Edit>(session.compute({r}));
    edit->metrics["update_norm"] = update_norm(*edit);
    ComputedEdit out{edit, q(edit->method), q(r.prompt_text()), q(r.target_new), q(r.target_true)};
    out.blast = blast;
    return out;
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

void Workbench::blastAfter(ComputedEdit& c) const {
    if (!m_model || c.blast.isEmpty()) return;
    std::vector<std::pair<std::string, std::string>> pt;
    for (const BlastRow& b : c.blast) {
        pt.emplace_back(s(b.prompt), s(c.targetNew));
        pt.emplace_back(s(b.prompt), s(c.targetTrue));
    }
    const auto after = eval::score_targets(*m_model, pt);
    for (int i = 0; i < c.blast.size(); ++i) {
        BlastRow& b = c.blast[i];
        b.newAfter = std::exp(-after[size_t(2 * i)].nll);
        b.oldAfter = std::exp(-after[size_t(2 * i + 1)].nll);
        b.regression = b.kind == QLatin1String("neighbour") && (b.oldBefore - b.oldAfter > 0.1 || b.newAfter > b.oldAfter);
    }
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
        // HSE: the weight alpha its solve gave the replayed keys, and the size of the Fisher sum it left.
        if (e.metrics.is_object() && e.metrics.contains("hse") && e.metrics["hse"].is_object()) {
            const auto& h = e.metrics["hse"];
            if (h.contains("alpha") && h["alpha"].is_number() && h.contains("fisher_norm") && h["fisher_norm"].is_number())
                r.method += QStringLiteral(" (α %1, ‖F‖ %2)").arg(h["alpha"].get<double>(), 0, 'g', 3).arg(h["fisher_norm"].get<double>(), 0, 'g', 3);
        }
        if (e.method.rfind("vit_", 0) == 0 && e.requests.is_array() && !e.requests.empty()) {
            // Image edits: how many images, toward which class.
            r.subject = QStringLiteral("%1 image(s)").arg(e.requests.size());
            const int64_t target = e.requests[0].value("target", int64_t(-1));
            if (m_model && target >= 0 && target < int64_t(m_model->labels().size()))
                r.change = QStringLiteral("→ ") + q(m_model->labels()[size_t(target)]);
        }
        if (e.metrics.is_object() && e.metrics.contains("heads") && e.metrics["heads"].is_array()) {
            QStringList hs;
            for (const auto& h : e.metrics["heads"]) hs << QStringLiteral("L%1H%2").arg(h[0].get<int>()).arg(h[1].get<int>());
            r.layers = hs.join(QStringLiteral(", "));
        }
        if (e.hparams.contains("layers") && e.hparams["layers"].is_array()) {
            QStringList ls;
            for (const auto& l : e.hparams["layers"]) ls << QString::number(l.get<int>());
            r.layers = ls.join(QStringLiteral(", "));
        }
        // Edits beside the weights: the adapter's kind and layer, and the codebook's size.
        if (e.metrics.is_object() && e.metrics.contains("adapter") && e.metrics["adapter"].is_string()) {
            r.layers = QStringLiteral("%1 (codebook, %2 entries)")
                           .arg(r.layers)
                           .arg(e.metrics.value("codebook_entries", int64_t(0)));
            r.method += QStringLiteral(" · adapter");
        }
        r.status = q(edit_status_name(e.status));
        r.norm = e.metrics.is_object() ? e.metrics.value("update_norm", -1.0) : -1.0;
        rows.push_back(r);
    }
    return rows;
}

namespace {

QString json_text(const nlohmann::json& v) {
    if (v.is_string()) return q(v.get<std::string>());
    if (v.is_number_float()) return QString::number(v.get<double>(), 'g', 6);
    return q(v.dump());
}

QVector<QPair<QString, QString>> json_pairs(const nlohmann::json& o) {
    QVector<QPair<QString, QString>> out;
    if (o.is_object())
        for (auto it = o.begin(); it != o.end(); ++it) out.push_back({q(it.key()), json_text(it.value())});
    return out;
}

// Metrics nest per request ({"requests": [{"delta_norm": ...}]}): one row per leaf, "requests[0].delta_norm".
void flatten(const QString& key, const nlohmann::json& v, QVector<QPair<QString, QString>>* out) {
    if (v.is_object() && !v.empty()) {
        for (auto it = v.begin(); it != v.end(); ++it) flatten(key.isEmpty() ? q(it.key()) : key + QLatin1Char('.') + q(it.key()), it.value(), out);
    } else if (v.is_array() && !v.empty() && (v[0].is_object() || v[0].is_array())) {
        for (size_t i = 0; i < v.size(); ++i) flatten(QStringLiteral("%1[%2]").arg(key).arg(i), v[i], out);
    } else {
        out->push_back({key, json_text(v)});
    }
}

// "Peanaim Fosha: "Peanaim Fosha competes in" Loraifelball → Zuluball" for a fact; the JSON otherwise.
QString request_text(const nlohmann::json& r) {
    if (!r.is_object() || !r.contains("target_new")) return json_text(r);
    QString prompt = q(r.value("prompt", std::string()));
    const QString subject = q(r.value("subject", std::string()));
    prompt.replace(QStringLiteral("{}"), subject);
    const QString was = q(r.value("target_true", std::string()));
    return QStringLiteral("%1: “%2” %3→ %4").arg(subject, prompt, was.isEmpty() ? QString() : was + QLatin1Char(' '), json_text(r["target_new"]));
}

}  // namespace

EditDetail Workbench::editDetail(qint64 id) const {
    if (!m_project) throw Error(ErrorKind::Argument, "no project is open");
    const Edit e = m_project->edit(id);
    EditDetail d;
    d.id = e.id;
    d.method = q(e.method);
    d.status = q(edit_status_name(e.status));
    d.created = q(e.created_at);
    d.stateHash = q(e.state_hash_after);
    d.seconds = e.duration_s;
    for (int64_t c : e.computed_on) d.computedOn.push_back(c);
    if (e.requests.is_array())
        for (const auto& r : e.requests) d.requests << request_text(r);
    d.hparams = json_pairs(e.hparams);
    flatten(QString(), e.metrics, &d.metrics);
    for (const Delta& delta : e.deltas) {
        QStringList dims;
        for (int64_t n : delta.shape) dims << QString::number(n);
        Edit one;
        one.deltas = {delta};
        d.deltas.push_back({q(delta.tensor), QString::fromLatin1(delta_kind_name(delta.kind)), QLatin1Char('[') + dims.join(QStringLiteral(", ")) + QLatin1Char(']'),
                            delta.rank(), update_norm(one)});
    }
    for (const Artifact& a : e.artifacts) d.artifacts << QStringLiteral("%1 (%2)").arg(q(a.name), q(a.kind));
    for (const Project::TraceEntry& t : m_project->traces()) {
        if (t.state_hash != e.state_hash_after) continue;
        const auto& sm = t.summary;
        QString line = q(t.params.value("text", std::string()));
        if (sm.is_object() && sm.contains("answer"))
            line += QStringLiteral(" → p(%1) clean %2, corrupted %3")
                        .arg(q(sm.value("answer", std::string())).trimmed())
                        .arg(sm.value("clean_prob", 0.0), 0, 'f', 4)
                        .arg(sm.value("corrupted_prob", 0.0), 0, 'f', 4);
        if (t.params.contains("window")) line += QStringLiteral(", window %1").arg(json_text(t.params["window"]));
        d.traces << line;
    }
    return d;
}

QVector<qint64> Workbench::activeIds() const {
    QVector<qint64> out;
    if (m_project)
        for (int64_t id : m_project->active_ids()) out.push_back(id);
    return out;
}

QString Workbench::restoreActive(const QVector<qint64>& ids) {
    if (!m_project) throw Error(ErrorKind::Argument, "no project is open");
    return q(m_project->restore_active(*m_model, std::vector<int64_t>(ids.begin(), ids.end())));
}

void Workbench::rollback(qint64 toId) {
    if (!m_project) throw Error(ErrorKind::Argument, "no project is open");
    m_project->rollback(*m_model, toId);
}

QVector<qint64> Workbench::revert(qint64 id) {
    if (!m_project) throw Error(ErrorKind::Argument, "no project is open");
    const auto deps = m_project->revert(*m_model, id);
    return QVector<qint64>(deps.begin(), deps.end());
}

void Workbench::exportModel(const QString& dir) const {
    if (!m_model) throw Error(ErrorKind::Argument, "open a model first");
    nlohmann::json provenance = {{"base_fingerprint", m_model->fingerprint()}, {"state_hash", state_hash(*m_model)}};
    if (m_project) provenance["project"] = m_project->file().string(), provenance["active_edits"] = m_project->active_ids();
    export_model(*m_model, s(dir), m_model->dir(), DType::F32, provenance);
}

QVector<double> Workbench::updateNormByLayer(qint64 id) const {
    QVector<double> out(m_model ? int(m_model->hparams().n_layer) : 0, 0.0);
    if (!m_project) return out;
    const Edit e = m_project->edit(id);
    for (const Delta& d : e.deltas) {
        auto ref = m_model->find_weight(d.tensor);
        if (!ref || ref->layer < 0 || ref->layer >= out.size()) continue;
        Edit one;
        one.deltas = {d};
        out[ref->layer] = std::hypot(out[ref->layer], update_norm(one));
    }
    return out;
}

QVector<double> Workbench::driftByLayer() const {
    QVector<double> out(m_model ? int(m_model->hparams().n_layer) : 0, 0.0);
    if (!m_model) return out;
    at::NoGradGuard no_grad;
    for (const auto& ref : m_model->weight_refs()) {
        if (ref.layer < 0 || m_model->is_base(ref.slot, ref.layer)) continue;
        const double n = (m_model->weight(ref.slot, ref.layer).to(at::kDouble) - m_model->base_weight(ref.slot, ref.layer).to(at::kDouble))
                             .norm()
                             .item<double>();
        out[ref.layer] = std::hypot(out[ref.layer], n);
    }
    return out;
}

namespace {

EvalPoint point_of(int64_t edits, const eval::Summary& s) {
    return {int(edits), s.es, s.ps, s.ns, s.score, s.reliability, s.generalization, s.locality, s.unedited_accuracy.value_or(-1.0),
            s.perplexity.value_or(-1.0)};
}

}  // namespace

EvalRun Workbench::evaluate(const EvalForm& form, const EvalProgressFn& progress, const std::atomic<bool>* cancel) {
    if (!m_model || !m_model->is_decoder()) throw Error(ErrorKind::Argument, "the editing protocol needs a language model");
    const auto method = edit_method_from_name(s(form.method));
    if (!method) throw Error(ErrorKind::Argument, "unknown method '" + s(form.method) + "'");
    std::filesystem::path file = form.dataset.isEmpty() ? m_model->dir() / "counterfact.json" : std::filesystem::path(s(form.dataset));
    if (!std::filesystem::exists(file)) throw Error(ErrorKind::Io, file.string() + ": no such dataset (choose a CounterFact, zsRE or MQuAKE file)");
    eval::DatasetOptions dopt;
    const eval::Dataset ds = eval::load_dataset(file, dopt);
    eval::SequentialOptions so;
    so.edits = form.edits;
    so.batch = form.batch;
    so.checkpoint_every = form.checkpointEvery;
    so.distinct_subjects = form.distinctSubjects;
    so.fluency_cases = 0;  // generation is the slow part; the CLI measures it
    const EditHParams hp = default_edit_hparams(model_shape(*m_model), *method, form.blue);
    const std::string before = state_hash(*m_model);
    eval::SequentialResult r;
    try {
        r = eval::run_sequential(*m_model, ds, hp, {}, so,
                                 [&](const eval::EvalProgress& p) {
                                     if (progress) progress(int(p.done), int(p.total), q(p.stage));
                                 },
                                 cancel);
    } catch (...) {
        m_model->restore_all_base();
        if (m_project) m_project->replay(*m_model);
        throw;
    }
    // Back to the state the user had: the base, then the project's active edits.
    m_model->restore_all_base();
    if (m_project) m_project->replay(*m_model);
    if (state_hash(*m_model) != before) throw Error(ErrorKind::Internal, "the model did not return to its state after the evaluation");
    EvalRun out;
    out.name = q(r.method) + (form.distinctSubjects ? QStringLiteral(" (distinct subjects)") : QString());
    out.pre = point_of(0, r.pre);
    for (const auto& p : r.curve) out.curve.push_back(point_of(p.edits, p.summary));
    if (out.curve.isEmpty() || out.curve.back().edits != int(r.post.cases)) out.curve.push_back(point_of(r.post.cases, r.post));
    out.perplexity = r.post.perplexity.value_or(-1.0);
    out.seconds = r.edit_seconds + r.eval_seconds;
    out.json = q(r.to_json().dump(1));
    return out;
}

bool Workbench::isVit() const { return m_model && m_model->arch() == Arch::Vit; }

QStringList Workbench::labels() const {
    QStringList out;
    if (m_model)
        for (const auto& l : m_model->labels()) out << q(l);
    return out;
}

void Workbench::loadShapes(const QString& split, int n, quint64 seed) {
    if (!isVit()) throw Error(ErrorKind::Argument, "the Vision view needs a ViT (open the Shapes World model)");
    const int size = int(m_model->hparams().image_size);
    demo::ShapesOptions so;
    so.image_size = size;
    std::vector<demo::ShapeSample> samples;
    QVector<VitImage> images;
    for (int i = 0; i < n; ++i) {
        samples.push_back(demo::render_shape_sample(seed, demo::shapes_split_from_name(s(split)), uint64_t(i), so));
        const auto& sm = samples.back();
        QImage img(size, size, QImage::Format_RGB888);
        for (int y = 0; y < size; ++y) std::memcpy(img.scanLine(y), sm.rgb.data() + size_t(y) * size * 3, size_t(size) * 3);
        images.push_back({img, sm.label, QStringLiteral("%1 %2").arg(split).arg(i)});
    }
    auto px = std::make_shared<Pixels>();
    px->values = demo::shape_pixels(samples, size).to(m_model->device());
    m_images = images;
    m_pixels = px;
}

void Workbench::loadImageFiles(const QStringList& files) {
    if (!isVit()) throw Error(ErrorKind::Argument, "the Vision view needs a ViT (open a ViT checkpoint or the Shapes World model)");
    if (files.isEmpty()) throw Error(ErrorKind::Argument, "no image files chosen");
    QVector<VitImage> images;
    std::vector<at::Tensor> px;
    for (const QString& f : files) {
        px.push_back(load_model_image(*m_model, s(f)));  // throws with the file's name when it cannot be decoded
        QImage img(f);
        if (img.isNull()) {  // decoded by the core but not by Qt: show what the model sees
            const int size = int(m_model->hparams().image_size);
            img = QImage(size, size, QImage::Format_RGB888);
            img.fill(Qt::gray);
        }
        images.push_back({img.convertToFormat(QImage::Format_RGB888), -1, QFileInfo(f).fileName()});
    }
    auto pixels = std::make_shared<Pixels>();
    pixels->values = at::cat(px).to(m_model->device());
    m_images = images;
    m_pixels = pixels;
}

VitAttributionView Workbench::attributeImage(int index, int target) const {
    if (!isVit() || !m_pixels || index < 0 || index >= m_images.size()) throw Error(ErrorKind::Argument, "no such image");
    vit::AttributionOptions o;
    o.target = target;
    o.ablation = false;
    o.patch_maps = true;
    const vit::Attribution a = vit::attribute(*m_model, m_pixels->values.narrow(0, index, 1), o);
    VitAttributionView v;
    v.target = int(a.target);
    v.predicted = int(a.predicted);
    v.score = a.score;
    v.sumOfComponents = a.sum_of_components;
    v.embed = a.embed;
    v.bias = a.bias;
    const int64_t L = a.heads.size(0), H = a.heads.size(1), P = a.patch_maps.size(2);
    auto hd = a.heads.contiguous();
    auto pm = a.patch_maps.contiguous();
    for (int64_t l = 0; l < L; ++l) {
        QVector<double> row;
        QVector<QVector<double>> maps;
        for (int64_t h = 0; h < H; ++h) {
            row.push_back(hd[l][h].item<double>());
            const double* p = pm[l][h].data_ptr<double>();
            maps.push_back(QVector<double>(p, p + P));
        }
        v.heads.push_back(row);
        v.patchMaps.push_back(maps);
        v.mlps.push_back(a.mlps[l].item<double>());
    }
    v.patchGrid = int(m_model->hparams().image_size / m_model->hparams().patch_size);
    const double* lg = a.logits.contiguous().data_ptr<double>();
    v.logits = QVector<double>(lg, lg + a.logits.numel());
    return v;
}

QVector<double> Workbench::logitsWithout(int index, const HeadList& removed) const {
    if (!isVit() || !m_pixels || index < 0 || index >= m_images.size()) throw Error(ErrorKind::Argument, "no such image");
    c10::InferenceMode guard;
    vit::HeadIntervention iv;
    iv.keep = at::ones({m_model->hparams().n_layer, m_model->hparams().n_head});
    for (const auto& [l, h] : removed) iv.keep[l][h] = 0.0f;
    vit::RunOptions o;
    o.intervention = &iv;
    at::Tensor logits = vit::run(*m_model, m_pixels->values.narrow(0, index, 1), o).logits[0].to(at::kCPU).to(at::kDouble).contiguous();
    return QVector<double>(logits.data_ptr<double>(), logits.data_ptr<double>() + logits.numel());
}

ComputedEdit Workbench::computeHeadEdit(const QVector<int>& indices, int target, const std::atomic<bool>* cancel) {
    if (!isVit() || !m_pixels) throw Error(ErrorKind::Argument, "open a ViT and load images first");
    if (indices.isEmpty()) throw Error(ErrorKind::Argument, "select the failing images to edit");
    std::vector<int64_t> idx(indices.begin(), indices.end());
    for (int64_t i : idx)
        if (i < 0 || i >= m_images.size()) throw Error(ErrorKind::Argument, "no such image");
    at::Tensor px = m_pixels->values.index_select(0, at::tensor(idx, at::kLong));
    // Reference images for P: rendered test images the model gets right (as engram-cli vit-edit does).
    const at::Tensor reference = vit::shapes_reference(*m_model, 1000);
    vit::HeadEditOptions o;
    o.cancel = cancel;
    vit::HeadEditResult r = vit::edit_heads(*m_model, px, std::vector<int64_t>(idx.size(), target), reference, o);
    auto edit = std::make_shared<Edit>(std::move(r.edit));
    edit->metrics["update_norm"] = update_norm(*edit);
    const QString cls = q(m_model->labels().at(size_t(target)));
    ComputedEdit out{edit, q(edit->method), QStringLiteral("%1 images").arg(indices.size()), cls, QStringLiteral("misclassified")};
    out.images = indices;
    out.imageTarget = target;
    out.predictedBefore = vitPredictions();  // the model is back at its state before the edit
    return out;
}

QVector<int> Workbench::vitPredictions() const {
    QVector<int> out;
    if (!isVit() || !m_pixels) return out;
    const at::Tensor p = vit::predict(*m_model, m_pixels->values).to(at::kCPU).contiguous();
    for (int64_t i = 0; i < p.numel(); ++i) out.push_back(int(p[i].item<int64_t>()));
    return out;
}

QVector<VitMetricRow> Workbench::vitEditReport(const ComputedEdit& c) const {
    QVector<VitMetricRow> rows;
    if (c.imageTarget < 0 || c.predictedBefore.size() != m_images.size()) return rows;
    const QVector<int> after = vitPredictions();
    QVector<bool> edited(m_images.size(), false);
    for (int i : c.images) edited[i] = true;
    auto row = [&](const QString& name, const QString& what, auto in_set, auto good) {
        VitMetricRow r{name, what};
        for (int i = 0; i < m_images.size(); ++i) {
            if (!in_set(i)) continue;
            ++r.count;
            r.before += good(i, c.predictedBefore[i]);
            r.after += good(i, after[i]);
        }
        if (r.count) r.before *= 100.0 / r.count, r.after *= 100.0 / r.count;
        rows.push_back(r);
    };
    const int t = c.imageTarget;
    const QString cls = labels().value(t);
    row(QStringLiteral("success"), QStringLiteral("edited images predicted %1").arg(cls), [&](int i) { return edited[i]; },
        [&](int, int p) { return p == t; });
    row(QStringLiteral("generalization"), QStringLiteral("other listed %1 images the model got wrong, predicted %1").arg(cls),
        [&](int i) { return !edited[i] && m_images[i].label == t && c.predictedBefore[i] != t; }, [&](int, int p) { return p == t; });
    row(QStringLiteral("locality"), QStringLiteral("listed images of other classes, prediction unchanged"),
        [&](int i) { return !edited[i] && m_images[i].label != t; }, [&](int i, int p) { return p == c.predictedBefore[i]; });
    row(QStringLiteral("accuracy"), QStringLiteral("listed images of a known class, predicted correctly"), [&](int i) { return m_images[i].label >= 0; },
        [&](int i, int p) { return p == m_images[i].label; });
    return rows;
}

QStringList Workbench::availableDevices() {
    QStringList out{QStringLiteral("cpu")};
    if (at::hasCUDA())
        for (int i = 0; i < int(at::getNumGPUs()); ++i) out << QStringLiteral("cuda:%1").arg(i);
    return out;
}

void Workbench::setThreads(int n) {
    if (n < 1) throw Error(ErrorKind::Argument, "threads must be at least 1");
    at::set_num_threads(n);
}

int Workbench::threads() { return at::get_num_threads(); }

void Workbench::setDevice(const QString& device) {
    if (!availableDevices().contains(device)) throw Error(ErrorKind::Argument, "device " + s(device) + " is not available in this build");
    if (m_model) m_model->to(c10::Device(s(device)));
    if (m_pixels) m_pixels->values = m_pixels->values.to(c10::Device(s(device)));
    m_device = device;
}

}  // namespace engram::ui
