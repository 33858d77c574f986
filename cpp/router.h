// Router core (spec: cores.md, "Router core"): a FastGRNN-style cell over a
// sparse low-rank projection, five heads, and the softmax cross-entropy step that
// trains the model and context heads from outcomes.
//
// All parameters of one router live in ONE float32 buffer (see Layout), so a
// forward is one pointer + one input and Python passes a single array. The
// frozen part (V, U, cell biases, temperature/top_p/confidence heads) comes first
// and is never written after init, so a state can store only its seed for it; the
// trainable part (model and context heads) is the buffer's tail.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common.h"

namespace learnstream {
namespace router {

constexpr std::size_t HIDDEN = 128;
constexpr std::size_t RANK = 8;
constexpr std::size_t BUCKETS = 5;
// Stack scratch for the model logits of one query: no allocation per route.
constexpr std::size_t MAX_TARGETS = 1024;
constexpr float SPARSITY = 0.9f;
constexpr uint32_t MASK_SALT = 0x9E37u;
constexpr uint32_t HEAD_SALT = 0xA17Cu;
// Above this pre-activation the cell output (1 - sigma) tanh is below 1e-17.
constexpr float H_CAP = 40.0f;

// Offsets (in floats) of every tensor in the parameter buffer.
struct Layout {
    std::size_t in_dim, nt;
    std::size_t v, u, bh, bz, wt, bt, wp, bp, wf, bf;  // frozen
    std::size_t wm, bm, wc, bc;                        // trainable (the tail)
    std::size_t total;

    Layout(std::size_t in_dim_, std::size_t nt_) : in_dim(in_dim_), nt(nt_) {
        std::size_t o = 0;
        v = o;  o += RANK * in_dim;
        u = o;  o += HIDDEN * RANK;
        bh = o; o += HIDDEN;
        bz = o; o += HIDDEN;
        wt = o; o += HIDDEN;
        bt = o; o += 1;
        wp = o; o += HIDDEN;
        bp = o; o += 1;
        wf = o; o += HIDDEN;
        bf = o; o += 1;
        wm = o; o += nt * HIDDEN;
        bm = o; o += nt;
        wc = o; o += BUCKETS * HIDDEN;
        bc = o; o += BUCKETS;
        total = o;
    }
    std::size_t trainable() const { return wm; }
};

// Box-Muller on two mulberry32 draws: sqrt(-2 ln max(u,1e-9)) * cos(2 pi v).
// Evaluated in double and rounded once to float: libm's float log/cos may differ
// by an ulp between platforms, the double ones almost never change the rounded
// float, so weights regenerated from a seed on another machine stay bit-exact.
inline float randn(Mulberry32& rng) {
    const double u = rng.next();
    const double v = rng.next();
    const double two_pi = 6.283185307179586;
    return static_cast<float>(std::sqrt(-2.0 * std::log(std::max(u, 1e-9))) * std::cos(two_pi * v));
}

// Dot product with 8 independent partial sums: a plain loop is one dependent
// add chain (gcc may not reorder float adds without -ffast-math), which makes the
// 8 x 384 projection latency-bound; 8 lanes let -O3 use two SSE accumulators.
inline float fdot(const float* a, const float* b, std::size_t n) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    const std::size_t n8 = n - n % 8;
    for (std::size_t i = 0; i < n8; i += 8)
        for (std::size_t j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
    float tail = 0.0f;
    for (std::size_t i = n8; i < n; ++i) tail += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// tanh(a) = 1 - 2 / (exp(2a) + 1): one expf instead of tanhf (about 3x cheaper
// here), absolute error below 1e-7; exp overflow gives exactly +-1.
inline float fast_tanh(float a) { return 1.0f - 2.0f / (std::exp(2.0f * a) + 1.0f); }

inline float inv_sqrt(std::size_t n) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(n))); }

