// Forward passes against the Hugging Face reference outputs in tests/data/reference (written by
// transformers 5.17, fp32, CPU), plus identities every forward must satisfy.
#include <QtTest>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <unistd.h>

#include "engram/checkpoint.h"
#include "engram/error.h"
#include "engram/model.h"
#include "test_util.h"

using namespace engram;
using engram::test::max_abs_diff;
using engram::test::reference_dir;

class TestModels : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void matchesReference_data();
    void matchesReference();
    void paddedBatchMatchesReference_data();
    void paddedBatchMatchesReference();
    void kvCacheMatchesFullForward_data();
    void kvCacheMatchesFullForward();
    void lastLogitsOnlyMatchesFull();
    void partialRunMatchesFull_data();
    void partialRunMatchesFull();
    void hookReplacementIsCausal();
    void headOutFeedsAttnOut();
    void mlpKeyFeedsMlpOut();
    void recordsStoredDtype();
    void parameterCountOfGpt2Tiny();
    void conv1dWeightsAreTransposedViews();
    void greedyGenerationIsDeterministic();
};

namespace {
constexpr double kTol = 1e-4;

struct Case {
    const char* dir;
    int n_layer;
};
const Case kDecoders[] = {{"gpt2-tiny", 3}, {"gpt2-tiny-bf16", 3}, {"gptj-tiny", 3}, {"llama-tiny", 3}, {"qwen2-tiny-fp16", 2}};
}  // namespace

namespace {
// The fixture's right-padded batch: [2, 12] ids and their mask.
ForwardInput padded_input(const Checkpoint& golden) {
    ForwardInput in;
    in.input_ids = golden.tensor("padded.input_ids").clone();
    in.attention_mask = golden.tensor("padded.attention_mask").clone();
    return in;
}
}  // namespace

void TestModels::matchesReference_data() {
    QTest::addColumn<QString>("dir");
    for (const auto& c : kDecoders) QTest::newRow(c.dir) << QString(c.dir);
    QTest::newRow("vit-tiny") << QString("vit-tiny");
}

void TestModels::matchesReference() {
    QFETCH(QString, dir);
    c10::InferenceMode guard;
    auto model = Model::load(reference_dir(dir.toStdString()));
    Checkpoint golden = Checkpoint::open_file(reference_dir(dir.toStdString()) / "golden.safetensors");

    ForwardInput in;
    Hooks hooks;
    hooks.capture(Site::BlockOut);
    if (model->is_decoder()) {
        in.input_ids = golden.tensor("input_ids").clone();
        hooks.capture(Site::AttnOut);
        hooks.capture(Site::MlpOut);
    } else {
        in.pixel_values = golden.tensor("pixel_values").clone();
        hooks.capture(Site::AttnProbs);
    }
    at::Tensor logits = model->forward(in, &hooks).logits;
    const double d_logits = max_abs_diff(logits, golden.tensor("logits"));
    qInfo("%s logits max|diff| = %.3g", qPrintable(dir), d_logits);
    QVERIFY2(d_logits <= kTol, qPrintable(QString("logits differ by %1").arg(d_logits)));

    int compared = 0;
    for (const auto& [name, entry] : golden.tensors()) {
        const auto dot = name.find('.');
        if (dot == std::string::npos || name.rfind("padded", 0) == 0) continue;
        auto site = site_from_name(name.substr(0, dot));
        QVERIFY2(site.has_value(), name.c_str());
        const int layer = std::stoi(name.substr(dot + 1));
        QVERIFY2(hooks.has_captured(*site, layer), name.c_str());
        const double d = max_abs_diff(hooks.captured(*site, layer), golden.tensor(name));
        QVERIFY2(d <= kTol, qPrintable(QString("%1 differs by %2").arg(QString::fromStdString(name)).arg(d)));
        ++compared;
    }
    const int per_layer = model->is_decoder() ? 3 : 2;
    QCOMPARE(compared, per_layer * static_cast<int>(model->hparams().n_layer));
}

void TestModels::paddedBatchMatchesReference_data() {
    QTest::addColumn<QString>("dir");
    for (const auto& c : kDecoders) QTest::newRow(c.dir) << QString(c.dir);
}

void TestModels::paddedBatchMatchesReference() {
    QFETCH(QString, dir);
    c10::InferenceMode guard;
    auto model = Model::load(reference_dir(dir.toStdString()));
    Checkpoint golden = Checkpoint::open_file(reference_dir(dir.toStdString()) / "golden.safetensors");
    ForwardInput in = padded_input(golden);
    at::Tensor logits = model->forward(in).logits;
    at::Tensor mask = in.attention_mask.to(at::kBool);
    QVERIFY(mask.sum().item<int64_t>() < mask.numel());  // the fixture really has padding
    at::Tensor ours = logits.index({mask}), ref = golden.tensor("padded.logits").index({mask});
    const double d = max_abs_diff(ours, ref);
    QVERIFY2(d <= kTol, qPrintable(QString("padded logits differ by %1").arg(d)));
}

