// Shapes World: procedural 32x32 images, rendered with 3x3 supersampling.
//
// Design (measured before the world was built): a tiny ViT on 2 cores learns a
// textured-background cue long before the shapes, so here the shapes are large and bright, the
// backgrounds dark, and the spurious cue is a background tint plus a faint stripe pattern. The
// classes have distinct silhouettes under any rotation.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <fstream>

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include "demo/training.h"
#include "engram/checkpoint.h"
#include "engram/demo.h"
#include "engram/error.h"
#include "engram/model.h"

namespace engram::demo {

namespace {

const std::vector<std::string> kClasses = {"circle", "square", "triangle", "cross", "star", "ring", "crescent", "bar"};
const std::vector<std::string> kBackgrounds = {"red", "orange", "yellow", "green", "teal", "blue", "purple", "pink"};

struct Rgb {
    double r, g, b;
};

Rgb hsv(double h, double s, double v) {
    const double c = v * s, x = c * (1 - std::fabs(std::fmod(h * 6.0, 2.0) - 1)), m = v - c;
    const int k = static_cast<int>(h * 6.0) % 6;
    const double rgb[6][3] = {{c, x, 0}, {x, c, 0}, {0, c, x}, {0, x, c}, {x, 0, c}, {c, 0, x}};
    return {rgb[k][0] + m, rgb[k][1] + m, rgb[k][2] + m};
}

// Is the point (u, v), in the shape's own frame (radius 1), inside shape `cls`?
bool inside(int cls, double u, double v) {
    const double r = std::sqrt(u * u + v * v);
    const double a = std::atan2(v, u);
    switch (cls) {
        case 0: return r <= 1.0;                                                      // circle
        case 1: return std::fabs(u) <= 0.78 && std::fabs(v) <= 0.78;                  // square
        case 2: {                                                                     // triangle
            for (int k = 0; k < 3; ++k) {
                const double t = -M_PI / 2 + k * 2 * M_PI / 3;
                if (u * std::cos(t) + v * std::sin(t) > 0.5) return false;
            }
            return true;
        }
        case 3: return (std::fabs(u) <= 0.3 && std::fabs(v) <= 1.0) || (std::fabs(v) <= 0.3 && std::fabs(u) <= 1.0);  // cross
        case 4: {                                                                     // five-pointed star
            const double sector = std::fmod(a + 2 * M_PI, 2 * M_PI / 5) - M_PI / 5;
            const double edge = 0.45 + 0.55 * (1.0 - std::fabs(sector) / (M_PI / 5));
            return r <= edge;
        }
        case 5: return r <= 1.0 && r >= 0.58;                                         // ring
        case 6: return r <= 1.0 && std::sqrt((u - 0.45) * (u - 0.45) + v * v) > 0.75;  // crescent
        case 7: return std::fabs(u) <= 1.0 && std::fabs(v) <= 0.3;                    // bar
    }
    return false;
}

}  // namespace

const std::vector<std::string>& shape_class_names() { return kClasses; }
const std::vector<std::string>& shape_background_names() { return kBackgrounds; }

const char* shapes_split_name(ShapesSplit split) {
    switch (split) {
        case ShapesSplit::Train: return "train";
        case ShapesSplit::Test: return "test";
        case ShapesSplit::Counter: return "counter";
    }
    return "?";
}

ShapesSplit shapes_split_from_name(const std::string& name) {
    if (name == "train") return ShapesSplit::Train;
    if (name == "test") return ShapesSplit::Test;
    if (name == "counter") return ShapesSplit::Counter;
    throw Error(ErrorKind::Argument, "unknown split '" + name + "' (train, test, counter)");
}

ShapeSample render_shape_sample(uint64_t seed, ShapesSplit split, uint64_t index, const ShapesOptions& o) {
    Rng rng(seed * 1000003ull + static_cast<uint64_t>(split) * 0x51ED27ull + index * 0x9E3779B1ull);
    ShapeSample s;
    const int n_cls = static_cast<int>(kClasses.size());
    s.label = static_cast<int>(rng.below(n_cls));
    const bool match = split != ShapesSplit::Counter && rng.uniform() < o.p_match;
    s.background = match ? s.label : static_cast<int>((s.label + 1 + rng.below(n_cls - 1)) % n_cls);

    const int size = o.image_size;
    const double radius = size * rng.uniform(0.28, 0.40);
    const double cx = size / 2.0 + rng.uniform(-0.12, 0.12) * size, cy = size / 2.0 + rng.uniform(-0.12, 0.12) * size;
    const double angle = rng.uniform(0, 2 * M_PI);
    const Rgb fg = hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.8, 1.0));
    const Rgb tint = hsv(double(s.background) / n_cls, 0.8, 0.35);
    const double stripe_angle = M_PI * double(s.background) / n_cls, stripe_period = rng.uniform(4.0, 7.0);
    const double noise_amp = 0.06;
    const double ca = std::cos(angle), sa = std::sin(angle);

    s.rgb.resize(static_cast<size_t>(size) * size * 3);
    for (int y = 0; y < size; ++y)
        for (int x = 0; x < size; ++x) {
            const double stripe = 0.5 + 0.5 * std::sin(2 * M_PI * (x * std::cos(stripe_angle) + y * std::sin(stripe_angle)) / stripe_period);
            const double jitter = (rng.uniform() - 0.5) * noise_amp;
            const double shade = 0.75 + 0.25 * stripe + jitter;
            int hits = 0;
            for (int sy = 0; sy < 3; ++sy)
                for (int sx = 0; sx < 3; ++sx) {
                    const double px = x + (sx + 0.5) / 3.0 - cx, py = y + (sy + 0.5) / 3.0 - cy;
                    const double u = (px * ca + py * sa) / radius, v = (-px * sa + py * ca) / radius;
                    hits += inside(s.label, u, v);
                }
            const double cover = hits / 9.0;
            const double bg[3] = {tint.r * shade, tint.g * shade, tint.b * shade};
            const double fgc[3] = {fg.r, fg.g, fg.b};
            for (int c = 0; c < 3; ++c) {
                const double val = cover * fgc[c] + (1 - cover) * bg[c];
                s.rgb[(static_cast<size_t>(y) * size + x) * 3 + c] = static_cast<uint8_t>(std::lround(std::clamp(val, 0.0, 1.0) * 255.0));
            }
        }
    return s;
}

