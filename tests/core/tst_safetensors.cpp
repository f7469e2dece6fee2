// Checkpoint loading: the safetensors parser's bounds checks, config/shape agreement, shards,
// the writer, and the model fingerprint. Every malformed input must give engram::Error naming
// the file or tensor at fault, never a crash.
#include <QtTest>

#include <ATen/ATen.h>

#include <fstream>

#include "engram/checkpoint.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/sha256.h"
#include "test_util.h"

using namespace engram;
using engram::test::reference_dir;
using engram::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::string le64(uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
    return s;
}

// A file with the given header text followed by `data_bytes` zero bytes.
void write_raw(const fs::path& path, const std::string& header, size_t data_bytes, std::optional<uint64_t> claimed_len = {}) {
    std::ofstream out(path, std::ios::binary);
    out << le64(claimed_len.value_or(header.size())) << header << std::string(data_bytes, '\0');
}

void write_bytes(const fs::path& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary);
    out << bytes;
}

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// Expects `fn` to throw engram::Error of `kind` whose message contains every needle.
template <typename Fn>
void expect_error(Fn fn, ErrorKind kind, std::initializer_list<const char*> needles) {
    try {
        fn();
    } catch (const Error& e) {
        const std::string msg = e.what();
        QVERIFY2(e.kind() == kind, qPrintable(QString("wrong kind %1: %2").arg(error_kind_name(e.kind())).arg(msg.c_str())));
        for (const char* n : needles) QVERIFY2(msg.find(n) != std::string::npos, qPrintable(QString("'%1' not in: %2").arg(n).arg(msg.c_str())));
        return;
    }
    QFAIL("no engram::Error was thrown");
}

fs::path copy_fixture(const TempDir& tmp, const char* name) {
    fs::path dst = tmp.path / name;
    fs::copy(reference_dir(name), dst, fs::copy_options::recursive);
    for (auto& entry : fs::recursive_directory_iterator(dst))
        fs::permissions(entry.path(), fs::perms::owner_write, fs::perm_options::add);
    return dst;
}

}  // namespace

class TestSafetensors : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void parsesValidHeader();
    void rejectsTruncatedFile();
    void rejectsHeaderLengthPastEnd();
    void rejectsOffsetsOutOfRange();
    void rejectsOverlappingTensors();
    void rejectsSizeThatDisagreesWithDtype();
    void rejectsBrokenHeaderJson();
    void rejectsShapeThatDisagreesWithConfig();
    void rejectsUnsupportedWeightDtype();
    void rejectsMissingShard();
    void rejectsUnknownArchitecture();
    void rejectsBrokenConfigJson();
    void rejectsHostileSizesBeforeAllocating();
    void rejectsMissingTensor();
    void refusesWeightsLargerThanMemory();
    void writerRoundTrips();
    void fingerprintIgnoresSharding();
    void fingerprintSeesOneByte();
    void fingerprintIsCached();
    void tensorsAreZeroCopyViews();
};

void TestSafetensors::parsesValidHeader() {
    TempDir tmp("st");
    const fs::path f = tmp.path / "ok.safetensors";
    write_raw(f, R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"__metadata__":{"k":"v"}})", 32);
    Checkpoint ck = Checkpoint::open_file(f);
    QCOMPARE(ck.tensors().size(), size_t{2});
    QCOMPARE(ck.info("a").shape, (std::vector<int64_t>{2, 3}));
    QCOMPARE(ck.info("b").dtype, DType::BF16);
    QCOMPARE(ck.tensor("b").scalar_type(), at::kBFloat16);
}

void TestSafetensors::rejectsTruncatedFile() {
    TempDir tmp("st");
    const fs::path tiny = tmp.path / "tiny.safetensors";
    write_bytes(tiny, "abc");
    expect_error([&] { Checkpoint::open_file(tiny); }, ErrorKind::Format, {"tiny.safetensors", "truncated"});
    // A real checkpoint cut in half: its header promises data that is no longer there.
    const fs::path cut = tmp.path / "cut.safetensors";
    std::string bytes = read_bytes(reference_dir("gpt2-tiny") / "model.safetensors");
    write_bytes(cut, bytes.substr(0, bytes.size() / 2));
    expect_error([&] { Checkpoint::open_file(cut); }, ErrorKind::Format, {"cut.safetensors", "outside the data section"});
}

void TestSafetensors::rejectsHeaderLengthPastEnd() {
    TempDir tmp("st");
    const fs::path f = tmp.path / "long.safetensors";
    write_raw(f, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, uint64_t{1} << 40);
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"long.safetensors", "past the end"});
}

