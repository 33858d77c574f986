// The one binding file: every numpy conversion and every Python-facing name of
// workers._kernels lives here. Each core has its own section and bind_* function;
// the kernels themselves are header-only (cpp/<core>.h) and know nothing of Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include "common.h"
#include "attention.h"
#include "router.h"
#include "deep.h"
#include "instant.h"
#include "online.h"

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

// A read-only float32 argument of a hot single-query kernel. An array that already is
// C-contiguous float32 is read in place (no numpy conversion, no buffer request: those were
// about a microsecond of a route); anything else is converted as an f32 argument would be,
// the copy kept alive in `keep`.
struct F32View {
    const float* ptr;
    std::size_t shape[2];
};

F32View f32_view(const py::object& o, f32& keep, int ndim, const char* name) {
    const py::array* a = nullptr;
    if (py::isinstance<py::array_t<float, py::array::c_style>>(o)) {
        a = reinterpret_cast<const py::array*>(&o);
    } else {
        keep = o.cast<f32>();
        a = &keep;
    }
    if (a->ndim() != ndim)
        throw std::runtime_error(std::string(name) + " must be " + std::to_string(ndim) + "-d, got " +
                                 std::to_string(a->ndim()) + "-d");
    F32View v{static_cast<const float*>(a->data()), {static_cast<std::size_t>(a->shape(0)), 0}};
    if (ndim == 2) v.shape[1] = static_cast<std::size_t>(a->shape(1));
    return v;
}

// Sizes a caller may ask for, checked before any layout arithmetic or allocation: any one
// dimension at most 2^20 (so a product of three cannot overflow size_t), any one buffer at most
// 2^28 floats (1 GiB). std::invalid_argument reaches Python as ValueError.
constexpr std::size_t kMaxDim = std::size_t{1} << 20;
constexpr std::size_t kMaxFloats = std::size_t{1} << 28;

std::size_t checked_dim(std::size_t n, const char* name, std::size_t lo = 1) {
    if (n < lo || n > kMaxDim)
        throw std::invalid_argument(std::string(name) + " must be in [" + std::to_string(lo) + ", " +
                                    std::to_string(kMaxDim) + "], got " + std::to_string(n));
    return n;
}

std::size_t checked_floats(std::size_t n, const char* what) {
    if (n > kMaxFloats)
        throw std::invalid_argument(std::string(what) + " would hold " + std::to_string(n) + " floats, more than " +
                                    std::to_string(kMaxFloats));
    return n;
}

// A JSON array of numbers as parsed: each item of an exact list, in order, to on_float(i, value) if it is an
// exact float, to on_int(i, item) if it is an exact int (a bool is a subclass of int, so it is neither);
// either returns false to stop. False for anything else (a subclass such as np.float64, a str, not a
// list) or a stop. Reads Python objects, so the caller keeps the GIL.
template <typename OnFloat, typename OnInt>
bool each_number(PyObject* list, OnFloat on_float, OnInt on_int) {
    if (!PyList_CheckExact(list)) return false;
    const Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* e = PyList_GET_ITEM(list, i);
        if (PyFloat_CheckExact(e)) {
            if (!on_float(i, PyFloat_AS_DOUBLE(e))) return false;
        } else if (!PyLong_CheckExact(e) || !on_int(i, e)) {
            return false;
        }
    }
    return true;
}

// An exact int's value as a long long, with overflow -1 / 1 when it lies below / above that range (1 too
// on an error, not expected of an exact int); never leaves a Python error set.
long long long_long_of(PyObject* e, int* overflow) {
    const long long v = PyLong_AsLongLongAndOverflow(e, overflow);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        *overflow = 1;
    }
    return v;
}

// An exact list as a new array of T filled by fill(list, data) (each_number inside), or None when it is not
// an exact list or fill says no: the caller's general path decides then.
template <typename T, typename Fill>
py::object numbers_array(py::handle values, Fill fill) {
    if (!PyList_CheckExact(values.ptr())) return py::none();
    const Py_ssize_t n = PyList_GET_SIZE(values.ptr());
    checked_floats(static_cast<std::size_t>(n), "the array");
    py::array_t<T> out(n);
    if (!fill(values.ptr(), out.mutable_data())) return py::none();
    return std::move(out);
}