// Deterministic init of the whole buffer p[L.total] from seed.
inline void init(float* p, const Layout& L, uint32_t seed) {
    std::fill(p, p + L.total, 0.0f);  // every bias starts at 0
    Mulberry32 rng(seed);
    const float sv = inv_sqrt(L.in_dim), su = inv_sqrt(RANK), sh = inv_sqrt(HIDDEN);
    for (std::size_t i = 0; i < RANK * L.in_dim; ++i) p[L.v + i] = randn(rng) * sv;
    for (std::size_t i = 0; i < HIDDEN * RANK; ++i) p[L.u + i] = randn(rng) * su;
    Mulberry32 mask(seed ^ MASK_SALT);
    for (std::size_t i = 0; i < HIDDEN * RANK; ++i)
        if (mask.next() < SPARSITY) p[L.u + i] = 0.0f;
    Mulberry32 heads(seed ^ HEAD_SALT);
    for (std::size_t i = 0; i < L.nt * HIDDEN; ++i) p[L.wm + i] = randn(heads) * sh;
    for (std::size_t i = 0; i < BUCKETS * HIDDEN; ++i) p[L.wc + i] = randn(heads) * sh;
    for (std::size_t i = 0; i < HIDDEN; ++i) p[L.wt + i] = randn(heads) * sh;
    for (std::size_t i = 0; i < HIDDEN; ++i) p[L.wp + i] = randn(heads) * sh;
    for (std::size_t i = 0; i < HIDDEN; ++i) p[L.wf + i] = randn(heads) * sh;
}

// The cell: w = U(V x); pre = w + bh; z = sigma(pre + bz); h = (1 - z) tanh(pre).
// `normalize` ([beyond]) first rescales x to unit RMS (norm sqrt(in_dim)), the scale
// V's 1/sqrt(in_dim) init assumes; it is applied to the rank-8 projection, which
// is the same thing and costs 8 multiplies.
inline void hidden(const float* p, const Layout& L, const float* x, bool normalize, float* h) {
    float t[RANK];
    for (std::size_t r = 0; r < RANK; ++r) t[r] = fdot(p + L.v + r * L.in_dim, x, L.in_dim);
    if (normalize) {
        const float n2 = fdot(x, x, L.in_dim);
        if (n2 > 0.0f) {
            const float s = std::sqrt(static_cast<float>(L.in_dim) / n2);
            for (float& e : t) e *= s;
        }
    }
    const float* U = p + L.u;
    for (std::size_t i = 0; i < HIDDEN; ++i) {
        float w = 0.0f;
        for (std::size_t r = 0; r < RANK; ++r) w += U[i * RANK + r] * t[r];
        const float pre = w + p[L.bh + i];
        // ~43% of U's rows are all zero (0.9^8): with bh = 0 the unit is exactly 0,
        // so the sparsity saves the two transcendentals, which dominate the cost.
        const float bz = p[L.bz + i];
        if (pre == 0.0f) {
            h[i] = 0.0f;
        } else if (bz == 0.0f) {
            // bz is 0 unless a caller set it: with e = exp(pre), 1 - sigma(pre) = 1/(1+e)
            // and tanh(pre) = (e^2-1)/(e^2+1), so h = (e-1)/(e^2+1): one exp per unit.
            // pre is capped where h < 1e-17 anyway, so e*e never makes inf/inf.
            const float e = std::exp(std::min(pre, H_CAP));
            h[i] = (e - 1.0f) / (e * e + 1.0f);
        } else {
            h[i] = (1.0f - sigmoid(pre + bz)) * fast_tanh(pre);
        }
    }
}

// The five heads on h: model logits (nt), ctx logits (5), and
// [temperature, top_p, confidence] = [0.1 + 1.4 s, 0.5 + 0.5 s, s] of their sigmoids.
inline void heads(const float* p, const Layout& L, const float* h, float* model, float* ctx, float* tpc) {
    for (std::size_t k = 0; k < L.nt; ++k) model[k] = fdot(p + L.wm + k * HIDDEN, h, HIDDEN) + p[L.bm + k];
    for (std::size_t k = 0; k < BUCKETS; ++k) ctx[k] = fdot(p + L.wc + k * HIDDEN, h, HIDDEN) + p[L.bc + k];
    tpc[0] = 0.1f + 1.4f * sigmoid(fdot(p + L.wt, h, HIDDEN) + p[L.bt]);
    tpc[1] = 0.5f + 0.5f * sigmoid(fdot(p + L.wp, h, HIDDEN) + p[L.bp]);
    tpc[2] = sigmoid(fdot(p + L.wf, h, HIDDEN) + p[L.bf]);
}

