// What the demo trainers share: AdamW (decoupled weight decay) over plain tensors, the warmup +
// cosine schedule, and the loss log that feeds progress reports. Decay applies to matrices only
// (dimension >= 2), not to norms, biases or the CLS token.
#pragma once

#include <ATen/ATen.h>

#include <chrono>

#include "engram/demo.h"

#include <cmath>
#include <vector>

namespace engram::demo {

struct AdamWOptions {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
};

class AdamW {
public:
    AdamW(std::vector<at::Tensor> params, AdamWOptions o) : params_(std::move(params)), o_(o) {
        for (const auto& p : params_) {
            m_.push_back(at::zeros_like(p).detach());
            v_.push_back(at::zeros_like(p).detach());
        }
    }
    void zero_grad() {
        for (auto& p : params_)
            if (p.grad().defined()) p.mutable_grad() = at::Tensor();
    }
    void step(double lr) {
        at::NoGradGuard no_grad;
        ++t_;
        const double bc1 = 1.0 - std::pow(o_.beta1, double(t_)), bc2 = 1.0 - std::pow(o_.beta2, double(t_));
        for (size_t i = 0; i < params_.size(); ++i) {
            at::Tensor& p = params_[i];
            if (!p.grad().defined()) continue;
            const at::Tensor& g = p.grad();
            if (p.dim() >= 2 && o_.weight_decay > 0) p.mul_(1.0 - lr * o_.weight_decay);
            m_[i].mul_(o_.beta1).add_(g, 1.0 - o_.beta1);
            v_[i].mul_(o_.beta2).addcmul_(g, g, 1.0 - o_.beta2);
            at::Tensor denom = (v_[i] / bc2).sqrt_().add_(o_.eps);
            p.addcdiv_(m_[i], denom, -lr / bc1);
        }
    }

private:
    std::vector<at::Tensor> params_, m_, v_;
    AdamWOptions o_;
    int64_t t_ = 0;
};

inline double cosine_lr(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio) {
    if (step < warmup) return lr * double(step + 1) / double(warmup);
    const double progress = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress))));
}

// Averages the loss over windows of steps and reports progress with an ETA.
class TrainLog {
public:
    TrainLog(int64_t steps, const ProgressFn& progress, LmTrainResult& result)
        : steps_(steps), every_(std::max<int64_t>(1, std::min<int64_t>(50, steps / 20))), progress_(progress), result_(result),
          t0_(std::chrono::steady_clock::now()) {}

    void record(int64_t step, double loss, double lr) {
        if (step == 0) result_.first_loss = loss;
        sum_ += loss;
        ++count_;
        if ((step + 1) % every_ != 0 && step + 1 != steps_) return;
        result_.final_loss = sum_ / count_;
        result_.loss_curve.push_back(result_.final_loss);
        sum_ = 0;
        count_ = 0;
        const double elapsed = seconds();
        if (progress_) progress_({step + 1, steps_, result_.final_loss, lr, elapsed, elapsed / double(step + 1) * double(steps_ - step - 1)});
    }
    double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

private:
    int64_t steps_, every_;
    const ProgressFn& progress_;
    LmTrainResult& result_;
    std::chrono::steady_clock::time_point t0_;
    double sum_ = 0;
    int count_ = 0;
};

}  // namespace engram::demo
