// engram-cli end to end: the command contract that later issues and tools depend on, checked by
// running the real binary. Outputs are compared against the reference fixtures or against the core
// library computing the same thing in-process.
#include <QtTest>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <fstream>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include "engram/checkpoint.h"
#include "engram/model.h"
#include "engram/tokenizer.h"
#include "test_util.h"

using namespace engram;
using engram::test::data_dir;
using engram::test::max_abs_diff;
using engram::test::reference_dir;
using engram::test::TempDir;
using engram::test::cli;
using engram::test::q;
using engram::test::Run;
namespace fs = std::filesystem;

namespace {

// gpt2-tiny (vocab 1000) plus a WordLevel tokenizer over the words w0..w999.
fs::path model_with_tokenizer(const TempDir& tmp) {
    fs::path dir = tmp.path / "gpt2-words";
    fs::create_directories(dir);
    for (const char* f : {"config.json", "model.safetensors"}) fs::copy(reference_dir("gpt2-tiny") / f, dir / f);
    nlohmann::json vocab = nlohmann::json::object();
    for (int i = 0; i < 1000; ++i) vocab["w" + std::to_string(i)] = i;
    nlohmann::json tok = {{"version", "1.0"},
                          {"added_tokens", nlohmann::json::array()},
                          {"normalizer", nullptr},
                          {"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
                          {"post_processor", nullptr},
                          {"decoder", nullptr},
                          {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "w0"}}}};
    std::ofstream(dir / "tokenizer.json") << tok.dump();
    return dir;
}

void write_png(const fs::path& path, int w, int h, uint8_t seed) {
    std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3);
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>((i * 37 + seed * 11) % 251);
    QVERIFY(stbi_write_png(path.c_str(), w, h, 3, px.data(), w * 3) != 0);
}

}  // namespace

class TestCli : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void infoJson();
    void forwardMatchesReference_data();
    void forwardMatchesReference();
    void tokenizeMatchesGoldens();
    void predictMatchesCore();
    void generateExtendsPrompt();
    void classifyImages();
    void classifyTakesSeveralImagesAfterOneOption();
    void errorsAreOneClearLine_data();
    void errorsAreOneClearLine();
    void everyCommandHasHelp();
    void strayArgumentsAreRefused();
    void versionNamesTheCommit();
};

void TestCli::infoJson() {
    Run r = cli({"info", "--model", q(reference_dir("llama-tiny")), "--json"});
    QCOMPARE(r.code, 0);
    QJsonObject j = QJsonDocument::fromJson(r.out).object();
    QCOMPARE(j["architecture"].toString(), QString("LlamaForCausalLM"));
    QCOMPARE(j["stored_dtype"].toString(), QString("F32"));
    QCOMPARE(j["hparams"].toObject()["n_head_kv"].toInt(), 2);
    QCOMPARE(j["parameters"].toInteger(), Model::load(reference_dir("llama-tiny"))->parameter_count());
    QCOMPARE(j["fingerprint"].toString().size(), 64);
    QCOMPARE(j["fingerprint"].toString().toStdString(), checkpoint_fingerprint(Checkpoint::open(reference_dir("llama-tiny")), false));
}

void TestCli::forwardMatchesReference_data() {
    QTest::addColumn<QString>("dir");
    for (const char* d : {"gpt2-tiny", "gptj-tiny", "llama-tiny", "qwen2-tiny-fp16", "vit-tiny"}) QTest::newRow(d) << QString(d);
}

void TestCli::forwardMatchesReference() {
    QFETCH(QString, dir);
    TempDir tmp("cli");
    const fs::path golden_path = reference_dir(dir.toStdString()) / "golden.safetensors";
    const fs::path out = tmp.path / "out.safetensors";
    // The golden file itself is a valid IN: it has input_ids (or pixel_values) and other keys are ignored.
    Run r = cli({"forward", "--model", q(reference_dir(dir.toStdString())), "--inputs", q(golden_path), "--out", q(out)});
    QVERIFY2(r.code == 0, r.err.constData());
    Checkpoint got = Checkpoint::open_file(out), golden = Checkpoint::open_file(golden_path);
    int compared = 0;
    for (const auto& [name, entry] : golden.tensors()) {
        if (name.rfind("padded", 0) == 0 || name == "input_ids" || name == "pixel_values") continue;
        QVERIFY2(got.has(name), name.c_str());
        const double d = max_abs_diff(got.tensor(name), golden.tensor(name));
        QVERIFY2(d <= 1e-4, qPrintable(QString("%1 differs by %2").arg(name.c_str()).arg(d)));
        ++compared;
    }
    QVERIFY(compared >= 7);
}

