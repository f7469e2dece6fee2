// The engram-history JSON read into plain values (engram/history_file.h), and the size arithmetic
// that both it and the project store use for stored tensors.
#include "engram/history_file.h"

#include <algorithm>
#include <climits>
#include <map>

#include "engram/error.h"
#include "engram/sha256.h"
#include "store/base64.h"

namespace engram {

using nlohmann::json;

const char* delta_kind_name(DeltaKind kind) {
    switch (kind) {
        case DeltaKind::LowRank: return "low_rank";
        case DeltaKind::DenseRows: return "dense_rows";
        case DeltaKind::Dense: return "dense";
    }
    return "?";
}

std::optional<DeltaKind> delta_kind_from_name(std::string_view name) {
    for (DeltaKind k : {DeltaKind::LowRank, DeltaKind::DenseRows, DeltaKind::Dense})
        if (name == delta_kind_name(k)) return k;
    return std::nullopt;
}

std::optional<uint64_t> tensor_bytes(const std::vector<int64_t>& shape, uint64_t element_size) {
    uint64_t n = element_size;
    for (int64_t s : shape)
        if (s < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(s), &n)) return std::nullopt;
    return n;
}

std::optional<uint64_t> delta_blob_bytes(DeltaKind kind, const std::vector<int64_t>& shape, DType dtype, int64_t rank) {
    if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0) return std::nullopt;
    if (dtype != DType::F32 && dtype != DType::F64) return std::nullopt;
    const uint64_t es = dtype_size(dtype);
    switch (kind) {
        case DeltaKind::LowRank: {
            int64_t out_plus_in = 0;
            if (rank < 1 || __builtin_add_overflow(shape[0], shape[1], &out_plus_in)) return std::nullopt;
            return tensor_bytes({out_plus_in, rank}, es);
        }
        case DeltaKind::DenseRows: {
            if (rank < 0) return std::nullopt;
            const auto rows = tensor_bytes({rank}, 8), values = tensor_bytes({rank, shape[1]}, es);
            uint64_t sum = 0;
            if (!rows || !values || __builtin_add_overflow(*rows, *values, &sum)) return std::nullopt;
            return sum;
        }
        case DeltaKind::Dense: return rank == 0 ? tensor_bytes(shape, es) : std::nullopt;
    }
    return std::nullopt;
}

namespace {

std::string shape_text(const std::vector<int64_t>& shape) { return json(shape).dump(); }

std::string short_hash(const std::string& h) { return h.empty() ? "(none)" : h.substr(0, 12) + "..."; }

// Field access that names what is missing or of the wrong type instead of nlohmann's generic text.
class Reader {
public:
    explicit Reader(std::string what) : what_(std::move(what)) {}

    [[noreturn]] void fail(const std::string& where, const std::string& msg) const {
        throw Error(ErrorKind::Format, what_ + ": " + where + ": " + msg);
    }

    const json& field(const json& obj, const char* key, const std::string& where) const {
        if (!obj.is_object()) fail(where, "is not a JSON object");
        auto it = obj.find(key);
        if (it == obj.end()) fail(where, std::string("has no \"") + key + "\"");
        return *it;
    }

    std::string text(const json& obj, const char* key, const std::string& where) const {
        const json& v = field(obj, key, where);
        if (!v.is_string()) fail(where, std::string("\"") + key + "\" is not a string");
        return v.get<std::string>();
    }

    std::string text_or(const json& obj, const char* key, const std::string& where, const std::string& fallback) const {
        if (!obj.contains(key)) return fallback;
        return text(obj, key, where);
    }

    int64_t integer(const json& obj, const char* key, const std::string& where) const { return integer_value(field(obj, key, where), key, where); }

    int64_t integer_value(const json& v, const char* key, const std::string& where) const {
        if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
            fail(where, std::string("\"") + key + "\" is out of range");
        if (!v.is_number_integer()) fail(where, std::string("\"") + key + "\" is not an integer");
        return v.get<int64_t>();
    }

    const json& object_or_empty(const json& obj, const char* key, const std::string& where, const json& empty) const {
        if (!obj.contains(key)) return empty;
        const json& v = obj.at(key);
        if (!v.is_object()) fail(where, std::string("\"") + key + "\" is not a JSON object");
        return v;
    }

    const json& list(const json& obj, const char* key, const std::string& where, bool required) const {
        static const json empty = json::array();
        if (!required && !obj.contains(key)) return empty;
        const json& v = field(obj, key, where);
        if (!v.is_array()) fail(where, std::string("\"") + key + "\" is not a list");
        return v;
    }

