// engram-cli trace and bench trace: causal tracing from the command line (engram/trace.h), with
// JSON/CSV output and, when the Qt parts are built, PNG/PDF/SVG heatmaps drawn offscreen by the
// same widget the GUI embeds (ui/widgets/heatmap_widget.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "args.h"
#include "commands.h"
#include "engram/bench.h"
#include "engram/demo.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"
#include "engram/trace.h"

#ifdef ENGRAM_CLI_HAS_UI
#include <QApplication>
#include "widgets/heatmap_widget.h"
#endif

namespace engram::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::unique_ptr<Model> open_trace_model(const Args& args) {
    LoadOptions opts;
    const std::string d = args.get("device").value_or("cpu");
    try {
        opts.device = c10::Device(d);
    } catch (const c10::Error&) {
        throw Error(ErrorKind::Argument, "--device: cannot parse '" + d + "' (use cpu or cuda[:N])");
    }
    if (opts.device.is_cuda() && !at::hasCUDA()) throw Error(ErrorKind::Argument, "--device " + d + ": no CUDA in this build or no GPU visible");
    std::unique_ptr<Model> model;
    if (args.has("db"))
        model = open_project_model(args.require("db"), args.get("model"), opts);
    else if (auto dir = args.get("model"))
        model = Model::load(*dir, opts);
    else
        model = Model::load(demo_resource_dir("factworld"), opts);
    if (auto tok = args.get("tokenizer")) model->set_tokenizer(load_tokenizer(*tok));
    if (!model->tokenizer()) throw Error(ErrorKind::Argument, "the model has no tokenizer; pass --tokenizer DIR");
    return model;
}

std::vector<TraceKind> parse_kinds(const std::string& text) {
    if (text == "all") return {TraceKind::Hidden, TraceKind::Mlp, TraceKind::Attn};
    std::vector<TraceKind> kinds;
    std::stringstream ss(text);
    std::string part;
    while (std::getline(ss, part, ',')) {
        auto k = trace_kind_from_name(part);
        if (!k) throw Error(ErrorKind::Argument, "--kind: expected hidden, mlp, attn, all or a comma list, got '" + part + "'");
        kinds.push_back(*k);
    }
    if (kinds.empty()) throw Error(ErrorKind::Argument, "--kind is empty");
    return kinds;
}

// The subjects whose embedding std sets the s<k> noise: a file (one per line, or a JSON list of
// records with "subject" / "requested_rewrite.subject"), else the Fact World's subjects.
std::vector<std::string> noise_subjects(const Args& args) {
    std::vector<std::string> out;
    if (auto file = args.get("subjects")) {
        std::ifstream in(*file);
        if (!in) throw Error(ErrorKind::Io, *file + ": cannot open");
        std::stringstream ss;
        ss << in.rdbuf();
        const std::string text = ss.str();
        const size_t first = text.find_first_not_of(" \t\r\n");
        if (first != std::string::npos && text[first] == '[') {
            json j = json::parse(text, nullptr, false);
            if (j.is_discarded() || !j.is_array()) throw Error(ErrorKind::Format, *file + ": not a JSON array");
            for (const auto& r : j) {
                if (r.is_string()) out.push_back(r.get<std::string>());
                else if (r.contains("subject")) out.push_back(r["subject"].get<std::string>());
                else if (r.contains("requested_rewrite")) out.push_back(r["requested_rewrite"]["subject"].get<std::string>());
            }
        } else {
            std::string line;
            std::stringstream lines(text);
            while (std::getline(lines, line))
                if (!line.empty()) out.push_back(line);
        }
        if (out.empty()) throw Error(ErrorKind::Argument, *file + ": no subjects");
        return out;
    }
    return demo::fact_world_subjects(demo::generate_fact_world());
}

