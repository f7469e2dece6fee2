// The command table of engram-cli: every command's options, with what they take, their defaults and
// one example. The same table drives the argument parser (an option that is not in it is refused),
// `engram-cli COMMAND --help` and the top-level usage, so the three cannot drift apart.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace engram::cli {

struct OptionSpec {
    std::string name;     // without the leading "--"
    std::string value;    // the value's placeholder ("DIR", "N"); empty for a flag
    std::string help;     // one line, with the default where there is one
    bool many = false;    // takes several values: "--image a.png b.png" (and may be repeated)
};

struct CommandSpec {
    std::string name;                   // "classify", or "bench trace" for a subcommand
    std::string group;                  // heading in the top-level usage
    std::string summary;                // one line
    std::vector<std::string> words;     // positional words it accepts ("train", "info"); none for most
    std::vector<OptionSpec> options;
    std::string details;                // a paragraph after the options (may be empty)
    std::string example;                // one command line
};

const std::vector<CommandSpec>& command_specs();
// The spec named `name` ("bench trace"); throws engram::Error(Argument) for an unknown one.
const CommandSpec& command_spec(std::string_view name);
// What `engram-cli COMMAND --help` prints: summary, usage line, options with defaults, example.
std::string command_help(const CommandSpec& spec);
// The top-level usage: every command with its summary, grouped.
std::string usage_text();
// engram-cli(1) in troff, from the same table (`engram-cli --man`; the build installs it).
std::string man_page(const std::string& version);
// A bash completion script for commands, subcommand words and options (`engram-cli --bash-completion`).
std::string bash_completion();

}  // namespace engram::cli
