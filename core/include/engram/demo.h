// The built-in demo worlds: a Fact World (invented people, cities, countries, ... and the facts
// linking them) with the language model trained on it, and a Shapes World of procedural images
// with the ViT trained on it. Everything is generated deterministically from a seed, so the
// shipped checkpoints can be rebuilt bit for bit on the same machine and thread count.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

namespace engram {
class Model;
}

namespace engram::demo {

// ----------------------------------------------------------------------------
// Deterministic randomness: the same numbers from every standard library (std distributions are
// implementation-defined, so they are not used for anything that is generated).
class Rng {
public:
    explicit Rng(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
    uint64_t next();                         // splitmix64
    uint64_t below(uint64_t n);              // uniform in [0, n)
    double uniform();                        // [0, 1)
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    template <typename T>
    const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
    template <typename T>
    void shuffle(std::vector<T>& v) {
        for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
    }

private:
    uint64_t state_;
};

// ----------------------------------------------------------------------------
// Fact World

enum class EntityType { Person, City, Country, Company, Sport, Instrument, Language, Continent };
const char* entity_type_name(EntityType type);

struct Entity {
    EntityType type;
    std::string name;  // one to three words; the first word is unique across the world
};

struct Relation {
    std::string id;                      // "P19" style ids, as CounterFact uses (see factworld.cpp)
    std::string name;                    // "born_in"
    EntityType subject_type, object_type;
    bool multi_valued = false;
    std::vector<std::string> templates;  // each with one "{}" for the subject; the object follows
    std::string question;                // zsRE/MQuAKE-style question with "{}"
};

struct Fact {
    int relation;  // index into FactWorld::relations
    int subject;   // entity index
    std::vector<int> objects;  // one, or several for a multi-valued relation
};

struct FactWorld {
    uint64_t seed = 0;
    std::vector<Entity> entities;
    std::vector<Relation> relations;
    std::vector<Fact> facts;

