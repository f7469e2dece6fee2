// The adapter kinds (adapter.h), for the set's registry and the methods that read their state.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engram/adapter.h"

namespace engram::adapters {

// GRACE (Hartvigsen et al. 2023): a codebook of (key, value, radius, label) entries on one linear
// module. A query (the module's input at the routed position) within the radius of its nearest key
// makes the module output that key's value there ("last") or at every position of the call ("all").
// Distances are Euclidean, computed in float64. A query matches when its distance is at most
// radius * (1 + kMatchSlack): the expand and split rules set a radius to the exact distance of the
// query that caused them, and the same prompt's key differs in its last bits between a single-row
// and a padded batch, so without the slack an edit would hold or not depending on the batch.
class GraceCodebook final : public Adapter {
public:
    static constexpr double kMatchSlack = 1e-4;
    struct Entry {
        std::string id;  // stable across replays: a hash of the inserting request
        at::Tensor key, value;  // [in], [out] float32
        double eps = 0;
        std::vector<int64_t> label;  // the target's token ids
    };

    GraceCodebook(int64_t out_features, int64_t in_features) : out_(out_features), in_(in_features) {}
    std::unique_ptr<Adapter> clone() const override { return std::make_unique<GraceCodebook>(*this); }
    void apply(const AdapterOp& op) override;
    void on_linear(const at::Tensor& x, at::Tensor& y, const at::Tensor& route) const override;
    void hash_into(Sha256& h) const override;
    nlohmann::json describe() const override;
    void to(c10::Device device) override;
    bool empty() const override { return entries_.empty(); }
    nlohmann::json explain(const at::Tensor& query) const override;

    const std::vector<Entry>& entries() const { return entries_; }
    const std::string& replacement() const { return replacement_; }
    // The nearest entry to each query row [R, in]: (index, distance) per row; index -1 when empty.
    std::vector<std::pair<int64_t, double>> nearest(const at::Tensor& queries) const;
    // Whether a distance to entry i falls inside its radius (with the slack above).
    bool within(int64_t i, double distance) const { return distance <= entries_[size_t(i)].eps * (1.0 + kMatchSlack); }

private:
    int64_t out_, in_;
    std::string replacement_ = "last";
    std::vector<Entry> entries_;
    // Stacked forms of the entries for routing, rebuilt after each op.
    at::Tensor keys_, keys_sq_, values_, eps_;  // [N, in] f64, [N] f64, [N, out] f32, [N] f64
    void restack();
    int64_t index_of(const std::string& id) const;  // -1 when absent
};

std::unique_ptr<Adapter> make_grace_codebook(int64_t out_features, int64_t in_features);
// The codebook on layer L's down-projection ("grace.L<L>.mlp.down") and an op on it.
std::string grace_codebook_name(int layer);
AdapterOp grace_op(int layer, const std::string& op, nlohmann::json params);

}  // namespace engram::adapters
