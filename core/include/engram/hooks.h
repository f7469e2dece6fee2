// Named hook sites, built into every forward pass.
//
// One mechanism serves causal tracing, ROME keys/values, attribution and debugging: a caller
// registers interest in (site, layer); the forward pass asks `wants()` before doing any extra work
// and then hands the tensor to `run()`, which applies callbacks and replacements in order and
// finally keeps a copy if the caller asked to capture it.
//
// Shapes seen at each site (B batch rows, T positions):
//   Embed      [B, T, n_embd]               token (+ position) embeddings; layer is 0
//   AttnOut    [B, T, n_embd]               attention module output, before the residual add
//   MlpOut     [B, T, n_embd]               MLP output, before the residual add
//   MlpKey     [B, T, n_ff]                 the input of the down projection (c_proj/fc_out/down_proj)
//   HeadOut    [B, T, n_head, head_dim]     per-head attention output, before the output projection
//   AttnProbs  [B, n_head, T, T_keys]       softmax attention probabilities
//   BlockOut   [B, T, n_embd]               the residual stream after the block
#pragma once

#include <ATen/core/Tensor.h>

#include <compare>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram {

enum class Site { Embed, AttnOut, MlpOut, MlpKey, HeadOut, AttnProbs, BlockOut };

const char* site_name(Site site);  // "embed", "attn_out", "mlp_out", "mlp_key", "head_out", "attn_probs", "block_out"
std::optional<Site> site_from_name(std::string_view name);

struct SiteKey {
    Site site;
    int layer;
    auto operator<=>(const SiteKey&) const = default;
};

inline constexpr int kAnyLayer = -1;

class Hooks {
public:
    // A callback may modify the value in place or assign a new tensor of the same shape.
    using Callback = std::function<void(at::Tensor& value)>;

    // Keep a copy of the value seen at (site, layer) after callbacks and replacements.
    // layer may be kAnyLayer to capture the site at every layer.
    void capture(Site site, int layer = kAnyLayer);
    // value[row, position, ...] = replacement (shape: the site's trailing dims).
    void replace(Site site, int layer, int64_t row, int64_t position, at::Tensor replacement);
    void on(Site site, int layer, Callback callback);

    bool wants(Site site, int layer) const;
    // Called by the forward passes.
    void run(Site site, int layer, at::Tensor& value);

    bool has_captured(Site site, int layer) const { return captured_.count({site, layer}) != 0; }
    const at::Tensor& captured(Site site, int layer) const;  // throws if it was not captured
    const std::map<SiteKey, at::Tensor>& all_captured() const { return captured_; }
    void clear_captured() { captured_.clear(); }

private:
    struct Replacement {
        int64_t row;
        int64_t position;
        at::Tensor value;
    };
    struct Entry {
        std::vector<Callback> callbacks;
        std::vector<Replacement> replacements;
        bool capture = false;
    };
    std::map<SiteKey, Entry> entries_;
    std::map<SiteKey, at::Tensor> captured_;

    void run_entry(Entry& entry, at::Tensor& value);
};

// The forward passes call this: nothing happens unless someone asked for the site.
inline void hook(Hooks* hooks, Site site, int layer, at::Tensor& value) {
    if (hooks && hooks->wants(site, layer)) hooks->run(site, layer, value);
}

}  // namespace engram