void TestSafetensors::rejectsOffsetsOutOfRange() {
    TempDir tmp("st");
    const fs::path f = tmp.path / "range.safetensors";
    write_raw(f, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16);
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"range.safetensors", "tensor 'w'", "outside"});
    write_raw(f, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 16);
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"begin > end"});
    write_raw(f, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 16);
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"tensor 'w'"});
}

void TestSafetensors::rejectsOverlappingTensors() {
    TempDir tmp("st");
    const fs::path f = tmp.path / "overlap.safetensors";
    write_raw(f, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16);
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"overlap.safetensors", "'a'", "'b'", "overlap"});
}

void TestSafetensors::rejectsSizeThatDisagreesWithDtype() {
    TempDir tmp("st");
    const fs::path f = tmp.path / "size.safetensors";
    write_raw(f, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}})", 8);  // F16-sized bytes
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"tensor 'w'", "F32"});
    write_raw(f, R"({"w":{"dtype":"F12","shape":[4],"data_offsets":[0,8]}})", 8);
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"unsupported dtype F12"});
    write_raw(f, R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8);
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"too large"});
}

void TestSafetensors::rejectsBrokenHeaderJson() {
    TempDir tmp("st");
    const fs::path f = tmp.path / "json.safetensors";
    write_raw(f, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4);  // missing brace
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"json.safetensors", "not valid JSON"});
    write_raw(f, R"([1,2,3])", 4);
    expect_error([&] { Checkpoint::open_file(f); }, ErrorKind::Format, {"not a JSON object"});
}

void TestSafetensors::rejectsShapeThatDisagreesWithConfig() {
    TempDir tmp("st");
    fs::path dir = copy_fixture(tmp, "gpt2-tiny");
    nlohmann::json config = read_json_file(dir / "config.json");
    config["n_inner"] = 128;  // the weights have 256
    std::ofstream(dir / "config.json") << config.dump();
    expect_error([&] { Model::load(dir); }, ErrorKind::Config, {"transformer.h.0.mlp.c_fc.weight", "[64, 256]", "[64, 128]"});
}

void TestSafetensors::rejectsUnsupportedWeightDtype() {
    TempDir tmp("st");
    fs::path dir = tmp.path / "ints";
    fs::create_directories(dir);
    fs::copy(reference_dir("gpt2-tiny") / "config.json", dir / "config.json");
    Checkpoint ref = Checkpoint::open(reference_dir("gpt2-tiny"));
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& [name, entry] : ref.tensors())
        tensors.emplace_back(name, name == "transformer.wte.weight" ? ref.tensor(name).to(at::kInt) : ref.tensor(name));
    write_safetensors(dir / "model.safetensors", tensors);
    expect_error([&] { Model::load(dir); }, ErrorKind::Unsupported, {"transformer.wte.weight", "I32"});
}

void TestSafetensors::rejectsMissingShard() {
    TempDir tmp("st");
    fs::path dir = copy_fixture(tmp, "llama-tiny");
    fs::remove(dir / "model-00007-of-00014.safetensors");
    expect_error([&] { Model::load(dir); }, ErrorKind::Io, {"model-00007-of-00014.safetensors", "missing shard"});
}

void TestSafetensors::rejectsUnknownArchitecture() {
    TempDir tmp("st");
    fs::path dir = copy_fixture(tmp, "gpt2-tiny");
    nlohmann::json config = read_json_file(dir / "config.json");
    config["architectures"] = {"MambaForCausalLM"};
    std::ofstream(dir / "config.json") << config.dump();
    expect_error([&] { Model::load(dir); }, ErrorKind::Unsupported, {"config.json", "unknown architecture 'MambaForCausalLM'", "GPT2LMHeadModel"});
}

void TestSafetensors::rejectsBrokenConfigJson() {
    TempDir tmp("st");
    fs::path dir = copy_fixture(tmp, "gpt2-tiny");
    std::ofstream(dir / "config.json") << R"({"architectures": ["GPT2LMHeadModel"], "n_layer": )";
    expect_error([&] { Model::load(dir); }, ErrorKind::Format, {"config.json", "invalid JSON"});
    std::ofstream(dir / "config.json") << R"({"architectures": ["GPT2LMHeadModel"], "n_layer": "three"})";
    expect_error([&] { Model::load(dir); }, ErrorKind::Config, {"config.json", "'n_layer'", "integer"});
    fs::remove(dir / "config.json");
    expect_error([&] { Model::load(dir); }, ErrorKind::Io, {"config.json", "missing"});
}

