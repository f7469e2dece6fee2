#include "commands.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "args.h"
#include "engram/bench.h"
#include "engram/checkpoint.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

c10::Device parse_device(const Args& args) {
    const std::string d = args.get("device").value_or("cpu");
    try {
        c10::Device device(d);
        if (device.is_cuda() && !at::hasCUDA())
            throw Error(ErrorKind::Argument, "--device " + d + ": this build of libtorch has no CUDA support or no GPU is visible");
        if (!device.is_cpu() && !device.is_cuda()) throw Error(ErrorKind::Argument, "--device must be cpu or cuda[:N]");
        return device;
    } catch (const c10::Error&) {
        throw Error(ErrorKind::Argument, "--device: cannot parse '" + d + "' (use cpu or cuda[:N])");
    }
}

// Without --model (and without --db), commands use the built-in demo model of their kind.
std::unique_ptr<Model> open_model(const Args& args, const char* default_world = "factworld") {
    LoadOptions opts;
    opts.device = parse_device(args);
    std::unique_ptr<Model> model;
    if (args.has("db")) model = open_project_model(args.require("db"), args.get("model"), opts);
    else if (auto dir = args.get("model")) model = Model::load(*dir, opts);
    else model = Model::load(demo_resource_dir(default_world), opts);
    if (auto tok = args.get("tokenizer")) model->set_tokenizer(load_tokenizer(*tok));
    return model;
}

const Tokenizer& need_tokenizer(const Model& model) {
    if (!model.tokenizer())
        throw Error(ErrorKind::Argument, model.dir().string() + ": the model folder has no tokenizer (tokenizer.json, vocab.json + merges.txt, "
                                                                "or tokenizer.model); pass --tokenizer DIR");
    return *model.tokenizer();
}

std::vector<int64_t> encode_prompt(const Tokenizer& tok, const std::string& prompt) {
    std::vector<int64_t> ids = tok.encode(prompt, /*add_special_tokens=*/true).ids;
    if (ids.empty()) throw Error(ErrorKind::Argument, "the prompt '" + prompt + "' encodes to no tokens");
    return ids;
}

}  // namespace

int cmd_info(const Argv& argv) {
    Args args(argv, command_spec("info"));
    auto model = open_model(args);
    const HParams& hp = model->hparams();
    json j = {
        {"architecture", model->arch_name()},
        {"path", model->dir().string()},
        {"parameters", model->parameter_count()},
        {"stored_dtype", dtype_name(model->stored_dtype())},
        {"compute_dtype", "F32"},
        {"fingerprint", model->fingerprint()},
        {"hparams",
         {{"n_layer", hp.n_layer}, {"n_embd", hp.n_embd}, {"n_head", hp.n_head}, {"n_head_kv", hp.n_head_kv},
          {"head_dim", hp.head_dim}, {"n_ff", hp.n_ff}, {"n_vocab", hp.n_vocab}, {"n_ctx", hp.n_ctx}, {"norm_eps", hp.norm_eps},
          {"activation", hp.activation}, {"tied_output", hp.tied_output}}},
        {"tokenizer", model->tokenizer() ? model->tokenizer()->kind() : "none"},
    };
    if (hp.rotary_dim > 0) j["hparams"]["rotary_dim"] = hp.rotary_dim, j["hparams"]["rope_theta"] = hp.rope_theta;
    if (model->arch() == Arch::Vit) {
        j["hparams"]["image_size"] = hp.image_size;
        j["hparams"]["patch_size"] = hp.patch_size;
        j["labels"] = model->labels();
    }
    json adapters = json::array();
    for (const auto& a : model->adapters().list())
        adapters.push_back({{"name", a.name}, {"kind", a.kind}, {"attach", attach_module_name(a.slot)}, {"layer", a.layer},
                            {"state", a.description}});
    j["adapters"] = adapters;
    if (args.flag("json")) {
        std::cout << j.dump() << "\n";
        return 0;
    }
    std::cout << "architecture  " << model->arch_name() << "\n"
              << "path          " << model->dir().string() << "\n"
              << "parameters    " << model->parameter_count() << "\n"
              << "stored dtype  " << dtype_name(model->stored_dtype()) << " (computing in F32)\n"
              << "fingerprint   " << model->fingerprint() << "\n"
              << "tokenizer     " << j["tokenizer"].get<std::string>() << "\n"
              << "hparams       " << j["hparams"].dump() << "\n";
    for (const auto& a : adapters)
        std::cout << "adapter       " << a["name"].get<std::string>() << " (" << a["kind"].get<std::string>() << " on layer " << a["layer"]
                  << " " << a["attach"].get<std::string>() << ") " << a["state"].dump() << "\n";
    if (args.has("db") && adapters.empty()) std::cout << "adapters      none\n";
    return 0;
}

