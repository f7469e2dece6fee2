// The edit value: validation, the deterministic application rule (see edit.h), the state hash,
// blob serialisation and the synthetic edit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <set>

#include "engram/checkpoint.h"
#include "engram/edit.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"

namespace engram {

namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

std::string shape_str(const at::Tensor& t) { return shape_str(t.sizes().vec()); }


bool is_factor_dtype(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble; }

// Rows are independent: each output row is produced by one thread, each element in a fixed order.
constexpr int64_t kRowGrain = 16;

// W' = round(double(W) + D) for D = u v^T. Each element's sum runs over k ascending from 0.0,
// exactly as edit.h states; keeping one accumulator per column (acc[j]) lets the compiler
// vectorise across j without changing any element's order of operations. This file is built with
// -ffp-contract=off so no build fuses the multiply and add into an FMA (which rounds differently).
// W, out: [n_out, n_in] contiguous; u: [n_out, r] as double; vt: [r, n_in] as double (v transposed).
template <typename W>
void add_low_rank(const W* w, W* out, const double* u, const double* vt, int64_t n_out, int64_t n_in, int64_t r) {
    at::parallel_for(0, n_out, kRowGrain, [&](int64_t begin, int64_t end) {
        std::vector<double> acc(static_cast<size_t>(n_in));
        for (int64_t i = begin; i < end; ++i) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t k = 0; k < r; ++k) {
                const double uik = u[i * r + k];
                const double* vk = vt + k * n_in;
                for (int64_t j = 0; j < n_in; ++j) acc[j] += uik * vk[j];
            }
            const W* wi = w + i * n_in;
            W* oi = out + i * n_in;
            for (int64_t j = 0; j < n_in; ++j) oi[j] = static_cast<W>(static_cast<double>(wi[j]) + acc[j]);
        }
    });
}

// out[row] = round(double(out[row]) + values[t]) for one row; out already holds W.
template <typename W, typename F>
void add_row(W* out_row, const F* values, int64_t n_in) {
    for (int64_t j = 0; j < n_in; ++j) out_row[j] = static_cast<W>(static_cast<double>(out_row[j]) + static_cast<double>(values[j]));
}

template <typename W, typename F>
void add_dense(const W* w, W* out, const F* values, int64_t numel) {
    at::parallel_for(0, numel, 1 << 14, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] = static_cast<W>(static_cast<double>(w[i]) + static_cast<double>(values[i]));
    });
}

template <typename W, typename F>
void apply_typed(const at::Tensor& w, at::Tensor& out, const Delta& d) {
    const int64_t n_out = d.shape[0], n_in = d.shape[1];
    const W* wp = w.data_ptr<W>();
    W* op = out.data_ptr<W>();
    switch (d.kind) {
        case DeltaKind::LowRank: {
            // Converting F32 factors to F64 is exact, so this changes no value.
            const at::Tensor u = d.u.to(at::kDouble).contiguous();       // [out, r]
            const at::Tensor vt = d.v.to(at::kDouble).t().contiguous();  // [r, in]
            add_low_rank<W>(wp, op, u.data_ptr<double>(), vt.data_ptr<double>(), n_out, n_in, d.rank());
            break;
        }
        case DeltaKind::DenseRows: {
            std::memcpy(op, wp, static_cast<size_t>(w.numel()) * sizeof(W));
            const int64_t* rows = d.rows.data_ptr<int64_t>();
            const F* values = d.values.data_ptr<F>();
            for (int64_t t = 0; t < d.rank(); ++t) add_row<W, F>(op + rows[t] * n_in, values + t * n_in, n_in);
            break;
        }
        case DeltaKind::Dense: add_dense<W, F>(wp, op, d.values.data_ptr<F>(), w.numel()); break;
    }
}

template <typename W>
void apply_weight_typed(const at::Tensor& w, at::Tensor& out, const Delta& d) {
    if (d.dtype() == DType::F64) apply_typed<W, double>(w, out, d);
    else apply_typed<W, float>(w, out, d);
}

