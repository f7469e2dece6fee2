// The demo worlds: deterministic generation, the datasets' layouts, the shipped checkpoints'
// accuracy (computed over the whole dataset, not a sample), and short training runs.
#include <QtTest>

#include <ATen/ATen.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engram/demo.h"
#include "engram/error.h"
#include "engram/model.h"
#include "engram/tokenizer.h"
#include "test_util.h"

using namespace engram;
using engram::test::TempDir;
namespace fs = std::filesystem;

namespace {
fs::path resources() { return fs::path(ENGRAM_SOURCE_RESOURCES) / "demo"; }
int words(const std::string& s) {
    std::istringstream in(s);
    int n = 0;
    for (std::string w; in >> w;) ++n;
    return n;
}
}  // namespace

class TestDemo : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void factWorldIsDeterministic();
    void factWorldHasTheRequiredShape();
    void promptsNeverPrefixOtherPrompts();
    void datasetsHaveTheFieldsLayouts();
    void shippedLmAnswersTheFacts();
    void quickLmTrainingLowersTheLoss();
    void shapesAreDeterministic();
    void shapesPngRoundTrip();
    void shippedVitSeesShapes();
    void quickVitTrainingLowersTheLoss();
};

void TestDemo::factWorldIsDeterministic() {
    const std::string a = demo::generate_fact_world().hash(), b = demo::generate_fact_world().hash();
    QCOMPARE(a, b);
    demo::FactWorldOptions other;
    other.seed = 99;
    QVERIFY(demo::generate_fact_world(other).hash() != a);
    // The shipped world.json was written by `demo train` from the default seed: same world.
    std::ifstream in(resources() / "factworld" / "world.json");
    QVERIFY2(in, "resources/demo/factworld/world.json is missing");
    QCOMPARE(nlohmann::json::parse(in)["hash"].get<std::string>(), a);
}

void TestDemo::factWorldHasTheRequiredShape() {
    demo::FactWorld w = demo::generate_fact_world();
    QVERIFY(w.facts.size() >= 1000);
    QVERIFY(w.relations.size() >= 8);
    bool multi = false;
    for (const auto& r : w.relations) {
        QVERIFY(r.templates.size() >= 4);
        multi = multi || r.multi_valued;
    }
    QVERIFY(multi);
    auto surname = [](const std::string& name) { return name.substr(name.rfind(' ') + 1); };
    std::set<std::string> first_words, surnames;
    for (const auto& e : w.entities) {
        if (e.type == demo::EntityType::Person) {
            QVERIFY2(words(e.name) >= 2 && words(e.name) <= 3, e.name.c_str());
            // Every person has a surname of their own: the subject's last token names one person.
            QVERIFY2(surnames.insert(surname(e.name)).second, ("surname used twice: " + e.name).c_str());
        } else {
            const std::string first = e.name.substr(0, e.name.find(' '));
            QVERIFY2(first_words.insert(first).second, ("object first word used twice: " + first).c_str());
        }
    }
    QCOMPARE(surnames.size(), size_t(250));
    // A shared pool (as the world drew before) makes people share surnames; a negative size is refused.
    demo::FactWorldOptions pooled;
    pooled.surnames = 83;
    std::set<std::string> pooled_surnames;
    for (const auto& e : demo::generate_fact_world(pooled).entities)
        if (e.type == demo::EntityType::Person) pooled_surnames.insert(surname(e.name));
    QVERIFY(pooled_surnames.size() < 250);  // some of the 250 people share a surname
    auto refused = [](const demo::FactWorldOptions& o, const char* expected) {
        try {
            demo::generate_fact_world(o);
        } catch (const Error& e) {
            return e.kind() == ErrorKind::Argument && std::string(e.what()).find(expected) != std::string::npos;
        }
        return false;
    };
    pooled.surnames = -1;
    QVERIFY(refused(pooled, "surnames must be 0"));
    // Multi-hop chains close: person -> birth city -> country -> capital.
    const demo::Fact* born = w.find(w.relation_index("born_in"), w.entities_of(demo::EntityType::Person)[0]);
    const demo::Fact* country = w.find(w.relation_index("city_country"), born->objects[0]);
    QVERIFY(w.find(w.relation_index("country_capital"), country->objects[0]) != nullptr);
}

