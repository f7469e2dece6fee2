// Editing datasets: one reader per layout (specs/locate_then_edit.md §8), all into EditCase.
//
// Datasets travel hand-edited between forks and the field names drift, so every record is checked
// as it is read and an error names the file, the record's index and the field.
#include "engram/datasets.h"

#include <nlohmann/json.hpp>

#include <iterator>
#include <sstream>

#include "engram/error.h"
#include "engram/file.h"

namespace engram::eval {
namespace {

using nlohmann::json;

// The record being read, for error messages: "counterfact.json: record 12: <what>".
struct Where {
    std::string file;
    int64_t index = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw Error(ErrorKind::Format, file + ": record " + std::to_string(index) + ": " + what);
    }
};

std::string in_quotes(std::string_view s) { return "\"" + std::string(s) + "\""; }

std::string field_name(std::string_view prefix, std::string_view key) {
    return prefix.empty() ? std::string(key) : std::string(prefix) + "." + std::string(key);
}

const json* find(const json& object, const char* key) {
    auto it = object.find(key);
    return it == object.end() || it->is_null() ? nullptr : &*it;
}

const json& require(const Where& w, const json& object, std::string_view prefix, const char* key) {
    const json* v = find(object, key);
    if (!v) w.fail("missing field " + field_name(prefix, key));
    return *v;
}

std::string as_string(const Where& w, const json& v, const std::string& name) {
    if (!v.is_string()) w.fail(name + ": expected a string, got " + v.type_name());
    return v.get<std::string>();
}

std::string string_field(const Where& w, const json& object, std::string_view prefix, const char* key) {
    return as_string(w, require(w, object, prefix, key), field_name(prefix, key));
}

std::optional<std::string> optional_string(const Where& w, const json& object, std::string_view prefix,
                                           const char* key) {
    const json* v = find(object, key);
    if (!v) return std::nullopt;
    return as_string(w, *v, field_name(prefix, key));
}

// An answer: "Paris", {"str": "Paris", "id": "Q90"} (ROME's targets) or ["Paris", ...] (KnowEdit's
// ground truths; the first is the answer).
std::string target_value(const Where& w, const json& v, const std::string& name) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object()) {
        auto it = v.find("str");
        if (it == v.end()) w.fail("missing field " + name + ".str");
        return as_string(w, *it, name + ".str");
    }
    if (v.is_array()) {
        if (v.empty()) w.fail(name + " is empty");
        return as_string(w, v.front(), name + "[0]");
    }
    w.fail(name + ": expected a string or {\"str\": ...}, got " + v.type_name());
}

std::string target_field(const Where& w, const json& object, std::string_view prefix, const char* key) {
    return target_value(w, require(w, object, prefix, key), field_name(prefix, key));
}

// Missing or null: empty (the layouts drop lists they have nothing for); anything but an array of
// strings: an error.
std::vector<std::string> string_array(const Where& w, const json& object, std::string_view prefix, const char* key,
                                      bool required = false) {
    const json* v = required ? &require(w, object, prefix, key) : find(object, key);
    std::vector<std::string> out;
    if (!v) return out;
    const std::string name = field_name(prefix, key);
    if (!v->is_array()) w.fail(name + ": expected an array of strings, got " + v->type_name());
    out.reserve(v->size());
    for (size_t i = 0; i < v->size(); ++i) out.push_back(as_string(w, (*v)[i], name + "[" + std::to_string(i) + "]"));
    return out;
}

int64_t case_id_of(const Where& w, const json& record) {
    const json* v = find(record, "case_id");
    if (!v) return w.index;
    if (!v->is_number_integer()) w.fail(std::string("case_id: expected an integer, got ") + v->type_name());
    return v->get<int64_t>();
}

void check_template(const Where& w, const std::string& name, const std::string& prompt) {
    const size_t n = count_placeholders(prompt);
    if (n != 1)
        w.fail(name + " " + in_quotes(prompt) + " has " + std::to_string(n) +
               " \"{}\" placeholders; a template needs exactly one");
}

