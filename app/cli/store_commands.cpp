// engram-cli commands for projects (*.engram): edit, history, undo/redo, rollback, revert, replay,
// hash, and exports/imports. Each writing command opens the project, loads the base model and
// replays the active edits, changes the history in one transaction, and only then reports success.
#include <ATen/ATen.h>

#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "args.h"
#include "commands.h"
#include "engram/checkpoint.h"
#include "engram/edit.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/store.h"
#include "engram/tokenizer.h"

namespace engram::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::optional<fs::path> model_arg(const Args& args) {
    if (auto m = args.get("model")) return fs::path(*m);
    return std::nullopt;
}

// Opens the project and the edited model, warning when the replay does not reproduce the state
// the project recorded last (it always should: edits apply bit-deterministically).
struct Opened {
    std::unique_ptr<Project> project;
    std::unique_ptr<Model> model;
    std::string hash;
};

Opened open_project(const Args& args, bool read_only) {
    Opened o;
    ProjectOptions options;
    options.read_only = read_only;
    o.project = Project::open(args.require("db"), options);
    o.model = o.project->open_model(model_arg(args));
    o.hash = state_hash(*o.model);
    const std::string recorded = o.project->head_state_hash();
    if (o.hash != recorded)
        std::cerr << "engram-cli: warning: replaying " << o.project->file().string() << " gave state " << o.hash.substr(0, 12)
                  << "... but the project recorded " << recorded.substr(0, 12) << "...\n";
    return o;
}

// A project file this command created is removed again when the command fails before its
// first edit is recorded, so a refused command leaves nothing behind.
class RemoveOnFailure {
public:
    RemoveOnFailure(fs::path file, std::unique_ptr<Project>& project) : file_(std::move(file)), project_(project) {}
    ~RemoveOnFailure() {
        if (!armed_) return;
        project_.reset();  // close the connection first
        std::error_code ec;
        for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(file_.string() + suffix, ec);
    }
    RemoveOnFailure(const RemoveOnFailure&) = delete;
    RemoveOnFailure& operator=(const RemoveOnFailure&) = delete;
    void keep() { armed_ = false; }

private:
    fs::path file_;
    std::unique_ptr<Project>& project_;
    bool armed_ = true;
};

std::string when(const std::string& iso) { return iso.size() >= 19 ? iso.substr(0, 10) + " " + iso.substr(11, 8) : iso; }

std::string join(const std::vector<int64_t>& ids, const char* sep = ", ") {
    std::string s;
    for (size_t i = 0; i < ids.size(); ++i) s += (i ? sep : "") + std::to_string(ids[i]);
    return s;
}

std::string describe(const Edit& e) {
    if (e.method == "synthetic")
        return "synthetic test delta (rank " + e.hparams.value("rank", json(0)).dump() + ", seed " + e.hparams.value("seed", json(0)).dump() + ")";
    if (e.requests.is_array() && !e.requests.empty() && e.requests[0].is_object() && e.requests[0].contains("prompt")) {
        const json& r = e.requests[0];
        std::string s = r.value("prompt", "");
        if (r.contains("subject") && r["subject"].is_string()) {
            const std::string subject = r["subject"];
            if (auto pos = s.find("{}"); pos != std::string::npos) s.replace(pos, 2, subject);
        }
        if (r.contains("target_new")) s += " -> " + (r["target_new"].is_string() ? r["target_new"].get<std::string>() : r["target_new"].dump());
        if (e.requests.size() > 1) s += " (+" + std::to_string(e.requests.size() - 1) + " more)";
        return s;
    }
    return e.requests.dump();
}

json summary_json(const EditSummary& s) {
    const Edit& e = s.edit;
    return {{"id", e.id},
            {"seq", e.seq},
            {"created_at", e.created_at},
            {"method", e.method},
            {"status", edit_status_name(e.status)},
            {"requests", e.requests},
            {"hparams", e.hparams},
            {"metrics", e.metrics},
            {"duration_s", e.duration_s},
            {"state_hash_after", e.state_hash_after},
            {"parent", s.parent_id},
            {"computed_on_reverted", s.reverted_basis},
            {"tensors", s.tensors},
            {"n_deltas", s.n_deltas},
            {"n_artifacts", s.n_artifacts},
            {"n_adapter_ops", s.n_adapter_ops},
            {"blob_bytes", s.blob_bytes}};
}

