// Instant core kernels (spec: cores.md, Instant core): the rank-2 Hebbian
// MicroLoRA adapter, its prioritized replay, the optional EWC pull and the one
// global norm clamp. Header-only, float32, no Python, no global state.
//
// A core's whole state is two flat arrays the caller owns and the kernels
// mutate in place (so Python keeps NumPy views and nothing is copied per event):
//   arena (float32, Layout::replay_x + rows x dim, rows <= REPLAY_CAP; Layout::size
//       when full):  theta = [A (RANK x dim) ; B (RANK x nt)],
//       EWC Fisher F and snapshot (n_params each), scalars (lr, lr_min, ewc_lam),
//       replay scales (REPLAY_CAP), replay rows (last, so a half-empty buffer
//       serializes as a prefix and the caller allocates only the rows in use;
//       the bindings check there is a row for every push);
//   meta (int64, META_SIZE): dims, counters, the replay ring's head/len and the
//       replay target indices.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace learnstream {
namespace instant {

constexpr std::size_t RANK = 2;
constexpr float DECAY = 0.995f;
constexpr float MAX_NORM = 5.0f;
// The clamp rescales to a hair under MAX_NORM (1 - 2^-20): float32 rounding of
// theta*f could otherwise leave the norm a few ulps above the bound it promises.
constexpr double CLAMP_SLACK = 1.0 - 1.0 / 1048576.0;
constexpr std::size_t REPLAY_CAP = 64;
constexpr std::size_t MIN_REPLAY = 4;   // replay starts once the buffer holds this many
constexpr float NEUTRAL_EPS = 1e-4f;    // |q - 0.5| below this is no signal
constexpr uint32_t GOLDEN = 2654435761u;  // Knuth's multiplicative hash constant
constexpr float INV_SQRT2 = 0.70710678f;  // stands in for an exactly-zero B entry

enum Scalar : std::size_t { LR = 0, LR_MIN = 1, EWC_LAM = 2, N_SCALARS = 3 };
enum Meta : std::size_t {
    DIM = 0, NT, FEEDBACK_COUNT, RESETS, REPLAY_HEAD, REPLAY_LEN, HAS_EWC, REPLAY_IDX,
    META_SIZE = REPLAY_IDX + REPLAY_CAP
};

struct Layout {
    std::size_t dim, nt, n_params, theta, ewc_f, ewc_snap, scalars, replay_scale, replay_x, size;
    Layout(std::size_t d, std::size_t t)
        : dim(d), nt(t), n_params(RANK * (d + t)), theta(0), ewc_f(n_params), ewc_snap(2 * n_params),
          scalars(3 * n_params), replay_scale(scalars + N_SCALARS), replay_x(replay_scale + REPLAY_CAP),
          size(replay_x + REPLAY_CAP * d) {}
};

// Dot product with eight independent float32 partial sums: a fixed summation
// order (deterministic) that the compiler can vectorise, unlike one running sum.
inline float dot8(const float* a, const float* b, std::size_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (std::size_t k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// L2 norm, squares summed in double (the clamp's comparison should not hinge on rounding).
inline double l2norm(const float* v, std::size_t n) {
    double acc[4] = {0, 0, 0, 0};
    std::size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (std::size_t k = 0; k < 4; ++k) acc[k] += static_cast<double>(v[i + k]) * v[i + k];
    double s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; i < n; ++i) s += static_cast<double>(v[i]) * v[i];
    return std::sqrt(s);
}

// One global clamp: if ||v|| > max_norm, v *= max_norm/||v||. Returns the norm after.
inline double clamp_norm(float* v, std::size_t n, float max_norm) {
    const double nrm = l2norm(v, n);
    if (!(nrm > static_cast<double>(max_norm))) return nrm;
    const auto f = static_cast<float>(static_cast<double>(max_norm) * CLAMP_SLACK / nrm);
    for (std::size_t i = 0; i < n; ++i) v[i] *= f;
    return nrm * static_cast<double>(f);
}

// EWC pull toward the snapshot: theta_i -= coef * F_i * (theta_i - snap_i), coef = lr*lambda.
inline void ewc_pull(float* theta, const float* F, const float* snap, std::size_t n, float coef) {
    for (std::size_t i = 0; i < n; ++i) theta[i] -= coef * F[i] * (theta[i] - snap[i]);
}

// The spec's weighted_pick over n scales in logical order, stored in a ring of
// `cap` slots starting at `head`. Returns the logical index or -1 (n <= 1).
inline int64_t weighted_pick(const float* scales, std::size_t cap, std::size_t head, std::size_t n,
                             uint32_t seed, std::size_t ex) {
    if (n <= 1) return -1;
    seed = seed * GOLDEN + 1u;
    const float r = static_cast<float>(seed) / 4294967296.0f;
    auto at = [&](std::size_t i) { return std::fabs(scales[(head + i) % cap]); };
    float total = 0.0f;
    for (std::size_t i = 0; i < n; ++i)
        if (i != ex) total += at(i);
    if (!(total > 0.0f)) {
        std::size_t i = seed % n;
        if (i == ex) i = (i + 1) % n;
        return static_cast<int64_t>(i);
    }
    const float thr = r * total;
    float run = 0.0f;
    int64_t last = -1;
    for (std::size_t i = 0; i < n; ++i) {
        if (i == ex) continue;
        run += at(i);
        last = static_cast<int64_t>(i);
        if (run > thr) return last;
    }
    return last;
}

// Pointers into one core's (arena, meta); the caller has checked the sizes.
struct State {
    Layout L;
    float* f;
    int64_t* m;
    State(float* arena, int64_t* meta)
        : L(static_cast<std::size_t>(meta[DIM]), static_cast<std::size_t>(meta[NT])), f(arena), m(meta) {}
    float* A() const { return f + L.theta; }
    float* B() const { return f + L.theta + RANK * L.dim; }
    float& lr() const { return f[L.scalars + LR]; }
    const float* replay_row(std::size_t phys) const { return f + L.replay_x + phys * L.dim; }
};

// hebbian_update(x, t, s): eta = lr*s; per rank row r: b = B[r,t] (1/sqrt2 if
// exactly 0), A_r += eta*b*x; then B[r,t] += eta*(A_r . x) with the updated A.
// EWC pull with the pre-decay lr, lr decay with its floor, one global clamp.
// Returns ||theta|| after the clamp.
inline double hebbian_update(const State& s, const float* x, std::size_t t, float scale) {
    const std::size_t dim = s.L.dim, nt = s.L.nt;
    float* A = s.A();
    float* B = s.B();
    float& lr = s.lr();
    const float eta = lr * scale;
    for (std::size_t r = 0; r < RANK; ++r) {
        float b = B[r * nt + t];
        if (b == 0.0f) b = INV_SQRT2;
        const float c = eta * b;
        float* Ar = A + r * dim;
        for (std::size_t j = 0; j < dim; ++j) Ar[j] += c * x[j];
    }
    for (std::size_t r = 0; r < RANK; ++r) B[r * nt + t] += eta * dot8(A + r * dim, x, dim);
    if (s.m[HAS_EWC])
        ewc_pull(s.f + s.L.theta, s.f + s.L.ewc_f, s.f + s.L.ewc_snap, s.L.n_params,
                 lr * s.f[s.L.scalars + EWC_LAM]);
    const float decayed = lr * DECAY, floor_ = s.f[s.L.scalars + LR_MIN];
    lr = decayed > floor_ ? decayed : floor_;
    return clamp_norm(s.f + s.L.theta, s.L.n_params, MAX_NORM);
}

// The ring slot the next push fills, advancing the ring (the oldest entry goes once it is full).
inline std::size_t ring_push(int64_t& head, int64_t& len) {
    std::size_t phys;
    if (static_cast<std::size_t>(len) < REPLAY_CAP) {
        phys = (static_cast<std::size_t>(head) + static_cast<std::size_t>(len)) % REPLAY_CAP;
        ++len;
    } else {
        phys = static_cast<std::size_t>(head);
        head = static_cast<int64_t>((phys + 1) % REPLAY_CAP);
    }
    return phys;
}

// Push (x, t, scale), dropping the oldest beyond REPLAY_CAP.
inline void replay_push(const State& s, const float* x, std::size_t t, float scale) {
    const std::size_t phys = ring_push(s.m[REPLAY_HEAD], s.m[REPLAY_LEN]);
    float* row = s.f + s.L.replay_x + phys * s.L.dim;
    for (std::size_t j = 0; j < s.L.dim; ++j) row[j] = x[j];
    s.f[s.L.replay_scale + phys] = scale;
    s.m[REPLAY_IDX + phys] = static_cast<int64_t>(t);
}

// feedback(x, t, q, now_ms) after validation: count it; neutral (|q-0.5| < 1e-4)
// stops there; else a Hebbian step with scale 2(q-0.5), a replay push, and with
// >= MIN_REPLAY entries one replayed step at half its stored scale.
// Returns true when the adapter learned.
inline bool feedback(const State& s, const float* x, std::size_t t, float q, int64_t now_ms) {
    s.m[FEEDBACK_COUNT] += 1;
    const float c = q - 0.5f;
    if (std::fabs(c) < NEUTRAL_EPS) return false;
    const float scale = 2.0f * c;
    hebbian_update(s, x, t, scale);
    replay_push(s, x, t, scale);
    const auto n = static_cast<std::size_t>(s.m[REPLAY_LEN]);
    if (n >= MIN_REPLAY) {
        const uint32_t seed = static_cast<uint32_t>(now_ms) * GOLDEN;
        const auto head = static_cast<std::size_t>(s.m[REPLAY_HEAD]);
        const int64_t pick = weighted_pick(s.f + s.L.replay_scale, REPLAY_CAP, head, n, seed, n - 1);
        if (pick >= 0) {
            const std::size_t phys = (head + static_cast<std::size_t>(pick)) % REPLAY_CAP;
            hebbian_update(s, s.replay_row(phys), static_cast<std::size_t>(s.m[REPLAY_IDX + phys]),
                           0.5f * s.f[s.L.replay_scale + phys]);
        }
    }
    return true;
}

// The replay rows that feedback() over these n events (qualities q, times now_ms) reads before it
// overwrites them: their ring slots, each once, in the order first read. Only the ring (head, len) and
// the REPLAY_CAP scales are needed, not a row: the same pushes and weighted_pick as feedback(), so a
// caller can keep the rows out of memory and load just these. `out` has room for n; returns the count.
inline std::size_t replay_reads(const float* scales_in, int64_t head, int64_t len, const float* q,
                                const int64_t* now_ms, std::size_t n, int64_t* out) {
    float scales[REPLAY_CAP];
    bool written[REPLAY_CAP] = {}, listed[REPLAY_CAP] = {};
    for (std::size_t i = 0; i < REPLAY_CAP; ++i) scales[i] = scales_in[i];
    std::size_t k = 0;
    for (std::size_t e = 0; e < n; ++e) {
        const float c = q[e] - 0.5f;
        if (std::fabs(c) < NEUTRAL_EPS) continue;
        const std::size_t pushed = ring_push(head, len);
        scales[pushed] = 2.0f * c;
        written[pushed] = true;
        const auto m = static_cast<std::size_t>(len);
        if (m < MIN_REPLAY) continue;
        const int64_t pick = weighted_pick(scales, REPLAY_CAP, static_cast<std::size_t>(head), m,
                                           static_cast<uint32_t>(now_ms[e]) * GOLDEN, m - 1);
        if (pick < 0) continue;
        const std::size_t phys = (static_cast<std::size_t>(head) + static_cast<std::size_t>(pick)) % REPLAY_CAP;
        if (!written[phys] && !listed[phys]) {
            listed[phys] = true;
            out[k++] = static_cast<int64_t>(phys);
        }
    }
    return k;
}

// Adapter forward for n rows: p_r = A_r . x; logits_k = sum_r B[r,k] p_r.
inline void adapter_forward(const float* arena, const Layout& L, const float* X, std::size_t n,
                            float* out) {
    const float* A = arena + L.theta;
    const float* B = A + RANK * L.dim;
    for (std::size_t i = 0; i < n; ++i) {
        const float* x = X + i * L.dim;
        float p[RANK];
        for (std::size_t r = 0; r < RANK; ++r) p[r] = dot8(A + r * L.dim, x, L.dim);
        float* o = out + i * L.nt;
        for (std::size_t k = 0; k < L.nt; ++k) {
            float acc = 0.0f;
            for (std::size_t r = 0; r < RANK; ++r) acc += B[r * L.nt + k] * p[r];
            o[k] = acc;
        }
    }
}

}  // namespace instant
}  // namespace learnstream
