#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "diffcal/statistics.hpp"
#include "numpy_view.hpp"

namespace py = pybind11;

namespace diffcal::bindings {

namespace {

ImageView<const std::int32_t> maskView(py::object const& mask) {
    if (mask.is_none()) return {};
    return viewOf<const std::int32_t>(mask.cast<py::array>(), "mask");
}

template <typename T>
ClippedStatistics clipped(py::array const& values, py::object const& mask, ClipControl const& ctrl) {
    auto const v = viewOf<const T>(values, "values");
    auto const m = maskView(mask);
    py::gil_scoped_release release;
    return clippedStatistics<T>(v, m, ctrl);
}

template <typename T>
double quantileOf(py::array const& values, py::object const& mask, std::int32_t andMask, double fraction) {
    auto const v = viewOf<const T>(values, "values");
    auto const m = maskView(mask);
    py::gil_scoped_release release;
    return candidateQuantile<T>(v, m, andMask, fraction);
}

bool isFloat32(py::array const& a) { return py::dtype::of<float>().is(a.dtype()); }

}  // namespace

void bindStatistics(py::module_& m) {
    py::class_<ClippedStatistics>(m, "ClippedStatistics")
        .def_readonly("mean", &ClippedStatistics::mean)
        .def_readonly("variance", &ClippedStatistics::variance)
        .def_readonly("median", &ClippedStatistics::median)
        .def_readonly("iqr", &ClippedStatistics::iqr)
        .def_readonly("n_candidates", &ClippedStatistics::nCandidates)
        .def_readonly("n_used", &ClippedStatistics::nUsed);

    m.def(
        "clipped_statistics",
        [](py::array const& values, py::object const& mask, std::int32_t andMask, double nSigma, int nIter) {
            ClipControl ctrl;
            ctrl.nSigma = nSigma;
            ctrl.nIter = nIter;
            ctrl.andMask = andMask;
            return isFloat32(values) ? clipped<float>(values, mask, ctrl) : clipped<double>(values, mask, ctrl);
        },
        py::arg("values"), py::arg("mask") = py::none(), py::arg("and_mask") = 0, py::arg("n_sigma") = 3.0,
        py::arg("n_iter") = 3,
        "Sigma-clipped mean/variance (MEANCLIP/VARIANCECLIP semantics) of a float32 or float64 array; "
        "mask is an optional int32 array of the same shape. Releases the GIL.");

    m.def(
        "quantile",
        [](py::array const& values, double fraction, py::object const& mask, std::int32_t andMask) {
            return isFloat32(values) ? quantileOf<float>(values, mask, andMask, fraction)
                                     : quantileOf<double>(values, mask, andMask, fraction);
        },
        py::arg("values"), py::arg("fraction"), py::arg("mask") = py::none(), py::arg("and_mask") = 0,
        "Linear-interpolated quantile of the finite, unmasked values (exact selection). Releases the GIL.");
}

}  // namespace diffcal::bindings
