// The project store (store.h): opening and creating project files, recording edits, and moving
// the model between history states by restoring touched tensors from the base and replaying.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <functional>
#include <map>
#include <set>
#include <sys/stat.h>
#include <unistd.h>

#include "engram/about.h"
#include "engram/checkpoint.h"
#include "engram/error.h"
#include "engram/history_file.h"
#include "engram/sha256.h"
#include "engram/store.h"
#include "store/base64.h"
#include "store/schema.h"
#include "store/sqlite.h"

namespace engram {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string now_iso() {
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[40];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                  tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    return buf;
}

std::string short_fp(const std::string& fp) { return fp.empty() ? "(none)" : fp.substr(0, 12) + "..."; }

json parse_json(const std::string& text, const std::string& what) {
    try {
        return json::parse(text);
    } catch (const json::exception& e) {
        throw Error(ErrorKind::Format, what + ": malformed JSON (" + e.what() + ")");
    }
}

std::vector<int64_t> parse_shape(const std::string& text, const std::string& what) {
    json j = parse_json(text, what);
    if (!j.is_array()) throw Error(ErrorKind::Format, what + ": shape is not a list");
    std::vector<int64_t> shape;
    for (const auto& v : j) {
        if (!v.is_number_integer()) throw Error(ErrorKind::Format, what + ": shape holds a non-integer");
        shape.push_back(v.get<int64_t>());
    }
    return shape;
}

DType parse_dtype(const std::string& name, const std::string& what) {
    auto d = dtype_from_name(name);
    if (!d) throw Error(ErrorKind::Format, what + ": unknown dtype '" + name + "'");
    return *d;
}

DType dtype_of_tensor(const at::Tensor& t, const std::string& what) {
    for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16, DType::I8, DType::U8, DType::Bool})
        if (to_scalar_type(d) == t.scalar_type()) return d;
    throw Error(ErrorKind::Argument, what + ": dtype " + std::string(c10::toString(t.scalar_type())) + " cannot be stored");
}

std::string checksum(const std::vector<uint8_t>& bytes) { return sha256_hex(bytes.data(), bytes.size()); }

void verify_checksum(const std::vector<uint8_t>& bytes, const std::string& expected, const std::string& what) {
    const std::string actual = checksum(bytes);
    if (actual != expected)
        throw Error(ErrorKind::Format, what + ": checksum mismatch (stored " + short_fp(expected) + ", bytes hash to " + short_fp(actual) +
                                           "); the project file is damaged");
}

std::string shape_text(const std::vector<int64_t>& shape) { return json(shape).dump(); }

// A project file can claim any shape; only its blobs' lengths are real. Every stored tensor is
// checked against its blob before anything is allocated for it.
at::Tensor stored_tensor(DType dtype, const std::vector<int64_t>& shape, const std::vector<uint8_t>& blob, const std::string& what) {
    const auto bytes = tensor_bytes(shape, dtype_size(dtype));
    if (!bytes || *bytes != blob.size())
        throw Error(ErrorKind::Format, what + ": the stored " + dtype_name(dtype) + " " + shape_text(shape) + " does not match its " +
                                           std::to_string(blob.size()) + "-byte blob; the project file is damaged");
    return tensor_from_blob(dtype, shape, blob.data(), blob.size(), what);
}

// A stored delta's claims, checked before its parts are allocated: the target shape and rank must
// account for exactly the bytes of its blob and, when the model is at hand, name one of its
// weights with that shape (slot orientation; a bias [n] is addressed as [n, 1]).
void check_delta_claim(const Model* model, const std::string& tensor, DeltaKind kind, const std::vector<int64_t>& shape, DType dtype,
                       int64_t rank, size_t blob_size, const std::string& what) {
    if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0)
        throw Error(ErrorKind::Format, what + ": bad target shape " + shape_text(shape) + "; the project file is damaged");
    if (dtype != DType::F32 && dtype != DType::F64) throw Error(ErrorKind::Format, what + ": dtype " + dtype_name(dtype) + " (F32 or F64 expected)");
    const std::optional<uint64_t> need = delta_blob_bytes(kind, shape, dtype, rank);
    if (!need || *need != blob_size)
        throw Error(ErrorKind::Format, what + ": a " + delta_kind_name(kind) + " delta of shape " + shape_text(shape) + ", rank " +
                                           std::to_string(rank) + " in " + dtype_name(dtype) + " does not fit its " + std::to_string(blob_size) +
                                           "-byte blob; the project file is damaged");
    if (!model) return;
    auto ref = model->find_weight(tensor);
    if (!ref) throw Error(ErrorKind::Format, what + ": " + model->arch_name() + " has no such weight");
    const at::Tensor& w = model->weight(ref->slot, ref->layer);
    const bool column = w.dim() == 1 && shape == std::vector<int64_t>{w.size(0), 1};
    if (w.sizes().vec() != shape && !column)
        throw Error(ErrorKind::Format, what + ": the delta is for shape " + shape_text(shape) + " but the weight is " + shape_text(w.sizes().vec()));
}

// The read-only attribute is honoured even for root, who could otherwise write through it.
void refuse_read_only_file(const fs::path& file) {
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) return;  // reported by the open that follows
    const bool no_write_bits = (st.st_mode & (S_IWUSR | S_IWGRP | S_IWOTH)) == 0;
    if (no_write_bits || ::access(file.c_str(), W_OK) != 0)
        throw Error(ErrorKind::Io, file.string() + ": the project file is read-only; nothing was changed (make it writable, or use "
                                                   "a read-only command such as history, hash or export-model)");
}

// Slot tensors are handles: copying them is a cheap snapshot that restores the model exactly,
// because edits never write into a tensor, they replace it.
struct ModelSnapshot {
    SlotTensors globals;
    std::vector<SlotTensors> layers;
    AdapterSet adapters;  // copies share the (immutable) adapters: also a cheap, exact snapshot
    explicit ModelSnapshot(const Model& m) : globals(m.globals), layers(m.layers), adapters(m.adapters()) {}
    void restore(Model& m) const {
        m.globals = globals;
        m.layers = layers;
        m.adapters() = adapters;
    }
};

// A touched name is a weight or "adapter:<name>"; the base of an adapter is its absence.
void restore_base_tensor(Model& model, const std::string& name) {
    if (const std::string adapter = adapter_of_touch_name(name); !adapter.empty()) {
        model.adapters().remove(adapter);
        return;
    }
    auto ref = model.find_weight(name);
    if (!ref) throw Error(ErrorKind::Argument, "tensor '" + name + "': " + model.arch_name() + " has no such weight");
    const bool tied_head = ref->slot == Slot::TokEmbd && model.hparams().tied_output && model.weight(Slot::Output).defined() &&
                           model.weight(Slot::Output).is_same(model.weight(Slot::TokEmbd));
    model.restore_base(ref->slot, ref->layer);
    if (tied_head) model.restore_base(Slot::Output);
}

// An edit's basis (the edits active in the model it was computed on) is stored compactly, so a
// long sequential history costs O(1) rows per edit: basis(e) = state_after(parent(e)), plus the
// exceptions with included = 1, minus those with included = 0, where state_after(p) = basis(p) + p
// and parent(e) is the active edit with the highest sequence number when e was recorded (0: none).
struct Basis {
    int64_t parent = 0;
    std::vector<std::pair<int64_t, bool>> exceptions;  // (edit id, included)
};

// The compact form of `basis` given a function for state_after(parent).
template <typename StateAfter>
Basis compact_basis(const std::vector<int64_t>& basis_in_order, StateAfter&& state_after) {
    Basis b;
    if (!basis_in_order.empty()) b.parent = basis_in_order.back();
    const std::set<int64_t> expected = b.parent ? state_after(b.parent) : std::set<int64_t>{};
    const std::set<int64_t> actual(basis_in_order.begin(), basis_in_order.end());
    for (int64_t id : actual)
        if (!expected.count(id)) b.exceptions.emplace_back(id, true);
    for (int64_t id : expected)
        if (!actual.count(id)) b.exceptions.emplace_back(id, false);
    return b;
}

// What moving between history states needs to know about each edit, wherever the edits live
// (the database, or a history being imported).
struct EditIndex {
    std::map<int64_t, int64_t> seq;                    // id -> seq
    std::map<int64_t, std::set<std::string>> touched;  // id -> tensor names
    std::map<int64_t, Basis> basis_of;                 // id -> compact basis
    // The deltas of edit `id` (only those for `only`'s tensors when given), checked against `model`.
    std::function<std::vector<Delta>(int64_t id, const std::set<std::string>* only, const Model& model)> deltas;
    // The adapter ops of edit `id` (only those on adapters whose touch names are in `only`, when given).
    std::function<std::vector<AdapterOp>(int64_t id, const std::set<std::string>* only)> adapter_ops;