int cmd_tokenize(const Argv& argv) {
    Args args(argv, command_spec("tokenize"));
    std::unique_ptr<Tokenizer> tok;
    if (auto dir = args.get("tokenizer")) tok = load_tokenizer(*dir);
    else if (auto m = args.get("model")) tok = load_tokenizer(*m);
    else throw Error(ErrorKind::Argument, "tokenize needs --model DIR or --tokenizer DIR");
    Encoding enc = tok->encode(args.require("text"), args.flag("add-special-tokens"));
    json j = {{"ids", enc.ids}, {"tokens", enc.tokens}};
    std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
}

int cmd_forward(const Argv& argv) {
    Args args(argv, command_spec("forward"));
    auto model = open_model(args);
    const fs::path in_path = args.require("inputs"), out_path = args.require("out");
    Checkpoint inputs = Checkpoint::open_file(in_path);
    c10::InferenceMode guard;
    ForwardInput in;
    if (model->is_decoder()) {
        if (!inputs.has("input_ids")) throw Error(ErrorKind::Argument, in_path.string() + ": no 'input_ids' tensor");
        if (inputs.info("input_ids").dtype != DType::I64 || inputs.info("input_ids").shape.size() != 2)
            throw Error(ErrorKind::Argument, in_path.string() + ": 'input_ids' must be I64 [batch, positions]");
        in.input_ids = inputs.tensor("input_ids").clone();
        if (inputs.has("attention_mask")) {
            in.attention_mask = inputs.tensor("attention_mask").to(at::kLong);
            if (in.attention_mask.sizes() != in.input_ids.sizes())
                throw Error(ErrorKind::Argument, in_path.string() + ": 'attention_mask' must have the shape of 'input_ids'");
        }
    } else {
        if (!inputs.has("pixel_values")) throw Error(ErrorKind::Argument, in_path.string() + ": no 'pixel_values' tensor");
        in.pixel_values = inputs.tensor("pixel_values").to(at::kFloat);
    }
    Hooks hooks;
    hooks.capture(Site::BlockOut);
    if (model->is_decoder()) {
        hooks.capture(Site::AttnOut);
        hooks.capture(Site::MlpOut);
    } else {
        hooks.capture(Site::AttnProbs);
    }
    at::Tensor logits = model->forward(in, &hooks).logits;
    std::vector<std::pair<std::string, at::Tensor>> out = {{"logits", logits.to(at::kCPU).to(at::kFloat)}};
    for (const auto& [key, value] : hooks.all_captured())
        out.emplace_back(std::string(site_name(key.site)) + "." + std::to_string(key.layer), value.to(at::kCPU).to(at::kFloat));
    write_safetensors(out_path, out, {{"model", model->arch_name()}, {"producer", "engram-cli forward"}});
    std::cout << "wrote " << out.size() << " tensors to " << out_path.string() << "\n";
    return 0;
}