void TestCli::tokenizeMatchesGoldens() {
    std::ifstream in(data_dir() / "tokenizers" / "tokenizer_goldens.json");
    nlohmann::json goldens = nlohmann::json::parse(in);
    for (size_t i : {0u, 3u, 7u, 10u}) {
        const std::string text = goldens["texts"][i];
        Run r = cli({"tokenize", "--tokenizer", q(data_dir() / "tokenizers" / "tok-gpt2"), "--text", QString::fromStdString(text)});
        QVERIFY2(r.code == 0, r.err.constData());
        QJsonArray ids = QJsonDocument::fromJson(r.out).object()["ids"].toArray();
        const auto& expected = goldens["gpt2"][i];
        QCOMPARE(static_cast<size_t>(ids.size()), expected.size());
        for (int k = 0; k < ids.size(); ++k) QCOMPARE(ids[k].toInteger(), expected[k].get<int64_t>());
    }
}

void TestCli::predictMatchesCore() {
    TempDir tmp("cli");
    fs::path dir = model_with_tokenizer(tmp);
    Run r = cli({"predict", "--model", q(dir), "--prompt", "w5 w17 w300", "--prompt", "w9", "--top-k", "3", "--json"});
    QVERIFY2(r.code == 0, r.err.constData());
    QList<QByteArray> lines = r.out.trimmed().split('\n');
    QCOMPARE(lines.size(), 2);
    QJsonObject first = QJsonDocument::fromJson(lines[0]).object();
    QCOMPARE(first["prompt"].toString(), QString("w5 w17 w300"));
    QJsonArray top = first["top"].toArray();
    QCOMPARE(top.size(), 3);

    c10::InferenceMode guard;
    auto model = Model::load(dir);
    ForwardInput in;
    in.input_ids = at::tensor(std::vector<int64_t>{5, 17, 300}, at::kLong).unsqueeze(0);
    at::Tensor probs = at::softmax(model->forward(in).logits[0][2], -1);
    auto [p, idx] = probs.topk(3);
    for (int k = 0; k < 3; ++k) {
        QCOMPARE(top[k].toObject()["id"].toInteger(), idx[k].item<int64_t>());
        QVERIFY(std::abs(top[k].toObject()["prob"].toDouble() - p[k].item<double>()) < 1e-6);
        QCOMPARE(top[k].toObject()["token"].toString().toStdString(), "w" + std::to_string(idx[k].item<int64_t>()));
    }
}

void TestCli::generateExtendsPrompt() {
    TempDir tmp("cli");
    fs::path dir = model_with_tokenizer(tmp);
    Run r = cli({"generate", "--model", q(dir), "--prompt", "w1 w2 w3", "--max-new-tokens", "5", "--json"});
    QVERIFY2(r.code == 0, r.err.constData());
    QJsonObject j = QJsonDocument::fromJson(r.out).object();
    QCOMPARE(j["ids"].toArray().size(), 5);
    auto model = Model::load(dir);
    std::vector<int64_t> expected = generate(*model, {1, 2, 3}, GenerateOptions{5});
    for (int k = 0; k < 5; ++k) QCOMPARE(j["ids"].toArray()[k].toInteger(), expected[3 + k]);
    // Sampling is reproducible for a seed.
    Run a = cli({"generate", "--model", q(dir), "--prompt", "w1", "--max-new-tokens", "8", "--top-k", "50", "--seed", "3"});
    Run b = cli({"generate", "--model", q(dir), "--prompt", "w1", "--max-new-tokens", "8", "--top-k", "50", "--seed", "3"});
    QCOMPARE(a.code, 0);
    QCOMPARE(a.out, b.out);
}

void TestCli::classifyImages() {
    TempDir tmp("cli");
    const fs::path img = tmp.path / "a.png", big = tmp.path / "big.png";
    write_png(img, 32, 32, 1);
    write_png(big, 64, 48, 2);
    Run r = cli({"classify", "--model", q(reference_dir("vit-tiny")), "--image", q(img), "--image", q(big), "--top-k", "2", "--json"});
    QVERIFY2(r.code == 0, r.err.constData());
    QList<QByteArray> lines = r.out.trimmed().split('\n');
    QCOMPARE(lines.size(), 2);
    QJsonArray top = QJsonDocument::fromJson(lines[0]).object()["top"].toArray();
    QCOMPARE(top.size(), 2);

    // The 32x32 image needs no resizing: pixels / 255, normalised with mean = std = 0.5.
    c10::InferenceMode guard;
    auto model = Model::load(reference_dir("vit-tiny"));
    std::vector<float> px(32 * 32 * 3);
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<float>((i * 37 + 11) % 251);
    at::Tensor x = (at::from_blob(px.data(), {32, 32, 3}).permute({2, 0, 1}).unsqueeze(0) / 255.0 - 0.5) / 0.5;
    ForwardInput in;
    in.pixel_values = x;
    at::Tensor probs = at::softmax(model->forward(in).logits[0], -1);
    auto [p, idx] = probs.topk(2);
    QCOMPARE(top[0].toObject()["id"].toInteger(), idx[0].item<int64_t>());
    QVERIFY(std::abs(top[0].toObject()["prob"].toDouble() - p[0].item<double>()) < 1e-5);
    QCOMPARE(top[0].toObject()["label"].toString().toStdString(), "LABEL_" + std::to_string(idx[0].item<int64_t>()));
}