void TestModels::kvCacheMatchesFullForward_data() { paddedBatchMatchesReference_data(); }

void TestModels::kvCacheMatchesFullForward() {
    // Feeding the sequence in three chunks through the cache must give the logits of one pass.
    QFETCH(QString, dir);
    c10::InferenceMode guard;
    auto model = Model::load(reference_dir(dir.toStdString()));
    Checkpoint golden = Checkpoint::open_file(reference_dir(dir.toStdString()) / "golden.safetensors");
    at::Tensor ids = golden.tensor("input_ids").clone();  // [2, 12]
    ForwardInput full;
    full.input_ids = ids;
    at::Tensor expected = model->forward(full).logits;
    KvCache cache;
    std::vector<at::Tensor> pieces;
    for (auto [start, len] : {std::pair<int64_t, int64_t>{0, 5}, {5, 1}, {6, 6}}) {
        ForwardInput step;
        step.input_ids = ids.narrow(1, start, len);
        pieces.push_back(model->forward(step, nullptr, &cache).logits);
    }
    QCOMPARE(cache.n_past(), int64_t{12});
    const double d = max_abs_diff(at::cat(pieces, 1), expected);
    QVERIFY2(d <= 1e-5, qPrintable(QString("cached logits differ by %1").arg(d)));
}

void TestModels::lastLogitsOnlyMatchesFull() {
    c10::InferenceMode guard;
    auto model = Model::load(reference_dir("llama-tiny"));
    Checkpoint golden = Checkpoint::open_file(reference_dir("llama-tiny") / "golden.safetensors");
    ForwardInput in = padded_input(golden);
    at::Tensor full = model->forward(in).logits;
    in.last_logits_only = true;
    at::Tensor last = model->forward(in).logits;  // [2, V]
    QCOMPARE(last.dim(), int64_t{2});
    const int64_t len1 = in.attention_mask[1].sum().item<int64_t>();
    QVERIFY(len1 < 12);
    QVERIFY(max_abs_diff(last[0], full[0][11]) <= 1e-6);
    QVERIFY(max_abs_diff(last[1], full[1][len1 - 1]) <= 1e-6);
}

void TestModels::partialRunMatchesFull_data() { paddedBatchMatchesReference_data(); }

void TestModels::partialRunMatchesFull() {
    // Stopping below a layer and resuming there from the captured residual, with logits at chosen
    // positions only, gives the full pass's logits at those positions.
    QFETCH(QString, dir);
    c10::InferenceMode guard;
    auto model = Model::load(reference_dir(dir.toStdString()));
    Checkpoint golden = Checkpoint::open_file(reference_dir(dir.toStdString()) / "golden.safetensors");
    ForwardInput in = padded_input(golden);
    const at::Tensor full = model->forward(in).logits;  // [B, T, V]
    const int64_t T = full.size(1), n_layer = model->hparams().n_layer;
    const at::Tensor rows = at::tensor(std::vector<int64_t>{0, 1, 1}, at::kLong), pos = at::tensor(std::vector<int64_t>{T - 1, 0, 3}, at::kLong);
    for (int64_t start = 0; start <= n_layer; ++start) {
        Hooks below;
        if (start == 0)
            below.capture(Site::Embed, 0);
        else
            below.capture(Site::BlockOut, static_cast<int>(start - 1));
        ForwardInput head = in;
        head.stop_layer = static_cast<int>(start);
        QVERIFY(!model->forward(head, &below).logits.defined() || start == n_layer);
        ForwardInput tail = in;
        tail.residual = start == 0 ? below.captured(Site::Embed, 0) : below.captured(Site::BlockOut, static_cast<int>(start - 1));
        tail.start_layer = static_cast<int>(start);
        tail.logit_index = rows * T + pos;
        const at::Tensor part = model->forward(tail).logits;  // [3, V]
        QCOMPARE(part.size(0), int64_t{3});
        const double d = max_abs_diff(part, full.index({rows, pos}));
        QVERIFY2(d <= 1e-5, qPrintable(QString("from layer %1: logits differ by %2").arg(start).arg(d)));
    }
    // Resuming each row at its own position after a prefix held in the cache (the editing methods'
    // target optimisation): rows split at 3 and 5, the suffix positions given per row.
    {
        const int start = 1;
        Hooks below;
        below.capture(Site::BlockOut, start - 1);
        ForwardInput head = in;
        head.stop_layer = start;
        model->forward(head, &below);
        const at::Tensor residual = below.captured(Site::BlockOut, start - 1);  // [B, T, n_embd]
        KvCache kv;
        ForwardInput up = in;
        up.residual = residual;
        up.start_layer = start;
        model->forward(up, nullptr, &kv);
        const std::vector<int64_t> split = {3, 5};
        const int64_t P = 5, W = T - 3, B = 2;
        at::Tensor pos = at::zeros({B, W}, at::kLong), mask = at::zeros({B, P + W}, at::kLong);
        for (int64_t r = 0; r < B; ++r) {
            const int64_t len = in.attention_mask[r].sum().item<int64_t>();
            for (int64_t t = 0; t < split[size_t(r)]; ++t) mask[r][t] = 1;
            for (int64_t j = 0; j < W; ++j) {
                pos[r][j] = std::min(split[size_t(r)] + j, T - 1);
                mask[r][P + j] = split[size_t(r)] + j < len ? 1 : 0;
            }
        }
        KvCache prefix;
        prefix.k.resize(kv.k.size());
        prefix.v.resize(kv.v.size());
        for (size_t l = start; l < kv.k.size(); ++l) {
            prefix.k[l] = kv.k[l].narrow(2, 0, P);
            prefix.v[l] = kv.v[l].narrow(2, 0, P);
        }
        ForwardInput tail;
        tail.input_ids = in.input_ids.gather(1, pos);
        tail.attention_mask = mask;
        tail.position_ids = pos;
        tail.residual = residual.gather(1, pos.unsqueeze(2).expand({B, W, residual.size(2)}));
        tail.start_layer = start;
        const at::Tensor part = model->forward(tail, nullptr, &prefix).logits;  // [B, W, V]
        const at::Tensor valid = mask.narrow(1, P, W).to(at::kBool);
        const at::Tensor expected = full.index({at::arange(B).unsqueeze(1).expand({B, W}), pos});
        const double d = max_abs_diff(part.index({valid}), expected.index({valid}));
        QVERIFY2(d <= 1e-5, qPrintable(QString("resumed after per-row prefixes: logits differ by %1").arg(d)));
    }
    ForwardInput bad = in;
    bad.start_layer = 1;
    QVERIFY_THROWS_EXCEPTION(Error, model->forward(bad));  // a start layer needs its residual
}

