// Editing datasets in the field's layouts, loaded into one value type, and the text metrics that
// need no model. Torch-free (engram_eval_base).
//
// Layouts read (specs/locate_then_edit.md §8):
//   - CounterFact, ROME's nested layout: {case_id, requested_rewrite: {prompt, subject, relation_id,
//     target_new: {str, id}, target_true: {str, id}}, paraphrase_prompts, neighborhood_prompts,
//     attribute_prompts, generation_prompts}
//   - CounterFact, EasyEdit's flat layout: {case_id, prompt, subject, target_new, ground_truth,
//     rephrase_prompt, locality_prompt, locality_ground_truth}; the prompt holds the subject verbatim
//     and becomes a template by replacing its first occurrence with "{}"
//   - zsRE, MEND/EasyEdit layout: {subject, src, rephrase, alt, answers, loc, loc_ans, ...}
//   - MQuAKE: {case_id, requested_rewrite: [...], questions, answer, new_answer, ...}
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace engram::eval {

enum class DatasetFormat { Auto, CounterFact, CounterFactFlat, Zsre, Mquake };
const char* dataset_format_name(DatasetFormat format);  // "auto", "counterfact", "counterfact_flat", "zsre", "mquake"
std::optional<DatasetFormat> dataset_format_from_name(std::string_view name);

// zsRE has two conventions for what an edit inserts (spec §7.2, §8):
//   Answer: ROME/MEMIT/AlphaEdit/BLUE, target_new = answers[0] (the true answer), no target_true;
//   Alt:    EasyEdit, target_new = alt, ground truth = answers[0]; records with an empty alt are skipped.
enum class ZsreTarget { Answer, Alt };

// Prompt templates: "{}" marks where the subject goes. One set of helpers for the loaders, the
// editing methods and the CLI.
size_t count_placeholders(std::string_view templ);
// The template with its first "{}" replaced by `text` (unchanged when it has none).
std::string fill_placeholder(std::string_view templ, std::string_view text);
// A full prompt made a template at the subject's first occurrence; nullopt when the subject is
// empty or not in the prompt.
std::optional<std::string> template_at_subject(std::string_view prompt, std::string_view subject);

// One rewrite: the prompt is a template with exactly one "{}" where the subject goes.
struct Rewrite {
    std::string prompt;        // "{} was born in"
    std::string subject;
    std::string relation_id;   // "" where the layout has none
    std::string target_new;
    std::string target_new_id;  // CounterFact's target_new.id ("" where the layout has none): keys the attribute snippets
    std::string target_true;   // "" where the layout has none (zsRE Answer convention)
    std::string prediction;    // zsRE's pred (a model's answer before editing; HSE forgets it); "" elsewhere
    std::string question;      // MQuAKE: the rewrite as a question; "" otherwise
    std::string prompt_text() const;  // prompt with the subject substituted
};

// A prompt with its expected answer (locality / portability probes, zsRE neighbourhood).
struct Probe {
    std::string prompt;
    std::string answer;
    std::string kind;          // "neighborhood" (CounterFact), "nq" (zsRE), "multi_hop", "single_hop",
                               // "new_single_hop" (MQuAKE; single hops are probed by their cloze)
};

struct EditCase {
    int64_t case_id = 0;
    int64_t index = 0;                         // position in the file
    std::vector<Rewrite> rewrites;             // one, except MQuAKE (one per hop edited)
    std::vector<std::string> paraphrase_prompts;    // full prompts (subject included)
    std::vector<std::string> neighborhood_prompts;  // CounterFact: other subjects, same relation and true object
    std::vector<std::string> attribute_prompts;
    std::vector<std::string> generation_prompts;
    std::vector<Probe> locality;               // prompt -> answer expected unchanged by the edit
    std::vector<Probe> portability;            // prompt -> answer expected after the edit (MQuAKE questions)
    std::string answer_before;                 // MQuAKE answer / zsRE answers[0] (Alt convention)
    std::vector<std::string> answer_aliases;   // MQuAKE answer_alias
    std::vector<std::string> new_answer_aliases;
};

struct Dataset {
    std::filesystem::path file;
    DatasetFormat format = DatasetFormat::Auto;  // the layout it was read as
    std::vector<EditCase> cases;
};

struct DatasetOptions {
    DatasetFormat format = DatasetFormat::Auto;  // Auto: decided from the first record's fields
    ZsreTarget zsre_target = ZsreTarget::Answer;
    int64_t limit = 0;                          // > 0: only the first `limit` records (as the reference code does;
                                                // records the zsRE Alt convention skips don't count)
};

// Throws engram::Error(Format) naming the file and, for a malformed record, its index and field
// (a missing field, a wrong type, a subject not in the prompt, a template without exactly one "{}");
// Error(Io) if the file cannot be read. A file that does not open with '[' is read as JSON Lines.
// Locality probes: CounterFact's neighborhood prompts -> target_true; flat CounterFact's
// locality_prompt -> locality_ground_truth; zsRE's loc ("nq question: ..." as it is) -> loc_ans.
// Portability (MQuAKE): questions -> new_answer, then single_hops, then new_single_hops.
Dataset load_dataset(const std::filesystem::path& file, const DatasetOptions& options = {});

// ---------------------------------------------------------------------------------------------
// Text metrics (no model).

// Words as NLTK's word_tokenize would split plain English closely enough for n-gram statistics:
// runs of letters/digits (with inner apostrophes and hyphens), and each punctuation character alone.
std::vector<std::string> word_tokenize(std::string_view text);
// ROME/MEMIT fluency of one text: mean(2/3 * H2, 4/3 * H3) in bits over word n-gram frequencies
// (spec §7.1 item 6); 0 for a text too short to have n-grams.
double n_gram_entropy(std::string_view text);
// Arithmetic mean over texts (the caller multiplies by 100 to report, as the papers do).
double mean_n_gram_entropy(const std::vector<std::string>& texts);
// Harmonic mean of positive values; 0 if any is 0 (score S).
double harmonic_mean(const std::vector<double>& values);

// ---------------------------------------------------------------------------------------------
// Consistency (RS, spec §7.1 item 7): the TF-IDF cosine between a case's generations and the
// reference snippets about its new target, as ROME's tfidf_similarity with scikit-learn's
// TfidfVectorizer at its defaults: lowercase, tokens of two or more word characters, raw counts
// times idf, l2 norm. Word characters are ASCII letters, digits and '_' plus every byte >= 0x80
// (Python's \w also knows which non-ASCII letters are letters; lowercasing is ASCII only).
std::vector<std::string> tfidf_tokens(std::string_view text);

class Tfidf {
public:
    // idf = ln((1 + n) / (1 + df)) + 1 over the documents (scikit-learn's smooth idf).
    static Tfidf fit(const std::vector<std::string>& documents);
    // ROME's files in `dir`: tfidf_vocab.json (token -> column) and idf.npy (float64 or float32).
    static Tfidf load(const std::filesystem::path& dir);
    // Cosine of the two texts' tf-idf vectors; 0 when either has no known token.
    double similarity(std::string_view a, std::string_view b) const;
    size_t size() const { return idf_.size(); }
    double idf(const std::string& token) const;  // NaN for a token outside the vocabulary

private:
    std::unordered_map<std::string, int64_t> vocab_;
    std::vector<double> idf_;
};

// ROME's attribute_snippets.json: a list of {relation_id, target_id, samples: [{name, text}]}, read
// as relation -> target -> texts.
struct AttributeSnippets {
    std::map<std::string, std::map<std::string, std::vector<std::string>>> texts;
    static AttributeSnippets load(const std::filesystem::path& file);
    // The file's JSON already parsed; `where` names its source in errors.
    static AttributeSnippets from_json(const nlohmann::json& list, const std::string& where);
    // nullptr when there are none for that relation and target.
    const std::vector<std::string>* find(const std::string& relation_id, const std::string& target_id) const;
};

}  // namespace engram::eval
