// Benchmarks that print what they measure, beside a baseline measured in the same run.
#pragma once

#include <cstdint>
#include <string>

#include <c10/core/Device.h>

namespace engram {

struct ForwardBenchResult {
    int64_t parameters = 0;
    int64_t batch = 0, seq = 0, iterations = 0;
    double seconds_per_forward = 0;
    double tokens_per_second = 0;
    double forward_gflops = 0;      // useful FLOPs of one forward / time
    double matmul_peak_gflops = 0;  // a large square matmul on the same device, same run
    double flops_per_forward = 0;
    // With a GRACE codebook installed (codebook_entries > 0): the same forward, timed interleaved
    // with the plain one in the same run.
    int64_t codebook_entries = 0;
    double seconds_per_forward_plain = 0, seconds_per_forward_codebook = 0;
};

struct HParams;
// GPT-2 small's shape (12 layers, 768 wide, 12 heads, 3072 MLP, 50257 vocab, 1024 positions), for
// random-weight benchmarks; n_layer may be overridden.
HParams gpt2_small_hparams(int64_t n_layer = 12);

// A GPT-2-small-shaped model (12 layers, 768 wide, 50257 vocab) with random weights, built in
// memory. FLOPs count 2 per multiply-add of every matmul: projections, MLP, attention scores and
// mixing, and the LM head.
// codebook_entries > 0 also times the forward with a GRACE codebook of that many random entries on
// the down-projection of layer 3/4 of the depth (routing on every row's last token).
ForwardBenchResult bench_forward(int64_t batch, int64_t seq, int64_t iterations, c10::Device device, int64_t codebook_entries = 0);

struct LoadBenchResult {
    double checkpoint_mb = 0;
    double load_ms = 0;               // Model::load: mmap, header checks, shape checks, views
    double fingerprint_ms = 0;        // first fingerprint: SHA-256 over every byte
    double cached_fingerprint_ms = 0; // second one: from the cache
    double first_forward_ms = 0;      // one short forward right after loading (pages the weights in)
};

// Writes a GPT-2-small-shaped random checkpoint (F32, ~500 MB) into `dir`, then times loading it.
LoadBenchResult bench_load(const std::string& dir);

}  // namespace engram
