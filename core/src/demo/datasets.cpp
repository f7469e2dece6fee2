// Fact World datasets in the layouts the field uses, so the same loaders read them and the
// public data: CounterFact (ROME's nested records), zsRE (MEND/EasyEdit), MQuAKE, and a
// multi-answer compositional set (the A3E "MAC" setting) over the multi-valued `speaks` relation.
#include <algorithm>
#include <fstream>
#include <map>

#include "engram/demo.h"
#include "engram/error.h"

namespace engram::demo {

namespace {

std::string fill(const std::string& tmpl, const std::string& subject) {
    std::string s = tmpl;
    s.replace(s.find("{}"), 2, subject);
    return s;
}

std::string entity_id(int index) { return "E" + std::to_string(index); }

// A different object of the same type as `avoid` (and not in `exclude`).
int other_object(const FactWorld& w, Rng& rng, EntityType type, const std::vector<int>& exclude) {
    std::vector<int> pool;
    for (int e : w.entities_of(type))
        if (std::find(exclude.begin(), exclude.end(), e) == exclude.end()) pool.push_back(e);
    if (pool.empty()) throw Error(ErrorKind::Internal, "Fact World: no alternative object");
    return rng.pick(pool);
}

std::vector<const Fact*> single_valued_facts(const FactWorld& w) {
    std::vector<const Fact*> out;
    for (const Fact& f : w.facts)
        if (!w.relations[f.relation].multi_valued) out.push_back(&f);
    return out;
}

}  // namespace

nlohmann::json attribute_snippets(const FactWorld& w) {
    std::map<std::pair<int, int>, nlohmann::json> samples;  // (relation, object) -> [{name, text}]
    for (const Fact& f : w.facts) {
        const Relation& r = w.relations[f.relation];
        const std::string& subject = w.entities[f.subject].name;
        for (int o : f.objects) {
            nlohmann::json& list = samples[{f.relation, o}];
            for (const std::string& t : r.templates) list.push_back({{"name", subject}, {"text", fill(t, subject) + " " + w.entities[o].name + " ."}});
        }
    }
    nlohmann::json out = nlohmann::json::array();
    for (auto& [key, list] : samples)
        out.push_back({{"relation_id", w.relations[key.first].id}, {"target_id", entity_id(key.second)}, {"samples", std::move(list)}});
    return out;
}

nlohmann::json counterfact_dataset(const FactWorld& w, uint64_t seed, int records) {
    Rng rng(seed);
    std::vector<const Fact*> facts = single_valued_facts(w);
    rng.shuffle(facts);
    nlohmann::json out = nlohmann::json::array();
    for (const Fact* f : facts) {
        if (static_cast<int>(out.size()) >= records) break;
        const Relation& r = w.relations[f->relation];
        const std::string& subject = w.entities[f->subject].name;
        const int t = static_cast<int>(rng.below(r.templates.size()));
        const int true_obj = f->objects[0];
        const int new_obj = other_object(w, rng, r.object_type, {true_obj});

        nlohmann::json paraphrases = nlohmann::json::array();
        for (size_t k = 1; paraphrases.size() < 2; ++k) paraphrases.push_back(fill(r.templates[(t + k) % r.templates.size()], subject));

        // Neighbours: other subjects of the same relation with the same true object.
        std::vector<const Fact*> same_true, same_new;
        for (const Fact& g : w.facts) {
            if (g.relation != f->relation || g.subject == f->subject) continue;
            if (g.objects[0] == true_obj) same_true.push_back(&g);
            if (g.objects[0] == new_obj) same_new.push_back(&g);
        }
        if (same_true.empty()) continue;  // a record needs neighbours to measure locality
        nlohmann::json neighborhood = nlohmann::json::array(), attribute = nlohmann::json::array();
        for (size_t k = 0; neighborhood.size() < 10; ++k) {
            const Fact* g = same_true[k % same_true.size()];
            neighborhood.push_back(fill(r.templates[(k / same_true.size() + k) % r.templates.size()], w.entities[g->subject].name));
        }
        for (size_t k = 0; k < std::min<size_t>(10, same_new.size()); ++k)
            attribute.push_back(fill(r.templates[k % r.templates.size()], w.entities[same_new[k]->subject].name));
        // Generation prompts: the subject in the templates of its other relations.
        nlohmann::json generation = nlohmann::json::array();
        for (const Fact& g : w.facts)
            if (g.subject == f->subject && g.relation != f->relation && generation.size() < 5)
                generation.push_back(fill(w.relations[g.relation].templates[rng.below(4)], subject));

        out.push_back({{"case_id", out.size()},
                       {"pararel_idx", f->relation},
                       {"requested_rewrite",
                        {{"prompt", r.templates[t]},
                         {"relation_id", r.id},
                         {"subject", subject},
                         {"target_new", {{"str", w.entities[new_obj].name}, {"id", entity_id(new_obj)}}},
                         {"target_true", {{"str", w.entities[true_obj].name}, {"id", entity_id(true_obj)}}}}},
                       {"paraphrase_prompts", paraphrases},
                       {"neighborhood_prompts", neighborhood},
                       {"attribute_prompts", attribute},
                       {"generation_prompts", generation}});
    }
    if (static_cast<int>(out.size()) < records)
        throw Error(ErrorKind::Internal, "Fact World is too small for " + std::to_string(records) + " CounterFact records");
    return out;
}

nlohmann::json zsre_dataset(const FactWorld& w, uint64_t seed, int records) {
    Rng rng(seed);
    std::vector<const Fact*> facts = single_valued_facts(w);
    rng.shuffle(facts);
    nlohmann::json out = nlohmann::json::array();
    for (size_t i = 0; i < facts.size() && static_cast<int>(out.size()) < records; ++i) {
        const Fact* f = facts[i];
        const Relation& r = w.relations[f->relation];
        const std::string& subject = w.entities[f->subject].name;
        const int alt = other_object(w, rng, r.object_type, {f->objects[0]});
        // Locality: an unrelated fact of another subject, asked as a cloze prompt.
        const Fact* loc = facts[(i + facts.size() / 2) % facts.size()];
        const Relation& lr = w.relations[loc->relation];
        const std::string src = fill(r.question, subject);
        out.push_back({{"subject", subject},
                       {"src", src},
                       {"pred", w.entities[f->objects[0]].name},
                       {"rephrase", fill(r.templates[rng.below(r.templates.size())], subject)},
                       {"alt", w.entities[alt].name},
                       {"answers", {w.entities[f->objects[0]].name}},
                       {"loc", "nq question: " + fill(lr.templates[0], w.entities[loc->subject].name)},
                       {"loc_ans", w.entities[loc->objects[0]].name},
                       {"cond", w.entities[f->objects[0]].name + " >> " + w.entities[alt].name + " || " + src}});
    }
    return out;
}

nlohmann::json mquake_dataset(const FactWorld& w, uint64_t seed, int records) {
    // Chains person -born_in-> city -city_country-> country -country_capital-> capital city.
    // One edit per instance, on a random hop; the answers before and after follow the chain.
    Rng rng(seed);
    const int born = w.relation_index("born_in"), located = w.relation_index("city_country"), capital = w.relation_index("country_capital");
    std::vector<int> people = w.entities_of(EntityType::Person);
    rng.shuffle(people);
    nlohmann::json out = nlohmann::json::array();
    for (int p : people) {
        if (static_cast<int>(out.size()) >= records) break;
        const int city = w.find(born, p)->objects[0];
        const int country = w.find(located, city)->objects[0];
        const int cap = w.find(capital, country)->objects[0];
        const int hop = static_cast<int>(rng.below(3));  // which fact is edited
        const int rels[3] = {born, located, capital};
        const int subjects[3] = {p, city, country};
        const int objects[3] = {city, country, cap};
        const Relation& er = w.relations[rels[hop]];
        const int new_obj = other_object(w, rng, er.object_type, {objects[hop]});

        // Follow the chain with the edit applied.
        int new_objects[3];
        int cur = p;
        for (int k = 0; k < 3; ++k) {
            // Hops before the edited one are unchanged, so at k == hop the chain reaches its subject.
            new_objects[k] = k == hop ? new_obj : w.find(rels[k], cur)->objects[0];
            cur = new_objects[k];
        }
        const std::string person = w.entities[p].name;
        nlohmann::json questions = {
            "What is the capital of the country where " + person + " was born?",
            "In the country where " + person + " was born, which city is the capital?",
            "The capital of the birth country of " + person + " is which city?",
        };
        nlohmann::json single_hops = nlohmann::json::array(), new_single_hops = nlohmann::json::array();
        for (int k = 0; k < 3; ++k) {
            const Relation& r = w.relations[rels[k]];
            single_hops.push_back({{"question", fill(r.question, w.entities[subjects[k]].name)},
                                   {"cloze", fill(r.templates[0], w.entities[subjects[k]].name)},
                                   {"answer", w.entities[objects[k]].name},
                                   {"answer_alias", nlohmann::json::array()}});
            const int new_subject = k == 0 ? p : new_objects[k - 1];
            new_single_hops.push_back({{"question", fill(r.question, w.entities[new_subject].name)},
                                       {"cloze", fill(r.templates[0], w.entities[new_subject].name)},
                                       {"answer", w.entities[new_objects[k]].name},
                                       {"answer_alias", nlohmann::json::array()}});
        }
        auto triple = [&](int s, int r, int o) { return nlohmann::json::array({entity_id(s), w.relations[r].id, entity_id(o)}); };
        out.push_back({{"case_id", out.size()},
                       {"requested_rewrite",
                        {{{"prompt", er.templates[0]},
                          {"relation_id", er.id},
                          {"subject", w.entities[subjects[hop]].name},
                          {"target_new", {{"str", w.entities[new_obj].name}, {"id", entity_id(new_obj)}}},
                          {"target_true", {{"str", w.entities[objects[hop]].name}, {"id", entity_id(objects[hop])}}},
                          {"question", fill(er.question, w.entities[subjects[hop]].name)}}}},
                       {"questions", questions},
                       {"answer", w.entities[cap].name},
                       {"answer_alias", nlohmann::json::array()},
                       {"new_answer", w.entities[new_objects[2]].name},
                       {"new_answer_alias", nlohmann::json::array()},
                       {"single_hops", single_hops},
                       {"new_single_hops", new_single_hops},
                       {"orig",
                        {{"triples", {triple(p, born, city), triple(city, located, country), triple(country, capital, cap)}},
                         {"new_triples", {triple(p, born, new_objects[0]), triple(new_objects[0], located, new_objects[1]),
                                          triple(new_objects[1], capital, new_objects[2])}},
                         {"edit_triples", {triple(subjects[hop], rels[hop], new_obj)}}}}});
    }
    return out;
}

nlohmann::json compositional_dataset(const FactWorld& w, uint64_t seed, int records) {
    // Multi-answer composition: two edits each add a language a person speaks; answering
    // "Which languages does X speak?" needs both.
    Rng rng(seed);
    const int speaks = w.relation_index("speaks");
    const Relation& r = w.relations[speaks];
    std::vector<int> people = w.entities_of(EntityType::Person);
    rng.shuffle(people);
    nlohmann::json out = nlohmann::json::array();
    for (int p : people) {
        if (static_cast<int>(out.size()) >= records) break;
        std::vector<int> known = w.find(speaks, p)->objects;
        const int a = other_object(w, rng, EntityType::Language, known);
        known.push_back(a);
        const int b = other_object(w, rng, EntityType::Language, known);
        const std::string person = w.entities[p].name;
        nlohmann::json edits = nlohmann::json::array();
        for (int lang : {a, b})
            edits.push_back({{"prompt", r.templates[rng.below(r.templates.size())]},
                             {"relation_id", r.id},
                             {"subject", person},
                             {"target_new", {{"str", w.entities[lang].name}, {"id", entity_id(lang)}}}});
        nlohmann::json before = nlohmann::json::array();
        for (int l : w.find(speaks, p)->objects) before.push_back(w.entities[l].name);
        out.push_back({{"case_id", out.size()},
                       {"type", "MAC"},
                       {"subject", person},
                       {"question", fill(r.question, person)},
                       {"rephrase", "Name the languages that " + person + " speaks."},
                       {"requested_rewrite", edits},
                       {"answers_before", before},
                       {"new_answers", {w.entities[a].name, w.entities[b].name}}});
    }
    return out;
}

nlohmann::json fact_world_json(const FactWorld& w) {
    nlohmann::json entities = nlohmann::json::array(), relations = nlohmann::json::array(), facts = nlohmann::json::array();
    for (size_t i = 0; i < w.entities.size(); ++i)
        entities.push_back({{"id", entity_id(static_cast<int>(i))}, {"type", entity_type_name(w.entities[i].type)}, {"name", w.entities[i].name}});
    for (const Relation& r : w.relations)
        relations.push_back({{"id", r.id}, {"name", r.name}, {"subject_type", entity_type_name(r.subject_type)},
                             {"object_type", entity_type_name(r.object_type)}, {"multi_valued", r.multi_valued},
                             {"templates", r.templates}, {"question", r.question}});
    for (const Fact& f : w.facts) {
        nlohmann::json objects = nlohmann::json::array();
        for (int o : f.objects) objects.push_back(w.entities[o].name);
        facts.push_back({{"relation", w.relations[f.relation].name}, {"subject", w.entities[f.subject].name}, {"objects", objects}});
    }
    return {{"seed", w.seed}, {"hash", w.hash()}, {"entities", entities}, {"relations", relations}, {"facts", facts}};
}

void write_fact_world_files(const FactWorld& w, const std::filesystem::path& dir) {
    std::filesystem::create_directories(dir);
    auto write = [&](const char* name, const std::string& text) {
        std::ofstream out(dir / name);
        out << text;
        if (!out) throw Error(ErrorKind::Io, (dir / name).string() + ": cannot write");
    };
    auto lines = [](const std::vector<std::string>& v) {
        std::string s;
        for (const auto& l : v) s += l + "\n";
        return s;
    };
    const FactCorpus corpus = build_corpus(w);
    write("world.json", fact_world_json(w).dump(1) + "\n");
    write("corpus.txt", lines(corpus.sentences) + lines(corpus.biographies));
    write("held_out.txt", lines(corpus.held_out));
    write("counterfact.json", counterfact_dataset(w, w.seed + 1, 1000).dump(1) + "\n");
    write("zsre.json", zsre_dataset(w, w.seed + 2, 1000).dump(1) + "\n");
    write("mquake.json", mquake_dataset(w, w.seed + 3, 200).dump(1) + "\n");
    write("compositional.json", compositional_dataset(w, w.seed + 4, 200).dump(1) + "\n");
}

}  // namespace engram::demo
