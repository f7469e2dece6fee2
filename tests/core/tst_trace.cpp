// Causal tracing: the fast path against the naive transcription of ROME, the limits every trace
// must reach (noise 0, corrupted below clean), streaming and cancelling.
#include <QtTest>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>

#include "engram/demo.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"
#include "engram/trace.h"
#include "test_util.h"

using namespace engram;
using engram::test::reference_dir;
using namespace engram::demo;

class TestTrace : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void noiseIsNumpys();
    void parsesNoiseRules();
    void fastMatchesNaive_data();
    void fastMatchesNaive();
    void severedFastMatchesNaive();
    void replaceFastMatchesNaive();
    void zeroNoiseGivesCleanEverywhere();
    void lastLayerLastTokenIsClean();
    void subjectRangeByCharacters();
    void targetStringPicksItsFirstToken();
    void streamsRowsAndCancels();
    void cancelFromAnotherThreadIsPrompt();
    void bucketsFollowTheNotebook();
    void demoFactsLoseProbability();
    void demoFastMatchesNaive();
};

namespace {

constexpr double kTol = 1e-5;

HParams small_hparams(Arch arch, int64_t layers) {
    HParams hp;
    hp.n_layer = layers;
    hp.n_embd = 64;
    hp.n_head = 4;
    hp.n_head_kv = arch == Arch::Llama ? 2 : 4;
    hp.head_dim = 16;
    hp.n_ff = 128;
    hp.n_vocab = 300;
    hp.n_ctx = 64;
    if (arch == Arch::Gpt2) hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    if (arch == Arch::GptJ) {
        hp.rope_type = RopeType::Default;
        hp.rotary_dim = 8;
        hp.mlp_bias = true;
        hp.tied_output = false;
    }
    if (arch == Arch::Llama) {
        hp.rope_type = RopeType::Default;
        hp.rotary_dim = 16;
        hp.activation = "silu";
        hp.tied_output = false;
    }
    return hp;
}

std::unique_ptr<Model> random_model(Arch arch, int64_t layers, uint64_t seed) {
    auto m = Model::random(arch, small_hparams(arch, layers), seed);
    // Sharper outputs than N(0, 0.02) gives, so the probabilities move visibly under noise.
    c10::InferenceMode guard;
    for (auto& refs : m->weight_refs()) m->weight(refs.slot, refs.layer).mul_(refs.slot == Slot::TokEmbd ? 50.0 : 4.0);
    return m;
}

TraceInput ids_input(std::vector<int64_t> ids, int64_t b, int64_t e) {
    TraceInput in;
    in.ids = std::move(ids);
    for (int64_t id : in.ids) in.tokens.push_back("t" + std::to_string(id));
    in.subject_begin = b;
    in.subject_end = e;
    return in;
}

struct Compared {
    double max_diff = 0, spread = 0;
};

Compared compare(const TraceResult& a, const TraceResult& b) {
    Compared c;
    c.max_diff = std::max(std::abs(a.clean_prob - b.clean_prob), std::abs(a.corrupted_prob - b.corrupted_prob));
    double lo = 1e9, hi = -1e9;
    for (const TraceKindResult& ka : a.kinds) {
        const TraceKindResult* kb = b.kind(ka.kind);
        if (!kb) return {1e9, 0};
        for (size_t t = 0; t < ka.scores.size(); ++t)
            for (size_t l = 0; l < ka.scores[t].size(); ++l) {
                const double x = ka.scores[t][l], y = kb->scores[t][l];
                if (std::isnan(x) || std::isnan(y)) return {1e9, 0};
                c.max_diff = std::max(c.max_diff, std::abs(x - y));
                lo = std::min(lo, x);
                hi = std::max(hi, x);
            }
    }
    c.spread = hi - lo;
    return c;
}

TraceResult run(const Model& m, const TraceInput& in, TraceOptions o, bool naive) {
    o.naive = naive;
    return causal_trace(m, in, o);
}

std::filesystem::path demo_dir() { return std::filesystem::path(ENGRAM_SOURCE_RESOURCES) / "demo" / "factworld"; }

}  // namespace

