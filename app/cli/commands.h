#pragma once

#include <string>
#include <vector>

namespace engram::cli {

using Argv = std::vector<std::string>;

int cmd_info(const Argv& argv);
int cmd_tokenize(const Argv& argv);
int cmd_forward(const Argv& argv);
int cmd_predict(const Argv& argv);
int cmd_generate(const Argv& argv);
int cmd_classify(const Argv& argv);
int cmd_bench(const Argv& argv);
int cmd_tour(const Argv& argv);
int cmd_demo(const Argv& argv);

}  // namespace engram::cli
