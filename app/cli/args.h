// A small, strict command-line parser: `--key value` options (repeatable), options that take several
// values, boolean flags and positional words, all declared up front (normally by the command table),
// and an error naming the argument at fault for anything else. Nothing is dropped silently.
#pragma once

#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "command_spec.h"
#include "engram/error.h"

namespace engram::cli {

class Args {
public:
    // Parses `argv` against a command's entry in the command table: its options, flags, multi-valued
    // options and positional words. Anything else is refused with an error naming it.
    Args(const std::vector<std::string>& argv, const CommandSpec& spec) : command_(spec.name) {
        std::set<std::string> flags, options, many, words(spec.words.begin(), spec.words.end());
        for (const OptionSpec& o : spec.options) {
            (o.value.empty() ? flags : options).insert(o.name);
            if (o.many) many.insert(o.name);
        }
        parse(argv, flags, options, many, words);
    }
    // An ad-hoc option set (for commands that build their own argument lists); no positional words.
    Args(const std::vector<std::string>& argv, const std::set<std::string>& flags, const std::set<std::string>& options) {
        parse(argv, flags, options, {}, {});
    }

    // Throws when any of `keys` was given: for options that apply only to another mode of a command.
    void refuse(std::initializer_list<const char*> keys, const std::string& why) const {
        for (const char* k : keys)
            if (has(k) || flag(k)) throw Error(ErrorKind::Argument, "option --" + std::string(k) + " " + why);
    }

    bool flag(const std::string& key) const { return flags_.count(key) != 0; }
    bool has(const std::string& key) const { return values_.count(key) != 0; }
    const std::vector<std::string>& all(const std::string& key) const {
        static const std::vector<std::string> none;
        auto it = values_.find(key);
        return it == values_.end() ? none : it->second;
    }
    std::optional<std::string> get(const std::string& key) const {
        auto it = values_.find(key);
        if (it == values_.end()) return std::nullopt;
        if (it->second.size() > 1) throw Error(ErrorKind::Argument, "option --" + key + " given more than once");
        return it->second.front();
    }
    std::string require(const std::string& key) const {
        auto v = get(key);
        if (!v) throw Error(ErrorKind::Argument, "missing required option --" + key);
        return *v;
    }
    int64_t integer(const std::string& key, int64_t fallback, int64_t min_value = 0) const {
        auto v = get(key);
        if (!v) return fallback;
        size_t used = 0;
        int64_t n = 0;
        try {
            n = std::stoll(*v, &used);
        } catch (...) {
            used = 0;
        }
        if (used == 0 || used != v->size()) throw Error(ErrorKind::Argument, "option --" + key + " expects an integer, got '" + *v + "'");
        if (n < min_value) throw Error(ErrorKind::Argument, "option --" + key + " must be at least " + std::to_string(min_value));
        return n;
    }
    const std::vector<std::string>& positional() const { return positional_; }

private:
    void parse(const std::vector<std::string>& argv, const std::set<std::string>& flags, const std::set<std::string>& options,
               const std::set<std::string>& many, const std::set<std::string>& words) {
        std::string collecting;  // the multi-valued option whose values are being read
        for (size_t i = 0; i < argv.size(); ++i) {
            const std::string& a = argv[i];
            if (a.rfind("--", 0) != 0) {
                if (!collecting.empty()) {
                    values_[collecting].push_back(a);
                } else if (words.count(a) && positional_.empty()) {
                    positional_.push_back(a);
                } else {
                    std::string hint = command_.empty() ? "" : "see engram-cli " + command_ + " --help";
                    const std::string before = i >= 2 ? argv[i - 2] : "";
                    if (before.rfind("--", 0) == 0 && options.count(before.substr(2)))
                        hint = before + " takes one value" + (hint.empty() ? "" : "; " + hint);
                    if (!hint.empty()) hint = " (" + hint + ")";
                    throw Error(ErrorKind::Argument, "unexpected argument '" + a + "'" + hint);
                }
                continue;
            }
            collecting.clear();
            const std::string key = a.substr(2);
            if (flags.count(key)) {
                flags_.insert(key);
            } else if (options.count(key)) {
                if (i + 1 >= argv.size()) throw Error(ErrorKind::Argument, "option --" + key + " needs a value");
                values_[key].push_back(argv[++i]);
                if (many.count(key)) collecting = key;
            } else {
                throw Error(ErrorKind::Argument, "unknown option " + a + (command_.empty() ? "" : " (see engram-cli " + command_ + " --help)"));
            }
        }
    }

    std::string command_;
    std::set<std::string> flags_;
    std::map<std::string, std::vector<std::string>> values_;
    std::vector<std::string> positional_;
};

}  // namespace engram::cli
