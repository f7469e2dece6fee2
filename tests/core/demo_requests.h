// The Fact World demo model's folder and edit requests from its counterfact.json, for the core
// tests that edit the demo model (ENGRAM_SOURCE_RESOURCES names the source tree's resources/).
#pragma once

#include <filesystem>
#include <vector>

#include "engram/datasets.h"
#include "engram/editing.h"
#include "engram/evaluate.h"

namespace engram::test {

inline std::filesystem::path demo_dir() { return std::filesystem::path(ENGRAM_SOURCE_RESOURCES) / "demo" / "factworld"; }

// The first request of cases [offset, offset + n) of the demo's counterfact.json.
inline std::vector<EditRequest> counterfact(int n, int offset = 0) {
    eval::DatasetOptions o;
    o.limit = n + offset;
    eval::Dataset ds = eval::load_dataset(demo_dir() / "counterfact.json", o);
    std::vector<EditRequest> out;
    for (int i = offset; i < n + offset; ++i) out.push_back(eval::requests_of(ds.cases[size_t(i)]).at(0));
    return out;
}

}  // namespace engram::test
