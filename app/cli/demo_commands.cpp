// engram-cli demo: the built-in worlds (what they contain, their data, and rebuilding them).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <filesystem>
#include <iomanip>
#include <iostream>

#include "args.h"
#include "commands.h"
#include "engram/demo.h"
#include "engram/error.h"
#include "engram/model.h"

namespace engram::cli {

namespace fs = std::filesystem;

fs::path demo_resource_dir(const std::string& world) {
    // $ENGRAM_RESOURCES, then installed next to the binary (../share/engram/demo); the source tree's
    // resources/ only for a binary running from the build tree, so an installed one never reads it.
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    std::vector<fs::path> candidates;
    if (const char* env = std::getenv("ENGRAM_RESOURCES"); env && *env) candidates.push_back(fs::path(env) / "demo" / world);
    if (!ec) candidates.push_back(exe.parent_path().parent_path() / "share" / "engram" / "demo" / world);
#if defined(ENGRAM_SOURCE_RESOURCES) && defined(ENGRAM_BUILD_DIR)
    if (!ec && exe.lexically_normal().string().rfind(fs::path(ENGRAM_BUILD_DIR).lexically_normal().string(), 0) == 0)
        candidates.push_back(fs::path(ENGRAM_SOURCE_RESOURCES) / "demo" / world);
#endif
    for (const auto& c : candidates)
        if (fs::exists(c / "config.json")) return c;
    throw Error(ErrorKind::Io, "the built-in " + world + " model was not found (looked in " +
                                   (candidates.empty() ? std::string("nothing") : candidates.back().string()) + ")");
}

namespace {

void print_progress(const demo::TrainProgress& p) {
    std::cout << "  step " << std::setw(5) << p.step << "/" << p.total_steps << "  loss " << std::fixed << std::setprecision(4) << p.loss
              << "  lr " << std::scientific << std::setprecision(2) << p.lr << std::fixed << "  elapsed " << std::setprecision(0)
              << p.elapsed_s << " s  eta " << p.eta_s << " s" << std::endl;
}

int demo_train_shapes(const Args& args) {
    const bool quick = args.flag("quick");
    demo::VitTrainOptions o;
    o.seed = static_cast<uint64_t>(args.integer("seed", static_cast<int64_t>(o.seed), 0));
    o.steps = args.integer("steps", quick ? 40 : o.steps, 1);
    if (quick) {
        o.n_layer = 2;
        o.n_embd = 32;
        o.batch = 32;
        o.warmup = 5;
    }
    const fs::path out = args.get("out").value_or(quick ? (fs::temp_directory_path() / "engram-shapes-quick").string() : "shapes");
    std::cout << "Shapes World: " << demo::shape_class_names().size() << " classes, p(background matches class) = " << o.shapes.p_match
              << "\ntraining a ViT (" << o.n_layer << " layers x " << o.n_embd << ", patch " << o.patch << ") for " << o.steps
              << " steps of " << o.batch << " fresh images (" << at::get_num_threads() << " threads)\n";
    demo::LmTrainResult r = demo::train_shapes_vit(o, out, print_progress);
    auto model = Model::load(out);
    const uint64_t eval_seed = o.seed + 1;  // images never seen in training
    const int n = quick ? 256 : 2000;
    std::cout << std::fixed << std::setprecision(1) << "trained in " << r.seconds << " s; loss " << std::setprecision(4) << r.first_loss
              << " -> " << r.final_loss << "\n"
              << std::setprecision(2) << "accuracy on " << n << " fresh images: test "
              << 100.0 * demo::evaluate_shapes_accuracy(*model, eval_seed, demo::ShapesSplit::Test, n, o.shapes) << "%, counter "
              << 100.0 * demo::evaluate_shapes_accuracy(*model, eval_seed, demo::ShapesSplit::Counter, n, o.shapes) << "%\n"
              << "wrote " << out.string() << "\n";
    return 0;
}

int demo_data(const Args& args) {
    if (args.require("world") != "shapes") throw Error(ErrorKind::Argument, "demo data writes images: --world shapes");
    const demo::ShapesSplit split = demo::shapes_split_from_name(args.require("split"));
    const int64_t n = args.integer("n", 100, 1);
    const uint64_t seed = static_cast<uint64_t>(args.integer("seed", 1, 0));
    const fs::path out = args.require("out");
    demo::write_shapes_split(seed, split, static_cast<int>(n), out);
    std::cout << "wrote " << n << " " << demo::shapes_split_name(split) << " images and labels.json to " << out.string() << "\n";
    return 0;
}

int demo_train(const Args& args) {
    const std::string world_name = args.require("world");
    const bool quick = args.flag("quick");
    if (world_name == "shapes") {
        args.refuse({"surnames"}, "applies to --world facts only");
        return demo_train_shapes(args);
    }
    if (world_name != "facts") throw Error(ErrorKind::Argument, "--world must be facts or shapes");
    demo::FactWorldOptions wo;
    wo.seed = static_cast<uint64_t>(args.integer("seed", 1234, 0));
    wo.surnames = static_cast<int>(args.integer("surnames", wo.surnames, 0));
    demo::FactWorld world = demo::generate_fact_world(wo);
    demo::LmTrainOptions o;
    o.seed = wo.seed;
    o.steps = args.integer("steps", quick ? 60 : o.steps, 1);
    if (quick) {
        o.n_layer = 2;
        o.n_embd = 64;
        o.batch = 16;
        o.warmup = 10;
    }
    const fs::path out = args.get("out").value_or(quick ? (fs::temp_directory_path() / "engram-factworld-quick").string() : "factworld");
    std::cout << "Fact World (seed " << wo.seed << ", hash " << world.hash().substr(0, 16) << "): " << world.entities.size() << " entities, "
              << world.facts.size() << " facts, " << world.relations.size() << " relations\n"
              << "training " << o.n_layer << " layers x " << o.n_embd << " for " << o.steps << " steps of " << o.batch << " x " << o.n_ctx
              << " tokens (" << at::get_num_threads() << " threads)\n";
    demo::LmTrainResult r = demo::train_fact_lm(world, o, out, print_progress);
    demo::write_fact_world_files(world, out);
    auto model = Model::load(out);
    demo::FactAccuracy acc = demo::evaluate_fact_accuracy(*model, world);
    std::cout << std::setprecision(1) << "trained in " << r.seconds << " s; loss " << std::setprecision(4) << r.first_loss << " -> "
              << r.final_loss << "\n"
              << "fact accuracy (top-1 first word, every template): " << std::setprecision(2) << 100.0 * acc.accuracy() << "% of "
              << acc.prompts << " prompts\n";
    for (const auto& [rel, c] : acc.per_relation)
        std::cout << "  " << std::left << std::setw(18) << rel << std::right << std::setprecision(2) << 100.0 * double(c.first) / double(c.second)
                  << "%\n";
    std::cout << "held-out perplexity: " << std::setprecision(3) << demo::held_out_perplexity(*model, world) << "\n"
              << "wrote " << out.string() << "\n";
    return 0;
}

int demo_info(const Args&) {
    demo::FactWorld world = demo::generate_fact_world();
    std::cout << "Fact World (seed " << world.seed << ", hash " << world.hash() << ")\n";
    std::map<std::string, int> by_type;
    for (const auto& e : world.entities) by_type[demo::entity_type_name(e.type)]++;
    for (const auto& [t, n] : by_type) std::cout << "  " << std::setw(4) << n << " " << t << "\n";
    std::cout << "  " << world.facts.size() << " facts over " << world.relations.size() << " relations:\n";
    for (const auto& r : world.relations) std::cout << "    " << r.id << " " << r.name << (r.multi_valued ? " (multi-valued)" : "") << ": \"" << r.templates[0] << " ...\"\n";
    try {
        std::cout << "  model: " << demo_resource_dir("factworld").string() << "\n";
    } catch (const Error& e) {
        std::cout << "  " << e.what() << "\n";
    }
    std::cout << "Shapes World: 32x32 images of a bright shape on a tinted, striped background\n  classes:";
    for (const auto& c : demo::shape_class_names()) std::cout << " " << c;
    std::cout << "\n  splits: train and test (background matches the class with p = 0.8), counter (never matches)\n";
    try {
        std::cout << "  model: " << demo_resource_dir("shapes").string() << "\n";
    } catch (const Error& e) {
        std::cout << "  " << e.what() << "\n";
    }
    return 0;
}

}  // namespace

int cmd_demo(const Argv& argv) {
    Args args(argv, command_spec("demo"));
    const auto& pos = args.positional();
    if (pos.size() != 1) throw Error(ErrorKind::Argument, "usage: engram-cli demo train|info|data ...");
    if (pos[0] == "train") {
        args.refuse({"split", "n"}, "applies to demo data only");
        return demo_train(args);
    }
    if (pos[0] == "info") {
        args.refuse({"world", "quick", "out", "seed", "surnames", "steps", "split", "n"}, "does not apply to demo info");
        return demo_info(args);
    }
    if (pos[0] == "data") {
        args.refuse({"quick", "surnames", "steps"}, "applies to demo train only");
        return demo_data(args);
    }
    throw Error(ErrorKind::Argument, "unknown demo command '" + pos[0] + "' (train, info, data)");
}

}  // namespace engram::cli
