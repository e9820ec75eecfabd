// Eigen sparse matrices to numpy arrays (bindings only): compressed-column (CSC) triplets that
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

}  // namespace diffcal::bindings
