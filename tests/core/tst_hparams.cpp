// Edit hyperparameters: the reference values of the default table for each shape, layers scaled to
// other depths, EasyEdit/reference hparams files (YAML and JSON), --set overrides, validation, and
// the JSON form round-tripping every field.
#include <QtTest>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "engram/edit_hparams.h"
#include "engram/error.h"

using namespace engram;
namespace fs = std::filesystem;
using nlohmann::json;

Q_DECLARE_METATYPE(engram::EditMethod)

namespace {

fs::path hparams_dir() { return fs::path(ENGRAM_TEST_DATA) / "hparams"; }

ModelShape shape(const char* family, int64_t n_layer, int64_t n_embd) { return {family, n_layer, n_embd, 4 * n_embd}; }
const ModelShape kGpt2Xl = shape("gpt2", 48, 1600);
const ModelShape kGptj = shape("gptj", 28, 4096);
const ModelShape kLlama3 = shape("llama", 32, 4096);
const ModelShape kDemo = shape("gpt2", 6, 128);

const EditMethod kAllMethods[] = {EditMethod::Rome,      EditMethod::Memit, EditMethod::MemitSeq,
                                  EditMethod::AlphaEdit, EditMethod::Pmet,  EditMethod::Ft,
                                  EditMethod::Grace,     EditMethod::Hse};

bool blue_capable(EditMethod m) {
    return m != EditMethod::Rome && m != EditMethod::Ft && m != EditMethod::Grace && m != EditMethod::Hse;
}

std::vector<int> range(int first, int last) {
    std::vector<int> v;
    for (int l = first; l <= last; ++l) v.push_back(l);
    return v;
}

QString str(const std::vector<int>& v) { return QString::fromStdString(json(v).dump()); }

// Runs f, which must throw engram::Error of `kind` whose message holds every one of `parts`.
template <class F>
void expect_error(F&& f, ErrorKind kind, std::initializer_list<std::string> parts) {
    try {
        f();
    } catch (const Error& e) {
        QCOMPARE(int(e.kind()), int(kind));
        for (const std::string& p : parts)
            QVERIFY2(std::string(e.what()).find(p) != std::string::npos,
                     qPrintable(QString("'%1' missing from: %2").arg(QString::fromStdString(p), e.what())));
        return;
    }
    QFAIL("no engram::Error thrown");
}

struct TempFile {
    fs::path path;
    TempFile(const std::string& name, const std::string& text) {
        static int counter = 0;
        path = fs::temp_directory_path() / ("engram-tst-hparams-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(counter++)) / name;
        fs::create_directories(path.parent_path());
        std::ofstream(path) << text;
    }
    ~TempFile() {
        std::error_code ec;
        fs::remove_all(path.parent_path(), ec);
    }
};

// Every field of EditHParams, compared one by one (there is no operator==).
void compare_all(const EditHParams& a, const EditHParams& b) {
    QCOMPARE(int(a.method), int(b.method));
    QCOMPARE(a.blue, b.blue);
    QCOMPARE(a.layers, b.layers);
    QCOMPARE(a.fact_token, b.fact_token);
    QCOMPARE(a.v_num_grad_steps, b.v_num_grad_steps);
    QCOMPARE(a.v_lr, b.v_lr);
    QCOMPARE(a.v_loss_layer, b.v_loss_layer);
    QCOMPARE(a.v_weight_decay, b.v_weight_decay);
    QCOMPARE(a.clamp_norm_factor, b.clamp_norm_factor);
    QCOMPARE(a.kl_factor, b.kl_factor);
    QCOMPARE(a.mom2_adjustment, b.mom2_adjustment);
    QCOMPARE(a.mom2_update_weight, b.mom2_update_weight);
    QCOMPARE(a.mom2_n_samples, b.mom2_n_samples);
    QCOMPARE(a.mom2_dataset, b.mom2_dataset);
    QCOMPARE(a.rrome_fix, b.rrome_fix);
    QCOMPARE(a.context_template_length_params, b.context_template_length_params);
    QCOMPARE(a.context_templates, b.context_templates);
    QCOMPARE(a.seed, b.seed);
    QCOMPARE(a.merge_same_subject, b.merge_same_subject);
    QCOMPARE(a.nullspace_threshold, b.nullspace_threshold);
    QCOMPARE(a.L2, b.L2);
    QCOMPARE(a.nll_loss_factor, b.nll_loss_factor);
    QCOMPARE(a.ft_lr, b.ft_lr);
    QCOMPARE(a.ft_steps, b.ft_steps);
    QCOMPARE(a.ft_norm_constraint, b.ft_norm_constraint);
    QCOMPARE(a.grace_eps, b.grace_eps);
    QCOMPARE(a.grace_edit_lr, b.grace_edit_lr);
    QCOMPARE(a.grace_n_iter, b.grace_n_iter);
    QCOMPARE(a.grace_val_init, b.grace_val_init);
    QCOMPARE(a.grace_eps_expand, b.grace_eps_expand);
    QCOMPARE(a.grace_replacement, b.grace_replacement);
    QCOMPARE(a.forget_factor, b.forget_factor);
    QCOMPARE(a.fisher_factor, b.fisher_factor);
    QCOMPARE(a.hse_fisher_form, b.hse_fisher_form);
    QCOMPARE(a.hse_replay, b.hse_replay);
    QCOMPARE(a.hse_horizon, b.hse_horizon);
    QCOMPARE(a.hse_alpha_schedule, b.hse_alpha_schedule);
    QCOMPARE(a.hse_forget_space, b.hse_forget_space);
    QCOMPARE(a.hse_forget_fallback, b.hse_forget_fallback);
}

}  // namespace

class TestHParams : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void methodNames();

    void referenceDefaults_data();
    void referenceDefaults();
    void demoDefaults();
    void blueOnlyForMemitFamily();
    void scaledDepths();
    void scaledExamples();

    void memitYaml();
    void romeYaml();
    void rromeSwitch();
    void alphaEditBlueJson();
    void ftYaml();
    void fileErrors();

