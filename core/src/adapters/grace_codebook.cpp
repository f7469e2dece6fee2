// GRACE codebook adapter (kinds.h). Ops:
//   insert    {entry, eps, label, replacement}  key [in], value [out]
//   set_eps   {entry, eps}                      (the expand and split rules)
//   set_value {entry[, label]}                  value [out] (an edit that retrains an existing entry)
//   set_key   {entry}                           key [in] (the moving-average expand rule)
// An op naming an entry that is not there (its insert was reverted) changes nothing.
#include <cmath>
#include <cstring>

#include "adapters/kinds.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"

namespace engram::adapters {

namespace {

at::Tensor checked_vector(const AdapterOp& op, const std::string& name, int64_t n) {
    const at::Tensor& t = op.tensor(name);
    if (t.dim() != 1 || t.size(0) != n)
        throw Error(ErrorKind::Argument, "adapter " + op.adapter + ": " + op.op + " needs a " + name + " of " + std::to_string(n) +
                                             " values, got shape " + std::to_string(t.dim() == 1 ? t.size(0) : -1));
    at::Tensor f = t.to(at::kCPU).to(at::kFloat).contiguous();
    if (!at::isfinite(f).all().item<bool>())
        throw Error(ErrorKind::Argument, "adapter " + op.adapter + ": " + name + " holds a non-finite value");
    return f;
}

double checked_eps(const AdapterOp& op) {
    if (!op.params.contains("eps") || !op.params["eps"].is_number())
        throw Error(ErrorKind::Format, "adapter " + op.adapter + ": " + op.op + " without a numeric eps");
    const double eps = op.params["eps"].get<double>();
    if (!(eps > 0) || !std::isfinite(eps))
        throw Error(ErrorKind::Argument, "adapter " + op.adapter + ": the radius eps must be > 0, got " + std::to_string(eps));
    return eps;
}

std::string entry_id(const AdapterOp& op) {
    if (!op.params.contains("entry") || !op.params["entry"].is_string() || op.params["entry"].get<std::string>().empty())
        throw Error(ErrorKind::Format, "adapter " + op.adapter + ": " + op.op + " without an entry id");
    return op.params["entry"].get<std::string>();
}

}  // namespace

int64_t GraceCodebook::index_of(const std::string& id) const {
    for (size_t i = 0; i < entries_.size(); ++i)
        if (entries_[i].id == id) return int64_t(i);
    return -1;
}

void GraceCodebook::apply(const AdapterOp& op) {
    const std::string id = entry_id(op);
    const int64_t i = index_of(id);
    if (op.op == "insert") {
        Entry e;
        e.id = id;
        e.key = checked_vector(op, "key", in_);
        e.value = checked_vector(op, "value", out_);
        e.eps = checked_eps(op);
        if (op.params.contains("label")) e.label = op.params["label"].get<std::vector<int64_t>>();
        const std::string rep = op.params.value("replacement", std::string("last"));
        if (rep != "last" && rep != "all")
            throw Error(ErrorKind::Argument, "adapter " + op.adapter + ": replacement must be last or all, got '" + rep + "'");
        if (i >= 0) throw Error(ErrorKind::Format, "adapter " + op.adapter + ": entry " + id + " is inserted twice");
        replacement_ = rep;
        entries_.push_back(std::move(e));
    } else if (op.op == "set_eps") {
        const double eps = checked_eps(op);
        if (i >= 0) entries_[size_t(i)].eps = eps;
    } else if (op.op == "set_value") {
        at::Tensor v = checked_vector(op, "value", out_);
        if (i >= 0) {
            entries_[size_t(i)].value = v;
            if (op.params.contains("label")) entries_[size_t(i)].label = op.params["label"].get<std::vector<int64_t>>();
        }
    } else if (op.op == "set_key") {
        at::Tensor k = checked_vector(op, "key", in_);
        if (i >= 0) entries_[size_t(i)].key = k;
    } else {
        throw Error(ErrorKind::Format, "adapter " + op.adapter + ": unknown GRACE op '" + op.op + "'");
    }
    restack();
}

void GraceCodebook::restack() {
    if (entries_.empty()) {
        keys_ = keys_sq_ = values_ = eps_ = at::Tensor();
        return;
    }
    std::vector<at::Tensor> k, v;
    std::vector<double> eps;
    for (const Entry& e : entries_) {
        k.push_back(e.key);
        v.push_back(e.value);
        eps.push_back(e.eps);
    }
    const c10::Device device = entries_.front().key.device();
    keys_ = at::stack(k).to(at::kDouble);  // [N, in]
    keys_sq_ = keys_.pow(2).sum(1);        // [N]
    values_ = at::stack(v);                // [N, out]
    eps_ = at::tensor(eps, at::kDouble).to(device);
}

std::vector<std::pair<int64_t, double>> GraceCodebook::nearest(const at::Tensor& queries) const {
    std::vector<std::pair<int64_t, double>> out;
    if (entries_.empty()) {
        out.assign(size_t(queries.size(0)), {-1, 0.0});
        return out;
    }
    at::Tensor q = queries.to(keys_.device()).to(at::kDouble);  // [R, in]
    // |q - k|^2 = |q|^2 - 2 q.k + |k|^2, clamped at 0 against cancellation.
    at::Tensor d2 = (q.pow(2).sum(1, true) - 2.0 * at::matmul(q, keys_.t()) + keys_sq_.unsqueeze(0)).clamp_min(0.0);  // [R, N]
    auto [dmin, idx] = d2.min(1);
    at::Tensor dm = dmin.sqrt().to(at::kCPU).contiguous(), im = idx.to(at::kCPU).contiguous();
    for (int64_t r = 0; r < dm.size(0); ++r) out.emplace_back(im.data_ptr<int64_t>()[r], dm.data_ptr<double>()[r]);
    return out;
}

void GraceCodebook::on_linear(const at::Tensor& x, at::Tensor& y, const at::Tensor& route) const {
    if (entries_.empty()) return;
    const int64_t B = x.size(0), T = x.size(1);
    at::Tensor r = route.to(at::kCPU).contiguous();
    std::vector<int64_t> rows, pos;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t p = r.data_ptr<int64_t>()[b];
        if (p >= 0 && p < T) {
            rows.push_back(b);
            pos.push_back(p);
        }
    }
    if (rows.empty()) return;
    const at::Tensor ri = at::tensor(rows, at::kLong).to(x.device()), pi = at::tensor(pos, at::kLong).to(x.device());
    const std::vector<std::pair<int64_t, double>> hits = nearest(x.index({ri, pi}).detach());
    bool copied = false;
    for (size_t i = 0; i < hits.size(); ++i) {
        if (!within(hits[i].first, hits[i].second)) continue;
        if (!copied) y = y.clone();
        copied = true;
        const at::Tensor v = values_[hits[i].first].to(y.device()).to(y.scalar_type());
        at::Tensor row = y.select(0, rows[i]);  // [T, out]
        // last: the routed position; all: every position up to it (the prompt).
        if (replacement_ == "all") row.narrow(0, 0, pos[i] + 1).copy_(v.expand({pos[i] + 1, v.size(0)}));
        else row.select(0, pos[i]).copy_(v);
    }
}

