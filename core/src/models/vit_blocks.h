// The ViT forward pass in pieces, so attribution and head editing run exactly the code that
// Model::forward runs (same operations, same order, so the same bits), and can start at any layer
// from a cached residual stream.
#pragma once

#include <ATen/ATen.h>

#include "engram/hooks.h"
#include "engram/model.h"

namespace engram::vit_blocks {

// Patch embedding + CLS + positions: pixels [B, C, H, W] -> residual [B, T, n_embd], T = n_patches + 1.
at::Tensor embed(const Model& m, const at::Tensor& pixel_values);
// Encoder block `layer` with its hook sites (AttnProbs, HeadOut, AttnOut, MlpKey, MlpOut, BlockOut).
at::Tensor block(const Model& m, int layer, const at::Tensor& h, Hooks* hooks);
// The value vectors block `layer` computes from its input h: [B, n_head, T, head_dim].
at::Tensor values(const Model& m, int layer, const at::Tensor& h);
at::Tensor final_norm(const Model& m, const at::Tensor& h);     // [B, T, n_embd]
at::Tensor classify(const Model& m, const at::Tensor& features); // [B, n_embd] -> [B, n_labels]

}  // namespace engram::vit_blocks
