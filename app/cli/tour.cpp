// `engram-cli tour`: a headless walk through what this build of Engram can do. Every figure it
// prints is measured in the run; nothing is canned. Later features add their own stops.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "engram/checkpoint.h"
#include "engram/demo.h"
#include "engram/error.h"
#include "engram/edit.h"
#include "engram/model.h"
#include "engram/store.h"
#include "engram/tokenizer.h"

namespace engram::cli {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

void heading(int n, const std::string& title) { std::cout << "\n" << n << ". " << title << "\n"; }

std::string shape_of(const at::Tensor& t) {
    std::string s = "[";
    for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
    return s + "]";
}

// The probability the model gives `token` at the last position.
double last_prob(const Model& m, const ForwardInput& in, Hooks* hooks, int64_t token) {
    ForwardInput last = in;
    last.last_logits_only = true;
    return at::softmax(m.forward(last, hooks).logits[0], -1)[token].item<double>();
}

void tour_model(const Model& model, int& step) {
    const HParams& hp = model.hparams();
    heading(++step, "The model");
    std::cout << "   " << model.arch_name() << ": " << hp.n_layer << " layers, width " << hp.n_embd << ", " << hp.n_head
              << " heads, " << model.parameter_count() << " parameters, stored as " << dtype_name(model.stored_dtype()) << "\n"
              << "   fingerprint " << model.fingerprint() << "\n";
    if (!model.is_decoder() || !model.tokenizer()) return;
    const Tokenizer& tok = *model.tokenizer();
    const std::string prompt = "The capital of France is";
    Encoding enc = tok.encode(prompt, true);
    heading(++step, "Tokens and the next-token distribution");
    std::cout << "   '" << prompt << "' ->";
    for (const auto& t : enc.tokens) std::cout << " [" << t << "]";
    std::cout << "\n";
    c10::InferenceMode guard;
    ForwardInput in;
    in.input_ids = at::tensor(enc.ids, at::kLong).unsqueeze(0);
    in.last_logits_only = true;
    auto [p, idx] = at::softmax(model.forward(in).logits[0], -1).topk(5);
    for (int64_t i = 0; i < 5; ++i)
        std::cout << "   " << std::fixed << std::setprecision(4) << p[i].item<double>() << "  '" << tok.decode({idx[i].item<int64_t>()}) << "'\n";
}

// The built-in worlds, when this build has them: facts the model knows, and an image classified.
void tour_demo_worlds(int& step) {
    std::filesystem::path facts_dir, shapes_dir;
    try {
        facts_dir = demo_resource_dir("factworld");
        shapes_dir = demo_resource_dir("shapes");
    } catch (const Error& e) {
        std::cout << "\n(" << e.what() << "; run `engram-cli demo train` to build the demo worlds)\n";
        return;
    }
    c10::InferenceMode guard;
    auto lm = Model::load(facts_dir);
    demo::FactWorld world = demo::generate_fact_world();
    heading(++step, "The Fact World: invented facts, and a model that learned them");
    std::cout << "   " << world.entities.size() << " entities, " << world.facts.size() << " facts, " << world.relations.size()
              << " relations; the model: " << lm->arch_name() << ", " << lm->hparams().n_layer << " layers, " << lm->parameter_count()
              << " parameters\n";
    std::vector<demo::FactPrompt> prompts = demo::all_fact_prompts(world);
    demo::Rng rng(5);
    for (int i = 0; i < 5; ++i) {
        const demo::FactPrompt& p = prompts[rng.below(prompts.size())];
        ForwardInput in;
        in.input_ids = at::tensor(lm->tokenizer()->encode(p.prompt).ids, at::kLong).unsqueeze(0);
        in.last_logits_only = true;
        at::Tensor probs = at::softmax(lm->forward(in).logits[0], -1);
        const int64_t top = probs.argmax().item<int64_t>();
        std::cout << "   " << p.prompt << " ->  '" << lm->tokenizer()->decode({top}) << "' (p=" << std::fixed << std::setprecision(2)
                  << probs[top].item<double>() << "; true: " << p.answers[0] << ")\n";
    }

    auto vit = Model::load(shapes_dir);
    heading(++step, "The Shapes World: a ViT that learned shapes, and the background it leans on");
    for (demo::ShapesSplit split : {demo::ShapesSplit::Test, demo::ShapesSplit::Counter}) {
        demo::ShapeSample sample = demo::render_shape_sample(2024, split, 3);
        ForwardInput in;
        in.pixel_values = demo::shape_pixels({sample}, 32);
        at::Tensor probs = at::softmax(vit->forward(in).logits[0], -1);
        const int64_t top = probs.argmax().item<int64_t>();
        std::cout << "   a " << demo::shape_class_names()[sample.label] << " on a " << demo::shape_background_names()[sample.background]
                  << " background (" << demo::shapes_split_name(split) << " split) -> " << vit->labels()[top] << " (p=" << std::setprecision(2)
                  << probs[top].item<double>() << ")\n";
    }
    std::cout << "   accuracy on 500 fresh images: test " << std::setprecision(1)
              << 100 * demo::evaluate_shapes_accuracy(*vit, 2024, demo::ShapesSplit::Test, 500) << "%, counter "
              << 100 * demo::evaluate_shapes_accuracy(*vit, 2024, demo::ShapesSplit::Counter, 500) << "%\n";
}

// An edit history on the tour's model: three edits recorded in a project, the history, and a
// rollback that reproduces the recorded state bit for bit. Returns whether every check held.
bool tour_edit_history(Model& model, const fs::path& dir, int& step) {
    heading(++step, "An edit history: every edit stored, replayable, and rolled back bit for bit");
    const fs::path file = dir / "tour.engram";
    auto project = Project::create(file, model);
    std::cout << "   project " << file.string() << " (SQLite: the base model's fingerprint, then every edit with its deltas)\n";
    ForwardInput in;
    in.input_ids = at::tensor(std::vector<int64_t>{5, 6, 7, 8, 9}, at::kLong).unsqueeze(0);
    const int64_t token = model.forward(in).logits[0][4].argmax().item<int64_t>();
    std::cout << std::fixed << std::setprecision(4) << "   p(token " << token << ") on the base model: " << last_prob(model, in, nullptr, token) << "\n";
    for (int i = 0; i < 3; ++i) {
        SyntheticEditOptions o;
        o.layer = 1 + 2 * i;
        o.rank = 2;
        o.seed = static_cast<uint64_t>(i);
        Edit e = make_synthetic_edit(model, o);
        project->record(model, e);
        std::cout << "   edit " << e.id << ": a synthetic rank-2 test delta on " << e.deltas[0].tensor << "; state " << e.state_hash_after.substr(0, 12)
                  << "..., p = " << last_prob(model, in, nullptr, token) << "\n";
    }
    int64_t bytes = 0;
    for (const auto& s : project->history()) bytes += s.blob_bytes;
    std::cout << "   history: " << project->history().size() << " edits, " << project->active_ids().size() << " active, " << bytes
              << " bytes of low-rank factors (the touched matrices hold "
              << 3 * model.weight(Slot::FfnDown, 1).numel() * 4 << " bytes)\n";
    const std::string recorded = project->history()[0].edit.state_hash_after;
    project->rollback(model, 1);
    const std::string rolled = state_hash(model);
    auto fresh = Model::load(dir);
    apply_edit(*fresh, project->edit(1));
    bool same = true;
    for (const auto& ref : model.weight_refs()) same = same && at::equal(model.weight(ref.slot, ref.layer), fresh->weight(ref.slot, ref.layer));
    std::cout << "   rollback to edit 1: state " << rolled.substr(0, 12) << "...; equal to the one recorded after edit 1: "
              << (rolled == recorded ? "yes" : "NO") << "; weights bit-identical to a fresh replay of edit 1: " << (same ? "yes" : "NO")
              << "\n   edits 2 and 3 are kept as 'reverted' (redo brings them back); p = " << last_prob(model, in, nullptr, token) << "\n";
    project->rollback(model, 0);
    const bool base = state_hash(model) == state_hash_of_base(model.fingerprint());
    std::cout << "   rollback to 0: the base model again: " << (base ? "yes" : "NO") << "\n"
              << "   (engram-cli edit|history|undo|redo|rollback|revert|export-model --db FILE.engram)\n";
    return rolled == recorded && same && base;
}

}  // namespace

