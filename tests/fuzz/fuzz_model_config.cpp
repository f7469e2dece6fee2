// libFuzzer target: config.json for every family (engram/model_config.h). The input is the file's
// text. Parsing must succeed or throw engram::Error, and a parsed config must hold sizes within the
// stated bounds and consistent with each other (what the loader then allocates by).
#include <nlohmann/json.hpp>

#include "engram/model_config.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using engram::fuzz::check;
    const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return 0;
    try {
        const engram::ModelConfig c = engram::parse_model_config(j);
        const engram::HParams& h = c.hparams;
        check(h.n_layer >= 1 && h.n_layer <= engram::kMaxConfigLayers);
        for (int64_t v : {h.n_embd, h.n_head, h.n_head_kv, h.head_dim, h.n_ff}) check(v >= 1 && v <= engram::kMaxConfigWidth);
        check(h.n_vocab >= 1 && h.n_vocab <= engram::kMaxConfigVocab);
        check(h.n_ctx >= 1);
        check(h.n_head % h.n_head_kv == 0);
        check(h.rotary_dim >= 0 && h.rotary_dim <= h.head_dim);
        check(engram::arch_for_class(c.hf_class) == c.arch);
        if (c.arch == engram::Arch::Vit) {
            check(static_cast<int64_t>(c.labels.size()) == h.n_labels);
            check(h.image_size % h.patch_size == 0);
        }
    } catch (const engram::Error&) {
    }
    return 0;
}