TraceOptions trace_options(const Args& args, const Model& model) {
    TraceOptions o;
    o.kinds = parse_kinds(args.get("kind").value_or("all"));
    o.samples = int(args.integer("samples", 10, 1));
    // ROME's 10 of GPT-2 XL's 48 layers, as a fraction of the depth (10 would cover a shallow model whole).
    o.window = args.has("window") ? int(args.integer("window", 10, 1)) : default_trace_window(model.hparams().n_layer);
    o.seed = uint64_t(args.integer("seed", 1, 0));
    o.noise = parse_noise_rule(args.get("noise").value_or("s3"));
    o.replace = args.flag("replace");
    o.naive = args.flag("naive");
    if (auto s = args.get("sever")) {
        if (*s == "mlp") o.sever = Sever::Mlp;
        else if (*s == "attn") o.sever = Sever::Attn;
        else throw Error(ErrorKind::Argument, "--sever: expected mlp or attn, got '" + *s + "'");
    }
    if (auto t = args.get("target")) o.target = *t;
    if (o.noise.relative) o.embedding_std = subject_embedding_std(model, noise_subjects(args));
    return o;
}

json params_json(const TraceOptions& o, const TraceResult& r) {
    return {{"samples", o.samples},
            {"noise", noise_rule_text(o.noise)},
            {"noise_level", r.noise_level},
            {"embedding_std", o.embedding_std},
            {"replace", o.replace},
            {"window", o.window},
            {"seed", o.seed},
            {"sever", o.sever == Sever::Mlp ? "mlp" : o.sever == Sever::Attn ? "attn" : "none"},
            {"naive", o.naive},
            {"seconds", r.seconds}};
}

json scores_json(const std::vector<std::vector<double>>& scores) {
    json rows = json::array();
    for (const auto& row : scores) {
        json cells = json::array();
        for (double v : row) cells.push_back(std::isnan(v) ? json(nullptr) : json(v));
        rows.push_back(cells);
    }
    return rows;
}

json result_json(const TraceResult& r, const TraceOptions& o, const std::string& prompt, const std::string& subject) {
    json kinds = json::object();
    for (const auto& k : r.kinds) kinds[trace_kind_name(k.kind)] = scores_json(k.scores);
    json params = params_json(o, r);
    params["prompt"] = prompt;
    params["subject"] = subject;
    if (o.target) params["target"] = *o.target;
    params["cancelled"] = r.cancelled;
    return {{"tokens", r.input.tokens},
            {"subject_range", {r.input.subject_begin, r.input.subject_end}},
            {"answer", {{"token", r.answer_token}, {"id", r.answer_id}}},
            {"clean_prob", r.clean_prob},
            {"corrupted_prob", r.corrupted_prob},
            {"kinds", kinds},
            {"params", params}};
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    if (!out) throw Error(ErrorKind::Io, path + ": cannot open for writing");
    out << text;
    if (!out) throw Error(ErrorKind::Io, path + ": write failed");
}

std::string csv_field(const std::string& s) {
    std::string out = "\"";
    for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
    return out + "\"";
}

std::string result_csv(const TraceResult& r) {
    std::ostringstream out;
    out << std::setprecision(9) << "kind,token_index,token,subject,layer,score,indirect_effect\n";
    for (const auto& k : r.kinds)
        for (size_t t = 0; t < k.scores.size(); ++t)
            for (size_t l = 0; l < k.scores[t].size(); ++l) {
                if (!k.row_done[t]) continue;
                const bool subj = int64_t(t) >= r.input.subject_begin && int64_t(t) < r.input.subject_end;
                out << trace_kind_name(k.kind) << ',' << t << ',' << csv_field(r.input.tokens[t]) << ',' << (subj ? 1 : 0) << ',' << l << ','
                    << k.scores[t][l] << ',' << k.scores[t][l] - r.corrupted_prob << '\n';
            }
    return out.str();
}

class ProgressBar {
public:
    ProgressBar(int64_t total, bool enabled) : total_(total), enabled_(enabled) {}
    void step(const std::string& what) {
        ++done_;
        if (!enabled_) return;
        const int width = 30;
        const int filled = int(width * done_ / std::max<int64_t>(1, total_));
        std::cerr << "\r[" << std::string(size_t(filled), '#') << std::string(size_t(width - filled), '.') << "] " << done_ << "/" << total_
                  << " rows " << what << "        " << std::flush;
        if (done_ == total_) std::cerr << "\n";
    }

private:
    int64_t total_, done_ = 0;
    bool enabled_;
};

bool wants_images(const Args& args) { return args.has("png") || args.has("pdf") || args.has("svg"); }

