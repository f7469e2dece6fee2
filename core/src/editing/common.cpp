// Shared pieces of the locate-then-edit methods: requests, subject location by character offsets,
// target tokens and the model-generated context templates (specs/locate_then_edit.md §1.2, §1.3).
#include "engram/editing.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "editing/internal.h"
#include "engram/datasets.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram {

namespace {

const Tokenizer& tokenizer_of(const Model& model) {
    if (!model.tokenizer()) throw Error(ErrorKind::Argument, "editing needs the model's tokenizer (none was found beside the checkpoint)");
    return *model.tokenizer();
}

// The token a generated text starts from: EOS (GPT-2's "<|endoftext|>"), else BOS.
std::optional<int64_t> start_token(const Tokenizer& tok) {
    if (auto eos = tok.eos_id()) return eos;
    if (auto id = tok.token_to_id("<|endoftext|>")) return id;
    return tok.bos_id();
}

std::optional<int64_t> unknown_token(const Tokenizer& tok) {
    for (const char* name : {"[UNK]", "<unk>", "<|unk|>"})
        if (auto id = tok.token_to_id(name)) return id;
    return std::nullopt;
}

std::string generated_text(const Model& model, const std::vector<int64_t>& prompt, int64_t total_len, uint64_t seed) {
    const Tokenizer& tok = tokenizer_of(model);
    GenerateOptions g;
    g.max_new_tokens = std::max<int64_t>(0, total_len - static_cast<int64_t>(prompt.size()));
    g.top_k = 5;
    g.seed = seed;
    std::vector<int64_t> out = generate(model, prompt, g);
    std::string text = tok.decode(out, /*skip_special_tokens=*/true);
    for (char& c : text)
        if (c == '{' || c == '}') c = ' ';
    return text;
}

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (a + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^ (b + 1) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

}  // namespace

std::string EditRequest::prompt_text() const { return eval::fill_placeholder(prompt, subject); }

nlohmann::json EditRequest::to_json() const {
    nlohmann::json j = {{"prompt", prompt}, {"subject", subject}, {"target_new", target_new}};
    if (!target_true.empty()) j["target_true"] = target_true;
    if (!prediction.empty()) j["prediction"] = prediction;
    if (case_id >= 0) j["case_id"] = case_id;
    return j;
}

EditRequest EditRequest::from_json(const nlohmann::json& j) {
    if (!j.is_object()) throw Error(ErrorKind::Format, "an edit request must be a JSON object");
    auto str = [&](const char* key, bool required) -> std::string {
        if (!j.contains(key)) {
            if (required) throw Error(ErrorKind::Format, std::string("edit request: missing \"") + key + "\"");
            return {};
        }
        const auto& v = j.at(key);
        if (v.is_string()) return v.get<std::string>();
        // CounterFact's {"str": ..., "id": ...} targets.
        if (v.is_object() && v.contains("str") && v.at("str").is_string()) return v.at("str").get<std::string>();
        throw Error(ErrorKind::Format, std::string("edit request: \"") + key + "\" must be a string");
    };
    EditRequest r;
    r.prompt = str("prompt", true);
    r.subject = str("subject", true);
    r.target_new = str("target_new", true);
    r.target_true = str("target_true", false);
    r.prediction = str("prediction", false);
    if (j.contains("case_id") && j.at("case_id").is_number_integer()) r.case_id = j.at("case_id").get<int64_t>();
    return r;
}

ModelShape model_shape(const Model& model) {
    ModelShape s;
    switch (model.arch()) {
        case Arch::Gpt2: s.family = "gpt2"; break;
        case Arch::GptJ: s.family = "gptj"; break;
        case Arch::Llama: s.family = "llama"; break;
        case Arch::Vit: s.family = "vit"; break;
    }
    s.n_layer = model.hparams().n_layer;
    s.n_embd = model.hparams().n_embd;
    s.n_ff = model.hparams().n_ff;
    s.n_vocab = model.hparams().n_vocab;
    return s;
}

void validate_request(const Model& model, const EditRequest& r) {
    if (!model.is_decoder()) throw Error(ErrorKind::Argument, "fact editing needs a language model, not " + model.arch_name());
    const size_t n = eval::count_placeholders(r.prompt);
    if (n != 1)
        throw Error(ErrorKind::Argument, "the prompt \"" + r.prompt + "\" must hold exactly one \"{}\" where the subject goes (found " +
                                             std::to_string(n) + ")");
    if (r.subject.find_first_not_of(" \t\n") == std::string::npos) throw Error(ErrorKind::Argument, "the subject is empty");
    if (r.target_new.find_first_not_of(" \t\n") == std::string::npos) throw Error(ErrorKind::Argument, "the new target is empty");
    const Tokenizer& tok = tokenizer_of(model);
    target_ids(tok, r.target_new);  // throws when it tokenizes to nothing
    (void)locate_subject(tok, "{}", r.prompt, r.subject);
}

LocatedPrompt locate_subject(const Tokenizer& tok, const std::string& context, const std::string& prompt, const std::string& subject) {
    const std::string templ = eval::fill_placeholder(context, prompt);
    const size_t pos = templ.find("{}");
    if (pos == std::string::npos) throw Error(ErrorKind::Argument, "the prompt \"" + prompt + "\" has no \"{}\" for the subject");
    const std::string text = templ.substr(0, pos) + subject + templ.substr(pos + 2);
    const size_t b = pos, e = pos + subject.size();
    Encoding enc = tok.encode(text, /*add_special_tokens=*/true);
    LocatedPrompt out;
    out.ids = enc.ids;
    int64_t first = -1, last = -1;
    for (size_t i = 0; i < enc.offsets.size(); ++i) {
        const auto [tb, te] = enc.offsets[i];
        if (te > tb && te > b && tb < e) {
            if (first < 0) first = static_cast<int64_t>(i);
            last = static_cast<int64_t>(i);
        }
    }
    if (first < 0) throw Error(ErrorKind::Argument, "the subject \"" + subject + "\" maps to no token of \"" + text + "\"");
    out.subject_first = first;
    out.subject_last = last;
    return out;
}

int64_t lookup_index(const LocatedPrompt& located, const std::string& fact_token) {
    if (fact_token == "subject_last") return located.subject_last;
    if (fact_token == "subject_first") return located.subject_first;
    if (fact_token == "last") return static_cast<int64_t>(located.ids.size()) - 1;
    throw Error(ErrorKind::Argument, "fact_token \"" + fact_token + "\" is not one of subject_last, subject_first, last");
}

std::vector<int64_t> target_ids(const Tokenizer& tok, const std::string& target) {
    const std::string t = (!target.empty() && target[0] == ' ') ? target : " " + target;
    std::vector<int64_t> ids = tok.encode(t, /*add_special_tokens=*/false).ids;
    const auto bos = tok.bos_id();
    while (!ids.empty() && bos && ids.front() == *bos) ids.erase(ids.begin());
    if (ids.empty()) throw Error(ErrorKind::Argument, "the target \"" + target + "\" tokenizes to nothing");
    return ids;
}

std::vector<std::vector<std::string>> rome_context_templates(const Model& model, const EditHParams& hp) {
    if (!hp.context_templates.empty()) {
        std::vector<std::string> flat;
        for (const auto& g : hp.context_templates) flat.insert(flat.end(), g.begin(), g.end());
        return {flat};
    }
    const Tokenizer& tok = tokenizer_of(model);
    auto start = start_token(tok);
    if (!start) throw Error(ErrorKind::Argument, "the tokenizer has no EOS/BOS token to generate context templates from; pin them with --set context_templates=...");
    std::vector<std::string> group = {"{}"};
    uint64_t k = 0;
    for (const auto& lc : hp.context_template_length_params) {
        if (lc.size() != 2) throw Error(ErrorKind::Argument, "context_template_length_params entries must be [length, count]");
        for (int i = 0; i < lc[1]; ++i, ++k) {
            std::string text = generated_text(model, {*start}, lc[0], mix_seed(hp.seed, 1, k));
            group.push_back(text + ". {}");
        }
    }
    return {group};
}

std::vector<std::vector<std::string>> memit_context_templates(const Model& model, const EditHParams& hp) {
    if (!hp.context_templates.empty()) return hp.context_templates;
    const Tokenizer& tok = tokenizer_of(model);
    const auto start = start_token(tok);
    const auto unk = unknown_token(tok);
    std::vector<std::string> gens;
    uint64_t k = 0;
    for (const char* word : {"The", "Therefore", "Because", "I", "You"}) {
        std::vector<int64_t> ids = tok.encode(word, /*add_special_tokens=*/true).ids;
        const bool unknown = ids.empty() || (unk && std::find(ids.begin(), ids.end(), *unk) != ids.end());
        if (unknown) {
            if (!start) throw Error(ErrorKind::Argument, "cannot generate context templates: pin them with --set context_templates=...");
            ids = {*start};
        }
        gens.push_back(generated_text(model, ids, 10, mix_seed(hp.seed, 2, k++)) + ". {}");
    }
    return {{"{}"}, gens};
}

namespace editing {

Delta low_rank_delta(const Model& model, int layer, const at::Tensor& u, const at::Tensor& v) {
    Delta d;
    d.tensor = model.tensor_name(Slot::FfnDown, layer);
    d.kind = DeltaKind::LowRank;
    const at::Tensor& w = model.weight(Slot::FfnDown, layer);
    d.shape = {w.size(0), w.size(1)};
    d.u = u.to(at::kCPU).to(at::kDouble).contiguous();  // [n_embd, r]
    d.v = v.to(at::kCPU).to(at::kDouble).contiguous();  // [n_ff, r]
    return d;
}

at::Tensor spd_solve(const at::Tensor& A, const at::Tensor& B) {
    auto [L, info] = at::linalg_cholesky_ex(A);
    if (info.item<int64_t>() != 0) return at::linalg_solve(A, B);
    return at::cholesky_solve(B, L);
}

}  // namespace editing

}  // namespace engram
