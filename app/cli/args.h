// A small, strict command-line parser: `--key value` options (repeatable), boolean flags declared
// up front, and an error naming the argument at fault for anything else.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engram/error.h"

namespace engram::cli {

class Args {
public:
    Args(const std::vector<std::string>& argv, const std::set<std::string>& flags, const std::set<std::string>& options) {
        for (size_t i = 0; i < argv.size(); ++i) {
            const std::string& a = argv[i];
            if (a.rfind("--", 0) != 0) {
                positional_.push_back(a);
                continue;
            }
            const std::string key = a.substr(2);
            if (flags.count(key)) {
                flags_.insert(key);
            } else if (options.count(key)) {
                if (i + 1 >= argv.size()) throw Error(ErrorKind::Argument, "option --" + key + " needs a value");
                values_[key].push_back(argv[++i]);
            } else {
                throw Error(ErrorKind::Argument, "unknown option " + a);
            }
        }
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
    std::set<std::string> flags_;
    std::map<std::string, std::vector<std::string>> values_;
    std::vector<std::string> positional_;
};

}  // namespace engram::cli
