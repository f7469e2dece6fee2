// Locate-then-edit from the command line: `edit` (ROME, MEMIT, MEMIT_seq, AlphaEdit, PMET, FT-L,
// with --blue), `eval` (the sequential batch protocol, several methods in one table), `stats`
// (precompute C) and `bench edit`.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "engram/bench.h"
#include "engram/datasets.h"
#include "engram/edit_hparams.h"
#include "engram/editing.h"
#include "engram/error.h"
#include "engram/evaluate.h"
#include "engram/methods.h"
#include "engram/model.h"
#include "engram/runtime.h"
#include "engram/store.h"
#include "engram/tokenizer.h"

namespace engram::cli {

namespace fs = std::filesystem;
using nlohmann::json;

int cmd_edit_synthetic(const Argv& argv);  // store_commands.cpp

namespace {

// Ctrl-C (or SIGTERM) during `eval`: the run in progress stops at its next check, and the methods
// that finished are still reported and saved.
std::atomic<bool> g_interrupted{false};
extern "C" void on_interrupt(int) { g_interrupted.store(true); }

// "memit+blue" -> (memit, blue).
std::pair<EditMethod, bool> parse_method(const std::string& text, bool blue_flag) {
    std::string m = text;
    bool blue = blue_flag;
    for (const char* suffix : {"+blue", "_blue", "-blue", "+BLUE", "_BLUE", "-BLUE"}) {
        const std::string s = suffix;
        if (m.size() > s.size() && m.compare(m.size() - s.size(), s.size(), s) == 0) {
            m = m.substr(0, m.size() - s.size());
            blue = true;
        }
    }
    auto method = edit_method_from_name(m);
    if (!method) throw Error(ErrorKind::Argument, "--method " + text + ": expected " + method_name_list() + " (+blue where BLUE applies)");
    return {*method, blue};
}

EditHParams build_hparams(const Model& model, EditMethod method, bool blue, const Args& args) {
    EditHParams hp = default_edit_hparams(model_shape(model), method, blue);
    if (auto f = args.get("hparams")) apply_hparams_file(hp, *f);
    for (const std::string& s : args.all("set")) apply_hparam_setting(hp, s);
    validate_edit_hparams(hp, model_shape(model));
    return hp;
}

StatsOptions stats_options(const Args& args) {
    StatsOptions o;
    if (auto c = args.get("corpus")) o.corpus = *c;
    return o;
}

std::unique_ptr<Model> load_model(const Args& args) {
    if (auto dir = args.get("model")) return Model::load(*dir);
    return Model::load(demo_resource_dir("factworld"));
}

std::vector<EditRequest> read_requests(const fs::path& file) {
    // A dataset in one of the field's layouts, or a JSON array of {prompt, subject, target_new[, target_true]}.
    json j;
    {
        std::ifstream in(file);
        if (!in) throw Error(ErrorKind::Io, "cannot read " + file.string());
        try {
            j = json::parse(in);
        } catch (const json::exception& e) {
            throw Error(ErrorKind::Format, file.string() + ": not JSON (" + e.what() + ")");
        }
    }
    if (j.is_object()) j = json::array({j});
    if (!j.is_array() || j.empty()) throw Error(ErrorKind::Format, file.string() + ": expected a non-empty array of edit requests");
    std::vector<EditRequest> out;
    const json& first = j.front();
    if (first.is_object() && (first.contains("requested_rewrite") || first.contains("src") || first.contains("ground_truth"))) {
        eval::Dataset ds = eval::load_dataset(file);
        for (const auto& c : ds.cases)
            for (auto& r : eval::requests_of(c)) out.push_back(std::move(r));
        return out;
    }
    for (size_t i = 0; i < j.size(); ++i) {
        try {
            out.push_back(EditRequest::from_json(j[i]));
        } catch (const Error& e) {
            throw e.with_context(file.string() + ": request " + std::to_string(i));
        }
    }
    return out;
}

std::string fmt_prob(double nll) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(4) << std::exp(-nll);
    return s.str();
}

}  // namespace

