// Vision transformers on the command line: attribute (per-head direct logit attribution, ablation
// effects, patch maps; JSON and a PNG/PDF/SVG figure), vit-edit (a head-level or fine-tuning edit,
// recorded in a project) and eval-vit (the Shapes World protocol, one table for several methods
// and a λ sweep).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "engram/demo.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/store.h"
#include "engram/vit.h"

#ifdef ENGRAM_CLI_HAS_UI
#include <QApplication>
#include <QImage>

#include "widgets/vit_attribution_figure.h"
#endif

namespace fs = std::filesystem;
using nlohmann::json;

namespace engram::cli {

namespace {

std::unique_ptr<Model> open_vit(const Args& args) {
    LoadOptions opts;
    if (auto d = args.get("device")) opts.device = c10::Device(*d);
    std::unique_ptr<Model> model;
    if (args.has("db")) model = open_project_model(args.require("db"), args.get("model"), opts);
    else model = Model::load(args.get("model") ? fs::path(*args.get("model")) : demo_resource_dir("shapes"), opts);
    if (model->arch() != Arch::Vit) throw Error(ErrorKind::Argument, model->arch_name() + " is not a vision transformer");
    return model;
}

// A class given by name (id2label) or by number.
int64_t parse_class(const Model& model, const std::string& s, const char* what) {
    const auto& labels = model.labels();
    for (size_t i = 0; i < labels.size(); ++i)
        if (labels[i] == s) return int64_t(i);
    try {
        size_t used = 0;
        const long long v = std::stoll(s, &used);
        if (used == s.size() && v >= 0 && v < int64_t(labels.size())) return v;
    } catch (const std::exception&) {
    }
    std::string known;
    for (size_t i = 0; i < labels.size() && i < 12; ++i) known += (i ? ", " : "") + labels[i];
    throw Error(ErrorKind::Argument, std::string(what) + " '" + s + "' is not one of the model's classes (" + known +
                                         (labels.size() > 12 ? ", ..." : "") + ", or a number below " + std::to_string(labels.size()) + ")");
}

// Image files: each argument is a file or a folder (its PNG/JPEG/BMP files, sorted by name).
std::vector<fs::path> image_files(const std::vector<std::string>& args, const char* option) {
    std::vector<fs::path> out;
    for (const auto& a : args) {
        std::error_code ec;
        if (fs::is_directory(a, ec)) {
            std::vector<fs::path> found;
            for (const auto& e : fs::directory_iterator(a)) {
                std::string ext = e.path().extension().string();
                std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
                if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg")) found.push_back(e.path());
            }
            std::sort(found.begin(), found.end());
            if (found.empty()) throw Error(ErrorKind::Argument, std::string("--") + option + " " + a + ": the folder holds no PNG, JPEG or BMP images");
            out.insert(out.end(), found.begin(), found.end());
        } else if (fs::exists(a, ec)) {
            out.emplace_back(a);
        } else {
            throw Error(ErrorKind::Io, std::string("--") + option + " " + a + ": no such file or folder");
        }
    }
    return out;
}

at::Tensor load_images(const Model& model, const std::vector<fs::path>& files) {
    std::vector<at::Tensor> px;
    for (const auto& f : files) px.push_back(load_model_image(model, f));
    return px.empty() ? at::Tensor() : at::cat(px);
}

double parse_double(const std::string& key, const std::string& v) {
    try {
        size_t used = 0;
        const double d = std::stod(v, &used);
        if (used == v.size() && std::isfinite(d)) return d;
    } catch (const std::exception&) {
    }
    throw Error(ErrorKind::Argument, "--set " + key + "=" + v + ": expected a number");
}

bool parse_bool(const std::string& key, const std::string& v) {
    if (v == "true" || v == "1" || v == "on") return true;
    if (v == "false" || v == "0" || v == "off") return false;
    throw Error(ErrorKind::Argument, "--set " + key + "=" + v + ": expected true or false");
}

// --set key=value for the head method and the fine-tuning baseline.
struct VitSettings {
    vit::HeadEditOptions heads;
    vit::FtEditOptions ft;
};

void apply_setting(VitSettings& s, const std::string& kv) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos) throw Error(ErrorKind::Argument, "--set expects key=value, got '" + kv + "'");
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    auto integer = [&](int min) {
        const double d = parse_double(k, v);
        if (d != std::floor(d) || d < min) throw Error(ErrorKind::Argument, "--set " + kv + ": expected an integer >= " + std::to_string(min));
        return int(d);
    };
    if (k == "k_max") s.heads.k_max = v == "auto" ? -1 : integer(0);
    else if (k == "max_reference_change") s.heads.max_reference_change = parse_double(k, v);
    else if (k == "tau") s.heads.tau = parse_double(k, v);
    else if (k == "lambda") s.heads.lambda = parse_double(k, v);
    else if (k == "mu") s.heads.mu = parse_double(k, v);
    else if (k == "lr") s.heads.lr = parse_double(k, v);
    else if (k == "steps") s.heads.steps = integer(0);
    else if (k == "use_heads") s.heads.use_heads = parse_bool(k, v);
    else if (k == "use_projection") s.heads.use_projection = parse_bool(k, v);
    else if (k == "align") s.heads.align = v;
    else if (k == "ablation") s.heads.ablation = vit::ablation_kind_from_name(v);
    else if (k == "score") {
        if (v == "ablation") s.heads.score = vit::HeadScore::Ablation;
        else if (v == "dla") s.heads.score = vit::HeadScore::Dla;
        else throw Error(ErrorKind::Argument, "--set score=" + v + ": expected ablation or dla");
    } else if (k == "ft_lr") s.ft.lr = parse_double(k, v);
    else if (k == "ft_steps") s.ft.max_steps = integer(0);
    else if (k == "ft_l1") s.ft.l1 = parse_double(k, v);
    else if (k == "ft_ce_stop") s.ft.ce_stop = parse_double(k, v);
    else if (k == "ft_layers") {
        s.ft.layers.clear();
        std::stringstream ss(v);
        std::string part;
        while (std::getline(ss, part, ',')) s.ft.layers.push_back(int(parse_double(k, part)));
    } else {
        throw Error(ErrorKind::Argument, "--set " + k + ": unknown setting (heads: k_max, tau, max_reference_change, lambda, mu, lr, steps, use_heads, "
                                         "use_projection, ablation, score, align; fine-tuning: ft_lr, ft_steps, ft_l1, ft_ce_stop, ft_layers)");
    }
}