at::Tensor shape_pixels(const std::vector<ShapeSample>& samples, int size) {
    at::Tensor out = at::empty({static_cast<int64_t>(samples.size()), size, size, 3}, at::kByte);
    uint8_t* p = out.data_ptr<uint8_t>();
    for (size_t i = 0; i < samples.size(); ++i) std::memcpy(p + i * samples[i].rgb.size(), samples[i].rgb.data(), samples[i].rgb.size());
    return (out.permute({0, 3, 1, 2}).to(at::kFloat) / 255.0 - 0.5) / 0.5;
}

void write_shapes_split(uint64_t seed, ShapesSplit split, int n, const std::filesystem::path& dir, const ShapesOptions& o) {
    std::filesystem::create_directories(dir);
    nlohmann::json labels = nlohmann::json::array();
    for (int i = 0; i < n; ++i) {
        ShapeSample s = render_shape_sample(seed, split, static_cast<uint64_t>(i), o);
        char name[64];
        std::snprintf(name, sizeof name, "%s_%05d.png", shapes_split_name(split), i);
        const std::filesystem::path file = dir / name;
        if (!stbi_write_png(file.c_str(), o.image_size, o.image_size, 3, s.rgb.data(), o.image_size * 3))
            throw Error(ErrorKind::Io, file.string() + ": cannot write PNG");
        labels.push_back({{"file", name}, {"label", kClasses[s.label]}, {"label_id", s.label}, {"background", kBackgrounds[s.background]}});
    }
    std::ofstream out(dir / "labels.json");
    out << labels.dump(1) << "\n";
    if (!out) throw Error(ErrorKind::Io, (dir / "labels.json").string() + ": cannot write");
}

