// libFuzzer target: the engram-history JSON that import-history reads (engram/history_file.h). The
// input is the file's text. Reading must succeed or throw engram::Error, and whatever it accepts must
// hold what the importer then relies on: every blob exactly the size its claim needs, every basis
// naming an earlier edit of the file, edits in seq order with unique ids.
#include <set>

#include "engram/history_file.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using engram::fuzz::check;
    try {
        const engram::HistoryFile f =
            engram::read_history_text(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
        check(f.version == 1 || f.version == 2);
        std::set<int64_t> earlier;
        int64_t last_seq = INT64_MIN;
        for (const engram::HistoryEdit& e : f.edits) {
            check(e.seq >= last_seq);
            last_seq = e.seq;
            check(e.parent == 0 || earlier.count(e.parent));
            for (const auto& x : e.exceptions) check(x.first == 0 || earlier.count(x.first));
            for (const engram::HistoryDelta& d : e.deltas) {
                const auto need = engram::delta_blob_bytes(d.kind, d.shape, d.dtype, d.rank);
                check(need && *need == d.bytes.size());
            }
            auto fits = [](const engram::HistoryTensor& t) {
                const auto need = engram::tensor_bytes(t.shape, engram::dtype_size(t.dtype));
                check(need && *need == t.bytes.size());
            };
            for (const engram::HistoryArtifact& a : e.artifacts) fits(a.tensor);
            for (const engram::HistoryAdapterOp& op : e.adapter_ops) {
                check(op.layer >= 0);
                for (const engram::HistoryTensor& t : op.tensors) fits(t);
            }
            check(earlier.insert(e.id).second);
        }
    } catch (const engram::Error&) {
    }
    return 0;
}
