// Reading a whole file, with the error every front end reports the same way.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace engram {

// The file's bytes. Throws engram::Error(Io) "PATH: cannot read WHAT (reason)"; `what` names the
// file's role for the user ("dataset", "the idf vector") and may be empty.
std::string read_file(const std::filesystem::path& path, std::string_view what = {});

}  // namespace engram
