// Zero-copy conversion of numpy arrays to diffcal::ImageView (bindings only).
//
// No dtype coercion happens here: a wrong dtype raises TypeError naming the argument, so a
// caller never pays for a hidden conversion and never writes into a temporary copy.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "diffcal/image_view.hpp"

namespace diffcal::bindings {

namespace py = pybind11;

/// Human-readable dtype name of an array, for error messages.
inline std::string dtypeName(py::array const& a) { return py::str(a.dtype()).cast<std::string>(); }

/// View a 1-D or 2-D numpy array of exactly dtype T (1-D arrays become one row).
template <typename T>
ImageView<T> viewOf(py::array const& a, char const* name, bool writable = false) {
    if (!py::dtype::of<std::remove_const_t<T>>().is(a.dtype())) {
        throw py::type_error(std::string(name) + ": expected dtype " +
                             py::str(py::dtype::of<std::remove_const_t<T>>()).cast<std::string>() + ", got " +
                             dtypeName(a));
    }
    if (a.ndim() != 1 && a.ndim() != 2) {
        throw py::value_error(std::string(name) + ": expected a 1-D or 2-D array, got " + std::to_string(a.ndim()) +
                              " dimensions");
    }
    if (writable && !a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
    auto const itemsize = static_cast<py::ssize_t>(sizeof(T));
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (a.strides(d) % itemsize != 0) {
            throw py::value_error(std::string(name) + ": strides are not a multiple of the item size");
        }
    }
    auto* data = static_cast<T*>(const_cast<void*>(a.data()));
    if (a.ndim() == 1) return ImageView<T>(data, 1, a.shape(0), 0, a.strides(0) / itemsize);
    return ImageView<T>(data, a.shape(0), a.shape(1), a.strides(0) / itemsize, a.strides(1) / itemsize);
}

}  // namespace diffcal::bindings