    std::vector<int64_t> in_order(const std::set<int64_t>& ids) const {
        std::vector<int64_t> v(ids.begin(), ids.end());
        std::sort(v.begin(), v.end(), [&](int64_t a, int64_t b) { return seq.at(a) < seq.at(b); });
        return v;
    }
    std::vector<int64_t> all_in_order() const {
        std::set<int64_t> ids;
        for (const auto& [id, s] : seq) ids.insert(id);
        return in_order(ids);
    }
    // basis(id) given state_after(parent(id)).
    std::set<int64_t> basis_from(std::set<int64_t> parent_state, int64_t id) const {
        for (const auto& [e, included] : basis_of.at(id).exceptions) {
            if (included) parent_state.insert(e);
            else parent_state.erase(e);
        }
        return parent_state;
    }
    std::set<int64_t> basis(int64_t id) const {
        std::vector<int64_t> chain;  // id, its parent, ..., the first edit of the chain
        for (int64_t c = id; c; c = basis_of.at(c).parent) chain.push_back(c);
        std::set<int64_t> s;
        int64_t prev = 0;
        for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
            if (prev) s.insert(prev);
            s = basis_from(std::move(s), *it);
            prev = *it;
        }
        return s;
    }
    std::set<int64_t> state_after(int64_t id) const {
        std::set<int64_t> s = basis(id);
        s.insert(id);
        return s;
    }
    // For every edit, whether `k` is in its basis; one pass in sequence order.
    std::map<int64_t, bool> basis_contains(int64_t k) const {
        std::map<int64_t, bool> in;
        for (int64_t id : all_in_order()) {
            const Basis& b = basis_of.at(id);
            bool v = b.parent && (b.parent == k || in.at(b.parent));
            for (const auto& [e, included] : b.exceptions)
                if (e == k) v = included;
            in[id] = v;
        }
        return in;
    }
};

// Walks the edits in sequence order yielding each one's state_after, reusing the previous state
// when an edit's parent is the edit before it (the common, linear case), so a whole history costs
// about one set copy per edit instead of one chain walk.
template <typename F>
void for_each_state_after(const EditIndex& ix, F&& f) {
    int64_t last = 0;
    std::set<int64_t> last_state;
    for (int64_t id : ix.all_in_order()) {
        const int64_t parent = ix.basis_of.at(id).parent;
        std::set<int64_t> state = parent == 0 ? ix.basis_from({}, id)
                                  : parent == last ? ix.basis_from(last_state, id)
                                                   : ix.basis_from(ix.state_after(parent), id);
        state.insert(id);
        f(id, state);
        last = id;
        last_state = std::move(state);
    }
}

// Restores `tensors` from the base and replays, in sequence order, the deltas of the `active`
// edits that touch them. Other tensors are left alone.
void rebuild(Model& model, const EditIndex& index, const std::set<std::string>& tensors, const std::set<int64_t>& active) {
    at::NoGradGuard no_grad;
    for (const auto& name : tensors) restore_base_tensor(model, name);
    for (int64_t id : index.in_order(active)) {
        const auto& t = index.touched.at(id);
        if (std::none_of(t.begin(), t.end(), [&](const std::string& n) { return tensors.count(n) != 0; })) continue;
        for (const Delta& d : index.deltas(id, &tensors, model)) apply_delta(model, d);
        for (const AdapterOp& op : index.adapter_ops(id, &tensors)) model.apply_adapter_op(op);
    }
}

// Brings the model from the state with edits `from` active to the state with `to` active. Adding
// one edit that comes last in sequence order is just applying it; anything else restores the
// tensors the changed edits touch from the base and replays every active edit that touches them.
void transition(Model& model, const EditIndex& index, const std::set<int64_t>& from, const std::set<int64_t>& to) {
    std::set<int64_t> added, removed;
    std::set_difference(to.begin(), to.end(), from.begin(), from.end(), std::inserter(added, added.end()));
    std::set_difference(from.begin(), from.end(), to.begin(), to.end(), std::inserter(removed, removed.end()));
    if (added.empty() && removed.empty()) return;
    at::NoGradGuard no_grad;
    if (removed.empty() && added.size() == 1) {
        const int64_t id = *added.begin();
        const bool last = std::all_of(from.begin(), from.end(), [&](int64_t f) { return index.seq.at(f) < index.seq.at(id); });
        if (last) {
            for (const Delta& d : index.deltas(id, nullptr, model)) apply_delta(model, d);
            for (const AdapterOp& op : index.adapter_ops(id, nullptr)) model.apply_adapter_op(op);
            return;
        }
    }
    std::set<std::string> tensors;
    for (const auto* group : {&added, &removed})
        for (int64_t id : *group) tensors.insert(index.touched.at(id).begin(), index.touched.at(id).end());
    rebuild(model, index, tensors, to);
}

std::set<int64_t> to_set(const std::vector<int64_t>& v) { return {v.begin(), v.end()}; }

json ids_json(const std::vector<int64_t>& ids) { return json(ids); }

json basis_exceptions_json(const Basis& b) {
    json out = json::array();
    for (const auto& [id, included] : b.exceptions) out.push_back({{"edit", id}, {"included", included}});
    return out;
}

// A trace depends on the model state and its parameters (object keys dump sorted, so canonical).
std::string trace_key(const std::string& state_hash_value, const json& params) {
    const std::string text = state_hash_value + "\n" + params.dump();
    return sha256_hex(text.data(), text.size());
}

json adapter_tensor_json(const std::string& name, const at::Tensor& t) {
    const std::vector<uint8_t> blob = tensor_blob(t);
    return {{"name", name},
            {"dtype", dtype_name(dtype_of_tensor(t, "adapter tensor '" + name + "'"))},
            {"shape", t.sizes().vec()},
            {"sha256", checksum(blob)},
            {"data", store::base64_encode(blob.data(), blob.size())}};
}

json adapter_op_json(const AdapterOp& op) {
    json tensors = json::array();
    for (const auto& [name, t] : op.tensors) tensors.push_back(adapter_tensor_json(name, t));
    return {{"adapter", op.adapter}, {"kind", op.kind}, {"attach", attach_module_name(op.slot)}, {"layer", op.layer},
            {"op", op.op}, {"params", op.params}, {"tensors", tensors}};
}

// The attach point as stored; an unknown one is a damaged or foreign file.
Slot stored_attach(const std::string& attach, const std::string& what) {
    try {
        return attach_slot_from_name(attach);
    } catch (const Error& e) {
        throw Error(ErrorKind::Format, what + ": " + e.what());
    }
}

}  // namespace

struct Project::Impl {
    fs::path file;
    ProjectOptions options;
    sql::Database db;
    ProjectModel model;

    // The last operation this process has seen. Every change checks, inside its transaction, that
    // no other process changed the history meanwhile, since the model in hand would be stale.
    mutable int64_t seen_op = 0;
    // The file's schema: an older file opened read-only is read as it is (it has no adapters).
    int64_t schema = kProjectSchemaVersion;

    Impl(const fs::path& f, const ProjectOptions& o, sql::Database::Mode mode) : file(f), options(o), db(f, mode) {}

    int64_t last_operation() {
        sql::Statement st(db, "SELECT coalesce(max(id), 0) FROM operations");
        st.step();
        return st.column_int(0);
    }

    void expect_unchanged() {
        if (last_operation() != seen_op)
            throw Error(ErrorKind::Io, where() + ": another process changed the project meanwhile; nothing was changed here "
                                                 "(open the project again and retry)");
    }

    std::string where() const { return file.string(); }

    void need_writable(const char* op) const {
        if (options.read_only) throw Error(ErrorKind::Argument, where() + ": opened read-only; cannot " + op);
    }

    void configure_connection() {
        if (!options.read_only) {
            sql::Statement wal(db, "PRAGMA journal_mode = WAL");
            if (!wal.step() || wal.column_text(0) != "wal")
                throw Error(ErrorKind::Io, where() + ": cannot switch the project to write-ahead logging");
        }
        db.exec("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL", "configuring the connection");
        if (options.max_page_count > 0)
            db.exec(("PRAGMA max_page_count = " + std::to_string(options.max_page_count)).c_str(), "capping the file size");
    }

