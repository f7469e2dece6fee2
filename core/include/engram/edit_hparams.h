// Hyperparameters of the locate-then-edit methods (specs/locate_then_edit.md §1, §3-§6): one value
// type for every method, a default table per architecture and depth, EasyEdit-style YAML files and
// `--set key=value` overrides. Torch-free (engram_eval_base).
//
// Names follow the reference code (v_lr, v_num_grad_steps, mom2_update_weight, L2, ...) so that a
// researcher's hparams file reads the same here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace engram {

enum class EditMethod { Rome, Memit, MemitSeq, AlphaEdit, Pmet, Ft, Grace, Hse };
// "rome", "memit", "memit_seq", "alphaedit", "pmet", "ft", "grace", "hse"
const char* edit_method_name(EditMethod method);
// Accepts our names and the reference alg_name spellings ("ROME", "MEMIT", "AlphaEdit", "PMET", "FT", "R-ROME").
std::optional<EditMethod> edit_method_from_name(std::string_view name);

// What the default table is chosen by: the model family and shape.
struct ModelShape {
    std::string family;   // "gpt2", "gptj", "llama", "vit"
    int64_t n_layer = 0;
    int64_t n_embd = 0;
    int64_t n_ff = 0;
    int64_t n_vocab = 0;  // tells Mistral-7B from Llama-3-8B, which share every other number here
};

struct EditHParams {
    EditMethod method = EditMethod::Rome;
    bool blue = false;              // BLUE: two boundary layers, a target per layer, no residual division
    std::vector<int> layers;        // edited layers (ascending); with blue, exactly two
    std::string fact_token = "subject_last";  // subject_last | subject_first | last

    // Target-vector optimisation (compute_v / compute_z, spec §1.6).
    int v_num_grad_steps = 20;
    double v_lr = 0.5;
    int v_loss_layer = -1;          // -1: the last layer
    double v_weight_decay = 0.5;
    double clamp_norm_factor = 4.0;
    double kl_factor = 0.0625;

    // Second-moment statistics C (spec §1.5).
    bool mom2_adjustment = true;          // ROME: u = C^-1 k (false: u = k)
    double mom2_update_weight = 20000;    // MEMIT/PMET lambda
    int64_t mom2_n_samples = 100000;      // documents
    std::string mom2_dataset;             // corpus file (text: one document per line; .jsonl: {"text": ...}); "" = the model's demo corpus

    // ROME.
    bool rrome_fix = true;          // r-ROME: the prefix-averaged key in both u and the denominator (spec §3 "Known bug")

    // Context templates (spec §1.3). Pinned templates win over generation.
    std::vector<std::vector<int>> context_template_length_params = {{5, 10}, {10, 10}};  // ROME: [tokens, count]
    std::vector<std::vector<std::string>> context_templates;  // each holds "{}"; ROME uses them flattened
    uint64_t seed = 0;              // sampling of generated templates

    // MEMIT family: requests on the same subject share one key, so they get one target, optimised on
    // all their prompts together (MEMIT-Merge, Dong et al. 2025). Off: one target per request, as the
    // reference code does, and same-subject requests in a batch then conflict.
    bool merge_same_subject = false;

    // AlphaEdit.
    double nullspace_threshold = 2e-2;
    double L2 = 10.0;

    // PMET.
    double nll_loss_factor = 1.0;

    // FT-L (constrained fine-tuning of one MLP down-projection).
    double ft_lr = 5e-4;
    int ft_steps = 25;
    double ft_norm_constraint = 5e-4;   // L-inf bound on the change of each weight entry

    // GRACE (a codebook adapter on the down-projection of layers[0]; adapter.h). Reference names:
    // eps, edit_lr, n_iter, val_init, eps_expand, replacement.
    double grace_eps = 1.0;                     // the radius a new entry gets (eps_init)
    double grace_edit_lr = 1.0;                 // Adam on the entry's value
    int grace_n_iter = 100;                     // Adam steps per edit
    std::string grace_val_init = "cold";        // cold: U[0, 1) (seeded); warm: the layer's current output
    std::string grace_eps_expand = "coverage";  // coverage | moving_average
    std::string grace_replacement = "last";     // last: the prompt's last token; all: every position of the prompt

    // HSE (hippocampal-like sequential editing: MEMIT one batch at a time with forgetting, a Fisher
    // penalty and the replayed keys of earlier batches; docs/methods.md "HSE"). Reference names:
    // forget_factor, fisher_factor.
    double forget_factor = 0.2;                 // f: f x unlikelihood of the old object + (1 - f) x NLL of the new
    double fisher_factor = 1e-4;                // lambda of the Fisher penalty on the target's change
    std::string hse_fisher_form = "empirical";  // empirical: the code's mean grad^2 of the whole loss, min-max
                                                // normalised; score: the paper's grad^2 of log p(new) at the optimum, sum of lambda_i F_i
    bool hse_replay = true;                     // the long-term editing memory: earlier batches' post-edit keys in the solve
    int64_t hse_horizon = 0;                    // n: the planned number of batches (0: not planned; the schedule is then 1)
    std::string hse_alpha_schedule = "inverse"; // weight of the replayed keys at batch i: inverse n/(i-1), constant 1,
                                                // half_inverse n/2(i-1), double_inverse 2n/(i-1), linear n-i+2
    bool hse_forget_space = true;               // the old object is scored with a leading space like the new one
                                                // (false: as the reference code tokenizes CounterFact's target_true)
    std::string hse_forget_fallback = "greedy"; // no target_true and no recorded prediction: greedy (the model's
                                                // own answer before the edit) or none (an error)

    nlohmann::json to_json() const;
    // Reads what to_json() wrote (and tolerates missing keys: they keep the current values).
    void merge_json(const nlohmann::json& j);
};

// The default table: our demo model and the GPT-2 XL, GPT-J and Llama-3-8B shapes; other depths get
// layers scaled from the nearest entry of the same family. The method's own values (MEMIT clamp 0.75,
// AlphaEdit L2, BLUE's two layers and retuned L2, ...) are filled in.
EditHParams default_edit_hparams(const ModelShape& shape, EditMethod method, bool blue);

// An EasyEdit/reference hparams file (YAML or JSON): known keys override `hp`; module templates
// (rewrite_module_tmp, ...), model_name, stats_dir, device and the like are accepted and ignored;
// an unknown key, a wrong type or an alg_name naming another method throws Error(Format) naming the key.
void apply_hparams_file(EditHParams& hp, const std::filesystem::path& file);
// One `key=value` override. Lists are JSON ("layers=[1,2]", "context_templates=[[\"{}\"],[\"A. {}\"]]")
// or comma-separated numbers ("layers=1,2"); booleans true/false/1/0. Throws Error(Argument).
void apply_hparam_setting(EditHParams& hp, std::string_view key_equals_value);
// Checks values against the model: layers in [0, n_layer), ascending, non-empty; two layers with
// blue; BLUE only for MEMIT, MEMIT_seq, AlphaEdit and PMET; every template with exactly one "{}";
// positive steps and learning rates. Throws Error(Argument) naming the setting.
void validate_edit_hparams(const EditHParams& hp, const ModelShape& shape);

}  // namespace engram