void bind_common(py::module_& m) {
    m.def(
        "mulberry32_stream",
        [](uint32_t seed, std::size_t n) {
            py::array_t<float> out(checked_floats(n, "the stream"));
            float* o = out.mutable_data();
            learnstream::Mulberry32 rng(seed);
            for (std::size_t i = 0; i < n; ++i) o[i] = rng.next();
            return out;
        },
        py::arg("seed"), py::arg("n"), "The first n values of mulberry32(seed).");
    m.def(
        "float32_from_numbers",
        [](py::handle values) -> py::object {
            // A JSON array of numbers as parsed (a list of exact floats and ints) converted as
            // np.asarray(values, float32) converts it: each to a double, then rounded to float32; a
            // finite double beyond float32's range, or an int beyond a double's, is an infinity of
            // its sign (for the caller's finiteness check). Anything else (a bool, a str, a subclass
            // such as np.float64, not a list): None, and the caller's general path decides. ~0.6 us
            // for 384 values against ~9 for the checks and conversion in Python.
            return numbers_array<float>(values, [](PyObject* list, float* o) {
            constexpr float kMax = std::numeric_limits<float>::max();
            constexpr float kInf = std::numeric_limits<float>::infinity();
            // FLT_MAX plus half its ulp (2^128 - 2^103): from here on IEEE rounding gives an infinity
            constexpr double kMid = 3.4028235677973366e38;
            auto store = [&](Py_ssize_t i, double v) {
                // rounded as the hardware (and NumPy) rounds; spelled out past float32's range, where
                // the cast itself would be undefined
                if (v >= kMid) o[i] = kInf;
                else if (v <= -kMid) o[i] = -kInf;
                else if (v > static_cast<double>(kMax)) o[i] = kMax;
                else if (v < -static_cast<double>(kMax)) o[i] = -kMax;
                else o[i] = static_cast<float>(v);
                return true;
            };
            auto store_int = [&](Py_ssize_t i, PyObject* e) {
                const double v = PyLong_AsDouble(e);
                if (v == -1.0 && PyErr_Occurred()) {  // beyond a double: an infinity of its sign
                    PyErr_Clear();
                    int overflow = 0;
                    (void)long_long_of(e, &overflow);
                    o[i] = overflow < 0 ? -kInf : kInf;
                    return true;
                }
                return store(i, v);
            };
            return each_number(list, store, store_int);
            });
        },
        py::arg("values"),
        "A list of exact floats and ints as float32 (np.asarray(values, float32)), or None for anything else.");
    m.def(
        "json_number_list",
        [](py::handle values) -> bool {
            // True for a list orjson writes without an error and that needs no other look: exact floats
            // (any: orjson writes a NaN or an infinity as null) and exact ints within its 64-bit range,
            // -2^63 .. 2^64 - 1. False for anything else, including a bool or a subclass. Lets a caller
            // skip writing out a long array of numbers only to learn that it can be written.
            return each_number(
                values.ptr(), [](Py_ssize_t, double) { return true; },
                [](Py_ssize_t, PyObject* e) {
                    int overflow = 0;
                    (void)long_long_of(e, &overflow);
                    if (overflow == 0) return true;
                    if (overflow < 0) return false;
                    (void)PyLong_AsUnsignedLongLong(e);
                    if (!PyErr_Occurred()) return true;
                    PyErr_Clear();  // beyond 2^64 - 1
                    return false;
                });
        },
        py::arg("values"),
        "True for a list of exact floats and of ints in -2**63 .. 2**64 - 1 (what orjson writes as numbers).");
    m.def(
        "float64_from_numbers",
        [](py::handle values) -> py::object {
            // A list of exact floats and ints as the doubles they are, when every int is one exactly
            // (|v| <= 2^53): 1 and 1.0, the same JSON number, give the same double. None for anything
            // else (a larger int, a bool, a subclass, not a list): the caller compares those itself.
            return numbers_array<double>(values, [](PyObject* list, double* o) {
            constexpr long long kExact = 1LL << 53;
            return each_number(
                list, [&](Py_ssize_t i, double v) { o[i] = v; return true; },
                [&](Py_ssize_t i, PyObject* e) {
                    int overflow = 0;
                    const long long v = long_long_of(e, &overflow);
                    if (overflow != 0 || v > kExact || v < -kExact) return false;
                    o[i] = static_cast<double>(v);
                    return true;
                });
            });
        },
        py::arg("values"),
        "A list of exact floats and of ints within 2**53 as float64, or None for anything else.");
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

using i64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Releases the GIL for the duration of a kernel, but only when it has work enough to gain from it
// (``work``: about the floats it touches). Taking the GIL back waits for whichever thread took it, up
// to the interpreter's switch interval (5 ms), and in a worker faust's consumer thread always wants
// it: a one-event feedback kernel (~2 us of work) cost ~75 us a call in the worker when it let go.
class NoGil {
public:
    static constexpr std::size_t kMinWork = std::size_t{1} << 18;  // ~0.1 ms of float work
    explicit NoGil(std::size_t work) {
        if (work >= kMinWork) release_.emplace();
    }

private:
    std::optional<py::gil_scoped_release> release_;
};


// The layout an instant core's (arena, meta) must have, or an error. The arena holds the replay
// rows it has room for (0..REPLAY_CAP, at least the buffer's length): Python grows it as the buffer
// fills, so a young session's decoded core is ~10 kB, not ~100 kB (``InstantState``).
// ``rows_in_arena`` false: a call that reads no replay row (the rows may be absent, left in the store).
learnstream::instant::Layout checked_layout(const py::array& arena, const py::array& meta, const int64_t* mm,
                                            std::size_t* rows_out = nullptr, bool rows_in_arena = true) {
    namespace ik = learnstream::instant;
    if (meta.ndim() != 1 || static_cast<std::size_t>(meta.shape(0)) != ik::META_SIZE)
        throw std::runtime_error("meta must be int64[" + std::to_string(ik::META_SIZE) + "]");
    if (mm[ik::DIM] <= 0 || mm[ik::NT] <= 0) throw std::runtime_error("meta: dim and nt must be > 0");
    checked_dim(static_cast<std::size_t>(mm[ik::DIM]), "meta: dim");
    checked_dim(static_cast<std::size_t>(mm[ik::NT]), "meta: nt");
    const ik::Layout L(static_cast<std::size_t>(mm[ik::DIM]), static_cast<std::size_t>(mm[ik::NT]));
    const auto size = static_cast<std::size_t>(arena.ndim() == 1 ? arena.shape(0) : 0);
    if (arena.ndim() != 1 || size < L.replay_x || (size - L.replay_x) % L.dim != 0 || size > L.size)
        throw std::runtime_error("arena must be float32[" + std::to_string(L.replay_x) + " + rows * " +
                                 std::to_string(L.dim) + "], rows 0.." + std::to_string(ik::REPLAY_CAP) +
                                 ", for dim " + std::to_string(L.dim) + ", nt " + std::to_string(L.nt));
    const std::size_t rows = (size - L.replay_x) / L.dim;
    const int64_t len = mm[ik::REPLAY_LEN];
    if (len < 0 || static_cast<std::size_t>(len) > (rows_in_arena ? rows : ik::REPLAY_CAP))
        throw std::runtime_error("meta: replay length " + std::to_string(len) + " exceeds " +
                                 (rows_in_arena ? "the arena's " + std::to_string(rows) + " replay rows"
                                                : "the replay capacity " + std::to_string(ik::REPLAY_CAP)));
    if (rows_out) *rows_out = rows;
    return L;
}

// A mutable instant core, its sizes and replay ring checked (a corrupt ring would write out of bounds);
// ``pushes``: replay pushes the call may make, each needing a row until the ring is full.
learnstream::instant::State instant_state(py::array& arena, py::array& meta, std::size_t pushes = 0) {
    namespace ik = learnstream::instant;
    float* f = inplace_array<float>(arena, "arena", "float32");
    int64_t* mm = inplace_array<int64_t>(meta, "meta", "int64");
    std::size_t rows = 0;
    checked_layout(arena, meta, mm, &rows);
    const int64_t head = mm[ik::REPLAY_HEAD], len = mm[ik::REPLAY_LEN];
    const auto cap = static_cast<int64_t>(ik::REPLAY_CAP);
    if (head < 0 || head >= cap || len < 0 || len > cap || (len < cap && head != 0))
        throw std::runtime_error("meta: replay ring head/len out of range");
    if (rows < std::min(static_cast<std::size_t>(len) + pushes, ik::REPLAY_CAP))
        throw std::runtime_error("arena: " + std::to_string(rows) + " replay rows, " +
                                 std::to_string(std::min(static_cast<std::size_t>(len) + pushes, ik::REPLAY_CAP)) +
                                 " needed for this call");
    for (int64_t i = 0; i < len; ++i) {
        const int64_t t = mm[ik::REPLAY_IDX + static_cast<std::size_t>(i)];
        if (t < 0 || t >= mm[ik::NT]) throw std::runtime_error("meta: replay target index out of range");
    }
    return ik::State(f, mm);
}

const float* row_input(const f32& x, std::size_t dim) {
    py::buffer_info b = need(x, 1, "x");
    if (static_cast<std::size_t>(b.shape[0]) != dim)
        throw std::runtime_error("x must have length dim = " + std::to_string(dim));
    return static_cast<const float*>(b.ptr);
}

std::size_t checked_target(int64_t t, std::size_t nt) {
    if (t < 0 || static_cast<std::size_t>(t) >= nt)
        throw std::runtime_error("target index " + std::to_string(t) + " out of range [0, " +
                                 std::to_string(nt) + ")");
    return static_cast<std::size_t>(t);
}

std::size_t batch_rows(const f32& X, std::size_t dim) {
    py::buffer_info b = need(X, 2, "X");
    if (static_cast<std::size_t>(b.shape[1]) != dim)
        throw std::runtime_error("X must have dim = " + std::to_string(dim) + " columns");
    return static_cast<std::size_t>(b.shape[0]);
}

const int64_t* batch_targets(const i64& targets, std::size_t n, std::size_t nt) {
    py::buffer_info b = targets.request();
    if (b.ndim != 1 || static_cast<std::size_t>(b.shape[0]) != n)
        throw std::runtime_error("targets must be 1-d with one entry per row");
    const auto* p = static_cast<const int64_t*>(b.ptr);
    for (std::size_t i = 0; i < n; ++i) checked_target(p[i], nt);
    return p;
}

const float* batch_column(const f32& v, std::size_t n, const char* name) {
    py::buffer_info b = need(v, 1, name);
    if (static_cast<std::size_t>(b.shape[0]) != n)
        throw std::runtime_error(std::string(name) + " must have one entry per row");
    return static_cast<const float*>(b.ptr);
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
            const NoGil nogil(n);
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
            const NoGil nogil(static_cast<std::size_t>(n));
            return learnstream::deep::ewc_penalty(fp, sp, tp, static_cast<std::size_t>(n),
                                                  static_cast<float>(lam));
        },
        py::arg("F"), py::arg("snap"), py::arg("theta"), py::arg("lam"),
        "lam * sum_i F_i (theta_i - snap_i)^2 over the shortest of the three lengths.");
    m.def(
        "loss_window_push_many",
        [](py::array ring, py::array counters, const py::array_t<double, py::array::c_style | py::array::forcecast>& losses,
           double min_std, double z_thresh, std::size_t min_prior) {
            float* r = inplace_array<float>(ring, "ring", "float32");
            int64_t* c = inplace_array<int64_t>(counters, "counters", "int64");
            if (ring.ndim() != 1 || ring.shape(0) < 1) throw std::runtime_error("ring must be 1-d, non-empty");
            if (counters.ndim() != 1 || counters.shape(0) != 2)
                throw std::runtime_error("counters must be int64[2] = [len, boundaries]");
            if (losses.ndim() != 1) throw std::runtime_error("losses must be 1-d");
            const auto cap = static_cast<std::size_t>(ring.shape(0));
            if (c[0] < 0 || static_cast<std::size_t>(c[0]) > cap)
                throw std::runtime_error("counters[0] (window length) out of range");
            const auto n = static_cast<std::size_t>(losses.shape(0));
            py::array_t<double> out({n, static_cast<std::size_t>(9)});
            double* o = out.mutable_data();
            const double* lp = losses.data();
            {
                const NoGil nogil(n * 16);
                for (std::size_t i = 0; i < n; ++i, o += 9) {
                    const auto w = learnstream::deep::loss_window_push(
                        r, cap, c[0], c[1], static_cast<float>(lp[i]), static_cast<float>(min_std),
                        static_cast<float>(z_thresh), min_prior);
                    o[0] = w.fired; o[1] = w.stored; o[2] = w.z; o[3] = w.prior_mean; o[4] = w.prior_std;
                    o[5] = w.window_mean; o[6] = w.window_std;
                    o[7] = static_cast<double>(c[0]); o[8] = static_cast<double>(c[1]);
                }
            }
            return out;
        },
        py::arg("ring"), py::arg("counters"), py::arg("losses"), py::arg("min_std") = 1e-4,
        py::arg("z_thresh") = 2.5, py::arg("min_prior") = 3,
        "loss_window_push for each loss in order, GIL released; row i (float64[9]): fired, stored, z, "
        "prior mean, prior std, window mean, window std, window length, boundaries after loss i.");

    namespace ik = learnstream::instant;
    py::dict consts;
    consts["rank"] = ik::RANK;
    consts["decay"] = ik::DECAY;
    consts["max_norm"] = ik::MAX_NORM;
    consts["clamp_slack"] = ik::CLAMP_SLACK;
    consts["replay_cap"] = ik::REPLAY_CAP;
    consts["min_replay"] = ik::MIN_REPLAY;
    consts["neutral_eps"] = ik::NEUTRAL_EPS;
    consts["golden"] = ik::GOLDEN;
    consts["meta_size"] = static_cast<std::size_t>(ik::META_SIZE);
    py::dict meta_idx;
    meta_idx["dim"] = static_cast<std::size_t>(ik::DIM);
    meta_idx["nt"] = static_cast<std::size_t>(ik::NT);
    meta_idx["feedback_count"] = static_cast<std::size_t>(ik::FEEDBACK_COUNT);
    meta_idx["resets"] = static_cast<std::size_t>(ik::RESETS);
    meta_idx["replay_head"] = static_cast<std::size_t>(ik::REPLAY_HEAD);
    meta_idx["replay_len"] = static_cast<std::size_t>(ik::REPLAY_LEN);
    meta_idx["has_ewc"] = static_cast<std::size_t>(ik::HAS_EWC);
    meta_idx["replay_idx"] = static_cast<std::size_t>(ik::REPLAY_IDX);
    consts["meta"] = meta_idx;
    py::dict scalar_idx;
    scalar_idx["lr"] = static_cast<std::size_t>(ik::LR);
    scalar_idx["lr_min"] = static_cast<std::size_t>(ik::LR_MIN);
    scalar_idx["ewc_lam"] = static_cast<std::size_t>(ik::EWC_LAM);
    consts["scalars"] = scalar_idx;
    m.attr("INSTANT_CONSTANTS") = consts;

    m.def(
        "instant_layout",
        [](std::size_t dim, std::size_t nt) {
            const ik::Layout L(checked_dim(dim, "dim"), checked_dim(nt, "nt"));
            checked_floats(L.size, "the instant arena");
            py::dict d;
            d["n_params"] = L.n_params;
            d["theta"] = L.theta;
            d["ewc_f"] = L.ewc_f;
            d["ewc_snap"] = L.ewc_snap;
            d["scalars"] = L.scalars;
            d["replay_scale"] = L.replay_scale;
            d["replay_x"] = L.replay_x;
            d["size"] = L.size;
            return d;
        },
        py::arg("dim"), py::arg("nt"), "Offsets (in floats) of each field in an instant core's arena.");

    m.def(
        "instant_hebbian",
        [](py::array arena, py::array meta, const f32& x, int64_t target, double scale) {
            const ik::State s = instant_state(arena, meta);
            const float* xp = row_input(x, s.L.dim);
            const std::size_t t = checked_target(target, s.L.nt);
            return ik::hebbian_update(s, xp, t, static_cast<float>(scale));
        },
        py::arg("arena"), py::arg("meta"), py::arg("x"), py::arg("target"), py::arg("scale"),
        "One hebbian_update(x, target, scale) in place; returns ||theta|| after the clamp.");
    m.def(
        "instant_hebbian_batch",
        [](py::array arena, py::array meta, const f32& X, const i64& targets, const f32& scales) {
            const ik::State s = instant_state(arena, meta);
            const std::size_t n = batch_rows(X, s.L.dim);
            const int64_t* tp = batch_targets(targets, n, s.L.nt);
            const float* sp = batch_column(scales, n, "scales");
            const float* xp = X.data();
            double nrm;
            {
                const NoGil nogil(n * s.L.dim * 4);
                for (std::size_t i = 0; i < n; ++i)
                    ik::hebbian_update(s, xp + i * s.L.dim, static_cast<std::size_t>(tp[i]), sp[i]);
                nrm = ik::l2norm(s.f + s.L.theta, s.L.n_params);
            }
            return nrm;
        },
        py::arg("arena"), py::arg("meta"), py::arg("X"), py::arg("targets"), py::arg("scales"),
        "hebbian_update for each row in order (GIL released); returns ||theta||.");
    m.def(
        "instant_feedback",
        [](py::array arena, py::array meta, const f32& x, int64_t target, double quality, int64_t now_ms) {
            const ik::State s = instant_state(arena, meta, 1);
            const float* xp = row_input(x, s.L.dim);
            const std::size_t t = checked_target(target, s.L.nt);
            const bool learned = ik::feedback(s, xp, t, static_cast<float>(quality), now_ms);
            return py::make_tuple(learned, ik::l2norm(s.f + s.L.theta, s.L.n_params));
        },
        py::arg("arena"), py::arg("meta"), py::arg("x"), py::arg("target"), py::arg("quality"),
        py::arg("now_ms") = 0,
        "One validated feedback event in place (Hebbian step, replay push and pick); "
        "returns (learned, ||theta||).");
    m.def(
        "instant_feedback_batch",
        [](py::array arena, py::array meta, const f32& X, const i64& targets, const f32& qualities,
           const i64& now_ms, std::optional<py::array> trace) {
            const ik::State s = instant_state(arena, meta, X.ndim() == 2 ? static_cast<std::size_t>(X.shape(0)) : 0);
            const std::size_t n = batch_rows(X, s.L.dim);
            const int64_t* tp = batch_targets(targets, n, s.L.nt);
            const float* qp = batch_column(qualities, n, "qualities");
            py::buffer_info nb = now_ms.request();
            if (nb.ndim != 1 || static_cast<std::size_t>(nb.shape[0]) != n)
                throw std::runtime_error("now_ms must be 1-d with one entry per row");
            const auto* np_ = static_cast<const int64_t*>(nb.ptr);
            double* tr = nullptr;  // row i: (||theta||, lr) after event i
            if (trace) {
                tr = inplace_array<double>(*trace, "trace", "float64");
                if (trace->ndim() != 2 || static_cast<std::size_t>(trace->shape(0)) != n || trace->shape(1) != 2)
                    throw std::runtime_error("trace must be float64[n, 2]");
            }
            const float* xp = X.data();
            std::size_t learned = 0;
            double nrm;
            {
                const NoGil nogil(n * s.L.dim * 8);
                for (std::size_t i = 0; i < n; ++i) {
                    learned += ik::feedback(s, xp + i * s.L.dim, static_cast<std::size_t>(tp[i]), qp[i], np_[i]);
                    if (tr) {
                        tr[2 * i] = ik::l2norm(s.f + s.L.theta, s.L.n_params);
                        tr[2 * i + 1] = s.lr();
                    }
                }
                nrm = ik::l2norm(s.f + s.L.theta, s.L.n_params);
            }
            return py::make_tuple(learned, nrm);
        },
        py::arg("arena"), py::arg("meta"), py::arg("X"), py::arg("targets"), py::arg("qualities"),
        py::arg("now_ms"), py::arg("trace") = py::none(),
        "A sequence of validated feedback events, exactly as one instant_feedback per row, "
        "GIL released; returns (events that learned, ||theta||). With ``trace`` (float64[n, 2]) "
        "it also writes (||theta||, lr) after each row.");
    m.def(
        "instant_replay_reads",
        [](const f32& arena, py::array meta, const f32& qualities, const i64& now_ms) {
            // Only the ring and the scales are read: the arena may hold no replay rows at all.
            int64_t* mm = inplace_array<int64_t>(meta, "meta", "int64");
            const ik::Layout L = checked_layout(arena, meta, mm, nullptr, false);
            const int64_t head = mm[ik::REPLAY_HEAD], len = mm[ik::REPLAY_LEN];
            const auto cap = static_cast<int64_t>(ik::REPLAY_CAP);
            if (head < 0 || head >= cap || len < 0 || len > cap || (len < cap && head != 0))
                throw std::runtime_error("meta: replay ring head/len out of range");
            py::buffer_info qb = need(qualities, 1, "qualities");
            const auto n = static_cast<std::size_t>(qb.shape[0]);
            py::buffer_info nb = now_ms.request();
            if (nb.ndim != 1 || static_cast<std::size_t>(nb.shape[0]) != n)
                throw std::runtime_error("now_ms must be 1-d with one entry per quality");
            py::array_t<int64_t> out(static_cast<py::ssize_t>(n));
            const std::size_t k = ik::replay_reads(arena.data() + L.replay_scale, head, len,
                                                   static_cast<const float*>(qb.ptr),
                                                   static_cast<const int64_t*>(nb.ptr), n, out.mutable_data());
            out.resize({static_cast<py::ssize_t>(k)});
            return out;
        },
        py::arg("arena"), py::arg("meta"), py::arg("qualities"), py::arg("now_ms"),
        "The replay slots instant_feedback_batch over these events would read before writing them, "
        "each once, in first-read order (from the ring and scales only; the rows may be absent).");
    m.def(
        "instant_norm",
        [](const f32& arena, py::array meta) {
            int64_t* mm = inplace_array<int64_t>(meta, "meta", "int64");
            const ik::Layout L = checked_layout(arena, meta, mm, nullptr, false);
            return ik::l2norm(arena.data() + L.theta, L.n_params);
        },
        py::arg("arena"), py::arg("meta"), "||theta|| of an instant core, squares summed in double.");
    m.def(
        "adapter_forward",
        [](const f32& arena, py::array meta, const f32& X) {
            int64_t* mm = inplace_array<int64_t>(meta, "meta", "int64");
            const ik::Layout L = checked_layout(arena, meta, mm, nullptr, false);
            py::buffer_info xb = X.request();
            if (xb.ndim != 1 && xb.ndim != 2) throw std::runtime_error("X must be 1-d or 2-d");
            const std::size_t n = xb.ndim == 1 ? 1 : static_cast<std::size_t>(xb.shape[0]);
            if (static_cast<std::size_t>(xb.shape[xb.ndim - 1]) != L.dim)
                throw std::runtime_error("X rows must have length dim = " + std::to_string(L.dim));
            py::array_t<float> out = xb.ndim == 1 ? py::array_t<float>(L.nt)
                                                  : py::array_t<float>({n, L.nt});
            float* o = out.mutable_data();
            const float* ap = arena.data();
            const auto* xp = static_cast<const float*>(xb.ptr);
            {
                const NoGil nogil(n * L.dim * 2);
                ik::adapter_forward(ap, L, xp, n, o);
            }
            return out;
        },
        py::arg("arena"), py::arg("meta"), py::arg("X"),
        "Adapter logits for one row (dim,) -> (nt,) or a batch (n, dim) -> (n, nt).");
    m.def(
        "clamp_norm",
        [](py::array v, double max_norm) {
            float* p = inplace_array<float>(v, "v", "float32");
            return ik::clamp_norm(p, static_cast<std::size_t>(v.size()), static_cast<float>(max_norm));
        },
        py::arg("v"), py::arg("max_norm") = 5.0,
        "One global clamp in place: if ||v|| > max_norm, v *= max_norm/||v||; returns the norm after.");
    m.def(
        "ewc_pull",
        [](py::array theta, const f32& F, const f32& snap, double coef) {
            float* p = inplace_array<float>(theta, "theta", "float32");
            py::buffer_info fb = need(F, 1, "F"), sb = need(snap, 1, "snap");
            if (theta.ndim() != 1 || fb.shape[0] != theta.shape(0) || sb.shape[0] != theta.shape(0))
                throw std::runtime_error("theta, F and snap must be 1-d of one length");
            ik::ewc_pull(p, static_cast<const float*>(fb.ptr), static_cast<const float*>(sb.ptr),
                         static_cast<std::size_t>(theta.shape(0)), static_cast<float>(coef));
        },
        py::arg("theta"), py::arg("F"), py::arg("snap"), py::arg("coef"),
        "EWC pull in place: theta_i -= coef * F_i * (theta_i - snap_i).");
    m.def(
        "weighted_pick",
        [](const f32& scales, uint32_t seed, int64_t exclude) {
            py::buffer_info b = need(scales, 1, "scales");
            const auto n = static_cast<std::size_t>(b.shape[0]);
            const auto ex = exclude < 0 ? n : static_cast<std::size_t>(exclude);
            return ik::weighted_pick(static_cast<const float*>(b.ptr), n == 0 ? 1 : n, 0, n, seed, ex);
        },
        py::arg("scales"), py::arg("seed"), py::arg("exclude"),
        "The spec's weighted_pick(seed, exclude) over |scales|: an index, or -1 when n <= 1.");
}