void TestTrace::noiseIsNumpys() {
    // numpy.random.RandomState(1).randn(5), the noise ROME draws.
    const std::vector<double> expect{1.6243453636632417, -0.6117564136500754, -0.5281717522634557, -1.0729686221561705, 0.8654076293246785};
    const std::vector<double> got = numpy_randn(1, 5);
    for (size_t i = 0; i < expect.size(); ++i) QVERIFY2(std::abs(got[i] - expect[i]) < 1e-12, qPrintable(QString::number(got[i], 'g', 17)));
}

void TestTrace::parsesNoiseRules() {
    NoiseRule s3 = parse_noise_rule("s3");
    QVERIFY(s3.relative);
    QCOMPARE(s3.level, 3.0);
    QCOMPARE(noise_rule_text(s3), std::string("s3"));
    NoiseRule f = parse_noise_rule("0.25");
    QVERIFY(!f.relative);
    QCOMPARE(f.level, 0.25);
    QCOMPARE(int(parse_noise_rule("u0.5").type), int(NoiseRule::Type::Uniform));
    QCOMPARE(parse_noise_rule("t4").degrees, 4.0);
    QVERIFY_THROWS_EXCEPTION(engram::Error, parse_noise_rule("x1"));
    QVERIFY_THROWS_EXCEPTION(engram::Error, parse_noise_rule("t2"));
    QVERIFY_THROWS_EXCEPTION(engram::Error, parse_noise_rule("-1"));
}

void TestTrace::fastMatchesNaive_data() {
    QTest::addColumn<QString>("fixture");  // a reference folder, or random:<arch>:<layers>
    QTest::addColumn<int>("window");
    QTest::addColumn<QString>("noise");
    QTest::newRow("gpt2-tiny") << "gpt2-tiny" << 10 << "s3";
    QTest::newRow("gptj-tiny") << "gptj-tiny" << 10 << "s3";
    QTest::newRow("llama-tiny") << "llama-tiny" << 10 << "s3";
    QTest::newRow("llama-tiny window 2") << "llama-tiny" << 2 << "u1";
    QTest::newRow("gpt2 random 7 layers window 4") << "random:gpt2:7" << 4 << "s3";
    QTest::newRow("gptj random 6 layers window 3") << "random:gptj:6" << 3 << "t3";
    QTest::newRow("llama random 6 layers window 5, GQA") << "random:llama:6" << 5 << "s2";
}

void TestTrace::fastMatchesNaive() {
    QFETCH(QString, fixture);
    QFETCH(int, window);
    QFETCH(QString, noise);
    std::unique_ptr<Model> m;
    if (fixture.startsWith("random:")) {
        const QStringList parts = fixture.split(':');
        const Arch arch = parts[1] == "gpt2" ? Arch::Gpt2 : parts[1] == "gptj" ? Arch::GptJ : Arch::Llama;
        m = random_model(arch, parts[2].toInt(), 7);
    } else {
        m = Model::load(reference_dir(fixture.toStdString()));
    }
    const TraceInput in = ids_input({1, 17, 230, 45, 99, 12, 7, 301 % 300, 88}, 2, 5);
    TraceOptions o;
    o.window = window;
    o.noise = parse_noise_rule(noise.toStdString());
    o.embedding_std = token_embedding_std(*m, {17, 230, 45, 99});
    const TraceResult naive = run(*m, in, o, true), fast = run(*m, in, o, false);
    QCOMPARE(fast.answer_id, naive.answer_id);
    QVERIFY(!fast.cancelled && !naive.cancelled);
    const Compared c = compare(fast, naive);
    qInfo("%s: clean %.6f corrupted %.6f, cells spread %.3g, max |fast - naive| %.3g; naive %.3fs, fast %.3fs, FLOPs ratio %.1f",
          qPrintable(fixture), fast.clean_prob, fast.corrupted_prob, c.spread, c.max_diff, naive.seconds, fast.seconds, naive.flops / fast.flops);
    QVERIFY2(c.max_diff <= kTol, qPrintable(QString("max diff %1").arg(c.max_diff)));
    QVERIFY2(c.spread > 100 * c.max_diff, "the cells barely vary: the comparison would prove nothing");
    QVERIFY(fast.flops < naive.flops / 2);
}