VitSettings settings_of(const Args& args) {
    VitSettings s;
    for (const auto& kv : args.all("set")) apply_setting(s, kv);
    return s;
}

std::string fixed(double v, int digits) {
    std::ostringstream o;
    o << std::fixed << std::setprecision(digits) << v;
    return o.str();
}

// Shapes World reference images for P when the user gave none (the demo model only).
at::Tensor demo_reference(const Model& model, int64_t n) {
    try {
        return vit::shapes_reference(model, n);
    } catch (const Error& e) {
        throw Error(ErrorKind::Argument, std::string(e.what()) + ": pass --locality-images DIR (or --set use_projection=false)");
    }
}

#ifdef ENGRAM_CLI_HAS_UI
void write_figure(const Model& model, const fs::path& image_path, const vit::Attribution& a, const std::vector<std::string>& outputs) {
    int argc = 1;
    char name[] = "engram-cli";
    char* argv[] = {name, nullptr};
    if (!qEnvironmentVariableIsSet("QT_QPA_PLATFORM")) qputenv("QT_QPA_PLATFORM", "offscreen");
    QApplication app(argc, argv);
    ui::VitAttributionData d;
    d.image = QImage(QString::fromStdString(image_path.string())).convertToFormat(QImage::Format_RGB888);
    const int64_t L = a.heads.size(0), H = a.heads.size(1);
    for (int64_t l = 0; l < L; ++l) {
        QVector<double> row;
        for (int64_t h = 0; h < H; ++h) row.push_back(a.heads[l][h].item<double>());
        d.heads.push_back(row);
        d.mlps.push_back(a.mlps[l].item<double>());
    }
    d.embed = a.embed;
    d.bias = a.bias;
    d.className = QString::fromStdString(model.labels()[size_t(a.target)]);
    if (a.contrast >= 0) d.contrastName = QString::fromStdString(model.labels()[size_t(a.contrast)]);
    d.logit = a.score;
    d.patchGrid = int(model.hparams().image_size / model.hparams().patch_size);
    // The four heads with the largest |direct effect|.
    std::vector<std::pair<double, std::pair<int, int>>> order;
    for (int64_t l = 0; l < L; ++l)
        for (int64_t h = 0; h < H; ++h) order.push_back({std::abs(a.heads[l][h].item<double>()), {int(l), int(h)}});
    std::sort(order.begin(), order.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
    for (size_t i = 0; i < order.size() && i < 4 && a.patch_maps.defined(); ++i) {
        ui::VitAttributionData::HeadMap hm;
        hm.layer = order[i].second.first;
        hm.head = order[i].second.second;
        at::Tensor pm = a.patch_maps[hm.layer][hm.head];
        for (int64_t j = 0; j < pm.size(0); ++j) hm.values.push_back(pm[j].item<double>());
        d.topHeads.push_back(hm);
    }
    d.title = QString::fromStdString("Direct logit attribution, " + model.dir().filename().string() + ": " + image_path.filename().string());
    ui::VitAttributionFigure fig;
    fig.setData(d);
    for (const auto& out : outputs) {
        QString err;
        if (!fig.exportTo(QString::fromStdString(out), QString(), &err)) throw Error(ErrorKind::Io, err.toStdString());
        std::cout << "wrote " << out << "\n";
    }
}
#endif

json matrix_json(const at::Tensor& t) {
    json out = json::array();
    at::Tensor c = t.to(at::kDouble).contiguous();
    if (c.dim() == 1) {
        for (int64_t i = 0; i < c.size(0); ++i) out.push_back(c[i].item<double>());
        return out;
    }
    for (int64_t i = 0; i < c.size(0); ++i) out.push_back(matrix_json(c[i]));
    return out;
}

}  // namespace

