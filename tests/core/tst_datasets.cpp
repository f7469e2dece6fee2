// Editing datasets and text metrics: every layout read from real records (the public samples in
// tests/data/datasets, the Fact World demo files) with the values they hold, the format guessed from the
// first record, malformed files refused with the file, record and field named, and ROME's n-gram
// entropy against hand-computed values.
#include <QtTest>

#include <QTemporaryDir>
#include <cmath>
#include <fstream>

#include "engram/datasets.h"
#include "engram/error.h"

using namespace engram;
using namespace engram::eval;
namespace fs = std::filesystem;

Q_DECLARE_METATYPE(engram::eval::DatasetFormat)

// Declared before the test data: moc loses the class after a raw string literal holding an apostrophe.
class TestDatasets : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void counterfactFlatSample();
    void zsreSampleAnswerConvention();
    void zsreSampleAltConvention();
    void zsreAltSkipsEmptyAlternatives();
    void factworldCounterfact();
    void factworldZsre();
    void factworldMquake();
    void mquakeSeveralRewrites();
    void detectsFormat_data();
    void detectsFormat();
    void unknownLayoutIsRefused();
    void forcedFormatOverridesDetection();
    void jsonLines();
    void limit();
    void malformed_data();
    void malformed();
    void missingFileIsIoError();
    void formatNames();
    void promptText();
    void wordTokenize_data();
    void wordTokenize();
    void nGramEntropyHandComputed_data();
    void nGramEntropyHandComputed();
    void repetitiveTextScoresLower();
    void meanNGramEntropy();
    void harmonicMean();
    void tfidfTokens();
    void tfidfMatchesScikitLearnFormula();
    void tfidfFilesRoundTripAndRefusals();
    void attributeSnippets();
    void counterfactTargetIds();
    void refusesDatasetLargerThanMemory();
};

namespace {

fs::path sample(const char* name) { return fs::path(ENGRAM_TEST_DATA) / "datasets" / name; }

QString q(const std::string& s) { return QString::fromStdString(s); }

QStringList q(const std::vector<std::string>& v) {
    QStringList out;
    for (const auto& s : v) out << q(s);
    return out;
}

// The error loading throws; nullopt if the file loads.
std::optional<Error> load_error(const fs::path& file, const DatasetOptions& options = {}) {
    try {
        load_dataset(file, options);
    } catch (const Error& e) {
        return e;
    }
    return std::nullopt;
}

class Files {
public:
    fs::path write(const std::string& name, const std::string& text) {
        const fs::path p = fs::path(dir_.path().toStdString()) / name;
        std::ofstream(p, std::ios::binary) << text;
        return p;
    }

private:
    QTemporaryDir dir_;
};

DatasetOptions with_format(DatasetFormat f) {
    DatasetOptions o;
    o.format = f;
    return o;
}

DatasetOptions with_zsre(ZsreTarget t) {
    DatasetOptions o;
    o.zsre_target = t;
    return o;
}

// Three zsRE records, the middle one without an alternative answer (EasyEdit skips those).
const char* kZsreWithEmptyAlt = R"([
 {"subject": "Ada", "src": "Where was Ada born?", "rephrase": "Ada's birthplace is", "alt": "Rome",
  "answers": ["London"], "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"},
 {"subject": "Bob", "src": "What does Bob play?", "rephrase": "Bob plays", "alt": "",
  "answers": ["chess"], "loc": "nq question: capital of peru", "loc_ans": "Lima"},
 {"subject": "Cy", "src": "Which language does Cy speak?", "rephrase": "Cy speaks", "alt": "Latin",
  "answers": ["Greek", "Ancient Greek"], "loc": "nq question: tallest mountain", "loc_ans": "Everest"}
])";

const double kLog2Of3 = std::log2(3.0);

}  // namespace

void TestDatasets::counterfactFlatSample() {
    const Dataset ds = load_dataset(sample("counterfact-easyedit-flat.sample.json"));
    QCOMPARE(ds.format, DatasetFormat::CounterFactFlat);
    QCOMPARE(ds.cases.size(), size_t(4));

    const EditCase& c = ds.cases[0];
    QCOMPARE(c.case_id, int64_t(3087));
    QCOMPARE(c.index, int64_t(0));
    QCOMPARE(c.rewrites.size(), size_t(1));
    const Rewrite& r = c.rewrites[0];
    QCOMPARE(q(r.prompt), QString("{} professionally plays the sport"));
    QCOMPARE(q(r.subject), QString("David Robinson"));
    QCOMPARE(q(r.target_new), QString("baseball"));
    QCOMPARE(q(r.target_true), QString("basketball"));
    QCOMPARE(q(r.relation_id), QString());
    QCOMPARE(q(r.prompt_text()), QString("David Robinson professionally plays the sport"));
    QCOMPARE(q(c.paraphrase_prompts), QStringList{"David Robinson's greatest weakness is"});
    QCOMPARE(c.locality.size(), size_t(1));
    QCOMPARE(q(c.locality[0].prompt), QString("Shaquille O'Neal plays"));
    QCOMPARE(q(c.locality[0].answer), QString("basketball"));
    QCOMPARE(q(c.locality[0].kind), QString("neighborhood"));
    QVERIFY(c.portability.empty());

    // The subject in the middle of the prompt.
    QCOMPARE(q(ds.cases[2].rewrites[0].prompt), QString("In {}, the language spoken is"));
    QCOMPARE(ds.cases[2].case_id, int64_t(9021));
    QCOMPARE(ds.cases[3].index, int64_t(3));
    QCOMPARE(q(ds.cases[3].rewrites[0].target_true), QString("English"));
}

