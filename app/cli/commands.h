#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace engram {
class Model;
class Project;
struct Edit;
struct LoadOptions;
}  // namespace engram

#include <filesystem>

namespace engram::cli {

// The folder of a built-in demo model ("factworld", "shapes"); throws engram::Error if absent.
std::filesystem::path demo_resource_dir(const std::string& world);

using Argv = std::vector<std::string>;

int cmd_info(const Argv& argv);
int cmd_tokenize(const Argv& argv);
int cmd_forward(const Argv& argv);
int cmd_predict(const Argv& argv);
int cmd_generate(const Argv& argv);
int cmd_classify(const Argv& argv);
int cmd_bench(const Argv& argv);
int cmd_tour(const Argv& argv);
int cmd_demo(const Argv& argv);

// Causal tracing (trace_commands.cpp).
int cmd_trace(const Argv& argv);
int cmd_bench_trace(const Argv& argv);  // engram-cli bench trace ...
// The tour's causal-trace stop (needs the demo model; says so and returns when it is absent).
void tour_causal_trace(int& step);

// Projects (store_commands.cpp).
int cmd_edit(const Argv& argv);
int cmd_history(const Argv& argv);
int cmd_undo(const Argv& argv);
int cmd_redo(const Argv& argv);
int cmd_rollback(const Argv& argv);
int cmd_revert(const Argv& argv);
int cmd_replay(const Argv& argv);
int cmd_hash(const Argv& argv);
int cmd_export_model(const Argv& argv);
int cmd_export_history(const Argv& argv);
int cmd_import_history(const Argv& argv);

// Locate-then-edit (edit_commands.cpp); `edit --method synthetic` goes to cmd_edit_synthetic.
int cmd_edit_synthetic(const Argv& argv);
int cmd_eval(const Argv& argv);
int cmd_stats(const Argv& argv);
int cmd_bench_edit(const Argv& argv);
int cmd_bench_stats(const Argv& argv);  // engram-cli bench stats ...  // engram-cli bench edit ...
// The tour's editing stop (needs the demo model; returns quietly when it is absent).
void tour_fact_edit(int& step);
// The base model of project `db` (from `model_dir`, else the recorded folder) with its active edits
// replayed: what every --model command works on when --db is given.
std::unique_ptr<Model> open_project_model(const std::string& db, const std::optional<std::string>& model_dir, const LoadOptions& options);
// Records `edit` in project `db`: into `project` when it is open, else into a new project file
// (removed again if recording fails). Without a db the edit is only applied to the model.
// Returns the edit's id (0 when not recorded).
int64_t record_edit(const std::optional<std::filesystem::path>& db, std::unique_ptr<Project>& project, Model& model, Edit& edit);

// Vision transformers (vit_commands.cpp).
int cmd_attribute(const Argv& argv);
int cmd_vit_edit(const Argv& argv);
int cmd_eval_vit(const Argv& argv);
// The tour's ViT stop: an attribution and a head-level edit (returns quietly without the demo ViT).
void tour_vit(int& step);

}  // namespace engram::cli