int cmd_attribute(const Argv& argv) {
    Args args(argv, command_spec("attribute"));
    const fs::path image = args.require("image");
    auto model = open_vit(args);
    vit::AttributionOptions o;
    if (auto c = args.get("class")) o.target = parse_class(*model, *c, "--class");
    if (auto c = args.get("contrast")) o.contrast = *c == "runner-up" ? -1 : parse_class(*model, *c, "--contrast");
    o.ablation = !args.flag("no-ablation");
    const std::string ablation = args.get("ablation").value_or("zero");
    o.ablation_kind = vit::ablation_kind_from_name(ablation);
    std::vector<std::string> figures;
    for (const char* f : {"png", "pdf", "svg"})
        if (auto p = args.get(f)) figures.push_back(*p);
    o.patch_maps = args.flag("patch-maps") || !figures.empty();
    o.attention = args.flag("attention");
    at::Tensor px = load_images(*model, {image});
    if (o.ablation_kind == vit::AblationKind::Mean) o.mean = vit::mean_head_outputs(*model, demo_reference(*model, 512));
    const vit::Attribution a = vit::attribute(*model, px, o);
    const auto& labels = model->labels();
    const std::string what = "logit(" + labels[size_t(a.target)] + ")" + (a.contrast >= 0 ? " - logit(" + labels[size_t(a.contrast)] + ")" : "");

    if (auto out = args.get("json")) {
        json j = {{"image", image.string()},
                  {"class", labels[size_t(a.target)]},
                  {"class_id", a.target},
                  {"contrast", a.contrast >= 0 ? json(labels[size_t(a.contrast)]) : json(nullptr)},
                  {"predicted", labels[size_t(a.predicted)]},
                  {"logit", a.score},
                  {"sum_of_components", a.sum_of_components},
                  {"heads", matrix_json(a.heads)},
                  {"mlps", matrix_json(a.mlps)},
                  {"embed", a.embed},
                  {"bias", a.bias},
                  {"attn_bias", matrix_json(a.attn_bias)},
                  {"ablation_kind", o.ablation ? json(ablation) : json(nullptr)}};
        if (a.ablation.defined()) j["ablation"] = matrix_json(a.ablation);
        if (args.flag("patch-maps")) {
            j["patch_maps"] = matrix_json(a.patch_maps);
            j["patch_grid"] = model->hparams().image_size / model->hparams().patch_size;
            j["cls_share"] = matrix_json(a.cls_share);
        }
        if (a.rollout.defined()) j["rollout"] = matrix_json(a.rollout);
        if (a.cls_attention.defined()) j["cls_attention"] = matrix_json(a.cls_attention);
        std::ofstream f(*out);
        if (!(f << j.dump(1) << "\n")) throw Error(ErrorKind::Io, "could not write " + *out);
    }
    std::cout << image.string() << ": predicted " << labels[size_t(a.predicted)] << "\n"
              << "explaining " << what << " = " << fixed(a.score, 4) << "; components sum to " << fixed(a.sum_of_components, 4)
              << " (embedding " << fixed(a.embed, 3) << ", biases " << fixed(a.bias, 3) << ")\n";
    const int64_t L = a.heads.size(0), H = a.heads.size(1);
    std::cout << "direct effect per head" << (a.ablation.defined() ? "  |  " + ablation + "-ablation effect" : "") << "\n      ";
    for (int64_t h = 0; h < H; ++h) std::cout << std::setw(8) << ("H" + std::to_string(h));
    std::cout << "     MLP\n";
    for (int64_t l = 0; l < L; ++l) {
        std::cout << "  L" << std::left << std::setw(3) << l << std::right;
        for (int64_t h = 0; h < H; ++h) std::cout << std::setw(8) << fixed(a.heads[l][h].item<double>(), 3);
        std::cout << std::setw(8) << fixed(a.mlps[l].item<double>(), 3);
        if (a.ablation.defined()) {
            std::cout << "  |";
            for (int64_t h = 0; h < H; ++h) std::cout << std::setw(8) << fixed(a.ablation[l][h].item<double>(), 3);
        }
        std::cout << "\n";
    }
    if (!figures.empty()) {
#ifdef ENGRAM_CLI_HAS_UI
        write_figure(*model, image, a, figures);
#else
        throw Error(ErrorKind::Unsupported, "--png/--pdf/--svg need the Qt parts (this engram-cli was built with ENGRAM_BUILD_QT=OFF)");
#endif
    }
    return 0;
}