// ---- temporal + attention (cpp/attention.h) ----
namespace at = learnstream::attention;

py::array_t<float> copy_matrix(const std::vector<float>& w, std::size_t rows, std::size_t cols) {
    py::array_t<float> out({rows, cols});
    std::copy(w.begin(), w.end(), out.mutable_data());
    return out;
}

// A GraphAttention with checked sizes: its four projections hold heads * head_dim * dim floats each.
at::GraphAttention checked_attention(std::size_t dim, std::size_t heads, std::size_t head_dim, uint32_t seed) {
    if (dim == 0 || heads == 0) throw std::runtime_error("dim/heads/head_dim must be > 0");
    checked_dim(dim, "dim");
    checked_dim(heads, "heads");
    if (head_dim == 0) head_dim = dim / heads;  // 0 = the spec's default dim / heads
    if (head_dim == 0) throw std::runtime_error("dim/heads/head_dim must be > 0");
    checked_dim(head_dim, "head_dim");
    checked_floats(heads * head_dim * dim, "an attention projection");
    return at::GraphAttention(dim, heads, head_dim, seed);
}

void bind_attention(py::module_& m) {
    m.attr("ATTENTION_EDGE_FEATURES") = at::kEdgeFeatures;
    m.attr("ATTENTION_NO_EDGE") = at::kNoEdge;
    m.attr("ATTENTION_UNKNOWN_RELATION") = at::kUnknownRelation;
    py::class_<at::GraphAttention>(m, "GraphAttention",
                                   "Fixed projections Wq, Wk, Wv, Wo (and the initial We) regenerated from the seed.")
        .def(py::init([](std::size_t dim, std::size_t heads, std::size_t head_dim, uint32_t seed) {
                 return checked_attention(dim, heads, head_dim, seed);
             }),
             py::arg("dim"), py::arg("heads") = 8, py::arg("head_dim") = 0, py::arg("seed") = 42)
        .def_readonly("dim", &at::GraphAttention::dim)
        .def_readonly("heads", &at::GraphAttention::heads)
        .def_readonly("head_dim", &at::GraphAttention::head_dim)
        .def_readonly("seed", &at::GraphAttention::seed)
        .def("initial_we",
             [](const at::GraphAttention& a) { return copy_matrix(a.we, a.head_dim, at::kEdgeFeatures); },
             "A copy of We as drawn from the seed (head_dim x 7).")
        .def("matrices",
             [](const at::GraphAttention& a) {
                 py::dict d;
                 d["wq"] = copy_matrix(a.wq, a.proj, a.dim);
                 d["wk"] = copy_matrix(a.wk, a.proj, a.dim);
                 d["wv"] = copy_matrix(a.wv, a.proj, a.dim);
                 d["we"] = copy_matrix(a.we, a.head_dim, at::kEdgeFeatures);
                 d["wo"] = copy_matrix(a.wo, a.dim, a.proj);
                 return d;
             },
             "Copies of every weight matrix (tests compare them with the NumPy reference).")
        .def(
            "attend",
            [](const at::GraphAttention& a, const f32& query, const f32& nodes, const f32& edges, const f32& we) {
                py::buffer_info qb = need(query, 1, "query"), nb = need(nodes, 2, "nodes"),
                                eb = need(edges, 2, "edges"), wb = need(we, 2, "we");
                const auto n = static_cast<std::size_t>(nb.shape[0]);
                if (static_cast<std::size_t>(qb.shape[0]) != a.dim)
                    throw std::runtime_error("attention: query_emb must be len " + std::to_string(a.dim));
                if (n > 0 && static_cast<std::size_t>(nb.shape[1]) != a.dim)
                    throw std::runtime_error("nodes must be n x " + std::to_string(a.dim));
                if (static_cast<std::size_t>(eb.shape[0]) != n || static_cast<std::size_t>(eb.shape[1]) != at::kEdgeCols)
                    throw std::runtime_error("edges must be n x 3 (relation code, age_ms, weight), one row per node");
                if (static_cast<std::size_t>(wb.shape[0]) != a.head_dim ||
                    static_cast<std::size_t>(wb.shape[1]) != at::kEdgeFeatures)
                    throw std::runtime_error("we must be head_dim x 7");
                py::array_t<float> out(a.dim);
                py::array_t<float> weights({a.heads, n});
                const float *qp = static_cast<const float*>(qb.ptr), *np_ = static_cast<const float*>(nb.ptr),
                            *ep = static_cast<const float*>(eb.ptr), *wp = static_cast<const float*>(wb.ptr);
                float *op = out.mutable_data(), *w_out = weights.mutable_data();
                {
                    const NoGil nogil(n * a.dim * a.heads);
                    a.attend(qp, np_, n, ep, wp, op, w_out);
                }
                return py::make_tuple(out, weights);
            },
            py::arg("query"), py::arg("nodes"), py::arg("edges"), py::arg("we"),
            "(vector[dim], weights[heads, n]) for query, node embeddings (n x dim), per-node edge rows\n"
            "[relation code (-2 no edge, -1 unknown), ts - now in ms, weight] and the current We.")
        .def("__repr__",
             [](const at::GraphAttention& a) {
                 return "GraphAttention(dim=" + std::to_string(a.dim) + ", heads=" + std::to_string(a.heads) +
                        ", head_dim=" + std::to_string(a.head_dim) + ", seed=" + std::to_string(a.seed) + ")";
             })
        .def(py::pickle(
            [](const at::GraphAttention& a) {  // the seed is the state: weights regenerate bit-exactly
                return py::make_tuple(1, a.dim, a.heads, a.head_dim, a.seed);
            },
            [](const py::tuple& t) {
                if (t.size() != 5 || t[0].cast<int>() != 1)
                    throw std::runtime_error("GraphAttention pickle: unknown state version");
                return checked_attention(t[1].cast<std::size_t>(), t[2].cast<std::size_t>(),
                                         t[3].cast<std::size_t>(), t[4].cast<uint32_t>());
            }));
}