void TestDemo::promptsNeverPrefixOtherPrompts() {
    // If one template's prompt were a prefix of another's, the next word would be ambiguous
    // ("X plays the" -> "sport"?) and top-1 accuracy could not reach 100%.
    demo::FactWorld w = demo::generate_fact_world();
    std::vector<std::string> stems;
    for (const auto& r : w.relations)
        for (const auto& t : r.templates) stems.push_back(t);
    for (const auto& a : stems)
        for (const auto& b : stems)
            if (a != b) QVERIFY2(b.rfind(a + " ", 0) != 0, (a + " | " + b).c_str());
}

void TestDemo::datasetsHaveTheFieldsLayouts() {
    demo::FactWorld w = demo::generate_fact_world();
    nlohmann::json cf = demo::counterfact_dataset(w, 1, 1000);
    QCOMPARE(cf.size(), size_t{1000});
    std::map<std::string, demo::FactPrompt> by_prompt;
    for (const auto& p : demo::all_fact_prompts(w)) by_prompt[p.prompt] = p;
    for (const auto& r : cf) {
        const auto& rw = r["requested_rewrite"];
        const std::string prompt = rw["prompt"];
        QVERIFY(prompt.find("{}") != std::string::npos);
        QVERIFY(rw["target_new"]["str"] != rw["target_true"]["str"]);
        QCOMPARE(r["paraphrase_prompts"].size(), size_t{2});
        QCOMPARE(r["neighborhood_prompts"].size(), size_t{10});
        // Neighbours: another subject, same relation, same true object.
        for (const auto& n : r["neighborhood_prompts"]) {
            auto it = by_prompt.find(n.get<std::string>());
            QVERIFY2(it != by_prompt.end(), n.get<std::string>().c_str());
            QVERIFY(w.entities[it->second.subject].name != rw["subject"].get<std::string>());
            QCOMPARE(w.relations[it->second.relation].id, rw["relation_id"].get<std::string>());
            QCOMPARE(it->second.answers[0], rw["target_true"]["str"].get<std::string>());
        }
        QVERIFY(r.contains("attribute_prompts") && r.contains("generation_prompts"));
    }
    nlohmann::json z = demo::zsre_dataset(w, 2, 100);
    for (const char* k : {"subject", "src", "pred", "rephrase", "alt", "answers", "loc", "loc_ans", "cond"}) QVERIFY2(z[0].contains(k), k);
    nlohmann::json mq = demo::mquake_dataset(w, 3, 50);
    for (const auto& r : mq) {
        QCOMPARE(r["questions"].size(), size_t{3});
        QCOMPARE(r["single_hops"].size(), size_t{3});
        // The new answer follows the edited chain: the last new hop answers the question.
        QCOMPARE(r["new_single_hops"][2]["answer"], r["new_answer"]);
        QVERIFY(r["requested_rewrite"].size() == 1);
    }
    nlohmann::json comp = demo::compositional_dataset(w, 4, 20);
    QCOMPARE(comp[0]["requested_rewrite"].size(), size_t{2});
    QCOMPARE(comp[0]["new_answers"].size(), size_t{2});
}

void TestDemo::shippedLmAnswersTheFacts() {
    auto model = Model::load(resources() / "factworld");
    QCOMPARE(model->arch_name(), std::string("GPT2LMHeadModel"));
    QVERIFY(model->tokenizer() != nullptr);
    demo::FactWorld w = demo::generate_fact_world();
    demo::FactAccuracy acc = demo::evaluate_fact_accuracy(*model, w);
    QCOMPARE(acc.prompts, static_cast<int64_t>(demo::all_fact_prompts(w).size()));
    qInfo("shipped Fact World LM: %.2f%% of %lld prompts", 100.0 * acc.accuracy(), static_cast<long long>(acc.prompts));
    for (const auto& [rel, c] : acc.per_relation) qInfo("  %-18s %.2f%%", rel.c_str(), 100.0 * double(c.first) / double(c.second));
    QVERIFY(acc.accuracy() >= 0.97);
}

