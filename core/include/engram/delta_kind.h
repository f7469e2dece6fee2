// How a stored weight delta is laid out (edit.h has the application rule). Torch-free, so that the
// history-file reader and its fuzzer need no libtorch.
#pragma once

#include <optional>
#include <string_view>

namespace engram {

enum class DeltaKind { LowRank, DenseRows, Dense };
const char* delta_kind_name(DeltaKind kind);  // "low_rank", "dense_rows", "dense"
std::optional<DeltaKind> delta_kind_from_name(std::string_view name);

}  // namespace engram