int cmd_edit(const Argv& argv) {
    for (size_t i = 0; i + 1 < argv.size(); ++i)
        if (argv[i] == "--method" && argv[i + 1] == "synthetic") return cmd_edit_synthetic(argv);
    Args args(argv, command_spec("edit"));
    args.refuse({"layer", "rank", "seed", "scale", "artifact-kib"}, "applies to --method synthetic only");
    const auto [method, blue] = parse_method(args.require("method"), args.flag("blue"));
    std::unique_ptr<Project> project;
    std::unique_ptr<Model> model;
    const std::optional<fs::path> db = args.get("db") ? std::optional<fs::path>(args.require("db")) : std::nullopt;
    std::error_code ec;
    const bool fresh = db && (!fs::exists(*db, ec) || fs::file_size(*db, ec) == 0);
    if (db && !fresh) {
        project = Project::open(*db);
        model = project->open_model(args.get("model") ? std::optional<fs::path>(args.require("model")) : std::nullopt);
    } else {
        model = load_model(args);
    }
    std::vector<EditRequest> requests;
    if (auto f = args.get("requests")) {
        requests = read_requests(*f);
    } else {
        EditRequest r;
        r.prompt = args.require("prompt");
        r.subject = args.require("subject");
        // A prompt written out in full becomes a template at the subject's first occurrence.
        if (r.prompt.find("{}") == std::string::npos) {
            auto templ = eval::template_at_subject(r.prompt, r.subject);
            if (!templ)
                throw Error(ErrorKind::Argument, "the subject \"" + r.subject + "\" is not in the prompt \"" + r.prompt +
                                                     "\" (write the prompt with {} where the subject goes, or include the subject)");
            r.prompt = *templ;
        }
        r.target_new = args.require("target");
        r.target_true = args.get("target-true").value_or("");
        requests.push_back(r);
    }
    for (size_t i = 0; i < requests.size(); ++i) {
        try {
            validate_request(*model, requests[i]);
        } catch (const Error& e) {
            throw e.with_context(requests.size() > 1 ? "request " + std::to_string(i) : std::string("edit request"));
        }
        if (requests[i].target_true.empty()) requests[i].target_true = greedy_answer(*model, requests[i]);
    }
    const EditHParams hp = build_hparams(*model, method, blue, args);

    auto probs = [&]() {
        std::vector<std::pair<std::string, std::string>> pt;
        for (const auto& r : requests) {
            pt.emplace_back(r.prompt_text(), r.target_new);
            pt.emplace_back(r.prompt_text(), r.target_true);
        }
        return eval::score_targets(*model, pt);
    };
    const std::vector<eval::TargetScore> before = probs();

    EditSession session(*model, hp, stats_options(args));
    if (project) {
        // Continue a sequence (AlphaEdit / MEMIT_seq cache_c, HSE's state) from the project's active edits;
        // the session takes those of its own method.
        std::vector<Edit> prior;
        for (int64_t id : project->active_ids()) prior.push_back(project->edit(id));
        session.absorb_history(prior);
    }
    if (!args.flag("json"))
        session.set_progress([](const EditProgress& p) {
            if (p.stage == "stats" && p.done == 0) std::cerr << "computing second-moment statistics...\n";
        });
    Edit edit = session.compute(requests);
    const int64_t id = record_edit(db, project, *model, edit);
    const std::vector<eval::TargetScore> after = probs();

    if (args.flag("json")) {
        json rows = json::array();
        for (size_t i = 0; i < requests.size(); ++i)
            rows.push_back({{"request", requests[i].to_json()},
                            {"p_new_before", std::exp(-before[2 * i].nll)},
                            {"p_new_after", std::exp(-after[2 * i].nll)},
                            {"p_old_before", std::exp(-before[2 * i + 1].nll)},
                            {"p_old_after", std::exp(-after[2 * i + 1].nll)}});
        json out = {{"method", edit.method}, {"results", rows}, {"tensors", edit.touched_tensors()}, {"seconds", edit.duration_s},
                    {"metrics", edit.metrics}};
        if (db) out["id"] = id, out["state_hash"] = edit.state_hash_after;
        std::cout << out.dump() << "\n";
        return 0;
    }
    std::cout << edit.method << " edit of " << requests.size() << " request" << (requests.size() == 1 ? "" : "s") << " on ";
    const std::vector<std::string> touched = edit.touched_tensors();
    for (size_t i = 0; i < touched.size(); ++i) std::cout << (i ? ", " : "") << touched[i];
    std::cout << " in " << std::fixed << std::setprecision(2) << edit.duration_s << " s\n";
    const size_t shown = std::min<size_t>(requests.size(), 10);
    for (size_t i = 0; i < shown; ++i) {
        const auto& r = requests[i];
        std::cout << "  \"" << r.prompt_text() << "\"\n"
                  << "      new  p(" << r.target_new << ")  " << fmt_prob(before[2 * i].nll) << " -> " << fmt_prob(after[2 * i].nll) << "\n"
                  << "      old  p(" << r.target_true << ")  " << fmt_prob(before[2 * i + 1].nll) << " -> " << fmt_prob(after[2 * i + 1].nll)
                  << "\n";
    }
    if (shown < requests.size()) std::cout << "  ... and " << requests.size() - shown << " more\n";
    if (db) std::cout << "recorded edit " << id << " in " << db->string() << "; state hash " << edit.state_hash_after << "\n";
    else std::cout << "(not recorded: pass --db FILE to keep the edit in a project)\n";
    return 0;
}