void TestDatasets::zsreSampleAnswerConvention() {
    const Dataset ds = load_dataset(sample("zsre-mend.sample.json"));
    QCOMPARE(ds.format, DatasetFormat::Zsre);
    QCOMPARE(ds.cases.size(), size_t(2));

    const EditCase& c = ds.cases[0];
    QCOMPARE(c.case_id, int64_t(0));  // no case_id in the layout: the index
    const Rewrite& r = c.rewrites.at(0);
    QCOMPARE(q(r.prompt), QString("What is the product made by {}?"));
    QCOMPARE(q(r.subject), QString("UniFirst"));
    QCOMPARE(q(r.target_new), QString("uniform"));
    QCOMPARE(q(r.target_true), QString());
    QCOMPARE(q(c.answer_before), QString());
    QCOMPARE(q(c.paraphrase_prompts), QStringList{"What will be the product of UniFirst?"});
    QCOMPARE(c.locality.size(), size_t(1));
    QCOMPARE(q(c.locality[0].prompt), QString("nq question: john goodman's character in the big lebowski"));
    QCOMPARE(q(c.locality[0].answer), QString("Walter Sobchak"));
    QCOMPARE(q(c.locality[0].kind), QString("nq"));

    QCOMPARE(ds.cases[1].case_id, int64_t(1));
    QCOMPARE(q(ds.cases[1].rewrites[0].target_new), QString("Beneden Merwede"));  // answers[0] of two
    QCOMPARE(q(ds.cases[1].rewrites[0].prompt), QString("By which body of water is {} located?"));
}

void TestDatasets::zsreSampleAltConvention() {
    const Dataset ds = load_dataset(sample("zsre-mend.sample.json"), with_zsre(ZsreTarget::Alt));
    QCOMPARE(ds.cases.size(), size_t(2));
    QCOMPARE(q(ds.cases[0].rewrites[0].target_new), QString("unmanned aircraft"));
    QCOMPARE(q(ds.cases[0].rewrites[0].target_true), QString("uniform"));
    QCOMPARE(q(ds.cases[0].answer_before), QString("uniform"));
    QCOMPARE(q(ds.cases[1].rewrites[0].target_new), QString("Benedenrecht"));
    QCOMPARE(q(ds.cases[1].answer_before), QString("Beneden Merwede"));
}

void TestDatasets::refusesDatasetLargerThanMemory() {
    // A file whose parsed form cannot fit (here under a 1 MiB limit) is refused before it is read.
    Files files;
    std::string big = std::string(kZsreWithEmptyAlt);
    big.insert(big.find('['), std::string(300000, ' '));  // 300 KB of whitespace ahead of the records
    const fs::path p = files.write("zsre-big.json", big);
    qputenv("ENGRAM_MEMORY_LIMIT_MB", "1");
    const auto err = load_error(p, with_zsre(ZsreTarget::Answer));
    const auto small = load_error(files.write("zsre.json", kZsreWithEmptyAlt), with_zsre(ZsreTarget::Answer));
    qunsetenv("ENGRAM_MEMORY_LIMIT_MB");
    QVERIFY(err.has_value());
    QCOMPARE(err->kind(), ErrorKind::Argument);
    QVERIFY2(q(err->what()).contains("zsre-big.json") && q(err->what()).contains("of memory, more than the 1.0 MiB"), err->what());
    QVERIFY2(!small.has_value(), small ? small->what() : "");
    QCOMPARE(load_dataset(p, with_zsre(ZsreTarget::Answer)).cases.size(), size_t(3));  // without the limit it loads
}

void TestDatasets::zsreAltSkipsEmptyAlternatives() {
    Files files;
    const fs::path p = files.write("zsre.json", kZsreWithEmptyAlt);

    const Dataset answer = load_dataset(p, with_zsre(ZsreTarget::Answer));
    QCOMPARE(answer.cases.size(), size_t(3));
    QCOMPARE(q(answer.cases[1].rewrites[0].target_new), QString("chess"));

    DatasetOptions o = with_zsre(ZsreTarget::Alt);
    const Dataset alt = load_dataset(p, o);
    QCOMPARE(alt.cases.size(), size_t(2));
    QCOMPARE(alt.cases[0].index, int64_t(0));
    QCOMPARE(alt.cases[1].index, int64_t(2));  // the position in the file, not in the result
    QCOMPARE(alt.cases[1].case_id, int64_t(2));
    QCOMPARE(q(alt.cases[1].rewrites[0].target_new), QString("Latin"));
    QCOMPARE(q(alt.cases[1].answer_before), QString("Greek"));

    // A skipped record does not count against the limit.
    o.limit = 2;
    const Dataset limited = load_dataset(p, o);
    QCOMPARE(limited.cases.size(), size_t(2));
    QCOMPARE(limited.cases[1].index, int64_t(2));
}