void print_state(const Project& project, const std::string& hash) {
    const auto active = project.active_ids();
    std::cout << "active edits: " << (active.empty() ? std::string("none (the base model)") : join(active)) << "\nstate hash " << hash << "\n";
}

}  // namespace

std::unique_ptr<Model> open_project_model(const std::string& db, const std::optional<std::string>& model_dir, const LoadOptions& options) {
    ProjectOptions po;
    po.read_only = true;
    auto project = Project::open(db, po);
    return project->open_model(model_dir ? std::optional<fs::path>(*model_dir) : std::nullopt, options);
}

int64_t record_edit(const std::optional<fs::path>& db, std::unique_ptr<Project>& project, Model& model, Edit& edit) {
    if (!db) {
        apply_edit(model, edit);
        return 0;
    }
    if (project) return project->record(model, edit);
    try {
        project = Project::create(*db, model);
        return project->record(model, edit);
    } catch (...) {
        project.reset();
        std::error_code ec;
        for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(db->string() + suffix, ec);
        throw;
    }
}

int cmd_edit_synthetic(const Argv& argv) {
    Args args(argv, command_spec("edit"));
    args.refuse({"blue", "prompt", "subject", "target", "target-true", "requests", "hparams", "set", "corpus"}, "does not apply to --method synthetic");
    const fs::path db = args.require("db");
    const std::string method = args.require("method");
    if (method != "synthetic")
        throw Error(ErrorKind::Argument, "--method " + method + ": this build knows only 'synthetic' (a seeded random low-rank delta for "
                                         "testing the store; ROME and MEMIT arrive with the editing feature)");
    SyntheticEditOptions so;
    so.layer = static_cast<int>(args.integer("layer", -1, 0));
    if (!args.has("layer")) throw Error(ErrorKind::Argument, "missing required option --layer");
    so.rank = args.integer("rank", 1, 1);
    so.seed = static_cast<uint64_t>(args.integer("seed", 0, 0));
    so.artifact_kib = args.integer("artifact-kib", 0, 0);
    if (auto s = args.get("scale")) {
        try {
            size_t used = 0;
            so.scale = std::stod(*s, &used);
            if (used != s->size()) throw std::invalid_argument(*s);
        } catch (const std::exception&) {
            throw Error(ErrorKind::Argument, "option --scale expects a number, got '" + *s + "'");
        }
    }
    std::error_code ec;
    std::unique_ptr<Project> project;
    std::unique_ptr<Model> model;
    const bool fresh = !fs::exists(db, ec) || fs::file_size(db, ec) == 0;
    if (fresh) {
        model = Model::load(args.require("model"));  // a new project needs its model named
    } else {
        project = Project::open(db);
        model = project->open_model(model_arg(args));
    }
    Edit edit = make_synthetic_edit(*model, so);  // checks the arguments before a project is made
    int64_t id = 0;
    if (fresh) {
        RemoveOnFailure guard(db, project);
        project = Project::create(db, *model);
        id = project->record(*model, edit);
        guard.keep();
        if (!args.flag("json")) std::cout << "created project " << db.string() << " for " << model->arch_name() << " at " << model->dir().string() << "\n";
    } else {
        id = project->record(*model, edit);
    }
    if (args.flag("json")) {
        std::cout << json{{"id", id}, {"seq", edit.seq}, {"method", edit.method}, {"state_hash", edit.state_hash_after},
                          {"tensors", edit.touched_tensors()}}
                         .dump()
                  << "\n";
        return 0;
    }
    std::cout << "recorded edit " << id << ": " << describe(edit) << " on " << edit.deltas[0].tensor << "\n";
    print_state(*project, edit.state_hash_after);
    return 0;
}

