// Edit metrics on a model: teacher-forced target scoring, the ROME/MEMIT probability metrics and the
// EasyEdit token metrics (specs/locate_then_edit.md §7.1-§7.3), fluency, perplexity.
#include "engram/demo.h"
#include "engram/evaluate.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <fstream>
#include <limits>

#include "editing/internal.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"

namespace engram::eval {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double mean_of(const std::vector<double>& v) {
    if (v.empty()) return kNaN;
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
}

const Tokenizer& tokenizer_of(const Model& model) {
    if (!model.tokenizer()) throw Error(ErrorKind::Argument, "evaluation needs the model's tokenizer");
    return *model.tokenizer();
}

}  // namespace

std::vector<TargetScore> score_targets(const Model& model, const std::vector<std::pair<std::string, std::string>>& pt) {
    const Tokenizer& tok = tokenizer_of(model);
    const int64_t n_ctx = model.hparams().n_ctx;
    std::vector<TargetScore> out(pt.size());
    struct Item {
        std::vector<int64_t> ids;
        int64_t prompt_len = 0, n = 0;
    };
    std::vector<Item> items(pt.size());
    for (size_t i = 0; i < pt.size(); ++i) {
        Item& it = items[i];
        it.ids = tok.encode(pt[i].first, /*add_special_tokens=*/true).ids;
        std::vector<int64_t> t = target_ids(tok, pt[i].second);
        it.prompt_len = static_cast<int64_t>(it.ids.size());
        if (it.prompt_len == 0) throw Error(ErrorKind::Argument, "the prompt \"" + pt[i].first + "\" tokenizes to nothing");
        it.n = static_cast<int64_t>(t.size());
        it.ids.insert(it.ids.end(), t.begin(), t.end());
        if (static_cast<int64_t>(it.ids.size()) > n_ctx + 1)
            throw Error(ErrorKind::Argument, "\"" + pt[i].first + "\" + target is longer than the model's context");
    }
    c10::InferenceMode guard;
    const size_t chunk = 64;
    for (size_t start = 0; start < items.size(); start += chunk) {
        const size_t end = std::min(items.size(), start + chunk);
        const int64_t B = static_cast<int64_t>(end - start);
        std::vector<std::vector<int64_t>> inputs;  // the last target token is never an input
        for (size_t i = start; i < end; ++i) inputs.emplace_back(items[i].ids.begin(), items[i].ids.end() - 1);
        const editing::Batch b = editing::pad_right(inputs, model.device());
        ForwardInput in;
        in.input_ids = b.ids;
        in.attention_mask = b.mask;
        // Adapters route on the prompt's last token, not on the target tokens after it (adapter.h).
        std::vector<int64_t> route;
        for (size_t i = start; i < end; ++i) route.push_back(items[i].prompt_len - 1);
        in.route_position = at::tensor(route, at::kLong);
        at::Tensor logp = at::log_softmax(model.forward(in).logits.to(at::kCPU).to(at::kFloat), 2);  // [B, T, V]
        at::Tensor am = logp.argmax(2).contiguous();
        logp = logp.contiguous();
        auto la = logp.accessor<float, 3>();
        auto aa = am.accessor<int64_t, 2>();
        for (int64_t r = 0; r < B; ++r) {
            const Item& it = items[start + static_cast<size_t>(r)];
            TargetScore& s = out[start + static_cast<size_t>(r)];
            double nll = 0;
            int64_t correct = 0;
            for (int64_t j = 0; j < it.n; ++j) {
                const int64_t pos = it.prompt_len - 1 + j;
                const int64_t tok_id = it.ids[static_cast<size_t>(it.prompt_len + j)];
                nll -= static_cast<double>(la[r][pos][tok_id]);
                const int64_t a = aa[r][pos];
                s.argmax.push_back(a);
                correct += a == tok_id;
            }
            s.nll = nll / static_cast<double>(it.n);
            s.token_accuracy = static_cast<double>(correct) / static_cast<double>(it.n);
        }
    }
    return out;
}

std::vector<EditRequest> requests_of(const EditCase& c) {
    std::vector<EditRequest> out;
    for (const Rewrite& r : c.rewrites) {
        EditRequest q;
        q.prompt = r.prompt;
        q.subject = r.subject;
        q.target_new = r.target_new;
        q.target_true = r.target_true;
        q.prediction = r.prediction;
        q.case_id = c.case_id;
        out.push_back(std::move(q));
    }
    return out;
}

