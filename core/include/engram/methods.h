// The edit methods behind one interface (the registry): what each is called, what it produces,
// the hyperparameters it reads, with a line of help each, and how it computes an edit. The CLI's
// --method list, the GUI's method menus and settings forms, and the session's dispatch all read it.
//
// To add a method: add its EditMethod and its settings (edit_hparams.h, with their defaults and
// checks in editing/hparams.cpp), write core/src/editing/<method>.cpp with its compute function
// (an EditSession member), and add one line to kMethods in core/src/editing/registry.cpp.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/editing.h"

namespace engram {

enum class Produces { Deltas, Adapters };

struct MethodInfo {
    EditMethod method;     // its name, as --method takes it: edit_method_name(method)
    const char* title;     // as menus show it
    const char* summary;   // one line
    Produces produces;
    bool blue;             // BLUE applies (+blue)
    bool templates;        // uses context templates (and the key statistics C where mom2_adjustment applies)
    std::vector<const char*> settings;  // the hyperparameters it reads, in form order
    Edit (EditSession::*compute)(const std::vector<EditRequest>& requests);
};

// In menu order.
const std::vector<MethodInfo>& edit_methods();
const MethodInfo& method_info(EditMethod method);
// "rome, memit, ..." (with " or " before the last when `last_or`).
std::string method_name_list(bool last_or = true);
// One line of help for a hyperparameter key ("" for an unknown key).
const char* setting_help(std::string_view key);
// The hyperparameters `hp`'s method reads, key -> value, in the method's order (for forms and
// --help; EditHParams::to_json() keeps every field).
nlohmann::ordered_json method_settings(const EditHParams& hp);

}  // namespace engram
