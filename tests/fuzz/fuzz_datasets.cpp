// libFuzzer target: the dataset loaders. The input is one dataset file (a JSON array or JSON
// Lines), read as every format in turn (auto, CounterFact nested and flat, zsRE with either
// target, MQuAKE). Each read must succeed or throw engram::Error, and what it accepts must keep
// the loaders' promises.
#include "engram/datasets.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto file = engram::fuzz::write_file("dataset.json", {reinterpret_cast<const char*>(data), size});
    using F = engram::eval::DatasetFormat;
    for (F format : {F::Auto, F::CounterFact, F::CounterFactFlat, F::Zsre, F::Mquake}) {
        for (auto target : {engram::eval::ZsreTarget::Answer, engram::eval::ZsreTarget::Alt}) {
            if (target == engram::eval::ZsreTarget::Alt && format != F::Zsre && format != F::Auto) continue;
            engram::eval::DatasetOptions o;
            o.format = format;
            o.zsre_target = target;
            try {
                const engram::eval::Dataset d = engram::eval::load_dataset(file, o);
                // What the loaders promise: every rewrite's prompt is a template with one "{}".
                for (const auto& c : d.cases) {
                    engram::fuzz::check(!c.rewrites.empty());
                    for (const auto& r : c.rewrites) engram::fuzz::check(engram::eval::count_placeholders(r.prompt) == 1);
                }
            } catch (const engram::Error&) {
            }
        }
    }
    return 0;
}
