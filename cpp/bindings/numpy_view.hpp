// Zero-copy conversion of numpy arrays to diffcal::ImageView (bindings only).
//
// No dtype coercion happens here: a wrong dtype raises TypeError naming the argument, so a
// caller never pays for a hidden conversion and never writes into a temporary copy.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <type_traits>
#include <utility>

#include "diffcal/image_view.hpp"

namespace diffcal::bindings {

namespace py = pybind11;

/// Human-readable dtype name of an array, for error messages.
inline std::string dtypeName(py::array const& a) { return py::str(a.dtype()).cast<std::string>(); }

/// The name of an argument for an error message: a string, or a callable building one (so hot
/// loops over thousands of arrays build names only when something is wrong).
inline std::string argName(char const* name) { return name; }
inline std::string argName(std::string const& name) { return name; }
template <typename F, typename = decltype(std::declval<F const&>()())>
std::string argName(F const& make) {
    return make();
}

/// The numpy dtype of T, looked up once (a leaked reference: it must outlive interpreter shutdown).
template <typename T>
PyObject* dtypeOf() {
    static PyObject* const dt = py::dtype::of<T>().release().ptr();
    return dt;
}

/// View a 1-D or 2-D numpy array of exactly dtype T (1-D arrays become one row).
template <typename T, typename Name>
ImageView<T> viewOf(py::array const& a, Name const& name, bool writable = false) {
    using V = std::remove_const_t<T>;
    py::dtype const dt = a.dtype();
    if (dt.ptr() != dtypeOf<V>() && !py::reinterpret_borrow<py::dtype>(dtypeOf<V>()).equal(dt)) {
        throw py::type_error(argName(name) + ": expected dtype " + py::str(py::dtype::of<V>()).cast<std::string>() +
                             ", got " + dtypeName(a));
    }
    if (a.ndim() != 1 && a.ndim() != 2) {
        throw py::value_error(argName(name) + ": expected a 1-D or 2-D array, got " + std::to_string(a.ndim()) +
                              " dimensions");
    }
    if (writable && !a.writeable()) throw py::value_error(argName(name) + ": array is read-only");
    auto const itemsize = static_cast<py::ssize_t>(sizeof(T));
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (a.strides(d) % itemsize != 0) {
            throw py::value_error(argName(name) + ": strides are not a multiple of the item size");
        }
    }
    auto* data = static_cast<T*>(const_cast<void*>(a.data()));
    if (a.ndim() == 1) return ImageView<T>(data, 1, a.shape(0), 0, a.strides(0) / itemsize);
    return ImageView<T>(data, a.shape(0), a.shape(1), a.strides(0) / itemsize, a.strides(1) / itemsize);
}

}  // namespace diffcal::bindings
