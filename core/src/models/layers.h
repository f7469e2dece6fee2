// Shared building blocks of the forward passes. Shapes: B batch, T new positions, Tk key positions
// (n_past + T), H heads, Hkv key/value heads, hd head_dim.
#pragma once

#include <ATen/ATen.h>

#include <functional>

#include "engram/hooks.h"
#include "engram/model.h"

namespace engram::layers {

at::Tensor activation(const at::Tensor& x, const std::string& name);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

// Additive attention bias [B, 1, T, Tk]: 0 where query t may see key j, a large negative value
// elsewhere (causal, the key padding mask, and a sliding window when window > 0). The mask may
// cover the new positions only ([B, T]) or past and new ([B, Tk]); undefined means all ones.
at::Tensor attention_bias(int64_t batch, int64_t t_new, int64_t n_past, const at::Tensor& attention_mask,
                          bool causal, int64_t window, const at::TensorOptions& options);

// Rotary tables for positions [n_past, n_past + T): cos/sin [T, rotary_dim/2]; with position_ids
// ([B, T], ForwardInput::position_ids) per row: [B, T, rotary_dim/2].
struct Rotary {
    at::Tensor cos, sin;
};
Rotary rotary_tables(const HParams& hp, int64_t rotary_dim, int64_t n_past, int64_t t_new, const at::TensorOptions& options,
                     const at::Tensor& position_ids = {});
// LLaMA layout: x [B, H, T, hd], the first rotary_dim dims rotated in two halves.
at::Tensor apply_rope_half(const at::Tensor& x, const Rotary& rot);
// GPT-J layout: x [B, T, H, hd], the first rotary_dim dims rotated in interleaved pairs.
at::Tensor apply_rope_interleaved(const at::Tensor& x, const Rotary& rot);

// softmax(q k^T * scale + bias) v with the AttnProbs and HeadOut hooks.
// q [B, H, T, hd]; k, v [B, Hkv, Tk, hd] (repeated for grouped-query attention).
// Returns the concatenated heads [B, T, H*hd].
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                     double scale, Hooks* hooks, int layer);

// Appends the new keys/values to the cache (when there is one) and returns the full k, v.
std::pair<at::Tensor, at::Tensor> update_cache(KvCache* cache, int layer, int64_t n_layer, at::Tensor k, at::Tensor v);

// Where a forward pass starts and stops (ForwardInput::residual/start_layer/stop_layer), checked.
struct LayerRange {
    int begin = 0, end = 0;
    bool logits = true;  // false when the pass stops before the last layer
};
LayerRange layer_range(const ForwardInput& input, int64_t n_layer, int64_t batch, int64_t t_new, int64_t n_embd);

// The residual a pass starts from: ForwardInput::residual when it resumes at a later layer, else
// embed() (then seen by the Site::Embed hook).
at::Tensor start_residual(const ForwardInput& input, Hooks* hooks, const std::function<at::Tensor()>& embed);

// Logits from the final hidden states h [B, T, n_embd]: all positions, each row's last real one, or
// the positions of input.logit_index.
at::Tensor project_logits(const at::Tensor& h, const ForwardInput& input, const at::Tensor& out_w, const at::Tensor& out_b);

// Each row's routing position for adapters (ForwardInput::route_position, adapter.h): [B] int64.
// Undefined when the model has no adapters (nothing routes, nothing is computed).
at::Tensor route_positions(const Model& model, const ForwardInput& input, int64_t batch, int64_t t_new);
// A linear module's output with the adapters attached to it (slot, layer) applied.
at::Tensor adapted_linear(const Model& model, Slot slot, int layer, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                          const at::Tensor& route);

// ---------------------------------------------------------------------------------------------
// One decoder block, written once per family and run by Model::forward (with or without a KV
// cache), partial runs, and the fast causal trace.

struct BlockIn {
    at::Tensor h;               // [B, Tn, n_embd]: the residual entering the layer at positions [p0, p0 + Tn)
    at::Tensor past_k, past_v;  // [B, n_head_kv, p0, head_dim] or undefined (p0 = 0)
    int64_t q_from = 0;         // outputs are computed for positions [q_from, Tn) only; earlier ones give keys/values
    at::Tensor bias;            // [B, 1, Tn - q_from, p0 + Tn] additive attention bias of the query rows
    Rotary rot;                 // rotary tables of the Tn positions (families with rotary embeddings)
    at::Tensor route;           // [B] adapter routing among the query rows (route_positions), or undefined
    Hooks* hooks = nullptr;     // every site of the block; its values cover the query rows
};
struct BlockOut {
    at::Tensor h;     // [B, Tn - q_from, n_embd]: the residual after the block
    at::Tensor k, v;  // [B, n_head_kv, p0 + Tn, head_dim]: past and new keys/values
};
using BlockFn = BlockOut (*)(const Model& model, int layer, const BlockIn& in);

// The keys/values after the past ones.
at::Tensor with_past(const at::Tensor& past, const at::Tensor& now);
// Rotary tables of the query rows [q_from, Tn) out of those of all Tn positions.
Rotary rotary_rows(const Rotary& rot, int64_t q_from, int64_t t_query);

// The decoder families' Model::forward: embeddings, the blocks with the cache, the final norm and
// the logits, from the family's table (arch.h).
ForwardOutput decoder_forward(const Model& model, const ForwardInput& input, Hooks* hooks, KvCache* cache);

// [B, T] positions of the new tokens.
int64_t past_length(const KvCache* cache);

}  // namespace engram::layers
