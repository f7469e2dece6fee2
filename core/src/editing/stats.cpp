// Second-moment statistics C = E[k k^T] of the down-projection input per layer, from a text corpus
// (specs/locate_then_edit.md §1.5), cached on disk keyed by model fingerprint, layer, corpus hash
// and sample count.
#include "engram/editing.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <sstream>

#include "editing/internal.h"
#include "engram/checkpoint.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"
#include "engram/tokenizer.h"

namespace engram {

namespace fs = std::filesystem;

namespace {

// Swaps every weight slot to its base tensor for the lifetime of the guard (statistics are those
// of the unedited model); nothing is copied.
class BaseWeightsScope {
public:
    explicit BaseWeightsScope(const Model& model) : model_(const_cast<Model&>(model)), globals_(model.globals), layers_(model.layers) {
        model_.globals = model_.base_globals;
        model_.layers = model_.base_layers;
    }
    ~BaseWeightsScope() {
        model_.globals = globals_;
        model_.layers = layers_;
    }
    BaseWeightsScope(const BaseWeightsScope&) = delete;
    BaseWeightsScope& operator=(const BaseWeightsScope&) = delete;

private:
    Model& model_;
    SlotTensors globals_;
    std::vector<SlotTensors> layers_;
};

std::string file_sha256(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw Error(ErrorKind::Io, "cannot read the statistics corpus " + file.string());
    Sha256 h;
    std::vector<char> buf(1 << 20);
    while (in) {
        in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        if (in.gcount() > 0) h.update(buf.data(), static_cast<size_t>(in.gcount()));
    }
    return h.hex_digest();
}

// One document per line (text), or per record of a JSONL file ({"text": ...} or a bare string),
// read one at a time: a corpus of any size streams through in bounded memory.
class DocumentReader {
public:
    explicit DocumentReader(const fs::path& file) : file_(file), in_(file), jsonl_(file.extension() == ".jsonl") {
        if (!in_) throw Error(ErrorKind::Io, "cannot read the statistics corpus " + file.string());
    }