// `--image a b c` (as the help shows) classifies all three, in order, exactly as three --image options do.
void TestCli::classifyTakesSeveralImagesAfterOneOption() {
    TempDir tmp("cli");
    QStringList images;
    for (int i = 0; i < 3; ++i) {
        const fs::path p = tmp.path / ("img" + std::to_string(i) + ".png");
        write_png(p, 32, 32, uint8_t(10 + i));
        images << q(p);
    }
    const QString vit = q(reference_dir("vit-tiny"));
    Run one = cli(QStringList{"classify", "--model", vit, "--json", "--image"} + images);
    QVERIFY2(one.code == 0, one.err.constData());
    QStringList repeated{"classify", "--model", vit, "--json"};
    for (const QString& i : images) repeated << "--image" << i;
    Run many = cli(repeated);
    QVERIFY2(many.code == 0, many.err.constData());
    const QList<QByteArray> lines = one.out.trimmed().split('\n');
    QCOMPARE(lines.size(), 3);
    for (int i = 0; i < 3; ++i) QCOMPARE(QJsonDocument::fromJson(lines[i]).object()["image"].toString(), images[i]);
    QCOMPARE(one.out, many.out);
    // An option after the images ends the list.
    Run then_topk = cli(QStringList{"classify", "--model", vit, "--json", "--image"} + images + QStringList{"--top-k", "1"});
    QCOMPARE(then_topk.code, 0);
    QCOMPARE(then_topk.out.trimmed().split('\n').size(), 3);
}

// The commands engram-cli dispatches (its own table is not consulted, so a command without a help
// entry or a stray-argument check shows up here).
const QStringList kCommands{"info",   "tokenize", "forward",      "predict",      "generate",       "classify",       "bench",
                            "tour",   "demo",     "trace",        "edit",         "history",        "undo",           "redo",
                            "rollback", "revert", "replay",       "hash",         "export-model",   "export-history", "import-history",
                            "eval",   "stats",    "attribute",    "vit-edit",     "eval-vit"};

void TestCli::everyCommandHasHelp() {
    QStringList names = kCommands;
    names << "bench trace" << "bench edit";
    for (const QString& name : names) {
        QStringList args = name.split(' ');
        args << "--help";
        Run r = cli(args);
        QVERIFY2(r.code == 0, qPrintable(name + ": " + QString::fromUtf8(r.err)));
        const QString out = QString::fromUtf8(r.out);
        QVERIFY2(out.startsWith("engram-cli " + name + ": "), qPrintable(name + ":\n" + out));
        QVERIFY2(out.contains("\nusage: engram-cli " + name), qPrintable(out));
        QVERIFY2(out.contains("\noptions:\n  --"), qPrintable(out));
        QVERIFY2(out.contains("\nexample:\n  engram-cli " + name.split(' ')[0]), qPrintable(out));
        QVERIFY2(r.err.isEmpty(), r.err.constData());
    }
    // -h anywhere after the command, too.
    for (const QString& name : {QStringLiteral("classify"), QStringLiteral("bench trace")}) {
        Run h = cli(QStringList(name.split(' ')) << "--model" << "x" << "-h");
        QCOMPARE(h.code, 0);
        QVERIFY(h.out.startsWith(("engram-cli " + name + ": ").toUtf8()));
    }
    // The top-level usage lists every command.
    Run top = cli({"--help"});
    QCOMPARE(top.code, 0);
    for (const QString& name : kCommands) QVERIFY2(QString::fromUtf8(top.out).contains("\n  " + name + " "), qPrintable(name));
}