// ---- router (cpp/router.h) ----
namespace rt = learnstream::router;

// The router's parameter buffer for (in_dim, n_targets): 1-d float32 of the exact size.
const float* router_params(const f32& params, const rt::Layout& L) {
    py::buffer_info b = need(params, 1, "params");
    if (static_cast<std::size_t>(b.shape[0]) != L.total)
        throw std::runtime_error("params has " + std::to_string(b.shape[0]) + " floats, expected " +
                                 std::to_string(L.total) + " for in_dim " + std::to_string(L.in_dim) +
                                 " and " + std::to_string(L.nt) + " targets");
    return static_cast<const float*>(b.ptr);
}

void check_targets(std::size_t nt) {
    if (nt < 1 || nt > rt::MAX_TARGETS)
        throw std::runtime_error("n_targets must be 1.." + std::to_string(rt::MAX_TARGETS));
}

// The instant adapter's optional logits: None, or 1-d float32 with one logit per target (held in ``ad``).
const float* optional_logits(const py::object& adapter, std::size_t nt, f32& ad) {
    if (adapter.is_none()) return nullptr;
    ad = adapter.cast<f32>();
    py::buffer_info ab = need(ad, 1, "adapter");
    if (static_cast<std::size_t>(ab.shape[0]) != nt) throw std::runtime_error("adapter must have n_targets logits");
    return static_cast<const float*>(ab.ptr);
}