    void settings_data();
    void settings();
    void badSettings_data();
    void badSettings();

    void validation_data();
    void validation();

    void jsonRoundTrip();
    void mergeJsonKeepsAndRejects();
    void graceDefaultsAndFileNames();
};

void TestHParams::methodNames() {
    for (EditMethod m : kAllMethods) {
        const auto back = edit_method_from_name(edit_method_name(m));
        QVERIFY(back.has_value());
        QCOMPARE(int(*back), int(m));
    }
    QCOMPARE(std::string(edit_method_name(EditMethod::MemitSeq)), std::string("memit_seq"));
    QCOMPARE(std::string(edit_method_name(EditMethod::AlphaEdit)), std::string("alphaedit"));
    const std::pair<const char*, EditMethod> spellings[] = {
        {"ROME", EditMethod::Rome},       {"R-ROME", EditMethod::Rome},        {"r-rome", EditMethod::Rome},
        {"MEMIT", EditMethod::Memit},     {"MEMIT_seq", EditMethod::MemitSeq}, {"AlphaEdit", EditMethod::AlphaEdit},
        {"PMET", EditMethod::Pmet},       {"FT", EditMethod::Ft},              {"FT-L", EditMethod::Ft},
    };
    for (const auto& [name, method] : spellings) {
        const auto m = edit_method_from_name(name);
        QVERIFY2(m.has_value(), name);
        QCOMPARE(int(*m), int(method));
    }
    QVERIFY(!edit_method_from_name("KN").has_value());
    QVERIFY(!edit_method_from_name("").has_value());
    QVERIFY(!edit_method_from_name("memitt").has_value());
}

void TestHParams::referenceDefaults_data() {
    QTest::addColumn<QString>("family");
    QTest::addColumn<int>("n_layer");
    QTest::addColumn<EditMethod>("method");
    QTest::addColumn<bool>("blue");
    QTest::addColumn<QString>("layers");
    QTest::addColumn<double>("clamp");
    QTest::addColumn<int>("steps");
    QTest::addColumn<double>("v_lr");
    QTest::addColumn<double>("v_wd");
    QTest::addColumn<bool>("mom2_adjustment");
    QTest::addColumn<double>("lambda");  // checked for the MEMIT family and PMET
    QTest::addColumn<double>("L2");      // checked for AlphaEdit

    const QString x = "gpt2", j = "gptj", l = "llama";
    const EditMethod R = EditMethod::Rome, M = EditMethod::Memit, S = EditMethod::MemitSeq, A = EditMethod::AlphaEdit,
                     P = EditMethod::Pmet;
    // GPT-2 XL: hparams/ROME/gpt2-xl.json, MEMIT, AlphaEdit(-blue), PMET(-blue).
    QTest::newRow("gpt2-xl rome") << x << 48 << R << false << "[17]" << 4.0 << 20 << 0.5 << 0.5 << true << 0.0 << 0.0;
    QTest::newRow("gpt2-xl memit") << x << 48 << M << false << "[13,14,15,16,17]" << 0.75 << 20 << 0.5 << 0.5 << true << 20000.0 << 0.0;
    QTest::newRow("gpt2-xl memit_seq") << x << 48 << S << false << "[13,14,15,16,17]" << 0.75 << 20 << 0.5 << 0.5 << true << 20000.0 << 0.0;
    QTest::newRow("gpt2-xl alphaedit") << x << 48 << A << false << "[13,14,15,16,17]" << 0.75 << 20 << 0.5 << 0.5 << true << 20000.0 << 10.0;
    QTest::newRow("gpt2-xl pmet") << x << 48 << P << false << "[13,14,15,16,17]" << 2.0 << 20 << 0.5 << 0.5 << true << 10000.0 << 0.0;
    QTest::newRow("gpt2-xl memit-blue") << x << 48 << M << true << "[13,17]" << 0.75 << 20 << 0.5 << 0.5 << true << 20000.0 << 0.0;
    QTest::newRow("gpt2-xl alphaedit-blue") << x << 48 << A << true << "[13,17]" << 0.75 << 20 << 0.5 << 0.5 << true << 20000.0 << 80.0;
    QTest::newRow("gpt2-xl pmet-blue") << x << 48 << P << true << "[13,17]" << 2.0 << 20 << 0.5 << 0.5 << true << 10000.0 << 0.0;
    // GPT-J-6B.
    QTest::newRow("gpt-j rome") << j << 28 << R << false << "[5]" << 4.0 << 20 << 0.5 << 0.5 << true << 0.0 << 0.0;
    QTest::newRow("gpt-j memit") << j << 28 << M << false << "[3,4,5,6,7,8]" << 0.75 << 25 << 0.5 << 0.5 << true << 15000.0 << 0.0;
    QTest::newRow("gpt-j alphaedit") << j << 28 << A << false << "[3,4,5,6,7,8]" << 0.75 << 25 << 0.5 << 0.5 << true << 15000.0 << 10.0;
    QTest::newRow("gpt-j pmet") << j << 28 << P << false << "[3,4,5,6,7,8]" << 0.75 << 25 << 0.5 << 0.5 << true << 15000.0 << 0.0;
    QTest::newRow("gpt-j memit_seq-blue") << j << 28 << S << true << "[3,8]" << 0.75 << 25 << 0.5 << 0.5 << true << 15000.0 << 0.0;
    QTest::newRow("gpt-j alphaedit-blue") << j << 28 << A << true << "[3,8]" << 0.75 << 25 << 0.5 << 0.5 << true << 15000.0 << 95.0;
    // Llama-3-8B: ROME without C^-1 and v_wd 1e-3; the MEMIT family with v_lr 0.1.
    QTest::newRow("llama3 rome") << l << 32 << R << false << "[5]" << 4.0 << 25 << 0.5 << 1e-3 << false << 0.0 << 0.0;
    QTest::newRow("llama3 memit") << l << 32 << M << false << "[4,5,6,7,8]" << 0.75 << 25 << 0.1 << 0.5 << true << 15000.0 << 0.0;
    QTest::newRow("llama3 alphaedit") << l << 32 << A << false << "[4,5,6,7,8]" << 0.75 << 25 << 0.1 << 0.5 << true << 15000.0 << 10.0;
    QTest::newRow("llama3 memit-blue") << l << 32 << M << true << "[4,8]" << 0.75 << 25 << 0.1 << 0.5 << true << 15000.0 << 0.0;
    QTest::newRow("llama3 alphaedit-blue") << l << 32 << A << true << "[4,8]" << 0.75 << 25 << 0.1 << 0.5 << true << 15000.0 << 1.0;
}

