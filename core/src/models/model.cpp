#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fstream>
#include <random>
#include <set>

#include "arch/arch.h"
#include "engram/checkpoint.h"
#include "engram/error.h"
#include "engram/file.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSlotNames[] = {
    "tok_embd",  "pos_embd",   "patch_embd", "patch_embd_b", "cls_token", "attn_norm", "attn_norm_b", "attn_qkv",
    "attn_qkv_b", "attn_q",    "attn_q_b",   "attn_k",       "attn_k_b",  "attn_v",    "attn_v_b",    "attn_out",
    "attn_out_b", "ffn_norm",  "ffn_norm_b", "ffn_up",       "ffn_up_b",  "ffn_gate",  "ffn_gate_b",  "ffn_down",
    "ffn_down_b", "out_norm",  "out_norm_b", "output",       "output_b",
};
static_assert(sizeof(kSlotNames) / sizeof(kSlotNames[0]) == kSlotCount, "slot names out of step with Slot");

std::string expand(const char* pattern, int layer) {
    std::string s = pattern;
    if (auto pos = s.find("{L}"); pos != std::string::npos) s.replace(pos, 3, std::to_string(layer));
    return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// The candidates for a table name: with the family prefix, then without (older checkpoints,
// base-model exports). A leading '/' means the name lives outside the prefix.
std::vector<std::string> candidates(const Family& fam, const char* pattern, int layer) {
    if (pattern[0] == '/') return {expand(pattern + 1, layer)};
    const std::string name = expand(pattern, layer);
    return {fam.prefix + name, name};
}

ImagePreprocess read_preprocess(const fs::path& file, const HParams& hp) {
    if (!fs::exists(file)) {
        ImagePreprocess pre;
        pre.height = pre.width = hp.image_size;
        return pre;
    }
    try {
        return parse_preprocessor_config(read_json_file(file), hp);
    } catch (const Error& e) {
        throw e.with_context(file.string());
    }
}

}  // namespace

const char* slot_name(Slot slot) { return kSlotNames[static_cast<size_t>(slot)]; }

