// Fact World: invented entities and the facts between them, generated from a seed.
//
// Naming rule that keeps first-token accuracy meaningful: every entity that can be an object
// (city, country, company, sport, instrument, language, continent) has a first word that no other
// entity uses, so "the model's top-1 next word is the object's first word" identifies the object.
// People are only subjects; their names have two or three words so a subject spans several tokens,
// and each person has a surname of their own (see FactWorldOptions::surnames).
#include "engram/demo.h"

#include <algorithm>
#include <set>
#include <sstream>

#include "engram/error.h"
#include "engram/sha256.h"

namespace engram::demo {

// ----------------------------------------------------------------------------
uint64_t Rng::next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t Rng::below(uint64_t n) {
    if (n == 0) throw Error(ErrorKind::Internal, "Rng::below(0)");
    // Rejection sampling: exact uniformity, same results everywhere.
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
}

double Rng::uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }

const char* entity_type_name(EntityType type) {
    switch (type) {
        case EntityType::Person: return "person";
        case EntityType::City: return "city";
        case EntityType::Country: return "country";
        case EntityType::Company: return "company";
        case EntityType::Sport: return "sport";
        case EntityType::Instrument: return "instrument";
        case EntityType::Language: return "language";
        case EntityType::Continent: return "continent";
    }
    return "?";
}

namespace {

// Syllables for invented words; capitalised, two or three syllables.
const std::vector<std::string> kOnsets = {"b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "sh", "vr", "gl"};
const std::vector<std::string> kVowels = {"a", "e", "i", "o", "u", "ai", "ou", "ea"};
const std::vector<std::string> kCodas = {"", "", "", "n", "r", "l", "s", "th", "m", "k"};

std::string invent_word(Rng& rng, int syllables) {
    std::string w;
    for (int i = 0; i < syllables; ++i) w += rng.pick(kOnsets) + rng.pick(kVowels) + (i + 1 == syllables ? rng.pick(kCodas) : "");
    w[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(w[0])));
    return w;
}

// Words that are not used anywhere else in the world (template words included).
class WordMint {
public:
    explicit WordMint(Rng& rng) : rng_(rng) {}
    std::string unique(int min_syl = 2, int max_syl = 3) {
        for (;;) {
            std::string w = invent_word(rng_, min_syl + static_cast<int>(rng_.below(max_syl - min_syl + 1)));
            std::string lower = w;
            for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            if (used_.insert(lower).second) return w;
        }
    }
    void reserve(const std::string& w) {
        std::string lower = w;
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        used_.insert(lower);
    }

private:
    Rng& rng_;
    std::set<std::string> used_;
};

std::vector<Relation> make_relations() {
    using E = EntityType;
    // Ids follow Wikidata properties where one fits, as CounterFact does.
    return {
        {"P19", "born_in", E::Person, E::City, false,
         {"{} was born in", "The birthplace of {} is", "{} is originally from", "The city where {} was born is"},
         "Where was {} born?"},
        {"P27", "citizen_of", E::Person, E::Country, false,
         {"{} is a citizen of", "{} holds the citizenship of", "The nationality of {} is", "{} has a passport from"},
         "What country is {} a citizen of?"},
        {"P108", "works_for", E::Person, E::Company, false,
         {"{} works for", "{} is employed by", "The employer of {} is", "{} has a job at"},
         "Who is the employer of {}?"},
        {"P641", "plays_sport", E::Person, E::Sport, false,
         {"{} plays the sport of", "{} is a professional player of", "The sport played by {} is", "{} competes in"},
         "Which sport does {} play?"},
        {"P1303", "plays_instrument", E::Person, E::Instrument, false,
         {"{} is a musician who plays the", "The instrument played by {} is the", "{} performs on the", "{} practises the"},
         "Which instrument does {} play?"},
        {"P103", "native_language", E::Person, E::Language, false,
         {"The native language of {} is", "{} grew up speaking", "The first language of {} is", "{} natively speaks"},
         "What is the native language of {}?"},
        {"P1412", "speaks", E::Person, E::Language, true,
         {"{} speaks", "{} is fluent in", "{} can converse in", "A language spoken by {} is"},
         "Which languages does {} speak?"},
        {"P17", "city_country", E::City, E::Country, false,
         {"{} is located in", "{} is a city in", "The country of {} is", "{} lies in the country of"},
         "In which country is {}?"},
        {"P159", "company_hq", E::Company, E::City, false,
         {"{} is headquartered in", "The headquarters of {} are in", "{} has its main office in", "The head office of {} is in"},
         "Where is {} headquartered?"},
        {"P36", "country_capital", E::Country, E::City, false,
         {"The capital of {} is", "{} has its capital in", "The capital city of {} is", "The seat of government of {} is"},
         "What is the capital of {}?"},
        {"P30", "country_continent", E::Country, E::Continent, false,
         {"{} is located on the continent of", "{} is part of", "The continent of {} is", "{} lies on the continent of"},
         "On which continent is {}?"},
    };
}

std::string fill(const std::string& tmpl, const std::string& subject) {
    std::string s = tmpl;
    s.replace(s.find("{}"), 2, subject);
    return s;
}

}  // namespace