// `history --edit N`: one edit in full (its deltas and artifacts, checksums verified).
int show_edit(const Project& project, int64_t id, bool as_json) {
    const Edit e = project.edit(id);
    json deltas = json::array(), artifacts = json::array();
    for (const Delta& d : e.deltas) {
        double norm = 0.0;
        if (d.kind == DeltaKind::LowRank) norm = at::matmul(d.u.to(at::kDouble), d.v.to(at::kDouble).t()).norm().item<double>();
        else norm = d.values.to(at::kDouble).norm().item<double>();
        deltas.push_back({{"tensor", d.tensor}, {"kind", delta_kind_name(d.kind)}, {"shape", d.shape}, {"rank", d.rank()},
                          {"dtype", dtype_name(d.dtype())}, {"fro_norm", norm}});
    }
    for (const Artifact& a : e.artifacts)
        artifacts.push_back({{"name", a.name}, {"kind", a.kind}, {"shape", a.tensor.sizes().vec()}, {"meta", a.meta}});
    json ops = json::array();
    for (const AdapterOp& op : e.adapter_ops) {
        json tensors = json::object();
        for (const auto& [name, t] : op.tensors) tensors[name] = {{"shape", t.sizes().vec()}, {"norm", t.to(at::kDouble).norm().item<double>()}};
        ops.push_back({{"adapter", op.adapter}, {"kind", op.kind}, {"attach", attach_module_name(op.slot)}, {"layer", op.layer},
                       {"op", op.op}, {"params", op.params}, {"tensors", tensors}});
    }
    const json j = {{"id", e.id},           {"seq", e.seq},         {"created_at", e.created_at}, {"method", e.method},
                    {"status", edit_status_name(e.status)},         {"requests", e.requests},     {"hparams", e.hparams},
                    {"metrics", e.metrics}, {"duration_s", e.duration_s}, {"state_hash_after", e.state_hash_after},
                    {"computed_on", e.computed_on}, {"deltas", deltas}, {"artifacts", artifacts}, {"adapter_ops", ops}};
    if (as_json) {
        std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
        return 0;
    }
    std::cout << "edit " << e.id << " (seq " << e.seq << ", " << edit_status_name(e.status) << "), " << when(e.created_at) << ", " << e.method
              << ", " << std::setprecision(3) << e.duration_s << " s\n  " << describe(e) << "\n  requests " << e.requests.dump()
              << "\n  hparams  " << e.hparams.dump() << "\n  metrics  " << e.metrics.dump() << "\n  computed on "
              << (e.computed_on.empty() ? std::string("the base model") : "edits " + join(e.computed_on)) << "\n  state hash after "
              << e.state_hash_after << "\n";
    for (const auto& d : deltas) std::cout << "  delta    " << d.dump() << "\n";
    for (const auto& a : artifacts) std::cout << "  artifact " << a.dump() << "\n";
    for (const auto& o : ops) std::cout << "  adapter  " << o.dump() << "\n";
    return 0;
}

int cmd_history(const Argv& argv) {
    Args args(argv, command_spec("history"));
    ProjectOptions po;
    po.read_only = true;
    auto project = Project::open(args.require("db"), po);
    if (args.has("edit")) return show_edit(*project, args.integer("edit", 0, 1), args.flag("json"));
    const auto history = project->history();
    std::vector<HashCheck> checks;
    if (args.flag("verify")) {
        auto model = project->open_model(model_arg(args));
        checks = project->verify(*model);
    }
    const ProjectModel& m = project->model_record();
    if (args.flag("json")) {
        json edits = json::array();
        for (const auto& s : history) edits.push_back(summary_json(s));
        json j = {{"project", project->file().string()},
                  {"model", {{"path", m.path}, {"architecture", m.architecture}, {"fingerprint", m.fingerprint}}},
                  {"active", project->active_ids()},
                  {"redo", project->redo_ids()},
                  {"state_hash", project->head_state_hash()},
                  {"edits", edits}};
        if (args.flag("verify")) {
            json v = json::array();
            for (const auto& c : checks) v.push_back({{"id", c.edit_id}, {"recorded", c.recorded}, {"replayed", c.replayed}, {"ok", c.ok()}});
            j["verify"] = v;
        }
        std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    } else {
        std::cout << "project " << project->file().string() << "\nmodel   " << m.path << " (" << m.architecture << ", fingerprint "
                  << m.fingerprint.substr(0, 12) << "...)\n";
        if (history.empty()) std::cout << "no edits yet\n";
        else std::cout << "   id  seq  status    when                 method     hash          what\n";
        for (const auto& s : history) {
            const Edit& e = s.edit;
            std::cout << std::setw(5) << e.id << std::setw(5) << e.seq << "  " << std::left << std::setw(9) << edit_status_name(e.status) << " "
                      << std::setw(20) << when(e.created_at) << " " << std::setw(10) << e.method << " " << e.state_hash_after.substr(0, 12)
                      << "  " << std::right << describe(e) << "\n";
            std::cout << "           touches";
            for (const auto& t : s.tensors) std::cout << " " << t;
            std::cout << "  (" << s.blob_bytes << " bytes)";
            if (e.metrics.contains("codebook_entries"))
                std::cout << "; codebook of " << e.metrics["codebook_entries"].dump() << " entries after this edit";
            if (e.metrics.contains("hse") && e.metrics["hse"].is_object()) {
                const json& h = e.metrics["hse"];
                const int64_t horizon = h.value("horizon", int64_t(0));
                std::cout << "; HSE batch " << h.value("batch", json()).dump() << (horizon > 0 ? " of " + std::to_string(horizon) : std::string(" (no horizon)")) << ", alpha "
                          << h.value("alpha", json()).dump() << ", |F| " << h.value("fisher_norm", json()).dump();
            }
            std::cout << "\n";
            if (!s.reverted_basis.empty())
                std::cout << "           computed on a model containing edit(s) " << join(s.reverted_basis) << ", since reverted\n";
        }
        print_state(*project, project->head_state_hash());
        if (!project->redo_ids().empty()) std::cout << "redo would re-apply edit " << project->redo_ids().front() << "\n";
        for (const auto& c : checks)
            std::cout << "verify edit " << c.edit_id << ": " << (c.ok() ? "reproduces " : "DIFFERS ") << c.replayed.substr(0, 12) << "...\n";
    }
    for (const auto& c : checks)
        if (!c.ok()) return 1;
    return 0;
}