// Assigns a weight by reference, keeping a tied output head tied to the embedding.
void assign(Model& model, const Model::WeightRef& ref, const at::Tensor& value) {
    at::Tensor& slot = model.weight(ref.slot, ref.layer);
    const bool tied_head = ref.slot == Slot::TokEmbd && model.hparams().tied_output &&
                           model.weight(Slot::Output).defined() && model.weight(Slot::Output).is_same(slot);
    slot = value;
    if (tied_head) model.weight(Slot::Output) = value;
}

Model::WeightRef find_ref(const Model& model, const std::string& name) {
    auto ref = model.find_weight(name);
    if (!ref) throw Error(ErrorKind::Argument, "tensor '" + name + "': " + model.arch_name() + " has no such weight");
    return *ref;
}

void check_target(const Model& model, const Delta& d, const Model::WeightRef& ref) {
    const at::Tensor& w = model.weight(ref.slot, ref.layer);
    // A vector weight (a bias) is addressed as a column [n, 1]; the element order is the same.
    const bool column = w.dim() == 1 && d.shape == std::vector<int64_t>{w.size(0), 1};
    if (w.sizes().vec() != d.shape && !column)
        throw Error(ErrorKind::Argument, "delta for '" + d.tensor + "' has shape " + shape_str(d.shape) + " but the weight is " + shape_str(w));
}

}  // namespace

const char* edit_status_name(EditStatus status) { return status == EditStatus::Active ? "active" : "reverted"; }

int64_t Delta::rank() const {
    switch (kind) {
        case DeltaKind::LowRank: return u.defined() && u.dim() == 2 ? u.size(1) : 0;
        case DeltaKind::DenseRows: return rows.defined() ? rows.numel() : 0;
        case DeltaKind::Dense: return 0;
    }
    return 0;
}

DType Delta::dtype() const {
    const at::Tensor& t = kind == DeltaKind::LowRank ? u : values;
    return t.defined() && t.scalar_type() == at::kDouble ? DType::F64 : DType::F32;
}

void Delta::validate() const {
    const std::string what = "delta for '" + tensor + "' (" + delta_kind_name(kind) + ")";
    if (tensor.empty()) throw Error(ErrorKind::Argument, "a delta names no tensor");
    if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0)
        throw Error(ErrorKind::Argument, what + ": the target must be a matrix [out, in], got " + shape_str(shape));
    auto check = [&](const at::Tensor& t, const char* part, std::vector<int64_t> expected) {
        if (!t.defined()) throw Error(ErrorKind::Argument, what + ": part '" + part + "' is missing");
        if (!t.device().is_cpu()) throw Error(ErrorKind::Argument, what + ": part '" + part + "' must be a CPU tensor");
        if (!is_factor_dtype(t)) throw Error(ErrorKind::Argument, what + ": part '" + part + "' must be F32 or F64");
        if (t.sizes().vec() != expected)
            throw Error(ErrorKind::Argument, what + ": part '" + part + "' has shape " + shape_str(t) + ", expected " + shape_str(expected));
    };
    switch (kind) {
        case DeltaKind::LowRank: {
            if (!u.defined() || u.dim() != 2 || u.size(1) < 1) throw Error(ErrorKind::Argument, what + ": u must be [out, r] with r >= 1");
            check(u, "u", {shape[0], u.size(1)});
            check(v, "v", {shape[1], u.size(1)});
            if (u.scalar_type() != v.scalar_type()) throw Error(ErrorKind::Argument, what + ": u and v must share a dtype");
            break;
        }
        case DeltaKind::DenseRows: {
            if (!rows.defined() || rows.dim() != 1 || rows.scalar_type() != at::kLong)
                throw Error(ErrorKind::Argument, what + ": rows must be a [k] int64 tensor");
            check(values, "values", {rows.numel(), shape[1]});
            const at::Tensor r = rows.contiguous();
            const int64_t* p = r.data_ptr<int64_t>();
            for (int64_t i = 0; i < r.numel(); ++i)
                if (p[i] < 0 || p[i] >= shape[0])
                    throw Error(ErrorKind::Argument, what + ": row " + std::to_string(p[i]) + " is outside [0, " + std::to_string(shape[0]) + ")");
            break;
        }
        case DeltaKind::Dense: check(values, "values", shape); break;
    }
}

