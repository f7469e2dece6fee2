// One transformer block at a time, for the fast causal trace: the families' forward passes
// (models/gpt2.cpp, gptj.cpp, llama.cpp) split at block boundaries so that a trace can start at
// any layer from a stored residual stream, skip positions whose keys/values it already has, and
// compute only the last position in the last layer. The arithmetic is the same op for op; the
// naive trace runs the real Model::forward and tst_trace checks that the two agree.
#pragma once

#include <ATen/ATen.h>

#include <functional>

#include "engram/hooks.h"
#include "engram/model.h"

namespace engram::trace_detail {

// Replaces AttnOut / MlpOut values before they join the residual stream. `value` covers the
// positions [q_from, Tn) of the block's new positions.
using BlockPatch = std::function<void(Site site, at::Tensor& value, int64_t q_from)>;

struct BlockResult {
    at::Tensor h;         // [B, Tn - q_from, n_embd] the residual after the block
    at::Tensor attn_out;  // [B, Tn - q_from, n_embd]
    at::Tensor mlp_out;   // [B, Tn - q_from, n_embd]
    at::Tensor k, v;      // [B, n_head_kv, Tn, head_dim] the new positions' keys/values
};

// h: [B, Tn, n_embd], the residual entering `layer` at positions [p0, p0 + Tn).
// past_k/past_v: [B, n_head_kv, p0, head_dim] (undefined when p0 == 0).
// q_from: the first new position whose output is wanted (0: all); earlier ones only give keys/values.
// flops (optional) is increased by 2 x the multiply-adds of the block's matmuls.
BlockResult run_block(const Model& model, int layer, const at::Tensor& h, int64_t p0, const at::Tensor& past_k,
                      const at::Tensor& past_v, int64_t q_from, const BlockPatch& patch, double* flops);

// The residual stream entering layer 0: token (+ position) embeddings. ids: [B, T].
at::Tensor embed(const Model& model, const at::Tensor& ids);
// Logits from final residual states h: [B, n_embd] -> [B, n_vocab].
at::Tensor final_logits(const Model& model, const at::Tensor& h, double* flops);

}  // namespace engram::trace_detail