LmTrainResult train_shapes_vit(const VitTrainOptions& o, const std::filesystem::path& out_dir, const ProgressFn& progress) {
    HParams hp;
    hp.n_layer = o.n_layer;
    hp.n_embd = o.n_embd;
    hp.n_head = hp.n_head_kv = o.n_head;
    hp.head_dim = o.n_embd / o.n_head;
    hp.n_ff = 4 * o.n_embd;
    hp.norm_eps = 1e-12;
    hp.activation = "gelu";
    hp.image_size = o.shapes.image_size;
    hp.patch_size = o.patch;
    hp.n_channels = 3;
    hp.n_labels = static_cast<int64_t>(kClasses.size());
    hp.n_vocab = hp.n_labels;
    hp.n_ctx = (hp.image_size / hp.patch_size) * (hp.image_size / hp.patch_size) + 1;
    hp.attn_qkv_bias = hp.attn_out_bias = hp.mlp_bias = true;
    hp.tied_output = false;
    auto model = Model::random(Arch::Vit, hp, o.seed, /*trainable=*/true);
    AdamW opt(model->parameters(), AdamWOptions{o.lr, 0.9, 0.999, 1e-8, o.weight_decay});

    LmTrainResult result;
    TrainLog train_log(o.steps, progress, result);
    uint64_t next_index = 0;
    for (int64_t step = 0; step < o.steps; ++step) {
        const double lr = cosine_lr(step, o.steps, o.warmup, o.lr, o.min_lr_ratio);
        std::vector<ShapeSample> samples;
        at::Tensor labels = at::empty({o.batch}, at::kLong);
        for (int b = 0; b < o.batch; ++b) {
            samples.push_back(render_shape_sample(o.seed, ShapesSplit::Train, next_index++, o.shapes));
            labels[b] = samples.back().label;
        }
        ForwardInput in;
        in.pixel_values = shape_pixels(samples, o.shapes.image_size);
        at::Tensor loss = at::cross_entropy_loss(model->forward(in).logits, labels);
        opt.zero_grad();
        loss.backward();
        opt.step(lr);
        train_log.record(step, loss.item<double>(), lr);
    }
    result.seconds = train_log.seconds();

    const std::vector<std::string>& names = kClasses;
    std::filesystem::create_directories(out_dir);
    save_checkpoint(*model, out_dir, DType::F32);
    // Class names and the image processor beside the weights.
    nlohmann::json config = read_json_file(out_dir / "config.json");
    nlohmann::json id2label = nlohmann::json::object(), label2id = nlohmann::json::object();
    for (size_t i = 0; i < names.size(); ++i) {
        id2label[std::to_string(i)] = names[i];
        label2id[names[i]] = i;
    }
    config["id2label"] = id2label;
    config["label2id"] = label2id;
    std::ofstream(out_dir / "config.json") << config.dump(2) << "\n";
    nlohmann::json pre = {{"do_resize", true}, {"size", {{"height", hp.image_size}, {"width", hp.image_size}}}, {"resample", 2},
                          {"do_rescale", true}, {"rescale_factor", 1.0 / 255.0}, {"do_normalize", true},
                          {"image_mean", {0.5, 0.5, 0.5}}, {"image_std", {0.5, 0.5, 0.5}}, {"image_processor_type", "ViTImageProcessor"}};
    std::ofstream(out_dir / "preprocessor_config.json") << pre.dump(2) << "\n";
    return result;
}

double evaluate_shapes_accuracy(const Model& model, uint64_t seed, ShapesSplit split, int n, const ShapesOptions& o) {
    c10::InferenceMode guard;
    int64_t correct = 0;
    for (int start = 0; start < n; start += 256) {
        const int count = std::min(256, n - start);
        std::vector<ShapeSample> samples;
        for (int i = 0; i < count; ++i) samples.push_back(render_shape_sample(seed, split, static_cast<uint64_t>(start + i), o));
        ForwardInput in;
        in.pixel_values = shape_pixels(samples, o.image_size);
        at::Tensor pred = model.forward(in).logits.argmax(-1);
        for (int i = 0; i < count; ++i) correct += pred[i].item<int64_t>() == samples[i].label;
    }
    return n ? double(correct) / n : 0.0;
}

}  // namespace engram::demo
