// The GUI's one owner of the loaded model and its project. Plain C++ over the core: no torch in
// this header, so views include it freely. Calls are synchronous; the views run the slow ones
// (opening a model, computing an edit) in a worker thread, one job at a time, and never touch the
// model from two threads at once.
#pragma once

#include <QImage>
#include <QPair>
#include <QString>
#include <QVector>

#include <QStringList>

#include <atomic>
#include <functional>
#include <memory>

namespace engram {
class Model;
class Project;
struct Edit;
}  // namespace engram

namespace engram::ui {

struct TokenProb {
    QString token;
    qint64 id = 0;
    double prob = 0;
};

struct EditForm {
    QString prompt;   // a template with {} where the subject goes, or the full text containing the subject
    QString subject, target;
    QString method = QStringLiteral("rome");  // rome | memit | memit_seq | alphaedit | pmet | ft
    bool blue = false;
    int layer = -1;   // -1: the method's default layers for this model; else that single layer (ROME, FT)
    QVector<QPair<QString, QString>> overrides;  // key=value settings applied last (the hparams table)
};

// One prompt of an edit's blast radius: the edited prompt, a paraphrase or a neighbour.
struct BlastRow {
    QString kind;    // "prompt", "paraphrase", "neighbour"
    QString prompt;
    double newBefore = 0, newAfter = 0;  // p(new target)
    double oldBefore = 0, oldAfter = 0;  // p(old target); for a neighbour: its own true answer
    bool regression = false;             // a neighbour whose answer lost more than 0.1, or turned to the new target
};

// An edit computed off the GUI thread, waiting to be recorded.
struct ComputedEdit {
    std::shared_ptr<Edit> edit;
    QString method, promptText, targetNew, targetTrue;
    QVector<BlastRow> blast;  // "before" filled when computed; "after" by blastAfter()
    // A head-level ViT edit: the edited images (indexes into vitImages()), the target class, and the
    // model's prediction for every listed image before the edit.
    QVector<int> images;
    int imageTarget = -1;
    QVector<int> predictedBefore;
};

// One row of a ViT edit's before/after report over the images in the Vision view's list.
struct VitMetricRow {
    QString name;        // "success", "generalization", "locality", "accuracy"
    QString what;        // which images, in words
    int count = 0;       // images in the set (0: the set is empty, no figures)
    double before = 0, after = 0;  // %
};

struct HistoryRow {
    qint64 id = 0;
    QString time, method, subject, change, layers, status;
    double norm = -1;  // Frobenius norm of the whole update; -1: not recorded
};

// Everything recorded about one edit, for the History view's detail panel.
struct EditDetail {
    qint64 id = 0;
    QString method, status, created;
    QString stateHash;              // the model's state right after the edit was recorded
    double seconds = 0;             // computing it
    QVector<qint64> computedOn;     // the edits active in the model it was computed on
    QStringList requests;           // one line per request
    QVector<QPair<QString, QString>> hparams, metrics;  // key -> value text
    struct Tensor {
        QString name, kind;         // HF tensor name; low_rank, dense_rows or dense
        QString shape;              // "[out, in]" of the weight
        qint64 rank = 0;            // r (low rank), rows (dense rows), 0 (dense)
        double norm = 0;            // Frobenius norm of the change
    };
    QVector<Tensor> deltas;
    QStringList artifacts;          // "name (kind)"
    QStringList traces;             // the causal traces cached for stateHash
};

// A causal trace (ROME's three kinds) as plain values. kind: 0 hidden, 1 MLP, 2 attention.
struct TraceSummary {
    QStringList tokens;
    int subjectBegin = 0, subjectEnd = 0;  // [begin, end) corrupted tokens
    int nLayer = 0, window = 10;  // window: layers restored together in the MLP and attention maps
    QString answer;     // the answer traced
    QString topAnswer;  // the model's own top-1 answer to the prompt (differs after an edit when the old answer is traced)
    double cleanProb = 0, corruptedProb = 0;
    bool cancelled = false;
    double seconds = 0;
    bool fromCache = false;  // read back from the project instead of computed
    // The request, so that a restored trace can refill the form.
    QString prompt, subject;
    int samples = 10;
};
// A finished trace with its scores: [kind][token][layer].
struct StoredTrace {
    TraceSummary summary;
    QVector<QVector<double>> scores[3];
};
using TraceRowFn = std::function<void(int kind, int token, const QVector<double>& scores)>;

// One image of the Vision view and what the ViT makes of it.
struct VitImage {
    QImage image;
    int label = -1;  // the true class when known (rendered Shapes World images), else -1
    QString name;
};

struct VitAttributionView {
    int target = 0, predicted = 0;
    double score = 0, sumOfComponents = 0, embed = 0, bias = 0;
    QVector<QVector<double>> heads;          // [n_layer][n_head] direct logit attribution
    QVector<double> mlps;                    // [n_layer]
    QVector<QVector<QVector<double>>> patchMaps;  // [n_layer][n_head][n_patches]
    int patchGrid = 0;
    QVector<double> logits;                  // [n_labels]
};

using HeadList = QVector<QPair<int, int>>;  // (layer, head)

// The sequential batch protocol from the Evaluate view.
struct EvalForm {
    QString dataset;             // empty: counterfact.json beside the model (the demo worlds have one)
    QString method = QStringLiteral("memit");
    bool blue = false;
    bool distinctSubjects = false;  // the first cases with pairwise distinct subjects (MEMIT's multi_counterfact)
    int edits = 100, batch = 10, checkpointEvery = 1;
};

struct EvalPoint {
    int edits = 0;
    double es = 0, ps = 0, ns = 0, score = 0;                     // ROME/MEMIT probability metrics (x100)
    double reliability = 0, generalization = 0, locality = 0;     // EasyEdit token metrics (x100)
    double unedited = -1, perplexity = -1;                        // top-1 on unedited facts (x100), held-out perplexity (-1: not measured)
};

struct EvalRun {
    QString name;                // "memit", "memit+blue", ...
    QVector<EvalPoint> curve;    // after each checkpoint, the last one = after all edits
    EvalPoint pre;
    double perplexity = -1;      // held-out, after all edits (-1: not measured)
    double seconds = 0;
    QString json;                // the full result, as engram-cli eval --json writes it
};
using EvalProgressFn = std::function<void(int done, int total, const QString& stage)>;

class Workbench {
public:
    Workbench();
    ~Workbench();
    Workbench(const Workbench&) = delete;
    Workbench& operator=(const Workbench&) = delete;

