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
  demo      train --world facts|shapes [--quick] [--out DIR] | info | data ...
  tour      [--model DIR]    a headless walk through what Engram can do

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
    {"demo", engram::cli::cmd_demo},
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