// A positional argument that a command does not take is refused with one line naming it, before any
// model loads; nothing is silently dropped. Commands with positional words still take theirs.
void TestCli::strayArgumentsAreRefused() {
    for (const QString& name : kCommands) {
        Run r = cli({name, "stray-word"});
        QVERIFY2(r.code == 2, qPrintable(name + ": exit " + QString::number(r.code) + " " + QString::fromUtf8(r.err)));
        const QString err = QString::fromUtf8(r.err).trimmed();
        QVERIFY2(err.contains("unexpected argument 'stray-word'"), qPrintable(name + ": " + err));
        QVERIFY2(!err.contains('\n'), qPrintable(err));
        QVERIFY2(r.out.isEmpty(), r.out.constData());
    }
    // A second value after a one-value option names the option.
    Run r = cli({"predict", "--model", q(reference_dir("gpt2-tiny")), "--top-k", "3", "4"});
    QCOMPARE(r.code, 2);
    QVERIFY2(r.err.contains("unexpected argument '4' (--top-k takes one value"), r.err.constData());
    // A stray word after a command's own positional word, and options of another mode of a command.
    QCOMPARE(cli({"bench", "load", "forward"}).code, 2);
    QVERIFY(cli({"bench", "load", "--batch", "2"}).err.contains("--batch applies to bench forward only"));
    QVERIFY(cli({"demo", "info", "--world", "facts"}).err.contains("--world does not apply to demo info"));
    QVERIFY(cli({"edit", "--method", "rome", "--rank", "2"}).err.contains("--rank applies to --method synthetic only"));
    QVERIFY(cli({"edit", "--method", "synthetic", "--prompt", "x"}).err.contains("--prompt does not apply to --method synthetic"));
}

void TestCli::versionNamesTheCommit() {
    Run r = cli({"--version"});
    QCOMPARE(r.code, 0);
    const QString out = QString::fromUtf8(r.out).trimmed();
    QVERIFY2(QRegularExpression("^engram-cli \\d+\\.\\d+\\.\\d+ \\(commit ([0-9a-f]{12}|unknown)\\)$").match(out).hasMatch(), qPrintable(out));
}

void TestCli::errorsAreOneClearLine_data() {
    QTest::addColumn<QStringList>("args");
    QTest::addColumn<QString>("needle");
    QTest::addColumn<int>("code");
    const QString gpt2 = q(reference_dir("gpt2-tiny"));
    QTest::newRow("no such model") << QStringList{"info", "--model", "/nonexistent/model"} << "/nonexistent/model" << 1;
    QTest::newRow("missing option") << QStringList{"forward", "--model", gpt2, "--out", "/tmp/x"} << "--inputs" << 2;
    QTest::newRow("unknown option") << QStringList{"info", "--model", gpt2, "--frobnicate"} << "--frobnicate" << 2;
    QTest::newRow("bad integer") << QStringList{"predict", "--model", gpt2, "--prompt", "x", "--top-k", "many"} << "--top-k" << 2;
    QTest::newRow("no tokenizer") << QStringList{"predict", "--model", gpt2, "--prompt", "x"} << "no tokenizer" << 2;
    QTest::newRow("unreadable image") << QStringList{"classify", "--model", q(reference_dir("vit-tiny")), "--image", q(reference_dir("vit-tiny") / "config.json")}
                                      << "config.json: cannot decode image" << 1;
    QTest::newRow("missing image") << QStringList{"classify", "--model", q(reference_dir("vit-tiny")), "--image", "/nonexistent.png"}
                                   << "/nonexistent.png" << 1;
    QTest::newRow("not a classifier") << QStringList{"classify", "--model", gpt2, "--image", "x.png"} << "not an image classifier" << 2;
    QTest::newRow("inputs without ids") << QStringList{"forward", "--model", gpt2, "--inputs", q(reference_dir("vit-tiny") / "golden.safetensors"), "--out", "/tmp/x"}
                                        << "no 'input_ids'" << 2;
    QTest::newRow("inputs not safetensors") << QStringList{"forward", "--model", gpt2, "--inputs", q(reference_dir("gpt2-tiny") / "config.json"), "--out", "/tmp/x"}
                                            << "config.json" << 1;
    QTest::newRow("unknown command") << QStringList{"frobnicate"} << "unknown command" << 2;
    QTest::newRow("bad device") << QStringList{"info", "--model", gpt2, "--device", "tpu"} << "--device" << 2;
}

void TestCli::errorsAreOneClearLine() {
    QFETCH(QStringList, args);
    QFETCH(QString, needle);
    QFETCH(int, code);
    Run r = cli(args);
    QCOMPARE(r.code, code);
    const QString err = QString::fromUtf8(r.err).trimmed();
    QVERIFY2(err.contains(needle), qPrintable(err));
    if (args[0] != "frobnicate") QVERIFY2(!err.contains('\n'), qPrintable(err));  // one line
}

QTEST_APPLESS_MAIN(TestCli)
#include "tst_cli.moc"