#ifdef ENGRAM_CLI_HAS_UI
QApplication& offscreen_app() {
    static int argc = 1;
    static char name[] = "engram-cli";
    static char* argv[] = {name, nullptr};
    if (qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM")) qputenv("QT_QPA_PLATFORM", "offscreen");
    static QApplication* app = new QApplication(argc, argv);
    return *app;
}

ui::HeatmapData heatmap_data(const TraceResult& r, const TraceKindResult& k, const std::string& model_name) {
    ui::HeatmapData d;
    for (const auto& row : k.scores) {
        QVector<double> cells;
        for (double v : row) cells.push_back(v);
        d.values.push_back(cells);
    }
    for (const auto& t : r.input.tokens) d.rowLabels << QString::fromStdString(t);
    d.subjectBegin = int(r.input.subject_begin);
    d.subjectEnd = int(r.input.subject_end);
    d.kind = k.kind == TraceKind::Hidden ? ui::HeatmapKind::Hidden : k.kind == TraceKind::Mlp ? ui::HeatmapKind::Mlp : ui::HeatmapKind::Attn;
    d.window = k.window;
    d.modelName = QString::fromStdString(model_name);
    d.answer = QString::fromStdString(r.answer_token).trimmed();
    d.low = r.corrupted_prob;
    return d;
}

// One image per kind: OUT for a single kind, OUT with "_hidden"/"_mlp"/"_attn" before the
// extension otherwise.
std::vector<std::string> export_images(const Args& args, const std::vector<std::pair<std::string, ui::HeatmapData>>& maps) {
    offscreen_app();
    std::vector<std::string> written;
    for (const char* format : {"png", "pdf", "svg"}) {
        auto path = args.get(format);
        if (!path) continue;
        for (const auto& [kind, data] : maps) {
            fs::path p(*path);
            if (maps.size() > 1) p = p.parent_path() / (p.stem().string() + "_" + kind + p.extension().string());
            ui::HeatmapWidget w;
            w.setData(data);
            QString error;
            if (!w.exportTo(QString::fromStdString(p.string()), QString::fromLatin1(format), &error))
                throw Error(ErrorKind::Io, p.string() + ": " + error.toStdString());
            written.push_back(p.string());
        }
    }
    return written;
}
#endif

std::vector<std::string> write_trace_images(const Args& args, const TraceResult& r, const std::string& model_name) {
    if (!wants_images(args)) return {};
#ifdef ENGRAM_CLI_HAS_UI
    std::vector<std::pair<std::string, ui::HeatmapData>> maps;
    for (const auto& k : r.kinds) maps.emplace_back(trace_kind_name(k.kind), heatmap_data(r, k, model_name));
    return export_images(args, maps);
#else
    (void)r;
    (void)model_name;
    throw Error(ErrorKind::Unsupported, "--png/--pdf/--svg need the Qt parts (this engram-cli was built with ENGRAM_BUILD_QT=OFF)");
#endif
}

struct DatasetRecord {
    std::string prompt, subject, expect;
};

std::vector<DatasetRecord> read_dataset(const std::string& spec) {
    std::vector<DatasetRecord> out;
    if (spec == "demo") {
        // The Fact World's facts, one prompt each (the first template), in fact order.
        const demo::FactWorld world = demo::generate_fact_world();
        for (const demo::FactPrompt& p : demo::all_fact_prompts(world)) {
            if (p.template_index != 0) continue;
            out.push_back({p.prompt, world.entities[size_t(p.subject)].name, p.answers.empty() ? "" : p.answers[0]});
        }
        return out;
    }
    std::ifstream in(spec);
    if (!in) throw Error(ErrorKind::Io, spec + ": cannot open");
    json j = json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_array()) throw Error(ErrorKind::Format, spec + ": expected a JSON array of known_1000 or CounterFact records");
    for (const auto& r : j) {
        DatasetRecord d;
        if (r.contains("requested_rewrite")) {  // CounterFact
            const auto& rw = r["requested_rewrite"];
            d.subject = rw.value("subject", "");
            std::string tmpl = rw.value("prompt", "");
            const size_t at = tmpl.find("{}");
            d.prompt = at == std::string::npos ? tmpl : tmpl.replace(at, 2, d.subject);
            if (rw.contains("target_true")) d.expect = rw["target_true"].value("str", "");
        } else {  // known_1000
            d.subject = r.value("subject", "");
            d.prompt = r.value("prompt", "");
            d.expect = r.value("attribute", r.value("prediction", ""));
        }
        if (d.prompt.empty() || d.subject.empty()) throw Error(ErrorKind::Format, spec + ": a record has no prompt or subject");
        out.push_back(std::move(d));
    }
    return out;
}