    // The next document; false at the end of the file. Blank lines are skipped.
    bool next(std::string& doc) {
        while (std::getline(in_, line_)) {
            ++line_no_;
            if (line_.find_first_not_of(" \t\r") == std::string::npos) continue;
            if (!jsonl_) {
                doc.swap(line_);
                return true;
            }
            nlohmann::json j;
            try {
                j = nlohmann::json::parse(line_);
            } catch (const nlohmann::json::exception& e) {
                throw Error(ErrorKind::Format, file_.string() + ": line " + std::to_string(line_no_) + ": not JSON (" + e.what() + ")");
            }
            if (j.is_string()) doc = j.get<std::string>();
            else if (j.is_object() && j.contains("text") && j["text"].is_string()) doc = j["text"].get<std::string>();
            else throw Error(ErrorKind::Format, file_.string() + ": line " + std::to_string(line_no_) + ": expected a string or {\"text\": ...}");
            return true;
        }
        return false;
    }

private:
    fs::path file_;
    std::ifstream in_;
    bool jsonl_;
    std::string line_;
    int64_t line_no_ = 0;
};

// The documents statistics will read: the non-blank lines up to `limit`, counted without keeping
// any (for progress).
int64_t count_documents(const fs::path& file, int64_t limit) {
    std::ifstream in(file);
    if (!in) throw Error(ErrorKind::Io, "cannot read the statistics corpus " + file.string());
    int64_t n = 0;
    std::string line;
    while (n < limit && std::getline(in, line))
        if (line.find_first_not_of(" \t\r") != std::string::npos) ++n;
    return n;
}

std::vector<uint8_t> read_file_bytes(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw Error(ErrorKind::Io, "cannot read " + file.string());
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

fs::path default_stats_corpus(const Model& model) {
    if (!model.dir().empty()) {
        const fs::path p = model.dir() / "corpus.txt";
        if (fs::exists(p)) return p;
    }
    throw Error(ErrorKind::Argument,
                "second-moment statistics need a text corpus: give one (--corpus FILE, or mom2_dataset in the hparams); "
                "one document per line of a text file or per record of a JSONL file");
}

fs::path stats_cache_path(const Model& model, int layer, const std::string& corpus_hash, int64_t n_samples) {
    const std::string fp = model.fingerprint();
    return engram_cache_dir() / "stats" / (fp.empty() ? "unnamed" : fp) /
           ("layer" + std::to_string(layer) + "_" + corpus_hash.substr(0, 16) + "_" + std::to_string(n_samples) + ".safetensors");
}

LayerStats read_layer_stats(const fs::path& file, const Model& model, int layer) {
    const std::vector<uint8_t> bytes = read_file_bytes(file);
    SafetensorsHeader h = parse_safetensors_header(bytes.data(), bytes.size(), file.string());
    auto meta = [&](const char* key) -> std::string {
        auto it = h.metadata.find(key);
        if (it == h.metadata.end()) throw Error(ErrorKind::Format, file.string() + ": not an Engram statistics file (no \"" + key + "\")");
        return it->second;
    };
    LayerStats s;
    s.model_fingerprint = meta("model_fingerprint");
    s.layer = std::stoi(meta("layer"));
    s.count = std::stoll(meta("count"));
    s.documents = std::stoll(meta("documents"));
    s.corpus_hash = meta("corpus_hash");
    if (s.model_fingerprint != model.fingerprint())
        throw Error(ErrorKind::Argument, file.string() + ": statistics computed for another model (fingerprint " +
                                             s.model_fingerprint.substr(0, 12) + ", this model " + model.fingerprint().substr(0, 12) + ")");
    if (s.layer != layer)
        throw Error(ErrorKind::Argument, file.string() + ": statistics of layer " + std::to_string(s.layer) + ", not " + std::to_string(layer));
    const int64_t m = model.hparams().n_ff;
    for (const TensorInfo& t : h.tensors) {
        if (t.name != "mom2") continue;
        if (t.dtype != DType::F64 || t.shape != std::vector<int64_t>{m, m})
            throw Error(ErrorKind::Format, file.string() + ": mom2 must be F64 [" + std::to_string(m) + ", " + std::to_string(m) + "]");
        s.mom2 = tensor_from_blob(DType::F64, t.shape, bytes.data() + h.data_offset + t.begin, t.nbytes(), file.string() + " mom2");
    }
    if (!s.mom2.defined()) throw Error(ErrorKind::Format, file.string() + ": no mom2 tensor");
    return s;
}

std::vector<LayerStats> second_moments(const Model& model, const std::vector<int>& layers, const StatsOptions& options,
                                       const std::function<void(int64_t, int64_t)>& progress) {
    const HParams& hp = model.hparams();
    for (int l : layers)
        if (l < 0 || l >= hp.n_layer)
            throw Error(ErrorKind::Argument, "layer " + std::to_string(l) + " is out of range (the model has " + std::to_string(hp.n_layer) + " layers)");
    if (options.n_samples <= 0) throw Error(ErrorKind::Argument, "the statistics sample count must be positive");
    if (options.window_tokens <= 0) throw Error(ErrorKind::Argument, "the statistics window must hold at least one token");
    if (!model.tokenizer()) throw Error(ErrorKind::Argument, "statistics need the model's tokenizer");
    const fs::path corpus = options.corpus.empty() ? default_stats_corpus(model) : options.corpus;
    const std::string corpus_hash = file_sha256(corpus);
    const bool cacheable = options.use_cache && !model.fingerprint().empty();

    std::vector<LayerStats> out(layers.size());
    std::vector<size_t> missing;
    for (size_t i = 0; i < layers.size(); ++i) {
        const fs::path p = stats_cache_path(model, layers[i], corpus_hash, options.n_samples);
        if (cacheable && fs::exists(p)) {
            try {
                out[i] = read_layer_stats(p, model, layers[i]);
                if (out[i].corpus_hash == corpus_hash) continue;
            } catch (const Error&) {
                // A damaged cache entry is recomputed and replaced.
            }
        }
        missing.push_back(i);
    }
    if (missing.empty()) return out;

    const Tokenizer& tok = *model.tokenizer();
    const int64_t total_docs = count_documents(corpus, options.n_samples);
    if (total_docs == 0) throw Error(ErrorKind::Format, "the statistics corpus " + corpus.string() + " holds no documents");
    DocumentReader reader(corpus);

    BaseWeightsScope base(model);
    c10::InferenceMode guard;
    const int64_t m = hp.n_ff;
    std::vector<at::Tensor> mom2(missing.size());
    for (auto& t : mom2) t = at::zeros({m, m}, at::kDouble);
    int64_t count = 0, documents = 0, docs_read = 0;
    // The corpus streams through in windows of up to options.window_tokens tokens, so memory is
    // bounded whatever its size (the tokens of one window, not the corpus). A corpus that fits in one
    // window (the demo's ~0.1 M tokens) is read exactly as a whole: one length sort over all documents.
    // Within a window: length-sorted batches of about 8192 tokens; padded positions are dropped
    // before accumulating.
    const int64_t budget = 8192;
    std::string doc;
    std::vector<std::vector<int64_t>> seqs;
    bool more = true;
    while (more && docs_read < options.n_samples) {
        seqs.clear();
        const int64_t window_start = docs_read;
        int64_t window_tokens = 0;
        while (docs_read < options.n_samples && window_tokens < options.window_tokens) {
            if (!reader.next(doc)) {
                more = false;
                break;
            }
            ++docs_read;
            std::vector<int64_t> ids = tok.encode(doc, /*add_special_tokens=*/true).ids;
            if (static_cast<int64_t>(ids.size()) > hp.n_ctx) ids.resize(static_cast<size_t>(hp.n_ctx));
            window_tokens += static_cast<int64_t>(ids.size());
            if (!ids.empty()) seqs.push_back(std::move(ids));
        }
        if (seqs.empty()) continue;
        documents += static_cast<int64_t>(seqs.size());
        std::vector<size_t> order(seqs.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return seqs[a].size() < seqs[b].size(); });
        size_t pos = 0;
        while (pos < order.size()) {
            size_t end = pos;
            int64_t max_len = 0;
            while (end < order.size()) {
                const int64_t len = static_cast<int64_t>(seqs[order[end]].size());
                const int64_t rows = static_cast<int64_t>(end - pos + 1);
                if (end > pos && std::max(max_len, len) * rows > budget) break;
                max_len = std::max(max_len, len);
                ++end;
            }
            std::vector<std::vector<int64_t>> chunk;
            for (size_t i = pos; i < end; ++i) chunk.push_back(seqs[order[i]]);
            const editing::Batch b = editing::pad_right(chunk, model.device());
            Hooks hooks;
            for (size_t k : missing) hooks.capture(Site::MlpKey, layers[k]);
            ForwardInput in;
            in.input_ids = b.ids;
            in.attention_mask = b.mask;
            in.last_logits_only = true;
            model.forward(in, &hooks);
            const at::Tensor keep = b.mask.reshape({-1}).to(at::kCPU).to(at::kBool);
            for (size_t j = 0; j < missing.size(); ++j) {
                at::Tensor a = hooks.captured(Site::MlpKey, layers[missing[j]]).reshape({-1, m}).to(at::kCPU).index({keep}).to(at::kDouble);
                mom2[j].add_(a.t().mm(a));
            }
            count += keep.sum().item<int64_t>();
            pos = end;
            // Documents done so far: those of earlier windows plus this window's share batched.
            if (progress)
                progress(window_start + (docs_read - window_start) * static_cast<int64_t>(pos) / static_cast<int64_t>(order.size()), total_docs);
        }
    }
    if (count == 0) throw Error(ErrorKind::Format, "the statistics corpus " + corpus.string() + " produced no tokens");
    for (size_t j = 0; j < missing.size(); ++j) {
        LayerStats& s = out[missing[j]];
        s.mom2 = mom2[j].div_(static_cast<double>(count));
        s.count = count;
        s.documents = documents;
        s.corpus_hash = corpus_hash;
        s.model_fingerprint = model.fingerprint();
        s.layer = layers[missing[j]];
        if (cacheable) {
            const fs::path p = stats_cache_path(model, s.layer, corpus_hash, options.n_samples);
            fs::create_directories(p.parent_path());
            write_safetensors(p, {{"mom2", s.mom2}},
                              {{"model_fingerprint", s.model_fingerprint}, {"layer", std::to_string(s.layer)}, {"count", std::to_string(s.count)},
                               {"documents", std::to_string(s.documents)}, {"corpus_hash", s.corpus_hash},
                               {"corpus", fs::absolute(corpus).string()}, {"n_samples", std::to_string(options.n_samples)}});
        }
    }
    return out;
}

}  // namespace engram