    std::vector<int64_t> shape(const json& obj, const std::string& where) const {
        const json& v = field(obj, "shape", where);
        if (!v.is_array()) fail(where, "\"shape\" is not a list");
        std::vector<int64_t> out;
        for (const json& d : v) {
            const int64_t s = integer_value(d, "shape", where);
            if (s < 0) fail(where, "negative dimension in shape " + v.dump());
            out.push_back(s);
        }
        return out;
    }

    DType dtype(const json& obj, const std::string& where) const {
        const std::string name = text(obj, "dtype", where);
        auto d = dtype_from_name(name);
        if (!d) fail(where, "unknown dtype '" + name + "'");
        return *d;
    }

    // The blob's bytes, decoded and checked against its SHA-256.
    std::vector<uint8_t> blob(const json& obj, const std::string& where) const {
        const std::string data = text(obj, "data", where), expected = text(obj, "sha256", where);
        std::vector<uint8_t> bytes = store::base64_decode(data, what_ + ": " + where);
        const std::string actual = sha256_hex(bytes.data(), bytes.size());
        if (actual != expected)
            fail(where, "checksum mismatch (stored " + short_hash(expected) + ", bytes hash to " + short_hash(actual) + "); the file is damaged");
        return bytes;
    }

    HistoryTensor tensor(const json& obj, std::string name, const std::string& where) const {
        HistoryTensor t;
        t.name = std::move(name);
        t.dtype = dtype(obj, where);
        t.shape = shape(obj, where);
        // The claim first: a shape that cannot fit is refused before its base64 is even decoded.
        const auto need = tensor_bytes(t.shape, dtype_size(t.dtype));
        const json& data = field(obj, "data", where);
        if (!need || (data.is_string() && data.get_ref<const std::string&>().size() / 4 * 3 < *need))
            fail(where, "the " + std::string(dtype_name(t.dtype)) + " " + shape_text(t.shape) + " does not fit its data");
        t.bytes = blob(obj, where);
        if (t.bytes.size() != *need)
            fail(where, "the " + std::string(dtype_name(t.dtype)) + " " + shape_text(t.shape) + " does not match its " +
                            std::to_string(t.bytes.size()) + "-byte blob; the file is damaged");
        return t;
    }

    HistoryDelta delta(const json& jd, const std::string& edit_where) const {
        HistoryDelta d;
        d.tensor = text(jd, "tensor", edit_where + ", a delta");
        const std::string where = edit_where + ", delta for '" + d.tensor + "'";
        const std::string kind = text(jd, "kind", where);
        auto k = delta_kind_from_name(kind);
        if (!k) fail(where, "unknown kind '" + kind + "'");
        d.kind = *k;
        d.shape = shape(jd, where);
        d.dtype = dtype(jd, where);
        d.rank = integer(jd, "rank", where);
        const auto need = delta_blob_bytes(d.kind, d.shape, d.dtype, d.rank);
        if (!need)
            fail(where, "a " + kind + " delta of shape " + shape_text(d.shape) + ", rank " + std::to_string(d.rank) + " in " +
                            dtype_name(d.dtype) + " is impossible (a positive [out, in] target, F32 or F64, rank >= 1 for low_rank)");
        d.bytes = blob(jd, where);
        if (d.bytes.size() != *need)
            fail(where, "a " + kind + " delta of shape " + shape_text(d.shape) + ", rank " + std::to_string(d.rank) + " in " +
                            dtype_name(d.dtype) + " does not fit its " + std::to_string(d.bytes.size()) + "-byte blob; the file is damaged");
        return d;
    }

