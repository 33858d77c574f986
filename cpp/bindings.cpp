// The one binding file: every numpy conversion and every Python-facing name of
// workers._kernels lives here. Each core has its own section and bind_* function;
// the kernels themselves are header-only (cpp/<core>.h) and know nothing of Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "common.h"

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
void bind_instant_deep(py::module_& m) { (void)m; }

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