PreEdit record_pre_edit(const Model& model, const std::vector<EditCase>& cases) {
    std::vector<std::pair<std::string, std::string>> pt;
    for (const auto& c : cases)
        for (const auto& p : c.locality) pt.emplace_back(p.prompt, p.answer);
    std::vector<TargetScore> s = score_targets(model, pt);
    PreEdit pre;
    size_t k = 0;
    for (const auto& c : cases) {
        auto& per = pre.locality_argmax.emplace_back();
        for (size_t j = 0; j < c.locality.size(); ++j) per.push_back(s[k++].argmax);
    }
    return pre;
}

std::vector<CaseMetrics> score_cases(const Model& model, const std::vector<EditCase>& cases, const PreEdit& pre) {
    if (pre.locality_argmax.size() != cases.size()) throw Error(ErrorKind::Internal, "pre-edit record does not match the cases");
    // Collect every (prompt, target) pair of every case, score them in one batched pass, then read back.
    std::vector<std::pair<std::string, std::string>> pt;
    struct Slots {
        std::vector<size_t> rw_new, rw_true, pa_new, pa_true, nb_new, nb_true, loc, port;
    };
    std::vector<Slots> slots(cases.size());
    auto add = [&](const std::string& p, const std::string& t) {
        pt.emplace_back(p, t);
        return pt.size() - 1;
    };
    for (size_t i = 0; i < cases.size(); ++i) {
        const EditCase& c = cases[i];
        Slots& s = slots[i];
        const Rewrite& r = c.rewrites.at(0);
        const bool has_true = !r.target_true.empty();
        s.rw_new.push_back(add(r.prompt_text(), r.target_new));
        if (has_true) s.rw_true.push_back(add(r.prompt_text(), r.target_true));
        for (const auto& p : c.paraphrase_prompts) {
            s.pa_new.push_back(add(p, r.target_new));
            if (has_true) s.pa_true.push_back(add(p, r.target_true));
        }
        if (has_true)
            for (const auto& p : c.neighborhood_prompts) {
                s.nb_new.push_back(add(p, r.target_new));
                s.nb_true.push_back(add(p, r.target_true));
            }
        for (const auto& p : c.locality) s.loc.push_back(add(p.prompt, p.answer));
        for (const auto& p : c.portability) s.port.push_back(add(p.prompt, p.answer));
    }
    std::vector<TargetScore> sc = score_targets(model, pt);
    std::vector<CaseMetrics> out(cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
        const Slots& s = slots[i];
        CaseMetrics& m = out[i];
        std::vector<double> es, ps, ns, em, pm, nm;
        if (!s.rw_true.empty()) {
            for (size_t j = 0; j < s.rw_new.size(); ++j) {
                const double a = sc[s.rw_new[j]].nll, b = sc[s.rw_true[j]].nll;
                es.push_back(b > a);
                em.push_back(std::exp(-a) - std::exp(-b));
            }
            for (size_t j = 0; j < s.pa_new.size(); ++j) {
                const double a = sc[s.pa_new[j]].nll, b = sc[s.pa_true[j]].nll;
                ps.push_back(b > a);
                pm.push_back(std::exp(-a) - std::exp(-b));
            }
            for (size_t j = 0; j < s.nb_new.size(); ++j) {
                const double a = sc[s.nb_new[j]].nll, b = sc[s.nb_true[j]].nll;
                ns.push_back(b < a);
                nm.push_back(std::exp(-b) - std::exp(-a));
            }
        } else {
            // zsRE (MEMIT convention, §7.2): token accuracy of the inserted answer, and of the
            // locality question's gold answer.
            for (size_t j : s.rw_new) es.push_back(sc[j].token_accuracy);
            for (size_t j : s.pa_new) ps.push_back(sc[j].token_accuracy);
            for (size_t j : s.loc) ns.push_back(sc[j].token_accuracy);
        }
        m.es = mean_of(es);
        m.ps = mean_of(ps);
        m.ns = mean_of(ns);
        m.em = mean_of(em);
        m.pm = mean_of(pm);
        m.nm = mean_of(nm);
        std::vector<double> rel, gen, loc, port;
        for (size_t j : s.rw_new) rel.push_back(sc[j].token_accuracy);
        for (size_t j : s.pa_new) gen.push_back(sc[j].token_accuracy);
        for (size_t j = 0; j < s.loc.size(); ++j) {
            const auto& post = sc[s.loc[j]].argmax;
            const auto& before = pre.locality_argmax[i][j];
            int64_t same = 0;
            for (size_t t = 0; t < post.size() && t < before.size(); ++t) same += post[t] == before[t];
            loc.push_back(post.empty() ? kNaN : static_cast<double>(same) / static_cast<double>(post.size()));
        }
        for (size_t j : s.port) port.push_back(sc[j].token_accuracy);
        m.reliability = mean_of(rel);
        m.generalization = mean_of(gen);
        m.locality = mean_of(loc);
        m.portability = mean_of(port);
    }
    return out;
}