void TestDatasets::factworldCounterfact() {
    const Dataset ds = load_dataset(sample("factworld-counterfact.sample.json"));
    QCOMPARE(ds.format, DatasetFormat::CounterFact);
    QCOMPARE(ds.cases.size(), size_t(3));
    QCOMPARE(ds.file, sample("factworld-counterfact.sample.json"));

    const EditCase& c = ds.cases[0];
    QCOMPARE(c.case_id, int64_t(0));
    const Rewrite& r = c.rewrites.at(0);
    QCOMPARE(q(r.prompt), QString("{} competes in"));
    QCOMPARE(q(r.subject), QString("Peanaim Fosha"));
    QCOMPARE(q(r.relation_id), QString("P641"));
    QCOMPARE(q(r.target_new), QString("Zuluball"));
    QCOMPARE(q(r.target_true), QString("Loraifelball"));
    QCOMPARE(q(r.question), QString());
    QCOMPARE(q(r.prompt_text()), QString("Peanaim Fosha competes in"));
    QCOMPARE(q(c.paraphrase_prompts),
             (QStringList{"Peanaim Fosha plays the sport of", "Peanaim Fosha is a professional player of"}));
    QCOMPARE(c.neighborhood_prompts.size(), size_t(10));
    QCOMPARE(c.attribute_prompts.size(), size_t(10));
    QCOMPARE(c.generation_prompts.size(), size_t(5));
    QCOMPARE(q(c.generation_prompts.back()), QString("Peanaim Fosha natively speaks"));

    // The neighborhood prompts are the locality probes, expected to keep the true object.
    QCOMPARE(c.locality.size(), size_t(10));
    QCOMPARE(q(c.locality[0].prompt), QString("Statai Pidea plays the sport of"));
    for (const Probe& p : c.locality) {
        QCOMPARE(q(p.answer), QString("Loraifelball"));
        QCOMPARE(q(p.kind), QString("neighborhood"));
    }
    QCOMPARE(q(c.locality[9].prompt), q(c.neighborhood_prompts[9]));

    QCOMPARE(ds.cases[1].attribute_prompts.size(), size_t(3));
    QCOMPARE(q(ds.cases[1].rewrites[0].target_new), QString("Brupan Springs"));
    QCOMPARE(q(ds.cases[2].rewrites[0].relation_id), QString("P103"));
    QCOMPARE(ds.cases[2].case_id, int64_t(2));
}

void TestDatasets::factworldZsre() {
    const Dataset ds = load_dataset(sample("factworld-zsre.sample.json"));
    QCOMPARE(ds.format, DatasetFormat::Zsre);
    QCOMPARE(ds.cases.size(), size_t(4));
    const EditCase& c = ds.cases[2];
    QCOMPARE(q(c.rewrites[0].prompt), QString("Which instrument does {} play?"));
    QCOMPARE(q(c.rewrites[0].target_new), QString("Kreatoulhorn"));
    QCOMPARE(q(c.rewrites[0].prompt_text()), QString("Which instrument does Nupa Koudrur play?"));
    QCOMPARE(q(c.paraphrase_prompts), QStringList{"Nupa Koudrur practises the"});
    QCOMPARE(q(c.locality.at(0).prompt), QString("nq question: Bupith Pifom was born in"));
    QCOMPARE(q(c.locality.at(0).answer), QString("Deavre Heights"));
}

void TestDatasets::factworldMquake() {
    const Dataset ds = load_dataset(sample("factworld-mquake.sample.json"));
    QCOMPARE(ds.format, DatasetFormat::Mquake);
    QCOMPARE(ds.cases.size(), size_t(2));

    const EditCase& c = ds.cases[0];
    QCOMPARE(c.rewrites.size(), size_t(1));
    const Rewrite& r = c.rewrites[0];
    QCOMPARE(q(r.prompt), QString("{} was born in"));
    QCOMPARE(q(r.subject), QString("Gileth Sheavro Lebas"));
    QCOMPARE(q(r.relation_id), QString("P19"));
    QCOMPARE(q(r.question), QString("Where was Gileth Sheavro Lebas born?"));
    QCOMPARE(q(r.target_new), QString("Thaipu Bay"));
    QCOMPARE(q(r.target_true), QString("Moureakru Bay"));
    QCOMPARE(q(c.answer_before), QString("Koulou Ford"));
    QVERIFY(c.answer_aliases.empty());
    QVERIFY(c.new_answer_aliases.empty());
    QVERIFY(c.locality.empty());

    // 3 multi-hop questions, then 3 single hops and 3 new single hops (probed by their cloze).
    QCOMPARE(c.portability.size(), size_t(9));
    QCOMPARE(q(c.portability[0].prompt), QString("What is the capital of the country where Gileth Sheavro Lebas was born?"));
    QCOMPARE(q(c.portability[0].answer), QString("Thaipu Bay"));
    QCOMPARE(q(c.portability[0].kind), QString("multi_hop"));
    QCOMPARE(q(c.portability[2].kind), QString("multi_hop"));
    QCOMPARE(q(c.portability[3].prompt), QString("Gileth Sheavro Lebas was born in"));
    QCOMPARE(q(c.portability[3].answer), QString("Moureakru Bay"));
    QCOMPARE(q(c.portability[3].kind), QString("single_hop"));
    QCOMPARE(q(c.portability[4].answer), QString("Staipinak Kingdom"));
    QCOMPARE(q(c.portability[7].prompt), QString("Thaipu Bay is located in"));
    QCOMPARE(q(c.portability[7].answer), QString("Vretha Kingdom"));
    QCOMPARE(q(c.portability[7].kind), QString("new_single_hop"));

    QCOMPARE(ds.cases[1].case_id, int64_t(1));
    QCOMPARE(q(ds.cases[1].rewrites[0].subject), QString("Febos Heights"));
    QCOMPARE(q(ds.cases[1].answer_before), QString("Febos Heights"));
    QCOMPARE(q(ds.cases[1].portability[0].answer), QString("Podron Harbor"));
}