int cmd_eval(const Argv& argv) {
    Args args(argv, command_spec("eval"));
    std::unique_ptr<Model> model = load_model(args);
    const fs::path dataset_path = args.get("dataset").value_or((demo_resource_dir("factworld") / "counterfact.json").string());
    eval::DatasetOptions dopt;
    if (auto f = args.get("format")) {
        auto fmt = eval::dataset_format_from_name(*f);
        if (!fmt) throw Error(ErrorKind::Argument, "--format " + *f + ": expected counterfact, counterfact_flat, zsre or mquake");
        dopt.format = *fmt;
    }
    if (auto z = args.get("zsre-target")) {
        if (*z == "answer") dopt.zsre_target = eval::ZsreTarget::Answer;
        else if (*z == "alt") dopt.zsre_target = eval::ZsreTarget::Alt;
        else throw Error(ErrorKind::Argument, "--zsre-target must be answer or alt");
    }
    const eval::Dataset ds = eval::load_dataset(dataset_path, dopt);
    eval::SequentialOptions so;
    so.edits = args.integer("edits", std::min<int64_t>(1000, static_cast<int64_t>(ds.cases.size())), 1);
    so.batch = args.integer("batch", 100, 1);
    so.checkpoint_every = args.integer("checkpoint-every", 0, 0);
    so.fluency_cases = args.integer("fluency-cases", 50, 0);
    so.unedited_cases = args.integer("unedited-cases", 200, 0);
    so.seed = static_cast<uint64_t>(args.integer("seed", 0, 0));
    if (auto p = args.get("perplexity-file")) so.perplexity_file = *p;
    so.restore_between = args.flag("single");
    so.distinct_subjects = args.flag("distinct-subjects");
    so.baseline = std::make_shared<eval::Baseline>();  // the pre-edit metrics once for every method
    // Consistency (RS): ROME's attribute_snippets.json and tfidf files when given; the Fact World
    // demo model brings its own (its world's snippets, a TF-IDF fitted on its corpus).
    if (args.get("snippets") || args.get("tfidf")) {
        if (!args.get("snippets") || !args.get("tfidf"))
            throw Error(ErrorKind::Argument, "consistency needs both --snippets FILE (attribute_snippets.json) and --tfidf DIR (idf.npy, tfidf_vocab.json)");
        so.snippets = std::make_shared<eval::AttributeSnippets>(eval::AttributeSnippets::load(*args.get("snippets")));
        so.tfidf = std::make_shared<eval::Tfidf>(eval::Tfidf::load(*args.get("tfidf")));
    } else {
        auto snippets = std::make_shared<eval::AttributeSnippets>();
        auto tfidf = std::make_shared<eval::Tfidf>();
        if (eval::demo_consistency_refs(model->dir(), snippets.get(), tfidf.get())) so.snippets = snippets, so.tfidf = tfidf;
    }
    std::vector<std::string> methods;
    {
        std::stringstream ss(args.require("method"));
        for (std::string m; std::getline(ss, m, ',');)
            if (!m.empty()) methods.push_back(m);
    }
    std::unique_ptr<Project> project;
    if (auto db = args.get("db")) {
        std::error_code ec;
        if (fs::exists(*db, ec) && fs::file_size(*db, ec) > 0) {
            project = Project::open(*db);
            project->check_model(*model);
        } else {
            project = Project::create(*db, *model);
        }
    }
    const bool quiet = args.flag("quiet");
    std::vector<eval::SequentialResult> results;
    g_interrupted.store(false);
    std::signal(SIGINT, on_interrupt);
    std::signal(SIGTERM, on_interrupt);
    bool interrupted = false;
    for (const std::string& m : methods) {
        // "hse@forget_factor=0@hse_replay=false": a method with its own settings on top of --set (one
        // evaluation compares ablations against one set of pre-edit measurements).
        std::vector<std::string> parts;
        {
            std::stringstream ps(m);
            for (std::string part; std::getline(ps, part, '@');) parts.push_back(part);
        }
        const auto [method, blue] = parse_method(parts.empty() ? m : parts[0], args.flag("blue"));
        EditHParams hp = build_hparams(*model, method, blue, args);
        for (size_t i = 1; i < parts.size(); ++i) {
            try {
                apply_hparam_setting(hp, parts[i]);
            } catch (const Error& e) {
                throw e.with_context("--method " + m);
            }
        }
        validate_edit_hparams(hp, model_shape(*model));
        model->restore_all_base();
        const auto t0 = std::chrono::steady_clock::now();
        if (!quiet)
            std::cerr << "== " << m << ": " << so.edits << " edits in batches of " << so.batch << " from " << dataset_path.string() << "\n";
        int64_t last_pct = -1;
        eval::SequentialResult r;
        try {
        r = eval::run_sequential(*model, ds, hp, stats_options(args), so, [&](const eval::EvalProgress& p) {
            if (quiet) return;
            if (p.stage == "edit" && p.total > 0) {
                const int64_t pct = 100 * p.done / p.total;
                if (pct / 10 != last_pct / 10 || p.detail.rfind("batch", 0) == 0) {
                    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                    std::cerr << "   " << p.done << "/" << p.total << " edits (" << p.detail << "), " << std::fixed << std::setprecision(0) << el << " s\n";
                    last_pct = pct;
                }
            } else if (p.stage != "edit") {
                std::cerr << "   evaluating (" << p.stage << ")\n";
            }
        }, &g_interrupted);
        } catch (const Error&) {
            if (!g_interrupted.load()) throw;
            interrupted = true;
            std::cerr << "interrupted during " << m << "; reporting the methods that finished\n";
            break;
        }
        if (parts.size() > 1) r.method = m;  // the row names the settings
        if (project) {
            Evaluation ev;
            ev.state_hash = state_hash(*model);
            ev.kind = "sequential";
            ev.params = {{"dataset", fs::absolute(dataset_path).string()}, {"edits", so.edits},       {"batch", so.batch},
                         {"method", r.method},                               {"distinct_subjects", so.distinct_subjects}};
            ev.results = r.to_json();
            project->add_evaluation(ev);
        }
        results.push_back(std::move(r));
    }
    model->restore_all_base();

    auto cell = [](double v, int prec = 1) {
        std::ostringstream s;
        if (std::isnan(v)) s << "-";
        else s << std::fixed << std::setprecision(prec) << v;
        return s.str();
    };
    auto opt = [&](const std::optional<double>& v, int prec = 1) { return v ? cell(*v, prec) : std::string("-"); };
    std::cout << (so.restore_between ? "single editing (restored after each batch): " : "sequential editing: ") << so.edits << " cases of "
              << dataset_path.filename().string() << " in batches of " << so.batch;
    if (so.distinct_subjects && !results.empty())
        std::cout << " (distinct subjects: " << results.front().skipped_same_subject << " later cases of an already chosen subject skipped)";
    std::cout << "\n";
    std::cout << std::left << std::setw(18) << "method" << std::right << std::setw(7) << "ES" << std::setw(7) << "PS" << std::setw(7) << "NS"
              << std::setw(7) << "S" << std::setw(7) << "EM" << std::setw(7) << "PM" << std::setw(7) << "NM" << std::setw(8) << "Flu" << std::setw(6) << "RS" << std::setw(10)
              << "PPL" << std::setw(8) << "Unedit" << std::setw(7) << "Rel" << std::setw(7) << "Gen" << std::setw(7) << "Loc" << std::setw(9)
              << "edit s" << "\n";
    auto row = [&](const std::string& name, const eval::Summary& s, double secs) {
        std::cout << std::left << std::setw(18) << name << std::right << std::setw(7) << cell(s.es) << std::setw(7) << cell(s.ps) << std::setw(7)
                  << cell(s.ns) << std::setw(7) << cell(s.score) << std::setw(7) << cell(s.em) << std::setw(7) << cell(s.pm) << std::setw(7)
                  << cell(s.nm) << std::setw(8) << opt(s.fluency) << std::setw(6) << opt(s.consistency) << std::setw(10) << opt(s.perplexity, 2) << std::setw(8)
                  << opt(s.unedited_accuracy) << std::setw(7) << cell(s.reliability) << std::setw(7) << cell(s.generalization) << std::setw(7)
                  << cell(s.locality) << std::setw(9) << (secs > 0 ? cell(secs, 1) : std::string("-")) << "\n";
    };
    if (!results.empty()) row("pre-edit", results.front().pre, 0);
    for (const auto& r : results) row(r.method, r.post, r.edit_seconds);
    std::cout << "ES/PS/NS/S: ROME/MEMIT probability metrics (x100); EM/PM/NM their magnitudes; Flu: n-gram entropy x100; RS: consistency (TF-IDF cosine x100); PPL: held-out "
                 "perplexity; Unedit: top-1 on facts outside the edited set; Rel/Gen/Loc: EasyEdit token metrics.\n";
    if (auto f = args.get("json")) {
        json all = json::array();
        for (const auto& r : results) all.push_back(r.to_json());
        std::ofstream out(*f);
        if (!out) throw Error(ErrorKind::Io, "cannot write " + *f);
        out << json{{"dataset", fs::absolute(dataset_path).string()}, {"edits", so.edits}, {"batch", so.batch}, {"results", all}}.dump(1) << "\n";
        std::cout << "wrote " << *f << "\n";
    }
    if (auto f = args.get("csv")) {
        std::ofstream out(*f);
        if (!out) throw Error(ErrorKind::Io, "cannot write " + *f);
        out << "method,edits,es,ps,ns,score,em,pm,nm,fluency,consistency,perplexity,unedited_accuracy,reliability,generalization,locality,portability\n";
        auto line = [&](const std::string& name, int64_t edits, const eval::Summary& s) {
            auto o = [](const std::optional<double>& v) { return v ? std::to_string(*v) : std::string(); };
            auto d = [](double v) { return std::isnan(v) ? std::string() : std::to_string(v); };
            out << name << "," << edits << "," << d(s.es) << "," << d(s.ps) << "," << d(s.ns) << "," << d(s.score) << "," << d(s.em) << ","
                << d(s.pm) << "," << d(s.nm) << "," << o(s.fluency) << "," << o(s.consistency) << "," << o(s.perplexity) << "," << o(s.unedited_accuracy) << ","
                << d(s.reliability) << "," << d(s.generalization) << "," << d(s.locality) << "," << d(s.portability) << "\n";
        };
        if (!results.empty()) line("pre-edit", 0, results.front().pre);
        for (const auto& r : results)
            for (const auto& p : r.curve) line(r.method, p.edits, p.summary);
        std::cout << "wrote " << *f << "\n";
    }
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (interrupted) {
        std::cout << "interrupted: " << results.size() << " of " << methods.size() << " methods finished\n";
        return 130;
    }
    return 0;
}