void TestHParams::referenceDefaults() {
    QFETCH(QString, family);
    QFETCH(int, n_layer);
    QFETCH(EditMethod, method);
    QFETCH(bool, blue);
    QFETCH(QString, layers);
    QFETCH(double, clamp);
    QFETCH(int, steps);
    QFETCH(double, v_lr);
    QFETCH(double, v_wd);
    QFETCH(bool, mom2_adjustment);
    QFETCH(double, lambda);
    QFETCH(double, L2);

    const ModelShape s = shape(family.toStdString().c_str(), n_layer, 4096);
    const EditHParams hp = default_edit_hparams(s, method, blue);
    QCOMPARE(int(hp.method), int(method));
    QCOMPARE(hp.blue, blue);
    QCOMPARE(str(hp.layers), layers);
    QCOMPARE(hp.clamp_norm_factor, clamp);
    QCOMPARE(hp.v_num_grad_steps, steps);
    QCOMPARE(hp.v_lr, v_lr);
    QCOMPARE(hp.v_weight_decay, v_wd);
    QCOMPARE(hp.mom2_adjustment, mom2_adjustment);
    QCOMPARE(hp.kl_factor, 0.0625);
    QCOMPARE(hp.v_loss_layer, n_layer - 1);
    QCOMPARE(hp.mom2_n_samples, int64_t(100000));
    QCOMPARE(hp.fact_token, std::string("subject_last"));
    if (method != EditMethod::Rome) QCOMPARE(hp.mom2_update_weight, lambda);
    if (method == EditMethod::AlphaEdit) {
        QCOMPARE(hp.L2, L2);
        QCOMPARE(hp.nullspace_threshold, 2e-2);
    }
    validate_edit_hparams(hp, s);  // the reference values are valid for their model
}

void TestHParams::demoDefaults() {
    const EditHParams rome = default_edit_hparams(kDemo, EditMethod::Rome, false);
    QCOMPARE(rome.layers, std::vector<int>{0});
    QCOMPARE(rome.clamp_norm_factor, 4.0);
    QCOMPARE(rome.v_num_grad_steps, 40);
    QCOMPARE(rome.v_lr, 2.0);
    QCOMPARE(rome.v_loss_layer, 5);
    QCOMPARE(rome.mom2_n_samples, int64_t(100000));
    for (EditMethod m : {EditMethod::Memit, EditMethod::MemitSeq, EditMethod::AlphaEdit, EditMethod::Pmet}) {
        const EditHParams hp = default_edit_hparams(kDemo, m, false);
        QCOMPARE(hp.layers, (std::vector<int>{0, 1, 2}));
        QCOMPARE(hp.clamp_norm_factor, 4.0);
        QCOMPARE(hp.v_num_grad_steps, 40);
        QCOMPARE(hp.v_lr, m == EditMethod::Pmet ? 0.5 : 1.0);  // PMET keeps 0.5 (not re-tuned on the current world)
        QCOMPARE(hp.mom2_update_weight, 50.0);
        QCOMPARE(hp.L2, 3.0);
        QCOMPARE(hp.nullspace_threshold, 2e-2);
        QCOMPARE(default_edit_hparams(kDemo, m, true).layers, (std::vector<int>{0, 2}));
    }
    const EditHParams ft = default_edit_hparams(kDemo, EditMethod::Ft, false);
    QCOMPARE(ft.layers, std::vector<int>{0});
    QCOMPARE(ft.ft_lr, 5e-4);
    QCOMPARE(ft.ft_steps, 25);
    QCOMPARE(ft.ft_norm_constraint, 5e-4);
    // The demo row is for the 128-wide model only: another 6-layer GPT-2 (distilgpt2, 768 wide) gets
    // GPT-2 XL's layers moved to the same relative depth (17 of 48 -> 2 of 6).
    QCOMPARE(default_edit_hparams(shape("gpt2", 6, 768), EditMethod::Rome, false).layers, std::vector<int>{2});
}

void TestHParams::blueOnlyForMemitFamily() {
    expect_error([] { default_edit_hparams(kGpt2Xl, EditMethod::Rome, true); }, ErrorKind::Argument, {"blue", "rome"});
    expect_error([] { default_edit_hparams(kGpt2Xl, EditMethod::Ft, true); }, ErrorKind::Argument, {"blue", "ft"});
    expect_error([] { default_edit_hparams(shape("gpt2", 0, 8), EditMethod::Rome, false); }, ErrorKind::Argument,
                 {"n_layer"});
}

