// Shared between ViT attribution and head editing: the single-head ablation scan with the
// predictions of every variant (editing counts the images a single removal corrects).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "engram/vit.h"

namespace engram::vit::detail {

struct AblationScan {
    at::Tensor effects;      // [n, n_layer, n_head] float64: score(head removed) - score
    at::Tensor predictions;  // [n, n_layer, n_head] int64: argmax with the head removed
    at::Tensor base_logits;  // [n, n_labels] float32
};

// Callers hold an InferenceMode or NoGrad guard.
AblationScan ablation_scan(const Model& model, const at::Tensor& pixels, const std::vector<int64_t>& target,
                           const std::vector<int64_t>& contrast, AblationKind kind, const at::Tensor& mean);

}  // namespace engram::vit::detail