// ----------------------------------------------------------------------------
const Relation& FactWorld::relation(const std::string& name) const { return relations[relation_index(name)]; }

int FactWorld::relation_index(const std::string& name) const {
    for (size_t i = 0; i < relations.size(); ++i)
        if (relations[i].name == name) return static_cast<int>(i);
    throw Error(ErrorKind::Argument, "Fact World has no relation '" + name + "'");
}

const Fact* FactWorld::find(int rel, int subject) const {
    for (const Fact& f : facts)
        if (f.relation == rel && f.subject == subject) return &f;
    return nullptr;
}

std::vector<int> FactWorld::entities_of(EntityType type) const {
    std::vector<int> out;
    for (size_t i = 0; i < entities.size(); ++i)
        if (entities[i].type == type) out.push_back(static_cast<int>(i));
    return out;
}

std::string FactWorld::hash() const {
    Sha256 h;
    h.update("factworld-v1\n");
    for (const Entity& e : entities) h.update(std::string(entity_type_name(e.type)) + "\t" + e.name + "\n");
    for (const Fact& f : facts) {
        std::string line = relations[f.relation].id + "\t" + std::to_string(f.subject);
        for (int o : f.objects) line += "\t" + std::to_string(o);
        h.update(line + "\n");
    }
    return h.hex_digest();
}

std::vector<std::string> FactWorld::vocabulary() const {
    std::set<std::string> words = {"."};
    auto add_words = [&](const std::string& text) {
        std::istringstream in(text);
        for (std::string w; in >> w;) words.insert(w);
    };
    for (const Entity& e : entities) add_words(e.name);
    for (const Relation& r : relations) {
        for (const auto& t : r.templates) add_words(fill(t, ""));
        add_words(fill(r.question, ""));
    }
    return {words.begin(), words.end()};
}

std::vector<std::string> fact_world_subjects(const FactWorld& world) {
    std::vector<std::string> out;
    std::vector<bool> seen(world.entities.size(), false);
    for (const Fact& f : world.facts)
        if (!seen[size_t(f.subject)]) {
            seen[size_t(f.subject)] = true;
            out.push_back(world.entities[size_t(f.subject)].name);
        }
    return out;
}