// Every depth from 1 to 100 in every family (and one without rows): layers in range, ascending and
// distinct, v_loss_layer the last layer, BLUE the two ends of the band, and the result valid.
void TestHParams::scaledDepths() {
    for (const char* family : {"gpt2", "gptj", "llama", "vit"})
        for (int64_t n = 1; n <= 100; ++n)
            for (EditMethod m : kAllMethods)
                for (bool blue : {false, true}) {
                    if (blue && !blue_capable(m)) continue;
                    const ModelShape s = shape(family, n, 256);
                    const EditHParams hp = default_edit_hparams(s, m, blue);
                    const QString what = QString("%1 %2 layers %3 blue=%4")
                                             .arg(family)
                                             .arg(n)
                                             .arg(edit_method_name(m))
                                             .arg(blue ? "true" : "false");
                    QVERIFY2(!hp.layers.empty(), qPrintable(what));
                    for (size_t i = 0; i < hp.layers.size(); ++i) {
                        QVERIFY2(hp.layers[i] >= 0 && hp.layers[i] < n, qPrintable(what));
                        if (i) QVERIFY2(hp.layers[i] > hp.layers[i - 1], qPrintable(what));
                    }
                    QCOMPARE(hp.v_loss_layer, int(n - 1));
                    if (!blue_capable(m) && m != EditMethod::Hse) QCOMPARE(hp.layers.size(), size_t(1));
                    if (blue && n >= 2) {
                        QCOMPARE(hp.layers.size(), size_t(2));
                        const EditHParams host = default_edit_hparams(s, m, false);
                        QCOMPARE(hp.layers.front(), host.layers.front());
                        QCOMPARE(hp.layers.back(), host.layers.back());
                    }
                    if (blue && n == 1) {  // one layer cannot have two boundaries: validation says so
                        expect_error([&] { validate_edit_hparams(hp, s); }, ErrorKind::Argument, {"layers"});
                        continue;
                    }
                    try {
                        validate_edit_hparams(hp, s);
                    } catch (const Error& e) {
                        QFAIL(qPrintable(what + ": " + e.what()));
                    }
                }
}

void TestHParams::scaledExamples() {
    // GPT-2 small (12 layers) from GPT-2 XL: ROME 17/48 -> 4/12; MEMIT 13..17 -> 3..4.
    const ModelShape small = shape("gpt2", 12, 768);
    QCOMPARE(default_edit_hparams(small, EditMethod::Rome, false).layers, std::vector<int>{4});
    QCOMPARE(default_edit_hparams(small, EditMethod::Memit, false).layers, (std::vector<int>{3, 4}));
    QCOMPARE(default_edit_hparams(small, EditMethod::Memit, false).mom2_update_weight, 20000.0);
    QCOMPARE(default_edit_hparams(small, EditMethod::Pmet, false).clamp_norm_factor, 2.0);
    QCOMPARE(default_edit_hparams(small, EditMethod::AlphaEdit, true).L2, 80.0);
    // Llama-2-70B-like depth from Llama-3-8B: the band 4..8 of 32 becomes 11..21 of 80, values kept.
    const EditHParams deep = default_edit_hparams(shape("llama", 80, 8192), EditMethod::Memit, false);
    QCOMPARE(deep.layers, range(11, 21));
    QCOMPARE(deep.v_lr, 0.1);
    QCOMPARE(deep.v_loss_layer, 79);
    QCOMPARE(default_edit_hparams(shape("llama", 80, 8192), EditMethod::Rome, false).mom2_adjustment, false);
    // A family without rows scales GPT-2 XL's: a 12-layer ViT gets GPT-2 small's layers.
    QCOMPARE(default_edit_hparams(shape("vit", 12, 768), EditMethod::Memit, false).layers, (std::vector<int>{3, 4}));
    // Two layers keep two, for BLUE.
    QCOMPARE(default_edit_hparams(shape("gpt2", 2, 64), EditMethod::AlphaEdit, true).layers, (std::vector<int>{0, 1}));
}

void TestHParams::memitYaml() {
    // Start from the demo's values so that every checked value has to come from the file.
    EditHParams hp = default_edit_hparams(kDemo, EditMethod::Memit, false);
    hp.v_lr = 0.125;
    hp.mom2_n_samples = 7;
    apply_hparams_file(hp, hparams_dir() / "memit-gpt2-xl.yaml");
    QCOMPARE(hp.layers, range(13, 17));
    QCOMPARE(hp.v_lr, 0.5);  // written 5e-1
    QCOMPARE(hp.clamp_norm_factor, 0.75);
    QCOMPARE(hp.v_loss_layer, 47);
    QCOMPARE(hp.mom2_update_weight, 20000.0);
    QCOMPARE(hp.mom2_n_samples, int64_t(100000));
    QCOMPARE(hp.mom2_dataset, std::string("wikipedia"));
    QCOMPARE(hp.v_num_grad_steps, 20);
    validate_edit_hparams(hp, kGpt2Xl);
    // The file is GPT-2 XL's: its layers do not exist in the demo model.
    expect_error([&] { validate_edit_hparams(hp, kDemo); }, ErrorKind::Argument, {"layers", "13"});

    // The same file serves MEMIT_seq, which reads MEMIT's hparams.
    EditHParams seq = default_edit_hparams(kDemo, EditMethod::MemitSeq, false);
    apply_hparams_file(seq, hparams_dir() / "memit-gpt2-xl");  // ".yaml" appended, as EasyEdit does
    QCOMPARE(seq.layers, range(13, 17));
    QCOMPARE(int(seq.method), int(EditMethod::MemitSeq));

    // ... but not ROME.
    EditHParams rome = default_edit_hparams(kGpt2Xl, EditMethod::Rome, false);
    expect_error([&] { apply_hparams_file(rome, hparams_dir() / "memit-gpt2-xl.yaml"); }, ErrorKind::Format,
                 {"alg_name", "hparams file is for MEMIT but the method is rome", "memit-gpt2-xl.yaml"});
    QCOMPARE(rome.layers, std::vector<int>{17});  // untouched by the failed load
}

void TestHParams::romeYaml() {
    EditHParams hp = default_edit_hparams(kGpt2Xl, EditMethod::Rome, false);
    QVERIFY(hp.mom2_adjustment);
    hp.v_lr = 0.125;
    hp.context_template_length_params = {{3, 2}};
    apply_hparams_file(hp, hparams_dir() / "rome-gpt2-xl.yaml");
    QCOMPARE(hp.mom2_adjustment, false);
    QCOMPARE(hp.v_lr, 0.5);  // written "5e-1", a quoted string
    QCOMPARE(hp.layers, std::vector<int>{17});
    QCOMPARE(hp.clamp_norm_factor, 4.0);
    QCOMPARE(hp.context_template_length_params, (std::vector<std::vector<int>>{{5, 10}, {10, 10}}));
    validate_edit_hparams(hp, kGpt2Xl);

    EditHParams memit = default_edit_hparams(kGpt2Xl, EditMethod::Memit, false);
    expect_error([&] { apply_hparams_file(memit, hparams_dir() / "rome-gpt2-xl.yaml"); }, ErrorKind::Format,
                 {"hparams file is for ROME but the method is memit", "rome-gpt2-xl.yaml"});
}