// Index of the first strict maximum.
inline std::size_t argmax(const float* a, std::size_t n) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < n; ++i)
        if (a[i] > a[best]) best = i;
    return best;
}

// Softmax probability of entry k: 1 / sum_j exp(a_j - a_k), stable when k is the max.
inline float softmax_at(const float* a, std::size_t n, std::size_t k) {
    float s = 0.0f;
    for (std::size_t j = 0; j < n; ++j) s += std::exp(a[j] - a[k]);
    return 1.0f / s;
}

struct Decision {
    std::size_t model;    // argmax of (model logits + adapter)
    float prob;           // its softmax probability
    std::size_t bucket;   // argmax of ctx logits
    float temperature, top_p, confidence;  // confidence = conf * prob
};

// One query, end to end, without allocating. `adapter` (nt logits) may be null.
inline Decision decide(const float* p, const Layout& L, const float* x, bool normalize, const float* adapter) {
    float h[HIDDEN], model[MAX_TARGETS], ctx[BUCKETS], tpc[3];
    hidden(p, L, x, normalize, h);
    heads(p, L, h, model, ctx, tpc);
    if (adapter != nullptr)
        for (std::size_t k = 0; k < L.nt; ++k) model[k] += adapter[k];
    Decision d;
    d.model = argmax(model, L.nt);
    d.prob = softmax_at(model, L.nt, d.model);
    d.bucket = argmax(ctx, BUCKETS);
    d.temperature = tpc[0];
    d.top_p = tpc[1];
    d.confidence = tpc[2] * d.prob;
    return d;
}

// Batch forward: raw head outputs for n rows of X (n x in_dim).
inline void forward_batch(const float* p, const Layout& L, const float* X, std::size_t n, bool normalize,
                          float* model, float* ctx, float* tpc) {
    float h[HIDDEN];
    for (std::size_t i = 0; i < n; ++i) {
        hidden(p, L, X + i * L.in_dim, normalize, h);
        heads(p, L, h, model + i * L.nt, ctx + i * BUCKETS, tpc + i * 3);
    }
}

// In-place softmax cross-entropy step of one head (rows x HIDDEN weights + rows
// biases) toward class `target`: W -= lr (softmax(Wh + b) - e_target) h^T. A
// negative lr ascends the loss, i.e. pushes the head away from `target`.
inline void ce_step(float* W, float* b, std::size_t rows, const float* h, std::size_t target, float lr,
                    float* logits) {
    for (std::size_t k = 0; k < rows; ++k) logits[k] = fdot(W + k * HIDDEN, h, HIDDEN) + b[k];
    const float top = logits[argmax(logits, rows)];
    float s = 0.0f;
    for (std::size_t k = 0; k < rows; ++k) {
        logits[k] = std::exp(logits[k] - top);
        s += logits[k];
    }
    for (std::size_t k = 0; k < rows; ++k) {
        const float g = lr * (logits[k] / s - (k == target ? 1.0f : 0.0f));
        float* w = W + k * HIDDEN;
        for (std::size_t j = 0; j < HIDDEN; ++j) w[j] -= g * h[j];
        b[k] -= g;
    }
}

// One training sample: both heads step toward (target model, bucket) with the
// signed learning rate lr = sign(q - 0.5) * 0.05 * 2|q - 0.5| (computed by the caller).
inline void train_step(float* p, const Layout& L, const float* x, bool normalize, std::size_t target,
                       std::size_t bucket, float lr) {
    float h[HIDDEN], logits[MAX_TARGETS];
    hidden(p, L, x, normalize, h);
    ce_step(p + L.wm, p + L.bm, L.nt, h, target, lr, logits);
    ce_step(p + L.wc, p + L.bc, BUCKETS, h, bucket, lr, logits);
}