// Sizes a checkpoint cannot back are refused with a clear error, before anything is sized by them
// (two billion layers used to end in std::bad_alloc).
void TestSafetensors::rejectsHostileSizesBeforeAllocating() {
    TempDir tmp("st");
    const std::pair<const char*, const char*> cases[] = {
        {"gpt2-tiny", "n_layer"}, {"gpt2-tiny", "n_embd"}, {"gpt2-tiny", "n_head"}, {"gpt2-tiny", "vocab_size"},
        {"llama-tiny", "num_hidden_layers"}, {"llama-tiny", "num_attention_heads"}, {"llama-tiny", "intermediate_size"},
        {"gptj-tiny", "n_layer"}, {"gptj-tiny", "rotary_dim"}, {"vit-tiny", "num_hidden_layers"}, {"vit-tiny", "image_size"},
    };
    for (const auto& [fixture, key] : cases)
        // 2^62 once overflowed GPT-2's 4 * n_embd default for n_inner before any check.
        for (int64_t value : {int64_t(2000000000), int64_t(0), int64_t(-3), int64_t(1) << 62}) {
            fs::path dir = copy_fixture(tmp, fixture);
            nlohmann::json config = read_json_file(dir / "config.json");
            config[key] = value;
            std::ofstream(dir / "config.json") << config.dump();
            const QString what = QString("%1 %2=%3").arg(fixture, key).arg(value);
            try {
                Model::load(dir);
                QFAIL(qPrintable(what + ": accepted"));
            } catch (const Error& e) {
                QVERIFY2(e.kind() == ErrorKind::Config || e.kind() == ErrorKind::Argument || e.kind() == ErrorKind::Unsupported,
                         qPrintable(what + ": " + e.what()));
            } catch (const std::exception& e) {
                QFAIL(qPrintable(what + ": not an engram::Error: " + e.what()));
            }
            fs::remove_all(dir);
        }
    // preprocessor_config.json sizes the resized image: a side of a billion pixels is refused at load.
    for (const char* size : {R"({"height": 1000000000, "width": 32})", R"(0)", R"({"shortest_edge": -5})"}) {
        fs::path dir = copy_fixture(tmp, "vit-tiny");
        std::ofstream(dir / "preprocessor_config.json") << R"({"do_resize": true, "size": )" << size << "}";
        try {
            Model::load(dir);
            QFAIL(qPrintable(QString("preprocessor size %1: accepted").arg(size)));
        } catch (const Error& e) {
            QVERIFY2(e.kind() == ErrorKind::Config && std::string(e.what()).find("preprocessor_config.json") != std::string::npos, e.what());
        }
        fs::remove_all(dir);
    }
}

void TestSafetensors::rejectsMissingTensor() {
    TempDir tmp("st");
    fs::path dir = tmp.path / "partial";
    fs::create_directories(dir);
    fs::copy(reference_dir("gpt2-tiny") / "config.json", dir / "config.json");
    Checkpoint ref = Checkpoint::open(reference_dir("gpt2-tiny"));
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& [name, entry] : ref.tensors())
        if (name != "transformer.h.1.ln_2.bias") tensors.emplace_back(name, ref.tensor(name));
    write_safetensors(dir / "model.safetensors", tensors);
    expect_error([&] { Model::load(dir); }, ErrorKind::Config, {"transformer.h.1.ln_2.bias", "missing"});
}

void TestSafetensors::writerRoundTrips() {
    TempDir tmp("st");
    const fs::path f = tmp.path / "rt.safetensors";
    at::Tensor a = at::randn({3, 5});
    at::Tensor b = at::arange(7, at::kLong);
    at::Tensor c = at::randn({2, 2}).to(at::kBFloat16);
    write_safetensors(f, {{"a", a}, {"b", b}, {"c", c}, {"t", a.t()}}, {{"who", "test"}});
    Checkpoint ck = Checkpoint::open_file(f);
    QVERIFY(at::equal(ck.tensor("a"), a));
    QVERIFY(at::equal(ck.tensor("b"), b));
    QVERIFY(at::equal(ck.tensor("c"), c));
    QVERIFY(at::equal(ck.tensor("t"), a.t()));
    QVERIFY(!fs::exists(f.string() + ".tmp"));
}