std::vector<std::string> Edit::touched_tensors() const {
    std::set<std::string> names;
    for (const auto& d : deltas) names.insert(d.tensor);
    for (const auto& op : adapter_ops) names.insert(adapter_touch_name(op.adapter));
    return {names.begin(), names.end()};
}

std::string adapter_touch_name(const std::string& adapter) { return "adapter:" + adapter; }

std::string adapter_of_touch_name(const std::string& name) {
    return name.rfind("adapter:", 0) == 0 ? name.substr(8) : std::string();
}

void apply_delta(Model& model, const Delta& raw) {
    raw.validate();
    const Model::WeightRef ref = find_ref(model, raw.tensor);
    check_target(model, raw, ref);
    // Contiguous CPU copies of the parts (no-ops when they already are).
    Delta d = raw;
    for (at::Tensor* t : {&d.u, &d.v, &d.rows, &d.values})
        if (t->defined()) *t = t->contiguous();
    at::NoGradGuard no_grad;
    const at::Tensor& current = model.weight(ref.slot, ref.layer);
    const c10::Device device = current.device();
    const c10::ScalarType type = current.scalar_type();
    at::Tensor w = current.to(at::kCPU).contiguous();  // [out, in]; a copy only for GPT-2's transposed views
    if (type != at::kFloat && type != at::kDouble) w = w.to(at::kDouble);  // F16/BF16 weights: compute in F64, round once below
    at::Tensor out = at::empty_like(w);
    if (w.scalar_type() == at::kFloat) apply_weight_typed<float>(w, out, d);
    else apply_weight_typed<double>(w, out, d);
    if (out.scalar_type() != type) out = out.to(type);
    if (!device.is_cpu()) out = out.to(device);
    assign(model, ref, out);
}

void apply_edit(Model& model, const Edit& edit) {
    // Check every delta before changing anything, so a bad edit leaves the model as it was.
    for (const Delta& d : edit.deltas) {
        try {
            d.validate();
            check_target(model, d, find_ref(model, d.tensor));
        } catch (const Error& e) {
            throw e.with_context("edit " + std::to_string(edit.id) + " (" + edit.method + ")");
        }
    }
    // Adapter ops are checked on a copy of the installed set, which is swapped in after the deltas.
    AdapterSet adapters = model.adapters();
    if (!edit.adapter_ops.empty()) {
        AdapterSet original = model.adapters();
        try {
            for (const AdapterOp& op : edit.adapter_ops) model.apply_adapter_op(op);
        } catch (const Error& e) {
            model.adapters() = original;
            throw e.with_context("edit " + std::to_string(edit.id) + " (" + edit.method + ")");
        }
        adapters = model.adapters();
        model.adapters() = original;
    }
    for (const Delta& d : edit.deltas) apply_delta(model, d);
    model.adapters() = adapters;
}

std::string state_hash_of_base(const std::string& base_fingerprint) {
    Sha256 h;
    h.update("engram-state-v1");
    h.update_u64(base_fingerprint.size());
    h.update(base_fingerprint);
    return h.hex_digest();
}