void TestTrace::severedFastMatchesNaive() {
    auto m = random_model(Arch::Gpt2, 6, 11);
    const TraceInput in = ids_input({5, 60, 70, 80, 9, 10, 11}, 1, 4);
    for (Sever sever : {Sever::Mlp, Sever::Attn}) {
        TraceOptions o;
        o.kinds = {TraceKind::Hidden};
        o.sever = sever;
        o.embedding_std = token_embedding_std(*m, {60, 70, 80});
        const TraceResult naive = run(*m, in, o, true), fast = run(*m, in, o, false);
        const Compared c = compare(fast, naive);
        QVERIFY2(c.max_diff <= kTol, qPrintable(QString("max diff %1").arg(c.max_diff)));
        // Severing changes the picture: the frozen path must matter somewhere.
        TraceOptions plain = o;
        plain.sever = Sever::None;
        const Compared d = compare(run(*m, in, plain, false), fast);
        QVERIFY2(d.max_diff > 1e-4, "severing changed nothing");
    }
}

void TestTrace::replaceFastMatchesNaive() {
    // --replace: the subject embeddings become the noise (GPT-2 keeps its position embeddings).
    for (Arch arch : {Arch::Gpt2, Arch::Llama}) {
        auto m = random_model(arch, 4, 13);
        const TraceInput in = ids_input({5, 60, 70, 80, 9, 10}, 1, 3);
        TraceOptions o;
        o.replace = true;
        o.noise = parse_noise_rule("1");
        const TraceResult naive = run(*m, in, o, true), fast = run(*m, in, o, false);
        const Compared c = compare(fast, naive);
        QVERIFY2(c.max_diff <= kTol, qPrintable(QString("max diff %1").arg(c.max_diff)));
        TraceOptions added = o;
        added.replace = false;
        QVERIFY(std::abs(run(*m, in, added, false).corrupted_prob - fast.corrupted_prob) > 1e-6);
    }
}

void TestTrace::zeroNoiseGivesCleanEverywhere() {
    auto m = Model::load(reference_dir("llama-tiny"));
    const TraceInput in = ids_input({1, 17, 230, 45, 99, 12}, 1, 3);
    TraceOptions o;
    o.noise = parse_noise_rule("0");
    for (bool naive : {false, true}) {
        const TraceResult r = run(*m, in, o, naive);
        QVERIFY(std::abs(r.corrupted_prob - r.clean_prob) < kTol);
        for (const auto& k : r.kinds)
            for (const auto& row : k.scores)
                for (double v : row) QVERIFY2(std::abs(v - r.clean_prob) < kTol, qPrintable(QString("%1 vs %2").arg(v).arg(r.clean_prob)));
    }
}

void TestTrace::lastLayerLastTokenIsClean() {
    // Restoring the whole residual stream at the last token after the last block restores the output.
    auto m = random_model(Arch::Llama, 4, 3);
    const TraceInput in = ids_input({3, 4, 5, 6, 7}, 1, 3);
    TraceOptions o;
    o.kinds = {TraceKind::Hidden};
    o.embedding_std = token_embedding_std(*m, {4, 5});
    const TraceResult r = run(*m, in, o, false);
    QVERIFY(r.clean_prob - r.corrupted_prob > 1e-3);
    QVERIFY(std::abs(r.kind(TraceKind::Hidden)->scores[4][3] - r.clean_prob) < kTol);
    // ... and before the subject nothing was corrupted, so nothing comes back.
    for (double v : r.kind(TraceKind::Hidden)->scores[0]) QCOMPARE(v, r.corrupted_prob);
}

void TestTrace::subjectRangeByCharacters() {
    auto m = Model::random(Arch::Gpt2, small_hparams(Arch::Gpt2, 2), 1);
    auto tok = load_tokenizer(engram::test::data_dir() / "tokenizers" / "tok-gpt2");
    m->set_tokenizer(std::move(tok));
    const TraceInput in = make_trace_input(*m, "The Space Needle is in downtown", "Space Needle");
    QCOMPARE(int(in.tokens.size()), int(in.ids.size()));
    QVERIFY(in.subject_end > in.subject_begin);
    std::string subject;
    for (int64_t t = in.subject_begin; t < in.subject_end; ++t) subject += in.tokens[size_t(t)];
    QCOMPARE(subject, std::string(" Space Needle"));
    QCOMPARE(in.tokens[0], std::string("The"));
    QVERIFY_THROWS_EXCEPTION(engram::Error, make_trace_input(*m, "The Space Needle", "Eiffel"));
}