void bind_router(py::module_& m) {
    m.attr("ROUTER_HIDDEN") = rt::HIDDEN;
    m.attr("ROUTER_RANK") = rt::RANK;
    m.attr("ROUTER_BUCKETS") = rt::BUCKETS;
    m.attr("ROUTER_MAX_TARGETS") = rt::MAX_TARGETS;
    m.def(
        "router_layout",
        [](std::size_t in_dim, std::size_t nt) {
            check_targets(nt);
            const rt::Layout L(checked_dim(in_dim, "in_dim"), nt);
            const std::size_t H = rt::HIDDEN;
            py::dict d;
            auto put = [&](const char* k, std::size_t off, py::tuple shape) { d[k] = py::make_tuple(off, shape); };
            put("V", L.v, py::make_tuple(rt::RANK, in_dim));
            put("U", L.u, py::make_tuple(H, rt::RANK));
            put("bh", L.bh, py::make_tuple(H));
            put("bz", L.bz, py::make_tuple(H));
            put("w_temperature", L.wt, py::make_tuple(H));
            put("b_temperature", L.bt, py::make_tuple(1));
            put("w_top_p", L.wp, py::make_tuple(H));
            put("b_top_p", L.bp, py::make_tuple(1));
            put("w_confidence", L.wf, py::make_tuple(H));
            put("b_confidence", L.bf, py::make_tuple(1));
            put("W_model", L.wm, py::make_tuple(nt, H));
            put("b_model", L.bm, py::make_tuple(nt));
            put("W_ctx", L.wc, py::make_tuple(rt::BUCKETS, H));
            put("b_ctx", L.bc, py::make_tuple(rt::BUCKETS));
            d["total"] = L.total;
            d["trainable"] = L.trainable();
            return d;
        },
        py::arg("in_dim"), py::arg("n_targets"),
        "{name: (offset, shape)} of every tensor in the parameter buffer, plus 'total' and 'trainable' "
        "(offset of the trained tail: model and context heads).");
    m.def(
        "router_init",
        [](uint32_t seed, std::size_t in_dim, std::size_t nt) {
            check_targets(nt);
            const rt::Layout L(checked_dim(in_dim, "in_dim"), nt);
            checked_floats(L.total, "the router's parameters");
            py::array_t<float> out(L.total);
            rt::init(out.mutable_data(), L, seed);
            return out;
        },
        py::arg("seed"), py::arg("in_dim"), py::arg("n_targets"),
        "Deterministic parameter buffer: V, U (90% masked) from mulberry32(seed), heads from "
        "mulberry32(seed ^ 0xA17C), biases 0.");
    m.def(
        "router_route",
        [](const f32& params, const f32& x, std::size_t nt, bool normalize, const py::object& adapter) {
            check_targets(nt);
            py::buffer_info xb = need(x, 1, "x");
            const rt::Layout L(static_cast<std::size_t>(xb.shape[0]), nt);
            const float* p = router_params(params, L);
            f32 ad;  // keeps the converted array alive while the kernel reads it
            const float* a = optional_logits(adapter, nt, ad);
            // One query: a few microseconds, cheaper than releasing the GIL.
            const rt::Decision d = rt::decide_one(p, L, static_cast<const float*>(xb.ptr), normalize, a);
            return py::make_tuple(d.model, d.prob, d.bucket, d.temperature, d.top_p, d.confidence);
        },
        py::arg("params"), py::arg("x"), py::arg("n_targets"), py::arg("normalize") = false,
        py::arg("adapter") = py::none(),
        "One query -> (model index, its softmax prob, context bucket, temperature, top_p, confidence).");
    m.def(
        "router_forward_batch",
        [](const f32& params, const f32& X, std::size_t nt, bool normalize) {
            check_targets(nt);
            py::buffer_info xb = need(X, 2, "X");
            const auto n = static_cast<std::size_t>(xb.shape[0]);
            const rt::Layout L(static_cast<std::size_t>(xb.shape[1]), nt);
            const float* p = router_params(params, L);
            py::array_t<float> model({n, nt}), ctx({n, rt::BUCKETS}), tpc({n, std::size_t{3}});
            float *mo = model.mutable_data(), *co = ctx.mutable_data(), *to = tpc.mutable_data();
            const float* xp = static_cast<const float*>(xb.ptr);
            {
                const NoGil nogil(n * L.total);
                rt::forward_batch(p, L, xp, n, normalize, mo, co, to);
            }
            return py::make_tuple(model, ctx, tpc);
        },
        py::arg("params"), py::arg("X"), py::arg("n_targets"), py::arg("normalize") = false,
        "Rows of X -> (model logits n x nt, ctx logits n x 5, [temperature, top_p, conf] n x 3).");
    m.def(
        "router_train",
        [](py::array params, const f32& x, std::size_t nt, std::size_t target, std::size_t bucket, double lr,
           bool normalize) {
            check_targets(nt);
            float* p = inplace_array<float>(params, "params", "float32");
            py::buffer_info xb = need(x, 1, "x");
            const rt::Layout L(static_cast<std::size_t>(xb.shape[0]), nt);
            if (params.ndim() != 1 || static_cast<std::size_t>(params.shape(0)) != L.total)
                throw std::runtime_error("params does not match in_dim " + std::to_string(L.in_dim) + " and " +
                                         std::to_string(nt) + " targets");
            if (target >= nt || bucket >= rt::BUCKETS) throw std::runtime_error("target or bucket out of range");
            rt::train_step(p, L, static_cast<const float*>(xb.ptr), normalize, target, bucket,
                           static_cast<float>(lr));
        },
        py::arg("params"), py::arg("x"), py::arg("n_targets"), py::arg("target"), py::arg("bucket"),
        py::arg("lr"), py::arg("normalize") = false,
        "In place: one softmax cross-entropy step of the model and context heads toward (target, bucket); "
        "a negative lr pushes away.");
    m.def(
        "router_train_batch",
        [](py::array params, const f32& X, std::size_t nt,
           const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& targets,
           const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& buckets, const f32& lrs,
           bool normalize) {
            check_targets(nt);
            float* p = inplace_array<float>(params, "params", "float32");
            py::buffer_info xb = need(X, 2, "X"), lb = need(lrs, 1, "lrs");
            const auto n = static_cast<std::size_t>(xb.shape[0]);
            const rt::Layout L(static_cast<std::size_t>(xb.shape[1]), nt);
            if (params.ndim() != 1 || static_cast<std::size_t>(params.shape(0)) != L.total)
                throw std::runtime_error("params does not match X's width and n_targets");
            if (targets.ndim() != 1 || buckets.ndim() != 1 || static_cast<std::size_t>(targets.shape(0)) != n ||
                static_cast<std::size_t>(buckets.shape(0)) != n || static_cast<std::size_t>(lb.shape[0]) != n)
                throw std::runtime_error("targets, buckets and lrs must be 1-d with one entry per row of X");
            const int64_t *tp = targets.data(), *bp = buckets.data();
            for (std::size_t i = 0; i < n; ++i)
                if (tp[i] < 0 || static_cast<std::size_t>(tp[i]) >= nt || bp[i] < 0 ||
                    static_cast<std::size_t>(bp[i]) >= rt::BUCKETS)
                    throw std::runtime_error("target or bucket out of range at row " + std::to_string(i));
            const float *xp = static_cast<const float*>(xb.ptr), *lp = static_cast<const float*>(lb.ptr);
            const NoGil nogil(n * L.total);
            for (std::size_t i = 0; i < n; ++i)
                rt::train_step(p, L, xp + i * L.in_dim, normalize, static_cast<std::size_t>(tp[i]),
                               static_cast<std::size_t>(bp[i]), lp[i]);
        },
        py::arg("params"), py::arg("X"), py::arg("n_targets"), py::arg("targets"), py::arg("buckets"),
        py::arg("lrs"), py::arg("normalize") = false,
        "In place: router_train over the rows of X in order (the GIL is released).");
}


