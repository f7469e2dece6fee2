// Reading a whole file, with the error every front end reports the same way.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace engram {

// The file's bytes. Throws engram::Error(Io) "PATH: cannot read WHAT (reason)"; `what` names the
// file's role for the user ("dataset", "the idf vector") and may be empty.
std::string read_file(const std::filesystem::path& path, std::string_view what = {});

// What a load may plan to allocate: the machine's physical memory (MemTotal), or
// $ENGRAM_MEMORY_LIMIT_MB when set (a shared machine, or a test of the refusal).
uint64_t memory_budget_bytes();

// Refuses, before anything is allocated, a load that would need more than memory_budget_bytes():
// throws Error(Argument) "WHAT needs N GiB of memory, more than the M GiB this machine has; nothing was loaded".
void require_memory(uint64_t bytes, std::string_view what);

}  // namespace engram