int cmd_stats(const Argv& argv) {
    Args args(argv, command_spec("stats"));
    std::unique_ptr<Model> model = load_model(args);
    std::vector<int> layers;
    for (const std::string& v : args.all("layers")) {
        std::stringstream ss(v);
        for (std::string part; std::getline(ss, part, ',');) {
            try {
                layers.push_back(std::stoi(part));
            } catch (...) {
                throw Error(ErrorKind::Argument, "--layers expects integers, got '" + part + "'");
            }
        }
    }
    if (layers.empty()) throw Error(ErrorKind::Argument, "missing required option --layers L[,L...]");
    StatsOptions o;
    if (auto c = args.get("corpus")) o.corpus = *c;
    o.n_samples = args.integer("samples", 100000, 1);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<LayerStats> s = second_moments(*model, layers, o, [&](int64_t done, int64_t total) {
        if (done == total || done % 2000 < 64) std::cerr << "  " << done << "/" << total << " documents\r";
    });
    std::cerr << "\n";
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const LayerStats& l : s) {
        at::Tensor ev = at::linalg_eigvalsh(l.mom2);
        std::cout << "layer " << l.layer << ": C over " << l.count << " tokens of " << l.documents << " documents; eigenvalues "
                  << std::scientific << std::setprecision(2) << ev.min().item<double>() << " .. " << ev.max().item<double>() << std::fixed
                  << "\n";
        // What AlphaEdit's null-space threshold would keep: directions and their share of the trace.
        const double trace = ev.sum().item<double>();
        std::cout << "  null space (AlphaEdit P) by threshold:";
        for (double thr : {2e-2, 1e-2, 1e-3, 1e-4}) {
            at::Tensor below = ev < thr;
            std::cout << "  " << std::scientific << std::setprecision(0) << thr << ": " << below.sum().item<int64_t>() << " dims, "
                      << std::fixed << std::setprecision(3) << 100.0 * ev.index({below}).sum().item<double>() / trace << "% of trace";
        }
        std::cout << "\n  " << stats_cache_path(*model, l.layer, l.corpus_hash, o.n_samples).string() << "\n";
    }
    std::cout << "done in " << std::setprecision(2) << secs << " s (cached results load instantly)\n";
    return 0;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The largest Frobenius difference between the weight changes of two edits of the same tensors,