// ---- router bandit (cpp/router.h, namespace bandit) ----
namespace bd = learnstream::router::bandit;

// The bandit's arrays: P (dim x in_dim float32), Ainv (nt x d1 x d1 float64), theta and b
// (nt x d1 float64) with d1 = dim + nsq + 1, nsq (0..dim) the squared features, which only Ainv's
// width says; returns (dim, in_dim, nt, d1, nsq) after checking them all.
struct BanditShape {
    std::size_t dim, in_dim, nt, d1, nsq;
};

BanditShape bandit_shape(std::size_t dim, std::size_t in_dim, const py::array& Ainv, const py::array& theta,
                         const py::array* b) {
    BanditShape s{dim, in_dim, 0, 0, 0};
    if (s.dim < 1 || s.dim > bd::MAX_DIM || s.in_dim < 1)
        throw std::runtime_error("P must be dim x in_dim with 1 <= dim <= " + std::to_string(bd::MAX_DIM));
    if (Ainv.ndim() != 3 || Ainv.shape(1) != Ainv.shape(2) || static_cast<std::size_t>(Ainv.shape(1)) < s.dim + 1 ||
        static_cast<std::size_t>(Ainv.shape(1)) > 2 * s.dim + 1)
        throw std::runtime_error("Ainv must be n_targets x d1 x d1 with d1 = dim + squares + 1, 0 <= squares <= dim");
    s.d1 = static_cast<std::size_t>(Ainv.shape(1));
    s.nsq = s.d1 - s.dim - 1;
    s.nt = static_cast<std::size_t>(Ainv.shape(0));
    check_targets(s.nt);
    auto check2 = [&](const py::array& a, const char* name) {
        if (a.ndim() != 2 || static_cast<std::size_t>(a.shape(0)) != s.nt ||
            static_cast<std::size_t>(a.shape(1)) != s.d1)
            throw std::runtime_error(std::string(name) + " must be n_targets x d1 (Ainv's width)");
    };
    check2(theta, "theta");
    if (b != nullptr) check2(*b, "b");
    return s;
}

BanditShape bandit_shape(const f32& P, const py::array& Ainv, const py::array& theta, const py::array* b) {
    py::buffer_info pb = need(P, 2, "P");
    return bandit_shape(static_cast<std::size_t>(pb.shape[0]), static_cast<std::size_t>(pb.shape[1]), Ainv, theta, b);
}