void TestDatasets::mquakeSeveralRewrites() {
    Files files;
    const fs::path p = files.write("mquake.json", R"([{
        "case_id": 41,
        "requested_rewrite": [
          {"prompt": "{} was born in", "subject": "Ada", "relation_id": "P19",
           "target_new": {"str": "Rome", "id": "Q1"}, "target_true": {"str": "London", "id": "Q2"},
           "question": "Where was Ada born?"},
          {"prompt": "The capital of {} is", "subject": "Italy", "relation_id": "P36",
           "target_new": {"str": "Milan", "id": "Q3"}, "target_true": {"str": "Rome", "id": "Q1"},
           "question": "What is the capital of Italy?"}],
        "questions": ["What is the capital of the country where Ada was born?"],
        "answer": "London", "answer_alias": ["Londinium"],
        "new_answer": "Milan", "new_answer_alias": ["Milano", "Mailand"]}])");
    const Dataset ds = load_dataset(p);
    QCOMPARE(ds.format, DatasetFormat::Mquake);
    QCOMPARE(ds.cases.size(), size_t(1));
    const EditCase& c = ds.cases[0];
    QCOMPARE(c.case_id, int64_t(41));
    QCOMPARE(c.rewrites.size(), size_t(2));
    QCOMPARE(q(c.rewrites[1].prompt_text()), QString("The capital of Italy is"));
    QCOMPARE(q(c.rewrites[1].target_new), QString("Milan"));
    QCOMPARE(q(c.rewrites[1].question), QString("What is the capital of Italy?"));
    QCOMPARE(q(c.answer_aliases), QStringList{"Londinium"});
    QCOMPARE(q(c.new_answer_aliases), (QStringList{"Milano", "Mailand"}));
    QCOMPARE(c.portability.size(), size_t(1));  // no single hops in this record
    QCOMPARE(q(c.portability[0].answer), QString("Milan"));
}

void TestDatasets::detectsFormat_data() {
    QTest::addColumn<QString>("file");
    QTest::addColumn<DatasetFormat>("format");
    QTest::newRow("rome counterfact") << "factworld-counterfact.sample.json" << DatasetFormat::CounterFact;
    QTest::newRow("easyedit counterfact") << "counterfact-easyedit-flat.sample.json" << DatasetFormat::CounterFactFlat;
    QTest::newRow("zsre mend") << "zsre-mend.sample.json" << DatasetFormat::Zsre;
    QTest::newRow("zsre factworld") << "factworld-zsre.sample.json" << DatasetFormat::Zsre;
    QTest::newRow("mquake") << "factworld-mquake.sample.json" << DatasetFormat::Mquake;
}

void TestDatasets::detectsFormat() {
    QFETCH(QString, file);
    QFETCH(DatasetFormat, format);
    const fs::path p = sample(file.toStdString().c_str());
    QCOMPARE(load_dataset(p).format, format);
    // Naming the format reads the same cases.
    const Dataset named = load_dataset(p, with_format(format));
    QCOMPARE(named.format, format);
    QCOMPARE(named.cases.size(), load_dataset(p).cases.size());
}

void TestDatasets::unknownLayoutIsRefused() {
    // ROME's causal-tracing facts have a subject and a prompt but nothing to edit to.
    const auto e = load_error(sample("known_1000.sample.json"));
    QVERIFY(e);
    QCOMPARE(e->kind(), ErrorKind::Format);
    const QString msg = e->what();
    QVERIFY2(msg.startsWith("known_1000.sample.json: record 0: unknown dataset layout"), qPrintable(msg));
    QVERIFY2(msg.contains("known_id"), qPrintable(msg));  // lists the fields it found
}

void TestDatasets::forcedFormatOverridesDetection() {
    const auto e = load_error(sample("counterfact-easyedit-flat.sample.json"), with_format(DatasetFormat::Zsre));
    QVERIFY(e);
    QVERIFY2(QString(e->what()).contains("record 0: missing field src"), e->what());

    const auto m = load_error(sample("factworld-counterfact.sample.json"), with_format(DatasetFormat::Mquake));
    QVERIFY(m);
    QVERIFY2(QString(m->what()).contains("requested_rewrite: expected an array, got object"), m->what());
}

void TestDatasets::jsonLines() {
    Files files;
    const fs::path p = files.write("cf.jsonl",
                                   "{\"case_id\": 5, \"prompt\": \"Ada was born in\", \"subject\": \"Ada\", "
                                   "\"target_new\": \"Rome\", \"ground_truth\": \"London\"}\n"
                                   "\n"
                                   "{\"prompt\": \"Bob plays\", \"subject\": \"Bob\", \"target_new\": {\"str\": \"chess\"}, "
                                   "\"ground_truth\": \"go\"}\r\n");
    const Dataset ds = load_dataset(p);
    QCOMPARE(ds.format, DatasetFormat::CounterFactFlat);
    QCOMPARE(ds.cases.size(), size_t(2));
    QCOMPARE(ds.cases[0].case_id, int64_t(5));
    QCOMPARE(q(ds.cases[0].rewrites[0].prompt), QString("{} was born in"));
    QCOMPARE(ds.cases[1].case_id, int64_t(1));
    QCOMPARE(q(ds.cases[1].rewrites[0].target_new), QString("chess"));  // a {str} target tolerated
    QVERIFY(ds.cases[1].paraphrase_prompts.empty());
    QVERIFY(ds.cases[1].locality.empty());

    const fs::path broken = files.write("broken.jsonl", "{\"prompt\": \"a\"}\n\n{\"prompt\": \n");
    const auto e = load_error(broken);
    QVERIFY(e);
    QVERIFY2(QString(e->what()).startsWith("broken.jsonl: line 3: invalid JSON"), e->what());
}

