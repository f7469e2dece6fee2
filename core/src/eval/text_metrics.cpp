// Text metrics that need no model: word tokenization and ROME's n-gram entropy (fluency, spec §7.1
// item 6; experiments/py/eval_utils_counterfact.py::compute_n_gram_entropy), the harmonic mean (score S).
#include "engram/datasets.h"

#include <cmath>
#include <unordered_map>

namespace engram::eval {
namespace {

bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
// Bytes of multi-byte UTF-8 sequences count as letters: names and accented words stay whole.
bool is_word(unsigned char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80; }

// -sum f log2 f over the frequencies of the word n-grams; 0 where there are none (numpy's sum over
// an empty array, which is what ROME's code returns for a short text).
double n_gram_entropy_bits(const std::vector<std::string>& words, size_t n) {
    if (words.size() < n) return 0.0;
    std::unordered_map<std::string, int64_t> counts;
    std::string key;
    for (size_t i = 0; i + n <= words.size(); ++i) {
        key.clear();
        for (size_t j = 0; j < n; ++j) {
            if (j) key += ' ';  // words never hold a space, so the key is unambiguous
            key += words[i + j];
        }
        ++counts[key];
    }
    const double total = static_cast<double>(words.size() - n + 1);
    double h = 0.0;
    for (const auto& [gram, count] : counts) {
        const double f = static_cast<double>(count) / total;
        h -= f * std::log2(f);
    }
    return h;
}

}  // namespace

std::vector<std::string> word_tokenize(std::string_view text) {
    std::vector<std::string> words;
    const size_t n = text.size();
    size_t i = 0;
    while (i < n) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (is_space(c)) {
            ++i;
            continue;
        }
        if (!is_word(c)) {
            words.emplace_back(1, text[i++]);
            continue;
        }
        size_t j = i + 1;
        while (j < n) {
            const auto d = static_cast<unsigned char>(text[j]);
            if (is_word(d)) {
                ++j;
                continue;
            }
            const bool next_word = j + 1 < n && is_word(static_cast<unsigned char>(text[j + 1]));
            const bool inner_joiner = (d == '\'' || d == '-') && next_word;  // don't, well-known
            const bool number_separator = (d == '.' || d == ',') && is_digit(static_cast<unsigned char>(text[j - 1])) &&
                                          j + 1 < n && is_digit(static_cast<unsigned char>(text[j + 1]));  // 3.14, 1,000
            if (!inner_joiner && !number_separator) break;
            j += 2;
        }
        words.emplace_back(text.substr(i, j - i));
        i = j;
    }
    return words;
}

double n_gram_entropy(std::string_view text) {
    const auto words = word_tokenize(text);
    // ROME: ns = [2, 3], weights = [2/3, 4/3], agg = "arith" -> np.mean of the weighted entropies.
    return (2.0 / 3.0 * n_gram_entropy_bits(words, 2) + 4.0 / 3.0 * n_gram_entropy_bits(words, 3)) / 2.0;
}

double mean_n_gram_entropy(const std::vector<std::string>& texts) {
    if (texts.empty()) return 0.0;
    double sum = 0.0;
    for (const auto& t : texts) sum += n_gram_entropy(t);
    return sum / static_cast<double>(texts.size());
}

double harmonic_mean(const std::vector<double>& values) {
    if (values.empty()) return 0.0;
    double inverse_sum = 0.0;
    for (double v : values) {
        if (!(v > 0.0)) return 0.0;
        inverse_sum += 1.0 / v;
    }
    return static_cast<double>(values.size()) / inverse_sum;
}

}  // namespace engram::eval