// relative to the largest change (0 when there is none).
double delta_difference(const Edit& a, const Edit& b) {
    if (a.deltas.size() != b.deltas.size()) throw Error(ErrorKind::Internal, "bench edit: the two paths changed different tensors");
    double worst = 0, scale = 0;
    for (size_t i = 0; i < a.deltas.size(); ++i) {
        const at::Tensor wa = a.deltas[i].u.mm(a.deltas[i].v.t()), wb = b.deltas[i].u.mm(b.deltas[i].v.t());
        worst = std::max(worst, (wb - wa).norm().item<double>());
        scale = std::max(scale, wa.norm().item<double>());
    }
    return scale > 0 ? worst / scale : worst;
}

struct PathTimes {
    double old_s = 0, new_s = 0, diff = 0;
};

// The same requests through the reference path and the default path of two sessions that hold the
// same C and templates (one session when the method keeps no sequential state).
PathTimes compare_paths(EditSession& old_session, EditSession& new_session, const std::vector<EditRequest>& reqs) {
    PathTimes t;
    old_session.set_reference_path(true);
    auto t0 = std::chrono::steady_clock::now();
    const Edit a = old_session.compute(reqs);
    t.old_s = seconds_since(t0);
    old_session.set_reference_path(false);
    new_session.set_reference_path(false);
    t0 = std::chrono::steady_clock::now();
    const Edit b = new_session.compute(reqs);
    t.new_s = seconds_since(t0);
    t.diff = delta_difference(a, b);
    return t;
}

void print_compare(const std::string& label, const PathTimes& t, double per, const std::string& unit) {
    std::cout << "  " << std::left << std::setw(30) << label << std::right << std::fixed << std::setprecision(2) << "old " << std::setw(8)
              << t.old_s / per << " s" << unit << "   new " << std::setw(7) << t.new_s / per << " s" << unit << "   x" << std::setprecision(1)
              << t.old_s / std::max(t.new_s, 1e-9) << "   dW relative difference " << std::scientific << std::setprecision(1) << t.diff
              << std::fixed << "\n";
}

std::vector<EditRequest> first_requests(const eval::Dataset& ds, int64_t n) {
    std::vector<EditRequest> reqs;
    for (int64_t i = 0; i < n; ++i) reqs.push_back(eval::requests_of(ds.cases.at(static_cast<size_t>(i))).at(0));
    return reqs;
}

}  // namespace

