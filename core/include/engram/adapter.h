// Edits that live beside the weights: adapters installed in a model and run inside every forward.
//
// An adapter attaches to one linear module of one layer (today the MLP down-projection,
// Slot::FfnDown: its input is Site::MlpKey, its output Site::MlpOut) and may replace that
// module's output. Like a weight delta, an adapter is never changed in place: an edit carries
// AdapterOps (insert a codebook entry, set a radius, set a value, ...), each one names its adapter
// and holds absolute values, and the model's state is the base plus the ops of the active edits
// applied in sequence order. Undo and rollback replay the ops of the edits that stay; nothing is
// subtracted. An op on an entry that no longer exists (its inserting edit was reverted) is
// skipped, so replaying a history without one edit is well defined.
//
// Routing. Adapters that route on one position per sequence (GRACE) read ForwardInput::
// route_position: per row, the index among the call's new positions of the last prompt token, or
// -1 for none. Undefined, it is each row's last real token. Teacher-forced scoring passes the
// prompt's last token; generate() routes on the prefill and not on the cached steps, so a
// generation equals the uncached forward of the same text routed on the prompt.
//
// To add an adapter kind: derive from Adapter in core/src/adapters/<kind>.cpp and add one line to
// make_adapter() in core/src/adapters/adapter_set.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace engram {

class Sha256;
enum class Slot;

// Where an adapter attaches, in the names the store and the CLI use: "mlp.down".
const char* attach_module_name(Slot slot);
// The slot for a module name; throws Error(Argument) naming the names there are.
Slot attach_slot_from_name(const std::string& name);

// One change to one adapter. Tensors are CPU float32.
struct AdapterOp {
    std::string adapter;   // the adapter's name, unique in a model: "grace.L5.mlp.down"
    std::string kind;      // "grace_codebook"
    Slot slot;             // the linear module it wraps
    int layer = 0;
    std::string op;        // kind-specific: "insert", "set_eps", "set_value", "set_key"
    nlohmann::json params = nlohmann::json::object();
    std::vector<std::pair<std::string, at::Tensor>> tensors;  // named, in a fixed order

    const at::Tensor& tensor(const std::string& name) const;  // throws Error(Format) when missing
};

class Adapter {
public:
    virtual ~Adapter() = default;
    virtual std::unique_ptr<Adapter> clone() const = 0;
    // Applies one op; throws Error(Argument/Format) for an op this kind does not know or a tensor of
    // the wrong shape, leaving the adapter as it was.
    virtual void apply(const AdapterOp& op) = 0;
    // x: the wrapped linear's input [B, T, in]; y: its output [B, T, out], replaced where the adapter
    // routes. route: [B] int64 (see above).
    virtual void on_linear(const at::Tensor& x, at::Tensor& y, const at::Tensor& route) const = 0;
    // Everything that decides the adapter's behaviour, in a canonical order.
    virtual void hash_into(Sha256& h) const = 0;
    virtual nlohmann::json describe() const = 0;  // {"entries": N, ...} for history and info
    virtual void to(c10::Device device) = 0;
    virtual bool empty() const = 0;               // no entries: removed from the set
    // What the adapter does with one query (the wrapped linear's input at the routed position,
    // [in]): {"replaced": bool, ...kind-specific (GRACE: entry, distance, eps)}.
    virtual nlohmann::json explain(const at::Tensor& query) const = 0;
};

// The adapters installed in a model. Copies share the adapters (an op replaces the adapter it
// changes with a changed copy), so copying a set is a cheap, exact snapshot.
class AdapterSet {
public:
    bool empty() const { return by_name_.empty(); }
    // Applies `op`, creating the adapter on its first op (sized by the wrapped weight's [out, in]).
    // Model::apply_adapter_op checks the attach point and layer against the model first.
    void apply(const AdapterOp& op, int64_t out_features, int64_t in_features);
    void remove(const std::string& name) { by_name_.erase(name); }
    void clear() { by_name_.clear(); }
    const Adapter* find(const std::string& name) const;
    void on_linear(Slot slot, int layer, const at::Tensor& x, at::Tensor& y, const at::Tensor& route) const;
    void hash_into(Sha256& h) const;
    void to(c10::Device device);

    struct Installed {
        std::string name, kind;
        Slot slot;
        int layer;
        nlohmann::json description;
    };
    std::vector<Installed> list() const;  // by name

private:
    struct Entry {
        std::string kind;
        Slot slot;
        int layer;
        std::shared_ptr<const Adapter> adapter;
    };
    std::map<std::string, Entry> by_name_;
};

class Model;

// Why the installed adapters change (or leave) a prompt's output: each adapter's view of the
// prompt's last token, for the Prompt view and `predict`.
struct AdapterRoute {
    std::string adapter, kind;
    int layer = 0;
    bool replaced = false;
    nlohmann::json detail;  // Adapter::explain
};
std::vector<AdapterRoute> explain_adapters(const Model& model, const std::vector<int64_t>& prompt_ids);
// One line: "grace.L4.mlp.down replaced the layer-4 MLP output: entry 1f2e... at distance 0.00 <= radius 1.00".
std::string describe_route(const AdapterRoute& route);

}  // namespace engram
