// Vision transformers: per-head attribution and head-level editing (docs/methods.md).
//
// Attribution: the CLS residual before the final LayerNorm is a sum of components — the
// embedding, every head's write through its slice of the output projection, every layer's output
// bias, every MLP. With the final LayerNorm's scale σ frozen at its actual value the norm is linear,
// so a class logit (or a difference of two) splits exactly into one term per component plus a bias
// term. Beside this direct logit attribution (DLA): exact single-head ablation effects (every head
// of a layer as one batch, the residual below the layer reused), per-head patch maps (how much each
// patch contributes through that head at CLS; they sum to the head's score), attention rollout and
// the attention maps.
//
// Editing ("RefineViT-style": the paper's code and full text were not available, so every
// choice it leaves open is a setting): rank heads by their ablation effect on the edit images,
// select greedily until the edit images are corrected, remove the selected heads (zeroed columns of
// the attention output projection, the bias kept, as HF's head_mask does; or their mean over
// reference images folded into the bias), then learn a projection P on the cached final CLS
// features and fold it into the classifier (W' = W P). Baseline: fine-tuning the fc1/fc2 weights of
// chosen MLP layers (Where-to-Edit's FT).
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/edit.h"

namespace engram {

class Model;

namespace vit {

// ---------------------------------------------------------------------------------------------
// Running the encoder with head interventions.

struct HeadIntervention {
    // [n_layer, n_head] or [B, n_layer, n_head] (one gate set per batch row): 1 keeps a head,
    // 0 removes it. Undefined: every head kept.
    at::Tensor keep;
    // [n_layer, n_head, head_dim]: what a removed head writes instead of its output (mean
    // ablation). Undefined: zero.
    at::Tensor mean;
};

struct RunOptions {
    const HeadIntervention* intervention = nullptr;
    bool keep_components = false;  // the CLS decomposition below
    bool keep_attention = false;   // per-layer attention probabilities
    bool keep_layer_inputs = false;// the residual entering every layer (for values and prefix reuse)
    int from_layer = 0;            // start at this layer from `start` instead of the pixels
    at::Tensor start;              // [B, T, n_embd]: the residual entering from_layer (when from_layer > 0)
};

struct RunResult {
    at::Tensor logits;    // [B, n_labels]
    at::Tensor features;  // [B, n_embd]   CLS after the final LayerNorm (the classifier's input)
    at::Tensor residual;  // [B, n_embd]   CLS before the final LayerNorm
    // keep_components (float32, CLS position):
    at::Tensor embed;     // [B, n_embd]             CLS + its position embedding
    at::Tensor heads;     // [B, n_layer, n_head, n_embd] each head through its W_O columns (no bias)
    at::Tensor mlps;      // [B, n_layer, n_embd]    MLP outputs (their output bias included)
    std::vector<at::Tensor> attention;     // keep_attention: per layer [B, n_head, T, T]
    std::vector<at::Tensor> layer_inputs;  // keep_layer_inputs: per layer [B, T, n_embd]
};

RunResult run(const Model& model, const at::Tensor& pixels, const RunOptions& options = {});

// ---------------------------------------------------------------------------------------------
// Attribution.

enum class AblationKind { Zero, Mean };
const char* ablation_kind_name(AblationKind kind);  // "zero", "mean"
AblationKind ablation_kind_from_name(const std::string& name);

struct AttributionOptions {
    int64_t target = -1;    // the class explained; -1: the predicted class
    int64_t contrast = -2;  // -2: none (explain logit(target)); -1: the runner-up; else a class id
    bool ablation = true;   // exact single-head ablation effects
    AblationKind ablation_kind = AblationKind::Zero;
    at::Tensor mean;        // [n_layer, n_head, head_dim] for mean ablation (mean_head_outputs)
    bool patch_maps = false;
    bool attention = false; // rollout and per-head CLS attention maps
};

// One image. All tensors are float64 on the CPU.
struct Attribution {
    int64_t target = 0, contrast = -1;  // contrast -1: none
    int64_t predicted = 0;
    double score = 0;             // logit(target) [- logit(contrast)] as the model computes it (float32)
    double sum_of_components = 0; // embed + heads + mlps + bias, in float64
    at::Tensor heads;             // [n_layer, n_head]
    at::Tensor mlps;              // [n_layer]
    double embed = 0;
    double bias = 0;              // attention output biases + final LayerNorm shift + classifier bias
    at::Tensor attn_bias;         // [n_layer]: the attention output biases' share of `bias`
    at::Tensor ablation;          // [n_layer, n_head]: score with the head removed - score (ablation)
    at::Tensor patch_maps;        // [n_layer, n_head, n_patches] (patch_maps); per-head CLS-to-CLS share in cls_share
    at::Tensor cls_share;         // [n_layer, n_head]: the part of a head's score read from the CLS token itself
    at::Tensor rollout;           // [n_patches] (attention)
    at::Tensor cls_attention;     // [n_layer, n_head, n_patches]: CLS-row attention to each patch (attention)
    at::Tensor logits;            // [n_labels]
};

Attribution attribute(const Model& model, const at::Tensor& pixel, const AttributionOptions& options = {});

// The mean output of every head over images and tokens: [n_layer, n_head, head_dim] (for mean ablation).
at::Tensor mean_head_outputs(const Model& model, const at::Tensor& pixels, int64_t batch = 64);

// Exact single-head ablation effects on a batch: [B, n_layer, n_head] = score(head removed) -
// score, where score_i = logit[target_i] - logit[contrast_i] (contrast_i < 0: logit[target_i]).
// Layer l's variants run as one batch from the cached residual entering layer l.
at::Tensor ablation_effects(const Model& model, const at::Tensor& pixels, const std::vector<int64_t>& target,
                            const std::vector<int64_t>& contrast, AblationKind kind, const at::Tensor& mean = {});

// Attention rollout (Abnar & Zuidema): per layer the head-mean attention, plus I, rows renormalised,
// multiplied from layer 0 upwards; the CLS row over the patches: [n_patches].
at::Tensor attention_rollout(const std::vector<at::Tensor>& attention_of_one_image);

// The attention-versus-MLP diagnostic: per layer, the prediction-flip rate and the mean change of
// log p(label) when the layer's attention output or its MLP output is zeroed.
struct ComponentSensitivity {
    std::vector<double> attn_flip, mlp_flip, attn_dlogp, mlp_dlogp;  // [n_layer]
    int64_t images = 0;
};
ComponentSensitivity component_sensitivity(const Model& model, const at::Tensor& pixels, const std::vector<int64_t>& labels);

// ---------------------------------------------------------------------------------------------
// Editing.

using Head = std::pair<int, int>;  // (layer, head)

enum class HeadScore { Ablation, Dla };
const char* head_score_name(HeadScore score);  // "ablation", "dla"

struct HeadEditOptions {
    bool use_heads = true;        // stage 1 + removal
    bool use_projection = true;   // stage 2 (P)
    HeadScore score = HeadScore::Ablation;
    AblationKind ablation = AblationKind::Zero;
    int k_max = -1;               // the most heads removed; -1: 5% of all heads (at least 1), the spec's 8 of ViT-B's 144
    double tau = 1.0;             // stop selecting once this share of the edit images is corrected
    // A head is only added while the removed set changes at most this share of the reference
    // images' predictions (1: no limit, the spec's rule). Our addition: removal is global, and P
    // cannot give back what a head carried for unrelated images. Needs reference images.
    double max_reference_change = 0.02;
    // P: L = mean CE(W P z_S(x) + b, y) over the edit images + lambda mean ||P z_S(x) - z(x)||^2 / d
    // over the reference images + mu ||P - I||_F^2; Adam from P = I, full batch. The spec suggests
    // lambda 1, lr 1e-3 and 200-500 steps; on Shapes World that leaves P unconverged and locality
    // near 80%, so the defaults are what converges there (lr 1e-2, 2000 steps) and the middle of
    // the measured trade-off curve (lambda 7). eval-vit --sweep lambda=... draws the curve.
    double lambda = 7.0, mu = 1e-3, lr = 1e-2;
    int steps = 2000;
    // The alignment term: "features" (the squared distance above, the spec's default) or "kl",
    // KL(softmax(W z(x) + b) || softmax(W P z_S(x) + b)), which keeps the predictions themselves.
    std::string align = "features";
    const std::atomic<bool>* cancel = nullptr;  // polled between steps; cancelling throws Error(Internal)
};

struct HeadEditResult {
    Edit edit;                            // method "vit_heads": W_O column deltas, classifier delta, artifacts
    std::vector<Head> heads;              // selected, in selection order
    at::Tensor scores;                    // [n_layer, n_head] aggregate head utility (mean over the edit images)
    at::Tensor flips;                     // [n_layer, n_head] edit images a single removal corrects
    at::Tensor projection;                // [n_embd, n_embd] float32 (identity when unused)
    double success_heads_only = 0;        // share of edit images corrected by the removal alone
    double success = 0;                   // after the whole edit
    double loss_ce = 0, loss_align = 0;   // final P losses
};

// edit_pixels [n, C, H, W] with the wanted classes; reference_pixels [m, C, H, W] unrelated images
// (P's alignment set; may be empty when use_projection is false).
HeadEditResult edit_heads(const Model& model, const at::Tensor& edit_pixels, const std::vector<int64_t>& targets,
                          const at::Tensor& reference_pixels, const HeadEditOptions& options = {});

struct FtEditOptions {
    std::vector<int> layers;      // empty: Where-to-Edit's 8th-10th of 12, scaled: floor(7L/12) .. floor(9L/12)
    double lr = 2e-5;             // RMSprop (one plain SGD step first), the reference's rate
    int max_steps = 100;
    double l1 = 0.0;              // c * mean |delta| over the tuned weights
    double ce_stop = 0.01;        // stop once every edit image is right and CE <= this
    const std::atomic<bool>* cancel = nullptr;
};

struct FtEditResult {
    Edit edit;  // method "vit_ft": dense deltas on fc1/fc2 of the tuned layers
    int steps = 0;
    double success = 0, loss = 0;
};

// The model's fc1/fc2 weights are swapped for trainable copies while it runs and restored after.
FtEditResult edit_ft(Model& model, const at::Tensor& edit_pixels, const std::vector<int64_t>& targets,
                     const FtEditOptions& options = {});
std::vector<int> default_ft_layers(int n_layer);

// ---------------------------------------------------------------------------------------------
// Metrics: predictions on image sets before and after an edit.

at::Tensor predict(const Model& model, const at::Tensor& pixels, int64_t batch = 256);  // [n] int64

struct VitEditMetrics {
    double success = 0;         // edit images now predicted as their target (%)
    double generalization = 0;  // held-out images of the same failure now right (%)
    double locality = 0;        // unrelated images whose prediction is unchanged (%)
    double accuracy_before = 0, accuracy_after = 0;  // in-distribution accuracy (%)
    int64_t n_edit = 0, n_general = 0, n_local = 0, n_accuracy = 0;
    nlohmann::json to_json() const;
};

// ---------------------------------------------------------------------------------------------
// The editing protocol on Shapes World (the demo ViT): failures of one class on the `counter`
// split (shape of that class on another class's background) are the edit and held-out sets;
// unrelated `test` images (other classes) measure locality; separate `test` images the base model
// gets right are P's reference set; all `test` classes measure in-distribution accuracy.

struct ShapesProtocolOptions {
    uint64_t seed = 777;           // rendering seed (training used 4321)
    int64_t counter_images = 4000; // counter images scanned for failures
    int64_t target_class = -1;     // -1: the class with the most failures
    int64_t n_edit = 16;           // failures edited; the other failures are held out
    int64_t n_reference = 1000, n_locality = 1000, n_accuracy = 1000;
    int64_t image_size = 32;
};

struct ShapesProtocolSets {
    int64_t target_class = 0;
    int64_t failures = 0;          // all failures of the class among the scanned counter images
    at::Tensor edit, general;      // [n, C, H, W] failures: edited / held out
    at::Tensor reference;          // P's alignment set
    at::Tensor locality;           // unrelated images (label != target_class)
    at::Tensor accuracy;           // in-distribution images
    at::Tensor accuracy_labels;    // [n_accuracy] int64
    at::Tensor locality_before;    // [n_locality] the base model's predictions
    double accuracy_before = 0;    // %
};

ShapesProtocolSets shapes_protocol_sets(const Model& base, const ShapesProtocolOptions& options = {});
// P's reference set on Shapes World: the first n `test` images (seed `seed`) that `model` classifies
// correctly are kept. Refuses a model that is not of the Shapes World classes.
at::Tensor shapes_reference(const Model& model, int64_t n, uint64_t seed = ShapesProtocolOptions{}.seed);
// The metrics of the edited model on the sets (the model must carry the edit).
VitEditMetrics measure_edit(const Model& edited, const ShapesProtocolSets& sets);

}  // namespace vit
}  // namespace engram