// The layouts that give a full prompt: the subject's first occurrence becomes "{}" (EasyEdit and
// ROME's zsRE loader do the same). A prompt that already is a template is taken as it is.
std::string make_template(const Where& w, const std::string& prompt_name, const std::string& prompt,
                          const std::string& subject_name, const std::string& subject) {
    if (subject.empty()) w.fail(subject_name + " is empty");
    const std::optional<std::string> made = template_at_subject(prompt, subject);
    if (!made) {
        if (count_placeholders(prompt) == 1) return prompt;
        w.fail(subject_name + " " + in_quotes(subject) + " is not in the " + prompt_name + " " + in_quotes(prompt));
    }
    const std::string& templ = *made;
    check_template(w, prompt_name + " (with the subject replaced by \"{}\")", templ);
    return templ;
}

// ROME's rewrite object (CounterFact's requested_rewrite, each of MQuAKE's).
Rewrite read_rewrite(const Where& w, const json& rr, const std::string& prefix) {
    if (!rr.is_object()) w.fail(prefix + ": expected an object, got " + rr.type_name());
    Rewrite r;
    r.prompt = string_field(w, rr, prefix, "prompt");
    r.subject = string_field(w, rr, prefix, "subject");
    if (r.subject.empty()) w.fail(field_name(prefix, "subject") + " is empty");
    check_template(w, field_name(prefix, "prompt"), r.prompt);
    r.relation_id = optional_string(w, rr, prefix, "relation_id").value_or("");
    r.target_new = target_field(w, rr, prefix, "target_new");
    if (const json* t = find(rr, "target_new"); t && t->is_object())
        if (const json* id = find(*t, "id"); id && id->is_string()) r.target_new_id = id->get<std::string>();
    r.target_true = target_field(w, rr, prefix, "target_true");
    r.question = optional_string(w, rr, prefix, "question").value_or("");
    return r;
}

EditCase new_case(const Where& w, const json& record) {
    EditCase c;
    c.index = w.index;
    c.case_id = case_id_of(w, record);
    return c;
}

std::optional<EditCase> read_counterfact(const Where& w, const json& record, const DatasetOptions&) {
    EditCase c = new_case(w, record);
    c.rewrites.push_back(read_rewrite(w, require(w, record, "", "requested_rewrite"), "requested_rewrite"));
    c.paraphrase_prompts = string_array(w, record, "", "paraphrase_prompts");
    c.neighborhood_prompts = string_array(w, record, "", "neighborhood_prompts");
    c.attribute_prompts = string_array(w, record, "", "attribute_prompts");
    c.generation_prompts = string_array(w, record, "", "generation_prompts");
    // CounterFact's neighbours share the relation and the true object: the edit should leave them there.
    for (const auto& p : c.neighborhood_prompts) c.locality.push_back({p, c.rewrites[0].target_true, "neighborhood"});
    return c;
}

std::optional<EditCase> read_counterfact_flat(const Where& w, const json& record, const DatasetOptions&) {
    EditCase c = new_case(w, record);
    Rewrite r;
    const std::string prompt = string_field(w, record, "", "prompt");
    r.subject = string_field(w, record, "", "subject");
    r.prompt = make_template(w, "prompt", prompt, "subject", r.subject);
    r.target_new = target_field(w, record, "", "target_new");
    if (find(record, "ground_truth")) r.target_true = target_field(w, record, "", "ground_truth");
    r.relation_id = optional_string(w, record, "", "relation_id").value_or("");
    c.rewrites.push_back(std::move(r));
    if (auto rephrase = optional_string(w, record, "", "rephrase_prompt")) c.paraphrase_prompts.push_back(*rephrase);
    if (auto loc = optional_string(w, record, "", "locality_prompt"))
        c.locality.push_back({*loc, target_field(w, record, "", "locality_ground_truth"), "neighborhood"});
    return c;
}

std::optional<EditCase> read_zsre(const Where& w, const json& record, const DatasetOptions& options) {
    EditCase c = new_case(w, record);
    Rewrite r;
    r.subject = string_field(w, record, "", "subject");
    r.prompt = make_template(w, "src", string_field(w, record, "", "src"), "subject", r.subject);
    const auto answers = string_array(w, record, "", "answers", /*required=*/true);
    if (answers.empty()) w.fail("answers is empty");
    if (options.zsre_target == ZsreTarget::Alt) {
        r.target_new = string_field(w, record, "", "alt");
        if (r.target_new.empty()) return std::nullopt;  // EasyEdit skips these
        r.target_true = answers[0];
        c.answer_before = answers[0];
    } else {
        r.target_new = answers[0];
    }
    r.prediction = optional_string(w, record, "", "pred").value_or("");
    c.rewrites.push_back(std::move(r));
    if (auto rephrase = optional_string(w, record, "", "rephrase")) c.paraphrase_prompts.push_back(*rephrase);
    // The "nq question: " prefix stays: ROME's zsRE evaluation feeds it to the model as it is.
    if (auto loc = optional_string(w, record, "", "loc"))
        c.locality.push_back({*loc, string_field(w, record, "", "loc_ans"), "nq"});
    return c;
}