int cmd_undo(const Argv& argv) {
    Args args(argv, command_spec("undo"));
    Opened o = open_project(args, false);
    auto id = o.project->undo(*o.model);
    if (!id) throw Error(ErrorKind::Argument, "nothing to undo: no edit is active");
    std::cout << "undid edit " << *id << "\n";
    print_state(*o.project, o.project->head_state_hash());
    return 0;
}

int cmd_redo(const Argv& argv) {
    Args args(argv, command_spec("redo"));
    Opened o = open_project(args, false);
    auto id = o.project->redo(*o.model);
    if (!id) throw Error(ErrorKind::Argument, "nothing to redo");
    std::cout << "redid edit " << *id << "\n";
    print_state(*o.project, o.project->head_state_hash());
    return 0;
}

int cmd_rollback(const Argv& argv) {
    Args args(argv, command_spec("rollback"));
    const int64_t to = args.integer("to", 0, 0);
    if (!args.has("to")) throw Error(ErrorKind::Argument, "missing required option --to (an edit number, or 0 for the base)");
    Opened o = open_project(args, false);
    o.project->rollback(*o.model, to);
    std::cout << "rolled back to " << (to == 0 ? std::string("the base model") : "edit " + std::to_string(to)) << "\n";
    print_state(*o.project, o.project->head_state_hash());
    return 0;
}

int cmd_revert(const Argv& argv) {
    Args args(argv, command_spec("revert"));
    if (!args.has("edit")) throw Error(ErrorKind::Argument, "missing required option --edit N");
    const int64_t id = args.integer("edit", 0, 1);
    Opened o = open_project(args, false);
    const auto dependents = o.project->revert(*o.model, id);
    std::cout << "reverted edit " << id << "\n";
    if (!dependents.empty())
        std::cout << "note: edit(s) " << join(dependents) << " were computed on a model that contained edit " << id
                  << "; they stay active (recorded in the project)\n";
    print_state(*o.project, o.project->head_state_hash());
    return 0;
}

int cmd_replay(const Argv& argv) {
    Args args(argv, command_spec("replay"));
    ProjectOptions po;
    po.read_only = true;
    auto project = Project::open(args.require("db"), po);
    auto model = Model::load(args.require("model"));
    project->check_model(*model);
    const auto checks = project->verify(*model);
    const std::string hash = state_hash(*model);
    const std::string recorded = project->head_state_hash();
    bool ok = hash == recorded;
    for (const auto& c : checks) ok = ok && c.ok();
    if (args.flag("json")) {
        json v = json::array();
        for (const auto& c : checks) v.push_back({{"id", c.edit_id}, {"recorded", c.recorded}, {"replayed", c.replayed}, {"ok", c.ok()}});
        std::cout << json{{"model", model->dir().string()}, {"edits", v}, {"state_hash", hash}, {"recorded", recorded}, {"ok", ok}}.dump() << "\n";
        return ok ? 0 : 1;
    }
    std::cout << "replaying " << project->file().string() << " onto " << model->dir().string() << "\n";
    for (const auto& c : checks)
        std::cout << "  edit " << c.edit_id << ": " << (c.ok() ? "reproduces " : "DIFFERS (recorded " + c.recorded.substr(0, 12) + "...) ")
                  << c.replayed.substr(0, 12) << "...\n";
    print_state(*project, hash);
    std::cout << (ok ? "every recorded state reproduces bit for bit\n" : "MISMATCH: the history does not reproduce on this copy\n");
    return ok ? 0 : 1;
}