void TestHParams::rromeSwitch() {
    EditHParams hp = default_edit_hparams(kGpt2Xl, EditMethod::Rome, false);
    hp.rrome_fix = false;
    TempFile rrome("r-rome.yaml", "alg_name: \"R-ROME\"\nlayers: [17]\n");
    apply_hparams_file(hp, rrome.path);
    QVERIFY(hp.rrome_fix);  // R-ROME means the fix
    TempFile off("r-rome-off.yaml", "alg_name: R-ROME\nenable_random_prefix_keys: false\n");
    apply_hparams_file(hp, off.path);
    QVERIFY(!hp.rrome_fix);
    TempFile on("on.yaml", "enable_random_prefix_keys: true\n");
    apply_hparams_file(hp, on.path);
    QVERIFY(hp.rrome_fix);
}

void TestHParams::alphaEditBlueJson() {
    EditHParams hp = default_edit_hparams(kGpt2Xl, EditMethod::AlphaEdit, false);
    QCOMPARE(hp.L2, 10.0);
    QVERIFY(!hp.blue);
    hp.nullspace_threshold = 0.5;
    apply_hparams_file(hp, hparams_dir() / "alphaedit-gpt2-xl-blue.json");
    QVERIFY(hp.blue);
    QCOMPARE(hp.L2, 80.0);
    QCOMPARE(hp.layers, (std::vector<int>{13, 17}));
    QCOMPARE(hp.nullspace_threshold, 2e-2);
    validate_edit_hparams(hp, kGpt2Xl);
    // The reference JSON and our default agree on everything the file sets.
    EditHParams def = default_edit_hparams(kGpt2Xl, EditMethod::AlphaEdit, true);
    def.mom2_dataset = "wikipedia";  // our default is the model's own corpus
    compare_all(hp, def);
}

void TestHParams::ftYaml() {
    EditHParams hp = default_edit_hparams(kGpt2Xl, EditMethod::Ft, false);
    QCOMPARE(hp.layers, std::vector<int>{17});
    hp.ft_lr = 1.0;
    hp.ft_steps = 3;
    hp.ft_norm_constraint = 1.0;
    apply_hparams_file(hp, hparams_dir() / "ft-gpt2-xl.yaml");
    QCOMPARE(hp.layers, std::vector<int>{0});
    QCOMPARE(hp.ft_lr, 5e-4);
    QCOMPARE(hp.ft_steps, 25);
    QCOMPARE(hp.ft_norm_constraint, 5e-4);
    QCOMPARE(hp.kl_factor, 0.0);

    TempFile unconstrained("ft.yaml", "alg_name: FT\nnorm_constraint: false\n");
    expect_error([&] { apply_hparams_file(hp, unconstrained.path); }, ErrorKind::Format, {"norm_constraint"});
    TempFile ftm("ftm.yaml", "alg_name: FT\nobjective_optimization: target_new\n");
    expect_error([&] { apply_hparams_file(hp, ftm.path); }, ErrorKind::Format, {"objective_optimization"});
    TempFile decay("decay.yaml", "alg_name: FT\nweight_decay: 0.01\n");
    expect_error([&] { apply_hparams_file(hp, decay.path); }, ErrorKind::Format, {"weight_decay"});
}

void TestHParams::fileErrors() {
    EditHParams hp = default_edit_hparams(kGpt2Xl, EditMethod::Memit, false);
    const EditHParams before = hp;

    TempFile unknown("unknown.yaml", "alg_name: MEMIT\nlayers: [1]\nclamp_norm_factr: 0.5\n");
    expect_error([&] { apply_hparams_file(hp, unknown.path); }, ErrorKind::Format, {"clamp_norm_factr", "unknown.yaml"});
    compare_all(hp, before);  // a failed load changes nothing, not even the keys before the bad one

    TempFile wrong_type("wrong.yaml", "layers: thirteen\n");
    expect_error([&] { apply_hparams_file(hp, wrong_type.path); }, ErrorKind::Format, {"layers", "wrong.yaml"});
    TempFile fractional("fractional.yaml", "v_num_grad_steps: 2.5\n");
    expect_error([&] { apply_hparams_file(hp, fractional.path); }, ErrorKind::Format, {"v_num_grad_steps"});
    TempFile not_a_number("nan.json", "{\"v_lr\": \"fast\"}");
    expect_error([&] { apply_hparams_file(hp, not_a_number.path); }, ErrorKind::Format, {"v_lr", "fast"});
    TempFile other_method("kn.yaml", "alg_name: KN\n");
    expect_error([&] { apply_hparams_file(hp, other_method.path); }, ErrorKind::Format, {"alg_name", "KN"});
    TempFile broken_yaml("broken.yaml", "layers: [13, 14\n");
    expect_error([&] { apply_hparams_file(hp, broken_yaml.path); }, ErrorKind::Format, {"broken.yaml"});
    TempFile broken_json("broken.json", "{\"layers\": [13,}");
    expect_error([&] { apply_hparams_file(hp, broken_json.path); }, ErrorKind::Format, {"broken.json"});
    TempFile list("list.yaml", "- 1\n- 2\n");
    expect_error([&] { apply_hparams_file(hp, list.path); }, ErrorKind::Format, {"list.yaml"});
    expect_error([&] { apply_hparams_file(hp, hparams_dir() / "no-such-file.yaml"); }, ErrorKind::Io, {"no-such-file"});
    // A value that is not UTF-8 in a key the error names: found by fuzz_hparams, it threw nlohmann's
    // type_error past the reader; now a clear error like any other bad value.
    TempFile not_utf8("latin1.yaml", "alg_name: MEMIT\nv_lr: \"caf\xe9\"\n");
    expect_error([&] { apply_hparams_file(hp, not_utf8.path); }, ErrorKind::Format, {"v_lr"});
    for (EditMethod m : {EditMethod::Rome, EditMethod::Memit, EditMethod::AlphaEdit, EditMethod::Ft}) {
        EditHParams other = default_edit_hparams(kGpt2Xl, m, false);
        const fs::path crash = fs::path(ENGRAM_TEST_DATA) / ".." / "fuzz" / "crashes" / "hparams-invalid-utf8-in-error";
        QVERIFY(fs::exists(crash));
        try {
            apply_hparams_file(other, crash);
        } catch (const Error&) {
        }  // an engram::Error or success; anything else fails the test
    }
    compare_all(hp, before);

    // Numbers as YAML spells them: 1e5 for an integer, 2e-2, a quoted "1e-3", layers as one number;
    // a quoted number where a string belongs stays a string.
    TempFile numbers("numbers.yml", "mom2_n_samples: 1e5\nnullspace_threshold: 2e-2\nv_weight_decay: \"1e-3\"\n"
                                    "layers: 15\nseed: 42\nmom2_dataset: '2024'\n");
    hp.mom2_n_samples = 1;
    apply_hparams_file(hp, numbers.path);
    QCOMPARE(hp.mom2_n_samples, int64_t(100000));
    QCOMPARE(hp.nullspace_threshold, 2e-2);
    QCOMPARE(hp.v_weight_decay, 1e-3);
    QCOMPARE(hp.layers, std::vector<int>{15});
    QCOMPARE(hp.seed, uint64_t(42));
    QCOMPARE(hp.mom2_dataset, std::string("2024"));  // quoted: a string, not a number
}