void bind_bandit(py::module_& m) {
    m.attr("BANDIT_MAX_DIM") = bd::MAX_DIM;
    // which build of the learned route this CPU runs (router_route_learned): AVX2 + FMA or baseline x86-64
    m.attr("ROUTE_AVX2") = rt::route_has_avx2();
    m.def(
        "bandit_projection",
        [](uint32_t seed, std::size_t dim, std::size_t in_dim) {
            if (dim < 1 || dim > bd::MAX_DIM || in_dim < 1)
                throw std::runtime_error("dim must be 1.." + std::to_string(bd::MAX_DIM) + " and in_dim > 0");
            py::array_t<float> out({dim, in_dim});
            bd::init_projection(out.mutable_data(), dim, in_dim, seed);
            return out;
        },
        py::arg("seed"), py::arg("dim"), py::arg("in_dim"),
        "The bandit's projection P (dim x in_dim): randn of mulberry32(seed ^ 0xB4D1) / sqrt(in_dim).");
    m.def(
        "bandit_features",
        [](const f32& P, const f32& x, std::size_t squares) {
            py::buffer_info pb = need(P, 2, "P"), xb = need(x, 1, "x");
            const auto dim = static_cast<std::size_t>(pb.shape[0]), in_dim = static_cast<std::size_t>(pb.shape[1]);
            if (static_cast<std::size_t>(xb.shape[0]) != in_dim) throw std::runtime_error("x must have in_dim floats");
            if (squares > dim) throw std::runtime_error("squares must be 0..dim");
            py::array_t<double> out(dim + squares + 1);
            bd::features(static_cast<const float*>(pb.ptr), dim, in_dim, static_cast<const float*>(xb.ptr),
                         out.mutable_data(), squares);
            return out;
        },
        py::arg("P"), py::arg("x"), py::arg("squares") = 0,
        "phi = [P x_hat; ((P x_hat)_i^2 - 1) / sqrt(2) for i < squares; 1] with x_hat = x rescaled to unit RMS.");
    m.def(
        "bandit_route",
        [](const f32& P, py::array Ainv, py::array theta, const py::object& cost, const f32& x, double alpha,
           double lam) {
            const BanditShape s = bandit_shape(P, Ainv, theta, nullptr);
            const double* ai = inplace_array<double>(Ainv, "Ainv", "float64");
            const double* th = inplace_array<double>(theta, "theta", "float64");
            py::buffer_info xb = need(x, 1, "x");
            if (static_cast<std::size_t>(xb.shape[0]) != s.in_dim) throw std::runtime_error("x must have in_dim floats");
            const double* c = nullptr;
            py::array_t<double, py::array::c_style | py::array::forcecast> ca;
            if (!cost.is_none()) {
                ca = cost.cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
                if (ca.ndim() != 1 || static_cast<std::size_t>(ca.shape(0)) != s.nt)
                    throw std::runtime_error("cost must have n_targets values");
                c = ca.data();
            }
            if (!std::isfinite(alpha) || !std::isfinite(lam)) throw std::runtime_error("alpha and lam must be finite");
            double phi[bd::MAX_PHI];
            bd::features(static_cast<const float*>(P.data()), s.dim, s.in_dim, static_cast<const float*>(xb.ptr), phi,
                         s.nsq);
            const bd::Choice ch = bd::choose(ai, th, c, s.nt, s.d1, phi, alpha, lam);
            return py::make_tuple(ch.best, ch.greedy, ch.tied, ch.mean, ch.width);
        },
        py::arg("P"), py::arg("Ainv"), py::arg("theta"), py::arg("cost"), py::arg("x"), py::arg("alpha"),
        py::arg("lam"),
        "One query -> (best, greedy, tied, mean of best, width of best): best maximises theta.phi - lam cost "
        "+ alpha sqrt(phi' Ainv phi); greedy drops the alpha term; tied: every target scored the same.");
    m.def(
        "router_route_learned",
        [](const py::object& params_in, const py::object& x_in, std::size_t nt, bool normalize,
           const py::object& adapter, const py::object& P_in, py::array Ainv, py::array theta, const py::object& cost,
           double alpha, double lam) {
            // router_route and bandit_route in one crossing: the learned mode's hot path (bench router's
            // p99 goal), with every argument checked as the two kernels check them.
            check_targets(nt);
            f32 xk, pk, Pk;  // converted copies, only for arguments that were not float32 arrays already
            const F32View x = f32_view(x_in, xk, 1, "x");
            const rt::Layout L(x.shape[0], nt);
            const F32View params = f32_view(params_in, pk, 1, "params");
            if (params.shape[0] != L.total)
                throw std::runtime_error("params has " + std::to_string(params.shape[0]) + " floats, expected " +
                                         std::to_string(L.total) + " for in_dim " + std::to_string(L.in_dim) +
                                         " and " + std::to_string(L.nt) + " targets");
            const float* p = params.ptr;
            const F32View P = f32_view(P_in, Pk, 2, "P");
            const BanditShape s = bandit_shape(P.shape[0], P.shape[1], Ainv, theta, nullptr);
            if (s.nt != nt) throw std::runtime_error("Ainv and theta must have n_targets rows");
            if (s.in_dim != L.in_dim) throw std::runtime_error("x must have in_dim floats (P's width)");
            const double* ai = inplace_array<double>(Ainv, "Ainv", "float64");
            const double* th = inplace_array<double>(theta, "theta", "float64");
            f32 ad;  // keeps the converted array alive while the kernel reads it
            const float* a = optional_logits(adapter, nt, ad);
            const double* c = nullptr;
            py::array_t<double, py::array::c_style | py::array::forcecast> ca;
            if (!cost.is_none()) {
                ca = cost.cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
                if (ca.ndim() != 1 || static_cast<std::size_t>(ca.shape(0)) != nt)
                    throw std::runtime_error("cost must have n_targets values");
                c = ca.data();
            }
            if (!std::isfinite(alpha) || !std::isfinite(lam)) throw std::runtime_error("alpha and lam must be finite");
            // One query: a few microseconds, cheaper than releasing the GIL.
            const rt::Routed r =
                rt::route_learned(p, L, x.ptr, normalize, a, P.ptr, s.dim, s.nsq, ai, th, c, nt, alpha, lam);
            return py::make_tuple(r.d.model, r.d.bucket, r.d.temperature, r.d.top_p, r.d.confidence, r.ch.best,
                                  r.ch.greedy, r.ch.tied);
        },
        py::arg("params"), py::arg("x"), py::arg("n_targets"), py::arg("normalize"), py::arg("adapter"),
        py::arg("P"), py::arg("Ainv"), py::arg("theta"), py::arg("cost"), py::arg("alpha"), py::arg("lam"),
        "router_route and bandit_route in one call -> (FastGRNN model index, context bucket, temperature, top_p, "
        "confidence, bandit best, bandit greedy, tied).");
    m.def(
        "bandit_update_batch",
        [](const f32& P, py::array Ainv, py::array b, py::array theta, const i64& arms, const f32& X,
           const py::array_t<double, py::array::c_style | py::array::forcecast>& rewards, double gamma,
           bool normalize, double idle_gamma, double idle_cap, const py::object& share_weights,
           const py::object& shares) {
            const BanditShape s = bandit_shape(P, Ainv, theta, &b);
            double* ai = inplace_array<double>(Ainv, "Ainv", "float64");
            double* bb = inplace_array<double>(b, "b", "float64");
            double* th = inplace_array<double>(theta, "theta", "float64");
            py::buffer_info xb = need(X, 2, "X");
            const auto n = static_cast<std::size_t>(xb.shape[0]);
            if (static_cast<std::size_t>(xb.shape[1]) != s.in_dim) throw std::runtime_error("X must be n x in_dim");
            if (arms.ndim() != 1 || rewards.ndim() != 1 || static_cast<std::size_t>(arms.shape(0)) != n ||
                static_cast<std::size_t>(rewards.shape(0)) != n)
                throw std::runtime_error("arms and rewards must be 1-d with one entry per row of X");
            if (!(gamma > 0.0 && gamma <= 1.0)) throw std::runtime_error("gamma must be in (0, 1]");
            if (!(idle_gamma > 0.0 && idle_gamma <= 1.0)) throw std::runtime_error("idle_gamma must be in (0, 1]");
            if (!std::isfinite(idle_cap)) throw std::runtime_error("idle_cap must be finite");
            const int64_t* ap = arms.data();
            const double* rp = rewards.data();
            for (std::size_t i = 0; i < n; ++i) {
                if (ap[i] < 0 || static_cast<std::size_t>(ap[i]) >= s.nt)
                    throw std::runtime_error("arm out of range at row " + std::to_string(i));
                if (!std::isfinite(rp[i])) throw std::runtime_error("reward not finite at row " + std::to_string(i));
            }
            // shares: each row's sum_j share_weights[j] phi_j^2 over the projected features (j < dim), NaN
            // for an all-zero row; the novelty test's input, from the projection the update makes anyway
            if (share_weights.is_none() != shares.is_none())
                throw std::runtime_error("share_weights and shares go together");
            py::array_t<double, py::array::c_style | py::array::forcecast> wa;
            py::array sa;
            const double* sw = nullptr;
            double* sh = nullptr;
            if (!shares.is_none()) {
                wa = share_weights.cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
                if (wa.ndim() != 1 || static_cast<std::size_t>(wa.shape(0)) != s.dim)
                    throw std::runtime_error("share_weights must have one value per projected feature (P's rows)");
                for (std::size_t j = 0; j < s.dim; ++j)
                    if (!std::isfinite(wa.data()[j])) throw std::runtime_error("share_weights must be finite");
                sw = wa.data();
                if (!py::isinstance<py::array>(shares))
                    throw std::runtime_error("shares must be a C-contiguous float64 array");
                sa = shares.cast<py::array>();
                sh = inplace_array<double>(sa, "shares", "float64");
                if (sa.ndim() != 1 || static_cast<std::size_t>(sa.shape(0)) != n)
                    throw std::runtime_error("shares must be 1-d with one entry per row of X");
            }
            py::array_t<double> preds(n);
            double* pp = preds.mutable_data();
            const float* xp = static_cast<const float*>(xb.ptr);
            const float* pr = static_cast<const float*>(P.data());
            {
                const NoGil nogil(n * s.in_dim * s.in_dim);
                double phi[bd::MAX_PHI], u[bd::MAX_PHI];
                for (std::size_t i = 0; i < n; ++i) {
                    const auto k = static_cast<std::size_t>(ap[i]);
                    if (normalize)
                        bd::features(pr, s.dim, s.in_dim, xp + i * s.in_dim, phi, s.nsq);
                    else
                        bd::features_as_given(pr, s.dim, s.in_dim, xp + i * s.in_dim, phi, s.nsq);
                    if (sh != nullptr) {
                        const float* row = xp + i * s.in_dim;
                        bool zero = true;
                        for (std::size_t j = 0; j < s.in_dim && zero; ++j) zero = row[j] == 0.0f;
                        double v = 0.0;
                        for (std::size_t j = 0; j < s.dim; ++j) v += sw[j] * (phi[j] * phi[j]);
                        sh[i] = zero ? std::numeric_limits<double>::quiet_NaN() : v;
                    }
                    pp[i] = bd::update(ai + k * s.d1 * s.d1, bb + k * s.d1, th + k * s.d1, s.d1, phi, rp[i], gamma, u);
                    if (idle_gamma < 1.0) bd::idle(ai, bb, s.nt, s.d1, k, idle_gamma, idle_cap);
                }
            }
            return preds;
        },
        py::arg("P"), py::arg("Ainv"), py::arg("b"), py::arg("theta"), py::arg("arms"), py::arg("X"),
        py::arg("rewards"), py::arg("gamma"), py::arg("normalize") = true, py::arg("idle_gamma") = 1.0,
        py::arg("idle_cap") = 0.0, py::arg("share_weights") = py::none(), py::arg("shares") = py::none(),
        "In place, rows in order: target arms[i] learns rewards[i] at X[i] (forgetting gamma); returns each "
        "row's prediction before its update (the GIL is released). normalize=False: phi = [P x; 1] with X "
        "as given, not rescaled to unit RMS. idle_gamma < 1: after each row every other target forgets by "
        "it too (Ainv / idle_gamma, b * idle_gamma) while trace(Ainv) stays <= idle_cap. shares (float64, one "
        "per row, written in place) with share_weights (one per row of P): sum_j share_weights[j] phi_j^2 "
        "over the projected features, NaN for an all-zero row.");
}

