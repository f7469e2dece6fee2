#include "arch/arch.h"

#include "engram/error.h"

namespace engram {

namespace {
const Family* const kFamilies[] = {&kGpt2Family, &kGptjFamily, &kLlamaFamily, &kVitFamily};
}

const Family& family_of(Arch arch) {
    for (const Family* f : kFamilies)
        if (f->arch == arch) return *f;
    throw Error(ErrorKind::Internal, "no family table for this architecture");
}

const Family* family_for_class(std::string_view hf_class) {
    for (const Family* f : kFamilies)
        for (const char* name : f->hf_classes)
            if (hf_class == name) return f;
    return nullptr;
}

std::vector<std::string> supported_classes() {
    std::vector<std::string> out;
    for (const Family* f : kFamilies)
        for (const char* name : f->hf_classes) out.emplace_back(name);
    return out;
}

std::vector<std::string> supported_architectures() { return supported_classes(); }

namespace {
const nlohmann::json* find_non_null(const nlohmann::json& c, const char* key) {
    auto it = c.find(key);
    if (it == c.end() || it->is_null()) return nullptr;
    return &*it;
}
Error bad_field(const char* key, const char* expected) {
    return Error(ErrorKind::Config, std::string("config.json: field '") + key + "' must be " + expected);
}
}  // namespace

int64_t config_int(const nlohmann::json& c, const char* key) {
    const auto* v = find_non_null(c, key);
    if (!v) throw Error(ErrorKind::Config, std::string("config.json: missing required field '") + key + "'");
    if (!v->is_number_integer()) throw bad_field(key, "an integer");
    return v->get<int64_t>();
}

int64_t config_int_or(const nlohmann::json& c, const char* key, int64_t fallback) {
    const auto* v = find_non_null(c, key);
    if (!v) return fallback;
    if (!v->is_number_integer()) throw bad_field(key, "an integer");
    return v->get<int64_t>();
}

double config_double_or(const nlohmann::json& c, const char* key, double fallback) {
    const auto* v = find_non_null(c, key);
    if (!v) return fallback;
    if (!v->is_number()) throw bad_field(key, "a number");
    return v->get<double>();
}

bool config_bool_or(const nlohmann::json& c, const char* key, bool fallback) {
    const auto* v = find_non_null(c, key);
    if (!v) return fallback;
    if (!v->is_boolean()) throw bad_field(key, "true or false");
    return v->get<bool>();
}

std::string config_string_or(const nlohmann::json& c, const char* key, const std::string& fallback) {
    const auto* v = find_non_null(c, key);
    if (!v) return fallback;
    if (!v->is_string()) throw bad_field(key, "a string");
    return v->get<std::string>();
}

void read_rope(const nlohmann::json& c, HParams& hp) {
    hp.rope_type = RopeType::Default;
    // transformers 5 writes rope_parameters; transformers 4 writes rope_theta + rope_scaling.
    const nlohmann::json* params = find_non_null(c, "rope_parameters");
    const nlohmann::json* scaling = params ? params : find_non_null(c, "rope_scaling");
    hp.rope_theta = config_double_or(params ? *params : c, "rope_theta", config_double_or(c, "rope_theta", 10000.0));
    if (!scaling) return;
    if (!scaling->is_object()) throw bad_field(params ? "rope_parameters" : "rope_scaling", "an object");
    std::string type = config_string_or(*scaling, "rope_type", config_string_or(*scaling, "type", "default"));
    if (type == "default") return;
    hp.rope_factor = config_double_or(*scaling, "factor", 1.0);
    if (type == "linear") {
        hp.rope_type = RopeType::Linear;
    } else if (type == "llama3") {
        hp.rope_type = RopeType::Llama3;
        hp.rope_low_freq_factor = config_double_or(*scaling, "low_freq_factor", 1.0);
        hp.rope_high_freq_factor = config_double_or(*scaling, "high_freq_factor", 4.0);
        hp.rope_original_max_pos = config_int_or(*scaling, "original_max_position_embeddings", 8192);
    } else {
        throw Error(ErrorKind::Unsupported, "config.json: rope scaling type '" + type +
                                                "' is not supported (supported: default, linear, llama3)");
    }
}

}  // namespace engram
