// Bindings shared by the two jointcal fitters (AstrometryFitter, PhotometryFitter): the methods with
// the same C++ signature, and Eigen sparse matrices as numpy CSC triplets that
// scipy.sparse.csc_matrix((data, indices, indptr), shape) takes as they are.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "diffcal/jointcal/fitter.hpp"

namespace diffcal::bindings {

namespace py = pybind11;

/// (data, indices, indptr, rhs) of a compressed column-major matrix and a vector.
inline py::tuple cscAndVector(Eigen::SparseMatrix<double> m, Eigen::VectorXd const& v) {
    m.makeCompressed();
    auto const nnz = static_cast<py::ssize_t>(m.nonZeros());
    py::array_t<double> data(nnz);
    py::array_t<std::int64_t> indices(nnz), indptr(static_cast<py::ssize_t>(m.outerSize()) + 1);
    std::copy(m.valuePtr(), m.valuePtr() + nnz, data.mutable_data());
    std::copy(m.innerIndexPtr(), m.innerIndexPtr() + nnz, indices.mutable_data());
    std::copy(m.outerIndexPtr(), m.outerIndexPtr() + m.outerSize() + 1, indptr.mutable_data());
    py::array_t<double> vec(static_cast<py::ssize_t>(v.size()));
    std::copy(v.data(), v.data() + v.size(), vec.mutable_data());
    return py::make_tuple(data, indices, indptr, vec);
}

/// The binding body of a fitter's normal_equations(what_to_fit): assemble with the GIL released and
/// return (data, indices, indptr, rhs) of the upper triangle (works for both jointcal fitters).
template <typename Fitter>
py::tuple normalEquationsOf(Fitter& fitter, std::string const& whatToFit) {
    Eigen::SparseMatrix<double> upper;
    Eigen::VectorXd rhs;
    {
        py::gil_scoped_release release;
        fitter.normalEquations(whatToFit, upper, rhs);
    }
    return cscAndVector(std::move(upper), rhs);
}

/// A numpy copy of a vector.
template <typename T>
py::array_t<T> numpyCopy(T const* data, std::size_t n) {
    py::array_t<T> out(static_cast<py::ssize_t>(n));
    std::copy(data, data + n, out.mutable_data());
    return out;
}

/// Add minimize, compute_chi2, term_chi2, compute_step and normal_equations (GIL released while the
/// core works) to a fitter's class binding; returns it for further chaining.
template <typename Fitter>
py::class_<Fitter>& defineFitterMethods(py::class_<Fitter>& cls) {
    return cls
        .def(
            "minimize",
            [](Fitter& f, std::string const& what, double nSigmaCut, double tol, bool rank, bool ls) {
                py::gil_scoped_release release;
                return int(f.minimize(what, nSigmaCut, tol, rank, ls));
            },
            py::arg("what_to_fit"), py::arg("n_sigma_cut") = 0.0, py::arg("sigma_relative_tolerance") = 0.0,
            py::arg("do_rank_update") = true, py::arg("do_line_search") = false)
        .def("compute_chi2",
             [](Fitter& f) {
                 jointcal::Chi2Result r;
                 {
                     py::gil_scoped_release release;
                     r = f.computeChi2();
                 }
                 return py::make_tuple(r.chi2, r.ndof);
             })
        .def("term_chi2",
             [](Fitter& f) {
                 std::vector<double> meas, ref;
                 {
                     py::gil_scoped_release release;
                     f.termChi2(meas, ref);
                 }
                 return py::make_tuple(numpyCopy(meas.data(), meas.size()), numpyCopy(ref.data(), ref.size()));
             })
        .def(
            "compute_step",
            [](Fitter& f, std::string const& what) {
                Eigen::VectorXd d;
                {
                    py::gil_scoped_release release;
                    d = f.computeStep(what);
                }
                return numpyCopy(d.data(), std::size_t(d.size()));
            },
            py::arg("what_to_fit"))
        .def(
            "normal_equations", [](Fitter& f, std::string const& what) { return normalEquationsOf(f, what); },
            py::arg("what_to_fit"),
            "Normal equations H delta = rhs at the current parameters for what_to_fit: (data, indices, indptr) "
            "of the upper triangle of H in CSC form, and rhs.");
}

}  // namespace diffcal::bindings