struct ModelLoader {
    static std::unique_ptr<Model> load(const fs::path& dir, const LoadOptions& options) {
        auto ck = std::make_unique<Checkpoint>(Checkpoint::open(dir));
        const nlohmann::json& config = ck->config();
        const fs::path config_path = dir / "config.json";

        ModelConfig cfg;
        try {
            cfg = parse_model_config(config);
        } catch (const Error& e) {
            throw e.with_context(config_path.string());
        }
        const Family* fam = &family_of(cfg.arch);
        const std::string hf_class = cfg.hf_class;

        auto model = std::unique_ptr<Model>(new Model());
        model->arch_ = fam->arch;
        model->arch_name_ = hf_class;
        model->dir_ = dir;
        model->hparams_ = cfg.hparams;
        const HParams& hp = model->hparams_;
        if (hp.n_layer <= 0 || hp.n_embd <= 0)
            throw Error(ErrorKind::Config, config_path.string() + ": the layer count and hidden size must be positive");
        // Every layer needs tensors of its own: a layer count the checkpoint cannot hold is refused
        // before anything is sized by it (a hostile config.json would otherwise allocate per layer).
        if (static_cast<uint64_t>(hp.n_layer) > ck->tensors().size())
            throw Error(ErrorKind::Config, config_path.string() + ": " + std::to_string(hp.n_layer) + " layers, but the checkpoint holds only " +
                                               std::to_string(ck->tensors().size()) + " tensors");
        model->stored_dtype_ = ck->stored_dtype();

        // Weights stored in the compute dtype stay views of the mapped file; the others are converted
        // once into new memory. That memory is checked against the machine's before any is taken.
        uint64_t converted = 0;
        const uint64_t compute_size = c10::elementSize(options.compute_dtype);
        for (const TensorSpec& spec : fam->tensors) {
            if (spec.present && !spec.present(hp)) continue;
            for (int il = 0; il < (spec.per_layer ? static_cast<int>(hp.n_layer) : 1); ++il)
                for (const auto& name : candidates(*fam, spec.name, il))
                    if (ck->has(name)) {
                        const TensorInfo& info = ck->info(name);
                        if (to_scalar_type(info.dtype) != options.compute_dtype) converted += info.nbytes() / dtype_size(info.dtype) * compute_size;
                        break;
                    }
        }
        require_memory(converted, dir.string() + ": converting the weights to " + std::string(c10::toString(options.compute_dtype)));

        model->layers.resize(hp.n_layer);
        std::set<std::string> used;
        // Weights never require grad. Plain tensors, not inference tensors: editing methods
        // differentiate through the frozen weights (only their own deltas are leaves).
        at::NoGradGuard no_grad;
        for (const TensorSpec& spec : fam->tensors) {
            if (spec.present && !spec.present(hp)) continue;
            const int n = spec.per_layer ? static_cast<int>(hp.n_layer) : 1;
            for (int il = 0; il < n; ++il) {
                auto names = candidates(*fam, spec.name, il);
                const std::string* found = nullptr;
                for (const auto& name : names)
                    if (ck->has(name)) {
                        found = &name;
                        break;
                    }
                if (!found)
                    throw Error(ErrorKind::Config, dir.string() + ": tensor '" + names[0] + "' is missing (" + hf_class + " with " +
                                                       std::to_string(hp.n_layer) + " layers needs it)");
                const TensorInfo& info = ck->info(*found);
                const std::vector<int64_t> expected = spec.shape(hp);
                if (info.shape != expected)
                    throw Error(ErrorKind::Config, dir.string() + ": tensor '" + *found + "' has shape " + shape_str(info.shape) +
                                                       " but config.json implies " + shape_str(expected));
                if (info.dtype != DType::F32 && info.dtype != DType::F16 && info.dtype != DType::BF16 && info.dtype != DType::F64)
                    throw Error(ErrorKind::Unsupported, dir.string() + ": tensor '" + *found + "' has dtype " + dtype_name(info.dtype) +
                                                            " (weights must be F32, F16 or BF16)");
                at::Tensor t = ck->tensor(*found);
                if (t.scalar_type() != options.compute_dtype) t = t.to(options.compute_dtype);  // converted once
                if (options.device != c10::Device(c10::kCPU)) t = t.to(options.device);
                if (spec.layout == Layout::Conv1D) t = t.t();  // [in, out] -> [out, in], a view
                (spec.per_layer ? model->layers[il] : model->globals)[size_t(spec.slot)] = t;
                used.insert(*found);
            }
        }
        if (hp.tied_output && !model->globals[size_t(Slot::Output)].defined())
            model->globals[size_t(Slot::Output)] = model->globals[size_t(Slot::TokEmbd)];
        model->device_ = options.device;
        model->checkpoint_ = std::move(ck);
        model->base_globals = model->globals;
        model->base_layers = model->layers;

        if (fam->arch == Arch::Vit) {
            model->labels_ = cfg.labels;
            model->preprocess_ = read_preprocess(dir / "preprocessor_config.json", hp);
        }
        if (options.load_tokenizer && fam->arch != Arch::Vit) {
            const bool has_tokenizer = fs::exists(dir / "tokenizer.json") || fs::exists(dir / "vocab.json") ||
                                       fs::exists(dir / "tokenizer.model");
            if (has_tokenizer) model->tokenizer_ = load_tokenizer(dir);
        }
        return model;
    }
};

std::unique_ptr<Model> Model::load(const fs::path& dir, const LoadOptions& options) {
    try {
        return ModelLoader::load(dir, options);
    } catch (const c10::Error& e) {
        throw Error(ErrorKind::Internal, dir.string() + ": libtorch error while loading: " + e.what_without_backtrace());
    }
}