// single_hops / new_single_hops: [{question, cloze, answer, answer_alias}]. The cloze is the probe
// where there is one: a base LM completes statements, it does not answer questions.
void read_single_hops(const Where& w, const json& record, const char* key, const char* kind, EditCase& c) {
    const json* hops = find(record, key);
    if (!hops) return;
    if (!hops->is_array()) w.fail(std::string(key) + ": expected an array, got " + hops->type_name());
    for (size_t i = 0; i < hops->size(); ++i) {
        const std::string prefix = std::string(key) + "[" + std::to_string(i) + "]";
        const json& hop = (*hops)[i];
        if (!hop.is_object()) w.fail(prefix + ": expected an object, got " + hop.type_name());
        std::string prompt = optional_string(w, hop, prefix, "cloze").value_or("");
        if (prompt.empty()) prompt = string_field(w, hop, prefix, "question");
        c.portability.push_back({std::move(prompt), target_field(w, hop, prefix, "answer"), kind});
    }
}

std::optional<EditCase> read_mquake(const Where& w, const json& record, const DatasetOptions&) {
    EditCase c = new_case(w, record);
    const json& rrs = require(w, record, "", "requested_rewrite");
    if (!rrs.is_array()) w.fail(std::string("requested_rewrite: expected an array, got ") + rrs.type_name());
    if (rrs.empty()) w.fail("requested_rewrite is empty");
    for (size_t i = 0; i < rrs.size(); ++i)
        c.rewrites.push_back(read_rewrite(w, rrs[i], "requested_rewrite[" + std::to_string(i) + "]"));
    const std::string new_answer = string_field(w, record, "", "new_answer");
    c.answer_before = string_field(w, record, "", "answer");
    c.answer_aliases = string_array(w, record, "", "answer_alias");
    c.new_answer_aliases = string_array(w, record, "", "new_answer_alias");
    for (const auto& q : string_array(w, record, "", "questions", /*required=*/true))
        c.portability.push_back({q, new_answer, "multi_hop"});
    read_single_hops(w, record, "single_hops", "single_hop", c);
    read_single_hops(w, record, "new_single_hops", "new_single_hop", c);
    return c;
}

using Reader = std::optional<EditCase> (*)(const Where&, const json&, const DatasetOptions&);

Reader reader_for(DatasetFormat format) {
    switch (format) {
    case DatasetFormat::CounterFact: return read_counterfact;
    case DatasetFormat::CounterFactFlat: return read_counterfact_flat;
    case DatasetFormat::Zsre: return read_zsre;
    case DatasetFormat::Mquake: return read_mquake;
    case DatasetFormat::Auto: break;
    }
    throw Error(ErrorKind::Internal, "no reader for dataset format auto");
}

DatasetFormat detect_format(const Where& w, const json& record) {
    if (const json* rr = find(record, "requested_rewrite")) {
        if (rr->is_object()) return DatasetFormat::CounterFact;
        if (rr->is_array()) return DatasetFormat::Mquake;
        w.fail(std::string("requested_rewrite: expected an object (CounterFact) or an array (MQuAKE), got ") +
               rr->type_name());
    }
    auto has = [&](const char* key) { return find(record, key) != nullptr; };
    if (has("src") && has("answers")) return DatasetFormat::Zsre;
    if (has("prompt") && has("target_new") && (has("ground_truth") || has("subject")))
        return DatasetFormat::CounterFactFlat;
    std::string fields;
    for (const auto& [key, value] : record.items()) fields += (fields.empty() ? "" : ", ") + key;
    w.fail("unknown dataset layout (fields: " + fields +
           "); expected CounterFact (requested_rewrite object), MQuAKE (requested_rewrite array), "
           "zsRE (src, answers) or flat CounterFact (prompt, subject, target_new, ground_truth)");
}


