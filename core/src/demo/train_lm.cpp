// Training the Fact World language model with Engram's own loop: a GPT-2-architecture model,
// next-word cross-entropy, AdamW with linear warmup and cosine decay, a fixed seed. For a given
// seed and thread count every step is deterministic (no dropout; data drawn from demo::Rng).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <fstream>

#include "demo/training.h"
#include "engram/checkpoint.h"
#include "engram/demo.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram::demo {

namespace {

std::vector<int64_t> encode_words(const Tokenizer& tok, const std::string& text) { return tok.encode(text).ids; }

// Each row: sentences (or a biography) laid end to end until n_ctx + 1 tokens.
at::Tensor sample_batch(Rng& rng, const std::vector<std::vector<int64_t>>& sentences, const std::vector<std::vector<int64_t>>& bios,
                        double bio_fraction, int batch, int n_ctx) {
    at::Tensor out = at::empty({batch, n_ctx + 1}, at::kLong);
    int64_t* p = out.data_ptr<int64_t>();
    for (int b = 0; b < batch; ++b) {
        int filled = 0;
        while (filled < n_ctx + 1) {
            const bool bio = rng.uniform() < bio_fraction;
            const auto& seq = bio ? bios[rng.below(bios.size())] : sentences[rng.below(sentences.size())];
            for (size_t i = 0; i < seq.size() && filled < n_ctx + 1; ++i) p[b * (n_ctx + 1) + filled++] = seq[i];
        }
    }
    return out;
}

}  // namespace

LmTrainResult train_fact_lm(const FactWorld& world, const LmTrainOptions& o, const std::filesystem::path& out_dir,
                            const ProgressFn& progress) {
    const nlohmann::json tok_json = wordlevel_tokenizer_json(world);
    std::unique_ptr<Tokenizer> tok = tokenizer_from_json(tok_json.dump(), "factworld tokenizer.json");
    const FactCorpus corpus = build_corpus(world);
    std::vector<std::vector<int64_t>> sentences, bios;
    for (const auto& s : corpus.sentences) sentences.push_back(encode_words(*tok, s));
    for (const auto& b : corpus.biographies) bios.push_back(encode_words(*tok, b));

    HParams hp;
    hp.n_layer = o.n_layer;
    hp.n_embd = o.n_embd;
    hp.n_head = hp.n_head_kv = o.n_head;
    hp.head_dim = o.n_embd / o.n_head;
    hp.n_ff = 4 * o.n_embd;
    hp.n_vocab = tok->vocab_size();
    hp.n_ctx = o.n_ctx;
    hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    auto model = Model::random(Arch::Gpt2, hp, o.seed, /*trainable=*/true);
    AdamW opt(model->parameters(), AdamWOptions{o.lr, 0.9, 0.95, 1e-8, o.weight_decay});

    Rng rng(o.seed ^ 0xDA7Au);
    LmTrainResult result;
    TrainLog train_log(o.steps, progress, result);
    for (int64_t step = 0; step < o.steps; ++step) {
        const double lr = cosine_lr(step, o.steps, o.warmup, o.lr, o.min_lr_ratio);
        at::Tensor batch = sample_batch(rng, sentences, bios, o.biography_fraction, o.batch, o.n_ctx);
        ForwardInput in;
        in.input_ids = batch.narrow(1, 0, o.n_ctx);
        at::Tensor logits = model->forward(in).logits;  // [B, T, V]
        at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, hp.n_vocab}), batch.narrow(1, 1, o.n_ctx).reshape({-1}));
        opt.zero_grad();
        loss.backward();
        opt.step(lr);
        train_log.record(step, loss.item<double>(), lr);
    }
    result.seconds = train_log.seconds();

    std::filesystem::create_directories(out_dir);
    save_checkpoint(*model, out_dir, DType::F16);
    std::ofstream(out_dir / "tokenizer.json") << tok_json.dump() << "\n";
    return result;
}

FactAccuracy evaluate_fact_accuracy(const Model& model, const FactWorld& world) {
    if (!model.tokenizer()) throw Error(ErrorKind::Argument, "evaluate_fact_accuracy: the model has no tokenizer");
    const Tokenizer& tok = *model.tokenizer();
    c10::InferenceMode guard;
    FactAccuracy acc;
    std::vector<FactPrompt> prompts = all_fact_prompts(world);
    const size_t chunk = 256;
    for (size_t start = 0; start < prompts.size(); start += chunk) {
        const size_t n = std::min(chunk, prompts.size() - start);
        std::vector<std::vector<int64_t>> ids(n);
        int64_t longest = 0;
        for (size_t i = 0; i < n; ++i) {
            ids[i] = tok.encode(prompts[start + i].prompt).ids;
            longest = std::max<int64_t>(longest, static_cast<int64_t>(ids[i].size()));
        }
        at::Tensor input = at::zeros({static_cast<int64_t>(n), longest}, at::kLong);
        at::Tensor mask = at::zeros({static_cast<int64_t>(n), longest}, at::kLong);
        for (size_t i = 0; i < n; ++i)
            for (size_t k = 0; k < ids[i].size(); ++k) {
                input[i][k] = ids[i][k];
                mask[i][k] = 1;
            }
        ForwardInput in;
        in.input_ids = input;
        in.attention_mask = mask;
        in.last_logits_only = true;
        at::Tensor top = model.forward(in).logits.argmax(-1).to(at::kCPU);  // [n]
        for (size_t i = 0; i < n; ++i) {
            const FactPrompt& p = prompts[start + i];
            bool ok = false;
            for (const auto& answer : p.answers) {
                const std::string first = answer.substr(0, answer.find(' '));
                auto id = tok.token_to_id(first);
                ok = ok || (id && *id == top[static_cast<int64_t>(i)].item<int64_t>());
            }
            auto& rel = acc.per_relation[world.relations[p.relation].name];
            rel.second++;
            acc.prompts++;
            if (ok) {
                rel.first++;
                acc.correct++;
            }
        }
    }
    return acc;
}

double held_out_perplexity(const Model& model, const FactWorld& world) {
    if (!model.tokenizer()) throw Error(ErrorKind::Argument, "held_out_perplexity: the model has no tokenizer");
    c10::InferenceMode guard;
    const FactCorpus corpus = build_corpus(world);
    double nll = 0;
    int64_t count = 0;
    const int64_t n_ctx = model.hparams().n_ctx;
    for (const auto& text : corpus.held_out) {
        std::vector<int64_t> ids = model.tokenizer()->encode(text).ids;
        for (size_t start = 0; start + 1 < ids.size(); start += n_ctx) {
            const size_t len = std::min<size_t>(n_ctx + 1, ids.size() - start);
            at::Tensor seq = at::tensor(std::vector<int64_t>(ids.begin() + start, ids.begin() + start + len), at::kLong).unsqueeze(0);
            ForwardInput in;
            in.input_ids = seq.narrow(1, 0, len - 1);
            at::Tensor logp = at::log_softmax(model.forward(in).logits[0], -1);  // [len-1, V]
            at::Tensor target = seq[0].narrow(0, 1, len - 1);
            nll -= logp.gather(1, target.unsqueeze(1)).sum().item<double>();
            count += static_cast<int64_t>(len - 1);
        }
    }
    return count ? std::exp(nll / double(count)) : 0.0;
}

}  // namespace engram::demo
