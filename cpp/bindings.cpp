// The one binding file: every numpy conversion and every Python-facing name of
// workers._kernels lives here. Each core has its own section and bind_* function;
// the kernels themselves are header-only (cpp/<core>.h) and know nothing of Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "common.h"
#include "deep.h"

namespace py = pybind11;
using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace {

// Checks ndim and returns the buffer; raises a clear error otherwise.
py::buffer_info need(const f32& a, int ndim, const char* name) {
    py::buffer_info b = a.request();
    if (b.ndim != ndim)
        throw std::runtime_error(std::string(name) + " must be " + std::to_string(ndim) +
                                 "-d, got " + std::to_string(b.ndim) + "-d");
    return b;
}

void bind_common(py::module_& m) {
    m.def(
        "mulberry32_stream",
        [](uint32_t seed, std::size_t n) {
            py::array_t<float> out(n);
            float* o = out.mutable_data();
            learnstream::Mulberry32 rng(seed);
            for (std::size_t i = 0; i < n; ++i) o[i] = rng.next();
            return out;
        },
        py::arg("seed"), py::arg("n"), "The first n values of mulberry32(seed).");
}

// ---- instant + deep (cpp/instant.h, cpp/deep.h) ----
// A float32 / int64 array a kernel mutates in place: exact dtype, C-contiguous and
// writeable, or an error (a silent forcecast copy would drop the update).
template <typename T>
T* inplace_array(py::array& a, const char* name, const char* dtype) {
    if (!py::isinstance<py::array_t<T, py::array::c_style>>(a))
        throw std::runtime_error(std::string(name) + " must be a C-contiguous " + dtype + " array");
    if (!a.writeable()) throw std::runtime_error(std::string(name) + " must be writeable");
    return static_cast<T*>(a.mutable_data());
}

void bind_instant_deep(py::module_& m) {
    m.def(
        "fisher_ema",
        [](py::array F, const f32& g, double decay) {
            float* f = inplace_array<float>(F, "F", "float32");
            if (F.ndim() != 1) throw std::runtime_error("F must be 1-d");
            py::buffer_info gb = need(g, 1, "g");
            if (gb.shape[0] != F.shape(0))
                throw std::runtime_error("fisher_ema: F and g lengths differ (" + std::to_string(F.shape(0)) +
                                         " vs " + std::to_string(gb.shape[0]) + ")");
            const float* gp = static_cast<const float*>(gb.ptr);
            const auto n = static_cast<std::size_t>(gb.shape[0]);
            const auto d = static_cast<float>(decay);
            const auto w = static_cast<float>(1.0 - decay);
            py::gil_scoped_release nogil;
            learnstream::deep::fisher_ema(f, gp, n, d, w);
        },
        py::arg("F"), py::arg("g"), py::arg("decay") = 0.999,
        "EWC++ Fisher EMA in place: F <- decay*F + (1-decay)*g*g (float32, equal lengths).");
    m.def(
        "ewc_penalty",
        [](const f32& F, const f32& snap, const f32& theta, double lam) {
            py::buffer_info fb = need(F, 1, "F"), sb = need(snap, 1, "snap"), tb = need(theta, 1, "theta");
            auto n = std::min({fb.shape[0], sb.shape[0], tb.shape[0]});
            const float *fp = static_cast<const float*>(fb.ptr), *sp = static_cast<const float*>(sb.ptr),
                        *tp = static_cast<const float*>(tb.ptr);
            py::gil_scoped_release nogil;
            return learnstream::deep::ewc_penalty(fp, sp, tp, static_cast<std::size_t>(n),
                                                  static_cast<float>(lam));
        },
        py::arg("F"), py::arg("snap"), py::arg("theta"), py::arg("lam"),
        "lam * sum_i F_i (theta_i - snap_i)^2 over the shortest of the three lengths.");
}

// ---- temporal + attention (cpp/attention.h) ----
void bind_attention(py::module_& m) { (void)m; }

// ---- router (cpp/router.h) ----
void bind_router(py::module_& m) { (void)m; }

// ---- online learner models (cpp/online.h) ----
void bind_online(py::module_& m) { (void)m; }

}  // namespace

#define STRINGIFY(x) #x
#define MACRO_STRINGIFY(x) STRINGIFY(x)

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "learnstream float32 kernels (C++17)";
    (void)&need;
    bind_common(m);
    bind_instant_deep(m);
    bind_attention(m);
    bind_router(m);
    bind_online(m);
#ifdef VERSION_INFO
    m.attr("__version__") = MACRO_STRINGIFY(VERSION_INFO);
#else
    m.attr("__version__") = "dev";
#endif
}