int cmd_vit_edit(const Argv& argv) {
    Args args(argv, command_spec("vit-edit"));
    const std::string method = args.get("method").value_or("heads");
    if (method != "heads" && method != "ft") throw Error(ErrorKind::Argument, "--method " + method + ": expected heads or ft");
    VitSettings s = settings_of(args);
    std::unique_ptr<Project> project;
    std::unique_ptr<Model> model;
    const std::optional<fs::path> db = args.get("db") ? std::optional<fs::path>(args.require("db")) : std::nullopt;
    std::error_code ec;
    const bool fresh = db && (!fs::exists(*db, ec) || fs::file_size(*db, ec) == 0);
    LoadOptions lo;
    if (auto d = args.get("device")) lo.device = c10::Device(*d);
    if (db && !fresh) {
        project = Project::open(*db);
        model = project->open_model(args.get("model") ? std::optional<fs::path>(args.require("model")) : std::nullopt, lo);
    } else {
        model = Model::load(args.get("model") ? fs::path(*args.get("model")) : demo_resource_dir("shapes"), lo);
    }
    if (model->arch() != Arch::Vit) throw Error(ErrorKind::Argument, model->arch_name() + " is not a vision transformer");
    const std::vector<fs::path> files = image_files(args.all("edit-images"), "edit-images");
    if (files.empty()) throw Error(ErrorKind::Argument, "vit-edit needs --edit-images DIR (or files)");
    const int64_t target = parse_class(*model, args.require("target-class"), "--target-class");
    at::Tensor px = load_images(*model, files);
    std::vector<int64_t> targets(files.size(), target);
    at::Tensor before = vit::predict(*model, px);

    Edit edit;
    if (method == "heads") {
        at::Tensor ref;
        if (s.heads.use_projection || s.heads.ablation == vit::AblationKind::Mean) {
            if (args.has("locality-images")) {
                ref = load_images(*model, image_files(args.all("locality-images"), "locality-images"));
            } else {
                ref = demo_reference(*model, 1000);
                if (!args.flag("json")) std::cerr << "P's reference set: " << ref.size(0) << " rendered Shapes World test images the model gets right\n";
            }
        }
        edit = vit::edit_heads(*model, px, targets, ref, s.heads).edit;
    } else {
        edit = vit::edit_ft(*model, px, targets, s.ft).edit;
    }
    const int64_t id = record_edit(db, project, *model, edit);
    at::Tensor after = vit::predict(*model, px);
    const double success = 100.0 * (after == target).to(at::kDouble).mean().item<double>();
    const auto& labels = model->labels();
    if (args.flag("json")) {
        json rows = json::array();
        for (size_t i = 0; i < files.size(); ++i)
            rows.push_back({{"image", files[i].string()}, {"before", labels[size_t(before[i].item<int64_t>())]},
                            {"after", labels[size_t(after[i].item<int64_t>())]}});
        json out = {{"method", edit.method}, {"target", labels[size_t(target)]}, {"success", success}, {"images", rows},
                    {"tensors", edit.touched_tensors()}, {"metrics", edit.metrics}, {"hparams", edit.hparams}, {"seconds", edit.duration_s}};
        if (db) out["id"] = id, out["state_hash"] = edit.state_hash_after;
        std::cout << out.dump() << "\n";
        return 0;
    }
    std::cout << edit.method << " edit toward " << labels[size_t(target)] << " on " << files.size() << " image" << (files.size() == 1 ? "" : "s")
              << " in " << fixed(edit.duration_s, 2) << " s\n";
    if (edit.metrics.contains("heads")) std::cout << "  heads removed (layer, head): " << edit.metrics["heads"].dump() << "\n";
    std::cout << "  tensors: ";
    const auto touched = edit.touched_tensors();
    for (size_t i = 0; i < touched.size(); ++i) std::cout << (i ? ", " : "") << touched[i];
    std::cout << "\n";
    for (size_t i = 0; i < files.size() && i < 20; ++i)
        std::cout << "  " << files[i].filename().string() << "  " << labels[size_t(before[i].item<int64_t>())] << " -> "
                  << labels[size_t(after[i].item<int64_t>())] << "\n";
    if (files.size() > 20) std::cout << "  ... and " << files.size() - 20 << " more\n";
    std::cout << "  success " << fixed(success, 1) << "% of the edit images\n";
    if (db) std::cout << "recorded edit " << id << " in " << db->string() << "; state hash " << edit.state_hash_after << "\n";
    else std::cout << "(not recorded: pass --db FILE to keep the edit in a project)\n";
    return 0;
}

