#include "engram/bench.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>

#include "engram/checkpoint.h"
#include "adapters/kinds.h"
#include "engram/model.h"

namespace engram {

namespace {
using Clock = std::chrono::steady_clock;

void sync(c10::Device device, const at::Tensor& t) {
    if (device.is_cuda()) (void)t.sum().item<float>();  // waits for the queue
}

double measure_matmul_peak(c10::Device device) {
    const int64_t n = device.is_cuda() ? 8192 : 2048;
    at::Tensor a = at::randn({n, n}, at::TensorOptions().device(device));
    at::Tensor b = at::randn({n, n}, at::TensorOptions().device(device));
    at::Tensor c = at::matmul(a, b);  // warm-up
    sync(device, c);
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        auto t0 = Clock::now();
        c = at::matmul(a, b);
        sync(device, c);
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        best = std::max(best, 2.0 * double(n) * n * n / s / 1e9);
    }
    return best;
}
}  // namespace

HParams gpt2_small_hparams(int64_t n_layer) {
    HParams hp;
    hp.n_layer = n_layer;
    hp.n_embd = 768;
    hp.n_head = hp.n_head_kv = 12;
    hp.head_dim = 64;
    hp.n_ff = 3072;
    hp.n_vocab = 50257;
    hp.n_ctx = 1024;
    hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    return hp;
}

LoadBenchResult bench_load(const std::string& dir) {
    LoadBenchResult r;
    {
        auto made = Model::random(Arch::Gpt2, gpt2_small_hparams(), 99);
        save_checkpoint(*made, dir, DType::F32);
    }
    auto ms = [](Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); };
    auto t0 = Clock::now();
    auto model = Model::load(dir);
    r.load_ms = ms(t0);
    r.checkpoint_mb = double(model->checkpoint()->total_bytes()) / 1e6;
    t0 = Clock::now();
    (void)model->fingerprint();
    r.fingerprint_ms = ms(t0);
    t0 = Clock::now();
    auto again = Model::load(dir);
    (void)again->fingerprint();
    r.cached_fingerprint_ms = ms(t0);
    c10::InferenceMode guard;
    ForwardInput in;
    in.input_ids = at::zeros({1, 8}, at::kLong);
    t0 = Clock::now();
    (void)model->forward(in);
    r.first_forward_ms = ms(t0);
    return r;
}

ForwardBenchResult bench_forward(int64_t batch, int64_t seq, int64_t iterations, c10::Device device, int64_t codebook_entries) {
    c10::InferenceMode guard;
    const HParams hp = gpt2_small_hparams();
    auto model = Model::random(Arch::Gpt2, hp, 1234);
    model->to(device);

    ForwardBenchResult r;
    r.parameters = model->parameter_count();
    r.batch = batch;
    r.seq = seq;
    r.iterations = iterations;
    const double tokens = double(batch) * seq;
    const double per_layer = 2.0 * tokens * (4.0 * hp.n_embd * hp.n_embd + 2.0 * hp.n_embd * hp.n_ff) +
                             2.0 * 2.0 * double(batch) * hp.n_head * seq * seq * hp.head_dim;
    r.flops_per_forward = hp.n_layer * per_layer + 2.0 * tokens * hp.n_embd * hp.n_vocab;

    ForwardInput in;
    in.input_ids = at::randint(0, hp.n_vocab, {batch, seq}, at::TensorOptions().dtype(at::kLong).device(device));
    at::Tensor out = model->forward(in).logits;  // warm-up
    sync(device, out);
    auto t0 = Clock::now();
    for (int64_t i = 0; i < iterations; ++i) out = model->forward(in).logits;
    sync(device, out);
    r.seconds_per_forward = std::chrono::duration<double>(Clock::now() - t0).count() / double(iterations);
    r.tokens_per_second = tokens / r.seconds_per_forward;
    r.forward_gflops = r.flops_per_forward / r.seconds_per_forward / 1e9;
    r.matmul_peak_gflops = measure_matmul_peak(device);
    if (codebook_entries <= 0) return r;

    // The codebook: random keys of the key's scale, so queries rarely match (the lookup is the cost).
    const int layer = int(hp.n_layer * 3 / 4);
    const AdapterSet plain = model->adapters();
    at::Tensor keys = at::randn({codebook_entries, hp.n_ff}), values = at::randn({codebook_entries, hp.n_embd});
    for (int64_t i = 0; i < codebook_entries; ++i) {
        AdapterOp op = adapters::grace_op(layer, "insert", {{"entry", std::to_string(i)}, {"eps", 1.0}, {"label", {i}}});
        op.tensors = {{"key", keys[i].clone()}, {"value", values[i].clone()}};
        model->apply_adapter_op(op);
    }
    const AdapterSet with = model->adapters();
    r.codebook_entries = codebook_entries;
    out = model->forward(in).logits;  // warm-up
    sync(device, out);
    double t_plain = 0, t_with = 0;
    for (int64_t i = 0; i < iterations; ++i) {
        for (bool codebook : {false, true}) {
            model->adapters() = codebook ? with : plain;
            auto t = Clock::now();
            out = model->forward(in).logits;
            sync(device, out);
            (codebook ? t_with : t_plain) += std::chrono::duration<double>(Clock::now() - t).count();
        }
    }
    r.seconds_per_forward_plain = t_plain / double(iterations);
    r.seconds_per_forward_codebook = t_with / double(iterations);
    return r;
}

}  // namespace engram