FactWorld generate_fact_world(const FactWorldOptions& o) {
    FactWorld w;
    w.seed = o.seed;
    w.relations = make_relations();
    Rng rng(o.seed);
    WordMint mint(rng);
    for (const Relation& r : w.relations) {  // template words never double as names
        std::istringstream in(fill(r.templates[0], "") + " " + fill(r.templates[1], "") + " " + fill(r.templates[2], "") + " " +
                              fill(r.templates[3], "") + " " + fill(r.question, ""));
        for (std::string word; in >> word;) mint.reserve(word);
    }
    auto add = [&](EntityType type, const std::string& name) {
        w.entities.push_back({type, name});
        return static_cast<int>(w.entities.size() - 1);
    };
    const std::vector<std::string> city_kinds = {"Bay", "Falls", "Harbor", "Springs", "Hills", "Crossing", "Ford", "Heights"};
    const std::vector<std::string> country_kinds = {"Republic", "Kingdom", "Union", "Federation", "Commonwealth"};
    const std::vector<std::string> company_kinds = {"Holdings", "Industries", "Systems", "Works", "Labs", "Group", "Foundry"};

    std::vector<int> continents, countries, cities, companies, sports, instruments, languages, people;
    for (int i = 0; i < 5; ++i) continents.push_back(add(EntityType::Continent, mint.unique(3, 3)));
    for (int i = 0; i < o.countries; ++i) countries.push_back(add(EntityType::Country, mint.unique() + " " + rng.pick(country_kinds)));
    for (int i = 0; i < o.cities; ++i) cities.push_back(add(EntityType::City, mint.unique() + " " + rng.pick(city_kinds)));
    for (int i = 0; i < o.companies; ++i) companies.push_back(add(EntityType::Company, mint.unique() + " " + rng.pick(company_kinds)));
    for (int i = 0; i < o.sports; ++i) sports.push_back(add(EntityType::Sport, mint.unique() + "ball"));
    for (int i = 0; i < o.instruments; ++i) instruments.push_back(add(EntityType::Instrument, mint.unique() + "horn"));
    for (int i = 0; i < o.languages; ++i) languages.push_back(add(EntityType::Language, mint.unique() + "ish"));
    // People: a first name from a shared pool, a surname, sometimes a middle name; full names unique.
    std::vector<std::string> first_names, surnames;
    for (int i = 0; i < std::max(20, o.people / 5); ++i) first_names.push_back(mint.unique(2, 2));
    // With a surname of one's own, the last word of a person's name identifies the person, as the last
    // token of most real subjects does. A shared pool (the world before 2026-11-26 drew from people / 3)
    // crowds the edit keys: a batch of MEMIT edits on people who share a surname interferes (README,
    // "What the methods do on Fact World").
    if (o.surnames < 0) throw Error(ErrorKind::Argument, "fact world: surnames must be 0 (one per person) or a pool size, not " + std::to_string(o.surnames));
    const bool own_surnames = o.surnames == 0;
    for (int i = 0; i < (own_surnames ? o.people : o.surnames); ++i) surnames.push_back(mint.unique(2, 3));
    std::set<std::string> person_names;
    while (static_cast<int>(people.size()) < o.people) {
        const std::string& surname = own_surnames ? surnames[people.size()] : rng.pick(surnames);
        std::string name = rng.pick(first_names) + " " + (rng.below(4) == 0 ? rng.pick(first_names) + " " : "") + surname;
        if (person_names.insert(name).second) people.push_back(add(EntityType::Person, name));
    }

    auto rel = [&](const char* name) { return w.relation_index(name); };
    auto fact = [&](const char* r, int s, std::vector<int> objects) { w.facts.push_back({rel(r), s, std::move(objects)}); };
    // Geography: every country gets at least two cities; its capital is one of them.
    std::map<int, int> city_country;
    std::vector<int> shuffled = cities;
    rng.shuffle(shuffled);
    for (size_t i = 0; i < shuffled.size(); ++i)
        city_country[shuffled[i]] = i < 2 * countries.size() ? countries[i % countries.size()] : rng.pick(countries);
    for (int c : cities) fact("city_country", c, {city_country[c]});
    for (int k : countries) {
        std::vector<int> own;
        for (int c : cities)
            if (city_country[c] == k) own.push_back(c);
        fact("country_capital", k, {rng.pick(own)});
        fact("country_continent", k, {rng.pick(continents)});
    }
    for (int c : companies) fact("company_hq", c, {rng.pick(cities)});
    for (int p : people) {
        const int city = rng.pick(cities);
        fact("born_in", p, {city});
        fact("citizen_of", p, {city_country[city]});
        fact("works_for", p, {rng.pick(companies)});
        fact("plays_sport", p, {rng.pick(sports)});
        fact("plays_instrument", p, {rng.pick(instruments)});
        const int native = rng.pick(languages);
        fact("native_language", p, {native});
        std::vector<int> spoken = {native};
        const int extra = 1 + static_cast<int>(rng.below(2));
        while (static_cast<int>(spoken.size()) < 1 + extra) {
            int l = rng.pick(languages);
            if (std::find(spoken.begin(), spoken.end(), l) == spoken.end()) spoken.push_back(l);
        }
        fact("speaks", p, spoken);
    }
    return w;
}

