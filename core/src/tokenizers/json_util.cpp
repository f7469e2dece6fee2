#include "tokenizers/json_util.h"

#include "tokenizers/unicode.h"

namespace engram::tok {

namespace {
constexpr int kMaxDepth = 32;
}

Where Where::field(std::string_view key) const {
    return {source, path.empty() ? std::string(key) : path + "." + std::string(key), depth};
}

Where Where::index(size_t i) const { return {source, path + "[" + std::to_string(i) + "]", depth}; }

Where Where::nested(std::string_view key) const {
    Where w = field(key);
    w.depth = depth + 1;
    if (w.depth > kMaxDepth) w.fail("components nested more than " + std::to_string(kMaxDepth) + " deep");
    return w;
}

void Where::fail(const std::string& what, ErrorKind kind) const {
    throw Error(kind, source + ": " + (path.empty() ? std::string() : path + ": ") + what);
}

const Json* find_field(const Json& obj, std::string_view key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
}

const Json& require_field(const Json& obj, std::string_view key, const Where& where) {
    if (!obj.is_object()) where.fail("expected an object");
    const Json* v = find_field(obj, key);
    if (!v) where.field(key).fail("missing");
    return *v;
}

int64_t as_int(const Json& value, const Where& where) {
    if (value.is_number_unsigned()) {
        auto v = value.get<uint64_t>();
        if (v > static_cast<uint64_t>(INT64_MAX)) where.fail("integer out of range");
        return static_cast<int64_t>(v);
    }
    if (value.is_number_integer()) return value.get<int64_t>();
    where.fail(std::string("expected an integer, found ") + value.type_name());
}

std::string as_string(const Json& value, const Where& where) {
    if (!value.is_string()) where.fail(std::string("expected a string, found ") + value.type_name());
    return value.get<std::string>();
}

const Json& as_object(const Json& value, const Where& where) {
    if (!value.is_object()) where.fail(std::string("expected an object, found ") + value.type_name());
    return value;
}

const Json& as_array(const Json& value, const Where& where) {
    if (!value.is_array()) where.fail(std::string("expected an array, found ") + value.type_name());
    return value;
}

std::string string_field(const Json& obj, std::string_view key, const Where& where) {
    return as_string(require_field(obj, key, where), where.field(key));
}

std::string string_field_or(const Json& obj, std::string_view key, const Where& where,
                            std::string fallback) {
    const Json* v = find_field(obj, key);
    return v ? as_string(*v, where.field(key)) : std::move(fallback);
}

std::optional<std::string> optional_string_field(const Json& obj, std::string_view key,
                                                 const Where& where) {
    const Json* v = find_field(obj, key);
    if (!v) return std::nullopt;
    return as_string(*v, where.field(key));
}

bool bool_field_or(const Json& obj, std::string_view key, const Where& where, bool fallback) {
    const Json* v = find_field(obj, key);
    if (!v) return fallback;
    if (!v->is_boolean()) where.field(key).fail(std::string("expected a boolean, found ") + v->type_name());
    return v->get<bool>();
}

int64_t int_field(const Json& obj, std::string_view key, const Where& where) {
    return as_int(require_field(obj, key, where), where.field(key));
}

int64_t int_field_or(const Json& obj, std::string_view key, const Where& where, int64_t fallback) {
    const Json* v = find_field(obj, key);
    return v ? as_int(*v, where.field(key)) : fallback;
}

std::string char_field(const Json& obj, std::string_view key, const Where& where,
                       std::optional<std::string> fallback) {
    const Json* v = find_field(obj, key);
    if (!v) {
        if (fallback) return *fallback;
        where.field(key).fail("missing");
    }
    std::string s = as_string(*v, where.field(key));
    if (s.empty() || utf8_count(s) != 1) where.field(key).fail("expected a single character, found \"" + s + "\"");
    return s;
}


}  // namespace engram::tok