namespace {

// This process's resident set from /proc/self/status, in MiB: "VmRSS" now, "VmHWM" its peak.
double proc_status_mib(const char* key) {
    std::ifstream in("/proc/self/status");
    std::string line;
    const std::string prefix = std::string(key) + ":";
    while (std::getline(in, line))
        if (line.rfind(prefix, 0) == 0) return std::stod(line.substr(prefix.size())) / 1024.0;  // "   123456 kB"
    return -1;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); false where the kernel refuses.
bool reset_peak_rss() {
    std::ofstream out("/proc/self/clear_refs");
    out << "5";
    out.flush();
    return static_cast<bool>(out);
}

}  // namespace

int cmd_bench_stats(const Argv& argv) {
    Args args(argv, command_spec("bench stats"));
    std::vector<int64_t> sizes;
    for (const std::string& v : args.all("tokens")) {
        std::stringstream ss(v);
        for (std::string part; std::getline(ss, part, ',');) {
            int64_t n = 0;
            try {
                n = std::stoll(part);
            } catch (...) {
                throw Error(ErrorKind::Argument, "--tokens expects integers, got '" + part + "'");
            }
            if (n < 1000) throw Error(ErrorKind::Argument, "--tokens: at least 1000 tokens, got " + part);
            sizes.push_back(n);
        }
    }
    if (sizes.empty()) sizes = {1000000, 10000000};
    const fs::path demo = demo_resource_dir("factworld");
    auto model = Model::load(demo);
    const int layer = static_cast<int>(args.integer("layer", 1, 0));
    // The demo corpus, its lines cycled until a corpus holds the tokens asked for.
    std::vector<std::string> lines;
    std::vector<int64_t> line_tokens;
    {
        std::ifstream in(demo / "corpus.txt");
        for (std::string line; std::getline(in, line);)
            if (line.find_first_not_of(" \t\r") != std::string::npos) {
                line_tokens.push_back(static_cast<int64_t>(model->tokenizer()->encode(line, true).ids.size()));
                lines.push_back(std::move(line));
            }
    }
    if (lines.empty()) throw Error(ErrorKind::Io, "the demo corpus is missing or empty: " + (demo / "corpus.txt").string());
    const fs::path dir = fs::temp_directory_path() / ("engram-bench-stats-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::cout << "bench stats: C = E[k k^T] of layer " << layer << " of the Fact World model (n_ff " << model->hparams().n_ff
              << ") from corpora made by cycling its corpus (" << lines.size() << " documents), " << at::get_num_threads()
              << " threads, cache off; the corpus streams through in windows of at most 2^21 tokens\n";
    std::cout << "  tokens       documents   file MB   seconds   tokens/s   RSS before   peak RSS   peak - before (MiB)\n";
    for (int64_t target : sizes) {
        const fs::path file = dir / ("corpus_" + std::to_string(target) + ".txt");
        int64_t tokens = 0, docs = 0;
        {
            std::ofstream out(file);
            for (size_t i = 0; tokens < target; i = (i + 1) % lines.size(), ++docs) {
                out << lines[i] << '\n';
                tokens += line_tokens[i];
            }
        }
        StatsOptions so;
        so.corpus = file;
        so.n_samples = docs;
        so.use_cache = false;
        const double before = proc_status_mib("VmRSS");
        const bool reset = reset_peak_rss();
        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<LayerStats> s = second_moments(*model, {layer}, so);
        const double secs = seconds_since(t0);
        const double peak = proc_status_mib("VmHWM");
        std::cout << "  " << std::left << std::setw(12) << s[0].count << std::setw(12) << s[0].documents << std::right << std::fixed
                  << std::setprecision(1) << std::setw(8) << double(fs::file_size(file)) / 1e6 << std::setw(10) << secs << std::setw(11)
                  << std::setprecision(0) << double(s[0].count) / secs << std::setprecision(1) << std::setw(13) << before << std::setw(11)
                  << peak << std::setw(14) << peak - before << (reset ? "" : "  (peak is the process's: clear_refs refused)") << "\n";
        fs::remove(file);
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
    std::cout << "  the pre-streaming reader held every document and its token ids at once (about 8 bytes a token plus the text)\n";
    return 0;
}

int cmd_bench_edit(const Argv& argv) {
    Args args(argv, command_spec("bench edit"));
    const int64_t n_rome = args.integer("rome-edits", 3, 1), n_memit = args.integer("memit-batch", 100, 1);
    const int64_t n_compare = args.integer("compare-batch", 10, 0);
    const int64_t n_hse = args.integer("hse-edits", 3, 0);
    // The C of each layer is computed per session (cache off); fewer documents make a short run.
    // A random-weight model of GPT-2-small shape reading the Fact World vocabulary (so requests
    // tokenize), with C computed from the demo corpus before timing starts. "old" is the reference
    // path (EditSession::set_reference_path), timed in the same run on the same requests; it is slow,
    // so the batch methods compare on --compare-batch requests and time the new path alone on
    // --memit-batch.
    const fs::path demo = demo_resource_dir("factworld");
    HParams hp = gpt2_small_hparams();
    auto model = Model::random(Arch::Gpt2, hp, 7);
    model->set_tokenizer(load_tokenizer(demo));
    eval::DatasetOptions dopt;
    dopt.limit = std::max({n_rome, n_memit, n_compare});
    const eval::Dataset ds = eval::load_dataset(demo / "counterfact.json", dopt);
    std::cout << "bench edit: random GPT-2-small-shaped model (" << std::fixed << std::setprecision(1) << double(model->parameter_count()) / 1e6
              << " M parameters), " << at::get_num_threads()
              << " threads; old = per-request targets over the whole model and LU solves, new = the default path, same run\n";
    StatsOptions so;
    so.corpus = demo / "corpus.txt";
    so.n_samples = args.integer("stats-docs", 2000, 1);
    so.use_cache = false;

    {
        EditHParams rome = default_edit_hparams(model_shape(*model), EditMethod::Rome, false);
        EditSession rs(*model, rome, so);
        const auto t0 = std::chrono::steady_clock::now();
        rs.stats(rome.layers[0]);
        rs.context_templates();
        const double setup = seconds_since(t0);
        const PathTimes t = compare_paths(rs, rs, first_requests(ds, n_rome));
        print_compare("ROME (layer " + std::to_string(rome.layers[0]) + ")", t, double(n_rome), "/edit");
        std::cout << "      mean of " << n_rome << " edits in sequence; C and templates beforehand: " << std::setprecision(2) << setup << " s\n";
    }
    for (EditMethod method : {EditMethod::Memit, EditMethod::AlphaEdit}) {
        const EditHParams hpm = default_edit_hparams(model_shape(*model), method, false);
        const std::string name = method == EditMethod::Memit ? "MEMIT" : "AlphaEdit";
        const std::string layers = "layers " + std::to_string(hpm.layers.front()) + "-" + std::to_string(hpm.layers.back());
        // AlphaEdit keeps sequential state, so its old and new paths each start from a fresh session.
        EditSession s_new(*model, hpm, so);
        std::unique_ptr<EditSession> s_old;
        if (method == EditMethod::AlphaEdit) s_old = std::make_unique<EditSession>(*model, hpm, so);
        const auto t0 = std::chrono::steady_clock::now();
        for (EditSession* s : {&s_new, s_old.get()}) {
            if (!s) continue;
            for (int l : hpm.layers) s->stats(l);
            if (method == EditMethod::AlphaEdit)
                for (int l : hpm.layers) s->null_space_projection(l);
            s->context_templates();
        }
        const double setup = seconds_since(t0);
        if (n_compare > 0) {
            const PathTimes t = compare_paths(s_old ? *s_old : s_new, s_new, first_requests(ds, n_compare));
            print_compare(name + " (" + layers + "), batch " + std::to_string(n_compare), t, 1.0, "");
        }
        const auto t1 = std::chrono::steady_clock::now();
        s_new.compute(first_requests(ds, n_memit));
        const double new_s = seconds_since(t1);
        std::cout << "  " << std::left << std::setw(30) << (name + ", batch " + std::to_string(n_memit)) << std::right << "new " << std::setprecision(2)
                  << new_s << " s (" << new_s / double(n_memit) << " s per edit; C" << (method == EditMethod::AlphaEdit ? ", P" : "")
                  << " and templates beforehand: " << setup << " s)\n";
    }

    // HSE one request at a time (the paper's protocol), and its solve: A = lambda C + alpha Cov_sum + K K^T
    // is symmetric positive definite, so a Cholesky factorisation replaces LU.
    if (n_hse > 0) {
        EditHParams hh = default_edit_hparams(model_shape(*model), EditMethod::Hse, false);
        hh.hse_horizon = n_hse;
        EditSession hs(*model, hh, so);
        for (int l : hh.layers) hs.stats(l);
        hs.context_templates();
        const std::vector<EditRequest> reqs = first_requests(ds, n_hse);
        double total = 0;
        for (const EditRequest& r : reqs) {
            const auto t0 = std::chrono::steady_clock::now();
            const Edit e = hs.compute({r});
            total += seconds_since(t0);
            apply_edit(*model, e);
        }
        model->restore_all_base();
        std::cout << "  " << std::left << std::setw(30) << ("HSE (layers " + std::to_string(hh.layers.front()) + "-" + std::to_string(hh.layers.back()) + ")")
                  << std::right << std::setprecision(2) << total / double(n_hse) << " s per edit (" << n_hse << " sequential single edits)\n";
        const int64_t m = hp.n_ff;
        at::Tensor C = hs.stats(hh.layers.back()).mom2;
        at::Tensor K = at::randn({m, 1}, at::kDouble), Kp = at::randn({m, 8}, at::kDouble);
        at::Tensor A = hh.mom2_update_weight * C + 3.0 * Kp.mm(Kp.t()) + K.mm(K.t());
        auto best_of = [](int n, const std::function<at::Tensor()>& f, at::Tensor* out) {
            double best = 1e30;
            for (int i = 0; i < n; ++i) {
                const auto t0 = std::chrono::steady_clock::now();
                *out = f();
                best = std::min(best, seconds_since(t0));
            }
            return best;
        };
        at::Tensor v_lu, v_ch;
        const double lu = best_of(3, [&] { return at::linalg_solve(A, K); }, &v_lu);
        const double ch = best_of(3, [&] {
            auto [L, info] = at::linalg_cholesky_ex(A);
            return at::cholesky_solve(K, L);
        }, &v_ch);
        std::cout << "      solve of one " << m << "x" << m << " float64 system: LU " << std::setprecision(3) << lu << " s, Cholesky " << ch
                  << " s (" << std::setprecision(2) << lu / ch << "x), relative difference " << std::scientific << std::setprecision(2)
                  << ((v_lu - v_ch).norm() / v_lu.norm()).item<double>() << std::fixed << "\n";
    }

    // The demo model, where op overhead rather than arithmetic sets the pace.
    {
        auto fw = Model::load(demo);
        const EditHParams rome = default_edit_hparams(model_shape(*fw), EditMethod::Rome, false);
        EditSession rs(*fw, rome);
        rs.stats(rome.layers[0]);
        rs.context_templates();
        const std::vector<EditRequest> one = first_requests(ds, 1);
        rs.compute(one);  // warm-up
        const PathTimes t = compare_paths(rs, rs, one);
        std::cout << "Fact World demo model (" << std::setprecision(2) << double(fw->parameter_count()) / 1e6 << " M parameters):\n";
        print_compare("ROME (layer " + std::to_string(rome.layers[0]) + "), one edit", t, 1.0, "");
        for (int n : {1, 2}) {
            rs.set_intra_op_threads(n);
            const auto t0 = std::chrono::steady_clock::now();
            rs.compute(one);
            std::cout << "      new path with " << n << " intra-op thread" << (n > 1 ? "s" : " ") << ": " << std::setprecision(3) << seconds_since(t0)
                      << " s" << (n == 1 ? " (the default for a model this small)" : "") << "\n";
        }
    }
    return 0;
}

}  // namespace engram::cli

namespace engram::cli {

// The tour's editing stop: one ROME edit of a Fact World fact, recorded in a project, with the
// probabilities before and after on the edited prompt, a paraphrase and a neighbour, then undone.
void tour_fact_edit(int& step) {
    fs::path dir;
    try {
        dir = demo_resource_dir("factworld");
    } catch (const Error&) {
        return;
    }
    std::cout << "\n" << ++step << ". Editing a fact with ROME: located, rewritten, recorded, undone\n";
    auto model = Model::load(dir);
    eval::DatasetOptions o;
    o.limit = 1;
    const eval::Dataset ds = eval::load_dataset(dir / "counterfact.json", o);
    const eval::EditCase& c = ds.cases.at(0);
    const EditRequest r = eval::requests_of(c).at(0);
    std::vector<std::pair<std::string, std::string>> pt;
    const std::vector<std::string> prompts = {r.prompt_text(), c.paraphrase_prompts.at(0), c.neighborhood_prompts.at(0)};
    for (const auto& p : prompts) {
        pt.emplace_back(p, r.target_new);
        pt.emplace_back(p, r.target_true);
    }
    const auto before = eval::score_targets(*model, pt);
    EditHParams hp = default_edit_hparams(model_shape(*model), EditMethod::Rome, false);
    EditSession session(*model, hp);
    Edit e = session.compute({r});
    const fs::path file = fs::temp_directory_path() / ("engram-tour-edit-" + std::to_string(::getpid()) + ".engram");
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(file.string() + suffix, ec);
    auto project = Project::create(file, *model);
    const int64_t id = project->record(*model, e);
    const auto after = eval::score_targets(*model, pt);
    std::cout << "   request: \"" << r.prompt << "\" with subject \"" << r.subject << "\": " << r.target_true << " -> " << r.target_new << "\n"
              << "   ROME at layer " << hp.layers[0] << " (C from the world's corpus, " << session.context_templates().at(0).size()
              << " context templates generated by the model), " << std::fixed << std::setprecision(2) << e.duration_s << " s; a rank-1 delta on "
              << e.deltas[0].tensor << ", recorded as edit " << id << "\n";
    const char* kinds[] = {"edited prompt", "paraphrase   ", "neighbour    "};
    for (size_t i = 0; i < prompts.size(); ++i)
        std::cout << "   " << kinds[i] << " \"" << prompts[i] << "\"\n      p(" << r.target_new << ") " << std::setprecision(3)
                  << std::exp(-before[2 * i].nll) << " -> " << std::exp(-after[2 * i].nll) << "   p(" << r.target_true << ") "
                  << std::exp(-before[2 * i + 1].nll) << " -> " << std::exp(-after[2 * i + 1].nll) << "\n";
    project->undo(*model);
    const bool base = state_hash(*model) == state_hash_of_base(model->fingerprint());
    std::cout << "   undo: the base weights again, bit for bit: " << (base ? "yes" : "NO")
              << "\n   (engram-cli edit --method rome|memit|alphaedit|pmet|ft [--blue] ...; engram-cli eval for the field's metrics)\n";
    project.reset();
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(file.string() + suffix, ec);
}

}  // namespace engram::cli