std::unique_ptr<Model> Model::random(Arch arch, const HParams& hp, uint64_t seed, bool trainable) {
    const Family& fam = family_of(arch);
    auto model = std::unique_ptr<Model>(new Model());
    model->arch_ = arch;
    model->arch_name_ = default_class_name(fam.arch);
    model->hparams_ = hp;
    model->layers.resize(hp.n_layer);
    at::Generator gen = at::detail::createCPUGenerator(seed);
    at::NoGradGuard no_grad;  // plain tensors (see load); trainable ones become leaves below
    for (const TensorSpec& spec : fam.tensors) {
        if (spec.present && !spec.present(hp)) continue;
        const int n = spec.per_layer ? static_cast<int>(hp.n_layer) : 1;
        for (int il = 0; il < n; ++il) {
            std::vector<int64_t> shape = spec.shape(hp);
            if (spec.layout == Layout::Conv1D) std::reverse(shape.begin(), shape.end());  // held as [out, in]
            const std::string name = slot_name(spec.slot);
            const bool is_norm = spec.slot == Slot::AttnNorm || spec.slot == Slot::FfnNorm || spec.slot == Slot::OutNorm;
            const bool is_bias = name.size() > 2 && name.substr(name.size() - 2) == "_b";
            at::Tensor t = is_norm ? at::ones(shape) : is_bias ? at::zeros(shape) : at::normal(0.0, 0.02, shape, gen);
            if (trainable) t.requires_grad_(true);
            (spec.per_layer ? model->layers[il] : model->globals)[size_t(spec.slot)] = t;
        }
    }
    if (hp.tied_output && !model->globals[size_t(Slot::Output)].defined())
        model->globals[size_t(Slot::Output)] = model->globals[size_t(Slot::TokEmbd)];
    model->base_globals = model->globals;
    model->base_layers = model->layers;
    for (int64_t i = 0; i < (arch == Arch::Vit ? hp.n_labels : 0); ++i) model->labels_.push_back("LABEL_" + std::to_string(i));
    model->preprocess_.height = model->preprocess_.width = hp.image_size;
    return model;
}

void save_checkpoint(const Model& model, const fs::path& dir, DType storage) {
    if (storage != DType::F32 && storage != DType::F16 && storage != DType::BF16)
        throw Error(ErrorKind::Argument, "checkpoints are stored as F32, F16 or BF16");
    const Family& fam = family_of(model.arch());
    const HParams& hp = model.hparams();
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw Error(ErrorKind::Io, dir.string() + ": cannot create folder (" + ec.message() + ")");
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const TensorSpec& spec : fam.tensors) {
        if (spec.present && !spec.present(hp)) continue;
        const int n = spec.per_layer ? static_cast<int>(hp.n_layer) : 1;
        for (int il = 0; il < n; ++il) {
            at::Tensor t = model.weight(spec.slot, spec.per_layer ? il : -1);
            if (!t.defined()) continue;
            if (spec.layout == Layout::Conv1D) t = t.t();
            tensors.emplace_back(candidates(fam, spec.name, il)[0], t.to(at::kCPU).to(to_scalar_type(storage)).contiguous());
        }
    }
    nlohmann::json config = fam.write_config(hp);
    if (model.arch() == Arch::Vit) {
        nlohmann::json labels = nlohmann::json::object();
        for (size_t i = 0; i < model.labels().size(); ++i) labels[std::to_string(i)] = model.labels()[i];
        config["id2label"] = labels;
    }
    config["dtype"] = storage == DType::F32 ? "float32" : storage == DType::F16 ? "float16" : "bfloat16";
    config["producer"] = "engram";
    write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
    const fs::path config_path = dir / "config.json";
    std::ofstream out(config_path);
    out << config.dump(2) << "\n";
    if (!out) throw Error(ErrorKind::Io, config_path.string() + ": cannot write");
}

Model::~Model() = default;