std::string trimmed(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\n"), b = s.find_last_not_of(" \t\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

int trace_dataset(const Args& args, const Model& model, const TraceOptions& base) {
    std::vector<DatasetRecord> records = read_dataset(args.require("dataset"));
    const int64_t limit = args.integer("limit", int64_t(records.size()), 1);
    if (int64_t(records.size()) > limit) {
        if (args.require("dataset") == "demo") {
            // Evenly spaced, so every relation is represented (the facts are grouped by relation).
            std::vector<DatasetRecord> spread;
            for (int64_t i = 0; i < limit; ++i) spread.push_back(records[size_t(i * int64_t(records.size()) / limit)]);
            records = std::move(spread);
        } else {
            records.resize(size_t(limit));  // the first N records of the file
        }
    }
    std::vector<TraceAverage> avgs;
    for (TraceKind k : base.kinds) avgs.push_back(TraceAverage{k});
    int used = 0, skipped = 0, failed = 0;
    const bool progress = !args.flag("quiet");
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < records.size(); ++i) {
        const DatasetRecord& rec = records[i];
        try {
            TraceInput in = make_trace_input(model, rec.prompt, rec.subject);
            // ROME traces only the prompts the model gets right (correct_prediction).
            TraceResult r = causal_trace(model, in, base);
            std::string first_word = trimmed(rec.expect);
            first_word = first_word.substr(0, first_word.find(' '));
            if (!rec.expect.empty() && trimmed(r.answer_token) != first_word) {
                ++skipped;
            } else {
                ++used;
                for (auto& a : avgs) a.add(r);
            }
        } catch (const Error& e) {
            ++failed;
            std::cerr << "\nrecord " << i << ": " << e.what() << "\n";
        }
        if (progress)
            std::cerr << "\r" << i + 1 << "/" << records.size() << " prompts (" << used << " traced, " << skipped << " wrong answers skipped)" << std::flush;
    }
    if (progress) std::cerr << "\n";
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json kinds = json::object();
    std::ostringstream csv;
    csv << std::setprecision(9) << "kind,bucket,layer,aie\n";
    std::ostringstream table;
    table << std::fixed << std::setprecision(3);
    for (const TraceAverage& a : avgs) {
        json rows = json::array();
        table << "\n" << trace_kind_name(a.kind) << ": average indirect effect (x100) per layer\n  " << std::setw(24) << std::left << "bucket" << std::right;
        for (int64_t l = 0; l < a.n_layer; ++l) table << std::setw(7) << l;
        table << "\n";
        for (int b = 0; b < kTraceBuckets; ++b) {
            json row = json::array();
            table << "  " << std::setw(24) << std::left << trace_bucket_name(b) << std::right;
            for (int64_t l = 0; l < a.n_layer; ++l) {
                const double v = a.mean_ie(b, l);
                row.push_back(std::isnan(v) ? json(nullptr) : json(v));
                csv << trace_kind_name(a.kind) << ',' << csv_field(trace_bucket_name(b)) << ',' << l << ',' << v << '\n';
                table << std::setw(7) << v * 100;
            }
            table << "\n";
            rows.push_back(row);
        }
        kinds[trace_kind_name(a.kind)] = {{"aie", rows},
                                          {"tokens_per_bucket", a.n},
                                          {"avg_clean_prob", a.count ? a.clean_sum / a.count : 0.0},
                                          {"avg_corrupted_prob", a.count ? a.corrupted_sum / a.count : 0.0}};
    }
    json buckets = json::array();
    for (int b = 0; b < kTraceBuckets; ++b) buckets.push_back(trace_bucket_name(b));
    TraceResult dummy;
    dummy.noise_level = base.noise.relative ? base.noise.level * base.embedding_std : base.noise.level;
    dummy.seconds = secs;
    json out = {{"dataset", args.require("dataset")}, {"records", records.size()}, {"traced", used}, {"skipped_wrong", skipped},
                {"failed", failed},  {"buckets", buckets},  {"kinds", kinds},     {"params", params_json(base, dummy)}};
    if (auto p = args.get("json")) write_text(*p, out.dump(2) + "\n");
    if (auto p = args.get("csv")) write_text(*p, csv.str());
    if (!avgs.empty() && avgs[0].count > 0) {
        std::cout << "traced " << used << " of " << records.size() << " prompts (" << skipped << " skipped: the model's top-1 was not the answer; "
                  << failed << " failed) in " << std::setprecision(1) << std::fixed << secs << " s\n"
                  << std::setprecision(4) << "average clean p(answer) " << avgs[0].clean_sum / avgs[0].count << ", corrupted "
                  << avgs[0].corrupted_sum / avgs[0].count << "\n"
                  << table.str();
    } else {
        std::cout << "no prompt was traced (" << skipped << " skipped, " << failed << " failed)\n";
    }
    if (wants_images(args)) {
#ifdef ENGRAM_CLI_HAS_UI
        std::vector<std::pair<std::string, ui::HeatmapData>> maps;
        for (const TraceAverage& a : avgs) {
            ui::HeatmapData d;
            for (int b = 0; b < kTraceBuckets; ++b) {
                QVector<double> row;
                for (int64_t l = 0; l < a.n_layer; ++l) row.push_back(a.mean_ie(b, l));
                d.values.push_back(row);
                d.rowLabels << QString::fromLatin1(trace_bucket_name(b));
            }
            d.kind = a.kind == TraceKind::Hidden ? ui::HeatmapKind::Hidden : a.kind == TraceKind::Mlp ? ui::HeatmapKind::Mlp : ui::HeatmapKind::Attn;
            d.window = a.kind == TraceKind::Hidden ? 1 : base.window;
            d.modelName = QString::fromStdString(model.dir().filename().string());
            d.low = 0.0;
            d.colorBarLabel = QStringLiteral("AIE");
            d.title = QStringLiteral("Average indirect effect of %1 over %2 prompts").arg(QString::fromLatin1(trace_kind_name(a.kind))).arg(a.count);
            maps.emplace_back(trace_kind_name(a.kind), d);
        }
        for (const auto& p : export_images(args, maps)) std::cout << "wrote " << p << "\n";
#else
        throw Error(ErrorKind::Unsupported, "--png/--pdf/--svg need the Qt parts (this engram-cli was built with ENGRAM_BUILD_QT=OFF)");
#endif
    }
    return used > 0 ? 0 : 1;
}

}  // namespace