// ---- The contextual bandit ([beyond]: learns the representation the heads lack) ----
//
// Per target k, a ridge regression of the outcome quality on features phi of the
// query, with exponential forgetting, kept as the inverse design matrix
// Ainv_k = (gamma A_k + phi phi^T)^-1 (Sherman-Morrison, O(d^2) per outcome) and
// theta_k = Ainv_k b_k. phi = [P x_hat; squares; 1]: x rescaled to unit RMS, then a dense
// projection P (dim x in_dim: Gaussian, regenerated from the seed like V and U, or fitted by
// workers/cores/bandit.py), optionally the squares of its first nsq features, so the state per
// target is d1^2 (d1 = dim + nsq + 1), independent of in_dim. The covariance is kept
// in double: rank-1 downdates in float32 lost positive definiteness after a few
// thousand forgetting steps.
namespace bandit {

constexpr uint32_t PROJ_SALT = 0xB4D1u;
constexpr std::size_t MAX_DIM = 256;  // stack scratch for the features of one query
// phi's length at most: dim projected features, at most dim squared ones, the intercept
constexpr std::size_t MAX_PHI = 2 * MAX_DIM + 1;

// The squared features: phi[dim + i] = (phi[i]^2 - 1) / sqrt(2) for i < nsq (zero mean and unit
// variance for a whitened feature), then the intercept. A quality that rises and falls along a
// direction (a model good at middling difficulty only) is linear in these, not in phi[i] alone.
inline void squares_and_intercept(double* phi, std::size_t dim, std::size_t nsq) {
    for (std::size_t i = 0; i < nsq; ++i) phi[dim + i] = (phi[i] * phi[i] - 1.0) * 0.70710678118654752440;
    phi[dim + nsq] = 1.0;
}

inline void init_projection(float* P, std::size_t dim, std::size_t in_dim, uint32_t seed) {
    Mulberry32 rng(seed ^ PROJ_SALT);
    const float s = inv_sqrt(in_dim);
    for (std::size_t i = 0; i < dim * in_dim; ++i) P[i] = randn(rng) * s;
}

// fdot with 32 partial sums: P x is dim dot products of in_dim floats (12,288 products at
// dim 32, in_dim 384), and fdot's 8 sums made one dependent add chain per SIMD register
// (latency-bound: half a route's bandit time). Four independent chains keep the FMA
// units busy with SSE or AVX2 alike.
inline float fdot_wide(const float* a, const float* b, std::size_t n) {
    float acc[32] = {};
    const std::size_t n32 = n - n % 32;
    for (std::size_t i = 0; i < n32; i += 32)
        for (std::size_t j = 0; j < 32; ++j) acc[j] += a[i + j] * b[i + j];
    float tail = 0.0f;
    for (std::size_t i = n32; i < n; ++i) tail += a[i] * b[i];
    for (std::size_t j = 0; j < 8; ++j) acc[j] = (acc[j] + acc[j + 16]) + (acc[j + 8] + acc[j + 24]);
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// phi[0..dim) = P x_hat with x_hat = x sqrt(in_dim) / ||x|| (0 for x = 0); then nsq squared
// features and phi[dim + nsq] = 1 (squares_and_intercept).
inline void features(const float* P, std::size_t dim, std::size_t in_dim, const float* x, double* phi,
                     std::size_t nsq = 0) {
    const float n2 = fdot(x, x, in_dim);
    const double s = n2 > 0.0f ? std::sqrt(static_cast<double>(in_dim) / static_cast<double>(n2)) : 0.0;
    for (std::size_t i = 0; i < dim; ++i) phi[i] = s * static_cast<double>(fdot_wide(P + i * in_dim, x, in_dim));
    squares_and_intercept(phi, dim, nsq);
}

// phi[0..dim) = P x as given (x already in the projection's scale: the bandit's stored
// pre-projected queries, workers/cores/bandit.py); then as features().
inline void features_as_given(const float* P, std::size_t dim, std::size_t in_dim, const float* x, double* phi,
                              std::size_t nsq = 0) {
    for (std::size_t i = 0; i < dim; ++i) phi[i] = static_cast<double>(fdot_wide(P + i * in_dim, x, in_dim));
    squares_and_intercept(phi, dim, nsq);
}

// mean = theta . phi and width = sqrt(phi^T Ainv phi) of one target (d1 = dim + squares + 1).
// Four partial sums per row: one dependent add chain per row made the (dim+1)^2 loop
// latency-bound (about 1.5 us per target at dim 32).
inline double ddot(const double* a, const double* b, std::size_t n) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    const std::size_t n4 = n - n % 4;
    for (std::size_t j = 0; j < n4; j += 4) {
        s0 += a[j] * b[j];
        s1 += a[j + 1] * b[j + 1];
        s2 += a[j + 2] * b[j + 2];
        s3 += a[j + 3] * b[j + 3];
    }
    for (std::size_t j = n4; j < n; ++j) s0 += a[j] * b[j];
    return (s0 + s2) + (s1 + s3);
}

// Ainv is exactly symmetric (update keeps it so, a drift only scales it), so the quadratic
// form is the diagonal plus twice the upper triangle: half the multiplications of the
// full (dim+1)^2 loop, which was most of a route's bandit cost.
inline void score_one(const double* Ainv, const double* theta, std::size_t d1, const double* phi, double& mean,
                      double& width) {
    double w = 0.0;
    for (std::size_t i = 0; i < d1; ++i) {
        const double* row = Ainv + i * d1;
        w += phi[i] * (row[i] * phi[i] + 2.0 * ddot(row + i + 1, phi + i + 1, d1 - i - 1));
    }
    mean = ddot(theta, phi, d1);
    width = std::sqrt(std::max(w, 0.0));
}

struct Choice {
    std::size_t best;    // argmax of mean - lam cost + alpha width (first strict max)
    std::size_t greedy;  // argmax of mean - lam cost
    bool tied;           // every target scored the same: the bandit knows nothing yet
    double mean, width;  // of best
};

// Scores every target; cost (nt) may be null (= 0).
inline Choice choose(const double* Ainv, const double* theta, const double* cost, std::size_t nt, std::size_t d1,
                     const double* phi, double alpha, double lam) {
    Choice c{0, 0, true, 0.0, 0.0};
    double best = 0.0, greedy = 0.0, first = 0.0;
    for (std::size_t k = 0; k < nt; ++k) {
        double m, w;
        score_one(Ainv + k * d1 * d1, theta + k * d1, d1, phi, m, w);
        const double g = m - (cost != nullptr ? lam * cost[k] : 0.0);
        const double s = g + alpha * w;
        if (k == 0) {
            best = greedy = first = s;
            greedy = g;
            c.mean = m;
            c.width = w;
            continue;
        }
        if (std::fabs(s - first) > 1e-12 * (1.0 + std::fabs(first))) c.tied = false;
        if (s > best) {
            best = s;
            c.best = k;
            c.mean = m;
            c.width = w;
        }
        if (g > greedy) {
            greedy = g;
            c.greedy = k;
        }
    }
    return c;
}

// One outcome r of target k at phi, forgetting factor gamma in (0, 1]: A <- gamma A + phi phi^T,
// b <- gamma b + r phi, theta = Ainv b. Returns theta . phi before the update (the prediction).
// scratch holds d1 doubles.
inline double update(double* Ainv, double* b, double* theta, std::size_t d1, const double* phi, double r,
                     double gamma, double* u) {
    const double pred = ddot(theta, phi, d1);
    double s = 0.0;
    for (std::size_t i = 0; i < d1; ++i) {
        u[i] = ddot(Ainv + i * d1, phi, d1);
        s += phi[i] * u[i];
    }
    // (gamma A + phi phi^T)^-1 = (Ainv - u u^T / (gamma + s)) / gamma, u = Ainv phi (A symmetric):
    // u_i u_j == u_j u_i exactly, so Ainv stays exactly symmetric.
    const double c = 1.0 / (gamma + s), ig = 1.0 / gamma;
    for (std::size_t i = 0; i < d1; ++i) {
        double* row = Ainv + i * d1;
        const double ui = u[i];
        for (std::size_t j = 0; j < d1; ++j) row[j] = (row[j] - c * (ui * u[j])) * ig;
    }
    for (std::size_t i = 0; i < d1; ++i) b[i] = gamma * b[i] + r * phi[i];
    for (std::size_t i = 0; i < d1; ++i) theta[i] = ddot(Ainv + i * d1, b, d1);
    return pred;
}

// Every target but k forgets too, per outcome of any target (discounted LinUCB): a target that is
// never chosen keeps its old evidence otherwise, and after a drift that made it the best somewhere it
// stays unchosen there for good. Its A^-1 grows by 1/idle and b shrinks by idle (theta = A^-1 b is
// unchanged), until trace(A^-1) reaches `cap` (the prior's: it cannot grow without bound).
inline void idle(double* Ainv, double* b, std::size_t nt, std::size_t d1, std::size_t k, double idle_gamma,
                 double cap) {
    const double ig = 1.0 / idle_gamma;
    for (std::size_t j = 0; j < nt; ++j) {
        if (j == k) continue;
        double* A = Ainv + j * d1 * d1;
        double tr = 0.0;
        for (std::size_t i = 0; i < d1; ++i) tr += A[i * d1 + i];
        if (tr * ig > cap) continue;
        for (std::size_t i = 0; i < d1 * d1; ++i) A[i] *= ig;
        for (std::size_t i = 0; i < d1; ++i) b[j * d1 + i] *= idle_gamma;
    }
}

}  // namespace bandit

