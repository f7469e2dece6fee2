// libFuzzer target: ROME's TF-IDF files, above all the idf.npy reader. The input is idf.npy; the
// vocabulary beside it is fixed (two tokens, columns 0 and 1). Loading must succeed or throw
// engram::Error, and a loaded vectorizer holds a column for each vocabulary token.
#include "engram/datasets.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    engram::fuzz::write_file("tfidf_vocab.json", R"({"paris": 0, "france": 1})");
    engram::fuzz::write_file("idf.npy", {reinterpret_cast<const char*>(data), size});
    try {
        const engram::eval::Tfidf t = engram::eval::Tfidf::load(engram::fuzz::scratch());
        engram::fuzz::check(t.size() >= 2);
        t.similarity("Paris is in France", "france paris");
        t.idf("paris");
    } catch (const engram::Error&) {
    }
    return 0;
}