int cmd_trace(const Argv& argv) {
    Args args(argv, command_spec("trace"));
#ifndef ENGRAM_CLI_HAS_UI
    if (wants_images(args))
        throw Error(ErrorKind::Unsupported, "--png/--pdf/--svg need the Qt parts (this engram-cli was built with ENGRAM_BUILD_QT=OFF)");
#endif
    auto model = open_trace_model(args);
    TraceOptions o = trace_options(args, *model);
    if (args.has("dataset")) {
        if (args.has("prompt") || args.has("subject")) throw Error(ErrorKind::Argument, "--dataset replaces --prompt and --subject");
        return trace_dataset(args, *model, o);
    }
    const std::string prompt = args.require("prompt"), subject = args.require("subject");
    TraceInput in = make_trace_input(*model, prompt, subject);
    ProgressBar bar(int64_t(in.ids.size()) * int64_t(o.kinds.size()), !args.flag("quiet"));
    o.on_row = [&](const TraceRow& row) { bar.step(std::string(trace_kind_name(row.kind)) + " token " + std::to_string(row.token)); };
    TraceResult r = causal_trace(*model, in, o);
    const std::string model_name = args.has("model") ? fs::path(args.require("model")).filename().string() : "factworld";
    if (auto p = args.get("json")) write_text(*p, result_json(r, o, prompt, subject).dump(2) + "\n");
    if (auto p = args.get("csv")) write_text(*p, result_csv(r));
    std::cout << std::fixed << std::setprecision(4) << "answer " << std::quoted(r.answer_token) << " (id " << r.answer_id << "): clean p "
              << r.clean_prob << ", corrupted p " << r.corrupted_prob << " (noise " << noise_rule_text(o.noise) << " = " << r.noise_level
              << ", " << o.samples << " samples) in " << std::setprecision(2) << r.seconds << " s\n";
    std::cout << "subject tokens [" << in.subject_begin << ", " << in.subject_end << "):";
    for (int64_t t = in.subject_begin; t < in.subject_end; ++t) std::cout << " " << std::quoted(in.tokens[size_t(t)]);
    std::cout << "\n";
    for (const auto& k : r.kinds) {
        double best = -1;
        int64_t bt = 0, bl = 0;
        for (size_t t = 0; t < k.scores.size(); ++t)
            for (size_t l = 0; l < k.scores[t].size(); ++l)
                if (k.scores[t][l] > best) best = k.scores[t][l], bt = int64_t(t), bl = int64_t(l);
        std::cout << std::setprecision(4) << "  " << std::setw(6) << std::left << trace_kind_name(k.kind) << std::right << " strongest restoration: token "
                  << bt << " " << std::quoted(in.tokens[size_t(bt)]) << ", layer " << bl << ": p " << best << " (indirect effect "
                  << best - r.corrupted_prob << ")\n";
    }
    for (const auto& p : write_trace_images(args, r, model_name)) std::cout << "wrote " << p << "\n";
    return 0;
}