void GraceCodebook::hash_into(Sha256& h) const {
    auto str = [&](const std::string& s) {
        h.update_u64(s.size());
        h.update(s);
    };
    auto tensor = [&](const at::Tensor& t) {
        const at::Tensor c = t.to(at::kCPU).contiguous();
        const size_t n = size_t(c.numel()) * c.element_size();
        h.update_u64(n);
        h.update(c.data_ptr(), n);
    };
    str(replacement_);
    h.update_u64(entries_.size());
    for (const Entry& e : entries_) {
        str(e.id);
        uint64_t bits = 0;
        std::memcpy(&bits, &e.eps, sizeof bits);
        h.update_u64(bits);
        h.update_u64(e.label.size());
        for (int64_t t : e.label) h.update_u64(static_cast<uint64_t>(t));
        tensor(e.key);
        tensor(e.value);
    }
}

nlohmann::json GraceCodebook::describe() const {
    double min_eps = 0, max_eps = 0;
    for (size_t i = 0; i < entries_.size(); ++i) {
        min_eps = i ? std::min(min_eps, entries_[i].eps) : entries_[i].eps;
        max_eps = i ? std::max(max_eps, entries_[i].eps) : entries_[i].eps;
    }
    return {{"entries", entries_.size()}, {"replacement", replacement_}, {"eps_min", min_eps}, {"eps_max", max_eps}};
}

void GraceCodebook::to(c10::Device device) {
    for (Entry& e : entries_) {
        e.key = e.key.to(device);
        e.value = e.value.to(device);
    }
    restack();
}

nlohmann::json GraceCodebook::explain(const at::Tensor& query) const {
    if (entries_.empty()) return {{"replaced", false}};
    const auto [i, d] = nearest(query.reshape({1, -1})).at(0);
    return {{"replaced", within(i, d)}, {"entry", entries_[size_t(i)].id}, {"distance", d}, {"eps", entries_[size_t(i)].eps},
            {"entries", entries_.size()}};
}

std::string grace_codebook_name(int layer) { return "grace.L" + std::to_string(layer) + ".mlp.down"; }

AdapterOp grace_op(int layer, const std::string& what, nlohmann::json params) {
    AdapterOp op;
    op.adapter = grace_codebook_name(layer);
    op.kind = "grace_codebook";
    op.slot = Slot::FfnDown;
    op.layer = layer;
    op.op = what;
    op.params = std::move(params);
    return op;
}

std::unique_ptr<Adapter> make_grace_codebook(int64_t out_features, int64_t in_features) {
    return std::make_unique<GraceCodebook>(out_features, in_features);
}

}  // namespace engram::adapters