int cmd_hash(const Argv& argv) {
    Args args(argv, command_spec("hash"));
    if (!args.has("db")) {
        auto model = Model::load(args.require("model"));
        std::cout << "model " << model->dir().string() << " (base, no project)\n" << state_hash(*model) << "\n";
        return 0;
    }
    Opened o = open_project(args, true);
    const auto active = o.project->active_ids();
    std::cout << "model " << o.model->dir().string() << " + project " << o.project->file().string() << ", active edits: "
              << (active.empty() ? std::string("none") : join(active)) << "\n"
              << o.hash << "\n";
    return 0;
}

int cmd_export_model(const Argv& argv) {
    Args args(argv, command_spec("export-model"));
    const fs::path out = args.require("out");
    const std::string dtype_text = args.get("dtype").value_or("F32");
    auto dtype = dtype_from_name(dtype_text);
    if (!dtype || (*dtype != DType::F32 && *dtype != DType::F16 && *dtype != DType::BF16))
        throw Error(ErrorKind::Argument, "--dtype must be F32 (exact), F16 or BF16");
    Opened o = open_project(args, true);
    const json provenance = {{"producer", "engram-cli export-model"},
                             {"project", fs::absolute(o.project->file()).string()},
                             {"base_model", o.project->model_record().path},
                             {"base_fingerprint", o.project->model_record().fingerprint},
                             {"active_edits", o.project->active_ids()},
                             {"state_hash", o.hash},
                             {"dtype", dtype_text}};
    export_model(*o.model, out, o.model->dir(), *dtype, provenance);
    std::cout << "exported the edited model (" << (o.project->active_ids().empty() ? std::string("no active edits") : "edits " + join(o.project->active_ids()))
              << ") to " << out.string() << " as " << dtype_text << "\nstate hash " << o.hash << "\n";
    return 0;
}

int cmd_export_history(const Argv& argv) {
    Args args(argv, command_spec("export-history"));
    ProjectOptions po;
    po.read_only = true;
    auto project = Project::open(args.require("db"), po);
    const fs::path out = args.require("out");
    const json h = project->export_history();
    const fs::path tmp = out.string() + ".tmp";
    {
        std::ofstream f(tmp);
        f << h.dump(1) << "\n";
        if (!f) throw Error(ErrorKind::Io, out.string() + ": cannot write");
    }
    std::error_code ec;
    fs::rename(tmp, out, ec);
    if (ec) throw Error(ErrorKind::Io, out.string() + ": cannot write (" + ec.message() + ")");
    std::cout << "wrote " << h["edits"].size() << " edits to " << out.string() << "\n";
    return 0;
}

int cmd_import_history(const Argv& argv) {
    Args args(argv, command_spec("import-history"));
    const fs::path db = args.require("db"), in = args.require("in");
    const json h = read_json_file(in);
    std::error_code ec;
    std::unique_ptr<Project> project;
    std::unique_ptr<Model> model;
    if (!fs::exists(db, ec) || fs::file_size(db, ec) == 0) {
        std::string dir = args.get("model").value_or("");
        if (dir.empty() && h.is_object() && h.contains("model") && h["model"].is_object()) dir = h["model"].value("path", "");
        if (dir.empty()) throw Error(ErrorKind::Argument, "import-history into a new project needs --model DIR");
        model = Model::load(dir);
        // Refuse another model's history before a project file is made for it.
        if (h.is_object() && h.contains("model") && h["model"].is_object() && h["model"].value("fingerprint", "") != model->fingerprint())
            throw Error(ErrorKind::Argument, in.string() + ": the history is for another model: " + h["model"].value("path", "?") + " (fingerprint " +
                                                 h["model"].value("fingerprint", "").substr(0, 12) + "...) but the model given is " + dir +
                                                 " (fingerprint " + model->fingerprint().substr(0, 12) + "...); nothing was changed");
    }
    std::optional<RemoveOnFailure> guard;
    if (model) {  // a new project: removed again if the import is refused
        guard.emplace(db, project);
        project = Project::create(db, *model);
    } else {
        project = Project::open(db);
        model = project->open_model(model_arg(args));
    }
    const auto ids = project->import_history(*model, h);
    if (guard) guard->keep();
    std::cout << "imported " << ids.size() << " edits into " << db.string() << "; every recorded state reproduced\n";
    print_state(*project, project->head_state_hash());
    return 0;
}

}  // namespace engram::cli