void TestHParams::settings_data() {
    QTest::addColumn<QString>("setting");
    QTest::addColumn<QString>("key");
    QTest::addColumn<QString>("expected");  // the key's value in to_json(), as JSON

    QTest::newRow("list json") << "layers=[1,2]" << "layers" << "[1,2]";
    QTest::newRow("list commas") << "layers=3,4,5" << "layers" << "[3,4,5]";
    QTest::newRow("list spaces") << " layers = 3, 4 " << "layers" << "[3,4]";
    QTest::newRow("list one") << "layers=7" << "layers" << "[7]";
    QTest::newRow("double sci") << "v_lr=5e-1" << "v_lr" << "0.5";
    QTest::newRow("double") << "clamp_norm_factor=0.25" << "clamp_norm_factor" << "0.25";
    QTest::newRow("double from int") << "L2=80" << "L2" << "80.0";
    QTest::newRow("int") << "v_num_grad_steps=7" << "v_num_grad_steps" << "7";
    QTest::newRow("int64 sci") << "mom2_n_samples=1e4" << "mom2_n_samples" << "10000";
    QTest::newRow("uint64 max") << "seed=18446744073709551615" << "seed" << "18446744073709551615";
    QTest::newRow("negative") << "v_loss_layer=-1" << "v_loss_layer" << "-1";
    QTest::newRow("bool false") << "mom2_adjustment=false" << "mom2_adjustment" << "false";
    QTest::newRow("bool 0") << "mom2_adjustment=0" << "mom2_adjustment" << "false";
    QTest::newRow("bool 1") << "blue=1" << "blue" << "true";
    QTest::newRow("bool true") << "rrome_fix=true" << "rrome_fix" << "true";
    QTest::newRow("string") << "fact_token=last" << "fact_token" << "\"last\"";
    QTest::newRow("string path") << "mom2_dataset=/data/wiki 1.txt" << "mom2_dataset" << "\"/data/wiki 1.txt\"";
    QTest::newRow("string json") << "mom2_dataset=\"a=b\"" << "mom2_dataset" << "\"a=b\"";
    QTest::newRow("string number") << "mom2_dataset=123" << "mom2_dataset" << "\"123\"";
    QTest::newRow("string empty") << "mom2_dataset=" << "mom2_dataset" << "\"\"";
    QTest::newRow("pairs") << "context_template_length_params=[[5,10]]" << "context_template_length_params" << "[[5,10]]";
    QTest::newRow("templates nested") << R"(context_templates=[["{}"],["A. {}","B. {}"]])" << "context_templates"
                                      << R"([["{}"],["A. {}","B. {}"]])";
    QTest::newRow("templates flat") << R"(context_templates=["{}","The. {}"])" << "context_templates"
                                    << R"([["{}","The. {}"]])";
    QTest::newRow("templates none") << "context_templates=[]" << "context_templates" << "[]";
}

void TestHParams::settings() {
    QFETCH(QString, setting);
    QFETCH(QString, key);
    QFETCH(QString, expected);
    EditHParams hp = default_edit_hparams(kGpt2Xl, EditMethod::Memit, false);
    const json before = hp.to_json();
    apply_hparam_setting(hp, setting.toStdString());
    const json after = hp.to_json();
    const json want = json::parse(expected.toStdString());
    QCOMPARE(QString::fromStdString(after.at(key.toStdString()).dump()), QString::fromStdString(want.dump()));
    for (const auto& [k, v] : before.items())  // nothing else moved
        if (k != key.toStdString()) QVERIFY2(after.at(k) == v, k.c_str());
}

void TestHParams::badSettings_data() {
    QTest::addColumn<QString>("setting");
    QTest::addColumn<QString>("named");  // what the message must name

    QTest::newRow("unknown key") << "v_learning_rate=0.1" << "v_learning_rate";
    QTest::newRow("no equals") << "v_lr" << "v_lr";
    QTest::newRow("method") << "method=memit" << "method";
    QTest::newRow("bad double") << "v_lr=fast" << "v_lr";
    QTest::newRow("empty double") << "v_lr=" << "v_lr";
    QTest::newRow("bad list") << "layers=a,b" << "layers";
    QTest::newRow("fractional list") << "layers=1.5,2" << "layers";
    QTest::newRow("bad bool") << "blue=maybe" << "blue";
    QTest::newRow("bool 2") << "blue=2" << "blue";
    QTest::newRow("fractional int") << "v_num_grad_steps=2.5" << "v_num_grad_steps";
    QTest::newRow("int overflow") << "v_num_grad_steps=99999999999" << "v_num_grad_steps";
    QTest::newRow("negative seed") << "seed=-1" << "seed";
    QTest::newRow("templates of numbers") << "context_templates=[[1]]" << "context_templates";
    QTest::newRow("pairs flat") << "context_template_length_params=[5,10]" << "context_template_length_params";
}