int cmd_predict(const Argv& argv) {
    Args args(argv, command_spec("predict"));
    const int64_t k = args.integer("top-k", 5, 1);  // arguments are checked before the model loads
    auto model = open_model(args);
    const Tokenizer& tok = need_tokenizer(*model);
    std::vector<std::string> prompts = args.all("prompt");
    if (auto file = args.get("prompts-file")) {
        std::ifstream f(*file);
        if (!f) throw Error(ErrorKind::Io, *file + ": cannot open");
        for (std::string line; std::getline(f, line);)
            if (!line.empty()) prompts.push_back(line);
    }
    if (prompts.empty()) throw Error(ErrorKind::Argument, "predict needs --prompt P or --prompts-file F");
    c10::InferenceMode guard;
    for (const auto& prompt : prompts) {
        ForwardInput in;
        in.input_ids = at::tensor(encode_prompt(tok, prompt), at::kLong).unsqueeze(0);
        in.last_logits_only = true;
        at::Tensor probs = at::softmax(model->forward(in).logits[0].to(at::kCPU), -1);
        auto [p, idx] = probs.topk(std::min<int64_t>(k, probs.size(0)));
        json top = json::array();
        for (int64_t i = 0; i < p.size(0); ++i) {
            const int64_t id = idx[i].item<int64_t>();
            top.push_back({{"token", tok.decode({id})}, {"id", id}, {"prob", p[i].item<double>()}});
        }
        json line = {{"prompt", prompt}, {"top", top}};
        // Adapter edits (a project's GRACE codebook): what each did with this prompt.
        const std::vector<AdapterRoute> routes = explain_adapters(*model, encode_prompt(tok, prompt));
        if (!routes.empty()) {
            json a = json::array();
            for (const AdapterRoute& r : routes) a.push_back({{"adapter", r.adapter}, {"replaced", r.replaced}, {"detail", r.detail}});
            line["adapters"] = a;
        }
        if (args.flag("json")) {
            std::cout << line.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
        } else {
            std::cout << prompt << "\n";
            for (const auto& t : top)
                std::cout << "  " << std::fixed << std::setprecision(4) << t["prob"].get<double>() << "  "
                          << json(t["token"]).dump(-1, ' ', false, json::error_handler_t::replace) << " (" << t["id"] << ")\n";
            for (const AdapterRoute& r : routes) std::cout << "  " << describe_route(r) << "\n";
        }
    }
    return 0;
}

int cmd_generate(const Argv& argv) {
    Args args(argv, command_spec("generate"));
    const std::string prompt = args.require("prompt");
    GenerateOptions opts;
    opts.max_new_tokens = args.integer("max-new-tokens", 20, 0);
    opts.top_k = args.integer("top-k", 0, 0);
    opts.seed = static_cast<uint64_t>(args.integer("seed", 0, 0));
    auto model = open_model(args);
    const Tokenizer& tok = need_tokenizer(*model);
    opts.stop_token = tok.eos_id();
    std::vector<int64_t> prompt_ids = encode_prompt(tok, prompt);
    std::vector<int64_t> ids = generate(*model, prompt_ids, opts);
    std::vector<int64_t> fresh(ids.begin() + static_cast<long>(prompt_ids.size()), ids.end());
    const std::string completion = tok.decode(fresh, /*skip_special_tokens=*/true);
    if (args.flag("json"))
        std::cout << json{{"prompt", prompt}, {"completion", completion}, {"ids", fresh}}.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    else
        std::cout << prompt << completion << "\n";
    return 0;
}

int cmd_classify(const Argv& argv) {
    Args args(argv, command_spec("classify"));
    const auto& images = args.all("image");
    if (images.empty()) throw Error(ErrorKind::Argument, "classify needs --image FILE");
    const int64_t k = args.integer("top-k", 5, 1);
    auto model = open_model(args, "shapes");
    if (model->arch() != Arch::Vit) throw Error(ErrorKind::Argument, model->arch_name() + " is not an image classifier");
    c10::InferenceMode guard;
    for (const auto& path : images) {
        ForwardInput in;
        in.pixel_values = load_model_image(*model, path);
        at::Tensor probs = at::softmax(model->forward(in).logits[0].to(at::kCPU), -1);
        auto [p, idx] = probs.topk(std::min<int64_t>(k, probs.size(0)));
        json top = json::array();
        for (int64_t i = 0; i < p.size(0); ++i) {
            const int64_t id = idx[i].item<int64_t>();
            top.push_back({{"label", model->labels()[id]}, {"id", id}, {"prob", p[i].item<double>()}});
        }
        json line = {{"image", path}, {"top", top}};
        if (args.flag("json")) {
            std::cout << line.dump() << "\n";
        } else {
            std::cout << path << "\n";
            for (const auto& t : top)
                std::cout << "  " << std::fixed << std::setprecision(4) << t["prob"].get<double>() << "  " << t["label"].get<std::string>() << "\n";
        }
    }
    return 0;
}

