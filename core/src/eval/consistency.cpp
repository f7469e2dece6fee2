// Consistency (RS): TF-IDF cosine similarity as ROME's tfidf_similarity computes it with a fitted
// scikit-learn TfidfVectorizer (spec §7.1 item 7), the reader of ROME's tfidf files (a JSON
// vocabulary and a NumPy idf vector), and the reader of attribute_snippets.json.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "engram/datasets.h"
#include "engram/error.h"
#include "engram/file.h"

namespace engram::eval {
namespace {

using json = nlohmann::json;

bool word_byte(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}


// A one-dimensional float64 or float32 .npy array (format 1.0 or 2.0, little-endian, C order).
std::vector<double> read_npy_vector(const std::filesystem::path& file) {
    const std::string data = read_file(file, "the idf vector");
    const std::string where = file.string() + ": ";
    if (data.size() < 10 || std::memcmp(data.data(), "\x93NUMPY", 6) != 0) throw Error(ErrorKind::Format, where + "not a NumPy .npy file");
    const int major = static_cast<unsigned char>(data[6]);
    size_t header_len = 0, offset = 0;
    if (major == 1) {
        header_len = static_cast<unsigned char>(data[8]) | (size_t(static_cast<unsigned char>(data[9])) << 8);
        offset = 10;
    } else if (major == 2 || major == 3) {
        if (data.size() < 12) throw Error(ErrorKind::Format, where + "truncated header");
        for (int i = 0; i < 4; ++i) header_len |= size_t(static_cast<unsigned char>(data[8 + i])) << (8 * i);
        offset = 12;
    } else {
        throw Error(ErrorKind::Format, where + "unsupported .npy version " + std::to_string(major));
    }
    if (offset + header_len > data.size()) throw Error(ErrorKind::Format, where + "truncated header");
    const std::string header = data.substr(offset, header_len);
    const bool f8 = header.find("'<f8'") != std::string::npos, f4 = header.find("'<f4'") != std::string::npos;
    if (!f8 && !f4) throw Error(ErrorKind::Format, where + "expected a little-endian float64 or float32 array (" + header + ")");
    if (header.find("'fortran_order': False") == std::string::npos && header.find("'fortran_order':False") == std::string::npos)
        throw Error(ErrorKind::Format, where + "expected C order");
    const size_t open = header.find("'shape': ("), close = header.find(')', open == std::string::npos ? 0 : open);
    if (open == std::string::npos || close == std::string::npos) throw Error(ErrorKind::Format, where + "no shape in the header");
    const std::string dims = header.substr(open + 10, close - open - 10);
    size_t n = 0;
    try {
        size_t used = 0;
        n = std::stoull(dims, &used);
        const std::string rest = dims.substr(used);
        if (rest.find_first_not_of(", ") != std::string::npos) throw Error(ErrorKind::Format, where + "expected a vector, shape (" + dims + ")");
    } catch (const std::logic_error&) {
        throw Error(ErrorKind::Format, where + "bad shape (" + dims + ")");
    }
    const size_t width = f8 ? 8 : 4, start = offset + header_len;
    if (data.size() - start != n * width)
        throw Error(ErrorKind::Format, where + std::to_string(data.size() - start) + " data bytes for " + std::to_string(n) + " values");
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) {
        if (f8) {
            std::memcpy(&out[i], data.data() + start + 8 * i, 8);
        } else {
            float f;
            std::memcpy(&f, data.data() + start + 4 * i, 4);
            out[i] = f;
        }
    }
    return out;
}

}  // namespace

std::vector<std::string> tfidf_tokens(std::string_view text) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i < text.size()) {
        if (!word_byte(static_cast<unsigned char>(text[i]))) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < text.size() && word_byte(static_cast<unsigned char>(text[j]))) ++j;
        if (j - i >= 2) {  // \b\w\w+\b
            std::string t(text.substr(i, j - i));
            for (char& c : t)
                if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
            out.push_back(std::move(t));
        }
        i = j;
    }
    return out;
}