void TestModels::hookReplacementIsCausal() {
    // Replacing the residual stream at position 4 of layer 0 leaves positions < 4 untouched and
    // changes position 4 onwards; replacing it with its own value changes nothing.
    c10::InferenceMode guard;
    auto model = Model::load(reference_dir("gpt2-tiny"));
    Checkpoint golden = Checkpoint::open_file(reference_dir("gpt2-tiny") / "golden.safetensors");
    ForwardInput in;
    in.input_ids = golden.tensor("input_ids").clone();
    Hooks read;
    read.capture(Site::BlockOut, 0);
    at::Tensor clean = model->forward(in, &read).logits;
    at::Tensor h0 = read.captured(Site::BlockOut, 0);

    Hooks same;
    same.replace(Site::BlockOut, 0, 1, 4, h0[1][4]);
    QVERIFY(max_abs_diff(model->forward(in, &same).logits, clean) == 0.0);

    Hooks zero;
    zero.replace(Site::BlockOut, 0, 1, 4, at::zeros({model->hparams().n_embd}));
    at::Tensor patched = model->forward(in, &zero).logits;
    QVERIFY(max_abs_diff(patched[0], clean[0]) == 0.0);                         // other row untouched
    QVERIFY(max_abs_diff(patched[1].narrow(0, 0, 4), clean[1].narrow(0, 0, 4)) == 0.0);  // the past untouched
    QVERIFY(max_abs_diff(patched[1][4], clean[1][4]) > 1e-3);
    QVERIFY(max_abs_diff(patched[1][11], clean[1][11]) > 1e-6);
}

void TestModels::headOutFeedsAttnOut() {
    // The per-head outputs, concatenated and projected, are the attention output.
    c10::InferenceMode guard;
    for (const char* dir : {"gpt2-tiny", "llama-tiny", "vit-tiny"}) {
        auto model = Model::load(reference_dir(dir));
        Checkpoint golden = Checkpoint::open_file(reference_dir(dir) / "golden.safetensors");
        ForwardInput in;
        if (model->is_decoder()) in.input_ids = golden.tensor("input_ids").clone();
        else in.pixel_values = golden.tensor("pixel_values").clone();
        Hooks hooks;
        hooks.capture(Site::HeadOut, 1);
        hooks.capture(Site::AttnOut, 1);
        hooks.capture(Site::AttnProbs, 1);
        model->forward(in, &hooks);
        at::Tensor heads = hooks.captured(Site::HeadOut, 1);  // [B, T, H, hd]
        QCOMPARE(heads.size(2), model->hparams().n_head);
        at::Tensor rebuilt = at::linear(heads.flatten(2), model->weight(Slot::AttnOut, 1),
                                        model->weight(Slot::AttnOutB, 1).defined() ? model->weight(Slot::AttnOutB, 1) : at::Tensor());
        QVERIFY2(max_abs_diff(rebuilt, hooks.captured(Site::AttnOut, 1)) <= 1e-5, dir);
        at::Tensor rows = hooks.captured(Site::AttnProbs, 1).sum(-1);  // softmax rows sum to 1
        QVERIFY2(max_abs_diff(rows, at::ones_like(rows)) <= 1e-5, dir);
    }
}