    const Relation& relation(const std::string& name) const;
    int relation_index(const std::string& name) const;
    // The fact (relation, subject), or nullptr.
    const Fact* find(int relation, int subject) const;
    std::vector<int> entities_of(EntityType type) const;
    // SHA-256 over a canonical text of every entity and fact: a fingerprint of the generated world.
    std::string hash() const;
    // Every word that can appear in the corpus or the prompts, sorted.
    std::vector<std::string> vocabulary() const;
};

struct FactWorldOptions {
    uint64_t seed = 1234;
    int people = 250;
    // Size of the surname pool people draw from; 0: every person has a surname of their own.
    int surnames = 0;
    int cities = 40, countries = 16, companies = 30, sports = 10, instruments = 10, languages = 12;
};

FactWorld generate_fact_world(const FactWorldOptions& options = {});
// The names of the entities that are the subject of at least one fact, in order of first use (the
// subjects whose embedding spread sets causal tracing's noise on the Fact World model).
std::vector<std::string> fact_world_subjects(const FactWorld& world);

// A prompt whose next word is the first word of one of `answers`.
struct FactPrompt {
    std::string prompt;
    int relation, subject, template_index;
    std::vector<std::string> answers;  // object names
};
// Every fact in every template.
std::vector<FactPrompt> all_fact_prompts(const FactWorld& world);

// "prompt object ." sentences, biography paragraphs, and held-out paragraphs.
struct FactCorpus {
    std::vector<std::string> sentences;       // every fact in every template
    std::vector<std::string> biographies;     // paragraphs mixing a person's facts
    std::vector<std::string> held_out;        // paragraphs not trained on, for perplexity
};
FactCorpus build_corpus(const FactWorld& world);

// The HF tokenizer.json (WordLevel, WhitespaceSplit) for a world.
nlohmann::json wordlevel_tokenizer_json(const FactWorld& world);

// Datasets in the field's layouts (see the demo-worlds issue): CounterFact (ROME's nested
// layout), zsRE (MEND/EasyEdit), MQuAKE, and the compositional (A3E) set.
nlohmann::json counterfact_dataset(const FactWorld& world, uint64_t seed, int records);
nlohmann::json zsre_dataset(const FactWorld& world, uint64_t seed, int records);
nlohmann::json mquake_dataset(const FactWorld& world, uint64_t seed, int records);
nlohmann::json compositional_dataset(const FactWorld& world, uint64_t seed, int records);
// ROME's attribute_snippets.json layout for the world: for each (relation, object), the sentences
// of every fact with that relation and object in every template (ROME's are Wikipedia texts about
// the subjects that have the attribute). Consistency (RS) compares generations with these.
nlohmann::json attribute_snippets(const FactWorld& world);

// The world as JSON (entities, relations with templates, facts), and every generated file beside
// a checkpoint: world.json, corpus.txt, held_out.txt, counterfact.json, zsre.json, mquake.json,
// compositional.json.
nlohmann::json fact_world_json(const FactWorld& world);
void write_fact_world_files(const FactWorld& world, const std::filesystem::path& dir);

// ----------------------------------------------------------------------------
// Training

struct TrainProgress {
    int64_t step, total_steps;
    double loss, lr, elapsed_s, eta_s;
};
using ProgressFn = std::function<void(const TrainProgress&)>;

struct LmTrainOptions {
    uint64_t seed = 1234;
    int n_layer = 6, n_embd = 128, n_head = 4, n_ctx = 64;
    int batch = 64;
    int64_t steps = 1600;
    int64_t warmup = 200;
    double lr = 3e-3, min_lr_ratio = 0.1, weight_decay = 0.01;
    double biography_fraction = 0.25;  // share of training sequences drawn from biographies
};

struct LmTrainResult {
    double seconds = 0;
    double first_loss = 0, final_loss = 0;
    std::vector<double> loss_curve;  // mean loss per logging window
};

// Trains a GPT-2-architecture model on the world's corpus and writes a HF checkpoint folder
// (config.json, model.safetensors in F16, tokenizer.json) to `out_dir`.
LmTrainResult train_fact_lm(const FactWorld& world, const LmTrainOptions& options, const std::filesystem::path& out_dir,
                            const ProgressFn& progress);

// ----------------------------------------------------------------------------
// Shapes World: 32x32 RGB images of a bright shape on a dark, tinted, textured background.
// In `train` and `test` the background belongs to the shape's own class with probability
// p_match (a spurious cue the model can learn instead of the shape); in `counter` it always
// belongs to another class, which is where a background-reliant model fails.

enum class ShapesSplit { Train, Test, Counter };
ShapesSplit shapes_split_from_name(const std::string& name);
const char* shapes_split_name(ShapesSplit split);
const std::vector<std::string>& shape_class_names();
const std::vector<std::string>& shape_background_names();

struct ShapesOptions {
    int image_size = 32;
    double p_match = 0.8;
};

struct ShapeSample {
    std::vector<uint8_t> rgb;  // [H, W, 3], row-major
    int label = 0;
    int background = 0;
};

// Sample `index` of a split: the same (seed, split, index) always gives the same image.
ShapeSample render_shape_sample(uint64_t seed, ShapesSplit split, uint64_t index, const ShapesOptions& options = {});
// Normalised pixels as the ViT sees them: [N, 3, H, W], (x / 255 - 0.5) / 0.5.
at::Tensor shape_pixels(const std::vector<ShapeSample>& samples, int image_size);
// Writes PNGs and labels.json ([{"file", "label", "label_id", "background"}]) into `dir`.
void write_shapes_split(uint64_t seed, ShapesSplit split, int n, const std::filesystem::path& dir, const ShapesOptions& options = {});

struct VitTrainOptions {
    uint64_t seed = 4321;
    int n_layer = 6, n_embd = 96, n_head = 4, patch = 4;
    int batch = 128;
    int64_t steps = 2400, warmup = 100;
    double lr = 2e-3, min_lr_ratio = 0.05, weight_decay = 0.05;
    ShapesOptions shapes;
};

// Trains a ViTForImageClassification on freshly rendered training images every step and writes
// a HF checkpoint folder (config.json with id2label, preprocessor_config.json, model.safetensors).
LmTrainResult train_shapes_vit(const VitTrainOptions& options, const std::filesystem::path& out_dir, const ProgressFn& progress);
// Top-1 accuracy on n freshly rendered images of a split (seed distinct from training's).
double evaluate_shapes_accuracy(const Model& model, uint64_t seed, ShapesSplit split, int n, const ShapesOptions& options = {});

// ----------------------------------------------------------------------------
// Evaluation of a Fact World model (its tokenizer must be the world's WordLevel tokenizer).

struct FactAccuracy {
    int64_t prompts = 0, correct = 0;
    std::map<std::string, std::pair<int64_t, int64_t>> per_relation;  // name -> (correct, prompts)
    double accuracy() const { return prompts ? double(correct) / double(prompts) : 0.0; }
};
// Top-1 next word against the first word of the object(s), over every fact in every template.
FactAccuracy evaluate_fact_accuracy(const Model& model, const FactWorld& world);
// exp(mean next-word NLL) over the held-out paragraphs.
double held_out_perplexity(const Model& model, const FactWorld& world);

}  // namespace engram::demo