// ---- The learned mode's route (FastGRNN decision + bandit choice), the p99 hot path ----
//
// Compiled twice (with router_route's decide_one): for the baseline x86-64 the wheel targets,
// and with AVX2 + FMA, picked at run time by the CPU (never -march=native: the wheel must run everywhere). Only this
// read-only path is dispatched; every update keeps one instruction set, so state evolves
// bit for bit the same on every machine. The two builds of a route may differ in the last
// bits of a score (FMA rounds once), not in what a state stores.
struct Routed {
    Decision d;
    bandit::Choice ch;
};

// phi: scratch of bandit::MAX_PHI doubles; nsq squared features (bandit::features).
__attribute__((always_inline)) inline Routed route_learned_body(
    const float* p, const Layout& L, const float* x, bool normalize, const float* adapter, const float* P,
    std::size_t dim, std::size_t nsq, const double* Ainv, const double* theta, const double* cost, std::size_t nt,
    double alpha, double lam, double* phi) {
    Routed r;
    r.d = decide(p, L, x, normalize, adapter);
    bandit::features(P, dim, L.in_dim, x, phi, nsq);
    r.ch = bandit::choose(Ainv, theta, cost, nt, dim + nsq + 1, phi, alpha, lam);
    return r;
}

#if defined(__GNUC__) && defined(__x86_64__)
#define LEARNSTREAM_ROUTE_AVX2 1
// flatten: decide, features and choose (and what they call) are compiled into this body for AVX2.
__attribute__((target("avx2,fma"), flatten)) inline Routed route_learned_avx2(
    const float* p, const Layout& L, const float* x, bool normalize, const float* adapter, const float* P,
    std::size_t dim, std::size_t nsq, const double* Ainv, const double* theta, const double* cost, std::size_t nt,
    double alpha, double lam, double* phi) {
    return route_learned_body(p, L, x, normalize, adapter, P, dim, nsq, Ainv, theta, cost, nt, alpha, lam, phi);
}
#endif