Summary summarize(const std::vector<CaseMetrics>& metrics) {
    Summary s;
    s.cases = static_cast<int64_t>(metrics.size());
    auto avg = [&](double CaseMetrics::*f) {
        double sum = 0;
        int64_t n = 0;
        for (const auto& m : metrics)
            if (!std::isnan(m.*f)) {
                sum += m.*f;
                ++n;
            }
        return n ? 100.0 * sum / static_cast<double>(n) : kNaN;
    };
    s.es = avg(&CaseMetrics::es);
    s.ps = avg(&CaseMetrics::ps);
    s.ns = avg(&CaseMetrics::ns);
    s.em = avg(&CaseMetrics::em);
    s.pm = avg(&CaseMetrics::pm);
    s.nm = avg(&CaseMetrics::nm);
    s.reliability = avg(&CaseMetrics::reliability);
    s.generalization = avg(&CaseMetrics::generalization);
    s.locality = avg(&CaseMetrics::locality);
    s.portability = avg(&CaseMetrics::portability);
    std::vector<double> parts;
    for (double v : {s.es, s.ps, s.ns})
        if (!std::isnan(v)) parts.push_back(v);
    s.score = harmonic_mean(parts);
    return s;
}

nlohmann::json Summary::to_json() const {
    auto num = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
    nlohmann::json j = {{"cases", cases},          {"es", num(es)},
                        {"ps", num(ps)},           {"ns", num(ns)},
                        {"score", num(score)},     {"em", num(em)},
                        {"pm", num(pm)},           {"nm", num(nm)},
                        {"reliability", num(reliability)}, {"generalization", num(generalization)},
                        {"locality", num(locality)},       {"portability", num(portability)}};
    if (fluency) j["fluency"] = *fluency;
    if (consistency) j["consistency"] = *consistency;
    if (perplexity) j["perplexity"] = *perplexity;
    if (unedited_accuracy) j["unedited_accuracy"] = *unedited_accuracy;
    return j;
}

std::vector<std::vector<std::string>> generations(const Model& model, const std::vector<EditCase>& cases, uint64_t seed) {
    const Tokenizer& tok = tokenizer_of(model);
    const int64_t total = std::min<int64_t>(100, model.hparams().n_ctx);
    std::vector<std::vector<std::string>> out;
    uint64_t k = 0;
    for (const auto& c : cases) {
        out.emplace_back();
        for (const auto& p : c.generation_prompts) {
            std::vector<int64_t> ids = tok.encode(p, /*add_special_tokens=*/true).ids;
            if (ids.empty() || static_cast<int64_t>(ids.size()) >= total) continue;
            GenerateOptions g;
            g.max_new_tokens = total - static_cast<int64_t>(ids.size());
            g.top_k = 5;
            g.seed = seed * 1000003ull + k++;
            out.back().push_back(tok.decode(generate(model, ids, g), /*skip_special_tokens=*/true));
        }
    }
    return out;
}

double fluency_of(const std::vector<std::vector<std::string>>& gens) {
    std::vector<std::string> texts;
    for (const auto& g : gens) texts.insert(texts.end(), g.begin(), g.end());
    if (texts.empty()) return kNaN;
    return 100.0 * mean_n_gram_entropy(texts);
}

double fluency(const Model& model, const std::vector<EditCase>& cases, uint64_t seed) { return fluency_of(generations(model, cases, seed)); }

