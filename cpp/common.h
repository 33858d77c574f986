// Shared numeric helpers for the learnstream kernels: the deterministic PRNG
// the spec fixes for weight init, and small float32 vector helpers.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace learnstream {

// mulberry32 (all u32 arithmetic wraps). Bit-exact with the spec so weights
// can be regenerated from the seed instead of being stored.
struct Mulberry32 {
    uint32_t a;
    explicit Mulberry32(uint32_t seed) : a(seed) {}
    float next() {
        a += 0x6D2B79F5u;
        uint32_t t = a;
        t = (t ^ (t >> 15)) * (t | 1u);
        t ^= t + (t ^ (t >> 7)) * (t | 61u);
        return static_cast<float>(t ^ (t >> 14)) / 4294967296.0f;
    }
};

inline float dot(const float* a, const float* b, std::size_t n) {
    float s = 0.0f;
    for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace learnstream