// router_route's decision (reference mode) from the same build as the learned route, so a fresh
// learned router (bandit tied) answers bit for bit as the reference mode does.
#ifdef LEARNSTREAM_ROUTE_AVX2
__attribute__((target("avx2,fma"), flatten)) inline Decision decide_avx2(const float* p, const Layout& L,
                                                                           const float* x, bool normalize,
                                                                           const float* adapter) {
    return decide(p, L, x, normalize, adapter);
}
#endif

inline bool route_has_avx2() {
#ifdef LEARNSTREAM_ROUTE_AVX2
    static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return yes;
#else
    return false;
#endif
}

inline Decision decide_one(const float* p, const Layout& L, const float* x, bool normalize, const float* adapter) {
#ifdef LEARNSTREAM_ROUTE_AVX2
    if (route_has_avx2()) return decide_avx2(p, L, x, normalize, adapter);
#endif
    return decide(p, L, x, normalize, adapter);
}

inline Routed route_learned(const float* p, const Layout& L, const float* x, bool normalize, const float* adapter,
                            const float* P, std::size_t dim, std::size_t nsq, const double* Ainv,
                            const double* theta, const double* cost, std::size_t nt, double alpha, double lam) {
    double phi[bandit::MAX_PHI];
#ifdef LEARNSTREAM_ROUTE_AVX2
    if (route_has_avx2())
        return route_learned_avx2(p, L, x, normalize, adapter, P, dim, nsq, Ainv, theta, cost, nt, alpha, lam, phi);
#endif
    return route_learned_body(p, L, x, normalize, adapter, P, dim, nsq, Ainv, theta, cost, nt, alpha, lam, phi);
}

}  // namespace router
}  // namespace learnstream