std::string state_hash(const Model& model) {
    c10::InferenceMode guard;
    std::vector<Model::WeightRef> refs = model.weight_refs();
    std::sort(refs.begin(), refs.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    Sha256 h;
    h.update("engram-state-v1");
    const std::string fp = model.fingerprint();
    h.update_u64(fp.size());
    h.update(fp);
    for (const auto& ref : refs) {
        const at::Tensor& w = model.weight(ref.slot, ref.layer);
        const at::Tensor& base = model.base_weight(ref.slot, ref.layer);
        if (w.is_same(base)) continue;
        if (w.sizes() == base.sizes() && w.scalar_type() == base.scalar_type() && at::equal(w, base)) continue;
        const at::Tensor c = w.to(at::kCPU).contiguous();
        const std::string dtype = dtype_name(dtype_from_scalar_type(c.scalar_type(), ref.name));
        h.update_u64(ref.name.size());
        h.update(ref.name);
        h.update_u64(dtype.size());
        h.update(dtype);
        h.update_u64(static_cast<uint64_t>(c.dim()));
        for (int64_t s : c.sizes()) h.update_u64(static_cast<uint64_t>(s));
        const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
        h.update_u64(n);
        h.update(c.data_ptr(), n);
    }
    if (!model.adapters().empty()) {
        h.update("adapters");
        model.adapters().hash_into(h);
    }
    return h.hex_digest();
}

std::vector<uint8_t> tensor_blob(const at::Tensor& t) {
    const at::Tensor c = t.to(at::kCPU).contiguous();
    const auto* p = static_cast<const uint8_t*>(c.data_ptr());
    return std::vector<uint8_t>(p, p + static_cast<size_t>(c.numel()) * c.element_size());
}

at::Tensor tensor_from_blob(DType dtype, const std::vector<int64_t>& shape, const uint8_t* data, size_t size, const std::string& what) {
    int64_t numel = 1;
    for (int64_t s : shape) {
        if (s < 0 || (s > 0 && numel > INT64_MAX / s)) throw Error(ErrorKind::Format, what + ": bad shape " + shape_str(shape));
        numel *= s;
    }
    // numel * element size can wrap around 2^64 (F64 [2^61] "fits" an empty blob): compare by division.
    const uint64_t es = dtype_size(dtype);
    if (size % es != 0 || static_cast<uint64_t>(numel) != size / es)
        throw Error(ErrorKind::Format, what + ": " + std::to_string(size) + " bytes do not hold " + dtype_name(dtype) + " " + shape_str(shape));
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(to_scalar_type(dtype)));
    if (size) std::memcpy(t.data_ptr(), data, size);
    return t;
}

std::vector<uint8_t> delta_blob(const Delta& d) {
    d.validate();
    std::vector<uint8_t> out;
    auto append = [&](const at::Tensor& t) {
        auto b = tensor_blob(t.scalar_type() == at::kLong ? t : t.to(d.dtype() == DType::F64 ? at::kDouble : at::kFloat));
        out.insert(out.end(), b.begin(), b.end());
    };
    switch (d.kind) {
        case DeltaKind::LowRank: append(d.u), append(d.v); break;
        case DeltaKind::DenseRows: append(d.rows), append(d.values); break;
        case DeltaKind::Dense: append(d.values); break;
    }
    return out;
}

Delta delta_from_blob(const std::string& tensor, DeltaKind kind, const std::vector<int64_t>& shape, DType dtype, int64_t rank,
                      const uint8_t* data, size_t size) {
    const std::string what = "delta for '" + tensor + "'";
    if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0) throw Error(ErrorKind::Format, what + ": bad target shape " + shape_str(shape));
    if (dtype != DType::F32 && dtype != DType::F64) throw Error(ErrorKind::Format, what + ": dtype " + dtype_name(dtype) + " (F32 or F64 expected)");
    if (rank < 0) throw Error(ErrorKind::Format, what + ": negative rank");
    Delta d;
    d.tensor = tensor;
    d.kind = kind;
    d.shape = shape;
    const size_t es = dtype_size(dtype);
    switch (kind) {
        case DeltaKind::LowRank: {
            // shape[0] * rank * es must not wrap: a rank no blob of this size can hold is refused first.
            if (rank < 1 || static_cast<uint64_t>(rank) > size / es / (static_cast<uint64_t>(shape[0]) + static_cast<uint64_t>(shape[1])))
                throw Error(ErrorKind::Format, what + ": blob too short for rank " + std::to_string(rank));
            const size_t nu = static_cast<size_t>(shape[0]) * static_cast<size_t>(rank) * es;
            d.u = tensor_from_blob(dtype, {shape[0], rank}, data, nu, what + " u");
            d.v = tensor_from_blob(dtype, {shape[1], rank}, data + nu, size - nu, what + " v");
            break;
        }
        case DeltaKind::DenseRows: {
            if (static_cast<uint64_t>(rank) > size / 8) throw Error(ErrorKind::Format, what + ": blob too short for " + std::to_string(rank) + " rows");
            const size_t nr = static_cast<size_t>(rank) * 8;
            if (size < nr) throw Error(ErrorKind::Format, what + ": blob too short for " + std::to_string(rank) + " rows");
            d.rows = tensor_from_blob(DType::I64, {rank}, data, nr, what + " rows");
            d.values = tensor_from_blob(dtype, {rank, shape[1]}, data + nr, size - nr, what + " values");
            break;
        }
        case DeltaKind::Dense: d.values = tensor_from_blob(dtype, shape, data, size, what); break;
    }
    try {
        d.validate();
    } catch (const Error& e) {
        throw Error(ErrorKind::Format, e.what());
    }
    return d;
}