    HistoryEdit edit(const json& je) const {
        HistoryEdit e;
        e.id = integer(je, "id", "an edit");
        const std::string where = "edit " + std::to_string(e.id);
        e.seq = integer(je, "seq", where);
        e.created_at = text_or(je, "created_at", where, "");
        e.method = text(je, "method", where);
        if (je.contains("requests")) {
            e.requests = je.at("requests");
            if (!e.requests.is_array()) fail(where, "\"requests\" is not a list");
        }
        static const json empty = json::object();
        e.hparams = object_or_empty(je, "hparams", where, empty);
        e.metrics = object_or_empty(je, "metrics", where, empty);
        const std::string status = text(je, "status", where);
        if (status != "active" && status != "reverted") fail(where, "status '" + status + "' (active or reverted)");
        e.active = status == "active";
        if (je.contains("duration_s")) {
            const json& v = je.at("duration_s");
            if (!v.is_number()) fail(where, "\"duration_s\" is not a number");
            e.duration_s = v.get<double>();
        }
        e.state_hash_after = text(je, "state_hash_after", where);
        e.parent = je.contains("parent") ? integer(je, "parent", where) : 0;
        for (const json& x : list(je, "basis_exceptions", where, false)) {
            const json& inc = field(x, "included", where + ", a basis exception");
            if (!inc.is_boolean()) fail(where, "a basis exception's \"included\" is not true or false");
            e.exceptions.emplace_back(integer(x, "edit", where + ", a basis exception"), inc.get<bool>());
        }
        for (const json& jd : list(je, "deltas", where, true)) e.deltas.push_back(delta(jd, where));
        for (const json& ja : list(je, "artifacts", where, false)) {
            HistoryArtifact a;
            a.name = text(ja, "name", where + ", an artifact");
            const std::string aw = where + ", artifact '" + a.name + "'";
            a.kind = text(ja, "kind", aw);
            a.meta = object_or_empty(ja, "meta", aw, empty);
            a.tensor = tensor(ja, a.name, aw);
            e.artifacts.push_back(std::move(a));
        }
        for (const json& jo : list(je, "adapter_ops", where, false)) {
            HistoryAdapterOp op;
            op.adapter = text(jo, "adapter", where + ", an adapter op");
            const std::string ow = where + ", adapter op on '" + op.adapter + "'";
            op.kind = text(jo, "kind", ow);
            op.attach = text(jo, "attach", ow);
            const int64_t layer = integer(jo, "layer", ow);
            if (layer < 0 || layer > INT_MAX) fail(ow, "layer " + std::to_string(layer) + " is out of range");
            op.layer = static_cast<int>(layer);
            op.op = text(jo, "op", ow);
            op.params = object_or_empty(jo, "params", ow, empty);
            for (const json& jt : list(jo, "tensors", ow, false)) {
                const std::string name = text(jt, "name", ow + ", a tensor");
                op.tensors.push_back(tensor(jt, name, ow + ", tensor '" + name + "'"));
            }
            e.adapter_ops.push_back(std::move(op));
        }
        return e;
    }

private:
    std::string what_;
};

}  // namespace

HistoryFile read_history(const json& h, const std::string& what) {
    const Reader r(what);
    if (!h.is_object() || !h.contains("format") || h.at("format") != "engram-history")
        throw Error(ErrorKind::Format, what + ": not an engram-history file");
    HistoryFile f;
    const json& version = r.field(h, "version", "the file");
    if (!version.is_number_integer() || (version.get<int64_t>() != 1 && version.get<int64_t>() != 2))
        throw Error(ErrorKind::Format, what + ": history version " + version.dump() + " is not supported (1 and 2 are)");
    f.version = static_cast<int>(version.get<int64_t>());
    const json& m = r.field(h, "model", "the file");
    f.model_fingerprint = r.text(m, "fingerprint", "model");
    f.model_path = r.text_or(m, "path", "model", "?");
    f.model_architecture = r.text_or(m, "architecture", "model", "?");
    f.model_stored_dtype = r.text_or(m, "stored_dtype", "model", "");
    f.exported_at = r.text_or(h, "exported_at", "the file", "");
    if (h.contains("head_state_hash")) f.head_state_hash = r.text(h, "head_state_hash", "the file");

    for (const json& je : r.list(h, "edits", "the file", true)) f.edits.push_back(r.edit(je));
    std::stable_sort(f.edits.begin(), f.edits.end(), [](const HistoryEdit& a, const HistoryEdit& b) { return a.seq < b.seq; });

    std::map<int64_t, int64_t> seq_of;
    for (const HistoryEdit& e : f.edits)
        if (!seq_of.emplace(e.id, e.seq).second) throw Error(ErrorKind::Format, what + ": edit id " + std::to_string(e.id) + " appears twice");
    for (const HistoryEdit& e : f.edits) {
        std::vector<int64_t> named = {e.parent};
        for (const auto& x : e.exceptions) named.push_back(x.first);
        for (int64_t other : named)
            if (other != 0 && (!seq_of.count(other) || seq_of.at(other) >= e.seq))
                throw Error(ErrorKind::Format, what + ": edit " + std::to_string(e.id) + " names edit " + std::to_string(other) +
                                                   " in its basis, which is not an earlier edit of the file");
    }
    return f;
}

HistoryFile read_history_text(std::string_view text, const std::string& what) {
    json h;
    try {
        h = json::parse(text);
    } catch (const json::exception& e) {
        throw Error(ErrorKind::Format, what + ": malformed JSON (" + e.what() + ")");
    }
    return read_history(h, what);
}

}  // namespace engram
