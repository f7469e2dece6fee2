#include "engram/error.h"

namespace engram {

const char* error_kind_name(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::Io: return "io";
        case ErrorKind::Format: return "format";
        case ErrorKind::Config: return "config";
        case ErrorKind::Unsupported: return "unsupported";
        case ErrorKind::Argument: return "argument";
        case ErrorKind::Internal: return "internal";
    }
    return "unknown";
}

}  // namespace engram
