// Online learner models (spec: online.md): softmax regression (h == 0) and a
// one-hidden-layer ReLU MLP over one flat float32 parameter vector, with a fused
// forward/backward/update step that carries the continual-learning terms:
//
//   objective = 1/B sum_i [ ce_w_i  * CE_mask(z_i, y_i)                  (labels)
//                         + mse_w_i * |z_i - target_i|^2 / c             (dark experience replay)
//                         + kd_w_i  * tau^2 KL(teacher_i || softmax(z_i/tau)) ]  (learning without forgetting)
//             + lambda/2 * sum_j F_j (theta_j - anchor_j)^2              (EWC; its step only here,
//                                                                         the penalty value is deep::ewc_penalty)
//   velocity = momentum * velocity + grad;  theta' = theta - lr * velocity   (data terms)
//   theta = (theta' + k * anchor) / (1 + k),  k = lr * lambda * F             (EWC, proximal)
//
// Layout of theta: h > 0: W1 (h x d), b1 (h), W2 (c x h), b2 (c); h == 0: W (c x d), b (c).
// Header-only, float32 parameters, no Python, no global state.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common.h"

namespace learnstream {
namespace online {

struct Shape {
    std::size_t d, h, c;  // features, hidden units (0: softmax regression), classes
};

inline std::size_t n_params(const Shape& s) {
    return s.h ? s.h * s.d + s.h + s.c * s.h + s.c : s.c * s.d + s.c;
}

// Logits z (c) of one example; hid (h) receives the ReLU activations (unused when h == 0).
inline void forward_one(const float* th, const Shape& s, const float* x, float* hid, float* z) {
    if (s.h) {
        const float* W1 = th;
        const float* b1 = W1 + s.h * s.d;
        const float* W2 = b1 + s.h;
        const float* b2 = W2 + s.c * s.h;
        for (std::size_t j = 0; j < s.h; ++j) {
            const float a = b1[j] + dot(W1 + j * s.d, x, s.d);
            hid[j] = a > 0.0f ? a : 0.0f;
        }
        for (std::size_t k = 0; k < s.c; ++k) z[k] = b2[k] + dot(W2 + k * s.h, hid, s.h);
    } else {
        const float* W = th;
        const float* b = W + s.c * s.d;
        for (std::size_t k = 0; k < s.c; ++k) z[k] = b[k] + dot(W + k * s.d, x, s.d);
    }
}

// Logits (B x c) of a batch.
inline void forward(const float* th, const Shape& s, const float* X, std::size_t B, float* Z) {
    std::vector<float> hid(s.h ? s.h : 1);
    for (std::size_t i = 0; i < B; ++i) forward_one(th, s, X + i * s.d, hid.data(), Z + i * s.c);
}

// Adds dL/dtheta of one example to g, given dL/dz (c) and the forward's activations.
// dh (h) is scratch.
inline void backward_one(const float* th, const Shape& s, const float* x, const float* hid, const float* dz,
                         float* g, float* dh) {
    if (s.h) {
        const float* W2 = th + s.h * s.d + s.h;
        float* gW1 = g;
        float* gb1 = gW1 + s.h * s.d;
        float* gW2 = gb1 + s.h;
        float* gb2 = gW2 + s.c * s.h;
        for (std::size_t j = 0; j < s.h; ++j) dh[j] = 0.0f;
        for (std::size_t k = 0; k < s.c; ++k) {
            const float dk = dz[k];
            gb2[k] += dk;
            if (dk == 0.0f) continue;
            float* gw = gW2 + k * s.h;
            const float* w = W2 + k * s.h;
            for (std::size_t j = 0; j < s.h; ++j) {
                gw[j] += dk * hid[j];
                dh[j] += dk * w[j];
            }
        }
        for (std::size_t j = 0; j < s.h; ++j) {
            if (hid[j] <= 0.0f) continue;  // ReLU gate
            const float dj = dh[j];
            gb1[j] += dj;
            float* gw = gW1 + j * s.d;
            for (std::size_t m = 0; m < s.d; ++m) gw[m] += dj * x[m];
        }
    } else {
        float* gW = g;
        float* gb = gW + s.c * s.d;
        for (std::size_t k = 0; k < s.c; ++k) {
            const float dk = dz[k];
            gb[k] += dk;
            if (dk == 0.0f) continue;
            float* gw = gW + k * s.d;
            for (std::size_t m = 0; m < s.d; ++m) gw[m] += dk * x[m];
        }
    }
}

// The optional terms of a step; a null pointer switches its term off.
struct Terms {
    const float* ce_w = nullptr;     // B label weights (null: all 1)
    const uint8_t* mask = nullptr;   // B x c: 1 = class takes part in the label softmax (the label always does)
    const float* mse_w = nullptr;    // B logit-matching weights, with
    const float* target = nullptr;   // B x c stored logits
    const float* kd_w = nullptr;     // B distillation weights, with
    const float* teacher = nullptr;  // B x c teacher probabilities at temperature tau
    float tau = 1.0f;
    const float* fisher = nullptr;   // n_params, with
    const float* anchor = nullptr;   // n_params
    float ewc_lambda = 0.0f;
    float lr = 0.01f;
    float momentum = 0.0f;           // > 0 needs a velocity buffer
};

// Softmax of z (c) restricted to classes with allow[k] (null: all) into p; returns log-sum-exp.
inline float softmax_into(const float* z, std::size_t c, const uint8_t* allow, int32_t always, float* p,
                          float scale = 1.0f) {
    float mx = -INFINITY;
    for (std::size_t k = 0; k < c; ++k)
        if (!allow || allow[k] || static_cast<int32_t>(k) == always) mx = std::max(mx, z[k] * scale);
    float sum = 0.0f;
    for (std::size_t k = 0; k < c; ++k) {
        const bool on = !allow || allow[k] || static_cast<int32_t>(k) == always;
        p[k] = on ? std::exp(z[k] * scale - mx) : 0.0f;
        sum += p[k];
    }
    for (std::size_t k = 0; k < c; ++k) p[k] /= sum;
    return mx + std::log(sum);
}

// One fused step on a batch. Writes the pre-update logits (B x c) and per-example
// unmasked cross-entropy (B); returns the pre-update objective without the EWC term.
// `grad` is n_params scratch.
inline double step(float* th, float* velocity, const Shape& s, const float* X, const int32_t* y, std::size_t B,
                   const Terms& t, float* Z, float* loss, float* grad) {
    const std::size_t n = n_params(s);
    std::fill(grad, grad + n, 0.0f);
    if (B == 0) return 0.0;
    std::vector<float> hid(s.h ? s.h : 1), dh(s.h ? s.h : 1), p(s.c), q(s.c), dz(s.c);
    const float inv_b = 1.0f / static_cast<float>(B);
    double objective = 0.0;
    for (std::size_t i = 0; i < B; ++i) {
        const float* x = X + i * s.d;
        float* z = Z + i * s.c;
        const int32_t yi = y[i];
        forward_one(th, s, x, hid.data(), z);
        // unmasked CE for the report
        const float lse_full = softmax_into(z, s.c, nullptr, -1, p.data());
        loss[i] = lse_full - z[yi];
        const float cw = t.ce_w ? t.ce_w[i] : 1.0f;
        const uint8_t* allow = t.mask ? t.mask + i * s.c : nullptr;
        for (std::size_t k = 0; k < s.c; ++k) dz[k] = 0.0f;
        if (cw != 0.0f) {
            const float lse = allow ? softmax_into(z, s.c, allow, yi, p.data()) : lse_full;
            objective += static_cast<double>(cw * (lse - z[yi]));
            for (std::size_t k = 0; k < s.c; ++k) dz[k] += cw * p[k];
            dz[yi] -= cw;
        }
        const float mw = (t.mse_w && t.target) ? t.mse_w[i] : 0.0f;
        if (mw != 0.0f) {
            const float* tg = t.target + i * s.c;
            const float k2 = 2.0f * mw / static_cast<float>(s.c);
            float sq = 0.0f;
            for (std::size_t k = 0; k < s.c; ++k) {
                const float e = z[k] - tg[k];
                sq += e * e;
                dz[k] += k2 * e;
            }
            objective += static_cast<double>(mw * sq / static_cast<float>(s.c));
        }
        const float kw = (t.kd_w && t.teacher) ? t.kd_w[i] : 0.0f;
        if (kw != 0.0f) {
            const float* tp = t.teacher + i * s.c;
            const float inv_tau = 1.0f / t.tau;
            const float lse_t = softmax_into(z, s.c, nullptr, -1, q.data(), inv_tau);
            float kl = 0.0f;
            for (std::size_t k = 0; k < s.c; ++k) {
                if (tp[k] > 0.0f) kl += tp[k] * (std::log(tp[k]) - (z[k] * inv_tau - lse_t));
                dz[k] += kw * t.tau * (q[k] - tp[k]);
            }
            objective += static_cast<double>(kw * t.tau * t.tau * kl);
        }
        for (std::size_t k = 0; k < s.c; ++k) dz[k] *= inv_b;
        backward_one(th, s, x, hid.data(), dz.data(), grad, dh.data());
    }
    if (velocity && t.momentum != 0.0f) {
        for (std::size_t j = 0; j < n; ++j) {
            velocity[j] = t.momentum * velocity[j] + grad[j];
            th[j] -= t.lr * velocity[j];
        }
    } else {
        for (std::size_t j = 0; j < n; ++j) th[j] -= t.lr * grad[j];
    }
    // EWC as a proximal (implicit) step on its quadratic: the exact minimiser of
    // lambda/2 F (theta - anchor)^2 + |theta - theta'|^2 / (2 lr). An explicit step
    // diverges once lr*lambda*F > 2; this one only ever pulls toward the anchor.
    if (t.fisher && t.anchor && t.ewc_lambda != 0.0f)
        for (std::size_t j = 0; j < n; ++j) {
            const float k = t.lr * t.ewc_lambda * t.fisher[j];
            th[j] = (th[j] + k * t.anchor[j]) / (1.0f + k);
        }
    return objective / static_cast<double>(B);
}

// Empirical Fisher diagonal: mean over the batch of the squared per-example gradient
// of log p(y_i | x_i). Per-example squares factor (g_W[k,j] = dz_k * a_j), so no
// per-example gradient vector is ever materialised.
inline void fisher_diag(const float* th, const Shape& s, const float* X, const int32_t* y, std::size_t B,
                        float* out) {
    const std::size_t n = n_params(s);
    std::fill(out, out + n, 0.0f);
    if (B == 0) return;
    std::vector<float> hid(s.h ? s.h : 1), dh(s.h ? s.h : 1), p(s.c), z(s.c), x2(s.d), h2(s.h ? s.h : 1);
    for (std::size_t i = 0; i < B; ++i) {
        const float* x = X + i * s.d;
        forward_one(th, s, x, hid.data(), z.data());
        softmax_into(z.data(), s.c, nullptr, -1, p.data());
        p[y[i]] -= 1.0f;  // dz of -log p(y|x); its sign does not matter once squared
        for (std::size_t m = 0; m < s.d; ++m) x2[m] = x[m] * x[m];
        if (s.h) {
            const float* W2 = th + s.h * s.d + s.h;
            float* fW1 = out;
            float* fb1 = fW1 + s.h * s.d;
            float* fW2 = fb1 + s.h;
            float* fb2 = fW2 + s.c * s.h;
            for (std::size_t j = 0; j < s.h; ++j) {
                h2[j] = hid[j] * hid[j];
                dh[j] = 0.0f;
            }
            for (std::size_t k = 0; k < s.c; ++k) {
                const float dk = p[k], dk2 = dk * dk;
                fb2[k] += dk2;
                for (std::size_t j = 0; j < s.h; ++j) {
                    fW2[k * s.h + j] += dk2 * h2[j];
                    dh[j] += dk * W2[k * s.h + j];
                }
            }
            for (std::size_t j = 0; j < s.h; ++j) {
                if (hid[j] <= 0.0f) continue;
                const float dj2 = dh[j] * dh[j];
                fb1[j] += dj2;
                float* f = fW1 + j * s.d;
                for (std::size_t m = 0; m < s.d; ++m) f[m] += dj2 * x2[m];
            }
        } else {
            float* fW = out;
            float* fb = fW + s.c * s.d;
            for (std::size_t k = 0; k < s.c; ++k) {
                const float dk2 = p[k] * p[k];
                fb[k] += dk2;
                float* f = fW + k * s.d;
                for (std::size_t m = 0; m < s.d; ++m) f[m] += dk2 * x2[m];
            }
        }
    }
    const float inv_b = 1.0f / static_cast<float>(B);
    for (std::size_t j = 0; j < n; ++j) out[j] *= inv_b;
}

}  // namespace online
}  // namespace learnstream