void TestSafetensors::fingerprintIgnoresSharding() {
    // The fingerprint is over tensors, not files: the 14 llama shards re-saved as one file agree.
    TempDir tmp("st");
    Checkpoint sharded = Checkpoint::open(reference_dir("llama-tiny"));
    fs::path dir = tmp.path / "single";
    fs::create_directories(dir);
    fs::copy(reference_dir("llama-tiny") / "config.json", dir / "config.json");
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& [name, entry] : sharded.tensors()) tensors.emplace_back(name, sharded.tensor(name));
    std::reverse(tensors.begin(), tensors.end());  // file order must not matter either
    write_safetensors(dir / "model.safetensors", tensors);
    const std::string a = checkpoint_fingerprint(sharded, false), b = checkpoint_fingerprint(Checkpoint::open(dir), false);
    QCOMPARE(a.size(), size_t{64});
    QCOMPARE(a, b);
}

void TestSafetensors::fingerprintSeesOneByte() {
    TempDir tmp("st");
    fs::path dir = copy_fixture(tmp, "gpt2-tiny");
    const std::string before = checkpoint_fingerprint(Checkpoint::open(dir));
    std::string bytes = read_bytes(dir / "model.safetensors");
    bytes[bytes.size() - 3] ^= 0x01;  // one bit of the last tensor
    write_bytes(dir / "model.safetensors", bytes);
    const std::string after = checkpoint_fingerprint(Checkpoint::open(dir));
    QVERIFY(before != after);
    QCOMPARE(after, checkpoint_fingerprint(Checkpoint::open(dir), /*use_cache=*/false));
}

void TestSafetensors::fingerprintIsCached() {
    TempDir tmp("st");
    qputenv("ENGRAM_CACHE_DIR", QByteArray::fromStdString((tmp.path / "cache").string()));
    Checkpoint ck = Checkpoint::open(reference_dir("qwen2-tiny-fp16"));
    const std::string fp = checkpoint_fingerprint(ck);
    QVERIFY(fs::exists(tmp.path / "cache" / "fingerprints"));
    size_t entries = 0;
    for (auto& e : fs::directory_iterator(tmp.path / "cache" / "fingerprints")) {
        ++entries;
        // Poison the cache: a second call must return what the cache holds, proving it was read.
        std::ofstream(e.path()) << std::string(64, 'a') << "\n";
    }
    QCOMPARE(entries, size_t{1});
    QCOMPARE(checkpoint_fingerprint(ck), std::string(64, 'a'));
    QCOMPARE(checkpoint_fingerprint(ck, false), fp);
    qunsetenv("ENGRAM_CACHE_DIR");
}

void TestSafetensors::refusesWeightsLargerThanMemory() {
    // Weights converted to the compute dtype take new memory; more than the machine has (here a
    // 1 MiB limit) is refused before any is taken. Weights already in it are views of the file.
    qputenv("ENGRAM_MEMORY_LIMIT_MB", "1");
    LoadOptions as_double;
    as_double.compute_dtype = at::kDouble;  // 440 KB of BF16 -> 1.7 MB of F64
    QString err;
    try {
        Model::load(reference_dir("gpt2-tiny-bf16"), as_double);
    } catch (const Error& e) {
        err = e.what();
        QCOMPARE(e.kind(), ErrorKind::Argument);
    }
    QVERIFY2(err.contains("MiB of memory, more than the 1.0 MiB"), qPrintable(err));
    QVERIFY2(err.contains("ENGRAM_MEMORY_LIMIT_MB allows") && err.contains("nothing was loaded"), qPrintable(err));
    QVERIFY(Model::load(reference_dir("gpt2-tiny")) != nullptr);  // 876 KB of F32 weights: mapped, not converted
    qputenv("ENGRAM_MEMORY_LIMIT_MB", "4");
    QVERIFY(Model::load(reference_dir("gpt2-tiny-bf16"), as_double) != nullptr);
    qputenv("ENGRAM_MEMORY_LIMIT_MB", "lots");
    QVERIFY_THROWS_EXCEPTION(Error, Model::load(reference_dir("gpt2-tiny-bf16")));
    qunsetenv("ENGRAM_MEMORY_LIMIT_MB");
}

void TestSafetensors::tensorsAreZeroCopyViews() {
    Checkpoint ck = Checkpoint::open(reference_dir("gpt2-tiny"));
    at::Tensor t = ck.tensor("transformer.wte.weight");
    QCOMPARE(static_cast<const void*>(t.data_ptr()), static_cast<const void*>(ck.bytes("transformer.wte.weight").first));
}

QTEST_APPLESS_MAIN(TestSafetensors)
#include "tst_safetensors.moc"
