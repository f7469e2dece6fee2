// The project store: a `*.engram` file (SQLite) holding the base model's identity and every edit
// ever made to it, with everything needed to replay it bit for bit (edit.h), plus cached traces and
// evaluation results.
//
// The model a user sees is the base checkpoint plus the active edits, applied in sequence order.
// Every operation below keeps that invariant on the Model it is given: it changes the project in
// one transaction and brings the model to the new state, and when anything fails the project and
// the model are both left as they were. The Model must be this project's base model (checked by
// fingerprint) in the state that open_model()/replay() left it.
//
// History semantics:
//   - record: appends an edit (next sequence number), active; clears the redo stack.
//   - undo: reverts the active edit with the highest sequence number; redo re-activates the most
//     recently undone/reverted edit (a new edit clears what can be redone).
//   - rollback to N: restores the state right after edit N was recorded: N and the edits it was
//     computed on become active, every other edit is reverted (kept, and redoable). N = 0: the base.
//   - revert N: reverts one edit out of order; the other active edits are replayed without it. The
//     active edits that were computed on a model containing N are returned and logged.
//   Touched tensors are always rebuilt from the immutable base and replayed, never subtracted.
//
// Schema (PRAGMA user_version 2, PRAGMA application_id 0x456E4752 "EnGR"): models, edits,
// edit_basis (which edits each edit was computed on, stored as exceptions to "its parent and
// everything under it", so a linear history adds no rows), deltas, artifacts, redo_stack, operations
// (an append-only log of what was done), traces, evaluations; version 2 adds adapter_ops and
// adapter_op_tensors (adapter.h) and edits.n_adapter_ops. A file written by a newer schema is
// refused; an older one is migrated in place, one transaction per step, and keeps its hashes.
//
// Adapters are part of the state like weights: "adapter:<name>" is touched by the edits that change
// it, a rebuild removes it and replays the active edits' ops on it, and the state hash covers it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/edit.h"
#include "engram/model.h"

namespace engram {

inline constexpr int kProjectSchemaVersion = 2;

struct ProjectModel {
    std::string path;          // the base checkpoint folder as recorded (absolute)
    std::string architecture;  // HF class name
    std::string fingerprint;   // Model::fingerprint()
    std::string stored_dtype;
};

struct ProjectOptions {
    bool read_only = false;       // open without ever writing (history, hash, export)
    int64_t max_page_count = 0;   // > 0: cap the file at this many pages (tests simulate a full disk)
};

// An edit as `history` lists it: the value without its tensors, plus what the blobs hold.
struct EditSummary {
    Edit edit;                               // deltas and artifacts left empty
    std::vector<std::string> tensors;        // touched, sorted
    int64_t n_deltas = 0, n_artifacts = 0, n_adapter_ops = 0;
    int64_t blob_bytes = 0;                  // delta + artifact + adapter tensor payload bytes
    int64_t parent_id = 0;                   // the last active edit when it was recorded (0: none)
    std::vector<int64_t> reverted_basis;     // edits it was computed on that are now reverted
};

struct HashCheck {
    int64_t edit_id = 0;
    std::string recorded, replayed;
    bool ok() const { return recorded == replayed; }
};

struct Evaluation {
    int64_t id = 0;
    std::string created_at;
    std::string state_hash;       // the model state it was measured on
    std::optional<int64_t> edit_id;
    std::string kind;             // "counterfact", "perplexity", ...
    nlohmann::json params = nlohmann::json::object();
    nlohmann::json results = nlohmann::json::object();
};

class Project {
public:
    // Opens an existing project. Refuses (engram::Error, nothing written) a missing file, a file that
    // is not an Engram project or is corrupted, a newer schema, and, unless options.read_only, a
    // read-only file.
    static std::unique_ptr<Project> open(const std::filesystem::path& file, const ProjectOptions& options = {});
    // Creates a project for `base` (an unedited, loaded model). The file must not exist, or be empty.
    static std::unique_ptr<Project> create(const std::filesystem::path& file, const Model& base, const ProjectOptions& options = {});
    ~Project();
    Project(const Project&) = delete;
    Project& operator=(const Project&) = delete;