void tour_causal_trace(int& step) {
    fs::path dir;
    try {
        dir = demo_resource_dir("factworld");
    } catch (const Error&) {
        return;  // tour_demo_worlds already said how to build the demo models
    }
    auto model = Model::load(dir);
    const demo::FactWorld world = demo::generate_fact_world();
    const std::vector<demo::FactPrompt> prompts = demo::all_fact_prompts(world);
    std::cout << "\n" << ++step << ". Causal tracing: where does the model keep a fact?\n";
    std::vector<std::string> subjects;
    for (const demo::Fact& f : world.facts) subjects.push_back(world.entities[size_t(f.subject)].name);
    const double noise_std = subject_embedding_std(*model, subjects);
    // The first fact (in a fixed stride) that the model gets right.
    for (size_t i = 0; i < prompts.size(); i += 97) {
        const demo::FactPrompt& p = prompts[i];
        const std::string subject = world.entities[size_t(p.subject)].name;
        TraceInput in = make_trace_input(*model, p.prompt, subject);
        TraceOptions o;
        o.embedding_std = noise_std;
        TraceResult r = causal_trace(*model, in, o);
        const std::string answer = trimmed(r.answer_token);
        if (p.answers.empty() || answer != p.answers[0].substr(0, p.answers[0].find(' '))) continue;
        std::cout << "   \"" << p.prompt << "\" -> '" << answer << "': p " << std::fixed << std::setprecision(3) << r.clean_prob
                  << " clean, " << r.corrupted_prob << " with the subject's embeddings noised (3 sigma, 10 samples); "
                  << int64_t(in.ids.size()) * r.n_layer * 3 << " restorations in " << std::setprecision(2) << r.seconds << " s\n";
        // The strongest restoration within the subject (the early site) and at the last token (the late site).
        for (const auto& k : r.kinds) {
            auto best_in = [&](int64_t t0, int64_t t1) {
                double best = -1;
                int64_t bt = t0, bl = 0;
                for (int64_t t = t0; t < t1; ++t)
                    for (int64_t l = 0; l < r.n_layer; ++l)
                        if (k.scores[size_t(t)][size_t(l)] > best) best = k.scores[size_t(t)][size_t(l)], bt = t, bl = l;
                return std::tuple{best, bt, bl};
            };
            const auto [sp, st, sl] = best_in(in.subject_begin, in.subject_end);
            const auto [lp, lt, ll] = best_in(int64_t(in.ids.size()) - 1, int64_t(in.ids.size()));
            std::cout << "   " << std::setw(6) << std::left << trace_kind_name(k.kind) << std::right << std::setprecision(3) << " subject token '"
                      << in.tokens[size_t(st)] << "' at layer " << sl << ": p " << sp << "; last token at layer " << ll << ": p " << lp << "\n";
        }
#ifdef ENGRAM_CLI_HAS_UI
        const fs::path out = fs::temp_directory_path() / ("engram-tour-trace-" + std::to_string(::getpid()));
        fs::create_directories(out);
        Args args({"--png", (out / "trace.png").string()}, {}, {"png"});
        for (const auto& path : write_trace_images(args, r, "factworld")) std::cout << "   wrote " << path << "\n";
#endif
        return;
    }
    std::cout << "   (the demo model got none of the sampled facts right, so there is nothing to trace)\n";
}