void TestDatasets::limit() {
    const fs::path p = sample("factworld-counterfact.sample.json");
    DatasetOptions o;
    o.limit = 2;
    const Dataset two = load_dataset(p, o);
    QCOMPARE(two.cases.size(), size_t(2));
    QCOMPARE(two.cases[1].case_id, int64_t(1));
    o.limit = 10;
    QCOMPARE(load_dataset(p, o).cases.size(), size_t(3));
    o.limit = 0;
    QCOMPARE(load_dataset(p, o).cases.size(), size_t(3));

    // Records past the limit are not read, so a broken one there does not matter.
    Files files;
    const fs::path bad_tail = files.write("tail.json", R"([
        {"prompt": "Ada was born in", "subject": "Ada", "target_new": "Rome", "ground_truth": "London"},
        {"prompt": "Bob plays", "subject": "Zed", "target_new": "chess", "ground_truth": "go"}])");
    o.limit = 1;
    QCOMPARE(load_dataset(bad_tail, o).cases.size(), size_t(1));
    QVERIFY(load_error(bad_tail));
}

void TestDatasets::malformed_data() {
    QTest::addColumn<QString>("text");
    QTest::addColumn<DatasetFormat>("format");
    QTest::addColumn<QString>("expected");  // the message after "bad.json: "

    const QString flat_ok =
        R"({"case_id": 1, "prompt": "Ada was born in", "subject": "Ada", "target_new": "Rome", "ground_truth": "London"})";
    auto nested = [](const QString& rewrite, const QString& extra = {}) {
        return QString(R"([{"case_id": 7, "requested_rewrite": %1%2}])").arg(rewrite, extra);
    };
    const QString rw_ok =
        R"({"prompt": "{} was born in", "subject": "Ada", "relation_id": "P19", "target_new": {"str": "Rome"}, "target_true": {"str": "London"}})";
    const auto A = DatasetFormat::Auto;

    QTest::newRow("broken json") << R"([{"case_id": 1, "prompt": )" << A << "invalid JSON";
    QTest::newRow("not an object") << "[" + flat_ok + ", 3]" << A << "record 1: expected a JSON object, got number";
    QTest::newRow("missing field, with index")
        << "[" + flat_ok + R"(, {"prompt": "Bob plays", "subject": "Bob", "ground_truth": "go"}])" << DatasetFormat::CounterFactFlat
        << "record 1: missing field target_new";
    QTest::newRow("flat subject not in prompt")
        << R"([{"prompt": "Ada was born in", "subject": "Bob", "target_new": "Rome", "ground_truth": "London"}])" << A
        << R"(record 0: subject "Bob" is not in the prompt "Ada was born in")";
    QTest::newRow("flat empty subject")
        << R"([{"prompt": "Ada was born in", "subject": "", "target_new": "Rome", "ground_truth": "London"}])" << A
        << "record 0: subject is empty";
    QTest::newRow("flat target of wrong type")
        << R"([{"prompt": "Ada was born in", "subject": "Ada", "target_new": 3, "ground_truth": "London"}])" << A
        << "record 0: target_new: expected a string or {\"str\": ...}, got number";
    QTest::newRow("flat locality without answer")
        << R"([{"prompt": "Ada was born in", "subject": "Ada", "target_new": "Rome", "locality_prompt": "Bob was born in"}])"
        << A << "record 0: missing field locality_ground_truth";
    QTest::newRow("template with two placeholders")
        << nested(R"({"prompt": "{} and {} were born in", "subject": "Ada", "target_new": {"str": "Rome"}, "target_true": {"str": "London"}})")
        << A << R"(record 0: requested_rewrite.prompt "{} and {} were born in" has 2 "{}" placeholders)";
    QTest::newRow("template without placeholder")
        << nested(R"({"prompt": "Ada was born in", "subject": "Ada", "target_new": {"str": "Rome"}, "target_true": {"str": "London"}})")
        << A << R"(has 0 "{}" placeholders)";
    QTest::newRow("nested missing subject")
        << nested(R"({"prompt": "{} was born in", "target_new": {"str": "Rome"}, "target_true": {"str": "London"}})") << A
        << "record 0: missing field requested_rewrite.subject";
    QTest::newRow("nested empty subject")
        << nested(R"({"prompt": "{} was born in", "subject": "", "target_new": {"str": "Rome"}, "target_true": {"str": "London"}})")
        << A << "record 0: requested_rewrite.subject is empty";
    QTest::newRow("nested target without str")
        << nested(R"({"prompt": "{} was born in", "subject": "Ada", "target_new": {"id": "Q1"}, "target_true": {"str": "London"}})")
        << A << "record 0: missing field requested_rewrite.target_new.str";
    QTest::newRow("prompts not an array") << nested(rw_ok, R"(, "paraphrase_prompts": "Ada's birthplace is")") << A
                                          << "record 0: paraphrase_prompts: expected an array of strings, got string";
    QTest::newRow("prompt not a string") << nested(rw_ok, R"(, "neighborhood_prompts": ["Bob was born in", 4])") << A
                                         << "record 0: neighborhood_prompts[1]: expected a string, got number";
    QTest::newRow("case_id not an integer") << nested(rw_ok, R"(, "case_id": "seven")") << A
                                            << "record 0: case_id: expected an integer, got string";
    QTest::newRow("requested_rewrite a string") << nested(R"("Ada -> Rome")") << A
                                                << "record 0: requested_rewrite: expected an object (CounterFact) or an array (MQuAKE), got string";
    QTest::newRow("zsre subject not in src")
        << R"([{"subject": "Ada", "src": "Where was Bob born?", "answers": ["London"], "alt": "Rome"}])" << A
        << R"(record 0: subject "Ada" is not in the src "Where was Bob born?")";
    QTest::newRow("zsre empty answers")
        << R"([{"subject": "Ada", "src": "Where was Ada born?", "answers": [], "alt": "Rome"}])" << A
        << "record 0: answers is empty";
    QTest::newRow("zsre answers not an array")
        << R"([{"subject": "Ada", "src": "Where was Ada born?", "answers": "London", "alt": "Rome"}])" << A
        << "record 0: answers: expected an array of strings, got string";
    QTest::newRow("mquake no rewrites")
        << R"([{"requested_rewrite": [], "questions": ["q?"], "answer": "a", "new_answer": "b"}])" << A
        << "record 0: requested_rewrite is empty";
    QTest::newRow("mquake rewrite missing target")
        << QString(R"([{"requested_rewrite": [%1, {"prompt": "{} is in", "subject": "Rome", "target_true": {"str": "Italy"}}], "questions": ["q?"], "answer": "a", "new_answer": "b"}])")
               .arg(rw_ok)
        << A << "record 0: missing field requested_rewrite[1].target_new";
    QTest::newRow("mquake missing new_answer")
        << QString(R"([{"requested_rewrite": [%1], "questions": ["q?"], "answer": "a"}])").arg(rw_ok) << A
        << "record 0: missing field new_answer";
    QTest::newRow("mquake single hop without answer")
        << QString(R"([{"requested_rewrite": [%1], "questions": ["q?"], "answer": "a", "new_answer": "b", "single_hops": [{"cloze": "Ada was born in"}]}])")
               .arg(rw_ok)
        << A << "record 0: missing field single_hops[0].answer";
    QTest::newRow("pretty-printed object, not an array") << "{\n \"prompt\": \"Ada\"\n}\n" << A << "line 1: invalid JSON";
}

void TestDatasets::malformed() {
    QFETCH(QString, text);
    QFETCH(DatasetFormat, format);
    QFETCH(QString, expected);
    Files files;
    const fs::path p = files.write("bad.json", text.toStdString());
    const auto e = load_error(p, with_format(format));
    QVERIFY2(e, "loaded");
    QCOMPARE(e->kind(), ErrorKind::Format);
    const QString msg = e->what();
    QVERIFY2(msg.startsWith("bad.json: "), qPrintable(msg));
    QVERIFY2(msg.contains(expected), qPrintable(msg + "\n   expected: " + expected));
}

void TestDatasets::missingFileIsIoError() {
    const auto e = load_error(sample("no-such-file.json"));
    QVERIFY(e);
    QCOMPARE(e->kind(), ErrorKind::Io);
    QVERIFY2(QString(e->what()).contains("no-such-file.json"), e->what());
}

void TestDatasets::formatNames() {
    for (DatasetFormat f : {DatasetFormat::Auto, DatasetFormat::CounterFact, DatasetFormat::CounterFactFlat,
                            DatasetFormat::Zsre, DatasetFormat::Mquake})
        QCOMPARE(dataset_format_from_name(dataset_format_name(f)), std::optional<DatasetFormat>(f));
    QCOMPARE(QString(dataset_format_name(DatasetFormat::CounterFactFlat)), QString("counterfact_flat"));
    QCOMPARE(QString(dataset_format_name(DatasetFormat::Mquake)), QString("mquake"));
    QCOMPARE(dataset_format_from_name("counterfact-flat"), std::optional(DatasetFormat::CounterFactFlat));
    QCOMPARE(dataset_format_from_name("zsRE"), std::optional(DatasetFormat::Zsre));
    QVERIFY(!dataset_format_from_name("knowedit"));
    QVERIFY(!dataset_format_from_name(""));
}

void TestDatasets::promptText() {
    Rewrite r;
    r.prompt = "The mother tongue of {} is";
    r.subject = "Danielle Darrieux";
    QCOMPARE(q(r.prompt_text()), QString("The mother tongue of Danielle Darrieux is"));
    r.prompt = "{}, who plays";
    r.subject = "{}";  // a subject that looks like a placeholder is substituted once
    QCOMPARE(q(r.prompt_text()), QString("{}, who plays"));
}

void TestDatasets::wordTokenize_data() {
    QTest::addColumn<QString>("text");
    QTest::addColumn<QStringList>("words");
    QTest::newRow("punctuation alone") << "Hello, world!" << QStringList{"Hello", ",", "world", "!"};
    QTest::newRow("inner apostrophe") << "David Robinson's weakness" << QStringList{"David", "Robinson's", "weakness"};
    QTest::newRow("inner hyphen") << "a well-known fact" << QStringList{"a", "well-known", "fact"};
    QTest::newRow("numbers") << "3.14 and 1,000 in 1999." << QStringList{"3.14", "and", "1,000", "in", "1999", "."};
    QTest::newRow("quotes and dashes") << "'yes' -- no-" << QStringList{"'", "yes", "'", "-", "-", "no", "-"};
    QTest::newRow("utf-8 letters") << "Zürich's café" << QStringList{"Zürich's", "café"};
    QTest::newRow("whitespace") << " \t\n a\nb  " << QStringList{"a", "b"};
    QTest::newRow("empty") << "" << QStringList{};
}

void TestDatasets::wordTokenize() {
    QFETCH(QString, text);
    QFETCH(QStringList, words);
    QCOMPARE(q(eval::word_tokenize(text.toStdString())), words);
}

void TestDatasets::nGramEntropyHandComputed_data() {
    QTest::addColumn<QString>("text");
    QTest::addColumn<double>("entropy");
    // "a b a b": bigrams ab, ba, ab -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3); trigrams aba, bab -> H3 = 1.
    const double h2 = -(2.0 / 3.0 * std::log2(2.0 / 3.0) + 1.0 / 3.0 * std::log2(1.0 / 3.0));
    QTest::newRow("a b a b") << "a b a b" << (2.0 / 3.0 * h2 + 4.0 / 3.0 * 1.0) / 2.0;
    // All distinct: 3 bigrams (log2 3), 2 trigrams (1).
    QTest::newRow("a b c d") << "a b c d" << (2.0 / 3.0 * kLog2Of3 + 4.0 / 3.0) / 2.0;
    // Punctuation is a word: a , b -> 2 distinct bigrams (1 bit), one trigram (0 bits).
    QTest::newRow("a, b") << "a, b" << (2.0 / 3.0 * 1.0) / 2.0;
    QTest::newRow("one bigram") << "a b" << 0.0;
    QTest::newRow("one word") << "word" << 0.0;
    QTest::newRow("empty") << "" << 0.0;
    QTest::newRow("one repeated word") << "x x x x x x" << 0.0;
}

void TestDatasets::nGramEntropyHandComputed() {
    QFETCH(QString, text);
    QFETCH(double, entropy);
    const double got = n_gram_entropy(text.toStdString());
    QVERIFY2(std::abs(got - entropy) < 1e-12, qPrintable(QString("%1 vs %2").arg(got, 0, 'g', 17).arg(entropy, 0, 'g', 17)));
}

void TestDatasets::repetitiveTextScoresLower() {
    const std::string varied =
        "Danielle Darrieux was a French actress and singer who appeared in more than one hundred films, "
        "from early sound pictures in Paris to television dramas late in her long career.";
    std::string repetitive;
    for (int i = 0; i < 8; ++i) repetitive += "The mother tongue of Danielle Darrieux is French. ";
    const double v = n_gram_entropy(varied), r = n_gram_entropy(repetitive);
    QVERIFY2(v > r + 1.0, qPrintable(QString("varied %1, repetitive %2").arg(v).arg(r)));
    // No text of n words scores above n distinct words: mean(2/3 log2(n-1), 4/3 log2(n-2)).
    const double n = static_cast<double>(eval::word_tokenize(varied).size());
    QVERIFY(v <= (2.0 / 3.0 * std::log2(n - 1) + 4.0 / 3.0 * std::log2(n - 2)) / 2.0 + 1e-12);
    QVERIFY(r > 0.0);  // the sentence repeats, but within it the n-grams differ
}

void TestDatasets::meanNGramEntropy() {
    const std::vector<std::string> texts{"a b a b", "a b c d"};
    QCOMPARE(mean_n_gram_entropy(texts), (n_gram_entropy(texts[0]) + n_gram_entropy(texts[1])) / 2.0);
    QVERIFY(mean_n_gram_entropy(texts) > n_gram_entropy(texts[0]));
    QCOMPARE(mean_n_gram_entropy({}), 0.0);
}

void TestDatasets::harmonicMean() {
    QCOMPARE(eval::harmonic_mean({1.0, 0.5}), 2.0 / 3.0);
    QCOMPARE(eval::harmonic_mean({0.8, 0.8, 0.8}), 0.8);
    QVERIFY(std::abs(eval::harmonic_mean({0.9, 0.6, 0.3}) - 3.0 / (1 / 0.9 + 1 / 0.6 + 1 / 0.3)) < 1e-15);
    QCOMPARE(eval::harmonic_mean({0.9, 0.0, 0.7}), 0.0);
    QCOMPARE(eval::harmonic_mean({}), 0.0);
}

void TestDatasets::tfidfTokens() {
    // scikit-learn's default token_pattern (?u)\b\w\w+\b with lowercase: one-character tokens and
    // punctuation are dropped, '_' and digits are word characters.
    QCOMPARE(tfidf_tokens("The CAT, a b_c ab9 x!"), (std::vector<std::string>{"the", "cat", "b_c", "ab9"}));
    QVERIFY(tfidf_tokens(" . , a").empty());
}

void TestDatasets::tfidfMatchesScikitLearnFormula() {
    // Three documents: df(the) = 3, df(cat) = df(sat) = 2, df(dog) = df(ran) = 1, so with smooth idf
    // ln((1 + 3) / (1 + df)) + 1: the 1, cat and sat 1 + ln(4/3), dog and ran 1 + ln 2.
    const Tfidf t = Tfidf::fit({"the cat sat", "the dog sat", "The cat ran."});
    QCOMPARE(t.size(), size_t(5));
    QCOMPARE(t.idf("the"), 1.0);
    QVERIFY(std::abs(t.idf("cat") - (1 + std::log(4.0 / 3.0))) < 1e-15);
    QVERIFY(std::abs(t.idf("ran") - (1 + std::log(2.0))) < 1e-15);
    QVERIFY(std::isnan(t.idf("bird")));
    // Cosines of l2-normalised raw-count x idf vectors, worked by hand:
    //   "cat sat" . "cat ran" = ic^2 / (sqrt(2) ic * sqrt(ic^2 + ir^2)) = 0.42804603506311845
    //   "the cat sat" . "the dog sat" = (1 + ic^2) / (sqrt(1 + 2 ic^2) sqrt(1 + ir^2 + ic^2)) = 0.5443283851010368
    QVERIFY(std::abs(t.similarity("cat sat", "cat ran") - 0.42804603506311845) < 1e-12);
    QVERIFY(std::abs(t.similarity("the cat sat", "The dog, sat!") - 0.5443283851010368) < 1e-12);
    QVERIFY(std::abs(t.similarity("cat cat sat", "cat cat sat") - 1.0) < 1e-12);  // counts, then normalised
    QCOMPARE(t.similarity("bird", "cat"), 0.0);  // no known token on one side
    QCOMPARE(t.similarity("cat", "dog"), 0.0);   // nothing shared
}

namespace {

// A .npy file (format 1.0) holding a little-endian float64 vector.
void write_npy(const fs::path& file, const std::vector<double>& v, const std::string& descr = "<f8") {
    std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + std::to_string(v.size()) + ",), }";
    while ((10 + header.size() + 1) % 64) header += ' ';
    header += '\n';
    std::ofstream out(file, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = uint16_t(header.size());
    out.put(char(len & 0xff));
    out.put(char(len >> 8));
    out << header;
    out.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(double)));
}

}  // namespace