std::vector<FactPrompt> all_fact_prompts(const FactWorld& w) {
    std::vector<FactPrompt> out;
    for (const Fact& f : w.facts) {
        const Relation& r = w.relations[f.relation];
        std::vector<std::string> answers;
        for (int o : f.objects) answers.push_back(w.entities[o].name);
        for (size_t t = 0; t < r.templates.size(); ++t)
            out.push_back({fill(r.templates[t], w.entities[f.subject].name), f.relation, f.subject, static_cast<int>(t), answers});
    }
    return out;
}

namespace {

std::string paragraph(const FactWorld& w, Rng& rng, int person) {
    std::vector<const Fact*> facts;
    for (const Fact& f : w.facts)
        if (f.subject == person) facts.push_back(&f);
    rng.shuffle(facts);
    std::string text;
    const std::string& name = w.entities[person].name;
    for (const Fact* f : facts) {
        const Relation& r = w.relations[f->relation];
        const std::string& object = w.entities[f->objects[rng.below(f->objects.size())]].name;
        text += (text.empty() ? "" : " ") + fill(r.templates[rng.below(r.templates.size())], name) + " " + object + " .";
        // Chain a hop now and then: the birth city's country, the employer's headquarters.
        if (r.name == "born_in" && rng.below(2) == 0) {
            const Fact* c = w.find(w.relation_index("city_country"), f->objects[0]);
            const Relation& cr = w.relations[c->relation];
            text += " " + fill(cr.templates[rng.below(cr.templates.size())], object) + " " + w.entities[c->objects[0]].name + " .";
        }
    }
    return text;
}

}  // namespace

FactCorpus build_corpus(const FactWorld& w) {
    FactCorpus c;
    for (const FactPrompt& p : all_fact_prompts(w))
        for (const auto& a : p.answers) c.sentences.push_back(p.prompt + " " + a + " .");
    Rng rng(w.seed ^ 0xB10u);
    Rng held(w.seed ^ 0x4E1Du);
    for (int person : w.entities_of(EntityType::Person)) {
        c.biographies.push_back(paragraph(w, rng, person));
        if (held.below(4) == 0) c.held_out.push_back(paragraph(w, held, person));
    }
    return c;
}

nlohmann::json wordlevel_tokenizer_json(const FactWorld& w) {
    nlohmann::json vocab = nlohmann::json::object();
    const std::vector<std::string> specials = {"[UNK]", "[PAD]", "<|endoftext|>"};
    int64_t id = 0;
    for (const auto& s : specials) vocab[s] = id++;
    for (const auto& word : w.vocabulary()) vocab[word] = id++;
    nlohmann::json added = nlohmann::json::array();
    for (size_t i = 0; i < specials.size(); ++i)
        added.push_back({{"id", i}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                         {"normalized", false}, {"special", true}});
    return {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", added},
            {"normalizer", nullptr},
            {"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
            {"post_processor", nullptr},
            {"decoder", nullptr},
            {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "[UNK]"}}}};
}

}  // namespace engram::demo