Tfidf Tfidf::fit(const std::vector<std::string>& documents) {
    Tfidf t;
    std::vector<int64_t> df;
    for (const std::string& doc : documents) {
        std::unordered_set<int64_t> seen;
        for (const std::string& tok : tfidf_tokens(doc)) {
            auto [it, fresh] = t.vocab_.emplace(tok, static_cast<int64_t>(df.size()));
            if (fresh) df.push_back(0);
            if (seen.insert(it->second).second) ++df[static_cast<size_t>(it->second)];
        }
    }
    const double n = static_cast<double>(documents.size());
    t.idf_.resize(df.size());
    for (size_t i = 0; i < df.size(); ++i) t.idf_[i] = std::log((1.0 + n) / (1.0 + static_cast<double>(df[i]))) + 1.0;
    return t;
}

Tfidf Tfidf::load(const std::filesystem::path& dir) {
    const std::filesystem::path vocab_file = dir / "tfidf_vocab.json", idf_file = dir / "idf.npy";
    Tfidf t;
    t.idf_ = read_npy_vector(idf_file);
    const json vocab = json::parse(read_file(vocab_file, "the TF-IDF vocabulary"), nullptr, false);
    if (vocab.is_discarded() || !vocab.is_object()) throw Error(ErrorKind::Format, vocab_file.string() + ": expected a JSON object token -> column");
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        if (!it.value().is_number_integer()) throw Error(ErrorKind::Format, vocab_file.string() + ": the column of \"" + it.key() + "\" is not an integer");
        const int64_t col = it.value().get<int64_t>();
        if (col < 0 || col >= static_cast<int64_t>(t.idf_.size()))
            throw Error(ErrorKind::Format, vocab_file.string() + ": column " + std::to_string(col) + " of \"" + it.key() + "\" is outside idf.npy (" +
                                               std::to_string(t.idf_.size()) + " values)");
        t.vocab_[it.key()] = col;
    }
    return t;
}

double Tfidf::idf(const std::string& token) const {
    auto it = vocab_.find(token);
    return it == vocab_.end() ? std::numeric_limits<double>::quiet_NaN() : idf_[static_cast<size_t>(it->second)];
}

double Tfidf::similarity(std::string_view a, std::string_view b) const {
    auto vec = [&](std::string_view text) {
        std::unordered_map<int64_t, double> v;
        for (const std::string& tok : tfidf_tokens(text))
            if (auto it = vocab_.find(tok); it != vocab_.end()) v[it->second] += idf_[static_cast<size_t>(it->second)];
        return v;
    };
    const auto va = vec(a), vb = vec(b);
    double dot = 0, na = 0, nb = 0;
    for (const auto& [k, x] : va) {
        na += x * x;
        if (auto it = vb.find(k); it != vb.end()) dot += x * it->second;
    }
    for (const auto& [k, x] : vb) nb += x * x;
    if (na == 0 || nb == 0) return 0.0;
    return dot / std::sqrt(na) / std::sqrt(nb);
}

AttributeSnippets AttributeSnippets::load(const std::filesystem::path& file) {
    const json j = json::parse(read_file(file, "the attribute snippets"), nullptr, false);
    if (j.is_discarded()) throw Error(ErrorKind::Format, file.string() + ": not JSON");
    return from_json(j, file.string());
}

AttributeSnippets AttributeSnippets::from_json(const json& j, const std::string& source) {
    if (!j.is_array()) throw Error(ErrorKind::Format, source + ": expected a JSON array of {relation_id, target_id, samples}");
    AttributeSnippets out;
    for (size_t i = 0; i < j.size(); ++i) {
        const json& el = j[i];
        const std::string where = source + ": record " + std::to_string(i);
        if (!el.is_object() || !el.contains("relation_id") || !el.contains("target_id") || !el.contains("samples") || !el["relation_id"].is_string() ||
            !el["target_id"].is_string() || !el["samples"].is_array())
            throw Error(ErrorKind::Format, where + ": expected {relation_id, target_id, samples: [...]}");
        auto& texts = out.texts[el["relation_id"].get<std::string>()][el["target_id"].get<std::string>()];
        for (const json& sample : el["samples"]) {
            if (!sample.is_object() || !sample.contains("text") || !sample["text"].is_string())
                throw Error(ErrorKind::Format, where + ": a sample without a \"text\" string");
            texts.push_back(sample["text"].get<std::string>());
        }
    }
    return out;
}

const std::vector<std::string>* AttributeSnippets::find(const std::string& relation_id, const std::string& target_id) const {
    auto r = texts.find(relation_id);
    if (r == texts.end()) return nullptr;
    auto t = r->second.find(target_id);
    return t == r->second.end() || t->second.empty() ? nullptr : &t->second;
}

}  // namespace engram::eval