int cmd_tour(const Argv& argv) {
    Args args(argv, command_spec("tour"));
    int step = 0;
    std::cout << "Engram tour: locating and editing what a transformer knows. Headless; every figure is measured now.\n";

    heading(++step, "Architectures Engram reads from Hugging Face checkpoint folders");
    std::cout << "  ";
    for (const auto& a : supported_architectures()) std::cout << " " << a;
    std::cout << "\n   (safetensors, single file or sharded; F32, F16 and BF16 weights, computed in F32)\n";

    if (auto dir = args.get("model")) {
        auto model = Model::load(*dir);
        tour_model(*model, step);
        std::cout << "\nMore: engram-cli --help\n";
        return 0;
    }

    tour_demo_worlds(step);
    tour_causal_trace(step);
    tour_fact_edit(step);
    tour_vit(step);

    // Make a model, save it as a HF checkpoint, and load it back as a user's would be.
    heading(++step, "A checkpoint round trip");
    HParams hp;
    hp.n_layer = 6;
    hp.n_embd = 128;
    hp.n_head = hp.n_head_kv = 4;
    hp.head_dim = 32;
    hp.n_ff = 512;
    hp.n_vocab = 512;
    hp.n_ctx = 64;
    hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    auto made = Model::random(Arch::Gpt2, hp, 7);
    const fs::path dir = fs::temp_directory_path() / ("engram-tour-" + std::to_string(::getpid()));
    save_checkpoint(*made, dir, DType::F16);
    auto t0 = Clock::now();
    auto model = Model::load(dir);
    const double load_ms = ms_since(t0);
    t0 = Clock::now();
    const std::string fp = model->fingerprint();
    const double fp_ms = ms_since(t0);
    t0 = Clock::now();
    const std::string fp_again = checkpoint_fingerprint(*model->checkpoint());
    const double cached_ms = ms_since(t0);
    std::cout << "   random GPT-2 (" << model->parameter_count() << " parameters) saved as F16 to " << dir.string() << "\n"
              << "   loaded (memory-mapped, bounds-checked, converted to F32) in " << std::fixed << std::setprecision(1) << load_ms << " ms\n"
              << "   fingerprint " << fp.substr(0, 16) << "... computed in " << fp_ms << " ms, read from the cache in "
              << std::setprecision(2) << cached_ms << " ms" << (fp == fp_again ? "" : " (MISMATCH)") << "\n";

    c10::InferenceMode guard;
    heading(++step, "Hook sites: every forward pass can be read and patched");
    ForwardInput in;
    in.input_ids = at::randint(0, hp.n_vocab, {1, 10}, at::kLong);
    Hooks read;
    for (Site s : {Site::Embed, Site::AttnOut, Site::MlpOut, Site::MlpKey, Site::HeadOut, Site::AttnProbs, Site::BlockOut}) read.capture(s);
    at::Tensor clean_logits = model->forward(in, &read).logits;
    for (Site s : {Site::Embed, Site::AttnOut, Site::MlpKey, Site::MlpOut, Site::HeadOut, Site::AttnProbs, Site::BlockOut})
        std::cout << "   " << std::left << std::setw(11) << site_name(s) << std::right << " layer " << (s == Site::Embed ? 0 : 2) << "  "
                  << shape_of(read.captured(s, s == Site::Embed ? 0 : 2)) << "\n";

    heading(++step, "Patching: corrupt two input positions, restore one hidden state per layer");
    const int64_t answer = clean_logits[0][9].argmax().item<int64_t>();
    const double p_clean = last_prob(*model, in, nullptr, answer);
    at::Generator gen = at::detail::createCPUGenerator(1);
    at::Tensor noise = at::normal(0.0, 3.0 * read.captured(Site::Embed, 0).std().item<double>(), {2, hp.n_embd}, gen);
    auto corrupt = [&](Hooks& h) {
        h.on(Site::Embed, 0, [noise](at::Tensor& e) { e.narrow(1, 2, 2).add_(noise.unsqueeze(0)); });
    };
    Hooks corrupted;
    corrupt(corrupted);
    const double p_corrupt = last_prob(*model, in, &corrupted, answer);
    std::cout << std::setprecision(4) << "   p(clean top-1) clean " << p_clean << ", corrupted " << p_corrupt << "\n   restored block_out at position 3:";
    for (int layer = 0; layer < hp.n_layer; ++layer) {
        Hooks patch;
        corrupt(patch);
        patch.replace(Site::BlockOut, layer, 0, 3, read.captured(Site::BlockOut, layer)[0][3]);
        std::cout << " L" << layer << "=" << std::setprecision(3) << last_prob(*model, in, &patch, answer);
    }
    std::cout << "\n   (a random model stores no facts; causal tracing over real models comes with the tracing feature)\n";

    heading(++step, "Generation with a KV cache");
    GenerateOptions opts;
    opts.max_new_tokens = 40;
    std::vector<int64_t> prompt = {1, 2, 3, 4};
    t0 = Clock::now();
    std::vector<int64_t> cached = generate(*model, prompt, opts);
    const double cached_gen_ms = ms_since(t0);
    t0 = Clock::now();
    std::vector<int64_t> naive = prompt;
    for (int i = 0; i < opts.max_new_tokens; ++i) {
        ForwardInput step_in;
        step_in.input_ids = at::tensor(naive, at::kLong).unsqueeze(0);
        step_in.last_logits_only = true;
        naive.push_back(model->forward(step_in).logits[0].argmax().item<int64_t>());
    }
    const double naive_ms = ms_since(t0);
    std::cout << std::setprecision(1) << "   40 greedy tokens: " << cached_gen_ms << " ms with the cache, " << naive_ms
              << " ms recomputing the prefix; same tokens: " << (cached == naive ? "yes" : "NO") << "\n";

    const bool history_ok = tour_edit_history(*model, dir, step);

    std::error_code ec;
    fs::remove_all(dir, ec);
    std::cout << "\nNext: engram-cli info|tokenize|predict|generate|forward --model DIR; classify, attribute, vit-edit and eval-vit for ViTs; bench forward.\n";
    return cached == naive && fp == fp_again && history_ok ? 0 : 1;
}

}  // namespace engram::cli