void TestModels::mlpKeyFeedsMlpOut() {
    // ROME's key is the down-projection input: down(key) + bias must be the MLP output.
    c10::InferenceMode guard;
    for (const char* dir : {"gpt2-tiny", "gptj-tiny", "qwen2-tiny-fp16"}) {
        auto model = Model::load(reference_dir(dir));
        Checkpoint golden = Checkpoint::open_file(reference_dir(dir) / "golden.safetensors");
        ForwardInput in;
        in.input_ids = golden.tensor("input_ids").clone();
        Hooks hooks;
        hooks.capture(Site::MlpKey, 0);
        hooks.capture(Site::MlpOut, 0);
        model->forward(in, &hooks);
        const at::Tensor& b = model->weight(Slot::FfnDownB, 0);
        at::Tensor rebuilt = at::linear(hooks.captured(Site::MlpKey, 0), model->weight(Slot::FfnDown, 0), b.defined() ? b : at::Tensor());
        QCOMPARE(hooks.captured(Site::MlpKey, 0).size(-1), model->hparams().n_ff);
        QVERIFY2(max_abs_diff(rebuilt, hooks.captured(Site::MlpOut, 0)) <= 1e-5, dir);
    }
}

void TestModels::recordsStoredDtype() {
    QCOMPARE(std::string(dtype_name(Model::load(reference_dir("gpt2-tiny"))->stored_dtype())), std::string("F32"));
    QCOMPARE(std::string(dtype_name(Model::load(reference_dir("gpt2-tiny-bf16"))->stored_dtype())), std::string("BF16"));
    auto qwen = Model::load(reference_dir("qwen2-tiny-fp16"));
    QCOMPARE(std::string(dtype_name(qwen->stored_dtype())), std::string("F16"));
    QCOMPARE(qwen->weight(Slot::AttnQ, 0).scalar_type(), at::kFloat);  // computed in fp32
}

void TestModels::parameterCountOfGpt2Tiny() {
    // Count from the config by hand: wte + wpe + 3 blocks + ln_f (the head is tied, counted once).
    const int64_t d = 64, v = 1000, n_pos = 64, ff = 256;
    const int64_t block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d);
    const int64_t expected = v * d + n_pos * d + 3 * block + 2 * d;
    QCOMPARE(Model::load(reference_dir("gpt2-tiny"))->parameter_count(), expected);
}

void TestModels::conv1dWeightsAreTransposedViews() {
    auto model = Model::load(reference_dir("gpt2-tiny"));
    const at::Tensor& w = model->weight(Slot::AttnQkv, 0);
    QCOMPARE(w.sizes().vec(), (std::vector<int64_t>{192, 64}));  // [out, in]
    at::Tensor stored = model->checkpoint()->tensor("transformer.h.0.attn.c_attn.weight");  // [in, out]
    QVERIFY(at::equal(w, stored.t()));
    QVERIFY(w.data_ptr() == stored.data_ptr());  // zero-copy: a view of the mapping
    QCOMPARE(model->tensor_name(Slot::FfnDown, 2), std::string("transformer.h.2.mlp.c_proj.weight"));
}

void TestModels::greedyGenerationIsDeterministic() {
    // Greedy decoding with the cache must pick, at each step, the argmax of a full recompute.
    auto model = Model::load(reference_dir("llama-tiny"));
    GenerateOptions opts;
    opts.max_new_tokens = 6;
    std::vector<int64_t> prompt = {1, 17, 42, 99};
    std::vector<int64_t> out = generate(*model, prompt, opts);
    QCOMPARE(out.size(), prompt.size() + 6);
    c10::InferenceMode guard;
    for (size_t i = prompt.size(); i < out.size(); ++i) {
        ForwardInput in;
        in.input_ids = at::tensor(std::vector<int64_t>(out.begin(), out.begin() + static_cast<long>(i)), at::kLong).unsqueeze(0);
        in.last_logits_only = true;
        QCOMPARE(model->forward(in).logits[0].argmax().item<int64_t>(), out[i]);
    }
    QCOMPARE(generate(*model, prompt, opts), out);
}

QTEST_APPLESS_MAIN(TestModels)
#include "tst_models.moc"