void TestHParams::badSettings() {
    QFETCH(QString, setting);
    QFETCH(QString, named);
    EditHParams hp = default_edit_hparams(kGpt2Xl, EditMethod::Memit, false);
    const EditHParams before = hp;
    expect_error([&] { apply_hparam_setting(hp, setting.toStdString()); }, ErrorKind::Argument, {named.toStdString()});
    compare_all(hp, before);
}

void TestHParams::validation_data() {
    QTest::addColumn<EditMethod>("method");
    QTest::addColumn<bool>("blue");
    QTest::addColumn<QString>("setting");  // applied to GPT-2 XL's defaults, then validated
    QTest::addColumn<QString>("named");

    const EditMethod R = EditMethod::Rome, M = EditMethod::Memit, A = EditMethod::AlphaEdit;
    QTest::newRow("layer out of range") << M << false << "layers=13,48" << "layers";
    QTest::newRow("negative layer") << M << false << "layers=-1,13" << "layers";
    QTest::newRow("no layers") << M << false << "layers=[]" << "layers";
    QTest::newRow("descending") << M << false << "layers=17,13" << "layers";
    QTest::newRow("repeated") << M << false << "layers=13,13" << "layers";
    QTest::newRow("rome two layers") << R << false << "layers=16,17" << "layers";
    QTest::newRow("blue three layers") << A << true << "layers=13,15,17" << "layers";
    QTest::newRow("blue one layer") << M << true << "layers=13" << "layers";
    QTest::newRow("blue on rome") << R << false << "blue=true" << "blue";
    QTest::newRow("template without {}") << M << false << R"(context_templates=["{}","The cat."])" << "context_templates";
    QTest::newRow("template with two {}") << M << false << R"(context_templates=["{} and {}"])" << "context_templates";
    QTest::newRow("template with a stray brace") << M << false << R"(context_templates=["{x} {}"])" << "context_templates";
    QTest::newRow("empty template group") << M << false << R"(context_templates=[["{}"],[]])" << "context_templates";
    QTest::newRow("length params") << R << false << "context_template_length_params=[[5,10],[10]]"
                                   << "context_template_length_params";
    QTest::newRow("fact_token") << M << false << "fact_token=subject_middle" << "fact_token";
    QTest::newRow("steps") << M << false << "v_num_grad_steps=0" << "v_num_grad_steps";
    QTest::newRow("v_lr") << M << false << "v_lr=0" << "v_lr";
    QTest::newRow("v_loss_layer") << M << false << "v_loss_layer=48" << "v_loss_layer";
    QTest::newRow("v_loss_layer -2") << M << false << "v_loss_layer=-2" << "v_loss_layer";
    QTest::newRow("clamp") << M << false << "clamp_norm_factor=0" << "clamp_norm_factor";
    QTest::newRow("kl") << M << false << "kl_factor=-0.1" << "kl_factor";
    QTest::newRow("v_weight_decay") << M << false << "v_weight_decay=-1" << "v_weight_decay";
    QTest::newRow("L2") << A << false << "L2=-1" << "L2";
    QTest::newRow("mom2_n_samples") << M << false << "mom2_n_samples=0" << "mom2_n_samples";
    QTest::newRow("lambda") << M << false << "mom2_update_weight=-5" << "mom2_update_weight";
    QTest::newRow("ft_lr") << EditMethod::Ft << false << "ft_lr=0" << "ft_lr";
    QTest::newRow("ft_steps") << EditMethod::Ft << false << "ft_steps=0" << "ft_steps";
}

void TestHParams::validation() {
    QFETCH(EditMethod, method);
    QFETCH(bool, blue);
    QFETCH(QString, setting);
    QFETCH(QString, named);
    EditHParams hp = default_edit_hparams(kGpt2Xl, method, blue);
    validate_edit_hparams(hp, kGpt2Xl);  // valid before the one change
    apply_hparam_setting(hp, setting.toStdString());
    expect_error([&] { validate_edit_hparams(hp, kGpt2Xl); }, ErrorKind::Argument, {named.toStdString() + ":"});
}