    // Rows that name an edit which does not exist: a file Engram wrote has none (foreign keys).
    void check_references() {
        // (NULL NOT IN an empty set is true in SQL, hence the explicit IS NOT NULL.)
        sql::Statement st(db,
                          "SELECT 'an artifact', edit_id FROM artifacts WHERE edit_id NOT IN (SELECT id FROM edits) "
                          "UNION ALL SELECT 'the redo stack', edit_id FROM redo_stack WHERE edit_id NOT IN (SELECT id FROM edits) "
                          "UNION ALL SELECT 'an operation', edit_id FROM operations WHERE edit_id IS NOT NULL AND edit_id NOT IN (SELECT id FROM edits) "
                          "UNION ALL SELECT 'an evaluation', edit_id FROM evaluations WHERE edit_id IS NOT NULL AND edit_id NOT IN (SELECT id FROM edits) "
                          "LIMIT 1");
        if (st.step())
            throw Error(ErrorKind::Format, where() + ": " + st.column_text(0) + " names edit " + std::to_string(st.column_int(1)) +
                                               ", which does not exist; the project file is damaged");
        index();  // parents, bases and deltas
    }

    void load_model_record() {
        sql::Statement st(db, "SELECT path, architecture, fingerprint, stored_dtype FROM models ORDER BY id LIMIT 1");
        if (!st.step()) throw Error(ErrorKind::Format, where() + ": the project records no model");
        model = {st.column_text(0), st.column_text(1), st.column_text(2), st.column_text(3)};
    }

    void log(const std::string& op, std::optional<int64_t> edit_id, const json& detail, const std::string& state_hash) {
        sql::Statement st(db, "INSERT INTO operations (time, op, edit_id, detail, state_hash) VALUES (?, ?, ?, ?, ?)");
        st.bind(1, now_iso()).bind(2, op);
        if (edit_id) st.bind(3, *edit_id);
        else st.bind_null(3);
        // Every operation names the Engram version that wrote it.
        json d = detail.is_object() ? detail : json::object();
        d["engram_version"] = engram_version();
        st.bind(4, d.dump()).bind(5, state_hash).run();
    }

    std::string head_state_hash() {
        sql::Statement st(db, "SELECT state_hash FROM operations ORDER BY id DESC LIMIT 1");
        if (!st.step()) throw Error(ErrorKind::Format, where() + ": the project has no operations log");
        return st.column_text(0);
    }

    std::vector<int64_t> active_ids() {
        sql::Statement st(db, "SELECT id FROM edits WHERE status = 'active' ORDER BY seq");
        std::vector<int64_t> ids;
        while (st.step()) ids.push_back(st.column_int(0));
        return ids;
    }

    bool edit_exists(int64_t id) {
        sql::Statement st(db, "SELECT 1 FROM edits WHERE id = ?");
        st.bind(1, id);
        return st.step();
    }

    // `model`, when given, is the model the deltas will apply to: their claims are checked against it.
    std::vector<Delta> load_deltas(int64_t id, const std::set<std::string>* only, const Model* model) {
        sql::Statement st(db, "SELECT tensor, kind, shape, dtype, rank, checksum, blob FROM deltas WHERE edit_id = ? ORDER BY ord");
        st.bind(1, id);
        std::vector<Delta> out;
        while (st.step()) {
            const std::string tensor = st.column_text(0);
            if (only && !only->count(tensor)) continue;
            const std::string what = where() + ": edit " + std::to_string(id) + ", delta for '" + tensor + "'";
            auto kind = delta_kind_from_name(st.column_text(1));
            if (!kind) throw Error(ErrorKind::Format, what + ": unknown kind '" + st.column_text(1) + "'");
            const std::vector<int64_t> shape = parse_shape(st.column_text(2), what);
            const DType dtype = parse_dtype(st.column_text(3), what);
            const std::vector<uint8_t> blob = st.column_blob(6);
            check_delta_claim(model, tensor, *kind, shape, dtype, st.column_int(4), blob.size(), what);
            verify_checksum(blob, st.column_text(5), what);
            out.push_back(delta_from_blob(tensor, *kind, shape, dtype, st.column_int(4), blob.data(), blob.size()));
        }
        return out;
    }

    // The adapter ops of edit `id`, only those on adapters whose touch names are in `only` when given.
    std::vector<AdapterOp> load_adapter_ops(int64_t id, const std::set<std::string>* only) {
        if (schema < 2) return {};
        sql::Statement st(db, "SELECT id, adapter, kind, attach, layer, op, params FROM adapter_ops WHERE edit_id = ? ORDER BY ord");
        st.bind(1, id);
        sql::Statement ts(db, "SELECT name, dtype, shape, checksum, blob FROM adapter_op_tensors WHERE op_id = ? ORDER BY ord");
        std::vector<AdapterOp> out;
        while (st.step()) {
            AdapterOp op;
            op.adapter = st.column_text(1);
            if (only && !only->count(adapter_touch_name(op.adapter))) continue;
            const std::string what = where() + ": edit " + std::to_string(id) + ", adapter op on '" + op.adapter + "'";
            op.kind = st.column_text(2);
            op.slot = stored_attach(st.column_text(3), what);
            op.layer = static_cast<int>(st.column_int(4));
            op.op = st.column_text(5);
            op.params = parse_json(st.column_text(6), what + " params");
            ts.bind(1, st.column_int(0));
            while (ts.step()) {
                const std::string name = ts.column_text(0);
                const std::string tw = what + ", tensor '" + name + "'";
                const std::vector<uint8_t> blob = ts.column_blob(4);
                verify_checksum(blob, ts.column_text(3), tw);
                op.tensors.emplace_back(name, stored_tensor(parse_dtype(ts.column_text(1), tw), parse_shape(ts.column_text(2), tw), blob, tw));
            }
            ts.reset();
            out.push_back(std::move(op));
        }
        return out;
    }