double consistency(const std::vector<EditCase>& cases, const std::vector<std::vector<std::string>>& gens, const AttributeSnippets& snippets,
                   const Tfidf& tfidf) {
    auto join = [](const std::vector<std::string>& texts) {
        std::string s;
        for (const auto& t : texts) s += (s.empty() ? "" : " ") + t;
        return s;
    };
    double sum = 0;
    int64_t n = 0;
    for (size_t i = 0; i < cases.size() && i < gens.size(); ++i) {
        if (cases[i].rewrites.empty() || gens[i].empty()) continue;
        const Rewrite& r = cases[i].rewrites[0];
        const std::vector<std::string>* refs = snippets.find(r.relation_id, r.target_new_id);
        if (!refs) continue;
        sum += tfidf.similarity(join(gens[i]), join(*refs));
        ++n;
    }
    return n ? 100.0 * sum / double(n) : kNaN;
}

bool demo_consistency_refs(const std::filesystem::path& dir, AttributeSnippets* snippets, Tfidf* tfidf) {
    const auto world_file = dir / "world.json", corpus_file = dir / "corpus.txt";
    if (!std::filesystem::exists(world_file) || !std::filesystem::exists(corpus_file)) return false;
    std::ifstream in(world_file);
    const nlohmann::json recorded = nlohmann::json::parse(in, nullptr, false);
    const demo::FactWorld world = demo::generate_fact_world();
    if (recorded.is_discarded() || !recorded.is_object() || recorded.value("hash", std::string()) != world.hash()) return false;
    *snippets = AttributeSnippets::from_json(demo::attribute_snippets(world), "the Fact World's attribute snippets");
    std::ifstream corpus(corpus_file);
    std::vector<std::string> docs;
    for (std::string line; std::getline(corpus, line);)
        if (!line.empty()) docs.push_back(line);
    *tfidf = Tfidf::fit(docs);
    return true;
}

double text_perplexity(const Model& model, const std::filesystem::path& file, int64_t max_lines) {
    std::ifstream in(file);
    if (!in) throw Error(ErrorKind::Io, "cannot read " + file.string());
    const Tokenizer& tok = tokenizer_of(model);
    std::vector<std::vector<int64_t>> docs;
    std::string line;
    while (std::getline(in, line) && (max_lines <= 0 || static_cast<int64_t>(docs.size()) < max_lines)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        std::vector<int64_t> ids = tok.encode(line, true).ids;
        if (static_cast<int64_t>(ids.size()) > model.hparams().n_ctx) ids.resize(static_cast<size_t>(model.hparams().n_ctx));
        if (ids.size() >= 2) docs.push_back(std::move(ids));
    }
    if (docs.empty()) throw Error(ErrorKind::Format, file.string() + " holds no text to measure perplexity on");
    c10::InferenceMode guard;
    double nll = 0;
    int64_t count = 0;
    for (size_t start = 0; start < docs.size(); start += 32) {
        const size_t end = std::min(docs.size(), start + 32);
        const editing::Batch b = editing::pad_right(std::vector<std::vector<int64_t>>(docs.begin() + static_cast<long>(start), docs.begin() + static_cast<long>(end)),
                                                    model.device());
        const int64_t T = b.ids.size(1);
        const at::Tensor ids = b.ids.to(at::kCPU), mask = b.mask.to(at::kCPU);
        ForwardInput fin;
        fin.input_ids = b.ids;
        fin.attention_mask = b.mask;
        at::Tensor logp = at::log_softmax(model.forward(fin).logits.to(at::kCPU).to(at::kFloat), 2);
        at::Tensor next = ids.slice(1, 1);
        at::Tensor m = mask.slice(1, 1).to(at::kFloat);
        at::Tensor picked = logp.slice(1, 0, T - 1).gather(2, next.unsqueeze(2)).squeeze(2);
        nll -= (picked * m).sum().item<double>();
        count += m.sum().item<int64_t>();
    }
    return std::exp(nll / static_cast<double>(count));
}

double fact_accuracy(const Model& model, const std::vector<EditCase>& cases) {
    std::vector<std::pair<std::string, std::string>> pt;
    for (const auto& c : cases) {
        const Rewrite& r = c.rewrites.at(0);
        if (!r.target_true.empty()) pt.emplace_back(r.prompt_text(), r.target_true);
    }
    if (pt.empty()) return kNaN;
    std::vector<TargetScore> s = score_targets(model, pt);
    const Tokenizer& tok = tokenizer_of(model);
    int64_t correct = 0;
    for (size_t i = 0; i < pt.size(); ++i) correct += s[i].argmax.at(0) == target_ids(tok, pt[i].second).at(0);
    return 100.0 * static_cast<double>(correct) / static_cast<double>(pt.size());
}

}  // namespace engram::eval