void TestTrace::targetStringPicksItsFirstToken() {
    HParams hp = small_hparams(Arch::Gpt2, 2);
    hp.n_vocab = 50257;
    auto m = Model::random(Arch::Gpt2, hp, 1);
    m->set_tokenizer(load_tokenizer(engram::test::data_dir() / "tokenizers" / "tok-gpt2"));
    const TraceInput in = make_trace_input(*m, "The Space Needle is in downtown", "Space Needle");
    TraceOptions o;
    o.kinds = {TraceKind::Hidden};
    o.samples = 2;
    o.target = "Seattle";
    o.noise = parse_noise_rule("0.1");
    const TraceResult r = causal_trace(*m, in, o);
    QCOMPARE(r.answer_token, std::string(" Seattle"));
}

void TestTrace::streamsRowsAndCancels() {
    auto m = random_model(Arch::Gpt2, 6, 5);
    const TraceInput in = ids_input({1, 2, 3, 4, 5, 6, 7, 8}, 2, 4);
    TraceOptions o;
    o.embedding_std = token_embedding_std(*m, {3, 4});
    for (bool naive : {false, true}) {
        const TraceResult full = run(*m, in, o, naive);
        std::atomic<bool> cancel{false};
        std::vector<TraceRow> rows;
        TraceOptions oc = o;
        oc.cancel = &cancel;
        oc.on_row = [&](const TraceRow& row) {
            rows.push_back(row);
            // Stop after the first row past the subject start.
            if (row.token == 2 && !cancel) cancel = true;
        };
        const TraceResult part = run(*m, in, oc, naive);
        QVERIFY(part.cancelled);
        QVERIFY(!rows.empty());
        // Prompt: no row after the one that set the flag, and (naive) no forward either. The naive
        // trace runs one unrestored forward, then one forward per cell, each of the same cost, so
        // its work counts the forwards exactly; the fast trace does less work than the full one.
        QCOMPARE(rows.back().token, int64_t(2));
        if (naive) {
            const double per_forward = full.flops / double(1 + 3 * in.ids.size() * full.n_layer);
            const double forwards = part.flops / per_forward;
            const double expected = double(1 + rows.size() * size_t(full.n_layer));
            QVERIFY2(std::abs(forwards - expected) < 1e-6 * expected, qPrintable(QString("%1 forwards, %2 expected").arg(forwards).arg(expected)));
        } else {
            QVERIFY(part.flops < full.flops);
        }
        int done = 0;
        for (const auto& k : part.kinds)
            for (size_t t = 0; t < k.scores.size(); ++t) {
                if (!k.row_done[t]) {
                    QVERIFY(std::isnan(k.scores[t][0]));
                    continue;
                }
                ++done;
                QCOMPARE(k.scores[t], full.kind(k.kind)->scores[t]);  // finished rows are final
            }
        QCOMPARE(done, int(rows.size()));
        QVERIFY(done < int(in.ids.size()) * 3);
        for (const TraceRow& row : rows) QCOMPARE(row.scores, part.kind(row.kind)->scores[size_t(row.token)]);
    }
}

