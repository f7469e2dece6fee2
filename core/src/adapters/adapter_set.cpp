// The installed-adapter set and the kind registry (adapter.h).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>

#include "adapters/kinds.h"
#include "engram/adapter.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"

namespace engram {

const char* attach_module_name(Slot slot) {
    switch (slot) {
        case Slot::FfnDown: return "mlp.down";
        default: return "?";
    }
}

Slot attach_slot_from_name(const std::string& name) {
    if (name == "mlp.down") return Slot::FfnDown;
    throw Error(ErrorKind::Argument, "attach point '" + name + "': adapters attach to mlp.down (the MLP down-projection)");
}

const at::Tensor& AdapterOp::tensor(const std::string& name) const {
    for (const auto& [n, t] : tensors)
        if (n == name) return t;
    throw Error(ErrorKind::Format, "adapter op " + op + " on " + adapter + " has no tensor '" + name + "'");
}

namespace {

std::unique_ptr<Adapter> make_adapter(const std::string& kind, int64_t out_features, int64_t in_features) {
    if (kind == "grace_codebook") return adapters::make_grace_codebook(out_features, in_features);
    throw Error(ErrorKind::Format, "unknown adapter kind '" + kind + "' (this build knows grace_codebook)");
}

}  // namespace

void AdapterSet::apply(const AdapterOp& op, int64_t out_features, int64_t in_features) {
    if (op.adapter.empty()) throw Error(ErrorKind::Format, "adapter op without an adapter name");
    auto it = by_name_.find(op.adapter);
    std::unique_ptr<Adapter> next;
    if (it == by_name_.end()) {
        next = make_adapter(op.kind, out_features, in_features);
    } else {
        if (it->second.kind != op.kind || it->second.slot != op.slot || it->second.layer != op.layer)
            throw Error(ErrorKind::Format, "adapter op on " + op.adapter + " names another kind or attach point than the installed adapter");
        next = it->second.adapter->clone();
    }
    next->apply(op);
    if (next->empty()) {
        by_name_.erase(op.adapter);
        return;
    }
    by_name_[op.adapter] = Entry{op.kind, op.slot, op.layer, std::shared_ptr<const Adapter>(std::move(next))};
}

const Adapter* AdapterSet::find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second.adapter.get();
}

void AdapterSet::on_linear(Slot slot, int layer, const at::Tensor& x, at::Tensor& y, const at::Tensor& route) const {
    for (const auto& [name, e] : by_name_)
        if (e.slot == slot && e.layer == layer) e.adapter->on_linear(x, y, route);
}

void AdapterSet::hash_into(Sha256& h) const {
    h.update_u64(by_name_.size());
    for (const auto& [name, e] : by_name_) {
        for (const std::string& s : {name, e.kind, std::string(attach_module_name(e.slot))}) {
            h.update_u64(s.size());
            h.update(s);
        }
        h.update_u64(static_cast<uint64_t>(e.layer));
        e.adapter->hash_into(h);
    }
}

void AdapterSet::to(c10::Device device) {
    for (auto& [name, e] : by_name_) {
        std::unique_ptr<Adapter> moved = e.adapter->clone();
        moved->to(device);
        e.adapter = std::shared_ptr<const Adapter>(std::move(moved));
    }
}

std::vector<AdapterSet::Installed> AdapterSet::list() const {
    std::vector<Installed> out;
    for (const auto& [name, e] : by_name_) out.push_back({name, e.kind, e.slot, e.layer, e.adapter->describe()});
    return out;
}

std::vector<AdapterRoute> explain_adapters(const Model& model, const std::vector<int64_t>& ids) {
    std::vector<AdapterRoute> out;
    const auto installed = model.adapters().list();
    if (installed.empty() || ids.empty()) return out;
    c10::InferenceMode guard;
    Hooks hooks;
    for (const auto& a : installed) hooks.capture(Site::MlpKey, a.layer);  // the down-projection's input
    ForwardInput in;
    in.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
    in.last_logits_only = true;
    model.forward(in, &hooks);
    for (const auto& a : installed) {
        AdapterRoute r{a.name, a.kind, a.layer, false, nlohmann::json::object()};
        r.detail = model.adapters().find(a.name)->explain(hooks.captured(Site::MlpKey, a.layer)[0][int64_t(ids.size()) - 1]);
        r.replaced = r.detail.value("replaced", false);
        out.push_back(std::move(r));
    }
    return out;
}

std::string describe_route(const AdapterRoute& r) {
    char buf[256];
    const std::string entry = r.detail.value("entry", std::string());
    const double d = r.detail.value("distance", 0.0), eps = r.detail.value("eps", 0.0);
    if (entry.empty()) return r.adapter + ": empty";
    std::snprintf(buf, sizeof buf, "entry %.8s at distance %.3g %s radius %.3g", entry.c_str(), d, r.replaced ? "<=" : ">", eps);
    return r.adapter + (r.replaced ? " replaced the layer-" + std::to_string(r.layer) + " MLP output at the last token: "
                                   : " left the output alone: nearest ") +
           buf;
}

}  // namespace engram
