// Reading tokenizer.json defensively: every accessor checks the type it expects and, when the file
// disagrees, throws engram::Error naming the file and the JSON path ("tok.json: model.vocab: ...").
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "engram/error.h"
#include "engram/file.h"

namespace engram::tok {

using Json = nlohmann::json;

struct Where {
    const std::string& source;
    std::string path;
    int depth = 0;  // nesting of Sequence components; bounded so hostile files cannot recurse deeply

    Where field(std::string_view key) const;
    Where index(size_t i) const;
    // One level deeper into a Sequence; throws past a sane depth.
    Where nested(std::string_view key) const;
    [[noreturn]] void fail(const std::string& what, ErrorKind kind = ErrorKind::Format) const;
};

// The member `key` of an object, or nullptr when it is absent or null (HF treats both alike).
const Json* find_field(const Json& obj, std::string_view key);
const Json& require_field(const Json& obj, std::string_view key, const Where& where);

std::string string_field(const Json& obj, std::string_view key, const Where& where);
std::string string_field_or(const Json& obj, std::string_view key, const Where& where,
                            std::string fallback);
std::optional<std::string> optional_string_field(const Json& obj, std::string_view key,
                                                 const Where& where);
bool bool_field_or(const Json& obj, std::string_view key, const Where& where, bool fallback);
int64_t int_field(const Json& obj, std::string_view key, const Where& where);
int64_t int_field_or(const Json& obj, std::string_view key, const Where& where, int64_t fallback);
// A string holding exactly one character (Metaspace's replacement, Strip's content).
std::string char_field(const Json& obj, std::string_view key, const Where& where,
                       std::optional<std::string> fallback = std::nullopt);

int64_t as_int(const Json& value, const Where& where);
std::string as_string(const Json& value, const Where& where);
const Json& as_object(const Json& value, const Where& where);
const Json& as_array(const Json& value, const Where& where);

// The whole file (engram/file.h); throws engram::Error(Io) naming it.
using engram::read_file;

}  // namespace engram::tok
