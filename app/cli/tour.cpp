#include "commands.h"
namespace engram::cli { int cmd_tour(const Argv&) { return 0; } }
