// engram-cli: the headless face of Engram. Every command maps errors to one line on stderr naming
// the file, tensor or argument at fault, and a non-zero exit code; nothing is allowed to crash.
#include <c10/util/Exception.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "commands.h"
#include "engram/error.h"
#include "engram/runtime.h"

namespace {

const char* kUsage = R"(usage: engram-cli <command> [options]

commands:
  info      --model DIR [--json] [--device D]
  tokenize  (--model DIR | --tokenizer DIR) --text TEXT [--add-special-tokens] [--json]
  forward   --model DIR --inputs IN.safetensors --out OUT.safetensors [--device D]
  predict   --model DIR (--prompt P)... [--prompts-file F] [--top-k K] [--tokenizer DIR] [--json] [--device D]
  generate  --model DIR --prompt P --max-new-tokens N [--top-k K --seed S] [--tokenizer DIR] [--device D]
  classify  --model DIR --image FILE... [--top-k K] [--json] [--device D]
  bench     forward [--batch B --seq T --iters N --device D]
  bench     load     time loading a ~500 MB F32 checkpoint
  bench     trace [--json] [--seq T --samples N --layers L --fast-only]   naive vs fast causal trace
  bench     edit [--rome-edits N --memit-batch N]   ROME s/edit and MEMIT s/batch on a GPT-2-small shape
  trace     --model DIR --prompt P --subject S [--target T] [--kind hidden|mlp|attn|all] [--samples N]
            [--noise s3|FLOAT|uX|tNU] [--replace] [--window W] [--seed S] [--sever mlp|attn] [--subjects FILE]
            [--naive] [--json OUT] [--csv OUT] [--png OUT] [--pdf OUT] [--svg OUT] [--quiet]
  trace     --dataset FILE|demo [--limit N] ... average indirect effects per token bucket (ROME Fig. 2)
  demo      train --world facts|shapes [--quick] [--out DIR] | info | data ...
  tour      [--model DIR]    a headless walk through what Engram can do

editing (locate-then-edit; without --model the Fact World demo model):
  edit      --method rome|memit|memit_seq|alphaedit|pmet|ft [--blue] --prompt "{} was born in" --subject S --target T
            [--target-true T] [--requests FILE] [--db F] [--model DIR] [--hparams FILE] [--set key=value]... [--corpus FILE] [--json]
            prints p(new) and p(old) before and after; with --db the edit is recorded (F is created if needed)
  eval      --method M[,M...] [--blue] [--dataset FILE] [--edits T] [--batch B] [--checkpoint-every K] [--single] [--distinct-subjects] [--fluency-cases N] [--snippets F --tfidf DIR]
            [--json OUT] [--csv OUT] [--db F] [--hparams FILE] [--set key=value]... [--corpus FILE] [--format F] [--zsre-target answer|alt]
            the sequential batch protocol: T cases edited in batches of B, evaluated after all edits; one row per method
            (--single: the weights are restored after each batch, whose cases are scored right after their edit;
             --distinct-subjects: the first T cases with pairwise distinct subjects, as MEMIT's multi_counterfact)
  stats     --layers L[,L...] [--model DIR] [--corpus FILE] [--samples N]   precompute and cache C = E[k k^T]

vision transformers (without --model the Shapes World demo ViT):
  attribute --image F [--class C] [--contrast C|runner-up] [--ablation zero|mean] [--no-ablation] [--patch-maps] [--attention]
            [--json OUT] [--png OUT] [--pdf OUT] [--svg OUT] [--model DIR] [--db F]
            per-head direct logit attribution (sums to the logit), single-head ablation effects, patch maps
  vit-edit  --edit-images DIR|FILE... --target-class C [--method heads|ft] [--locality-images DIR] [--db F] [--model DIR]
            [--set key=value]... [--json]   remove the responsible heads and fit P (or fine-tune MLPs); recorded with --db
  eval-vit  [--method heads,heads-only,projection-only,ft] [--failure-split counter] [--class C|all] [--edit-images N]
            [--counter-images N] [--locality N] [--reference N] [--accuracy N] [--sweep lambda=0.1,1,10] [--set key=value]...
            [--diagnostic] [--json OUT] [--csv OUT] [--db F]   the Shapes World protocol: one table, one row per method (and value)

projects (a *.engram file: the base model plus every edit, replayable bit for bit):
  edit            --db F --model DIR --method synthetic --layer L [--rank R --seed S --scale X --artifact-kib N] [--json]
                  (creates F when it does not exist; synthetic = a seeded random low-rank test delta)
  history         --db F [--json] [--verify] [--edit N]   (--edit: one edit in full)
  undo | redo     --db F
  rollback        --db F --to N        back to the state right after edit N (0: the base model)
  revert          --db F --edit N      revert one edit out of order; the others are replayed
  replay          --db F --model DIR   replay the history onto another copy of the model and check every hash
  hash            --model DIR [--db F] the state hash (base fingerprint + edited tensors); digest printed last
  export-model    --db F --out DIR [--dtype F32|F16|BF16]
  export-history  --db F --out FILE.json
  import-history  --db F --in FILE.json [--model DIR]
  Every --model command also takes --db F (then it runs on the edited model; --model defaults to
  the project's recorded model folder).

D is cpu (default) or cuda[:N] when libtorch was built with CUDA.
)";

struct Command {
    const char* name;
    int (*run)(const engram::cli::Argv&);
};

constexpr Command kCommands[] = {
    {"info", engram::cli::cmd_info},         {"tokenize", engram::cli::cmd_tokenize}, {"forward", engram::cli::cmd_forward},
    {"predict", engram::cli::cmd_predict},   {"generate", engram::cli::cmd_generate}, {"classify", engram::cli::cmd_classify},
    {"bench", engram::cli::cmd_bench},       {"tour", engram::cli::cmd_tour},
    {"demo", engram::cli::cmd_demo},         {"trace", engram::cli::cmd_trace},
    {"edit", engram::cli::cmd_edit},         {"history", engram::cli::cmd_history},   {"undo", engram::cli::cmd_undo},
    {"redo", engram::cli::cmd_redo},         {"rollback", engram::cli::cmd_rollback}, {"revert", engram::cli::cmd_revert},
    {"replay", engram::cli::cmd_replay},     {"hash", engram::cli::cmd_hash},         {"export-model", engram::cli::cmd_export_model},
    {"export-history", engram::cli::cmd_export_history}, {"import-history", engram::cli::cmd_import_history},
    {"eval", engram::cli::cmd_eval},         {"stats", engram::cli::cmd_stats},
    {"attribute", engram::cli::cmd_attribute}, {"vit-edit", engram::cli::cmd_vit_edit}, {"eval-vit", engram::cli::cmd_eval_vit},
};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
        std::fputs(kUsage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const std::string name = argv[1];
    engram::cli::Argv rest(argv + 2, argv + argc);
    for (const Command& c : kCommands) {
        if (name != c.name) continue;
        try {
            engram::init_runtime();
            return c.run(rest);
        } catch (const engram::Error& e) {
            std::cerr << "engram-cli " << name << ": error: " << e.what() << "\n";
            return e.kind() == engram::ErrorKind::Argument ? 2 : 1;
        } catch (const c10::Error& e) {
            std::cerr << "engram-cli " << name << ": error: libtorch: " << e.what_without_backtrace() << "\n";
            return 1;
        } catch (const std::exception& e) {
            std::cerr << "engram-cli " << name << ": error: " << e.what() << "\n";
            return 1;
        }
    }
    std::cerr << "engram-cli: unknown command '" << name << "'\n" << kUsage;
    return 2;
}