// A JSON array of records, or JSON Lines (one record per line) when the file does not open with '['.
json parse_records(const std::string& text, const std::string& name) {
    const size_t bom = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
    const size_t pos = text.find_first_not_of(" \t\r\n", bom);
    if (pos != std::string::npos && text[pos] == '[') {
        try {
            return json::parse(text.begin() + static_cast<std::ptrdiff_t>(pos), text.end());
        } catch (const json::parse_error& e) {
            throw Error(ErrorKind::Format, name + ": invalid JSON: " + e.what());
        }
    }
    json records = json::array();
    std::istringstream lines(text.substr(bom));
    std::string line;
    for (int64_t line_no = 1; std::getline(lines, line); ++line_no) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
            records.push_back(json::parse(line));
        } catch (const json::parse_error& e) {
            throw Error(ErrorKind::Format, name + ": line " + std::to_string(line_no) + ": invalid JSON: " + e.what());
        }
    }
    return records;
}

}  // namespace

const char* dataset_format_name(DatasetFormat format) {
    switch (format) {
    case DatasetFormat::Auto: return "auto";
    case DatasetFormat::CounterFact: return "counterfact";
    case DatasetFormat::CounterFactFlat: return "counterfact_flat";
    case DatasetFormat::Zsre: return "zsre";
    case DatasetFormat::Mquake: return "mquake";
    }
    return "?";
}

std::optional<DatasetFormat> dataset_format_from_name(std::string_view name) {
    std::string key(name);
    for (char& ch : key) {
        if (ch == '-') ch = '_';
        if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
    }
    for (DatasetFormat f : {DatasetFormat::Auto, DatasetFormat::CounterFact, DatasetFormat::CounterFactFlat,
                            DatasetFormat::Zsre, DatasetFormat::Mquake})
        if (key == dataset_format_name(f)) return f;
    return std::nullopt;
}

size_t count_placeholders(std::string_view s) {
    size_t n = 0;
    for (size_t pos = s.find("{}"); pos != std::string_view::npos; pos = s.find("{}", pos + 2)) ++n;
    return n;
}

std::string fill_placeholder(std::string_view templ, std::string_view text) {
    std::string out(templ);
    if (const size_t pos = out.find("{}"); pos != std::string::npos) out.replace(pos, 2, text);
    return out;
}

std::optional<std::string> template_at_subject(std::string_view prompt, std::string_view subject) {
    const size_t pos = subject.empty() ? std::string_view::npos : prompt.find(subject);
    if (pos == std::string_view::npos) return std::nullopt;
    std::string templ(prompt);
    templ.replace(pos, subject.size(), "{}");
    return templ;
}

std::string Rewrite::prompt_text() const { return fill_placeholder(prompt, subject); }

Dataset load_dataset(const std::filesystem::path& file, const DatasetOptions& options) {
    const std::string name = file.filename().string();
    // The text and its parsed form are held at once; the parsed form of these records (short
    // strings in nested objects) takes several times the text. A file that cannot fit is refused
    // before it is read. The factor is an estimate, on the safe side.
    constexpr uint64_t kParsedPerByte = 8;
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(file, ec);
    if (!ec) require_memory(size * kParsedPerByte, name + " (" + std::to_string(size >> 20) + " MiB of JSON)");
    const json records = parse_records(read_file(file, "dataset"), name);
    if (!records.is_array())
        throw Error(ErrorKind::Format, name + ": expected a JSON array of records, got " + records.type_name());

    Dataset ds;
    ds.file = file;
    ds.format = options.format;
    Reader read = nullptr;
    for (size_t i = 0; i < records.size(); ++i) {
        if (options.limit > 0 && static_cast<int64_t>(ds.cases.size()) >= options.limit) break;
        const Where w{name, static_cast<int64_t>(i)};
        const json& record = records[i];
        if (!record.is_object()) w.fail(std::string("expected a JSON object, got ") + record.type_name());
        if (ds.format == DatasetFormat::Auto) ds.format = detect_format(w, record);
        if (!read) read = reader_for(ds.format);
        if (auto c = read(w, record, options)) ds.cases.push_back(std::move(*c));
    }
    return ds;
}

}  // namespace engram::eval
