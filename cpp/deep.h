// Deep core kernels (spec: cores.md, Deep core): EWC++ online Fisher, the EWC
// penalty, and the loss-window z-score that detects task boundaries.
// Header-only, float32 state, no Python, no global state.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace learnstream {
namespace deep {

// F <- decay*F + (1-decay)*g*g, in place. `w_new` is (1-decay) rounded once
// from double by the caller, so 0.999 gives exactly f32(0.001) as the spec's
// constant reads, not the f32 difference 1 - f32(0.999).
inline void fisher_ema(float* F, const float* g, std::size_t n, float decay, float w_new) {
    for (std::size_t i = 0; i < n; ++i) F[i] = decay * F[i] + w_new * g[i] * g[i];
}

// lam * sum_i F_i (theta_i - snap_i)^2 over n elements. Products are float32
// as the spec says; the sum runs in double so a long parameter vector does not
// lose its small terms (exactly 0 when theta == snap), in four partial sums so
// it is not bound by the latency of one running sum.
inline double ewc_penalty(const float* F, const float* snap, const float* theta, std::size_t n,
                          float lam) {
    double acc[4] = {0, 0, 0, 0};
    std::size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (std::size_t k = 0; k < 4; ++k) {
            const float d = theta[i + k] - snap[i + k];
            acc[k] += static_cast<double>(F[i + k] * d * d);
        }
    double s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; i < n; ++i) {
        const float d = theta[i] - snap[i];
        s += static_cast<double>(F[i] * d * d);
    }
    return static_cast<double>(lam) * s;
}

// Population mean and std of v[0..n) in float32 (n > 0).
inline void mean_std(const float* v, std::size_t n, float& mean, float& std_) {
    float s = 0.0f;
    for (std::size_t i = 0; i < n; ++i) s += v[i];
    mean = s / static_cast<float>(n);
    float ss = 0.0f;
    for (std::size_t i = 0; i < n; ++i) {
        const float d = v[i] - mean;
        ss += d * d;
    }
    std_ = std::sqrt(ss / static_cast<float>(n));
}

struct LossOutcome {
    bool fired = false;
    bool stored = false;   // false for a non-finite loss (nothing stored)
    float z = 0.0f;        // |loss - prior mean| / floored prior std (0 with < min_prior)
    float prior_mean = 0.0f, prior_std = 0.0f;
    float window_mean = 0.0f, window_std = 0.0f;  // including the new loss
};

// record_loss: ring[0..len) holds the last losses oldest-first (cap entries).
// prior = the window before the push; push (dropping the oldest beyond cap);
// with >= min_prior prior samples, fire iff |loss - mean|/max(std, min_std) > z_thresh.
inline LossOutcome loss_window_push(float* ring, std::size_t cap, int64_t& len, int64_t& boundaries,
                                    float loss, float min_std, float z_thresh, std::size_t min_prior) {
    LossOutcome o;
    std::size_t n = static_cast<std::size_t>(len);
    if (!std::isfinite(loss)) {
        if (n > 0) mean_std(ring, n, o.window_mean, o.window_std);
        return o;
    }
    o.stored = true;
    const std::size_t prior_n = n;
    if (prior_n > 0) mean_std(ring, prior_n, o.prior_mean, o.prior_std);
    if (prior_n >= min_prior) {
        const float sd = o.prior_std > min_std ? o.prior_std : min_std;
        o.z = std::fabs(loss - o.prior_mean) / sd;
        o.fired = o.z > z_thresh;
    }
    if (n == cap) {
        for (std::size_t i = 1; i < cap; ++i) ring[i - 1] = ring[i];
        ring[cap - 1] = loss;
    } else {
        ring[n++] = loss;
    }
    len = static_cast<int64_t>(n);
    if (o.fired) ++boundaries;
    mean_std(ring, n, o.window_mean, o.window_std);
    return o;
}

}  // namespace deep
}  // namespace learnstream