void TestDatasets::tfidfFilesRoundTripAndRefusals() {
    QTemporaryDir tmp;
    const fs::path dir = tmp.path().toStdString();
    const Tfidf fitted = Tfidf::fit({"the cat sat", "the dog sat", "the cat ran"});
    const std::vector<std::string> tokens = {"the", "cat", "sat", "dog", "ran"};
    std::vector<double> idf;
    std::ofstream(dir / "tfidf_vocab.json") << R"({"the": 0, "cat": 1, "sat": 2, "dog": 3, "ran": 4})";
    for (const auto& tok : tokens) idf.push_back(fitted.idf(tok));
    write_npy(dir / "idf.npy", idf);
    const Tfidf loaded = Tfidf::load(dir);
    QCOMPARE(loaded.size(), size_t(5));
    for (const auto& tok : tokens) QCOMPARE(loaded.idf(tok), fitted.idf(tok));
    QCOMPARE(loaded.similarity("the cat sat", "the dog sat"), fitted.similarity("the cat sat", "the dog sat"));
    auto refused = [&](const char* needle) {
        try {
            Tfidf::load(dir);
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find(needle) != std::string::npos, e.what());
            return;
        }
        QFAIL("a bad TF-IDF folder was accepted");
    };
    std::ofstream(dir / "tfidf_vocab.json") << R"({"the": 0, "owl": 9})";
    refused("outside idf.npy");
    std::ofstream(dir / "tfidf_vocab.json") << R"({"the": 0})";
    write_npy(dir / "idf.npy", idf, "<i8");
    refused("float64 or float32");
    std::ofstream(dir / "idf.npy") << "not numpy";
    refused("not a NumPy .npy file");
    fs::remove(dir / "idf.npy");
    refused("cannot read the idf vector");
}