void TestTrace::cancelFromAnotherThreadIsPrompt() {
    HParams hp = small_hparams(Arch::Gpt2, 12);
    hp.n_embd = 256;
    hp.n_ff = 1024;
    hp.head_dim = 64;
    auto m = Model::random(Arch::Gpt2, hp, 2);
    const TraceInput in = ids_input({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, 1, 4);
    TraceOptions o;
    o.naive = true;  // minutes of work when left alone
    o.embedding_std = 0.02;
    std::atomic<bool> cancel{false};
    o.cancel = &cancel;
    std::chrono::steady_clock::time_point set_at;
    std::thread canceller([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        set_at = std::chrono::steady_clock::now();
        cancel = true;
    });
    const TraceResult r = causal_trace(*m, in, o);
    const auto end = std::chrono::steady_clock::now();
    canceller.join();
    QVERIFY(r.cancelled);
    // How long the stop took depends on the machine, so it is reported, not asserted; what is
    // asserted is that the flag is read between forwards: set before the trace starts, nothing
    // but the unrestored forward runs and no row is finished.
    qInfo("cancelled %.3f s after the flag was set", std::chrono::duration<double>(end - set_at).count());
    std::atomic<bool> already{true};
    o.cancel = &already;
    int rows = 0;
    o.on_row = [&](const TraceRow&) { ++rows; };
    const TraceResult none = causal_trace(*m, in, o);
    QVERIFY(none.cancelled);
    QCOMPARE(rows, 0);
    // Every naive forward costs the same: the cancelled-at-once trace did one, the other a whole number.
    const double forwards = r.flops / none.flops;
    QVERIFY2(forwards >= 1.0 && std::abs(forwards - std::round(forwards)) < 1e-9, qPrintable(QString::number(forwards)));
}

void TestTrace::bucketsFollowTheNotebook() {
    // Subject [2, 5) in 9 tokens: 2 first, 3 middle, 4 last, 5 first after, 6-7 further, 8 last.
    QCOMPARE(trace_buckets_of(2, 2, 5, 9), std::vector<int>{0});
    QCOMPARE(trace_buckets_of(3, 2, 5, 9), std::vector<int>{1});
    QCOMPARE(trace_buckets_of(4, 2, 5, 9), std::vector<int>{2});
    QCOMPARE(trace_buckets_of(5, 2, 5, 9), std::vector<int>{3});
    QCOMPARE(trace_buckets_of(7, 2, 5, 9), std::vector<int>{4});
    QCOMPARE(trace_buckets_of(8, 2, 5, 9), std::vector<int>{5});
    QVERIFY(trace_buckets_of(0, 2, 5, 9).empty());
    QCOMPARE(trace_buckets_of(1, 1, 2, 4), (std::vector<int>{0, 2}));  // a one-token subject
}

void TestTrace::demoFactsLoseProbability() {
    if (!std::filesystem::exists(demo_dir() / "config.json")) QSKIP("the demo model (resources/demo/factworld) is not built");
    auto m = Model::load(demo_dir());
    const FactWorld world = generate_fact_world();
    std::vector<std::string> subjects;
    for (const Entity& e : world.entities) subjects.push_back(e.name);
    const double std_ = subject_embedding_std(*m, subjects);
    const auto prompts = all_fact_prompts(world);
    int checked = 0;
    for (size_t i = 0; i < prompts.size() && checked < 5; i += prompts.size() / 5) {
        const FactPrompt& p = prompts[i];
        const std::string subject = world.entities[size_t(p.subject)].name;
        TraceOptions o;
        o.kinds = {TraceKind::Hidden};
        o.embedding_std = std_;
        const TraceResult r = causal_trace(*m, make_trace_input(*m, p.prompt, subject), o);
        QVERIFY2(r.corrupted_prob < r.clean_prob, qPrintable(QString::fromStdString(p.prompt)));
        ++checked;
    }
}

void TestTrace::demoFastMatchesNaive() {
    if (!std::filesystem::exists(demo_dir() / "config.json")) QSKIP("the demo model (resources/demo/factworld) is not built");
    auto m = Model::load(demo_dir());
    const FactWorld world = generate_fact_world();
    const std::vector<FactPrompt> prompts = all_fact_prompts(world);
    const FactPrompt& p = prompts.front();
    TraceOptions o;
    o.embedding_std = subject_embedding_std(*m, {world.entities[size_t(p.subject)].name});
    const TraceInput in = make_trace_input(*m, p.prompt, world.entities[size_t(p.subject)].name);
    const Compared c = compare(run(*m, in, o, false), run(*m, in, o, true));
    qInfo("demo model, '%s': cells spread %.3g, max |fast - naive| %.3g", p.prompt.c_str(), c.spread, c.max_diff);
    QVERIFY2(c.max_diff <= kTol, qPrintable(QString("max diff %1").arg(c.max_diff)));
    QVERIFY(c.spread > 100 * c.max_diff);
}

QTEST_GUILESS_MAIN(TestTrace)
#include "tst_trace.moc"