    void insert_adapter_ops(int64_t edit_id, const std::vector<AdapterOp>& ops) {
        sql::Statement o(db, "INSERT INTO adapter_ops (edit_id, ord, adapter, kind, attach, layer, op, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
        sql::Statement t(db,
                         "INSERT INTO adapter_op_tensors (op_id, ord, name, dtype, shape, checksum, blob) VALUES (?, ?, ?, ?, ?, ?, ?)");
        for (size_t i = 0; i < ops.size(); ++i) {
            const AdapterOp& op = ops[i];
            o.bind(1, edit_id).bind(2, static_cast<int64_t>(i)).bind(3, op.adapter).bind(4, op.kind).bind(5, attach_module_name(op.slot));
            o.bind(6, static_cast<int64_t>(op.layer)).bind(7, op.op).bind(8, op.params.dump()).run();
            const int64_t op_id = db.last_insert_rowid();
            for (size_t k = 0; k < op.tensors.size(); ++k) {
                const auto& [name, tensor] = op.tensors[k];
                const std::vector<uint8_t> blob = tensor_blob(tensor);
                t.bind(1, op_id).bind(2, static_cast<int64_t>(k)).bind(3, name);
                t.bind(4, dtype_name(dtype_of_tensor(tensor, "adapter tensor '" + name + "'"))).bind(5, json(tensor.sizes().vec()).dump());
                t.bind(6, checksum(blob)).bind_blob(7, blob.data(), blob.size()).run();
            }
        }
    }

    std::vector<Artifact> load_artifacts(int64_t id) {
        sql::Statement st(db, "SELECT name, kind, dtype, shape, meta, checksum, blob FROM artifacts WHERE edit_id = ? ORDER BY ord");
        st.bind(1, id);
        std::vector<Artifact> out;
        while (st.step()) {
            Artifact a;
            a.name = st.column_text(0);
            a.kind = st.column_text(1);
            const std::string what = where() + ": edit " + std::to_string(id) + ", artifact '" + a.name + "'";
            const std::vector<uint8_t> blob = st.column_blob(6);
            verify_checksum(blob, st.column_text(5), what);
            a.tensor = stored_tensor(parse_dtype(st.column_text(2), what), parse_shape(st.column_text(3), what), blob, what);
            a.meta = parse_json(st.column_text(4), what);
            out.push_back(std::move(a));
        }
        return out;
    }

    // Every edit's metadata (no blobs, computed_on left empty), in sequence order.
    std::vector<Edit> load_edits() {
        sql::Statement st(db,
                          "SELECT id, seq, created_at, method, requests, hparams, status, metrics, duration_s, state_hash_after "
                          "FROM edits ORDER BY seq");
        std::vector<Edit> out;
        while (st.step()) {
            Edit e;
            e.id = st.column_int(0);
            e.seq = st.column_int(1);
            e.created_at = st.column_text(2);
            e.method = st.column_text(3);
            const std::string what = where() + ": edit " + std::to_string(e.id);
            e.requests = parse_json(st.column_text(4), what + " requests");
            e.hparams = parse_json(st.column_text(5), what + " hparams");
            e.status = st.column_text(6) == "active" ? EditStatus::Active : EditStatus::Reverted;
            e.metrics = parse_json(st.column_text(7), what + " metrics");
            e.duration_s = st.column_double(8);
            e.state_hash_after = st.column_text(9);
            out.push_back(std::move(e));
        }
        return out;
    }

    EditIndex index() {
        EditIndex ix;
        sql::Statement edits(db, "SELECT id, seq, parent_id FROM edits");
        while (edits.step()) {
            const int64_t id = edits.column_int(0);
            ix.seq[id] = edits.column_int(1);
            ix.basis_of[id].parent = edits.is_null(2) ? 0 : edits.column_int(2);
            ix.touched[id];
        }
        // A basis names earlier edits only, so the walks over parents end. The file may say otherwise.
        auto damaged = [&](int64_t id, const std::string& why) {
            return Error(ErrorKind::Format, where() + ": edit " + std::to_string(id) + " " + why + "; the project file is damaged");
        };
        auto earlier = [&](int64_t id, int64_t other) { return ix.seq.count(other) && ix.seq.at(other) < ix.seq.at(id); };
        for (const auto& [id, b] : ix.basis_of)
            if (b.parent && !earlier(id, b.parent)) throw damaged(id, "names edit " + std::to_string(b.parent) + " as its parent, which is not an earlier edit");
        sql::Statement basis(db, "SELECT edit_id, basis_id, included FROM edit_basis ORDER BY edit_id, basis_id");
        while (basis.step()) {
            const int64_t id = basis.column_int(0), other = basis.column_int(1);
            if (!ix.seq.count(id)) throw damaged(id, "has basis rows but does not exist");
            if (!earlier(id, other)) throw damaged(id, "names edit " + std::to_string(other) + " in its basis, which is not an earlier edit");
            ix.basis_of.at(id).exceptions.emplace_back(other, basis.column_int(2) != 0);
        }
        sql::Statement st(db, "SELECT edit_id, tensor FROM deltas");
        while (st.step()) {
            if (!ix.seq.count(st.column_int(0))) throw damaged(st.column_int(0), "has deltas but does not exist");
            ix.touched[st.column_int(0)].insert(st.column_text(1));
        }
        if (schema >= 2) {
            sql::Statement ao(db, "SELECT edit_id, adapter FROM adapter_ops");
            while (ao.step()) {
                if (!ix.seq.count(ao.column_int(0))) throw damaged(ao.column_int(0), "has adapter ops but does not exist");
                ix.touched[ao.column_int(0)].insert(adapter_touch_name(ao.column_text(1)));
            }
        }
        ix.deltas = [this](int64_t id, const std::set<std::string>* only, const Model& model) { return load_deltas(id, only, &model); };
        ix.adapter_ops = [this](int64_t id, const std::set<std::string>* only) { return load_adapter_ops(id, only); };
        return ix;
    }

    void set_status(int64_t id, EditStatus status) {
        sql::Statement st(db, "UPDATE edits SET status = ? WHERE id = ?");
        st.bind(1, edit_status_name(status)).bind(2, id).run();
    }

    void push_redo(int64_t id) {
        sql::Statement del(db, "DELETE FROM redo_stack WHERE edit_id = ?");
        del.bind(1, id).run();
        sql::Statement st(db, "INSERT INTO redo_stack (pos, edit_id) VALUES ((SELECT coalesce(max(pos), 0) + 1 FROM redo_stack), ?)");
        st.bind(1, id).run();
    }

    void drop_redo(int64_t id) {
        sql::Statement st(db, "DELETE FROM redo_stack WHERE edit_id = ?");
        st.bind(1, id).run();
    }

    // Records a change of the active set inside the caller's transaction: the edits that leave it
    // are reverted (the earliest ends on top of the redo stack, so it is redone first), those that
    // join it become active. Returns (reverted, activated), each in sequence order.
    std::pair<std::vector<int64_t>, std::vector<int64_t>> mark_transition(const EditIndex& ix, const std::set<int64_t>& from,
                                                                          const std::set<int64_t>& to) {
        std::vector<int64_t> reverted, activated;
        for (int64_t id : ix.in_order(from))
            if (!to.count(id)) reverted.push_back(id);
        for (int64_t id : ix.in_order(to))
            if (!from.count(id)) activated.push_back(id);
        for (auto it = reverted.rbegin(); it != reverted.rend(); ++it) {
            set_status(*it, EditStatus::Reverted);
            push_redo(*it);
        }
        for (int64_t id : activated) {
            set_status(id, EditStatus::Active);
            drop_redo(id);
        }
        return {reverted, activated};
    }

    std::vector<int64_t> redo_ids() {
        sql::Statement st(db, "SELECT edit_id FROM redo_stack ORDER BY pos DESC");
        std::vector<int64_t> ids;
        while (st.step()) ids.push_back(st.column_int(0));
        return ids;
    }

    int64_t insert_edit(const Edit& e, int64_t seq, const std::string& created_at, const Basis& basis) {
        sql::Statement st(db,
                          "INSERT INTO edits (seq, created_at, method, requests, hparams, status, metrics, duration_s, state_hash_after, "
                          "parent_id, n_deltas, n_artifacts, n_adapter_ops) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        st.bind(1, seq).bind(2, created_at).bind(3, e.method).bind(4, e.requests.dump()).bind(5, e.hparams.dump());
        st.bind(6, edit_status_name(e.status)).bind(7, e.metrics.dump()).bind(8, e.duration_s).bind(9, e.state_hash_after);
        if (basis.parent) st.bind(10, basis.parent);
        else st.bind_null(10);
        st.bind(11, static_cast<int64_t>(e.deltas.size())).bind(12, static_cast<int64_t>(e.artifacts.size()));
        st.bind(13, static_cast<int64_t>(e.adapter_ops.size())).run();
        const int64_t id = db.last_insert_rowid();
        sql::Statement b(db, "INSERT INTO edit_basis (edit_id, basis_id, included) VALUES (?, ?, ?)");
        for (const auto& [other, included] : basis.exceptions) b.bind(1, id).bind(2, other).bind(3, int64_t{included}).run();
        sql::Statement d(db,
                         "INSERT INTO deltas (edit_id, ord, tensor, kind, shape, dtype, rank, checksum, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
        for (size_t i = 0; i < e.deltas.size(); ++i) {
            const Delta& delta = e.deltas[i];
            const std::vector<uint8_t> blob = delta_blob(delta);
            d.bind(1, id).bind(2, static_cast<int64_t>(i)).bind(3, delta.tensor).bind(4, delta_kind_name(delta.kind));
            d.bind(5, json(delta.shape).dump()).bind(6, dtype_name(delta.dtype())).bind(7, delta.rank()).bind(8, checksum(blob));
            d.bind_blob(9, blob.data(), blob.size()).run();
        }
        sql::Statement a(db,
                         "INSERT INTO artifacts (edit_id, ord, name, kind, dtype, shape, meta, checksum, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
        for (size_t i = 0; i < e.artifacts.size(); ++i) {
            const Artifact& art = e.artifacts[i];
            const std::vector<uint8_t> blob = tensor_blob(art.tensor);
            a.bind(1, id).bind(2, static_cast<int64_t>(i)).bind(3, art.name).bind(4, art.kind);
            a.bind(5, dtype_name(dtype_of_tensor(art.tensor, "artifact '" + art.name + "'"))).bind(6, json(art.tensor.sizes().vec()).dump());
            a.bind(7, art.meta.dump()).bind(8, checksum(blob)).bind_blob(9, blob.data(), blob.size()).run();
        }
        insert_adapter_ops(id, e.adapter_ops);
        return id;
    }

    // Runs a model transition plus the database changes that go with it as one unit: on any
    // failure the model is restored and the transaction rolled back.
    template <typename F>
    auto guarded(Model& model, const std::string& what, F&& body) {
        ModelSnapshot snapshot(model);
        try {
            return body();
        } catch (const Error& e) {
            snapshot.restore(model);
            throw e.with_context(what);
        } catch (const c10::Error& e) {
            snapshot.restore(model);
            throw Error(ErrorKind::Internal, what + ": libtorch: " + e.what_without_backtrace());
        } catch (...) {
            snapshot.restore(model);
            throw;
        }
    }
};

Project::Project(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Project::~Project() = default;

std::unique_ptr<Project> Project::open(const fs::path& file, const ProjectOptions& options) {
    std::error_code ec;
    if (!fs::exists(file, ec))
        throw Error(ErrorKind::Io, file.string() + ": no such project file (a project is created by `engram-cli edit --db FILE --model DIR ...`)");
    if (fs::is_directory(file, ec)) throw Error(ErrorKind::Io, file.string() + ": is a folder, not a project file");
    if (!options.read_only) refuse_read_only_file(file);
    // Nothing is written before these checks pass, and they run on a read-only connection, so a
    // refused file is not even checkpointed when it is closed.
    auto probe = std::make_unique<sql::Database>(file, sql::Database::Mode::ReadOnly);
    const store::SchemaState s = store::inspect(*probe);
    if (s.empty()) throw Error(ErrorKind::Format, file.string() + ": an empty file, not an Engram project");
    if (s.application_id != store::kApplicationId)
        throw Error(ErrorKind::Format, file.string() + ": an SQLite database, but not an Engram project (application_id " +
                                           std::to_string(s.application_id) + ")");
    if (s.user_version > kProjectSchemaVersion)
        throw Error(ErrorKind::Format, file.string() + ": written by a newer Engram (project schema " + std::to_string(s.user_version) +
                                           "; this build reads up to " + std::to_string(kProjectSchemaVersion) +
                                           "); nothing was changed, update Engram to open it");
    if (s.user_version < 1) throw Error(ErrorKind::Format, file.string() + ": an Engram project with no schema version; the file is damaged");
    store::check_schema(*probe, s.user_version);
    probe.reset();
    auto impl = std::make_unique<Impl>(file, options, options.read_only ? sql::Database::Mode::ReadOnly : sql::Database::Mode::ReadWrite);
    if (!options.read_only && impl->db.read_only())
        throw Error(ErrorKind::Io, file.string() + ": the project file is read-only; nothing was changed");
    impl->configure_connection();
    if (options.read_only) impl->schema = s.user_version;
    if (s.user_version < kProjectSchemaVersion && !options.read_only) {
        sql::Transaction tx(impl->db);
        store::run_migrations(impl->db, s.user_version, kProjectSchemaVersion);
        tx.commit();
    }
    impl->load_model_record();
    impl->check_references();
    impl->seen_op = impl->last_operation();
    return std::unique_ptr<Project>(new Project(std::move(impl)));
}

std::unique_ptr<Project> Project::create(const fs::path& file, const Model& base, const ProjectOptions& options) {
    if (options.read_only) throw Error(ErrorKind::Argument, file.string() + ": cannot create a project read-only");
    std::error_code ec;
    if (fs::exists(file, ec)) {
        if (fs::is_directory(file, ec)) throw Error(ErrorKind::Io, file.string() + ": is a folder, not a project file");
        refuse_read_only_file(file);
        if (fs::file_size(file, ec) != 0) {
            // An interrupted creation leaves an empty database; anything else is not ours to overwrite.
            sql::Database probe(file, sql::Database::Mode::ReadOnly);
            if (!store::inspect(probe).empty())
                throw Error(ErrorKind::Argument, file.string() + ": already exists; open it instead of creating it");
        }
    }
    if (base.fingerprint().empty()) throw Error(ErrorKind::Argument, "a project needs a model loaded from a checkpoint folder (it has no fingerprint)");
    auto impl = std::make_unique<Impl>(file, options, sql::Database::Mode::Create);
    impl->configure_connection();
    {
        sql::Transaction tx(impl->db);
        store::run_migrations(impl->db, 0, kProjectSchemaVersion);
        sql::Statement st(impl->db, "INSERT INTO models (path, architecture, fingerprint, stored_dtype, added_at) VALUES (?, ?, ?, ?, ?)");
        const std::string path = base.dir().empty() ? std::string() : fs::absolute(base.dir()).lexically_normal().string();
        st.bind(1, path).bind(2, base.arch_name()).bind(3, base.fingerprint()).bind(4, dtype_name(base.stored_dtype())).bind(5, now_iso()).run();
        impl->log("create", std::nullopt, {{"model", path}}, state_hash_of_base(base.fingerprint()));
        tx.commit();
    }
    impl->load_model_record();
    impl->seen_op = impl->last_operation();
    return std::unique_ptr<Project>(new Project(std::move(impl)));
}

const fs::path& Project::file() const { return impl_->file; }
const ProjectModel& Project::model_record() const { return impl_->model; }

void Project::check_model(const Model& model) const {
    const ProjectModel& p = impl_->model;
    if (model.fingerprint() == p.fingerprint) return;
    const std::string given = model.dir().empty() ? std::string("(a model made in memory)") : model.dir().string();
    throw Error(ErrorKind::Argument, impl_->where() + ": this project belongs to another model: the project's model is " + p.path + " (" +
                                         p.architecture + ", fingerprint " + short_fp(p.fingerprint) + ") but the model given is " + given +
                                         " (" + model.arch_name() + ", fingerprint " + short_fp(model.fingerprint()) + "); nothing was changed");
}

std::unique_ptr<Model> Project::open_model(const std::optional<fs::path>& dir, const LoadOptions& options) const {
    fs::path path = dir ? *dir : fs::path(impl_->model.path);
    std::error_code ec;
    if (!dir && !fs::exists(path / "config.json", ec))
        throw Error(ErrorKind::Io, impl_->where() + ": the project's model folder " + path.string() + " is gone; pass --model DIR");
    auto model = Model::load(path, options);
    check_model(*model);
    replay(*model);
    return model;
}

std::vector<EditSummary> Project::history() const {
    const EditIndex ix = impl_->index();  // checked first: every delta belongs to an edit
    std::vector<EditSummary> out;
    std::map<int64_t, size_t> at;
    for (Edit& e : impl_->load_edits()) {
        at[e.id] = out.size();
        EditSummary s;
        s.edit = std::move(e);
        out.push_back(std::move(s));
    }
    sql::Statement d(impl_->db, "SELECT edit_id, tensor, length(blob) FROM deltas ORDER BY edit_id, ord");
    while (d.step()) {
        EditSummary& s = out.at(at.at(d.column_int(0)));
        s.n_deltas++;
        s.blob_bytes += d.column_int(2);
        if (std::find(s.tensors.begin(), s.tensors.end(), d.column_text(1)) == s.tensors.end()) s.tensors.push_back(d.column_text(1));
    }
    sql::Statement a(impl_->db, "SELECT edit_id, length(blob) FROM artifacts");
    while (a.step()) {
        EditSummary& s = out.at(at.at(a.column_int(0)));
        s.n_artifacts++;
        s.blob_bytes += a.column_int(1);
    }
    if (impl_->schema >= 2) {
        sql::Statement ao(impl_->db,
                          "SELECT o.edit_id, o.adapter, (SELECT coalesce(sum(length(t.blob)), 0) FROM adapter_op_tensors t WHERE t.op_id = o.id) "
                          "FROM adapter_ops o ORDER BY o.edit_id, o.ord");
        while (ao.step()) {
            EditSummary& s = out.at(at.at(ao.column_int(0)));
            s.n_adapter_ops++;
            s.blob_bytes += ao.column_int(2);
            const std::string name = adapter_touch_name(ao.column_text(1));
            if (std::find(s.tensors.begin(), s.tensors.end(), name) == s.tensors.end()) s.tensors.push_back(name);
        }
    }
    for (auto& s : out) std::sort(s.tensors.begin(), s.tensors.end());
    // Reverted edits in each basis, in one pass: each edit's set is its parent's plus exceptions.
    std::set<int64_t> reverted;
    for (const auto& s : out)
        if (s.edit.status == EditStatus::Reverted) reverted.insert(s.edit.id);
    std::map<int64_t, std::set<int64_t>> reverted_after;  // reverted edits in state_after(id)
    for (int64_t id : ix.all_in_order()) {
        const Basis& b = ix.basis_of.at(id);
        std::set<int64_t> r = b.parent ? reverted_after.at(b.parent) : std::set<int64_t>{};
        for (const auto& [e, included] : b.exceptions) {
            if (!included) r.erase(e);
            else if (reverted.count(e)) r.insert(e);
        }
        EditSummary& s = out.at(at.at(id));
        s.parent_id = b.parent;
        s.reverted_basis = ix.in_order(r);
        if (reverted.count(id)) r.insert(id);
        reverted_after[id] = std::move(r);
    }
    return out;
}

Edit Project::edit(int64_t id) const {
    for (Edit& e : impl_->load_edits()) {
        if (e.id != id) continue;
        e.deltas = impl_->load_deltas(id, nullptr, nullptr);
        e.artifacts = impl_->load_artifacts(id);
        e.adapter_ops = impl_->load_adapter_ops(id, nullptr);
        const EditIndex ix = impl_->index();
        e.computed_on = ix.in_order(ix.basis(id));
        return std::move(e);
    }
    throw Error(ErrorKind::Argument, impl_->where() + ": no edit " + std::to_string(id));
}

std::vector<int64_t> Project::active_ids() const { return impl_->active_ids(); }
std::vector<int64_t> Project::redo_ids() const { return impl_->redo_ids(); }
std::string Project::head_state_hash() const { return impl_->head_state_hash(); }

std::string Project::replay(Model& model) const {
    check_model(model);
    return impl_->guarded(model, impl_->where() + ": replaying the history", [&] {
        // Every tensor any edit touched is rebuilt, whatever state the model was in.
        const int64_t op = impl_->last_operation();  // read first: a later change must not go unnoticed
        const EditIndex ix = impl_->index();
        std::set<std::string> tensors;
        for (const auto& [id, names] : ix.touched) tensors.insert(names.begin(), names.end());
        rebuild(model, ix, tensors, to_set(impl_->active_ids()));
        impl_->seen_op = op;
        return state_hash(model);
    });
}

std::vector<HashCheck> Project::verify(Model& model) const {
    check_model(model);
    return impl_->guarded(model, impl_->where() + ": verifying the history", [&] {
        const EditIndex ix = impl_->index();
        std::map<int64_t, std::string> recorded;
        for (const Edit& e : impl_->load_edits()) recorded[e.id] = e.state_hash_after;
        // Start from the base, whatever state the model was in: restoring costs no replay.
        std::set<std::string> tensors;
        for (const auto& [id, names] : ix.touched) tensors.insert(names.begin(), names.end());
        rebuild(model, ix, tensors, {});
        std::set<int64_t> state;
        std::vector<HashCheck> checks;
        for_each_state_after(ix, [&](int64_t id, const std::set<int64_t>& target) {
            transition(model, ix, state, target);
            state = target;
            checks.push_back({id, recorded.at(id), state_hash(model)});
        });
        transition(model, ix, state, to_set(impl_->active_ids()));
        return checks;
    });
}

int64_t Project::record(Model& model, Edit& edit) {
    impl_->need_writable("record an edit");
    check_model(model);
    const std::string what = impl_->where() + ": recording a " + (edit.method.empty() ? std::string("nameless") : edit.method) + " edit";
    if (edit.method.empty()) throw Error(ErrorKind::Argument, what + ": the edit names no method");
    if (edit.deltas.empty() && edit.artifacts.empty() && edit.adapter_ops.empty()) throw Error(ErrorKind::Argument, what + ": the edit changes nothing");
    std::set<std::string> names;
    for (const Artifact& a : edit.artifacts) {
        if (a.name.empty() || !names.insert(a.name).second)
            throw Error(ErrorKind::Argument, what + ": artifact names must be unique and non-empty ('" + a.name + "')");
        if (!a.tensor.defined()) throw Error(ErrorKind::Argument, what + ": artifact '" + a.name + "' holds no tensor");
    }
    if (!edit.requests.is_array()) edit.requests = json::array({edit.requests});
    return impl_->guarded(model, what, [&] {
        const std::vector<int64_t> basis = impl_->active_ids();
        const EditIndex ix = impl_->index();
        const Basis compact = compact_basis(basis, [&](int64_t p) { return ix.state_after(p); });
        apply_edit(model, edit);
        Edit stored = edit;
        stored.status = EditStatus::Active;
        stored.state_hash_after = state_hash(model);
        stored.created_at = now_iso();
        stored.computed_on = basis;
        sql::Transaction tx(impl_->db);
        impl_->expect_unchanged();
        sql::Statement next(impl_->db, "SELECT coalesce(max(seq), 0) + 1 FROM edits");
        next.step();
        stored.seq = next.column_int(0);
        const int64_t id = impl_->insert_edit(stored, stored.seq, stored.created_at, compact);
        impl_->db.exec("DELETE FROM redo_stack", "clearing the redo stack");
        impl_->log("record", id, {{"method", stored.method}}, stored.state_hash_after);
        tx.commit();
        impl_->seen_op = impl_->last_operation();
        stored.id = id;
        stored.deltas.clear();
        stored.artifacts.clear();
        edit.id = id;
        edit.seq = stored.seq;
        edit.created_at = stored.created_at;
        edit.status = EditStatus::Active;
        edit.state_hash_after = stored.state_hash_after;
        edit.computed_on = basis;
        return id;
    });
}

std::optional<int64_t> Project::undo(Model& model) {
    impl_->need_writable("undo");
    check_model(model);
    const std::vector<int64_t> active = impl_->active_ids();
    if (active.empty()) return std::nullopt;
    const int64_t last = active.back();
    return impl_->guarded(model, impl_->where() + ": undoing edit " + std::to_string(last), [&] {
        const EditIndex ix = impl_->index();
        std::set<int64_t> target = to_set(active);
        target.erase(last);
        transition(model, ix, to_set(active), target);
        const std::string hash = state_hash(model);
        sql::Transaction tx(impl_->db);
        impl_->expect_unchanged();
        impl_->set_status(last, EditStatus::Reverted);
        impl_->push_redo(last);
        impl_->log("undo", last, json::object(), hash);
        tx.commit();
        impl_->seen_op = impl_->last_operation();
        return std::optional<int64_t>(last);
    });
}

std::optional<int64_t> Project::redo(Model& model) {
    impl_->need_writable("redo");
    check_model(model);
    const std::vector<int64_t> active = impl_->active_ids();
    std::optional<int64_t> next;
    for (int64_t id : impl_->redo_ids())
        if (std::find(active.begin(), active.end(), id) == active.end()) {
            next = id;
            break;
        }
    if (!next) return std::nullopt;
    return impl_->guarded(model, impl_->where() + ": redoing edit " + std::to_string(*next), [&] {
        const EditIndex ix = impl_->index();
        std::set<int64_t> target = to_set(active);
        target.insert(*next);
        transition(model, ix, to_set(active), target);
        const std::string hash = state_hash(model);
        sql::Transaction tx(impl_->db);
        impl_->expect_unchanged();
        impl_->set_status(*next, EditStatus::Active);
        impl_->drop_redo(*next);
        impl_->log("redo", *next, json::object(), hash);
        tx.commit();
        impl_->seen_op = impl_->last_operation();
        return next;
    });
}

void Project::rollback(Model& model, int64_t to_id) {
    impl_->need_writable("roll back");
    check_model(model);
    if (to_id < 0) throw Error(ErrorKind::Argument, "rollback --to must be 0 (the base) or an edit number");
    if (to_id > 0 && !impl_->edit_exists(to_id))
        throw Error(ErrorKind::Argument, impl_->where() + ": no edit " + std::to_string(to_id) + " to roll back to");
    impl_->guarded(model, impl_->where() + ": rolling back to edit " + std::to_string(to_id), [&] {
        const EditIndex ix = impl_->index();
        const std::set<int64_t> active = to_set(impl_->active_ids());
        const std::set<int64_t> target = to_id == 0 ? std::set<int64_t>{} : ix.state_after(to_id);
        transition(model, ix, active, target);
        const std::string hash = state_hash(model);
        std::string expected = state_hash_of_base(impl_->model.fingerprint);
        if (to_id > 0) {
            sql::Statement st(impl_->db, "SELECT state_hash_after FROM edits WHERE id = ?");
            st.bind(1, to_id);
            st.step();
            expected = st.column_text(0);
        }
        if (hash != expected)
            throw Error(ErrorKind::Internal, "the replayed state hash " + short_fp(hash) + " differs from the one recorded " + short_fp(expected) +
                                                 " (was the project recorded with another compute dtype?); nothing was changed");
        sql::Transaction tx(impl_->db);
        impl_->expect_unchanged();
        const auto [reverted, activated] = impl_->mark_transition(ix, active, target);
        impl_->log("rollback", to_id == 0 ? std::nullopt : std::optional<int64_t>(to_id),
                   {{"to", to_id}, {"reverted", ids_json(reverted)}, {"activated", ids_json(activated)}}, hash);
        tx.commit();
        impl_->seen_op = impl_->last_operation();
        return 0;
    });
}

std::vector<int64_t> Project::revert(Model& model, int64_t id) {
    impl_->need_writable("revert an edit");
    check_model(model);
    if (!impl_->edit_exists(id)) throw Error(ErrorKind::Argument, impl_->where() + ": no edit " + std::to_string(id));
    const std::vector<int64_t> active = impl_->active_ids();
    if (std::find(active.begin(), active.end(), id) == active.end())
        throw Error(ErrorKind::Argument, impl_->where() + ": edit " + std::to_string(id) + " is already reverted");
    return impl_->guarded(model, impl_->where() + ": reverting edit " + std::to_string(id), [&] {
        const EditIndex ix = impl_->index();
        std::set<int64_t> target = to_set(active);
        target.erase(id);
        std::vector<int64_t> dependents;
        const std::map<int64_t, bool> contains = ix.basis_contains(id);
        for (int64_t a : active)
            if (a != id && contains.at(a)) dependents.push_back(a);
        transition(model, ix, to_set(active), target);
        const std::string hash = state_hash(model);
        sql::Transaction tx(impl_->db);
        impl_->expect_unchanged();
        impl_->set_status(id, EditStatus::Reverted);
        impl_->push_redo(id);
        impl_->log("revert", id,
                   {{"dependents", ids_json(dependents)},
                    {"note", "the dependents were computed on a model that contained this edit"}},
                   hash);
        tx.commit();
        impl_->seen_op = impl_->last_operation();
        return dependents;
    });
}

std::string Project::restore_active(Model& model, const std::vector<int64_t>& ids) {
    impl_->need_writable("restore a set of active edits");
    check_model(model);
    for (int64_t id : ids)
        if (!impl_->edit_exists(id)) throw Error(ErrorKind::Argument, impl_->where() + ": no edit " + std::to_string(id) + " to make active");
    return impl_->guarded(model, impl_->where() + ": restoring the active edits", [&] {
        const EditIndex ix = impl_->index();
        const std::set<int64_t> active = to_set(impl_->active_ids());
        const std::set<int64_t> target = to_set(ids);
        transition(model, ix, active, target);
        const std::string hash = state_hash(model);
        sql::Transaction tx(impl_->db);
        impl_->expect_unchanged();
        const auto [reverted, activated] = impl_->mark_transition(ix, active, target);
        impl_->log("restore", std::nullopt, {{"active", ids_json(ix.in_order(target))}, {"reverted", ids_json(reverted)}, {"activated", ids_json(activated)}},
                   hash);
        tx.commit();
        impl_->seen_op = impl_->last_operation();
        return hash;
    });
}

json Project::export_history() const {
    json edits = json::array();
    const EditIndex ix = impl_->index();
    for (const Edit& meta : impl_->load_edits()) {
        json deltas = json::array();
        sql::Statement d(impl_->db, "SELECT tensor, kind, shape, dtype, rank, checksum, blob FROM deltas WHERE edit_id = ? ORDER BY ord");
        d.bind(1, meta.id);
        while (d.step()) {
            const std::vector<uint8_t> blob = d.column_blob(6);
            verify_checksum(blob, d.column_text(5), impl_->where() + ": edit " + std::to_string(meta.id));
            deltas.push_back({{"tensor", d.column_text(0)},
                              {"kind", d.column_text(1)},
                              {"shape", parse_json(d.column_text(2), "shape")},
                              {"dtype", d.column_text(3)},
                              {"rank", d.column_int(4)},
                              {"sha256", d.column_text(5)},
                              {"data", store::base64_encode(blob.data(), blob.size())}});
        }
        json artifacts = json::array();
        sql::Statement a(impl_->db, "SELECT name, kind, dtype, shape, meta, checksum, blob FROM artifacts WHERE edit_id = ? ORDER BY ord");
        a.bind(1, meta.id);
        while (a.step()) {
            const std::vector<uint8_t> blob = a.column_blob(6);
            verify_checksum(blob, a.column_text(5), impl_->where() + ": edit " + std::to_string(meta.id));
            artifacts.push_back({{"name", a.column_text(0)},
                                 {"kind", a.column_text(1)},
                                 {"dtype", a.column_text(2)},
                                 {"shape", parse_json(a.column_text(3), "shape")},
                                 {"meta", parse_json(a.column_text(4), "meta")},
                                 {"sha256", a.column_text(5)},
                                 {"data", store::base64_encode(blob.data(), blob.size())}});
        }
        json adapter_ops = json::array();
        for (const AdapterOp& op : impl_->load_adapter_ops(meta.id, nullptr)) adapter_ops.push_back(adapter_op_json(op));
        edits.push_back({{"id", meta.id},
                         {"seq", meta.seq},
                         {"created_at", meta.created_at},
                         {"method", meta.method},
                         {"requests", meta.requests},
                         {"hparams", meta.hparams},
                         {"status", edit_status_name(meta.status)},
                         {"metrics", meta.metrics},
                         {"duration_s", meta.duration_s},
                         {"state_hash_after", meta.state_hash_after},
                         {"parent", ix.basis_of.at(meta.id).parent},
                         {"basis_exceptions", basis_exceptions_json(ix.basis_of.at(meta.id))},
                         {"deltas", deltas},
                         {"artifacts", artifacts},
                         {"adapter_ops", adapter_ops}});
    }
    const ProjectModel& m = impl_->model;
    return {{"format", "engram-history"},
            {"version", 2},
            {"exported_at", now_iso()},
            {"model", {{"path", m.path}, {"architecture", m.architecture}, {"fingerprint", m.fingerprint}, {"stored_dtype", m.stored_dtype}}},
            {"head_state_hash", impl_->head_state_hash()},
            {"edits", edits}};
}

std::vector<int64_t> Project::import_history(Model& model, const json& h) {
    impl_->need_writable("import a history");
    check_model(model);
    const std::string what = impl_->where() + ": importing a history";
    try {
        // Structure, blobs and checksums first, torch-free (history_file.h); then what needs the model.
        const HistoryFile hf = read_history(h, what);
        if (hf.model_fingerprint != impl_->model.fingerprint)
            throw Error(ErrorKind::Argument, what + ": the history is for another model: " + hf.model_path + " (" + hf.model_architecture +
                                                 ", fingerprint " + short_fp(hf.model_fingerprint) + ") but this project's model is " +
                                                 impl_->model.path + " (" + impl_->model.architecture + ", fingerprint " +
                                                 short_fp(impl_->model.fingerprint) + "); nothing was changed");
        if (!impl_->load_edits().empty())
            throw Error(ErrorKind::Argument, what + ": the project already has edits; import into a new project (--db NEW.engram)");

        std::vector<Edit> edits;
        std::map<int64_t, Basis> bases;
        for (const HistoryEdit& he : hf.edits) {
            Edit e;
            e.id = he.id;
            e.seq = he.seq;
            e.created_at = he.created_at;
            e.method = he.method;
            e.requests = he.requests;
            e.hparams = he.hparams;
            e.status = he.active ? EditStatus::Active : EditStatus::Reverted;
            e.metrics = he.metrics;
            e.duration_s = he.duration_s;
            e.state_hash_after = he.state_hash_after;
            bases[e.id] = Basis{he.parent, he.exceptions};
            const std::string where = what + ": edit " + std::to_string(e.id);
            for (const HistoryDelta& d : he.deltas) {
                const std::string dw = where + ", delta for '" + d.tensor + "'";
                check_delta_claim(&model, d.tensor, d.kind, d.shape, d.dtype, d.rank, d.bytes.size(), dw);
                e.deltas.push_back(delta_from_blob(d.tensor, d.kind, d.shape, d.dtype, d.rank, d.bytes.data(), d.bytes.size()));
            }
            for (const HistoryArtifact& ha : he.artifacts) {
                Artifact a;
                a.name = ha.name;
                a.kind = ha.kind;
                a.meta = ha.meta;
                a.tensor = stored_tensor(ha.tensor.dtype, ha.tensor.shape, ha.tensor.bytes, where + ", artifact '" + a.name + "'");
                e.artifacts.push_back(std::move(a));
            }
            for (const HistoryAdapterOp& ho : he.adapter_ops) {
                AdapterOp op;
                op.adapter = ho.adapter;
                const std::string ow = where + ", adapter op on '" + op.adapter + "'";
                op.kind = ho.kind;
                op.slot = stored_attach(ho.attach, ow);
                op.layer = ho.layer;
                op.op = ho.op;
                op.params = ho.params;
                for (const HistoryTensor& t : ho.tensors)
                    op.tensors.emplace_back(t.name, stored_tensor(t.dtype, t.shape, t.bytes, ow + ", tensor '" + t.name + "'"));
                e.adapter_ops.push_back(std::move(op));
            }
            edits.push_back(std::move(e));
        }
        std::sort(edits.begin(), edits.end(), [](const Edit& a, const Edit& b) { return a.seq < b.seq; });
        EditIndex ix;
        std::map<int64_t, const Edit*> by_id;
        for (const Edit& e : edits) {
            if (!by_id.emplace(e.id, &e).second) throw Error(ErrorKind::Format, what + ": edit id " + std::to_string(e.id) + " appears twice");
            ix.seq[e.id] = e.seq;
            std::set<std::string> touched;
            for (const std::string& t : e.touched_tensors()) touched.insert(t);
            ix.touched[e.id] = touched;
        }
        for (const Edit& e : edits) ix.basis_of[e.id] = bases.at(e.id);
        ix.deltas = [&](int64_t id, const std::set<std::string>* only, const Model&) {
            std::vector<Delta> out;
            for (const Delta& d : by_id.at(id)->deltas)
                if (!only || only->count(d.tensor)) out.push_back(d);
            return out;
        };
        ix.adapter_ops = [&](int64_t id, const std::set<std::string>* only) {
            std::vector<AdapterOp> out;
            for (const AdapterOp& op : by_id.at(id)->adapter_ops)
                if (!only || only->count(adapter_touch_name(op.adapter))) out.push_back(op);
            return out;
        };
        std::set<int64_t> final_active;
        for (const Edit& e : edits)
            if (e.status == EditStatus::Active) final_active.insert(e.id);

        return impl_->guarded(model, what, [&] {
            // Every recorded state must reproduce on this model before anything is written.
            std::set<int64_t> state;
            for_each_state_after(ix, [&](int64_t id, const std::set<int64_t>& target) {
                transition(model, ix, state, target);
                state = target;
                const std::string hash = state_hash(model);
                const std::string& recorded = by_id.at(id)->state_hash_after;
                if (hash != recorded)
                    throw Error(ErrorKind::Format, "edit " + std::to_string(id) + " does not reproduce: recorded state hash " +
                                                       short_fp(recorded) + ", replayed " + short_fp(hash) + "; nothing was imported");
            });
            transition(model, ix, state, final_active);
            const std::string head = state_hash(model);
            if (hf.head_state_hash && *hf.head_state_hash != head)
                throw Error(ErrorKind::Format, "the history's final state does not reproduce (recorded " + short_fp(*hf.head_state_hash) +
                                                   ", replayed " + short_fp(head) + ")");
            sql::Transaction tx(impl_->db);
            impl_->expect_unchanged();
            std::map<int64_t, int64_t> new_id;
            std::vector<int64_t> ids;
            int64_t seq = 0;
            for (const Edit& e : edits) {
                Basis b = bases.at(e.id);
                if (b.parent) b.parent = new_id.at(b.parent);
                for (auto& x : b.exceptions) x.first = new_id.at(x.first);
                const int64_t id = impl_->insert_edit(e, ++seq, e.created_at.empty() ? now_iso() : e.created_at, b);
                new_id[e.id] = id;
                ids.push_back(id);
            }
            impl_->log("import", std::nullopt, {{"edits", ids.size()}, {"from", hf.model_path}, {"exported_at", hf.exported_at}},
                       head);
            tx.commit();
            impl_->seen_op = impl_->last_operation();
            return ids;
        });
    } catch (const json::exception& e) {
        throw Error(ErrorKind::Format, what + ": " + e.what());
    }
}

void Project::put_trace(const std::string& state_hash_value, const json& params, const at::Tensor& result, const json& summary) {
    impl_->need_writable("store a trace");
    if (!params.is_object()) throw Error(ErrorKind::Argument, impl_->where() + ": trace parameters must be a JSON object");
    const std::string key = trace_key(state_hash_value, params);
    // The summary rides along in the stored parameters under "summary"; the key is the parameters alone.
    json stored = params;
    stored["summary"] = summary;
    const std::vector<uint8_t> blob = tensor_blob(result);
    sql::Transaction tx(impl_->db);
    sql::Statement st(impl_->db,
                      "INSERT OR REPLACE INTO traces (key, state_hash, params, created_at, dtype, shape, checksum, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    st.bind(1, key).bind(2, state_hash_value).bind(3, stored.dump()).bind(4, now_iso());
    st.bind(5, dtype_name(dtype_of_tensor(result, "trace"))).bind(6, json(result.sizes().vec()).dump()).bind(7, checksum(blob));
    st.bind_blob(8, blob.data(), blob.size()).run();
    tx.commit();
}

namespace {

// The stored trace parameters hold the summary under "summary" (see put_trace): split it off.
json split_trace_summary(json& stored) {
    json summary = json::object();
    if (stored.is_object() && stored.contains("summary")) {
        summary = std::move(stored["summary"]);
        stored.erase("summary");
    }
    return summary;
}

}  // namespace

std::optional<at::Tensor> Project::find_trace(const std::string& state_hash_value, const json& params, json* summary) const {
    const std::string key = trace_key(state_hash_value, params);
    sql::Statement st(impl_->db, "SELECT dtype, shape, checksum, blob, params FROM traces WHERE key = ?");
    st.bind(1, key);
    if (!st.step()) return std::nullopt;
    const std::string what = impl_->where() + ": cached trace";
    const std::vector<uint8_t> blob = st.column_blob(3);
    verify_checksum(blob, st.column_text(2), what);
    if (summary) {
        json stored = parse_json(st.column_text(4), "trace parameters");
        *summary = split_trace_summary(stored);
    }
    return stored_tensor(parse_dtype(st.column_text(0), what), parse_shape(st.column_text(1), what), blob, what);
}

std::vector<Project::TraceEntry> Project::traces() const {
    std::vector<TraceEntry> out;
    sql::Statement st(impl_->db, "SELECT state_hash, created_at, params FROM traces ORDER BY created_at DESC, id DESC");
    while (st.step()) {
        TraceEntry e;
        e.state_hash = st.column_text(0);
        e.created_at = st.column_text(1);
        e.params = parse_json(st.column_text(2), "trace parameters");
        e.summary = split_trace_summary(e.params);
        out.push_back(std::move(e));
    }
    return out;
}

void Project::save_as(const fs::path& file) const {
    const std::string what = impl_->where() + ": saving a copy as " + file.string();
    std::error_code ec;
    if (fs::equivalent(file, impl_->file, ec)) throw Error(ErrorKind::Argument, what + ": that is this project's own file");
    if (fs::is_directory(file, ec)) throw Error(ErrorKind::Argument, what + ": is a folder");
    const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
    if (!fs::is_directory(dir, ec)) throw Error(ErrorKind::Io, what + ": the folder " + dir.string() + " does not exist");
    // VACUUM INTO refuses an existing target: write a fresh temporary file, then rename it over.
    fs::path tmp = file;
    tmp += ".saving-" + std::to_string(::getpid());
    fs::remove(tmp, ec);
    try {
        sql::Statement st(impl_->db, "VACUUM INTO ?");
        st.bind(1, tmp.string()).run();
    } catch (const Error& e) {
        fs::remove(tmp, ec);
        throw e.with_context(what);
    }
    fs::rename(tmp, file, ec);
    if (ec) {
        fs::remove(tmp, ec);
        throw Error(ErrorKind::Io, what + ": " + ec.message());
    }
}

int64_t Project::add_evaluation(Evaluation ev) {
    impl_->need_writable("store an evaluation");
    if (ev.edit_id && !impl_->edit_exists(*ev.edit_id))
        throw Error(ErrorKind::Argument, impl_->where() + ": no edit " + std::to_string(*ev.edit_id) + " for the evaluation");
    sql::Transaction tx(impl_->db);
    sql::Statement st(impl_->db, "INSERT INTO evaluations (created_at, state_hash, edit_id, kind, params, results) VALUES (?, ?, ?, ?, ?, ?)");
    st.bind(1, ev.created_at.empty() ? now_iso() : ev.created_at).bind(2, ev.state_hash);
    if (ev.edit_id) st.bind(3, *ev.edit_id);
    else st.bind_null(3);
    st.bind(4, ev.kind).bind(5, ev.params.dump()).bind(6, ev.results.dump()).run();
    const int64_t id = impl_->db.last_insert_rowid();
    tx.commit();
    return id;
}

std::vector<Evaluation> Project::evaluations() const {
    sql::Statement st(impl_->db, "SELECT id, created_at, state_hash, edit_id, kind, params, results FROM evaluations ORDER BY id");
    std::vector<Evaluation> out;
    while (st.step()) {
        Evaluation e;
        e.id = st.column_int(0);
        e.created_at = st.column_text(1);
        e.state_hash = st.column_text(2);
        if (!st.is_null(3)) e.edit_id = st.column_int(3);
        e.kind = st.column_text(4);
        e.params = parse_json(st.column_text(5), "evaluation params");
        e.results = parse_json(st.column_text(6), "evaluation results");
        out.push_back(std::move(e));
    }
    return out;
}

json Project::operations() const {
    sql::Statement st(impl_->db, "SELECT time, op, edit_id, detail, state_hash FROM operations ORDER BY id");
    json out = json::array();
    while (st.step())
        out.push_back({{"time", st.column_text(0)},
                       {"op", st.column_text(1)},
                       {"edit", st.is_null(2) ? json(nullptr) : json(st.column_int(2))},
                       {"detail", parse_json(st.column_text(3), "operation detail")},
                       {"state_hash", st.column_text(4)}});
    return out;
}

}  // namespace engram