void TestDatasets::attributeSnippets() {
    QTemporaryDir tmp;
    const fs::path file = fs::path(tmp.path().toStdString()) / "attribute_snippets.json";
    std::ofstream(file) << R"([{"name": "x", "relation_id": "P641", "target_id": "E9", "samples": [{"name": "A", "text": "A plays golf ."},
                                                                                             {"name": "B", "text": "B plays golf ."}]},
                               {"relation_id": "P19", "target_id": "E2", "samples": []}])";
    const AttributeSnippets s = AttributeSnippets::load(file);
    QVERIFY(s.find("P641", "E9") && s.find("P641", "E9")->size() == 2);
    QCOMPARE(s.find("P641", "E9")->at(1), std::string("B plays golf ."));
    QVERIFY(!s.find("P19", "E2"));   // no texts: nothing to compare with
    QVERIFY(!s.find("P641", "E1"));
    std::ofstream(file) << R"([{"relation_id": "P641", "samples": []}])";
    try {
        AttributeSnippets::load(file);
        QFAIL("a record without target_id was accepted");
    } catch (const Error& e) {
        QVERIFY2(std::string(e.what()).find("record 0") != std::string::npos, e.what());
    }
}

void TestDatasets::counterfactTargetIds() {
    // ROME's nested layout carries target ids; they key the attribute snippets.
    const Dataset ds = load_dataset(sample("factworld-counterfact.sample.json"));
    QCOMPARE(ds.cases[0].rewrites[0].target_new_id, std::string("E99"));
    QCOMPARE(ds.cases[0].rewrites[0].relation_id, std::string("P641"));
}

QTEST_APPLESS_MAIN(TestDatasets)
#include "tst_datasets.moc"
