// Causal tracing (ROME, Meng et al. 2022; kmeng01/rome experiments/causal_trace.py).
//
// Corrupt the subject's token embeddings with noise in `samples` copies of the prompt, then
// restore one state from the clean run and measure how much of the clean answer's probability
// comes back:
//   hidden  the residual stream after block l at token t (one state)
//   mlp     the MLP outputs at token t of the `window` layers centred on l ([l - w/2, l + ceil(w/2)))
//   attn    the attention outputs, same window
// score[t][l] = mean over the corrupted samples of p(answer) with that restoration. The indirect
// effect is score - corrupted_prob; the total effect clean_prob - corrupted_prob.
//
// Two implementations of the same numbers:
//   naive  the reference transcription: one Model::forward of samples+1 rows (row 0 clean) per
//          (token, layer, kind), all positions, all logits. The oracle.
//   fast   (default) one clean and one corrupted run, then per token t every restoration of every
//          kind in one layer sweep: layers below a restoration are read from the corrupted run,
//          positions before t from its keys/values, restorations sharing a window prefix share
//          their states, the last layer computes the last position only, and logits are taken at
//          the last position only. Restorations before the subject are exact no-ops (those
//          positions are never corrupted) and are filled with the corrupted probability.
// They agree within 1e-5 (tests/core/tst_trace.cpp).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram {

class Model;

enum class TraceKind { Hidden, Mlp, Attn };
const char* trace_kind_name(TraceKind kind);  // "hidden", "mlp", "attn"
std::optional<TraceKind> trace_kind_from_name(std::string_view name);

// The "severed" variant (ROME Fig. 3, trace_with_repatch): while a hidden state is restored, the
// MLP (or attention) outputs at the same token in every later layer are frozen at their corrupted
// values, so the restored state's effect cannot flow through them. Applies to the hidden kind.
enum class Sever { None, Mlp, Attn };

struct NoiseRule {
    enum class Type { Gaussian, Uniform, StudentT };
    Type type = Type::Gaussian;
    // Gaussian: the std of the noise; Uniform: the half-width; StudentT: the scale.
    // When relative, the level is multiplied by TraceOptions::embedding_std.
    double level = 3.0;
    bool relative = true;
    double degrees = 3.0;  // StudentT only
};
// "s3" (3 x the subject embedding std, ROME's default), "0.1" (absolute Gaussian std),
// "u0.5" (uniform in [-0.5, 0.5]), "t3" (Student-t with 3 degrees of freedom scaled to the
// embedding std). Throws Error(Argument) on anything else.
NoiseRule parse_noise_rule(std::string_view text);
std::string noise_rule_text(const NoiseRule& rule);
// The first n draws of numpy.random.RandomState(seed).randn(): the Gaussian noise source, so that
// a trace sees the same noise as ROME's for the same seed.
std::vector<double> numpy_randn(uint32_t seed, size_t n);

// ROME's collect_embedding_std: every subject tokenised on its own (no special tokens), the token
// embeddings concatenated, the (unbiased) std over all elements.
double subject_embedding_std(const Model& model, const std::vector<std::string>& subjects);
// The same over explicit token ids (for prompts without a tokenizer).
double token_embedding_std(const Model& model, const std::vector<int64_t>& ids);

struct TraceInput {
    std::vector<int64_t> ids;          // the prompt as the model reads it (with BOS where the tokenizer adds one)
    std::vector<std::string> tokens;   // one display string per id
    int64_t subject_begin = 0, subject_end = 0;  // [b, e) token range that is corrupted
};
// Tokenises `prompt` (with special tokens) and finds the subject's tokens by character offsets:
// the first occurrence of `subject`, every token overlapping it. BOS and other special tokens are
// never in the range. Throws Error(Argument) when the subject does not occur.
TraceInput make_trace_input(const Model& model, std::string_view prompt, std::string_view subject);

// One finished row: token `token` of kind `kind`, one score per layer.
struct TraceRow {
    TraceKind kind;
    int64_t token;
    std::vector<double> scores;
};

struct TraceOptions {
    std::vector<TraceKind> kinds{TraceKind::Hidden, TraceKind::Mlp, TraceKind::Attn};
    int samples = 10;
    NoiseRule noise;
    double embedding_std = 0.0;  // needed when noise.relative (see subject_embedding_std)
    bool replace = false;        // replace the subject embeddings with the noise instead of adding it
    uint64_t seed = 1;           // ROME: numpy RandomState(1), re-seeded on every trace
    int window = 10;
    Sever sever = Sever::None;
    // The answer: the clean top-1 unless a token id or a target string is given. A string is
    // tokenised as the continuation of the prompt (with a separating space unless it has one) and
    // its first token is traced.
    std::optional<int64_t> target_id;
    std::optional<std::string> target;
    bool naive = false;
    std::function<void(const TraceRow&)> on_row;  // called on the calling thread as rows finish
    const std::atomic<bool>* cancel = nullptr;    // checked between forwards / layers
};

struct TraceKindResult {
    TraceKind kind;
    int window = 1;  // 1 for hidden
    std::vector<std::vector<double>> scores;  // [tokens][layers]; NaN where not computed (cancelled)
    std::vector<bool> row_done;               // [tokens]
};

struct TraceResult {
    TraceInput input;
    int64_t n_layer = 0;
    int64_t answer_id = 0;
    std::string answer_token;
    double clean_prob = 0, corrupted_prob = 0;
    double noise_level = 0;  // the resolved level (std, half-width or scale)
    std::vector<TraceKindResult> kinds;
    bool cancelled = false;
    double seconds = 0;
    double flops = 0;  // multiply-adds x 2 of the matmuls actually run (both paths)

    const TraceKindResult* kind(TraceKind k) const;
    // score - corrupted_prob
    double indirect_effect(TraceKind k, int64_t token, int64_t layer) const;
    double total_effect() const { return clean_prob - corrupted_prob; }
};

// Throws Error(Argument) for bad options; errors from the forward passes are rewrapped with
// "causal trace". A cancelled trace returns normally with cancelled = true and the rows finished
// so far (row_done).
TraceResult causal_trace(const Model& model, const TraceInput& input, const TraceOptions& options);

// The MLP/attention window for a model of n_layer layers: about a fifth of its depth, as ROME's 10
// of GPT-2 XL's 48 (round(n_layer / 5), at least 1). A fixed 10 covers all of a shallow model, and
// every row of its maps comes out one flat colour.
inline int default_trace_window(int64_t n_layer) { return int(std::max<int64_t>(1, (n_layer + 2) / 5)); }

// ROME's average_causal_effects buckets: first / middle / last subject token, first subsequent
// token, further tokens, last token.
inline constexpr int kTraceBuckets = 6;
const char* trace_bucket_name(int bucket);
// The buckets a token belongs to (a one-token subject is both first and last).
std::vector<int> trace_buckets_of(int64_t token, int64_t subject_begin, int64_t subject_end, int64_t n_tokens);

// Averages of the indirect effect per bucket and layer over many traces (the paper's Fig. 2).
struct TraceAverage {
    TraceKind kind;
    int64_t n_layer = 0;
    int count = 0;  // traces added
    double clean_sum = 0, corrupted_sum = 0;
    std::array<std::vector<double>, kTraceBuckets> ie_sum;  // [bucket][layer]
    std::array<int64_t, kTraceBuckets> n{};                 // token-rows added per bucket

    void add(const TraceResult& result);
    double mean_ie(int bucket, int64_t layer) const;
};

}  // namespace engram