    // All of these throw engram::Error with the context of what failed; the state is unchanged then.
    void openModel(const QString& dir);
    // Opens a project and replays its active edits onto its model (modelDir overrides the recorded folder).
    void openProject(const QString& file, const QString& modelDir = QString());
    // Starts a new project for the loaded model at `file` (an existing file is refused).
    void createProject(const QString& file);
    // Writes the open project to `file` (replacing it) and goes on working in the copy.
    void saveProjectAs(const QString& file);

    bool hasModel() const { return m_model != nullptr; }
    bool hasProject() const { return m_project != nullptr; }
    QString projectFile() const;
    QString modelName() const;
    QString modelSummary() const;  // architecture, parameters, dtype, fingerprint
    QString modelShape() const;    // architecture, parameters, layers, dtype
    QString fingerprint() const;   // SHA-256 of the base weights, in hex
    QString stateHash() const;
    bool isDecoder() const;

    QVector<TokenProb> topTokens(const QString& prompt, int k) const;
    // The same on the unedited base weights (the edited tensors are swapped out and back).
    QVector<TokenProb> topTokensOfBase(const QString& prompt, int k);
    QStringList promptTokens(const QString& prompt) const;
    QString generate(const QString& prompt, int maxNewTokens) const;  // greedy continuation
    bool edited() const;  // the weights differ from the base, or adapters are installed
    // For each installed adapter, one line on what it does with the prompt (which GRACE entry, at
    // what distance, against what radius); empty without adapters.
    QStringList adapterNotes(const QString& prompt) const;
    // The method's default hyperparameters for this model, as key -> value text (what --set takes).
    QVector<QPair<QString, QString>> defaultHParams(const QString& method, bool blue) const;
    double probability(const QString& prompt, const QString& target) const;  // p(target | prompt), all target tokens