void TestHParams::jsonRoundTrip() {
    // Every field away from both the struct's and the table's defaults.
    EditHParams hp;
    hp.method = EditMethod::Pmet;
    hp.blue = true;
    hp.layers = {2, 9};
    hp.fact_token = "subject_first";
    hp.v_num_grad_steps = 33;
    hp.v_lr = 0.123456789012345;
    hp.v_loss_layer = 11;
    hp.v_weight_decay = 1e-3;
    hp.clamp_norm_factor = 1.5;
    hp.kl_factor = 0.3;
    hp.mom2_adjustment = false;
    hp.mom2_update_weight = 6000;
    hp.mom2_n_samples = 1234567890123;
    hp.mom2_dataset = "corpus/wiki.jsonl";
    hp.rrome_fix = false;
    hp.context_template_length_params = {{3, 4}};
    hp.context_templates = {{"{}"}, {"Once. {}", "Twice \"quoted\". {}"}};
    hp.seed = 0xFFFFFFFFFFFFFFF0ull;
    hp.merge_same_subject = true;
    hp.nullspace_threshold = 3e-3;
    hp.L2 = 95;
    hp.nll_loss_factor = 0.1;
    hp.ft_lr = 1e-5;
    hp.ft_steps = 9;
    hp.ft_norm_constraint = 1e-3;
    hp.grace_eps = 3.5;
    hp.grace_edit_lr = 0.25;
    hp.grace_n_iter = 7;
    hp.grace_val_init = "warm";
    hp.grace_eps_expand = "moving_average";
    hp.grace_replacement = "all";
    hp.forget_factor = 0.4;
    hp.fisher_factor = 0.5;
    hp.hse_fisher_form = "score";
    hp.hse_replay = false;
    hp.hse_horizon = 12;
    hp.hse_alpha_schedule = "linear";
    hp.hse_forget_space = false;
    hp.hse_forget_fallback = "none";

    const json j = hp.to_json();
    // The keys are the struct's field names, method as its name.
    const std::vector<std::string> keys = {
        "method", "blue", "layers", "fact_token", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay",
        "clamp_norm_factor", "kl_factor", "mom2_adjustment", "mom2_update_weight", "mom2_n_samples", "mom2_dataset",
        "rrome_fix", "context_template_length_params", "context_templates", "seed", "merge_same_subject", "nullspace_threshold", "L2",
        "nll_loss_factor", "ft_lr", "ft_steps", "ft_norm_constraint", "grace_eps", "grace_edit_lr", "grace_n_iter", "grace_val_init",
        "grace_eps_expand", "grace_replacement", "forget_factor", "fisher_factor", "hse_fisher_form", "hse_replay", "hse_horizon",
        "hse_alpha_schedule", "hse_forget_space", "hse_forget_fallback"};
    QCOMPARE(j.size(), keys.size());
    for (const auto& k : keys) QVERIFY2(j.contains(k), k.c_str());
    QCOMPARE(j.at("method").get<std::string>(), std::string("pmet"));

    // Through text, as the edit store keeps it.
    EditHParams back;
    back.merge_json(json::parse(j.dump()));
    compare_all(back, hp);
    QVERIFY(back.to_json() == j);

    // Every default round-trips too.
    for (const ModelShape& s : {kGpt2Xl, kGptj, kLlama3, kDemo})
        for (EditMethod m : kAllMethods) {
            const EditHParams d = default_edit_hparams(s, m, false);
            EditHParams r = hp;  // start elsewhere: every key must be read
            r.merge_json(json::parse(d.to_json().dump()));
            compare_all(r, d);
        }
}

void TestHParams::mergeJsonKeepsAndRejects() {
    EditHParams hp = default_edit_hparams(kLlama3, EditMethod::AlphaEdit, true);
    const EditHParams before = hp;
    hp.merge_json(json{{"v_lr", 0.2}, {"some_future_key", 1}});
    QCOMPARE(hp.v_lr, 0.2);
    QCOMPARE(hp.layers, before.layers);  // missing keys keep their values
    QCOMPARE(hp.L2, 1.0);
    hp.merge_json(json::object());
    QCOMPARE(hp.v_lr, 0.2);

    const EditHParams kept = hp;
    expect_error([&] { hp.merge_json(json{{"v_lr", 0.3}, {"layers", "4,8"}}); }, ErrorKind::Format, {"layers"});
    expect_error([&] { hp.merge_json(json{{"v_lr", "0.5"}}); }, ErrorKind::Format, {"v_lr"});  // stored JSON is typed
    expect_error([&] { hp.merge_json(json{{"mom2_adjustment", 1}}); }, ErrorKind::Format, {"mom2_adjustment"});
    expect_error([&] { hp.merge_json(json{{"method", "kn"}}); }, ErrorKind::Format, {"method"});
    expect_error([&] { hp.merge_json(json{{"seed", -3}}); }, ErrorKind::Format, {"seed"});
    expect_error([&] { hp.merge_json(json::array()); }, ErrorKind::Format, {"object"});
    compare_all(hp, kept);  // a failed merge leaves the value as it was
}

QTEST_APPLESS_MAIN(TestHParams)
#include "tst_hparams.moc"

// GRACE's reference rows (EasyEdit's GRACE hparams: GPT-2 XL and GPT-J layer 35 / 25 with 200
// steps, Llama layer 27 with 50), the demo row, and EasyEdit's key names in a file.
void TestHParams::graceDefaultsAndFileNames() {
    const std::tuple<ModelShape, int, int> rows[] = {{kGpt2Xl, 35, 200}, {kGptj, 25, 200}, {kLlama3, 27, 50}, {kDemo, 4, 100}};
    for (const auto& [shape, layer, steps] : rows) {
        const EditHParams hp = default_edit_hparams(shape, EditMethod::Grace, false);
        QCOMPARE(hp.layers, std::vector<int>{layer});
        QCOMPARE(hp.grace_n_iter, steps);
        QCOMPARE(hp.grace_eps, 1.0);
        QCOMPARE(hp.grace_edit_lr, 1.0);
        QCOMPARE(hp.grace_val_init, std::string("cold"));
        QCOMPARE(hp.grace_replacement, std::string("last"));
    }
    // EasyEdit's key names; dist_fn (only Euclidean distances exist here) is refused, naming it.
    const std::string keys = "alg_name: GRACE\nedit_lr: 0.5\nn_iter: 12\neps: 3.0\nval_init: warm\neps_expand: moving_average\n"
                             "replacement: replace_all\n";
    EditHParams hp = default_edit_hparams(kDemo, EditMethod::Grace, false);
    {
        TempFile bad("grace.yaml", keys + "dist_fn: cos\n");
        try {
            apply_hparams_file(hp, bad.path);
            QFAIL("dist_fn accepted");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("dist_fn") != std::string::npos, e.what());
        }
    }
    TempFile file("grace.yaml", keys);
    hp = default_edit_hparams(kDemo, EditMethod::Grace, false);
    apply_hparams_file(hp, file.path);
    QCOMPARE(hp.grace_edit_lr, 0.5);
    QCOMPARE(hp.grace_n_iter, 12);
    QCOMPARE(hp.grace_eps, 3.0);
    QCOMPARE(hp.grace_val_init, std::string("warm"));
    QCOMPARE(hp.grace_eps_expand, std::string("moving_average"));
    QCOMPARE(hp.grace_replacement, std::string("replace_all"));
    validate_edit_hparams(hp, kDemo);
}