std::vector<at::Tensor> Model::parameters() const {
    std::vector<at::Tensor> out;
    std::set<const void*> seen;
    auto add = [&](const at::Tensor& t) {
        if (t.defined() && seen.insert(t.unsafeGetTensorImpl()).second) out.push_back(t);
    };
    for (const auto& t : globals) add(t);
    for (const auto& layer : layers)
        for (const auto& t : layer) add(t);
    return out;
}

int64_t Model::parameter_count() const {
    std::set<const void*> seen;  // a tied head is counted once
    int64_t n = 0;
    auto add = [&](const at::Tensor& t) {
        if (t.defined() && seen.insert(t.data_ptr()).second) n += t.numel();
    };
    for (const auto& t : globals) add(t);
    for (const auto& layer : layers)
        for (const auto& t : layer) add(t);
    return n;
}

std::string Model::fingerprint() const {
    if (fingerprint_.empty() && checkpoint_) fingerprint_ = checkpoint_fingerprint(*checkpoint_);
    return fingerprint_;
}

void Model::to(c10::Device device) {
    c10::InferenceMode guard;
    std::map<const void*, at::Tensor> moved;  // keep tied weights tied
    auto move = [&](at::Tensor& t) {
        if (!t.defined()) return;
        auto [it, fresh] = moved.try_emplace(t.data_ptr());
        if (fresh) it->second = t.to(device);
        t = it->second;
    };
    for (auto& t : base_globals) move(t);
    for (auto& layer : base_layers)
        for (auto& t : layer) move(t);
    for (auto& t : globals) move(t);
    for (auto& layer : layers)
        for (auto& t : layer) move(t);
    adapters_.to(device);
    device_ = device;
}

std::vector<Model::WeightRef> Model::weight_refs() const {
    const Family& fam = family_of(arch_);
    std::vector<WeightRef> out;
    for (const TensorSpec& spec : fam.tensors) {
        const int n = spec.per_layer ? static_cast<int>(hparams_.n_layer) : 1;
        for (int il = 0; il < n; ++il) {
            const int layer = spec.per_layer ? il : -1;
            if (!weight(spec.slot, layer).defined()) continue;
            out.push_back({spec.slot, layer, tensor_name(spec.slot, layer)});
        }
    }
    return out;
}

std::optional<Model::WeightRef> Model::find_weight(const std::string& name) const {
    for (auto& ref : weight_refs())
        if (ref.name == name) return ref;
    return std::nullopt;
}

const at::Tensor& Model::base_weight(Slot slot, int layer) const {
    if (layer < 0) return base_globals[size_t(slot)];
    if (layer >= static_cast<int>(base_layers.size())) throw Error(ErrorKind::Argument, "layer " + std::to_string(layer) + " out of range");
    return base_layers[layer][size_t(slot)];
}

bool Model::is_base(Slot slot, int layer) const { return weight(slot, layer).is_same(base_weight(slot, layer)); }

void Model::restore_base(Slot slot, int layer) { weight(slot, layer) = base_weight(slot, layer); }

void Model::restore_all_base() {
    globals = base_globals;
    layers = base_layers;
}

void Model::apply_adapter_op(const AdapterOp& op) {
    if (!is_decoder()) throw Error(ErrorKind::Unsupported, "adapter " + op.adapter + ": adapters run on decoder language models, not " + arch_name_);
    if (op.layer < 0 || op.layer >= hparams_.n_layer)
        throw Error(ErrorKind::Argument, "adapter " + op.adapter + ": layer " + std::to_string(op.layer) + " is out of range for a " +
                                             std::to_string(hparams_.n_layer) + "-layer model (0.." + std::to_string(hparams_.n_layer - 1) + ")");
    if (std::string(attach_module_name(op.slot)) == "?")
        throw Error(ErrorKind::Argument, "adapter " + op.adapter + ": adapters attach to mlp.down (the MLP down-projection)");
    const at::Tensor& w = weight(op.slot, op.layer);
    if (!w.defined()) throw Error(ErrorKind::Argument, "adapter " + op.adapter + ": " + arch_name_ + " has no " + attach_module_name(op.slot));
    adapters_.apply(op, w.size(0), w.size(1));
}