int cmd_bench_trace(const Argv& argv) {
    Args args(argv, command_spec("bench trace"));
    const int64_t seq = args.integer("seq", 11, 3), samples = args.integer("samples", 10, 1), layers = args.integer("layers", 12, 1);
    auto model = Model::random(Arch::Gpt2, gpt2_small_hparams(layers), 4);
    // "The Eiffel Tower is located in the city of" in GPT-2 ids: 11 tokens, the subject at [1, 5).
    std::vector<int64_t> base_ids{464, 412, 733, 417, 8765, 318, 5140, 287, 262, 1748, 286, 11, 290, 257, 13};
    TraceInput in;
    in.ids.assign(base_ids.begin(), base_ids.begin() + std::min<int64_t>(seq, int64_t(base_ids.size())));
    while (int64_t(in.ids.size()) < seq) in.ids.push_back(int64_t(1000 + in.ids.size()));
    for (int64_t id : in.ids) in.tokens.push_back(std::to_string(id));
    in.subject_begin = 1;
    in.subject_end = std::min<int64_t>(5, seq - 1);
    TraceOptions o;
    o.samples = int(samples);
    o.embedding_std = token_embedding_std(*model, std::vector<int64_t>(in.ids.begin() + in.subject_begin, in.ids.begin() + in.subject_end));
    std::cout << "bench trace: random GPT-2-small-shaped model (" << layers << " layers, 768 wide), " << seq << " tokens (subject ["
              << in.subject_begin << ", " << in.subject_end << ")), " << samples << " samples, kinds hidden+mlp+attn, window 10, "
              << at::get_num_threads() << " threads\n";
    o.naive = false;
    causal_trace(*model, in, o);  // warm-up (allocator, thread pool)
    TraceResult fast = causal_trace(*model, in, o);
    std::cout << std::fixed << std::setprecision(3) << "  fast   " << fast.seconds << " s, " << std::setprecision(1) << fast.flops / 1e9
              << " GFLOP, " << fast.flops / fast.seconds / 1e9 << " GFLOP/s\n"
              << std::flush;
    json j = {{"fast_s", fast.seconds}, {"fast_gflops", fast.flops / 1e9}, {"fast_gflop_per_s", fast.flops / fast.seconds / 1e9},
              {"layers", layers}, {"tokens", seq}, {"samples", samples}};
    if (!args.flag("fast-only")) {
        o.naive = true;
        TraceResult naive = causal_trace(*model, in, o);
        double diff = std::abs(naive.clean_prob - fast.clean_prob);
        for (const auto& k : fast.kinds)
            for (size_t t = 0; t < k.scores.size(); ++t)
                for (size_t l = 0; l < k.scores[t].size(); ++l) diff = std::max(diff, std::abs(k.scores[t][l] - naive.kind(k.kind)->scores[t][l]));
        const double ratio = naive.seconds / fast.seconds;
        std::cout << std::setprecision(3) << "  naive  " << naive.seconds << " s, " << std::setprecision(1) << naive.flops / 1e9 << " GFLOP, "
                  << naive.flops / naive.seconds / 1e9 << " GFLOP/s\n"
                  << std::setprecision(2) << "  ratio  " << ratio << "x faster (target >= 5x); " << std::setprecision(1) << naive.flops / fast.flops
                  << "x fewer FLOPs\n"
                  << std::scientific << std::setprecision(2) << "  max |fast - naive| over every cell: " << diff << " (target <= 1e-5)\n";
        j["naive_s"] = naive.seconds;
        j["naive_gflops"] = naive.flops / 1e9;
        j["ratio"] = ratio;
        j["flop_ratio"] = naive.flops / fast.flops;
        j["max_abs_diff"] = diff;
    }
    std::cout << j.dump() << "\n";
    return 0;
}

}  // namespace engram::cli