int cmd_bench(const Argv& argv) {
    if (!argv.empty() && argv[0] == "trace") return cmd_bench_trace(Argv(argv.begin() + 1, argv.end()));
    if (!argv.empty() && argv[0] == "edit") return cmd_bench_edit(Argv(argv.begin() + 1, argv.end()));
    if (!argv.empty() && argv[0] == "stats") return cmd_bench_stats(Argv(argv.begin() + 1, argv.end()));
    Args args(argv, command_spec("bench"));
    if (args.positional().size() == 1 && args.positional()[0] == "load") {
        args.refuse({"batch", "seq", "iters", "device"}, "applies to bench forward only");
        const fs::path dir = fs::temp_directory_path() / ("engram-bench-load-" + std::to_string(::getpid()));
        std::cout << "bench load: a random GPT-2-small-shaped F32 checkpoint written to " << dir.string() << "\n";
        LoadBenchResult r = bench_load(dir.string());
        std::error_code ec;
        fs::remove_all(dir, ec);
        std::cout << std::fixed << std::setprecision(1) << "  checkpoint             " << r.checkpoint_mb << " MB\n"
                  << "  load (mmap, checks)    " << r.load_ms << " ms (target < 1000 ms)\n"
                  << "  fingerprint, first     " << r.fingerprint_ms << " ms (" << r.checkpoint_mb / r.fingerprint_ms * 1e3 / 1e3
                  << " GB/s)\n"
                  << "  load + fingerprint, cached " << r.cached_fingerprint_ms << " ms\n"
                  << "  first forward (8 tokens) " << r.first_forward_ms << " ms\n";
        return 0;
    }
    if (args.positional().size() != 1 || args.positional()[0] != "forward")
        throw Error(ErrorKind::Argument, "usage: engram-cli bench forward [--batch B --seq T --iters N --device D] | bench load");
    const c10::Device device = parse_device(args);
    const int64_t batch = args.integer("batch", 8, 1), seq = args.integer("seq", 128, 1), iters = args.integer("iters", 3, 1);
    if (seq > 1024) throw Error(ErrorKind::Argument, "--seq must be at most 1024 (GPT-2's context)");
    std::cout << "bench forward: random GPT-2-small-shaped model, batch " << batch << " x seq " << seq << " on " << device.str()
              << " (" << at::get_num_threads() << " threads)\n";
    const int64_t codebook = args.integer("codebook", 0, 0);
    ForwardBenchResult r = bench_forward(batch, seq, iters, device, codebook);
    std::cout << std::fixed << std::setprecision(1) << "  parameters        " << double(r.parameters) / 1e6 << " M\n"
              << "  forward           " << std::setprecision(3) << r.seconds_per_forward * 1e3 << " ms (mean of " << r.iterations << ")\n"
              << "  tokens/s          " << std::setprecision(0) << r.tokens_per_second << "\n"
              << "  forward GFLOP/s   " << std::setprecision(1) << r.forward_gflops << "  (" << r.flops_per_forward / 1e9
              << " GFLOP per forward)\n"
              << "  matmul peak       " << r.matmul_peak_gflops << " GFLOP/s (square fp32 matmul, same run)\n"
              << "  ratio             " << std::setprecision(2) << r.forward_gflops / r.matmul_peak_gflops << " of peak (target >= 0.50)\n";
    if (r.codebook_entries > 0)
        std::cout << std::setprecision(3) << "  GRACE codebook    " << r.codebook_entries << " entries: " << r.seconds_per_forward_codebook * 1e3
                  << " ms against " << r.seconds_per_forward_plain * 1e3 << " ms without (interleaved, mean of " << r.iterations
                  << "); ratio " << r.seconds_per_forward_codebook / r.seconds_per_forward_plain << " (target <= 1.05)\n";
    return 0;
}

}  // namespace engram::cli