Edit make_synthetic_edit(const Model& model, const SyntheticEditOptions& o) {
    const int64_t n_layer = model.hparams().n_layer;
    if (o.layer < 0 || o.layer >= n_layer)
        throw Error(ErrorKind::Argument, "--layer " + std::to_string(o.layer) + " is out of range (the model has " + std::to_string(n_layer) + " layers)");
    if (o.rank < 1) throw Error(ErrorKind::Argument, "--rank must be at least 1");
    if (!(o.scale > 0.0)) throw Error(ErrorKind::Argument, "--scale must be positive");
    if (o.artifact_kib < 0) throw Error(ErrorKind::Argument, "--artifact-kib must not be negative");
    const at::Tensor& w = model.weight(Slot::FfnDown, o.layer);  // [n_embd, n_ff]
    if (!w.defined()) throw Error(ErrorKind::Unsupported, model.arch_name() + " has no MLP down-projection to edit");
    const auto t0 = std::chrono::steady_clock::now();
    c10::InferenceMode guard;
    at::Generator gen = at::detail::createCPUGenerator(o.seed);
    const int64_t n_out = w.size(0), n_in = w.size(1);
    // Each entry of u v^T is a sum of r products of N(0, 1) draws: variance r, so scale by 1/sqrt(r).
    const double factor_std = std::sqrt(o.scale / std::sqrt(static_cast<double>(o.rank)));
    Delta d;
    d.tensor = model.tensor_name(Slot::FfnDown, o.layer);
    d.kind = DeltaKind::LowRank;
    d.shape = {n_out, n_in};
    d.u = at::normal(0.0, factor_std, {n_out, o.rank}, gen);  // [n_embd, r]
    d.v = at::normal(0.0, factor_std, {n_in, o.rank}, gen);   // [n_ff, r]
    Edit e;
    e.method = "synthetic";
    e.requests = nlohmann::json::array({{{"kind", "synthetic"},
                                         {"note", "a seeded random low-rank delta for testing the store; it edits no fact"},
                                         {"layer", o.layer},
                                         {"seed", o.seed}}});
    e.hparams = {{"layer", o.layer}, {"slot", slot_name(Slot::FfnDown)}, {"rank", o.rank}, {"seed", o.seed}, {"scale", o.scale}};
    if (o.artifact_kib > 0) {
        e.hparams["artifact_kib"] = o.artifact_kib;
        Artifact a;
        a.name = "synthetic_side_memory";
        a.kind = "side_memory";
        a.tensor = at::normal(0.0, 1.0, {o.artifact_kib * 256}, gen);  // 1 KiB = 256 F32
        a.meta = {{"note", "random bytes standing in for a method's side memory"}};
        e.artifacts.push_back(std::move(a));
    }
    const double delta_norm = (at::matmul(d.u.to(at::kDouble), d.v.to(at::kDouble).t())).norm().item<double>();
    e.metrics = {{"delta_fro_norm", delta_norm}, {"weight_fro_norm", w.to(at::kDouble).norm().item<double>()}};
    e.deltas.push_back(std::move(d));
    e.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return e;
}

}  // namespace engram