    const std::filesystem::path& file() const;
    const ProjectModel& model_record() const;
    // Refuses a model whose fingerprint differs, naming both models.
    void check_model(const Model& model) const;
    // Loads the base (from `dir`, else the recorded path), checks it and replays the active edits.
    std::unique_ptr<Model> open_model(const std::optional<std::filesystem::path>& dir, const LoadOptions& options = {}) const;

    std::vector<EditSummary> history() const;
    Edit edit(int64_t id) const;  // the full value; blob checksums verified
    std::vector<int64_t> active_ids() const;  // in sequence order
    std::vector<int64_t> redo_ids() const;    // the redo stack, next first
    // The state hash recorded by the last operation (the base's for a fresh project).
    std::string head_state_hash() const;

    // Brings a freshly loaded base model to the project's state; returns the state hash.
    std::string replay(Model& model) const;
    // Replays every edit's recorded state (its basis plus itself) and compares the hashes; leaves
    // the model in the project's current state. The model may start in any state of this project
    // (a freshly loaded base included).
    std::vector<HashCheck> verify(Model& model) const;

    // Applies `edit` to the model, records it (one transaction, committed before returning) and
    // fills its id, seq, created_at, computed_on and state_hash_after. Returns the id.
    int64_t record(Model& model, Edit& edit);
    std::optional<int64_t> undo(Model& model);  // the edit undone; nullopt: nothing to undo
    std::optional<int64_t> redo(Model& model);  // the edit redone; nullopt: nothing to redo
    void rollback(Model& model, int64_t to_id);
    std::vector<int64_t> revert(Model& model, int64_t id);  // returns the dependent active edits
    // Makes exactly `ids` the active edits (the others are reverted and redoable), for example the
    // active set saved before a rollback or revert, to undo it. Returns the state hash.
    std::string restore_active(Model& model, const std::vector<int64_t>& ids);

    // The history as JSON (format "engram-history" v2, which adds "adapter_ops" to each edit; v1 files
    // import too; tensors as base64 of their blobs, with checksums).
    nlohmann::json export_history() const;
    // Appends a history's edits (in their order, with their status) and replays. When the project
    // was empty, every imported edit's recorded state hash must reproduce, or nothing is imported.
    // The history must be for this project's base model (same fingerprint). Returns the new ids.
    std::vector<int64_t> import_history(Model& model, const nlohmann::json& history);

    // Cached causal traces, keyed by the model state and the trace parameters. `summary` (what the
    // result alone does not say: the answer, its clean and corrupted probabilities) is stored beside
    // the parameters but is not part of the key.
    void put_trace(const std::string& state_hash, const nlohmann::json& params, const at::Tensor& result,
                   const nlohmann::json& summary = nlohmann::json::object());
    // `summary`, when given, receives the summary stored with the trace.
    std::optional<at::Tensor> find_trace(const std::string& state_hash, const nlohmann::json& params, nlohmann::json* summary = nullptr) const;
    struct TraceEntry {
        std::string state_hash, created_at;
        nlohmann::json params, summary;
    };
    std::vector<TraceEntry> traces() const;  // newest first, without their results

    // Writes a consistent copy of the project to `file` (SQLite VACUUM INTO through a temporary file
    // beside it, then a rename, so an existing file is replaced whole or not at all). This project
    // stays open on its own file.
    void save_as(const std::filesystem::path& file) const;
    // Evaluation results.
    int64_t add_evaluation(Evaluation evaluation);
    std::vector<Evaluation> evaluations() const;

    // Operations log entries, oldest first: {"op", "edit", "time", "detail", "state_hash"}.
    nlohmann::json operations() const;

private:
    struct Impl;
    explicit Project(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// The tokenizer and preprocessing files copied next to an exported checkpoint when present.
const std::vector<std::string>& tokenizer_file_names();

// Writes the model (edited or not) as a HF checkpoint folder: config.json + model.safetensors in
// `storage` (F32 keeps the edited weights exactly), the tokenizer files found in `source_dir`, and
// engram_provenance.json (`provenance`). Refuses to write into `source_dir` itself.
void export_model(const Model& model, const std::filesystem::path& out_dir, const std::filesystem::path& source_dir,
                  DType storage, const nlohmann::json& provenance);

}  // namespace engram
