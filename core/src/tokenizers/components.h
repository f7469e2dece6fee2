// Factories for the pipeline components named in a tokenizer.json ("type": "Split", ...).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tokenizers/json_util.h"
#include "tokenizers/normalized_string.h"
#include "tokenizers/pipeline.h"
#include "tokenizers/regex.h"

namespace engram::tok {

// tokenizer.json's {"String": "..."} / {"Regex": "..."} patterns (Split, Replace).
class TextPattern {
public:
    static TextPattern from_json(const Json& value, const Where& where);
    static TextPattern literal(std::string s);
    std::vector<PatternPiece> find(std::string_view text) const;

private:
    std::string literal_;
    std::shared_ptr<const Regex> regex_;  // shared: components are immutable once built
};

// HF's Metaspace prepend_scheme.
enum class PrependScheme { First, Never, Always };
PrependScheme prepend_scheme_from_json(const Json& obj, const Where& where);

// Each returns nullptr for a JSON null and throws engram::Error(Unsupported) for a type we do
// not implement, naming it.
std::unique_ptr<Normalizer> normalizer_from_json(const Json& value, const Where& where);
std::unique_ptr<PreTokenizer> pre_tokenizer_from_json(const Json& value, const Where& where);
std::unique_ptr<PostProcessor> post_processor_from_json(const Json& value, const Where& where);
std::unique_ptr<Decoder> decoder_from_json(const Json& value, const Where& where);

}  // namespace engram::tok
