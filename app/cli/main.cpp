// engram-cli: the headless face of Engram. Every command maps errors to one line on stderr naming
// the file, tensor or argument at fault, and a non-zero exit code; nothing is allowed to crash.
#include <c10/util/Exception.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "command_spec.h"
#include "commands.h"
#include "engram/error.h"
#include "engram/runtime.h"

namespace {

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

// `engram-cli bench trace --help` names the spec "bench trace"; other commands their own.
std::string spec_name(const std::string& name, const engram::cli::Argv& rest) {
    if (name == "bench" && !rest.empty() && (rest[0] == "trace" || rest[0] == "edit" || rest[0] == "stats")) return name + " " + rest[0];
    return name;
}

bool wants_help(const engram::cli::Argv& rest) {
    for (const std::string& a : rest)
        if (a == "--help" || a == "-h") return true;
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string usage = engram::cli::usage_text();
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
        std::fputs(usage.c_str(), argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (std::string(argv[1]) == "--man") {  // for the build: the manual page, from the command table
        std::cout << engram::cli::man_page(ENGRAM_VERSION);
        return 0;
    }
    if (std::string(argv[1]) == "--bash-completion") {
        std::cout << engram::cli::bash_completion();
        return 0;
    }
    if (std::string(argv[1]) == "--version") {
        std::cout << "engram-cli " << ENGRAM_VERSION << " (commit " << ENGRAM_GIT_COMMIT << ")\n";
        return 0;
    }
    const std::string name = argv[1];
    engram::cli::Argv rest(argv + 2, argv + argc);
    for (const Command& c : kCommands) {
        if (name != c.name) continue;
        if (wants_help(rest)) {
            std::cout << engram::cli::command_help(engram::cli::command_spec(spec_name(name, rest)));
            return 0;
        }
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
    std::cerr << "engram-cli: unknown command '" << name << "'\n" << usage;
    return 2;
}
