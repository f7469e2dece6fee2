#include "command_spec.h"

#include <cctype>
#include <sstream>

#include "engram/error.h"
#include "engram/methods.h"

namespace engram::cli {

namespace {

// Options several commands share.
OptionSpec model_dir(const std::string& fallback) {
    return {"model", "DIR", "a Hugging Face checkpoint folder (default: " + fallback + ")"};
}
const OptionSpec kDevice{"device", "D", "cpu (default) or cuda[:N] when libtorch was built with CUDA"};
const OptionSpec kTokenizer{"tokenizer", "DIR", "read the tokenizer from DIR instead of the model folder"};
const OptionSpec kDbModel{"db", "F", "run on the edited model of project F (its base model from --model or the recorded folder)"};
const OptionSpec kJsonFlag{"json", "", "print JSON instead of text"};
const OptionSpec kSet{"set", "KEY=VALUE", "override one hyperparameter; repeatable"};
const OptionSpec kHparams{"hparams", "FILE", "hyperparameters from a YAML or JSON file (EasyEdit/ROME names accepted)"};
const OptionSpec kCorpus{"corpus", "FILE", "text corpus for the key statistics C (default: the demo world's corpus)"};
OptionSpec db_required() { return {"db", "F", "the project file (*.engram)"}; }
const OptionSpec kDbModelFolder{"model", "DIR", "the base model folder (default: the folder the project recorded)"};

std::vector<CommandSpec> build() {
    const std::string lm = "the Fact World demo model";
    const std::string vit = "the Shapes World demo ViT";
    std::vector<CommandSpec> s;

    // --- models ---
    s.push_back({"info", "models", "describe a model: architecture, shapes, parameters, tokenizer, fingerprint", {},
                 {model_dir(lm), kDevice, kTokenizer, kDbModel, kJsonFlag}, "", "engram-cli info --model ./gpt2 --json"});
    s.push_back({"tokenize", "models", "encode a text with a model's tokenizer and print the ids and tokens as JSON", {},
                 {{"model", "DIR", "read the tokenizer from this model folder"},
                  kTokenizer,
                  {"text", "TEXT", "the text to encode (required)"},
                  {"add-special-tokens", "", "add the tokenizer's special tokens (BOS/EOS) as the model would"},
                  {"json", "", "accepted for symmetry: the output is always JSON"}},
                 "One of --model or --tokenizer is required.", "engram-cli tokenize --model ./gpt2 --text \"The Eiffel Tower\""});
    s.push_back({"forward", "models", "one forward pass on inputs from a safetensors file; writes the logits and every block, attention and MLP output", {},
                 {model_dir(lm), kDevice, kTokenizer, kDbModel,
                  {"inputs", "IN", "safetensors file with input_ids (and optionally attention_mask or pixel_values) (required)"},
                  {"out", "OUT", "safetensors file the logits are written to (required)"}},
                 "", "engram-cli forward --model ./gpt2 --inputs in.safetensors --out logits.safetensors"});
    s.push_back({"predict", "models", "the next-token distribution after one or more prompts", {},
                 {model_dir(lm), kDevice, kTokenizer, kDbModel,
                  {"prompt", "P", "a prompt; repeatable"},
                  {"prompts-file", "F", "one prompt per line (empty lines skipped)"},
                  {"top-k", "K", "how many tokens to show (default 5)"},
                  kJsonFlag},
                 "At least one --prompt or --prompts-file is required.", "engram-cli predict --prompt \"Ada Okafor lives in\" --top-k 3"});
    s.push_back({"generate", "models", "continue a prompt, greedily or by top-k sampling (KV-cached)", {},
                 {model_dir(lm), kDevice, kTokenizer, kDbModel,
                  {"prompt", "P", "the prompt (required)"},
                  {"max-new-tokens", "N", "tokens to generate (default 20)"},
                  {"top-k", "K", "sample from the K most likely tokens; 0 is greedy (default 0)"},
                  {"seed", "S", "sampling seed (default 0)"},
                  kJsonFlag},
                 "", "engram-cli generate --prompt \"Ada Okafor lives in\" --max-new-tokens 8"});
    s.push_back({"classify", "models", "classify images with a ViT", {},
                 {model_dir(vit), kDevice, kTokenizer, kDbModel,
                  {"image", "FILE", "one or more images (PNG, JPEG, BMP...); the option may also be repeated", true},
                  {"top-k", "K", "how many classes to show per image (default 5)"},
                  {"json", "", "print one JSON line per image"}},
                 "", "engram-cli classify --image a.png b.png c.png --top-k 3"});

    // --- benchmarks ---
    s.push_back({"bench", "benchmarks", "forward throughput or checkpoint loading on a random GPT-2-small-shaped model", {"forward", "load"},
                 {{"batch", "B", "forward: sequences per batch (default 8)"},
                  {"seq", "T", "forward: tokens per sequence, at most 1024 (default 128)"},
                  {"iters", "N", "forward: timed iterations (default 3)"},
                  {"codebook", "N", "forward: also time it with a GRACE codebook of N random entries installed (default 0: no)"},
                  kDevice},
                 "bench forward prints the forward pass's GFLOP/s beside a square matmul's in the same run; bench load times "
                 "mapping and fingerprinting a ~500 MB checkpoint. Also: bench trace, bench edit, bench stats (see their --help).",
                 "engram-cli bench forward --batch 4 --seq 64"});
    s.push_back({"bench trace", "benchmarks", "naive against fast causal tracing on a random GPT-2-small-shaped model", {},
                 {{"seq", "T", "prompt length in tokens, at least 3 (default 11)"},
                  {"samples", "N", "noise samples per patched run (default 10)"},
                  {"layers", "L", "layers of the random model (default 12)"},
                  {"fast-only", "", "time only the fast path"},
                  kJsonFlag},
                 "", "engram-cli bench trace --samples 4"});
    s.push_back({"bench edit", "benchmarks", "ROME, MEMIT and AlphaEdit: the reference path against the default one, in the same run; HSE's time per edit", {},
                 {{"rome-edits", "N", "ROME edits timed (default 3)"},
                  {"memit-batch", "N", "requests in the MEMIT and AlphaEdit batch timed on the default path (default 100)"},
                  {"compare-batch", "N", "requests in the batch both paths run, 0 to skip the slow reference (default 10)"},
                  {"hse-edits", "N", "sequential single HSE edits timed, with its Cholesky solve against LU (default 3, 0 to skip)"},
                  {"stats-docs", "N", "demo-corpus documents for each layer's C, computed before timing (default 2000; at least ~500 so that C has full rank)"}},
                 "The model has a GPT-2-small shape, random weights and the Fact World vocabulary; C, P and the templates are "
                 "computed before timing starts. Prints old and new seconds side by side with the relative difference of the "
                 "weight changes, then one ROME edit on the Fact World demo model (also with 1 and 2 intra-op threads).",
                 "engram-cli bench edit --rome-edits 2 --memit-batch 10 --compare-batch 4"});
    s.push_back({"bench stats", "benchmarks", "the key statistics C from large corpora: time and peak memory, which must not grow with the corpus", {},
                 {{"tokens", "N[,N...]", "corpus sizes in tokens (default 1000000,10000000); repeatable"},
                  {"layer", "L", "the Fact World layer (default 1)"}},
                 "Each corpus cycles the Fact World corpus to the size asked for and is written to the temp folder (about 5 MB per "
                 "million tokens), then removed. Prints tokens/s and the resident set before and at its peak during each run "
                 "(the peak is reset between runs through /proc/self/clear_refs).",
                 "engram-cli bench stats --tokens 100000,1000000"});

    // --- causal tracing ---
    s.push_back({"trace", "tracing", "causal tracing (ROME): where a fact is stored, as a heatmap over tokens and layers", {},
                 {model_dir(lm), kDevice, kTokenizer, kDbModel,
                  {"prompt", "P", "the prompt (required unless --dataset)"},
                  {"subject", "S", "the subject, as it occurs in the prompt (required unless --dataset)"},
                  {"target", "T", "the answer traced (default: the model's top prediction)"},
                  {"kind", "K", "hidden, mlp, attn or all (default all)"},
                  {"samples", "N", "noise samples per run (default 10)"},
                  {"noise", "RULE", "s3 (3x the subject embeddings' std, the default), a number, uX (uniform) or tNU (Student t)"},
                  {"replace", "", "replace the subject embeddings with noise instead of adding it"},
                  {"window", "W", "layers restored together for mlp/attn (default: a fifth of the depth, at least 1; 10 on 48 layers)"},
                  {"seed", "S", "noise seed (default 1)"},
                  {"sever", "mlp|attn", "also trace with that sublayer frozen at its corrupted value"},
                  {"subjects", "FILE", "subjects for the noise scale, one per line"},
                  {"naive", "", "one full forward per cell instead of the fast path (slow; for checking)"},
                  {"dataset", "FILE", "trace every record of a known_1000-style file (or 'demo') and average per token bucket"},
                  {"limit", "N", "with --dataset: the first N records (default all)"},
                  {"json", "OUT", "write the result as JSON"},
                  {"csv", "OUT", "write the result as CSV"},
                  {"png", "OUT", "write the heatmap as PNG"},
                  {"pdf", "OUT", "write the heatmap as PDF"},
                  {"svg", "OUT", "write the heatmap as SVG"},
                  {"quiet", "", "no progress bar"}},
                 "", "engram-cli trace --prompt \"Ada Okafor lives in\" --subject \"Ada Okafor\" --png trace.png"});

    // --- demo worlds ---
    s.push_back({"demo", "demo worlds", "train, describe or render the built-in demo worlds", {"train", "info", "data"},
                 {{"world", "facts|shapes", "which world (train and data)"},
                  {"quick", "", "train: a small model in seconds instead of the shipped one"},
                  {"out", "DIR", "train: where the model goes (default factworld or shapes); data: where the images go (required)"},
                  {"seed", "S", "train: world and training seed (default 1234 for facts, the shipped seed for shapes); data: image seed (default 1)"},
                  {"surnames", "N", "train --world facts: draw surnames from a shared pool of N (default: everyone has their own)"},
                  {"steps", "N", "train: optimisation steps (default 1600 facts / 2400 shapes; --quick 60 / 40)"},
                  {"split", "train|test|counter", "data: which Shapes World split (required)"},
                  {"n", "N", "data: how many images (default 100)"}},
                 "demo train writes a model folder; demo info describes both worlds; demo data writes Shapes World images with labels.json.",
                 "engram-cli demo train --world facts --quick"});
    s.push_back({"tour", "demo worlds", "a headless walk through what Engram can do, every figure measured now", {},
                 {{"model", "DIR", "tour this checkpoint instead of the demo models"}}, "", "engram-cli tour"});

    // --- locate-then-edit ---
    s.push_back({"edit", "editing", "edit one fact (or a batch from a file); prints p(new) and p(old) before and after", {},
                 {model_dir(lm),
                  {"method", "M", method_name_list() + " (+blue where BLUE applies); synthetic (see below) (required)"},
                  {"blue", "", "BLUE: edit the boundary layers (first and last of the method's layers)"},
                  {"prompt", "P", "the prompt with {} where the subject goes, e.g. \"{} was born in\""},
                  {"subject", "S", "the subject"},
                  {"target", "T", "the new object"},
                  {"target-true", "T", "the old object, for the before/after report"},
                  {"requests", "FILE", "edit requests from a JSON file (CounterFact or a list of {prompt, subject, target_new})"},
                  {"db", "F", "record the edit in project F (created if needed)"},
                  kHparams, kSet, kCorpus, kJsonFlag,
                  {"layer", "L", "synthetic: the layer edited (required)"},
                  {"rank", "R", "synthetic: the delta's rank (default 1)"},
                  {"seed", "S", "synthetic: the delta's seed (default 0)"},
                  {"scale", "X", "synthetic: the delta's scale (default 0.02)"},
                  {"artifact-kib", "N", "synthetic: attach an artifact of N KiB (default 0)"}},
                 "--method synthetic records a seeded random low-rank delta (needs --db and, for a new project, --model); it "
                 "tests the project store without any optimisation.",
                 "engram-cli edit --method rome --prompt \"{} lives in\" --subject \"Ada Okafor\" --target Lisbon --db demo.engram"});
    s.push_back({"eval", "editing", "the sequential batch protocol: T cases edited in batches of B, then scored; a row per method", {},
                 {model_dir(lm),
                  {"method", "M[,M...]", "methods to compare (" + method_name_list(false) + ", +blue where BLUE applies), e.g. memit,memit+blue; "
                   "@key=value after a method sets that row alone, e.g. hse,hse@forget_factor=0 (required)"},
                  {"blue", "", "apply BLUE to every method"},
                  {"dataset", "FILE", "CounterFact, zsRE or MQuAKE records (default: the demo world's counterfact.json)"},
                  {"format", "F", "counterfact, counterfact_flat, zsre or mquake (default: detected)"},
                  {"zsre-target", "answer|alt", "zsRE: edit towards the answer or the alternative (default answer)"},
                  {"edits", "T", "cases edited (default: 1000 or the dataset's size)"},
                  {"batch", "B", "cases per batch (default 100)"},
                  {"checkpoint-every", "K", "also score after every K edits (default 0: only at the end)"},
                  {"single", "", "restore the weights after each batch and score its cases right after their edit"},
                  {"distinct-subjects", "", "the first T cases with pairwise distinct subjects"},
                  {"fluency-cases", "N", "cases generated from for fluency (default 50)"},
                  {"unedited-cases", "N", "cases after the first T scored for the unedited-facts accuracy (default 200)"},
                  {"perplexity-file", "F", "held-out text for perplexity"},
                  {"snippets", "F", "attribute snippets for consistency (RS); needs --tfidf"},
                  {"tfidf", "DIR", "TF-IDF idf.npy and vocabulary; needs --snippets"},
                  {"seed", "S", "sampling seed (default 0)"},
                  {"json", "OUT", "write the table as JSON"},
                  {"csv", "OUT", "write the table as CSV"},
                  {"db", "F", "record every edit in project F"},
                  kHparams, kSet, kCorpus,
                  {"quiet", "", "no progress"}},
                 "Ctrl-C stops the run in progress; the methods that finished are still reported and saved.",
                 "engram-cli eval --method memit,memit+blue --edits 200 --batch 50"});
    s.push_back({"stats", "editing", "precompute and cache the key statistics C = E[k k^T] for some layers", {},
                 {model_dir(lm),
                  {"layers", "L[,L...]", "layers (required; repeatable)"},
                  kCorpus,
                  {"samples", "N", "corpus documents read, in file order (default 100000)"}},
                 "", "engram-cli stats --layers 2,3,4"});

    // --- vision transformers ---
    s.push_back({"attribute", "vision", "per-head direct logit attribution of a ViT's prediction (sums to the logit)", {},
                 {model_dir(vit), kDevice, kDbModel,
                  {"image", "FILE", "the image (required)"},
                  {"class", "C", "the class explained, by name or id (default: the predicted class)"},
                  {"contrast", "C|runner-up", "explain the logit difference to class C or the runner-up"},
                  {"ablation", "zero|mean", "single-head ablation kind (default zero)"},
                  {"no-ablation", "", "skip the ablation effects"},
                  {"patch-maps", "", "per-head patch maps"},
                  {"attention", "", "CLS attention maps"},
                  {"json", "OUT", "write the attribution as JSON"},
                  {"png", "OUT", "write the figure as PNG"},
                  {"pdf", "OUT", "write the figure as PDF"},
                  {"svg", "OUT", "write the figure as SVG"}},
                 "", "engram-cli attribute --image circle.png --contrast runner-up --png heads.png"});
    s.push_back({"vit-edit", "vision", "head-level ViT editing: remove the responsible heads and fit P (or fine-tune the MLPs)", {},
                 {model_dir(vit), kDevice,
                  {"edit-images", "DIR|FILE", "the misclassified images to correct: folders or files (required)", true},
                  {"target-class", "C", "the class they should get (required)"},
                  {"method", "heads|ft", "head-level editing or MLP fine-tuning (default heads)"},
                  {"locality-images", "DIR|FILE", "P's reference images (default: rendered Shapes World test images)", true},
                  {"db", "F", "record the edit in project F"},
                  kSet, kJsonFlag},
                 "--set keys: k_max, tau, max_reference_change, lambda, mu, lr, steps, use_heads, use_projection, ablation, "
                 "score, align; fine-tuning: ft_lr, ft_steps, ft_l1, ft_ce_stop, ft_layers.",
                 "engram-cli vit-edit --edit-images failures/ --target-class circle --db shapes.engram"});
    s.push_back({"eval-vit", "vision", "the Shapes World editing protocol: one table, a row per method (and swept value)", {},
                 {model_dir(vit), kDevice,
                  {"method", "M[,M...]", "heads, heads-only, projection-only, ft (default heads,ft)"},
                  {"failure-split", "counter", "the split whose failures are edited (only counter)"},
                  {"class", "C|all", "the class edited (default: the one with most failures)"},
                  {"edit-images", "N", "failures edited (default 16)"},
                  {"counter-images", "N", "counter images scanned for failures (default 4000)"},
                  {"locality", "N", "unrelated images for locality (default 1000)"},
                  {"reference", "N", "reference images for P (default 1000)"},
                  {"accuracy", "N", "images for accuracy (default 1000)"},
                  {"seed", "S", "rendering seed (default 777)"},
                  {"sweep", "KEY=V1,V2,...", "one row per value, e.g. lambda=0.1,1,10"},
                  kSet,
                  {"diagnostic", "", "also zero each layer's attention or MLP output on test images and print the prediction flip rates"},
                  {"json", "OUT", "write the table as JSON"},
                  {"csv", "OUT", "write the table as CSV"},
                  {"db", "F", "record the edits in project F"}},
                 "", "engram-cli eval-vit --method heads,ft --sweep lambda=0.1,1,10"});

    // --- projects ---
    s.push_back({"history", "projects", "list a project's edits", {},
                 {db_required(), kDbModelFolder, kJsonFlag,
                  {"verify", "", "replay every edit and check each recorded state hash"},
                  {"edit", "N", "show edit N in full"}},
                 "", "engram-cli history --db demo.engram --verify"});
    s.push_back({"undo", "projects", "undo the last active edit", {}, {db_required(), kDbModelFolder}, "", "engram-cli undo --db demo.engram"});
    s.push_back({"redo", "projects", "redo the last undone edit", {}, {db_required(), kDbModelFolder}, "", "engram-cli redo --db demo.engram"});
    s.push_back({"rollback", "projects", "go back to the state right after edit N (0: the base model)", {},
                 {db_required(), kDbModelFolder, {"to", "N", "the edit to return to (default 0)"}}, "",
                 "engram-cli rollback --db demo.engram --to 2"});
    s.push_back({"revert", "projects", "revert one edit out of order; the later ones are replayed", {},
                 {db_required(), kDbModelFolder, {"edit", "N", "the edit reverted (required)"}}, "",
                 "engram-cli revert --db demo.engram --edit 1"});
    s.push_back({"replay", "projects", "replay the history onto another copy of the model and check every hash", {},
                 {db_required(), {"model", "DIR", "the model copy (required)"}, kJsonFlag}, "",
                 "engram-cli replay --db demo.engram --model ./copy-of-model"});
    s.push_back({"hash", "projects", "the state hash: base fingerprint plus edited tensors, digest printed last", {},
                 {{"model", "DIR", "the model folder (required without --db)"}, {"db", "F", "hash the project's current state"}}, "",
                 "engram-cli hash --db demo.engram"});
    s.push_back({"export-model", "projects", "write the edited model as a Hugging Face checkpoint folder", {},
                 {db_required(), kDbModelFolder, {"out", "DIR", "the folder written (required)"},
                  {"dtype", "F32|F16|BF16", "weight type written (default F32)"}},
                 "", "engram-cli export-model --db demo.engram --out edited-model"});
    s.push_back({"export-history", "projects", "write the project's edits as a JSON file others can import", {},
                 {db_required(), {"out", "FILE", "the JSON file (required)"}}, "", "engram-cli export-history --db demo.engram --out edits.json"});
    s.push_back({"import-history", "projects", "replay an exported history into a project (created if needed)", {},
                 {db_required(), {"in", "FILE", "the JSON file (required)"}, {"model", "DIR", "the base model (a new project needs it)"}}, "",
                 "engram-cli import-history --db copy.engram --in edits.json --model ./gpt2"});
    return s;
}

}  // namespace

const std::vector<CommandSpec>& command_specs() {
    static const std::vector<CommandSpec> specs = build();
    return specs;
}

const CommandSpec& command_spec(std::string_view name) {
    for (const CommandSpec& c : command_specs())
        if (c.name == name) return c;
    throw Error(ErrorKind::Argument, "unknown command '" + std::string(name) + "'");
}

std::string command_help(const CommandSpec& spec) {
    std::ostringstream o;
    o << "engram-cli " << spec.name << ": " << spec.summary << "\n\nusage: engram-cli " << spec.name;
    if (!spec.words.empty()) {
        o << " ";
        for (size_t i = 0; i < spec.words.size(); ++i) o << (i ? "|" : "") << spec.words[i];
    }
    o << " [options]\n\noptions:\n";
    size_t width = 0;
    auto lhs = [](const OptionSpec& op) {
        std::string t = "--" + op.name;
        if (!op.value.empty()) t += " " + op.value + (op.many ? "..." : "");
        return t;
    };
    for (const OptionSpec& op : spec.options) width = std::max(width, lhs(op).size());
    for (const OptionSpec& op : spec.options) {
        const std::string l = lhs(op);
        o << "  " << l << std::string(width - l.size() + 2, ' ') << op.help << "\n";
    }
    o << "  --help" << std::string(width > 6 ? width - 6 + 2 : 2, ' ') << "this text\n";
    if (!spec.details.empty()) o << "\n" << spec.details << "\n";
    o << "\nexample:\n  " << spec.example << "\n";
    return o.str();
}

std::string usage_text() {
    std::ostringstream o;
    o << "usage: engram-cli <command> [options]     engram-cli <command> --help for a command's options\n";
    std::string group;
    for (const CommandSpec& c : command_specs()) {
        if (c.group != group) {
            group = c.group;
            o << "\n" << group << ":\n";
        }
        o << "  " << c.name << std::string(c.name.size() < 16 ? 16 - c.name.size() : 1, ' ') << c.summary << "\n";
    }
    o << "\nWithout --model, the language-model commands use the Fact World demo model and the vision commands the\n"
         "Shapes World demo ViT. Every --model command also takes --db F (the project's edited model).\n"
         "engram-cli --version prints the version.\n";
    return o.str();
}

namespace {

// Text for troff: backslashes doubled, a leading dot or quote guarded.
std::string roff(const std::string& text) {
    std::string out;
    for (char c : text) out += c == '\\' ? std::string("\\e") : c == '-' ? std::string("\\-") : std::string(1, c);
    if (!out.empty() && (out[0] == '.' || out[0] == '\'')) out = "\\&" + out;
    return out;
}

std::string option_lhs(const OptionSpec& op) {
    std::string t = "--" + op.name;
    if (!op.value.empty()) t += " " + op.value + (op.many ? "..." : "");
    return t;
}

}  // namespace

std::string man_page(const std::string& version) {
    std::ostringstream o;
    o << ".TH ENGRAM-CLI 1 \"\" \"engram " << version << "\" \"User Commands\"\n"
      << ".SH NAME\nengram\\-cli \\- locate, edit, verify and undo what a transformer knows, headless\n"
      << ".SH SYNOPSIS\n.B engram\\-cli\n.I command\n[\\fIoptions\\fR]\n.br\n.B engram\\-cli\n.I command\n.B \\-\\-help\n"
      << ".SH DESCRIPTION\n"
      << "engram\\-cli runs Engram's model editing tools without a display: causal tracing, the locate\\-then\\-edit "
         "methods, their evaluation, vision transformer attribution and editing, and *.engram projects. Without "
         "\\-\\-model, the language\\-model commands use the built\\-in Fact World model and the vision commands "
         "the Shapes World ViT. Errors are one line on standard error; the exit code is 2 for a wrong argument and "
         "1 for any other failure.\n";
    std::string group;
    for (const CommandSpec& c : command_specs()) {
        if (c.group != group) {
            group = c.group;
            std::string heading = group;
            for (char& ch : heading) ch = char(std::toupper(static_cast<unsigned char>(ch)));
            o << ".SH " << roff(heading) << "\n";
        }
        o << ".SS " << roff(c.name);
        for (size_t i = 0; i < c.words.size(); ++i) o << (i ? "|" : " ") << roff(c.words[i]);
        o << "\n" << roff(c.summary) << ".\n";
        for (const OptionSpec& op : c.options) o << ".TP\n.B " << roff(option_lhs(op)) << "\n" << roff(op.help) << "\n";
        if (!c.details.empty()) o << ".PP\n" << roff(c.details) << "\n";
        o << ".PP\nExample:\n.RS\n.nf\n" << roff(c.example) << "\n.fi\n.RE\n";
    }
    o << ".SH SEE ALSO\n.BR engram (1)\n";
    return o.str();
}

std::string bash_completion() {
    std::ostringstream o;
    o << "# bash completion for engram-cli, generated from its command table (engram-cli --bash-completion)\n"
      << "_engram_cli() {\n"
      << "    local cur=\"${COMP_WORDS[COMP_CWORD]}\" cmd=\"${COMP_WORDS[1]}\" sub=\"${COMP_WORDS[2]}\" words=\"\"\n"
      << "    if [ \"$COMP_CWORD\" -eq 1 ]; then\n        COMPREPLY=($(compgen -W \"";
    std::string last;
    for (const CommandSpec& c : command_specs()) {
        const std::string top = c.name.substr(0, c.name.find(' '));
        if (top != last) o << top << " ";
        last = top;
    }
    o << "--help --version\" -- \"$cur\"))\n        return\n    fi\n"
      << "    case \"$cmd $sub\" in\n";
    // Subcommands first ("bench trace"), then whole commands.
    for (int pass = 0; pass < 2; ++pass) {
        for (const CommandSpec& c : command_specs()) {
            const bool sub = c.name.find(' ') != std::string::npos;
            if (sub != (pass == 0)) continue;
            o << "        \"" << c.name << (sub ? "\"" : " \"*") << ")";
            o << " words=\"";
            if (!sub) {
                for (const std::string& w : c.words) o << w << " ";
                for (const CommandSpec& s2 : command_specs())
                    if (s2.name.rfind(c.name + " ", 0) == 0) o << s2.name.substr(c.name.size() + 1) << " ";
            }
            for (const OptionSpec& op : c.options) o << "--" << op.name << " ";
            o << "--help\" ;;\n";
        }
    }
    o << "    esac\n"
      << "    case \"${COMP_WORDS[COMP_CWORD-1]}\" in\n"
      << "        --model|--tokenizer|--out|--in|--db|--inputs|--image|--edit-images|--locality-images|--dataset|--hparams|--corpus|"
         "--json|--csv|--png|--pdf|--svg|--requests|--prompts-file|--subjects|--snippets|--tfidf|--perplexity-file)\n"
      << "            COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n"
      << "    esac\n"
      << "    COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
      << "}\n"
      << "complete -o default -F _engram_cli engram-cli\n";
    return o.str();
}

}  // namespace engram::cli
