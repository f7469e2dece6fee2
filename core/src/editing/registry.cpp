// The method registry (methods.h): one line per method, and one line of help per setting.
#include "engram/methods.h"

#include "engram/error.h"

namespace engram {

// The settings every locate-then-edit target optimisation reads.
#define ENGRAM_TARGET_SETTINGS "fact_token", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay", "clamp_norm_factor", "kl_factor"

// The table is built inside edit_methods(), which EditSession befriends, so it may name the
// private compute members.
const std::vector<MethodInfo>& edit_methods() {
    static const std::vector<MethodInfo> kMethods = {
    {EditMethod::Rome, "ROME", "one rank-1 change of one MLP per fact (r-ROME fix on by default)", Produces::Deltas, false, true,
     {"layers", ENGRAM_TARGET_SETTINGS, "mom2_adjustment", "mom2_n_samples", "mom2_dataset", "rrome_fix", "context_template_length_params",
      "context_templates", "seed"},
     &EditSession::compute_rome},
    {EditMethod::Memit, "MEMIT", "a batch of facts spread over a band of MLP layers", Produces::Deltas, true, true,
     {"layers", ENGRAM_TARGET_SETTINGS, "mom2_update_weight", "mom2_n_samples", "mom2_dataset", "context_templates", "seed",
      "merge_same_subject", "blue"},
     &EditSession::compute_memit_family},
    {EditMethod::MemitSeq, "MEMIT_seq", "MEMIT that remembers the keys of earlier batches", Produces::Deltas, true, true,
     {"layers", ENGRAM_TARGET_SETTINGS, "mom2_update_weight", "mom2_n_samples", "mom2_dataset", "context_templates", "seed",
      "merge_same_subject", "blue"},
     &EditSession::compute_memit_family},
    {EditMethod::AlphaEdit, "AlphaEdit", "MEMIT projected onto the null space of preserved keys", Produces::Deltas, true, true,
     {"layers", ENGRAM_TARGET_SETTINGS, "mom2_n_samples", "mom2_dataset", "nullspace_threshold", "L2", "context_templates", "seed",
      "merge_same_subject", "blue"},
     &EditSession::compute_memit_family},
    {EditMethod::Pmet, "PMET", "MEMIT with attention and MLP targets optimised together", Produces::Deltas, true, true,
     {"layers", ENGRAM_TARGET_SETTINGS, "nll_loss_factor", "mom2_update_weight", "mom2_n_samples", "mom2_dataset", "context_templates",
      "seed", "merge_same_subject", "blue"},
     &EditSession::compute_memit_family},
    {EditMethod::Ft, "FT-L", "constrained fine-tuning of one MLP", Produces::Deltas, false, false,
     {"layers", "ft_lr", "ft_steps", "ft_norm_constraint"},
     &EditSession::compute_ft},
    {EditMethod::Grace, "GRACE", "a codebook beside one MLP: no weight changes", Produces::Adapters, false, false,
     {"layers", "grace_eps", "grace_edit_lr", "grace_n_iter", "grace_val_init", "grace_eps_expand", "grace_replacement", "seed"},
     &EditSession::compute_grace},
    {EditMethod::Hse, "HSE", "sequential MEMIT that forgets the old object and replays earlier batches' keys", Produces::Deltas, false, true,
     {"layers", ENGRAM_TARGET_SETTINGS, "forget_factor", "fisher_factor", "hse_fisher_form", "hse_replay", "hse_horizon", "hse_alpha_schedule",
      "hse_forget_space", "hse_forget_fallback", "mom2_update_weight", "mom2_n_samples", "mom2_dataset", "context_templates", "seed",
      "merge_same_subject"},
     &EditSession::compute_hse},
    };
    return kMethods;
}

#undef ENGRAM_TARGET_SETTINGS

namespace {

struct Help {
    const char* key;
    const char* text;
};

const Help kHelp[] = {
    {"blue", "BLUE: edit only the first and last layer of the band, a target for each"},
    {"layers", "the layers whose MLP down-projection is edited (or, for GRACE, wrapped)"},
    {"fact_token", "where the key is read: subject_last, subject_first or last (the prompt's last token)"},
    {"v_num_grad_steps", "Adam steps of the target-vector optimisation"},
    {"v_lr", "learning rate of the target-vector optimisation"},
    {"v_loss_layer", "the layer whose output the target loss reads (-1: the last)"},
    {"v_weight_decay", "weight decay on the target's change, relative to its start"},
    {"clamp_norm_factor", "the target's change is clamped to this many times the original norm"},
    {"kl_factor", "weight of the KL term that keeps the subject's other predictions (essence drift)"},
    {"mom2_adjustment", "ROME: solve against the key statistics C (off: u = k)"},
    {"mom2_update_weight", "lambda: weight of the preserved keys' statistics C against the new keys"},
    {"mom2_n_samples", "documents of the corpus C is computed on"},
    {"mom2_dataset", "the corpus file for C (empty: the model's demo corpus)"},
    {"rrome_fix", "r-ROME: the prefix-averaged key in both u and the denominator"},
    {"context_template_length_params", "ROME's generated context templates: [tokens, count] pairs"},
    {"context_templates", "pinned context templates (each with one {}); empty: generated"},
    {"seed", "seed of the generated templates (GRACE: of the cold value start)"},
    {"merge_same_subject", "requests on one subject share one key and one target (MEMIT-Merge)"},
    {"nullspace_threshold", "AlphaEdit: eigenvalues of C below this span the protected null space"},
    {"L2", "AlphaEdit: ridge weight on the update"},
    {"nll_loss_factor", "PMET: weight of the NLL term"},
    {"ft_lr", "FT-L: Adam learning rate"},
    {"ft_steps", "FT-L: Adam steps"},
    {"ft_norm_constraint", "FT-L: each weight may move at most this far from its start"},
    {"forget_factor", "HSE: weight f of forgetting the old object (the new target's NLL keeps 1 - f; 0: no forgetting)"},
    {"fisher_factor", "HSE: weight of the Fisher penalty that keeps the target's change off directions earlier edits used"},
    {"hse_fisher_form", "HSE: empirical (the authors' code: mean grad^2 of the loss, min-max normalised) or score (the paper's)"},
    {"hse_replay", "HSE: the long-term editing memory: earlier batches' keys in the solve (off: the paper's w/o LEM)"},
    {"hse_horizon", "HSE: the planned number of batches n in alpha = n/(i-1) (0: none, alpha = 1; eval sets it from edits/batch)"},
    {"hse_alpha_schedule", "HSE: inverse n/(i-1), constant 1, half_inverse n/2(i-1), double_inverse 2n/(i-1) or linear n-i+2"},
    {"hse_forget_space", "HSE: score the old object with a leading space like the new target (off: as the authors' code)"},
    {"hse_forget_fallback", "HSE: with no old object in the request, forget the model's greedy answer (greedy) or refuse (none)"},
    {"grace_eps", "GRACE: the radius a new codebook entry gets (eps_init)"},
    {"grace_edit_lr", "GRACE: Adam learning rate on the entry's value"},
    {"grace_n_iter", "GRACE: Adam steps per edit"},
    {"grace_val_init", "GRACE: a new value starts cold (U[0, 1)) or warm (the layer's current output)"},
    {"grace_eps_expand", "GRACE: on a same-label hit, coverage grows the radius; moving_average also moves the key"},
    {"grace_replacement", "GRACE: replace the output at the prompt's last token (last) or every prompt position (all)"},
};

}  // namespace

const MethodInfo& method_info(EditMethod method) {
    for (const MethodInfo& m : edit_methods())
        if (m.method == method) return m;
    throw Error(ErrorKind::Internal, "edit method " + std::to_string(static_cast<int>(method)) + " is not in the registry");
}

std::string method_name_list(bool last_or) {
    const auto& methods = edit_methods();
    std::string out;
    for (size_t i = 0; i < methods.size(); ++i) {
        if (i) out += last_or && i + 1 == methods.size() ? " or " : ", ";
        out += edit_method_name(methods[i].method);
    }
    return out;
}

const char* setting_help(std::string_view key) {
    for (const Help& h : kHelp)
        if (key == h.key) return h.text;
    return "";
}

nlohmann::ordered_json method_settings(const EditHParams& hp) {
    const nlohmann::json all = hp.to_json();
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    for (const char* key : method_info(hp.method).settings)
        if (all.contains(key)) out[key] = all[key];
    return out;
}

}  // namespace engram
