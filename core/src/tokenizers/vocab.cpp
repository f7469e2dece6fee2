#include "engram/error.h"
#include "tokenizers/models.h"

namespace engram::tok {

void Vocab::insert(std::string token, int64_t id) {
    map_.insert_or_assign(std::move(token), static_cast<int32_t>(id));
}

void Vocab::finish(const std::string& source) {
    int64_t max_id = -1;
    for (const auto& [token, id] : map_) max_id = std::max<int64_t>(max_id, id);
    // Real vocabularies are dense; allow generous holes but not a 2^31-entry table for one token.
    const int64_t limit = 2 * static_cast<int64_t>(map_.size()) + 65536;
    if (max_id >= limit) {
        throw Error(ErrorKind::Format, source + ": vocabulary id " + std::to_string(max_id) +
                                           " is far beyond its " + std::to_string(map_.size()) +
                                           " entries");
    }
    reverse_.assign(static_cast<size_t>(max_id + 1), nullptr);
    for (const auto& [token, id] : map_) {
        // Two tokens sharing an id: keep the lexicographically smaller so that the choice does not
        // depend on hash order.
        const std::string*& slot = reverse_[static_cast<size_t>(id)];
        if (!slot || token < *slot) slot = &token;
    }
}

}  // namespace engram::tok