// ---- online learner models (cpp/online.h) ----
using i32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using u8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// Shape of a model over X (B x d); checks theta's length against it.
learnstream::online::Shape online_shape(const py::buffer_info& xb, std::size_t theta_len, int64_t hidden,
                                        int64_t n_classes) {
    if (hidden < 0 || n_classes < 2) throw std::runtime_error("hidden must be >= 0 and n_classes >= 2");
    checked_dim(static_cast<std::size_t>(hidden), "hidden", 0);
    checked_dim(static_cast<std::size_t>(n_classes), "n_classes", 2);
    learnstream::online::Shape s{static_cast<std::size_t>(xb.shape[1]), static_cast<std::size_t>(hidden),
                                 static_cast<std::size_t>(n_classes)};
    if (theta_len != learnstream::online::n_params(s))
        throw std::runtime_error("theta has " + std::to_string(theta_len) + " values, a model with d=" +
                                 std::to_string(s.d) + " h=" + std::to_string(s.h) + " c=" + std::to_string(s.c) +
                                 " has " + std::to_string(learnstream::online::n_params(s)));
    return s;
}

// Labels as int32[B], each in [0, c).
const int32_t* online_labels(const i32& y, std::size_t B, std::size_t c) {
    py::buffer_info b = y.request();
    if (b.ndim != 1 || static_cast<std::size_t>(b.shape[0]) != B)
        throw std::runtime_error("y must be 1-d with one label per row of X");
    const int32_t* p = static_cast<const int32_t*>(b.ptr);
    for (std::size_t i = 0; i < B; ++i)
        if (p[i] < 0 || static_cast<std::size_t>(p[i]) >= c)
            throw std::runtime_error("label " + std::to_string(p[i]) + " out of range [0, " + std::to_string(c) + ")");
    return p;
}

// An optional float32 array of exactly `len` values (any ndim), or null.
const float* online_opt(const std::optional<f32>& a, std::size_t len, const char* name) {
    if (!a) return nullptr;
    if (static_cast<std::size_t>(a->size()) != len)
        throw std::runtime_error(std::string(name) + " must have " + std::to_string(len) + " values, got " +
                                 std::to_string(a->size()));
    return a->data();
}

void bind_online(py::module_& m) {
    namespace ol = learnstream::online;
    m.def(
        "online_n_params",
        [](std::size_t d, std::size_t hidden, std::size_t n_classes) {
            return ol::n_params({checked_dim(d, "d"), checked_dim(hidden, "hidden", 0),
                                 checked_dim(n_classes, "n_classes", 2)});
        },
        py::arg("d"), py::arg("hidden"), py::arg("n_classes"),
        "Length of theta: h>0: W1 (h x d), b1, W2 (c x h), b2; h=0: W (c x d), b.");
    m.def(
        "online_forward",
        [](const f32& theta, const f32& X, int64_t hidden, int64_t n_classes) {
            py::buffer_info tb = need(theta, 1, "theta"), xb = need(X, 2, "X");
            const ol::Shape s = online_shape(xb, static_cast<std::size_t>(tb.shape[0]), hidden, n_classes);
            const auto B = static_cast<std::size_t>(xb.shape[0]);
            py::array_t<float> Z({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(s.c)});
            float* zp = Z.mutable_data();
            const float *tp = static_cast<const float*>(tb.ptr), *xp = static_cast<const float*>(xb.ptr);
            {
                const NoGil nogil(B * ol::n_params(s));
                ol::forward(tp, s, xp, B, zp);
            }
            return Z;
        },
        py::arg("theta"), py::arg("X"), py::arg("hidden"), py::arg("n_classes"), "Logits (B x c) of X.");
    m.def(
        "online_step",
        [](py::array theta, std::optional<py::array> velocity, const f32& X, const i32& y, int64_t hidden,
           int64_t n_classes, const std::optional<f32>& ce_w, const std::optional<u8>& mask,
           const std::optional<f32>& mse_w, const std::optional<f32>& target, const std::optional<f32>& kd_w,
           const std::optional<f32>& teacher, double tau, const std::optional<f32>& fisher,
           const std::optional<f32>& anchor, double ewc_lambda, double lr, double momentum) {
            float* th = inplace_array<float>(theta, "theta", "float32");
            if (theta.ndim() != 1) throw std::runtime_error("theta must be 1-d");
            py::buffer_info xb = need(X, 2, "X");
            const ol::Shape s = online_shape(xb, static_cast<std::size_t>(theta.shape(0)), hidden, n_classes);
            const std::size_t n = ol::n_params(s), B = static_cast<std::size_t>(xb.shape[0]);
            float* vel = nullptr;
            if (velocity && !velocity->is_none()) {
                vel = inplace_array<float>(*velocity, "velocity", "float32");
                if (static_cast<std::size_t>(velocity->size()) != n)
                    throw std::runtime_error("velocity must have as many values as theta");
            }
            if (momentum != 0.0 && !vel) throw std::runtime_error("momentum needs a velocity array");
            if (!(tau > 0.0)) throw std::runtime_error("tau must be > 0");
            ol::Terms t;
            t.ce_w = online_opt(ce_w, B, "ce_w");
            if (mask) {
                if (static_cast<std::size_t>(mask->size()) != B * s.c)
                    throw std::runtime_error("mask must be B x n_classes");
                t.mask = mask->data();
            }
            t.mse_w = online_opt(mse_w, B, "mse_w");
            t.target = online_opt(target, B * s.c, "target");
            t.kd_w = online_opt(kd_w, B, "kd_w");
            t.teacher = online_opt(teacher, B * s.c, "teacher");
            t.fisher = online_opt(fisher, n, "fisher");
            t.anchor = online_opt(anchor, n, "anchor");
            t.tau = static_cast<float>(tau);
            t.ewc_lambda = static_cast<float>(ewc_lambda);
            t.lr = static_cast<float>(lr);
            t.momentum = static_cast<float>(momentum);
            const int32_t* yp = online_labels(y, B, s.c);
            const float* xp = static_cast<const float*>(xb.ptr);
            py::array_t<float> Z({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(s.c)});
            py::array_t<float> loss(static_cast<py::ssize_t>(B));
            float *zp = Z.mutable_data(), *lp = loss.mutable_data();
            std::vector<float> grad(n);
            double obj;
            {
                const NoGil nogil(B * n * 3);
                obj = ol::step(th, vel, s, xp, yp, B, t, zp, lp, grad.data());
            }
            return py::make_tuple(obj, Z, loss);
        },
        py::arg("theta"), py::arg("velocity"), py::arg("X"), py::arg("y"), py::arg("hidden"), py::arg("n_classes"),
        py::arg("ce_w") = py::none(), py::arg("mask") = py::none(), py::arg("mse_w") = py::none(),
        py::arg("target") = py::none(), py::arg("kd_w") = py::none(), py::arg("teacher") = py::none(),
        py::arg("tau") = 1.0, py::arg("fisher") = py::none(), py::arg("anchor") = py::none(),
        py::arg("ewc_lambda") = 0.0, py::arg("lr") = 0.01, py::arg("momentum") = 0.0,
        "Fused forward/backward/SGD step in place on theta (and velocity); returns "
        "(objective, logits, per-example cross-entropy), all before the update.");
    m.def(
        "online_fisher",
        [](const f32& theta, const f32& X, const i32& y, int64_t hidden, int64_t n_classes) {
            py::buffer_info tb = need(theta, 1, "theta"), xb = need(X, 2, "X");
            const ol::Shape s = online_shape(xb, static_cast<std::size_t>(tb.shape[0]), hidden, n_classes);
            const auto B = static_cast<std::size_t>(xb.shape[0]);
            const int32_t* yp = online_labels(y, B, s.c);
            py::array_t<float> out(static_cast<py::ssize_t>(ol::n_params(s)));
            float* op = out.mutable_data();
            const float *tp = static_cast<const float*>(tb.ptr), *xp = static_cast<const float*>(xb.ptr);
            {
                const NoGil nogil(B * ol::n_params(s));
                ol::fisher_diag(tp, s, xp, yp, B, op);
            }
            return out;
        },
        py::arg("theta"), py::arg("X"), py::arg("y"), py::arg("hidden"), py::arg("n_classes"),
        "Empirical Fisher diagonal: mean squared per-example gradient of log p(y|x).");
}

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
    bind_bandit(m);
    bind_online(m);
#ifdef VERSION_INFO
    m.attr("__version__") = MACRO_STRINGIFY(VERSION_INFO);
#else
    m.attr("__version__") = "dev";
#endif
}