int cmd_eval_vit(const Argv& argv) {
    Args args(argv, command_spec("eval-vit"));
    if (auto split = args.get("failure-split"); split && *split != "counter")
        throw Error(ErrorKind::Argument, "--failure-split " + *split + ": the Shapes World protocol edits the counter split's failures");
    LoadOptions lo;
    if (auto d = args.get("device")) lo.device = c10::Device(*d);
    auto model = Model::load(args.get("model") ? fs::path(*args.get("model")) : demo_resource_dir("shapes"), lo);
    VitSettings base_settings = settings_of(args);
    vit::ShapesProtocolOptions po;
    po.seed = uint64_t(args.integer("seed", int64_t(po.seed), 0));
    po.counter_images = args.integer("counter-images", po.counter_images, 1);
    po.n_edit = args.integer("edit-images", po.n_edit, 1);
    po.n_locality = args.integer("locality", po.n_locality, 1);
    po.n_reference = args.integer("reference", po.n_reference, 1);
    po.n_accuracy = args.integer("accuracy", po.n_accuracy, 1);
    const bool all_classes = args.get("class") == std::optional<std::string>("all");
    if (auto c = args.get("class"); c && !all_classes) po.target_class = parse_class(*model, *c, "--class");
    po.image_size = model->hparams().image_size;

    std::vector<std::string> methods;
    {
        std::stringstream ss(args.get("method").value_or("heads,ft"));
        std::string m;
        while (std::getline(ss, m, ','))
            if (!m.empty()) {
                if (m != "heads" && m != "heads-only" && m != "projection-only" && m != "ft")
                    throw Error(ErrorKind::Argument, "--method " + m + ": expected heads, heads-only, projection-only or ft");
                methods.push_back(m);
            }
    }
    // --sweep lambda=0.1,0.3,1 (head methods) or ft_l1=... (fine-tuning): one row per value.
    std::string sweep_key;
    std::vector<std::string> sweep_values = {""};
    if (auto sw = args.get("sweep")) {
        const auto eq = sw->find('=');
        if (eq == std::string::npos) throw Error(ErrorKind::Argument, "--sweep expects key=v1,v2,...");
        sweep_key = sw->substr(0, eq);
        sweep_values.clear();
        std::stringstream ss(sw->substr(eq + 1));
        std::string v;
        while (std::getline(ss, v, ','))
            if (!v.empty()) sweep_values.push_back(v);
        VitSettings probe;
        apply_setting(probe, sweep_key + "=" + sweep_values.front());  // an unknown key fails here, before any work
    }

    const auto& labels = model->labels();
    // --class all: every class with enough failures, then the mean per method (the benchmark
    // averages over failure groups the same way).
    std::vector<int64_t> classes = {po.target_class};
    if (all_classes) {
        classes.clear();
        for (int64_t c = 0; c < int64_t(labels.size()); ++c) classes.push_back(c);
    }
    std::unique_ptr<Project> project;
    if (auto db = args.get("db")) {
        std::error_code ec;
        project = fs::exists(*db, ec) && fs::file_size(*db, ec) > 0 ? Project::open(*db) : Project::create(*db, *model);
        project->check_model(*model);
    }
    std::cout << "Shapes World protocol on " << model->dir().string() << " (seed " << po.seed << ")\n";
    json rows = json::array(), groups = json::array();
    std::map<std::pair<std::string, std::string>, std::vector<vit::VitEditMetrics>> per_method;
    // One table row: method, swept value, heads (or groups), then the metrics; the caller ends the line.
    auto print_row = [&](const std::string& method, const std::string& value, const std::string& count, const vit::VitEditMetrics& met) {
        std::cout << "    " << std::left << std::setw(16) << method << std::setw(10) << value << std::right << std::setw(7) << count << std::setw(8)
                  << fixed(met.success, 1) << "%" << std::setw(8) << fixed(met.generalization, 1) << "%" << std::setw(9) << fixed(met.locality, 1)
                  << "%" << std::setw(9) << fixed(met.accuracy_before, 1) << "->" << std::setw(4) << fixed(met.accuracy_after, 1);
    };
    bool diagnosed = false;
    for (int64_t cls : classes) {
        po.target_class = cls;
        std::cerr << "rendering and classifying the protocol's images...\n";
        vit::ShapesProtocolSets sets;
        try {
            sets = vit::shapes_protocol_sets(*model, po);
        } catch (const Error& e) {
            if (!all_classes) throw;
            std::cout << "\n  " << labels[size_t(cls)] << ": skipped (" << e.what() << ")\n";
            continue;
        }
        std::cout << "\n  failures of class " << labels[size_t(sets.target_class)] << " among " << po.counter_images << " counter images: "
                  << sets.failures << " (" << sets.edit.size(0) << " edited, " << sets.general.size(0) << " held out)\n"
                  << "  locality: " << sets.locality.size(0) << " unrelated test images; P's reference set: " << sets.reference.size(0)
                  << " other test images; accuracy: " << sets.accuracy.size(0) << " test images (" << fixed(sets.accuracy_before, 1)
                  << "% before)\n";
        groups.push_back({{"class", labels[size_t(sets.target_class)]}, {"failures", sets.failures}, {"n_edit", sets.edit.size(0)},
                          {"n_general", sets.general.size(0)}, {"n_locality", sets.locality.size(0)}, {"n_reference", sets.reference.size(0)}});

        if (args.flag("diagnostic") && !diagnosed) {
            diagnosed = true;
            std::vector<int64_t> y(sets.accuracy_labels.data_ptr<int64_t>(), sets.accuracy_labels.data_ptr<int64_t>() + sets.accuracy_labels.numel());
            const vit::ComponentSensitivity cs = vit::component_sensitivity(*model, sets.accuracy, y);
            std::cout << "\n  Diagnostic (spec 1.4): one layer's attention or MLP output zeroed, over " << cs.images << " test images\n"
                      << "    layer   attn flips   attn dlogp   mlp flips   mlp dlogp\n";
            double af = 0, mf = 0;
            for (size_t l = 0; l < cs.attn_flip.size(); ++l) {
                std::cout << "    " << std::setw(5) << l << std::setw(12) << fixed(100 * cs.attn_flip[l], 1) + "%" << std::setw(13)
                          << fixed(cs.attn_dlogp[l], 3) << std::setw(11) << fixed(100 * cs.mlp_flip[l], 1) + "%" << std::setw(12)
                          << fixed(cs.mlp_dlogp[l], 3) << "\n";
                af += cs.attn_flip[l];
                mf += cs.mlp_flip[l];
            }
            std::cout << "    mean flip rate: attention " << fixed(100 * af / cs.attn_flip.size(), 1) << "%, MLP "
                      << fixed(100 * mf / cs.mlp_flip.size(), 1) << "%\n";
        }

        std::cout << "\n    " << std::left << std::setw(16) << "method" << std::setw(10) << (sweep_key.empty() ? "" : sweep_key) << std::right
                  << std::setw(7) << "heads" << std::setw(9) << "success" << std::setw(9) << "general" << std::setw(10) << "locality"
                  << std::setw(16) << "accuracy" << std::setw(9) << "time" << "\n";
        for (const std::string& method : methods) {
            for (const std::string& value : sweep_values) {
                VitSettings s = base_settings;
                if (!sweep_key.empty()) apply_setting(s, sweep_key + "=" + value);
                if (method == "heads-only") s.heads.use_projection = false;
                if (method == "projection-only") s.heads.use_heads = false;
                std::vector<int64_t> targets(size_t(sets.edit.size(0)), sets.target_class);
                Edit edit;
                std::string heads = "-";
                if (method == "ft") {
                    edit = vit::edit_ft(*model, sets.edit, targets, s.ft).edit;
                } else {
                    vit::HeadEditResult r = vit::edit_heads(*model, sets.edit, targets, sets.reference, s.heads);
                    heads = std::to_string(r.heads.size());
                    edit = std::move(r.edit);
                }
                apply_edit(*model, edit);
                const vit::VitEditMetrics met = vit::measure_edit(*model, sets);
                const std::string hash = state_hash(*model);
                model->restore_all_base();
                per_method[{method, value}].push_back(met);
                print_row(method, value, heads, met);
                std::cout << std::setw(8) << fixed(edit.duration_s, 1) << "s\n";
                json row = {{"class", labels[size_t(sets.target_class)]}, {"method", method}, {"edit_method", edit.method},
                            {"hparams", edit.hparams}, {"metrics", met.to_json()}, {"edit_metrics", edit.metrics}, {"seconds", edit.duration_s}};
                if (!sweep_key.empty()) row["sweep"] = {{sweep_key, value}};
                rows.push_back(row);
                if (project) {
                    Evaluation ev;
                    ev.state_hash = hash;
                    ev.kind = "vit_shapes_protocol";
                    ev.params = {{"method", method}, {"class", labels[size_t(sets.target_class)]}, {"seed", po.seed}, {"hparams", edit.hparams}};
                    ev.results = met.to_json();
                    project->add_evaluation(ev);
                }
            }
        }
    }
    if (all_classes) {
        std::cout << "\n  mean over the classes edited\n    " << std::left << std::setw(16) << "method" << std::setw(10)
                  << (sweep_key.empty() ? "" : sweep_key) << std::right << std::setw(7) << "groups" << std::setw(9) << "success" << std::setw(9)
                  << "general" << std::setw(10) << "locality" << std::setw(16) << "accuracy" << "\n";
        for (const std::string& method : methods)
            for (const std::string& value : sweep_values) {
                const auto& ms = per_method[{method, value}];
                if (ms.empty()) continue;
                vit::VitEditMetrics mean;
                for (const auto& m : ms) {
                    mean.success += m.success / double(ms.size());
                    mean.generalization += m.generalization / double(ms.size());
                    mean.locality += m.locality / double(ms.size());
                    mean.accuracy_before += m.accuracy_before / double(ms.size());
                    mean.accuracy_after += m.accuracy_after / double(ms.size());
                }
                print_row(method, value, std::to_string(ms.size()), mean);
                std::cout << "\n";
                json row = {{"class", "mean"}, {"method", method}, {"groups", ms.size()}, {"metrics", mean.to_json()}};
                if (!sweep_key.empty()) row["sweep"] = {{sweep_key, value}};
                rows.push_back(row);
            }
    }
    json out = {{"model", model->dir().string()}, {"seed", po.seed}, {"groups", groups}, {"rows", rows}};
    if (auto p = args.get("json")) {
        std::ofstream f(*p);
        if (!(f << out.dump(1) << "\n")) throw Error(ErrorKind::Io, "could not write " + *p);
    }
    if (auto p = args.get("csv")) {
        std::ofstream f(*p);
        f << "class,method,sweep,heads,success,generalization,locality,accuracy_before,accuracy_after,seconds\n";
        for (const auto& r : rows)
            f << r["class"].get<std::string>() << "," << r["method"].get<std::string>() << "," << (r.contains("sweep") ? r["sweep"].begin().value().get<std::string>() : "") << ","
              << (r.contains("edit_metrics") && r["edit_metrics"].contains("heads") ? r["edit_metrics"]["heads"].size() : 0) << "," << r["metrics"]["success"] << ","
              << r["metrics"]["generalization"] << "," << r["metrics"]["locality"] << "," << r["metrics"]["accuracy_before"] << ","
              << r["metrics"]["accuracy_after"] << "," << r.value("seconds", 0.0) << "\n";
        if (!f) throw Error(ErrorKind::Io, "could not write " + *p);
    }
    return 0;
}

}  // namespace engram::cli
namespace engram::cli {

void tour_vit(int& step) {
    fs::path dir;
    try {
        dir = demo_resource_dir("shapes");
    } catch (const Error&) {
        return;
    }
    std::cout << "\n" << ++step << ". A vision transformer: which heads decide, and a head-level edit\n";
    auto model = Model::load(dir);
    const auto& labels = model->labels();
    vit::ShapesProtocolOptions po;
    po.counter_images = 1500;
    po.n_edit = 8;
    po.n_reference = po.n_locality = po.n_accuracy = 400;
    const vit::ShapesProtocolSets sets = vit::shapes_protocol_sets(*model, po);
    vit::AttributionOptions ao;
    ao.target = sets.target_class;
    ao.contrast = -1;
    const vit::Attribution a = vit::attribute(*model, sets.edit.narrow(0, 0, 1), ao);
    std::cout << "   a " << labels[size_t(sets.target_class)] << " on another shape's background, predicted " << labels[size_t(a.predicted)]
              << "; logit(" << labels[size_t(a.target)] << ") - logit(" << labels[size_t(a.contrast)] << ") = " << fixed(a.score, 3)
              << ", the components sum to " << fixed(a.sum_of_components, 3) << "\n";
    at::Tensor flat = a.ablation.flatten();
    const int64_t best = flat.argmax().item<int64_t>();
    const int64_t H = a.heads.size(1);
    std::cout << "   removing head L" << best / H << " H" << best % H << " helps the most: " << fixed(flat[best].item<double>(), 3)
              << " on the margin (direct effect " << fixed(a.heads[best / H][best % H].item<double>(), 3) << ")\n";
    std::vector<int64_t> targets(size_t(sets.edit.size(0)), sets.target_class);
    vit::HeadEditResult r = vit::edit_heads(*model, sets.edit, targets, sets.reference);
    const fs::path file = fs::temp_directory_path() / ("engram-tour-vit-" + std::to_string(::getpid()) + ".engram");
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(file.string() + suffix, ec);
    auto project = Project::create(file, *model);
    const int64_t id = project->record(*model, r.edit);
    const vit::VitEditMetrics m = vit::measure_edit(*model, sets);
    std::cout << "   edit on " << sets.edit.size(0) << " failures: " << r.heads.size() << " heads removed " << r.edit.metrics["heads"].dump()
              << " and P fitted on " << sets.reference.size(0) << " reference images (" << fixed(r.edit.duration_s, 1)
              << " s), recorded as edit " << id << "\n"
              << "   success " << fixed(m.success, 1) << "%, held-out failures " << fixed(m.generalization, 1) << "%, unrelated unchanged "
              << fixed(m.locality, 1) << "%, accuracy " << fixed(m.accuracy_before, 1) << "% -> " << fixed(m.accuracy_after, 1) << "%\n";
    project->undo(*model);
    const bool base = state_hash(*model) == state_hash_of_base(model->fingerprint());
    std::cout << "   undo: the base weights again, bit for bit: " << (base ? "yes" : "NO")
              << "\n   (engram-cli attribute --image F --png OUT; vit-edit; eval-vit for the table against fine-tuning)\n";
    project.reset();
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(file.string() + suffix, ec);
}

}  // namespace engram::cli
