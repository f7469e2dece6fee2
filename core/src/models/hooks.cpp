#include <ATen/ATen.h>

#include "engram/error.h"
#include "engram/hooks.h"

namespace engram {

namespace {
constexpr const char* kSiteNames[] = {"embed", "attn_out", "mlp_out", "mlp_key", "head_out", "attn_probs", "block_out"};
}

const char* site_name(Site site) { return kSiteNames[static_cast<int>(site)]; }

std::optional<Site> site_from_name(std::string_view name) {
    for (int i = 0; i < 7; ++i)
        if (name == kSiteNames[i]) return static_cast<Site>(i);
    return std::nullopt;
}

void Hooks::capture(Site site, int layer) { entries_[{site, layer}].capture = true; }

void Hooks::replace(Site site, int layer, int64_t row, int64_t position, at::Tensor replacement) {
    entries_[{site, layer}].replacements.push_back({row, position, std::move(replacement)});
}

void Hooks::on(Site site, int layer, Callback callback) { entries_[{site, layer}].callbacks.push_back(std::move(callback)); }

bool Hooks::wants(Site site, int layer) const {
    return entries_.count({site, layer}) != 0 || entries_.count({site, kAnyLayer}) != 0;
}

void Hooks::run_entry(Entry& entry, at::Tensor& value) {
    for (auto& cb : entry.callbacks) cb(value);
    for (auto& r : entry.replacements) {
        if (r.row < 0 || r.row >= value.size(0) || value.dim() < 2 || r.position < 0 || r.position >= value.size(1))
            throw Error(ErrorKind::Argument, "hook replacement at row " + std::to_string(r.row) + ", position " +
                                                 std::to_string(r.position) + " is outside the site's tensor");
        value.select(0, r.row).select(0, r.position).copy_(r.value.to(value.device()).to(value.scalar_type()));
    }
}

void Hooks::run(Site site, int layer, at::Tensor& value) {
    bool keep = false;
    for (int key_layer : {kAnyLayer, layer}) {
        auto it = entries_.find({site, key_layer});
        if (it == entries_.end()) continue;
        run_entry(it->second, value);
        keep = keep || it->second.capture;
    }
    if (keep) captured_[{site, layer}] = value.detach().clone();
}

const at::Tensor& Hooks::captured(Site site, int layer) const {
    auto it = captured_.find({site, layer});
    if (it == captured_.end())
        throw Error(ErrorKind::Internal, std::string("hook site ") + site_name(site) + " at layer " + std::to_string(layer) +
                                             " was not captured");
    return it->second;
}

}  // namespace engram