    // Causal tracing of `subject` in `prompt` (ROME defaults: 10 samples, noise 3x the subjects'
    // embedding std). Rows arrive through onRow on the calling thread as they finish.
    // `answer`: trace this continuation instead of the clean top-1 (to compare before and after an edit).
    // `window`: layers restored together for the MLP and attention maps; 0: defaultTraceWindow().
    // With a project open, a finished trace is cached in it, keyed by the model state and the
    // request; asking again in the same state reads it back (fromCache) and streams its rows.
    TraceSummary trace(const QString& prompt, const QString& subject, const TraceRowFn& onRow, const std::atomic<bool>* cancel = nullptr,
                       int samples = 10, const QString& answer = QString(), int window = 0) const;
    // About a fifth of the loaded model's depth (ROME restores 10 of GPT-2 XL's 48 layers together).
    int defaultTraceWindow() const;
    int layerCount() const;
    // The newest trace cached in the project for the current model state, if any.
    bool latestTrace(StoredTrace* out) const;
    // The tokens and subject range a trace of this prompt will have (nothing is run).
    TraceSummary traceShape(const QString& prompt, const QString& subject) const;
    // The prompt as a template with {} at the subject (throws when the subject is not in it).
    QString templateAt(const QString& prompt, const QString& subject) const;

    // Computes an edit on the current model (which it changes and restores). Worker thread.
    ComputedEdit computeEdit(const EditForm& form, const std::atomic<bool>* cancel = nullptr);
    // Records it (creating a scratch project beside the temp dir when none is open); returns its id.
    qint64 record(const ComputedEdit& edit);
    // Fills the "after" columns of the blast radius on the current (edited) model and flags regressions.
    void blastAfter(ComputedEdit& edit) const;
    qint64 undo();  // the edit undone, 0 if none
    qint64 redo();  // the edit redone, 0 if none
    QVector<HistoryRow> history() const;
    EditDetail editDetail(qint64 id) const;  // throws when the project has no such edit
    QVector<qint64> activeIds() const;
    // Exactly these edits active (what undoing a rollback or revert needs); returns the state hash.
    QString restoreActive(const QVector<qint64>& ids);
    void rollback(qint64 toId);                  // back to the state right after edit toId (0: the base)
    QVector<qint64> revert(qint64 id);           // one edit out of order; returns the dependent active edits
    void exportModel(const QString& dir) const;  // the edited model as a HF checkpoint folder (F32)
    // Frobenius norm per layer: of one edit's update, and of (current - base) over the whole history.
    QVector<double> updateNormByLayer(qint64 id) const;
    QVector<double> driftByLayer() const;

    // Runs the protocol on a copy of the current state and restores it afterwards: the base
    // weights plus the project's active edits, bit for bit. Worker thread.
    EvalRun evaluate(const EvalForm& form, const EvalProgressFn& progress, const std::atomic<bool>* cancel = nullptr);

    // Vision (the loaded model is a ViT).
    bool isVit() const;
    QStringList labels() const;
    // Renders `n` Shapes World images of a split ("train", "test", "counter") as the image list.
    void loadShapes(const QString& split, int n, quint64 seed = 777);
    // Image files (PNG, JPEG, BMP, ...) as the image list, preprocessed as the model's processor
    // says; their true class is unknown (-1). Nothing changes when one fails to load.
    void loadImageFiles(const QStringList& files);
    const QVector<VitImage>& vitImages() const { return m_images; }
    VitAttributionView attributeImage(int index, int target = -1) const;
    // Logits of image `index` with the listed heads removed (zero ablation), as the core computes them.
    QVector<double> logitsWithout(int index, const HeadList& removed) const;
    // A head-level edit (RefineViT-style defaults) making the listed images predict `target`;
    // P's reference images are rendered Shapes World test images the model gets right.
    ComputedEdit computeHeadEdit(const QVector<int>& indices, int target, const std::atomic<bool>* cancel = nullptr);
    // Before/after over the listed images, on the current (edited) model: success on the edited
    // images, generalization on the other listed images of the target class that were wrong,
    // locality (prediction unchanged) on the listed images of other classes (all the others when
    // the classes are unknown), and accuracy where the classes are known.
    QVector<VitMetricRow> vitEditReport(const ComputedEdit& edit) const;
    // The predicted class of every listed image on the current model.
    QVector<int> vitPredictions() const;

    // Settings. Threads: libtorch's intra-op threads (process-wide). Device: "cpu" or "cuda[:N]";
    // the open model moves there and models opened later load there.
    static QStringList availableDevices();
    static void setThreads(int n);
    static int threads();
    void setDevice(const QString& device);
    QString device() const { return m_device; }

    Model* model() { return m_model.get(); }

private:
    std::unique_ptr<Model> m_model;
    std::unique_ptr<Project> m_project;
    QVector<VitImage> m_images;
    QString m_device = QStringLiteral("cpu");
    struct Pixels;
    std::shared_ptr<Pixels> m_pixels;  // the images' model inputs (torch stays out of this header)
};

}  // namespace engram::ui
