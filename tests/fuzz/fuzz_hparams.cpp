// libFuzzer target: edit hyperparameter files (YAML or JSON, EasyEdit/reference layout). The input
// is the file; it is applied over the defaults of every method, with and without BLUE, and the
// result validated against a GPT-2-sized model. Each step must succeed or throw engram::Error.
#include "engram/edit_hparams.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    // The same bytes under both extensions, in case a reader looks at the name.
    const auto yaml = engram::fuzz::write_file("hparams.yaml", text);
    const auto json = engram::fuzz::write_file("hparams.json", text);
    const engram::ModelShape shape{"gpt2", 12, 768, 3072};
    using M = engram::EditMethod;
    for (M method : {M::Rome, M::Memit, M::MemitSeq, M::AlphaEdit, M::Pmet, M::Ft}) {
        for (bool blue : {false, true}) {
            for (const auto* file : {&yaml, &json}) {
                try {
                    engram::EditHParams hp = engram::default_edit_hparams(shape, method, blue);
                    engram::apply_hparams_file(hp, *file);
                    engram::validate_edit_hparams(hp, shape);
                    // Validated layers lie inside the model.
                    for (int l : hp.layers) engram::fuzz::check(l >= 0 && l < shape.n_layer);
                } catch (const engram::Error&) {
                }
            }
        }
    }
    return 0;
}
