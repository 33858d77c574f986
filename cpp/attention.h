// Attention core kernel (spec: cores.md, Attention core): multi-head graph
// attention over a subgraph's nodes, with edge features (relation one-hot,
// recency, weight) projected by We and added to every head's key, a floored
// softmax, a residual and a layer norm. Header-only, float32, no Python, no
// global state. Weights come from one mulberry32(seed) stream, bit-exact with
// the spec, so only the seed (and the learned We) needs storing.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "common.h"

namespace learnstream {
namespace attention {

// ["hnsw-neighbor", "entity", "mention", "episode", "saga"]; the names live in Python.
constexpr std::size_t kRelations = 5;
// one-hot(relation) || recency || weight
constexpr std::size_t kEdgeFeatures = kRelations + 2;
constexpr float kWeekMs = 604800000.0f;
// exp(max(s - max s, -30)): a score 30 below the best still gets a tiny weight, never 0/0
constexpr float kScoreFloor = -30.0f;
constexpr float kLayerNormEps = 1e-5f;
// One row per attended node: [relation code, age_ms = ts - now (clipped to <= 0), weight].
constexpr std::size_t kEdgeCols = 3;
// Relation codes: a vocabulary index, or one of these.
constexpr float kUnknownRelation = -1.0f;  // an edge whose relation is not in the vocabulary
constexpr float kNoEdge = -2.0f;           // no edge reaches the node: its key is not shifted

// Dot product with 8 independent accumulators: the compiler vectorises it
// without -ffast-math (the summation order is fixed, so results are reproducible).
inline float dot_lanes(const float* a, const float* b, std::size_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (std::size_t l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// out[r] = W[r, :] . x for a row-major rows x cols matrix.
inline void matvec(const float* W, std::size_t rows, std::size_t cols, const float* x, float* out) {
    for (std::size_t r = 0; r < rows; ++r) out[r] = dot_lanes(W + r * cols, x, cols);
}

// (x - mean) / sqrt(var_pop + 1e-5); out may alias x.
inline void layer_norm(const float* x, std::size_t n, float* out) {
    float s = 0.0f;
    for (std::size_t i = 0; i < n; ++i) s += x[i];
    const float mean = s / static_cast<float>(n);
    float v = 0.0f;
    for (std::size_t i = 0; i < n; ++i) {
        const float d = x[i] - mean;
        v += d * d;
    }
    const float inv = 1.0f / std::sqrt(v / static_cast<float>(n) + kLayerNormEps);
    for (std::size_t i = 0; i < n; ++i) out[i] = (x[i] - mean) * inv;
}

// Each value (u * 2 - 1) * scale, u the next mulberry32 draw.
inline void fill_uniform(Mulberry32& rng, std::vector<float>& w, std::size_t n, float scale) {
    w.resize(n);
    for (std::size_t i = 0; i < n; ++i) w[i] = (rng.next() * 2.0f - 1.0f) * scale;
}

// The fixed projections of one attention instance. We is learned (nudged), so
// attend() takes it as an argument; `we` here is its initial value.
struct GraphAttention {
    std::size_t dim, heads, head_dim, proj;
    uint32_t seed;
    std::vector<float> wq, wk, wv, we, wo;  // proj x dim (x3), head_dim x 7, dim x proj

    GraphAttention(std::size_t dim_, std::size_t heads_, std::size_t head_dim_, uint32_t seed_)
        : dim(dim_), heads(heads_), head_dim(head_dim_), proj(heads_ * head_dim_), seed(seed_) {
        if (dim == 0 || heads == 0 || head_dim == 0) throw std::invalid_argument("dim/heads/head_dim must be > 0");
        Mulberry32 rng(seed);
        const float s_in = 1.0f / std::sqrt(static_cast<float>(dim));
        const float s_edge = 1.0f / std::sqrt(static_cast<float>(kEdgeFeatures));
        const float s_out = 1.0f / std::sqrt(static_cast<float>(proj));
        // one stream, in this order (the spec fixes it)
        fill_uniform(rng, wq, proj * dim, s_in);
        fill_uniform(rng, wk, proj * dim, s_in);
        fill_uniform(rng, wv, proj * dim, s_in);
        fill_uniform(rng, we, head_dim * kEdgeFeatures, s_edge);
        fill_uniform(rng, wo, dim * proj, s_out);
    }

    // q: dim; x: n x dim node embeddings; edges: n x kEdgeCols; we_: head_dim x 7.
    // Writes out: dim and weights: heads x n (nothing when n == 0: out = layer_norm(q)).
    void attend(const float* q, const float* x, std::size_t n, const float* edges, const float* we_,
                float* out, float* weights) const {
        if (n == 0) {
            layer_norm(q, dim, out);
            return;
        }
        std::vector<float> Q(proj), K(n * proj), V(n * proj), e(head_dim), feat(kEdgeFeatures), s(n);
        std::vector<float> concat(proj, 0.0f), o(dim);
        matvec(wq.data(), proj, dim, q, Q.data());
        for (std::size_t i = 0; i < n; ++i) {
            float* k = K.data() + i * proj;
            matvec(wk.data(), proj, dim, x + i * dim, k);
            matvec(wv.data(), proj, dim, x + i * dim, V.data() + i * proj);
            const float* row = edges + i * kEdgeCols;
            if (row[0] <= kNoEdge) continue;
            std::fill(feat.begin(), feat.end(), 0.0f);
            if (row[0] >= 0.0f && row[0] < static_cast<float>(kRelations)) feat[static_cast<std::size_t>(row[0])] = 1.0f;
            feat[kRelations] = std::exp(std::min(row[1], 0.0f) / kWeekMs);
            feat[kRelations + 1] = row[2];
            matvec(we_, head_dim, kEdgeFeatures, feat.data(), e.data());
            for (std::size_t h = 0; h < heads; ++h)
                for (std::size_t d = 0; d < head_dim; ++d) k[h * head_dim + d] += e[d];
        }
        const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(head_dim));
        for (std::size_t h = 0; h < heads; ++h) {
            const std::size_t off = h * head_dim;
            float mx = -std::numeric_limits<float>::infinity();
            for (std::size_t i = 0; i < n; ++i) {
                s[i] = dot_lanes(Q.data() + off, K.data() + i * proj + off, head_dim) * inv_sqrt;
                mx = std::max(mx, s[i]);
            }
            float sum = 0.0f;
            for (std::size_t i = 0; i < n; ++i) {
                s[i] = std::exp(std::max(s[i] - mx, kScoreFloor));
                sum += s[i];
            }
            const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
            float* w = weights + h * n;
            for (std::size_t i = 0; i < n; ++i) {
                w[i] = s[i] * inv;
                const float* v = V.data() + i * proj + off;
                for (std::size_t d = 0; d < head_dim; ++d) concat[off + d] += w[i] * v[d];
            }
        }
        matvec(wo.data(), dim, proj, concat.data(), o.data());
        for (std::size_t i = 0; i < dim; ++i) o[i] += q[i];
        layer_norm(o.data(), dim, out);
    }
};

}  // namespace attention
}  // namespace learnstream