void Model::set_tokenizer(std::unique_ptr<Tokenizer> tokenizer) { tokenizer_ = std::move(tokenizer); }

at::Tensor& Model::weight(Slot slot, int layer) {
    if (layer < 0) return globals[size_t(slot)];
    if (layer >= static_cast<int>(layers.size())) throw Error(ErrorKind::Argument, "layer " + std::to_string(layer) + " out of range");
    return layers[layer][size_t(slot)];
}

const at::Tensor& Model::weight(Slot slot, int layer) const { return const_cast<Model*>(this)->weight(slot, layer); }

std::string Model::tensor_name(Slot slot, int layer) const {
    const Family& fam = family_of(arch_);
    for (const TensorSpec& spec : fam.tensors) {
        if (spec.slot != slot || spec.per_layer != (layer >= 0)) continue;
        auto names = candidates(fam, spec.name, std::max(layer, 0));
        if (checkpoint_)
            for (const auto& n : names)
                if (checkpoint_->has(n)) return n;
        return names[0];
    }
    throw Error(ErrorKind::Argument, std::string("slot ") + slot_name(slot) + " is not used by " + arch_name_);
}

ForwardOutput Model::forward(const ForwardInput& input, Hooks* hooks, KvCache* cache) const {
    if (is_decoder()) {
        if (!input.input_ids.defined() || input.input_ids.dim() != 2)
            throw Error(ErrorKind::Argument, "input_ids must be a [batch, positions] integer tensor");
        if (input.input_ids.numel() > 0) {
            const int64_t lo = input.input_ids.min().item<int64_t>(), hi = input.input_ids.max().item<int64_t>();
            if (lo < 0 || hi >= hparams_.n_vocab)
                throw Error(ErrorKind::Argument, "token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary of " +
                                                     std::to_string(hparams_.n_vocab));
        }
    }
    try {
        return family_of(arch_).forward(*this, input, hooks, cache);
    } catch (const c10::Error& e) {
        throw Error(ErrorKind::Internal, "forward: libtorch error: " + std::string(e.what_without_backtrace()));
    }
}

std::vector<int64_t> generate(const Model& model, const std::vector<int64_t>& prompt, const GenerateOptions& options) {
    if (!model.is_decoder()) throw Error(ErrorKind::Argument, "generate needs a decoder model");
    if (prompt.empty()) throw Error(ErrorKind::Argument, "generate needs at least one prompt token");
    c10::InferenceMode guard;
    std::vector<int64_t> out = prompt;
    KvCache cache;
    std::mt19937_64 rng(options.seed);
    at::Tensor next_input = at::tensor(prompt, at::kLong).unsqueeze(0);
    for (int64_t step = 0; step < options.max_new_tokens; ++step) {
        if (static_cast<int64_t>(out.size()) > model.hparams().n_ctx) break;
        ForwardInput in;
        in.input_ids = next_input;
        in.last_logits_only = true;
        if (step > 0) in.route_position = at::full({1}, -1, at::kLong);  // adapters route on the prompt (adapter.h)
        at::Tensor logits = model.forward(in, nullptr, &cache).logits[0].to(at::kCPU).to(at::kFloat);  // [n_vocab]
        int64_t next = 0;
        if (options.top_k <= 1) {
            next = logits.argmax().item<int64_t>();
        } else {
            auto [vals, idx] = logits.topk(std::min<int64_t>(options.top_k, logits.size(0)));
            at::Tensor p = at::softmax(vals, 0).to(at::kDouble).contiguous();
            std::discrete_distribution<int64_t> dist(p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
            next = idx[dist(rng)].item<int64_t>();
        }
        out.push_back(next);
        if (options.stop_token && next == *options.stop_token) break;
        next_input = at::full({1, 1}, next, at::kLong);
    }
    return out;
}

}  // namespace engram