void TestDemo::quickLmTrainingLowersTheLoss() {
    TempDir tmp("demo");
    demo::FactWorld w = demo::generate_fact_world();
    demo::LmTrainOptions o;
    o.n_layer = 2;
    o.n_embd = 64;
    o.batch = 16;
    o.steps = 40;
    o.warmup = 5;
    demo::LmTrainResult r = demo::train_fact_lm(w, o, tmp.path / "lm", nullptr);
    QVERIFY(r.loss_curve.size() >= 2);
    QVERIFY2(r.final_loss < 0.8 * r.first_loss, qPrintable(QString("%1 -> %2").arg(r.first_loss).arg(r.final_loss)));
    auto model = Model::load(tmp.path / "lm");  // a valid checkpoint with its tokenizer
    QCOMPARE(model->tokenizer()->kind(), std::string("wordlevel"));
    // Same seed, same threads: the same weights.
    demo::train_fact_lm(w, o, tmp.path / "lm2", nullptr);
    auto again = Model::load(tmp.path / "lm2");
    QVERIFY(at::equal(model->weight(Slot::FfnDown, 1), again->weight(Slot::FfnDown, 1)));
}

void TestDemo::shapesAreDeterministic() {
    demo::ShapeSample a = demo::render_shape_sample(7, demo::ShapesSplit::Test, 5), b = demo::render_shape_sample(7, demo::ShapesSplit::Test, 5);
    QVERIFY(a.rgb == b.rgb);
    QCOMPARE(a.label, b.label);
    int matches = 0;
    for (int i = 0; i < 400; ++i) {
        demo::ShapeSample c = demo::render_shape_sample(7, demo::ShapesSplit::Counter, i);
        QVERIFY(c.background != c.label);
        matches += demo::render_shape_sample(7, demo::ShapesSplit::Train, i).background == demo::render_shape_sample(7, demo::ShapesSplit::Train, i).label;
    }
    QVERIFY(matches > 280 && matches < 360);  // p_match = 0.8
}

void TestDemo::shapesPngRoundTrip() {
    TempDir tmp("demo");
    demo::write_shapes_split(3, demo::ShapesSplit::Counter, 4, tmp.path);
    std::ifstream in(tmp.path / "labels.json");
    nlohmann::json labels = nlohmann::json::parse(in);
    QCOMPARE(labels.size(), size_t{4});
    ImagePreprocess pre;
    pre.height = pre.width = 32;
    at::Tensor from_png = load_image(tmp.path / labels[1]["file"].get<std::string>(), pre);
    at::Tensor direct = demo::shape_pixels({demo::render_shape_sample(3, demo::ShapesSplit::Counter, 1)}, 32);
    QVERIFY(engram::test::max_abs_diff(from_png, direct) < 1e-6);
    QCOMPARE(labels[1]["label_id"].get<int>(), demo::render_shape_sample(3, demo::ShapesSplit::Counter, 1).label);
}

void TestDemo::shippedVitSeesShapes() {
    if (!fs::exists(resources() / "shapes" / "config.json")) QSKIP("resources/demo/shapes is not in this checkout yet");
    auto model = Model::load(resources() / "shapes");
    QCOMPARE(model->labels()[0], std::string("circle"));
    const double test = demo::evaluate_shapes_accuracy(*model, 777, demo::ShapesSplit::Test, 2000);
    const double counter = demo::evaluate_shapes_accuracy(*model, 777, demo::ShapesSplit::Counter, 2000);
    qInfo("shipped Shapes ViT: test %.2f%%, counter %.2f%%", 100 * test, 100 * counter);
    QVERIFY(counter < test - 0.05);  // the spurious background shows on `counter`
    QVERIFY(test >= 0.85);
    QVERIFY(test >= 0.95);  // the demo-worlds target
}

void TestDemo::quickVitTrainingLowersTheLoss() {
    TempDir tmp("demo");
    demo::VitTrainOptions o;
    o.n_layer = 1;
    o.n_embd = 32;
    o.batch = 32;
    o.steps = 30;
    o.warmup = 3;
    demo::LmTrainResult r = demo::train_shapes_vit(o, tmp.path / "vit", nullptr);
    QVERIFY2(r.final_loss < 0.95 * r.first_loss, qPrintable(QString("%1 -> %2").arg(r.first_loss).arg(r.final_loss)));
    QCOMPARE(Model::load(tmp.path / "vit")->labels()[7], std::string("bar"));
}

QTEST_APPLESS_MAIN(TestDemo)
#include "tst_demo.moc"
