// engram::Error: the one exception type the core throws.
//
// Every stage (load, tokenize, forward, trace, edit, store) rewraps with what it was doing and for
// which file, tensor or argument, so that the CLI can print one line and the GUI one dialog.
#pragma once

#include <stdexcept>
#include <string>

namespace engram {

enum class ErrorKind {
    Io,           // a file could not be opened, read, mapped or written
    Format,       // a file is malformed (safetensors header, JSON, image, merges)
    Config,       // config.json disagrees with the tensors, or a field is missing / out of range
    Unsupported,  // an architecture, dtype or tokenizer model we do not handle
    Argument,     // a caller (CLI user, GUI form) passed something invalid
    Internal,     // a bug: an invariant that should have held did not
};

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
public:
    Error(ErrorKind kind, const std::string& message)
        : std::runtime_error(message), kind_(kind) {}

    ErrorKind kind() const noexcept { return kind_; }

    // A new error of the same kind whose message is "context: <old message>".
    Error with_context(const std::string& context) const {
        return Error(kind_, context + ": " + what());
    }

private:
    ErrorKind kind_;
};

}  // namespace engram
